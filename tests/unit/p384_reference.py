"""A slow, plain-Python RFC 9497 VOPRF(P-384, SHA-384) — for tests only, never for serving.

It exists because the ``voprf`` package keeps its secret keys and blinds inside: it
cannot load the ``skS`` of the RFC 9578 vectors nor verify a proof on its own. This
reference can, and is itself checked against the RFC 9497 vectors (DeriveKeyPair,
Blind, BlindEvaluate, the DLEQ proof with the vectors' ``r``, Finalize) before the
tests use it to check the RFC 9578 vectors and the library. Not constant-time.

Hash-to-curve is RFC 9380 P384_XMD:SHA-384_SSWU_RO_.
"""

from __future__ import annotations

import hashlib

P = 2**384 - 2**128 - 2**96 + 2**32 - 1
N = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
    16,
)
A = P - 3
B = int(
    "B3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF",
    16,
)
G = (
    0xAA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E3872760AB7,
    0x3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F,
)
Point = tuple[int, int] | None  # None is the identity


def add(p1: Point, p2: Point) -> Point:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    if p1 == p2:
        lam = (3 * x1 * x1 + A) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return x3, (lam * (x1 - x3) - y1) % P


def mul(k: int, pt: Point) -> Point:
    out: Point = None
    for bit in bin(k % N)[2:]:
        out = add(out, out)
        if bit == "1":
            out = add(out, pt)
    return out


def ser(pt: Point) -> bytes:
    assert pt is not None
    return bytes([2 + (pt[1] & 1)]) + pt[0].to_bytes(48, "big")


def deser(data: bytes) -> Point:
    assert len(data) == 49 and data[0] in (2, 3)
    x = int.from_bytes(data[1:], "big")
    y = pow((x**3 + A * x + B) % P, (P + 1) // 4, P)
    assert y * y % P == (x**3 + A * x + B) % P, "not on the curve"
    if (y & 1) != (data[0] & 1):
        y = P - y
    return x, y


def expand_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    ell = -(-length // 48)
    dst_prime = dst + bytes([len(dst)])
    b0 = hashlib.sha384(bytes(128) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime).digest()
    bi = hashlib.sha384(b0 + b"\x01" + dst_prime).digest()
    out = bi
    for i in range(2, ell + 1):
        bi = hashlib.sha384(
            bytes(a ^ b for a, b in zip(b0, bi, strict=True)) + bytes([i]) + dst_prime
        ).digest()
        out += bi
    return out[:length]


def _sswu(u: int) -> Point:
    z = P - 12
    tv1 = (z * z * pow(u, 4, P) + z * u * u) % P
    if tv1 == 0:
        x1 = B * pow(z * A, -1, P) % P
    else:
        x1 = (P - B) * pow(A, -1, P) * (1 + pow(tv1, -1, P)) % P
    gx1 = (x1**3 + A * x1 + B) % P
    x, gx = x1, gx1
    if pow(gx1, (P - 1) // 2, P) not in (0, 1):
        x = z * u * u * x1 % P
        gx = (x**3 + A * x + B) % P
    y = pow(gx, (P + 1) // 4, P)
    if (u & 1) != (y & 1):
        y = P - y
    return x, y


def hash_to_group(msg: bytes, dst: bytes) -> Point:
    uniform = expand_xmd(msg, dst, 144)
    u0, u1 = (int.from_bytes(uniform[i : i + 72], "big") % P for i in (0, 72))
    return add(_sswu(u0), _sswu(u1))


def hash_to_scalar(msg: bytes, dst: bytes) -> int:
    return int.from_bytes(expand_xmd(msg, dst, 72), "big") % N


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


class Suite:
    """RFC 9497 P384-SHA384 in ``mode`` 0 (OPRF) or 1 (VOPRF)."""

    def __init__(self, mode: int = 1) -> None:
        self.ctx = b"OPRFV1-" + bytes([mode]) + b"-P384-SHA384"

    def derive_key_pair(self, seed: bytes, info: bytes) -> tuple[int, bytes]:
        derive_input = seed + _lp(info)
        for counter in range(256):
            sk = hash_to_scalar(derive_input + bytes([counter]), b"DeriveKeyPair" + self.ctx)
            if sk:
                return sk, ser(mul(sk, G))
        raise ValueError("DeriveKeyPairError")

    def h2g(self, data: bytes) -> Point:
        return hash_to_group(data, b"HashToGroup-" + self.ctx)

    def h2s(self, data: bytes) -> int:
        return hash_to_scalar(data, b"HashToScalar-" + self.ctx)

    def blind(self, data: bytes, blind: int) -> bytes:
        return ser(mul(blind, self.h2g(data)))

    def evaluate_blinded(self, sk: int, blinded: bytes) -> bytes:
        return ser(mul(sk, deser(blinded)))

    def finalize(self, data: bytes, blind: int, evaluated: bytes) -> bytes:
        unblinded = ser(mul(pow(blind, -1, N), deser(evaluated)))
        return hashlib.sha384(_lp(data) + _lp(unblinded) + b"Finalize").digest()

    def evaluate(self, sk: int, data: bytes) -> bytes:
        element = ser(mul(sk, self.h2g(data)))
        return hashlib.sha384(_lp(data) + _lp(element) + b"Finalize").digest()

    def _composites(self, pk: bytes, cs: list[bytes], ds: list[bytes]) -> tuple[Point, Point]:
        seed = hashlib.sha384(_lp(pk) + _lp(b"Seed-" + self.ctx)).digest()
        m: Point = None
        z: Point = None
        for i, (c, d) in enumerate(zip(cs, ds, strict=True)):
            di = self.h2s(_lp(seed) + i.to_bytes(2, "big") + _lp(c) + _lp(d) + b"Composite")
            m, z = add(m, mul(di, deser(c))), add(z, mul(di, deser(d)))
        return m, z

    def _challenge(self, pk: bytes, m: Point, z: Point, t2: Point, t3: Point) -> int:
        parts = b"".join(_lp(x) for x in (pk, ser(m), ser(z), ser(t2), ser(t3)))
        return self.h2s(parts + b"Challenge")

    def prove(self, sk: int, pk: bytes, cs: list[bytes], ds: list[bytes], r: int) -> bytes:
        m, _ = self._composites(pk, cs, ds)
        z = mul(sk, m)
        c = self._challenge(pk, m, z, mul(r, G), mul(r, m))
        s = (r - c * sk) % N
        return c.to_bytes(48, "big") + s.to_bytes(48, "big")

    def verify(self, pk: bytes, cs: list[bytes], ds: list[bytes], proof: bytes) -> bool:
        c, s = int.from_bytes(proof[:48], "big"), int.from_bytes(proof[48:], "big")
        m, z = self._composites(pk, cs, ds)
        t2 = add(mul(s, G), mul(c, deser(pk)))
        t3 = add(mul(s, m), mul(c, z))
        return self._challenge(pk, m, z, t2, t3) == c

"""Each node's hash chain over its audit records, signed with the node's Ed25519 key.

Canonical encoding (the bytes that are hashed) — reproducible with the standard
library alone::

    body = {k: v for k, v in record.items() if k not in ("hash", "sig")}
    json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
               allow_nan=False).encode("utf-8")

That is: keys sorted, no whitespace, raw UTF-8 (only ``"``, ``\\`` and U+0000–U+001F
escaped), integers in decimal, floats as Python's ``repr`` (shortest round-trip,
``0.5``, ``3.0``, ``8e-05``), ``true``/``false``/``null``.

``hash`` is the SHA-256 of those bytes in lowercase hex; ``sig`` is the Ed25519
signature of the 32 raw hash bytes, base64url without padding; ``sig_kid`` is the
PASERK ``k4.pid`` of the node's public key. ``prev`` links each record to the hash
of the node's previous one; the first record's ``prev`` is ``GENESIS``.

The node key itself (a PASERK file, mode 0600) is ``gatekeeper.auth.node_key``.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Mapping
from typing import Any

import orjson
from nacl.signing import SigningKey

from gatekeeper.audit.record import AuditRecord, SealedRecord
from gatekeeper.auth.paserk import (
    pid,
)
from gatekeeper.auth.paseto import b64encode

__all__ = [
    "GENESIS",
    "AuditChain",
    "canonical_bytes",
    "record_hash",
    "wire_bytes",
]

GENESIS = "0" * 64
_UNHASHED = frozenset({"hash", "sig"})
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


_FLOAT_FIELDS = ("cost_usd", "latency_ms", "ttft_ms")


def _float(value: object) -> object:
    """A float as ``json`` writes it (``repr``), for orjson to embed as is."""
    if type(value) is not float:
        return value
    if not math.isfinite(value):
        raise ValueError("audit records hold finite numbers only")
    return orjson.Fragment(repr(value).encode())


def _encode(body: dict[str, Any]) -> bytes:
    """``_ENCODER.encode(body)`` for a sealed record's body, in about a third of the time.

    orjson writes strings, integers and key order exactly as the standard library does
    here (``tests/unit/test_audit_chain.py`` checks it on generated records); floats
    differ in notation, so the record's floats are written with ``repr`` (what ``json``
    uses) and embedded as they are. Anything orjson refuses (an integer beyond 64
    bits) falls back to the standard library.
    """
    fast = dict(body)
    for name in _FLOAT_FIELDS:
        fast[name] = _float(fast.get(name))
    fast["attempts"] = [{**a, "ms": _float(a.get("ms"))} for a in body.get("attempts", ())]
    try:
        return orjson.dumps(fast, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _ENCODER.encode(body).encode("utf-8")


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's ``hash`` covers: every field except ``hash`` and ``sig``."""
    body = {name: value for name, value in record.items() if name not in _UNHASHED}
    return _ENCODER.encode(body).encode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 (lowercase hex) of ``canonical_bytes(record)``."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def wire_bytes(sealed: SealedRecord) -> bytes:
    """The message to publish: the full record in the same canonical JSON style."""
    return _ENCODER.encode(sealed.to_dict()).encode("utf-8")


def _splice_wire(canonical: bytes, digest: str, sig: str) -> bytes:
    """``wire_bytes`` of a record from its canonical bytes, without encoding it again.

    With sorted keys, ``"hash"`` sits just before ``"key_id"`` and ``"sig"`` just
    before ``"sig_kid"``. ``,"key_id":`` can only be that top-level key: inside a JSON
    string every ``"`` is escaped, and no nested object has such a key.
    """
    at_key = canonical.index(b',"key_id":')
    at_kid = canonical.index(b',"sig_kid":', at_key)
    return b"".join(
        (
            canonical[:at_key],
            b',"hash":"%s"' % digest.encode("ascii"),
            canonical[at_key:at_kid],
            b',"sig":"%s"' % sig.encode("ascii"),
            canonical[at_kid:],
        )
    )


class AuditChain:
    """Seals one node's records into its chain: assigns seq and prev, hashes, signs.

    ``seal`` is synchronous (most of its cost is the Ed25519 signature); it holds a
    lock, so seq order is seal order even across threads.
    Records must then be published in seal order. To resume after a restart, pass
    the ``state()`` saved earlier, or use ``resume()`` with the node's last record.
    """

    def __init__(
        self,
        node_id: str,
        signing_key: SigningKey,
        last_seq: int = 0,
        last_hash: str = GENESIS,
    ) -> None:
        if last_seq < 0 or len(last_hash) != 64:
            raise ValueError("a chain resumes from seq >= 0 and a 64-hex-digit hash")
        self.node_id = node_id
        self.key_id = pid(bytes(signing_key.verify_key))
        self._key = signing_key
        self._seq = last_seq
        self._hash = last_hash
        self._lock = threading.Lock()

    @classmethod
    def resume(
        cls, node_id: str, signing_key: SigningKey, last_record: Mapping[str, Any] | None
    ) -> AuditChain:
        """A chain continuing after ``last_record`` (this node's newest), or a new one."""
        if last_record is None:
            return cls(node_id, signing_key)
        if last_record.get("node_id") != node_id:
            raise ValueError("the last record belongs to another node")
        seq, digest = last_record.get("seq"), last_record.get("hash")
        if not isinstance(seq, int) or not isinstance(digest, str):
            raise ValueError("the last record has no seq and hash")
        if record_hash(last_record) != digest:
            raise ValueError("the last record's hash does not match its content")
        return cls(node_id, signing_key, seq, digest)

    def seal(self, record: AuditRecord) -> SealedRecord:
        """Place ``record`` next in this node's chain and sign it."""
        return self.seal_wire(record)[0]

    def seal_wire(self, record: AuditRecord) -> tuple[SealedRecord, bytes]:
        """``seal(record)`` and its ``wire_bytes``, encoding the record only once."""
        if record.node_id != self.node_id:
            raise ValueError(f"record of node {record.node_id!r} given to chain {self.node_id!r}")
        body = record.to_dict()
        body["sig_kid"] = self.key_id
        with self._lock:
            seq, prev = self._seq + 1, self._hash
            body["seq"], body["prev"] = seq, prev
            canonical = _encode(body)
            digest = hashlib.sha256(canonical).digest()
            signature = self._key.sign(digest).signature
            self._seq, self._hash = seq, digest.hex()
            hex_digest = self._hash
        sig = b64encode(signature)
        sealed = SealedRecord(
            record=record, seq=seq, prev=prev, sig_kid=self.key_id, hash=hex_digest, sig=sig
        )
        return sealed, _splice_wire(canonical, hex_digest, sig)

    def state(self) -> tuple[int, str]:
        """``(last seq, last hash)``: what a restarted node needs to continue."""
        with self._lock:
            return self._seq, self._hash

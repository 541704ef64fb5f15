"""Signed budget slots: what a node writes to ``BH_BUDGET`` and what it accepts from peers.

A node signs the slots of one gossip flush together (``sign_slots``): one Ed25519
signature over the root of a Merkle tree whose leaves are the slots, and each value
carries its path to that root::

    value  = slot bytes + b" " + base64url(signature) + b" " + base64url(path)
    leaf   = SHA-256(b"\\x00" + b"gatekeeper.slot.v1\\n" + kv key + b"\\n" + slot bytes)
    node   = SHA-256(b"\\x01" + left + right)
    path   = per level, b"\\x00" + right sibling or b"\\x01" + left sibling (a node
             without a sibling moves up unchanged, and its level is left out)
    signature = Ed25519(b"gatekeeper.slots.v2\\n" + root)

So a flush costs one signature however many counters changed (a gateway serving
many keys changes many per flush), and a peer verifies one signature per flush and
a few hashes per slot. A single slot signed on its own (``sign_slot``, the first
format, still accepted) is::

    value = slot bytes + b" " + base64url(signature)
    signature = Ed25519(b"gatekeeper.slot.v1\\n" + kv key + b"\\n" + slot bytes)

Either way the signature is by the writing node's key (the registry's current entry
for the node named by the KV key's last token). ``SlotVerifier`` accepts a slot only if

* its node is registered and the signature is by that node's current key,
* it parses as ``[p, n]`` with ``0 <= n <= p`` and ``p`` within an absolute cap,
* ``p - n`` is at most the counter's limit (when known here) times ``factor``,
* it does not go back on the last slot accepted from that node for that counter.

Each distinct (key, value) is verified once: later copies (watch echoes, re-puts)
are a dictionary hit. Only the last ``RECENT`` values of each key are remembered:
a slot changes at every flush, and an older value is only ever seen again as an echo
of this node's own, a few flushes later at most. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from gatekeeper.auth.paseto import MalformedToken, b64decode, b64encode
from gatekeeper.control.envelope import ControlValueRejected
from gatekeeper.control.registry import NodeKeyRegistry
from gatekeeper.internal.crdt import PNSlot

__all__ = [
    "ABSOLUTE_CAP",
    "BATCH_DOMAIN",
    "MAX_BATCH",
    "RECENT",
    "SLOT_DOMAIN",
    "SlotVerifier",
    "sign_slot",
    "sign_slots",
    "slot_message",
]

SLOT_DOMAIN = b"gatekeeper.slot.v1\n"
BATCH_DOMAIN = b"gatekeeper.slots.v2\n"
ABSOLUTE_CAP = 2**53  # no real counter comes near it (USD counters are in micro-dollars)
MAX_BATCH = 256  # slots under one signature: a path of at most 8 levels
_MAX_DEPTH = 8
_STEP = 33  # one path level: a side byte and a SHA-256
_MAX_VALUE = 640
RECENT = 8  # values remembered per KV key (this node's own in flight, a peer's latest)
_ROOTS = 4096  # verified batch roots remembered


def slot_message(kv_key: str, slot_bytes: bytes) -> bytes:
    return b"%s%s\n%s" % (SLOT_DOMAIN, kv_key.encode(), slot_bytes)


def sign_slot(key: SigningKey, kv_key: str, slot: PNSlot) -> bytes:
    """The value to publish under ``kv_key`` for this node's ``slot``, signed alone."""
    data = slot.to_bytes()
    signature = key.sign(slot_message(kv_key, data)).signature
    return b"%s %s" % (data, b64encode(signature).encode())


def _leaf(kv_key: str, data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + slot_message(kv_key, data)).digest()


def _parent(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _tree(leaves: Sequence[bytes]) -> tuple[bytes, list[bytes]]:
    """The Merkle root over ``leaves`` and each leaf's path to it."""
    paths = [bytearray() for _ in leaves]
    level = list(leaves)
    under = [[i] for i in range(len(leaves))]  # the leaves below each node of the level
    while len(level) > 1:
        up, up_under = [], []
        for j in range(0, len(level) - 1, 2):
            left, right = level[j], level[j + 1]
            for i in under[j]:
                paths[i] += b"\x00" + right
            for i in under[j + 1]:
                paths[i] += b"\x01" + left
            up.append(_parent(left, right))
            up_under.append(under[j] + under[j + 1])
        if len(level) % 2:  # the last node has no sibling: it moves up as it is
            up.append(level[-1])
            up_under.append(under[-1])
        level, under = up, up_under
    return level[0], [bytes(p) for p in paths]


def _root(leaf: bytes, path: bytes) -> bytes:
    if len(path) % _STEP or len(path) > _STEP * _MAX_DEPTH:
        raise ControlValueRejected("malformed", "not a Merkle path")
    node = leaf
    for at in range(0, len(path), _STEP):
        side, sibling = path[at], path[at + 1 : at + _STEP]
        if side == 0:
            node = _parent(node, sibling)
        elif side == 1:
            node = _parent(sibling, node)
        else:
            raise ControlValueRejected("malformed", "not a Merkle path")
    return node


def sign_slots(key: SigningKey, slots: Sequence[tuple[str, PNSlot]]) -> list[bytes]:
    """The values to publish for ``(kv key, slot)`` pairs: one signature per
    ``MAX_BATCH`` slots, each value with its Merkle path (see the module docstring)."""
    out: list[bytes] = []
    for start in range(0, len(slots), MAX_BATCH):
        batch = slots[start : start + MAX_BATCH]
        data = [slot.to_bytes() for _, slot in batch]
        root, paths = _tree([_leaf(kv_key, d) for (kv_key, _), d in zip(batch, data, strict=True)])
        sig = b64encode(key.sign(BATCH_DOMAIN + root).signature).encode()
        out += [
            b"%s %s %s" % (d, sig, b64encode(p).encode()) for d, p in zip(data, paths, strict=True)
        ]
    return out


class SlotVerifier:
    """Checks peer (and own, read back) slots; remembers what it verified."""

    def __init__(
        self,
        registry: NodeKeyRegistry,
        *,
        factor: float = 4.0,
        limit_of: Callable[[str], int | None] = lambda cid: None,
        cache_size: int = 65536,
    ) -> None:
        self.registry = registry
        self.factor = factor
        self.limit_of = limit_of
        self.cache_size = cache_size
        self.verified: dict[str, dict[bytes, PNSlot]] = {}  # kv key → its recent values
        self.last: dict[tuple[str, str], PNSlot] = {}
        self.roots: dict[tuple[str, bytes], bytes] = {}  # (node, signature) → verified root
        self.signatures = 0  # Ed25519 verifications done (the caches' misses)

    def forget_keys(self) -> None:
        """The registry changed (a rotation): verify everything again from now on."""
        self.verified.clear()
        self.roots.clear()

    def remember(self, kv_key: str, value: bytes, slot: PNSlot) -> None:
        """A value verified, or signed by this node itself (its echo needs no check)."""
        recent = self.verified.get(kv_key)
        if recent is None:
            if len(self.verified) >= self.cache_size:  # keys: counters x nodes
                self.verified.clear()
            recent = self.verified[kv_key] = {}
        elif len(recent) >= RECENT:
            del recent[next(iter(recent))]  # the oldest
        recent[value] = slot

    def check(
        self, kv_key: str, cid: str, node: str, value: bytes, *, any_key: bool = False
    ) -> PNSlot:
        """The slot in ``value`` if it may be merged; raises ``ControlValueRejected``.

        ``any_key``: accept a signature by any key in the node's history (a node
        reading back its own slots after a key rotation; it then re-signs them).
        """
        recent = self.verified.get(kv_key)
        slot = recent.get(value) if recent is not None else None
        if slot is None:
            slot = self._verify(kv_key, node, value, any_key)
            self._check_bounds(cid, slot)
            self.remember(kv_key, value, slot)
        last = self.last.get((cid, node))
        if last is not None and (slot.p < last.p or slot.n < last.n):
            raise ControlValueRejected("regression", "slot goes back on an accepted one")
        self.last[(cid, node)] = slot
        return slot

    def forget(self, cid: str) -> None:
        """A counter was collected: drop what is known about its slots."""
        for key in [k for k in self.last if k[0] == cid]:
            del self.last[key]
        for kv_key in [k for k in self.verified if k.rpartition(".")[0] == cid]:
            del self.verified[kv_key]

    def _verify(self, kv_key: str, node: str, value: bytes, any_key: bool) -> PNSlot:
        if len(value) > _MAX_VALUE:
            raise ControlValueRejected("oversized", f"{len(value)} bytes")
        history = self.registry.history(node)
        if not history:
            raise ControlValueRejected("unknown_node", "node is not registered")
        head, sep, last = value.rpartition(b" ")
        if not sep:
            raise ControlValueRejected("unsigned", "slot carries no signature")
        try:  # the last field is a signature (signed alone) or a path (never 64 bytes)
            tail = b64decode(last.decode("ascii"))
            if len(tail) == 64:
                data, signature, path = head, tail, None
            else:
                data, sep, sig_text = head.rpartition(b" ")
                if not sep:
                    raise ControlValueRejected("unsigned", "slot carries no signature")
                signature, path = b64decode(sig_text.decode("ascii")), tail
        except (MalformedToken, UnicodeDecodeError):
            raise ControlValueRejected("bad_signature", "signature is not base64url") from None
        if path is None:  # signed alone
            message = slot_message(kv_key, data)
        else:  # one of a batch: the signature is over the root its path leads to
            message = BATCH_DOMAIN + _root(_leaf(kv_key, data), path)
            if self.roots.get((node, signature)) == message:
                return _parse(data)
        for entry in reversed(history if any_key else history[-1:]):
            self.signatures += 1
            try:
                entry.verify_key.verify(message, signature)
                break
            except (BadSignatureError, ValueError):
                continue
        else:
            raise ControlValueRejected("bad_signature")
        if path is not None and entry is history[-1]:  # an older key's is checked each time
            if len(self.roots) >= _ROOTS:
                self.roots.clear()
            self.roots[(node, signature)] = message
        return _parse(data)

    def _check_bounds(self, cid: str, slot: PNSlot) -> None:
        if slot.n > slot.p:
            raise ControlValueRejected("n_exceeds_p", "a slot's releases exceed its usage")
        if slot.p > ABSOLUTE_CAP:
            raise ControlValueRejected("absurd", "slot beyond any counter")
        limit = self.limit_of(cid)
        if limit is not None and slot.value > limit * self.factor:
            raise ControlValueRejected("absurd", "slot exceeds the counter's limit x factor")


def _parse(data: bytes) -> PNSlot:
    try:
        return PNSlot.from_bytes(data)
    except ValueError:
        raise ControlValueRejected("malformed", "not a [p, n] slot") from None

"""Signed budget slots: what a node writes to ``BH_BUDGET`` and what it accepts from peers.

    value = slot bytes + b" " + base64url(signature)
    signature = Ed25519(b"gatekeeper.slot.v1\\n" + kv key + b"\\n" + slot bytes)

signed by the writing node's key (the registry's current entry for the node named
by the KV key's last token). ``SlotVerifier`` accepts a slot only if

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

from collections.abc import Callable

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from gatekeeper.auth.paseto import MalformedToken, b64decode, b64encode
from gatekeeper.control.envelope import ControlValueRejected
from gatekeeper.control.registry import NodeKeyRegistry
from gatekeeper.internal.crdt import PNSlot

__all__ = ["ABSOLUTE_CAP", "RECENT", "SLOT_DOMAIN", "SlotVerifier", "sign_slot", "slot_message"]

SLOT_DOMAIN = b"gatekeeper.slot.v1\n"
ABSOLUTE_CAP = 2**53  # no real counter comes near it (USD counters are in micro-dollars)
_MAX_VALUE = 256
RECENT = 8  # values remembered per KV key (this node's own in flight, a peer's latest)


def slot_message(kv_key: str, slot_bytes: bytes) -> bytes:
    return b"%s%s\n%s" % (SLOT_DOMAIN, kv_key.encode(), slot_bytes)


def sign_slot(key: SigningKey, kv_key: str, slot: PNSlot) -> bytes:
    """The value to publish under ``kv_key`` for this node's ``slot``."""
    data = slot.to_bytes()
    signature = key.sign(slot_message(kv_key, data)).signature
    return b"%s %s" % (data, b64encode(signature).encode())


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
        self.signatures = 0  # Ed25519 verifications done (the cache's misses)

    def forget_keys(self) -> None:
        """The registry changed (a rotation): verify everything again from now on."""
        self.verified.clear()

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
        data, sep, sig_text = value.rpartition(b" ")
        if not sep:
            raise ControlValueRejected("unsigned", "slot carries no signature")
        try:
            signature = b64decode(sig_text.decode("ascii"))
        except (MalformedToken, UnicodeDecodeError):
            raise ControlValueRejected("bad_signature", "signature is not base64url") from None
        message = slot_message(kv_key, data)
        for entry in reversed(history if any_key else history[-1:]):
            self.signatures += 1
            try:
                entry.verify_key.verify(message, signature)
                break
            except (BadSignatureError, ValueError):
                continue
        else:
            raise ControlValueRejected("bad_signature")
        try:
            return PNSlot.from_bytes(data)
        except ValueError:
            raise ControlValueRejected("malformed", "not a [p, n] slot") from None

    def _check_bounds(self, cid: str, slot: PNSlot) -> None:
        if slot.n > slot.p:
            raise ControlValueRejected("n_exceeds_p", "a slot's releases exceed its usage")
        if slot.p > ABSOLUTE_CAP:
            raise ControlValueRejected("absurd", "slot beyond any counter")
        limit = self.limit_of(cid)
        if limit is not None and slot.value > limit * self.factor:
            raise ControlValueRejected("absurd", "slot exceeds the counter's limit x factor")

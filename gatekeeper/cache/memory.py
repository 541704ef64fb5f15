"""Verified answers kept in this process: a hit without a read of ``BH_CACHE``.

An answer goes in only after this node sealed it or verified it (``entry.open_entry``),
together with what made it valid: the bucket revision it was read at (or stored as),
its expiry, and the signing node's registered keys at that moment. ``get`` gives it back
only while all of that still holds:

* the key index is trusted and its latest revision for the key is the kept one (a
  delete, a purge, an overwrite by anyone, or a watch that broke: back to the bucket);
* the entry has not expired, and it was stored or last read from the bucket less than
  ``recheck_s`` ago (a watch that stalls without breaking cannot keep a deleted
  answer alive for longer than that; a hot key costs one read per ``recheck_s``);
* the signing node's keys are the same as when it was verified (a new registration, a
  rotation: the entry is read and verified again);
* the tenant is the one it was read for.

Bounded by ``max_bytes`` of payload, least recently used first out. Pure: the caller
supplies the revision, the clock and the keys.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gatekeeper.cache.entry import CachedAnswer

__all__ = ["AnswerMemory", "Kept"]


@dataclass(frozen=True, slots=True)
class Kept:
    answer: CachedAnswer
    tenant: str
    revision: int  # of the key in BH_CACHE
    exp: float  # unix time
    checked: float  # unix time it was stored or read from the bucket
    node: str  # that signed it
    keys: tuple[bytes, ...]  # the signing node's registered keys when it was verified
    size: int


class AnswerMemory:
    __slots__ = ("_kept", "bytes", "max_bytes", "recheck_s")

    def __init__(self, max_bytes: int, recheck_s: float = 1.0) -> None:
        self.max_bytes, self.recheck_s = max_bytes, recheck_s
        self.bytes = 0
        self._kept: OrderedDict[str, Kept] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def get(
        self,
        key: str,
        tenant: str,
        revision: int,
        now: float,
        keys_of: Callable[[str], Sequence[bytes]],
    ) -> CachedAnswer | None:
        """The kept answer if it is still the key's valid one, else None (and forgotten).
        ``revision``: the key's latest in the bucket (0: unknown); ``keys_of(node)``: that
        node's registered keys now."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        if (
            revision == 0
            or kept.revision != revision
            or kept.exp <= now
            or now - kept.checked >= self.recheck_s
            or kept.tenant != tenant
            or kept.keys != tuple(keys_of(kept.node))
        ):
            self.forget(key)
            return None
        self._kept.move_to_end(key)
        return kept.answer

    def keep(
        self,
        key: str,
        tenant: str,
        answer: CachedAnswer,
        revision: int,
        exp: float,
        node: str,
        keys: Sequence[bytes],
        now: float,
    ) -> None:
        size = len(answer.body) + sum(len(c) for c in answer.chunks) + len(key)
        if revision <= 0 or size > self.max_bytes:
            return
        self.forget(key)
        self._kept[key] = Kept(answer, tenant, revision, exp, now, node, tuple(keys), size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._kept.popitem(last=False)
            self.bytes -= old.size

    def forget(self, key: str) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self.bytes -= kept.size

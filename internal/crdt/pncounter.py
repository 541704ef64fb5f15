"""A positive-negative counter (PN-Counter): two G-Counters, value = P - N.

Both halves only grow, so merge stays a per-slot maximum and keeps every
G-Counter law. A node's slot is the pair ``PNSlot(p, n)``; gossiping the pair
as one message means a receiver always sees a consistent snapshot of that
node (both halves from the same moment, or a later one).

The budget ledger uses one PN-Counter per budget counter: a reservation adds
to P, a release (or the unused part of a settled reservation) adds to N, so a
node's slot value ``p - n`` is its committed usage plus what it holds in
flight, and both are visible to other nodes.

Mutation model as for :class:`GCounter`: ``increment``/``decrement``/
``merge_slot``/``merge_in`` mutate, ``merge`` returns a new counter.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from gatekeeper.internal.crdt.gcounter import GCounter


@dataclass(frozen=True, slots=True)
class PNSlot:
    """One node's slot of a PN-Counter: grown-only ``p`` and ``n``.

    Wire form: the JSON array ``[p, n]``.
    """

    p: int = 0
    n: int = 0

    def __post_init__(self) -> None:
        for part in (self.p, self.n):
            if type(part) is not int or part < 0:
                raise ValueError(f"PNSlot halves are non-negative ints, got {part!r}")

    @property
    def value(self) -> int:
        return self.p - self.n

    def join(self, other: PNSlot) -> PNSlot:
        """Per-half maximum: the slot after seeing both."""
        return PNSlot(max(self.p, other.p), max(self.n, other.n))

    def to_bytes(self) -> bytes:
        return orjson.dumps((self.p, self.n))

    @classmethod
    def from_bytes(cls, data: bytes) -> PNSlot:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"PNSlot bytes are not JSON: {exc}") from None
        if not isinstance(raw, list) or len(raw) != 2:
            raise ValueError("PNSlot bytes must hold a JSON array [p, n]")
        return cls(raw[0], raw[1])


class PNCounter:
    """Counter that can go up and down, built from two :class:`GCounter`."""

    __slots__ = ("_n", "_p")

    def __init__(self, p: GCounter | None = None, n: GCounter | None = None) -> None:
        self._p = p if p is not None else GCounter()
        self._n = n if n is not None else GCounter()

    @property
    def value(self) -> int:
        return self._p.value - self._n.value

    @property
    def p(self) -> GCounter:
        return self._p

    @property
    def n(self) -> GCounter:
        return self._n

    def slot(self, node: str) -> PNSlot:
        return PNSlot(self._p.slot(node), self._n.slot(node))

    def increment(self, node: str, amount: int = 1) -> None:
        self._p.increment(node, amount)

    def decrement(self, node: str, amount: int = 1) -> None:
        self._n.increment(node, amount)

    def merge_slot(self, node: str, slot: PNSlot) -> bool:
        """Merge one node's slot in place; True if either half grew."""
        grew_p = self._p.merge_slot(node, slot.p)
        grew_n = self._n.merge_slot(node, slot.n)
        return grew_p or grew_n

    def merge_in(self, other: PNCounter) -> bool:
        grew_p = self._p.merge_in(other._p)
        grew_n = self._n.merge_in(other._n)
        return grew_p or grew_n

    def merge(self, other: PNCounter) -> PNCounter:
        return PNCounter(self._p.merge(other._p), self._n.merge(other._n))

    def copy(self) -> PNCounter:
        return PNCounter(self._p.copy(), self._n.copy())

    def only(self, node: str) -> PNCounter:
        """The single-slot message carrying just ``node``'s slot."""
        return PNCounter(self._p.only(node), self._n.only(node))

    def to_bytes(self) -> bytes:
        """JSON ``{"p": {...}, "n": {...}}`` with sorted keys."""
        return orjson.dumps(
            {"p": self._p.slots(), "n": self._n.slots()}, option=orjson.OPT_SORT_KEYS
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> PNCounter:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"PNCounter bytes are not JSON: {exc}") from None
        if not isinstance(raw, dict) or set(raw) != {"p", "n"}:
            raise ValueError('PNCounter bytes must hold {"p": {...}, "n": {...}}')
        p, n = raw["p"], raw["n"]
        if not isinstance(p, dict) or not isinstance(n, dict):
            raise ValueError("PNCounter halves must be JSON objects of node -> count")
        return cls(GCounter(p), GCounter(n))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PNCounter):
            return NotImplemented
        return self._p == other._p and self._n == other._n

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PNCounter(p={self._p.slots()!r}, n={self._n.slots()!r})"

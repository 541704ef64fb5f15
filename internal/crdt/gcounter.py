"""A grow-only counter (G-Counter): one non-negative slot per node, value = sum.

Each node increments only its own slot; replicas merge by taking the per-slot
maximum. Merge is commutative, associative and idempotent, so any delivery
order of states, with duplicates and re-deliveries, converges.

Mutation model: ``increment`` and ``merge_slot`` change the counter in place
(the ledger's hot path); ``merge`` is pure and returns a new counter (the
algebra the property tests check). ``merge_in`` is the in-place form of it.

Wire form: ``to_bytes()`` is the JSON object ``{"node": n, ...}`` with sorted
keys. The single-slot message for gossiping one node's slot is just a counter
holding that one slot (``only(node)``), so a receiver decodes and merges it
exactly like a full state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import orjson


def _check_amount(n: int) -> None:
    if type(n) is not int or n < 0:
        raise ValueError(f"counter amounts are non-negative ints, got {n!r}")


class GCounter:
    """Grow-only counter keyed by node id."""

    __slots__ = ("_slots", "_total")

    def __init__(self, slots: Mapping[str, int] | None = None) -> None:
        self._slots: dict[str, int] = {}
        self._total = 0
        for node, n in (slots or {}).items():
            _check_amount(n)
            if n:
                self._slots[node] = n
                self._total += n

    @property
    def value(self) -> int:
        """The sum of all slots (O(1): kept as a running total)."""
        return self._total

    def slot(self, node: str) -> int:
        """The value of ``node``'s slot (0 if never seen)."""
        return self._slots.get(node, 0)

    def slots(self) -> dict[str, int]:
        """A copy of the non-zero slots."""
        return dict(self._slots)

    def nodes(self) -> Iterator[str]:
        return iter(self._slots)

    def increment(self, node: str, n: int = 1) -> None:
        """Add ``n >= 0`` to ``node``'s own slot, in place."""
        _check_amount(n)
        if n:
            self._slots[node] = self._slots.get(node, 0) + n
            self._total += n

    def merge_slot(self, node: str, n: int) -> bool:
        """Merge one remote slot (per-slot max) in place; True if it grew."""
        _check_amount(n)
        current = self._slots.get(node, 0)
        if n <= current:
            return False
        self._slots[node] = n
        self._total += n - current
        return True

    def merge_in(self, other: GCounter) -> bool:
        """Merge ``other`` into this counter in place; True if anything grew."""
        grew = False
        for node, n in other._slots.items():
            grew = self.merge_slot(node, n) or grew
        return grew

    def merge(self, other: GCounter) -> GCounter:
        """A new counter holding the per-slot maximum of both; neither input changes."""
        merged = self.copy()
        merged.merge_in(other)
        return merged

    def copy(self) -> GCounter:
        clone = GCounter()
        clone._slots = dict(self._slots)
        clone._total = self._total
        return clone

    def only(self, node: str) -> GCounter:
        """The single-slot message carrying just ``node``'s slot."""
        n = self.slot(node)
        return GCounter({node: n} if n else None)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self._slots, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_bytes(cls, data: bytes) -> GCounter:
        """Decode ``to_bytes`` output; ValueError on anything malformed."""
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"GCounter bytes are not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("GCounter bytes must hold a JSON object of node -> count")
        return cls(raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GCounter):
            return NotImplemented
        return self._slots == other._slots

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GCounter({self._slots!r})"

"""An escrow (bounded) counter: usage that can never exceed a fixed total.

The budget is split into *rights*. At creation the ``owner`` node holds all
``total`` rights. A node may spend only rights it holds and may transfer its
own rights to another node; both are decided on the node's own replica, where
its own row of state is exact. State (all grow-only, merged by per-entry max):

    transfers[src][dst]   rights src has handed to dst   (written only by src)
    used[node]            rights node has spent          (written only by node)

    rights(i) = total·[i == owner] + Σ_j transfers[j][i] − Σ_j transfers[i][j] − used[i]

Invariant: Σ used ≤ total at every moment, whatever the gossip delay. A replica
may lag on what *others* sent to ``i`` (so ``i`` sees fewer rights than it
has), never on what ``i`` itself sent or spent, so no node's true rights ever
go negative. The price is liveness: a node with no rights must wait for a
transfer (see docs/budget.md, "Strict mode").

Rule the caller must keep: ``spend(node, …)`` and ``transfer(node, …)`` are only
ever called on ``node``'s own replica.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from gatekeeper.internal.crdt.gcounter import GCounter


class EscrowCounter:
    """Bounded counter with rights held per node (Balegas et al.'s Bounded Counter)."""

    __slots__ = ("_out", "_owner", "_total", "_used")

    def __init__(self, total: int, owner: str) -> None:
        if type(total) is not int or total < 0:
            raise ValueError(f"escrow total is a non-negative int, got {total!r}")
        self._total = total
        self._owner = owner
        self._out: dict[str, GCounter] = {}
        self._used = GCounter()

    @property
    def total(self) -> int:
        return self._total

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def value(self) -> int:
        """Rights spent by all nodes, as far as this replica knows."""
        return self._used.value

    def used(self, node: str) -> int:
        return self._used.slot(node)

    def rights(self, node: str) -> int:
        """Rights ``node`` holds by this replica's knowledge (exact on its own replica)."""
        held = self._total if node == self._owner else 0
        for src, row in self._out.items():
            if src != node:
                held += row.slot(node)
        mine = self._out.get(node)
        if mine is not None:
            held -= mine.value - mine.slot(node)
        return held - self._used.slot(node)

    def spend(self, node: str, n: int) -> bool:
        """Spend ``n`` of ``node``'s rights; False (and no change) if it holds fewer."""
        if n < 0:
            raise ValueError(f"spend amount must be >= 0, got {n}")
        if n > self.rights(node):
            return False
        self._used.increment(node, n)
        return True

    def transfer(self, src: str, dst: str, n: int) -> bool:
        """Hand ``n`` of ``src``'s rights to ``dst``; False if ``src`` holds fewer."""
        if n < 0:
            raise ValueError(f"transfer amount must be >= 0, got {n}")
        if src == dst or n > self.rights(src):
            return False
        self._out.setdefault(src, GCounter()).increment(dst, n)
        return True

    def sent(self, src: str, dst: str) -> int:
        """Rights ``src`` has handed to ``dst`` in all (grow-only)."""
        row = self._out.get(src)
        return 0 if row is None else row.slot(dst)

    def merge_transfer(self, src: str, dst: str, cumulative: int) -> bool:
        """Learn that ``src`` has handed ``dst`` ``cumulative`` rights in all (max-merge).

        What a transfer message carries: replaying it, or an older one, changes nothing.
        """
        if cumulative < 0:
            raise ValueError(f"transfer totals are >= 0, got {cumulative}")
        if src == dst or cumulative <= self.sent(src, dst):
            return False
        return self._out.setdefault(src, GCounter()).merge_in(GCounter({dst: cumulative}))

    def merge_in(self, other: EscrowCounter) -> bool:
        """Merge ``other`` in place (per-entry max); True if anything grew."""
        self._check_same(other)
        grew = self._used.merge_in(other._used)
        for src, row in other._out.items():
            grew = self._out.setdefault(src, GCounter()).merge_in(row) or grew
        return grew

    def merge(self, other: EscrowCounter) -> EscrowCounter:
        merged = self.copy()
        merged.merge_in(other)
        return merged

    def copy(self) -> EscrowCounter:
        clone = EscrowCounter(self._total, self._owner)
        clone._out = {src: row.copy() for src, row in self._out.items()}
        clone._used = self._used.copy()
        return clone

    def _check_same(self, other: EscrowCounter) -> None:
        if (self._total, self._owner) != (other._total, other._owner):
            raise ValueError("cannot merge escrow counters with different total or owner")

    def to_bytes(self) -> bytes:
        """JSON ``{"total", "owner", "out": {src: {dst: n}}, "used": {node: n}}``."""
        state = {
            "total": self._total,
            "owner": self._owner,
            "out": {src: row.slots() for src, row in self._out.items() if row.value},
            "used": self._used.slots(),
        }
        return orjson.dumps(state, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_bytes(cls, data: bytes) -> EscrowCounter:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"EscrowCounter bytes are not JSON: {exc}") from None
        if not isinstance(raw, dict) or set(raw) != {"total", "owner", "out", "used"}:
            raise ValueError("EscrowCounter bytes must hold total, owner, out and used")
        out, used = raw["out"], raw["used"]
        if not isinstance(out, dict) or not isinstance(used, dict):
            raise ValueError("EscrowCounter out/used must be JSON objects")
        counter = cls(raw["total"], str(raw["owner"]))
        counter._used = GCounter(used)
        counter._out = {str(src): GCounter(_as_mapping(row)) for src, row in out.items()}
        return counter

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EscrowCounter):
            return NotImplemented
        mine = {src: row for src, row in self._out.items() if row.value}
        theirs = {src: row for src, row in other._out.items() if row.value}
        return (self._total, self._owner, self._used, mine) == (
            other._total,
            other._owner,
            other._used,
            theirs,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EscrowCounter(total={self._total}, owner={self._owner!r}, used={self.value})"


def _as_mapping(row: object) -> Mapping[str, int]:
    if not isinstance(row, dict):
        raise ValueError("EscrowCounter transfer rows must be JSON objects")
    return row

"""Strict budgets: this node's escrow replicas and local holds (pure, no I/O).

A ``strict`` counter (``budget.mode: strict`` in the token, or ``limits.budget_mode``)
is an :class:`~internal.crdt.escrow.EscrowCounter` whose ``total`` is the budget. The
node that first admits traffic for it is its owner and starts with every right; the
others get shares by transfer (:mod:`gatekeeper.budget.escrow_bus`). Here:

    hold(cid, n)         reserve n of this node's rights in memory (in flight)
    settle(cid, h, a)    drop the hold h, spend the actual charge a (an escrow spend)
    give(cid, dst, n)    transfer up to n of this node's free rights to dst
    accept(...)          learn that src handed us rights (a signed transfer message)

A node can spend only rights it holds by its own exact row, so Σ spent ≤ total at
every moment whatever the network does: a partitioned node spends what it holds
and then refuses. A charge above the hold (an upstream billing past the cap) is spent
only as far as free rights go; the rest is reported as ``shortfall``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatekeeper.internal.crdt import EscrowCounter


@dataclass(frozen=True, slots=True)
class Grant:
    """A transfer made here: what to tell ``dst`` (the cumulative total src→dst)."""

    cid: str
    total: int
    owner: str
    src: str
    dst: str
    cumulative: int


class StrictBook:
    """This node's view of every strict counter it knows."""

    __slots__ = ("_esc", "_held", "dirty", "node", "shortfall")

    def __init__(self, node: str) -> None:
        self.node = node
        self._esc: dict[str, EscrowCounter] = {}
        self._held: dict[str, int] = {}
        self.dirty: set[str] = set()  # counters whose replica changed since last persisted
        self.shortfall = 0  # tokens charged beyond this node's rights (upstream past the cap)

    def known(self, cid: str) -> bool:
        return cid in self._esc

    def counter(self, cid: str) -> EscrowCounter | None:
        return self._esc.get(cid)

    def open(self, cid: str, total: int, owner: str) -> EscrowCounter:
        """The replica of ``cid`` (created empty: only ``owner`` holds rights)."""
        esc = self._esc.get(cid)
        if esc is None:
            esc = self._esc[cid] = EscrowCounter(total, owner)
        return esc

    def available(self, cid: str) -> int | None:
        """Free rights here: held by this node and not in flight; None if unknown."""
        esc = self._esc.get(cid)
        if esc is None:
            return None
        return max(0, esc.rights(self.node) - self._held.get(cid, 0))

    def held(self, cid: str) -> int:
        return self._held.get(cid, 0)

    def hold(self, cid: str, amount: int) -> bool:
        free = self.available(cid)
        if free is None or amount > free:
            return False
        if amount:
            self._held[cid] = self._held.get(cid, 0) + amount
        return True

    def settle(self, cid: str, held: int, actual: int) -> int:
        """Replace a hold by the actual charge; returns the shortfall (0 normally)."""
        esc = self._esc.get(cid)
        if esc is None:
            return 0
        left = self._held.get(cid, 0) - held
        if left > 0:
            self._held[cid] = left
        else:
            self._held.pop(cid, None)
        spend = min(actual, max(0, esc.rights(self.node) - self._held.get(cid, 0)))
        if spend:
            esc.spend(self.node, spend)
            self.dirty.add(cid)
        missing = actual - spend
        self.shortfall += missing
        return missing

    def give(self, cid: str, dst: str, amount: int) -> Grant | None:
        """Transfer up to ``amount`` free rights to ``dst``; None if none were free."""
        esc = self._esc.get(cid)
        free = self.available(cid)
        n = min(amount, free or 0)
        if esc is None or n <= 0 or dst == self.node or not esc.transfer(self.node, dst, n):
            return None
        self.dirty.add(cid)
        return Grant(cid, esc.total, esc.owner, self.node, dst, esc.sent(self.node, dst))

    def grant_for(self, cid: str, dst: str) -> Grant | None:
        """The current cumulative grant to ``dst`` (to re-send), if any."""
        esc = self._esc.get(cid)
        if esc is None or not esc.sent(self.node, dst):
            return None
        return Grant(cid, esc.total, esc.owner, self.node, dst, esc.sent(self.node, dst))

    def accept(self, cid: str, total: int, owner: str, src: str, cumulative: int) -> bool:
        """A transfer to this node from ``src`` (already authenticated); True if it grew."""
        esc = self.open(cid, total, owner)
        if (esc.total, esc.owner) != (total, owner):
            return False  # a different budget for the same counter: refuse to mix them
        grew = esc.merge_transfer(src, self.node, cumulative)
        if grew:
            self.dirty.add(cid)
        return grew

    def load(self, cid: str, state: EscrowCounter) -> None:
        """Merge a persisted replica (our own, after a restart)."""
        esc = self.open(cid, state.total, state.owner)
        if (esc.total, esc.owner) == (state.total, state.owner):
            esc.merge_in(state)

    def share_for(self, cid: str, need: int) -> int:
        """How much to hand a peer that asked for ``need``: enough, or half of what is free."""
        free = self.available(cid) or 0
        return min(free, max(need, free // 2))

"""One node's view of every budget and rate-limit counter: pure, synchronous, no I/O.

Each counter id (see :mod:`gatekeeper.budget.windows`) maps to a PN-Counter
with one slot per node. This node writes only its own slot:

    reserve   P += amount                      (held in flight, visible to peers)
    settle    N += reserved − actual  or  P += actual − reserved
    release   N += amount

so its slot value ``p − n`` is committed usage plus reservations in flight.
Other nodes' slots arrive from gossip through :meth:`BudgetLedger.merge_remote`
(per-half max); :meth:`BudgetLedger.own_dirty` hands the gossip layer the own
slots that changed. Admission uses the merged value, so one node never
overspends, and N nodes overspend by at most the bound in docs/budget.md.

Not thread-safe: one ledger per event loop (per worker process / node id).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from gatekeeper.budget.decide import Denial, denial_error, fits
from gatekeeper.budget.windows import is_node_id, parse_counter_id, window_end
from gatekeeper.internal.crdt import PNCounter, PNSlot

DEFAULT_GRACE = timedelta(minutes=10)
"""How long after its window ends a counter is kept, for late settles and gossip."""


class ReservationClosed(ValueError):
    """A reservation was settled after it had already been settled or released."""


@dataclass(frozen=True, slots=True, eq=False)
class Reservation:
    """A handle on amounts held against counters until settled or released."""

    id: int
    amounts: Mapping[str, int]


class BudgetLedger:
    """In-memory counters of one node: its own slots exactly, peers' as gossiped."""

    __slots__ = (
        "_counters",
        "_dirty",
        "_ends",
        "_held",
        "_horizon",
        "_ids",
        "_limits",
        "_node",
        "_open",
    )

    def __init__(self, node_id: str) -> None:
        if not is_node_id(node_id):
            raise ValueError(f"node id must match [A-Za-z0-9_=-]{{1,128}}, got {node_id!r}")
        self._node = node_id
        self._counters: dict[str, PNCounter] = {}
        self._held: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._open: set[int] = set()
        self._ids = itertools.count(1)
        self._ends: dict[str, datetime | None] = {}
        self._horizon: datetime | None = None
        self._limits: dict[str, int] = {}  # the last limit admission checked, per counter

    @property
    def node_id(self) -> str:
        return self._node

    def __len__(self) -> int:
        return len(self._counters)

    # -- admission -----------------------------------------------------------------

    def reserve(
        self, amounts: Mapping[str, int], limits: Mapping[str, int], now: datetime
    ) -> Reservation:
        """Hold ``amounts`` on every counter at once, or on none.

        Admitted only if, for every counter with an entry in ``limits``,
        ``merged usage + own in-flight + amount <= limit``; counters without a
        limit are tracked but never refuse. Raises BudgetExceeded (tok/usd) or
        RateLimited (req/tpm) otherwise, with Retry-After up to ``now``'s
        window reset.
        """
        denials: list[Denial] | None = None
        for cid, amount in amounts.items():
            if amount < 0:
                raise ValueError(f"reservation amounts must be >= 0, got {cid}={amount}")
            limit = limits.get(cid)
            if limit is None:
                continue
            self._limits[cid] = limit
            counter = self._counters.get(cid)
            total = 0 if counter is None else counter.value
            held = self._held.get(cid, 0)
            if not fits(total - held, held, amount, limit):
                denials = denials or []
                denials.append(Denial(cid, total, amount, limit))
        if denials:
            raise denial_error(denials, now)
        for cid, amount in amounts.items():
            counter = self._counters.get(cid)
            if counter is None:
                counter = self._new(cid)
            if amount:
                counter.increment(self._node, amount)
                self._held[cid] = self._held.get(cid, 0) + amount
                self._dirty.add(cid)
        rid = next(self._ids)
        self._open.add(rid)
        return Reservation(rid, dict(amounts))

    def settle(self, reservation: Reservation, actual: Mapping[str, int]) -> None:
        """Replace the held amounts with real usage.

        Counters absent from ``actual`` are committed at their reserved amount
        (conservative); counters in ``actual`` but not reserved are committed
        as plain usage. Counters already garbage-collected are skipped.
        Raises ReservationClosed if the reservation was settled or released.
        """
        if reservation.id not in self._open:
            raise ReservationClosed(f"reservation {reservation.id} is already closed")
        self._open.discard(reservation.id)
        held = reservation.amounts
        for cid, reserved in held.items():
            used = actual.get(cid, reserved)
            if used < 0:
                raise ValueError(f"actual usage must be >= 0, got {cid}={used}")
            self._adjust(cid, reserved, used)
        for cid, used in actual.items():
            if cid not in held:
                if used < 0:
                    raise ValueError(f"actual usage must be >= 0, got {cid}={used}")
                self._adjust(cid, 0, used)

    def release(self, reservation: Reservation) -> bool:
        """Give back everything held (the request failed); False if already closed."""
        if reservation.id not in self._open:
            return False
        self._open.discard(reservation.id)
        for cid, reserved in reservation.amounts.items():
            self._adjust(cid, reserved, 0)
        return True

    def _adjust(self, cid: str, reserved: int, used: int) -> None:
        counter = self._counters.get(cid)
        if counter is None:
            if reserved or not used:
                return  # its window was collected; late usage no longer matters
            counter = self._create(cid)
            if counter is None:
                return
        if reserved:
            left = self._held.get(cid, 0) - reserved
            if left > 0:
                self._held[cid] = left
            else:
                self._held.pop(cid, None)
        if used == reserved:
            return
        if used < reserved:
            counter.decrement(self._node, reserved - used)
        else:
            counter.increment(self._node, used - reserved)
        self._dirty.add(cid)

    # -- gossip --------------------------------------------------------------------

    def merge_remote(self, counter_id: str, node_id: str, slot: PNSlot) -> bool:
        """Merge a peer's slot (per-half max); True if the view grew.

        Our own slot echoed back by the KV watcher is merged like ``load_own``.
        Slots for windows already collected are ignored.
        """
        if node_id == self._node:
            return self.load_own(counter_id, slot)
        counter = self._counters.get(counter_id) or self._create(counter_id)
        if counter is None:
            return False
        return counter.merge_slot(node_id, slot)

    def own_dirty(self) -> list[tuple[str, PNSlot]]:
        """Own slots changed since the last call, for the gossip layer to publish."""
        node = self._node
        changed = [
            (cid, self._counters[cid].slot(node)) for cid in self._dirty if cid in self._counters
        ]
        self._dirty.clear()
        return changed

    def load_own(self, counter_id: str, slot: PNSlot) -> bool:
        """Restore our own slot after a restart (per-half max with what we hold).

        Call for every own slot found in KV before admitting traffic. If the
        result differs from ``slot`` (we had moved on meanwhile), the slot is
        marked dirty so the joined value gets republished.
        """
        counter = self._counters.get(counter_id) or self._create(counter_id)
        if counter is None:
            return False
        grew = counter.merge_slot(self._node, slot)
        if counter.slot(self._node) != slot:
            self._dirty.add(counter_id)
        return grew

    # -- reading -------------------------------------------------------------------

    def value(self, counter_id: str) -> int:
        """Merged usage: every node's committed usage plus reservations in flight."""
        counter = self._counters.get(counter_id)
        return 0 if counter is None else counter.value

    def held(self, counter_id: str) -> int:
        """What this node holds in flight on ``counter_id`` (part of ``value``)."""
        return self._held.get(counter_id, 0)

    def own(self, counter_id: str) -> PNSlot:
        """This node's slot of ``counter_id``."""
        counter = self._counters.get(counter_id)
        return PNSlot() if counter is None else counter.slot(self._node)

    def remaining(self, counter_id: str, limit: int) -> int:
        """What a new reservation could still take, never negative."""
        return max(0, limit - self.value(counter_id))

    def limit_of(self, counter_id: str) -> int | None:
        """The limit the last admission on ``counter_id`` checked (None: none yet)."""
        return self._limits.get(counter_id)

    def open_reservations(self) -> int:
        return len(self._open)

    # -- expiry --------------------------------------------------------------------

    def gc(self, now: datetime, grace: timedelta = DEFAULT_GRACE) -> list[str]:
        """Drop counters whose window ended at least ``grace`` before ``now``.

        Returns the dropped ids (the gossip layer may purge our KV keys for
        them). Later gossip or settles for those windows are ignored.
        """
        horizon = now - grace
        dropped = [cid for cid in self._counters if self._ended(cid, horizon)]
        for cid in dropped:
            del self._counters[cid]
            self._held.pop(cid, None)
            self._limits.pop(cid, None)
            self._dirty.discard(cid)
        if self._horizon is None or horizon > self._horizon:
            self._horizon = horizon
        self._ends = {w: end for w, end in self._ends.items() if end is None or end > horizon}
        return dropped

    def _window_end(self, cid: str) -> datetime | None:
        window = cid.rpartition(".")[2]
        if window not in self._ends:
            self._ends[window] = window_end(window)
        return self._ends[window]

    def _ended(self, cid: str, horizon: datetime) -> bool:
        end = self._window_end(cid)
        return end is not None and end <= horizon

    def _new(self, cid: str) -> PNCounter:
        parse_counter_id(cid)  # once per counter: reject malformed ids early
        counter = self._counters[cid] = PNCounter()
        return counter

    def _create(self, cid: str) -> PNCounter | None:
        """A new counter for gossip or late usage, unless its window was collected."""
        if self._horizon is not None and self._ended(cid, self._horizon):
            return None
        return self._new(cid)

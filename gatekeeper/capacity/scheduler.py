"""Admit, queue or shed; reserved shares; who goes next. Pure: no clock, no I/O.

Capacity is ``max_in_flight`` slots. A tenant with ``reserved[t]`` slots may always use
that many (nobody else can take them: requests cannot be pre-empted, so a lent slot
would not come back in time); everything else is the shared pool, which any tenant,
reserved or not, may use once its own share is full. So ``fits(t)`` is::

    used[t] < reserved[t]  or  borrowed < max_in_flight - sum(reserved)

where ``borrowed`` counts the slots held beyond their tenant's reservation.

A request that fits takes a slot at once (two dict reads and a few int updates). One
that does not fit waits in its lane. Invariant: after every release no queued waiter
fits, so an arrival that fits never overtakes a waiter that could have run.

Who is next when a slot frees (``_pick``): strict priority — the highest lane with a
waiter that fits; inside a lane, round robin over tenants (FIFO per tenant). Anti-
starvation: critical always goes first; below it, a lane that has been passed over
``max_skips`` times while it had a fitting waiter takes the next grant, so ``batch``
gets at least one grant in ``max_skips + 1`` of those not taken by critical.

Shedding (``offer``), lowest lane first:

- the wait estimate (waiters ahead × mean hold / slots) exceeds the request's wait
  budget → shed the arrival (503 ``queue_wait_exceeded``);
- the arrival's lane is full → shed the arrival (429 ``lane_queue_full``);
- all lanes together hold ``max_queued`` → evict the newest waiter of the lowest lane
  below the arrival's (503 ``shed_for_priority``) and queue the arrival, or shed the
  arrival when no lower lane holds a waiter (429 ``queue_full``). A waiter is never
  evicted for an arrival of its own lane or a lower one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from gatekeeper.capacityconfig import LANES, CapacityConfig

__all__ = ["Decision", "Scheduler", "Waiter"]


class Waiter:
    """One queued request. ``token`` is the I/O layer's handle (a future)."""

    __slots__ = ("granted", "lane", "since", "tenant", "token")

    def __init__(self, tenant: str, lane: int, since: float, token: Any = None) -> None:
        self.tenant, self.lane, self.since, self.token = tenant, lane, since, token
        self.granted = False


@dataclass(frozen=True, slots=True)
class Decision:
    kind: str  # admit | queue | shed
    reason: str = ""  # shed: lane_queue_full | queue_full | queue_wait_exceeded
    waiter: Waiter | None = None  # queue: the new waiter
    evicted: Waiter | None = None  # queue: a lower-lane waiter shed to make room


ADMIT = Decision("admit")


class Scheduler:
    def __init__(self, config: CapacityConfig) -> None:
        self.config = config
        self.limit = config.max_in_flight
        self.reserved = dict(config.reserved)
        self.shared = self.limit - sum(self.reserved.values())
        self.bounds = tuple(config.lanes[n].queue for n in LANES)
        self.in_flight = 0
        self.borrowed = 0  # slots held beyond their tenant's reservation
        self.used: dict[str, int] = {}  # per tenant, only while reservations exist
        self.queues: tuple[dict[str, deque[Waiter]], ...] = tuple({} for _ in LANES)
        self.depth = [0] * len(LANES)
        self.queued = 0
        self.skips = [0] * len(LANES)
        self.mean_hold_s = 0.0  # moving average of how long a slot is held

    # ------------------------------------------------------------------ shares

    def fits(self, tenant: str) -> bool:
        if not self.reserved:
            return self.in_flight < self.limit
        if self.used.get(tenant, 0) < self.reserved.get(tenant, 0):
            return True
        return self.borrowed < self.shared and self.in_flight < self.limit

    def _take(self, tenant: str) -> None:
        self.in_flight += 1
        if self.reserved:
            used = self.used.get(tenant, 0)
            if used >= self.reserved.get(tenant, 0):
                self.borrowed += 1
            self.used[tenant] = used + 1

    def release(self, tenant: str, held_s: float) -> list[Waiter]:
        """A slot comes back; the waiters granted in its place (already holding slots)."""
        self.in_flight -= 1
        if self.reserved:
            used = self.used[tenant] - 1
            if used >= self.reserved.get(tenant, 0):
                self.borrowed -= 1
            if used:
                self.used[tenant] = used
            else:
                del self.used[tenant]
        self.mean_hold_s += (held_s - self.mean_hold_s) * 0.2 if self.mean_hold_s else held_s
        return self._drain() if self.queued else []

    def resize(self, limit: int) -> list[Waiter]:
        """A new limit (a learned one); the waiters it lets in, already holding slots.

        Running requests are never pre-empted: past a lower limit, arrivals wait until
        enough of them have finished."""
        self.limit = limit
        self.shared = limit - sum(self.reserved.values())
        return self._drain() if self.queued else []

    # ------------------------------------------------------------------ arrivals

    def offer(self, tenant: str, lane: int, now: float, wait_budget_s: float) -> Decision:
        """What to do with an arriving request of ``tenant`` in ``lane``."""
        if self.fits(tenant):
            self._take(tenant)
            return ADMIT
        ahead = sum(self.depth[: lane + 1])
        if self.mean_hold_s * (ahead + 1) / max(1, self.limit) > wait_budget_s:
            return Decision("shed", "queue_wait_exceeded")
        if self.depth[lane] >= self.bounds[lane]:
            return Decision("shed", "lane_queue_full")
        evicted = None
        if self.queued >= self.config.max_queued:
            evicted = self._evict_below(lane)
            if evicted is None:
                return Decision("shed", "queue_full")
        waiter = Waiter(tenant, lane, now)
        self.queues[lane].setdefault(tenant, deque()).append(waiter)
        self.depth[lane] += 1
        self.queued += 1
        return Decision("queue", waiter=waiter, evicted=evicted)

    def cancel(self, waiter: Waiter) -> bool:
        """Take a waiter out of its queue (gave up, timed out); False if it was not there."""
        q = self.queues[waiter.lane].get(waiter.tenant)
        if waiter.granted or q is None or waiter not in q:
            return False
        q.remove(waiter)
        if not q:
            del self.queues[waiter.lane][waiter.tenant]
        self.depth[waiter.lane] -= 1
        self.queued -= 1
        return True

    def _evict_below(self, lane: int) -> Waiter | None:
        for low in range(len(LANES) - 1, lane, -1):
            if self.depth[low]:
                newest = max((q[-1] for q in self.queues[low].values()), key=lambda w: w.since)
                self.cancel(newest)
                return newest
        return None

    # ------------------------------------------------------------------ who is next

    def _drain(self) -> list[Waiter]:
        granted: list[Waiter] = []
        while self.queued and self.in_flight < self.limit:
            waiter = self._pick()
            if waiter is None:
                break
            self.cancel(waiter)
            queues = self.queues[waiter.lane]
            if waiter.tenant in queues:  # its tenant goes to the back of the rotation
                queues[waiter.tenant] = queues.pop(waiter.tenant)
            waiter.granted = True
            self._take(waiter.tenant)
            granted.append(waiter)
        return granted

    def _pick(self) -> Waiter | None:
        first = self._head(0)
        if first is not None:
            return first  # critical: strict priority, never delayed
        heads = [None, *(self._head(i) for i in range(1, len(LANES)))]
        chosen = next(
            (
                i
                for i, h in enumerate(heads)
                if h is not None and self.skips[i] >= self.config.max_skips
            ),
            next((i for i, h in enumerate(heads) if h is not None), None),
        )
        if chosen is None:
            return None
        for j, h in enumerate(heads):
            if h is not None:  # passed over while it had a waiter that could run
                self.skips[j] = 0 if j == chosen else self.skips[j] + 1
        return heads[chosen]

    def _head(self, lane: int) -> Waiter | None:
        """The lane's next waiter that fits: its first tenant in rotation that fits."""
        for tenant, q in self.queues[lane].items():
            if self.fits(tenant):
                return q[0]
        return None

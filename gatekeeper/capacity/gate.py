"""The asyncio around the scheduler: a request takes a slot, or waits, or is shed.

``enter`` is synchronous when the node has room (the scheduler's fast path): it marks
the request's fair-share ``Slot`` as holding a capacity slot, and ``Slot.release``
(called on every path: reply, error, hang-up, a stream's end) gives it back. Only a
request that must wait gets a coroutine to await. While it waits it holds nothing but
its queue place; a client hang-up (the handler cancelled) gives the place back, or the
slot if it was granted at that very moment. A shed request never reached the budget
or a provider: it is charged nothing and does not count against provider health.

A routed model or provider with a limit of its own (``capacity.models``,
``capacity.providers``) has a gate of its own, a ``CapacityGate`` whose reservations
are the provider's ``capacity.provider_reserved`` (models have none);
a request passes through them in the order model, provider, node (``_through``).
With ``capacity.learn`` the provider limits move (``learn.Aimd``): ``observe`` takes
every finished upstream attempt (the provider pool's hook) and resizes that provider's
scheduler, granting waiters when the limit grows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from gatekeeper.auth.claims import Claims
from gatekeeper.budget.concurrency import Slot
from gatekeeper.capacity.lanes import HEADER, lane_of
from gatekeeper.capacity.learn import Aimd, signal_of
from gatekeeper.capacity.scheduler import Decision, Scheduler, Waiter
from gatekeeper.capacityconfig import LANES, CapacityConfig
from gatekeeper.errors import ClientDisconnected, GatewayError, RateLimited, ServiceUnavailable
from gatekeeper.http.inbound import Readable
from gatekeeper.providers.failover import Attempt

__all__ = ["CapacityGate", "LaneMetrics"]


class LaneMetrics(Protocol):
    def lane_waited(self, lane: str, seconds: float) -> None: ...

    def lane_shed(self, lane: str, reason: str) -> None: ...


class _NoMetrics:
    def lane_waited(self, lane: str, seconds: float) -> None:
        return None

    def lane_shed(self, lane: str, reason: str) -> None:
        return None


_MESSAGES = {
    "lane_queue_full": "the {lane} lane's queue is full",
    "queue_full": "every queue is full",
    "queue_wait_exceeded": "a {lane} request would wait longer than its deadline",
    "shed_for_priority": "this {lane} request gave its queue place to a higher-priority one",
}
SHED_REASONS = tuple(_MESSAGES)  # the error codes of a request shed at the gate


class CapacityGate:
    """The node's upstream concurrency with priority lanes (``capacity:``)."""

    def __init__(
        self,
        config: CapacityConfig,
        request_timeout_s: float,
        metrics: LaneMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.scheduler = Scheduler(config)
        self.metrics: LaneMetrics = metrics or _NoMetrics()
        self.clock = clock
        self.budgets = tuple(min(config.lanes[n].max_wait_s, request_timeout_s) for n in LANES)
        inner = dataclasses.replace(
            config, reserved={}, providers={}, models={}, provider_reserved={}
        )

        def limit(n: int, reserved: Mapping[str, int] | None = None) -> CapacityGate:
            # the same lanes; reservations only where ``provider_reserved`` gives them
            own = dataclasses.replace(inner, max_in_flight=n, reserved=dict(reserved or {}))
            return CapacityGate(own, request_timeout_s, metrics, clock)

        reserved = config.provider_reserved
        self.providers = {n: limit(c, reserved.get(n)) for n, c in config.providers.items()}
        self.models = {name: limit(n) for name, n in config.models.items()}
        self.limited = bool(self.providers or self.models)
        learn = config.learn
        self.learned = (
            {n: Aimd(c, learn.min_in_flight, learn.backoff) for n, c in config.providers.items()}
            if learn.enabled
            else {}
        )

    def enter(
        self, slot: Slot, claims: Claims, request: Readable, provider: str = "", model: str = ""
    ) -> Coroutine[Any, Any, None] | None:
        """Take a capacity slot for ``slot``'s request, or a coroutine that waits for one.

        With a limit for the routed ``model`` or its ``provider``: the model's slot first,
        then the provider's, then the node's (always in that order, so two requests never
        hold one each while waiting for the other's).
        """
        if not self.limited:
            return self._enter(slot, claims, request)
        found = (self.models.get(model), self.providers.get(provider))
        gates = tuple(g for g in found if g is not None)
        if not gates:
            return self._enter(slot, claims, request)
        return _through((*gates, self), slot, claims, request)

    def _enter(
        self, slot: Slot, claims: Claims, request: Readable
    ) -> Coroutine[Any, Any, None] | None:
        s, tenant = self.scheduler, claims.tenant
        if s.fits(tenant):  # not saturated: the whole cost of lanes on the common path
            s._take(tenant)
            slot.gate, slot.since = self, self.clock()
            return None
        header = request.headers.get(HEADER)
        lane = lane_of(claims.priority, self.config.default_priority, header)
        decision = s.offer(tenant, lane, self.clock(), self.budgets[lane])
        if decision.kind == "admit":
            slot.gate, slot.since = self, self.clock()
            return None
        if decision.kind == "shed":
            raise self._shed(lane, decision.reason)
        return self._wait(slot, decision, request)

    async def _wait(self, slot: Slot, decision: Decision, request: Readable) -> None:
        """Wait for the grant, the deadline, an eviction or the client's hang-up."""
        waiter = decision.waiter
        assert waiter is not None
        if decision.evicted is not None:
            self._evict(decision.evicted)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter.token = future
        gone = asyncio.ensure_future(_hang_up(request))  # held here, cancelled below
        try:
            await asyncio.wait(
                (future, gone), timeout=self.budgets[waiter.lane], return_when="FIRST_COMPLETED"
            )
            if gone.done():
                raise ClientDisconnected("The client closed the connection while queued")
            if future.done():
                future.result()  # an eviction raises its 503 here
            elif not waiter.granted:
                raise self._shed(waiter.lane, "queue_wait_exceeded")
        except BaseException:  # shed, evicted, hung up, or cancelled
            self._waited(waiter)
            if waiter.granted:  # granted just as it gave up: pass the slot on
                self._give_back(slot.tenant, 0.0)
            else:
                self.scheduler.cancel(waiter)
            raise
        finally:
            gone.cancel()
        self._waited(waiter)
        slot.gate, slot.since = self, self.clock()

    def leave(self, slot: Slot) -> None:
        """``slot``'s request is done with its capacity slot (``Slot.release`` calls this)."""
        self._give_back(slot.tenant, self.clock() - slot.since)

    def _give_back(self, tenant: str, held_s: float) -> None:
        self._grant(self.scheduler.release(tenant, held_s))

    def _grant(self, waiters: list[Waiter]) -> None:
        for waiter in waiters:
            future = waiter.token
            if future is not None and not future.done():
                future.set_result(None)
            # else: it is giving up right now and will see ``granted`` and give it back

    def observe(self, attempt: Attempt) -> None:
        """A finished upstream attempt: what it says moves its provider's learned limit."""
        aimd = self.learned.get(attempt.provider)
        if aimd is None:
            return
        signal = signal_of(attempt.status, attempt.error, attempt.ms, self.config.learn.latency_s)
        if signal is None:
            return
        inner = self.providers[attempt.provider]
        s = inner.scheduler
        limit = aimd.observe(signal, s.in_flight, self.clock(), s.mean_hold_s)
        if limit != s.limit:
            inner._grant(s.resize(limit))

    def limits(self) -> dict[str, int]:
        """Each provider's limit now (learned or configured), for the metrics."""
        return {name: gate.scheduler.limit for name, gate in self.providers.items()}

    def _evict(self, waiter: Waiter) -> None:
        future = waiter.token
        if future is not None and not future.done():
            future.set_exception(self._shed(waiter.lane, "shed_for_priority"))

    def _waited(self, waiter: Waiter) -> None:
        self.metrics.lane_waited(LANES[waiter.lane], self.clock() - waiter.since)

    def _shed(self, lane: int, reason: str) -> GatewayError:
        name = LANES[lane]
        self.metrics.lane_shed(name, reason)
        retry = self.config.retry_after_s
        message = (
            f"The gateway is at capacity: {_MESSAGES[reason].format(lane=name)}; "
            f"retry after {max(1, round(retry))} s"
        )
        if reason in ("lane_queue_full", "queue_full"):
            return RateLimited(message, retry_after=retry, code=reason)
        return ServiceUnavailable(
            message, code=reason, headers={"retry-after": str(max(1, int(retry + 0.999)))}
        )

    def depths(self) -> dict[str, int]:
        """Waiters per lane: the node's, every provider's and every model's queues together."""
        total = list(self.scheduler.depth)
        for inner in (*self.providers.values(), *self.models.values()):
            total = [a + b for a, b in zip(total, inner.scheduler.depth, strict=True)]
        return dict(zip(LANES, total, strict=True))


def _through(
    gates: tuple[CapacityGate, ...], slot: Slot, claims: Claims, request: Readable
) -> Coroutine[Any, Any, None] | None:
    """Take every gate's slot in order; from the first that must wait on, a coroutine.

    ``slot.gate`` always names what is held, so a shed (raised here or while waiting), a
    hang-up or a cancellation gives exactly that back through ``Slot.release``.
    """
    for i, gate in enumerate(gates):
        waiting = gate._enter(slot, claims, request)
        if waiting is not None:
            return _wait_through(waiting, gates, i, slot, claims, request)
        slot.gate = _held(gates[: i + 1])
    return None


async def _wait_through(
    waiting: Coroutine[Any, Any, None],
    gates: tuple[CapacityGate, ...],
    at: int,
    slot: Slot,
    claims: Claims,
    request: Readable,
) -> None:
    await waiting  # holding gates[:at] (slot.gate), waiting for gates[at]
    slot.gate = _held(gates[: at + 1])
    for i in range(at + 1, len(gates)):
        more = gates[i]._enter(slot, claims, request)
        if more is not None:
            await more
        slot.gate = _held(gates[: i + 1])


def _held(gates: tuple[CapacityGate, ...]) -> CapacityGate | _Chain:
    return gates[0] if len(gates) == 1 else _Chain(gates)


class _Chain:
    """The gate of a request holding several slots: a model's, a provider's, the node's."""

    __slots__ = ("gates",)

    def __init__(self, gates: tuple[CapacityGate, ...]) -> None:
        self.gates = gates

    def leave(self, slot: Slot) -> None:
        for gate in self.gates:
            gate.leave(slot)


async def _hang_up(request: Readable) -> None:
    """Returns when the client disconnects (its body has been read: nothing else arrives)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass

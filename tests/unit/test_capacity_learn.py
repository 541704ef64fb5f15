"""Provider limits learned from the upstream's answers (AIMD, ``capacity.learn``).

The rule (``capacity.learn``) is pure and checked first; then the scheduler's resize and the
gate that feeds finished attempts into it, with in-memory requests and an injected clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.auth.claims import Claims
from gatekeeper.budget.concurrency import ConcurrencyLimiter, Slot
from gatekeeper.capacity.gate import CapacityGate
from gatekeeper.capacity.learn import MIN_COOLDOWN_S, Aimd, Signal, signal_of
from gatekeeper.capacity.scheduler import Scheduler
from gatekeeper.capacityconfig import CapacityConfig, LearnConfig, parse_capacity
from gatekeeper.errors import ConfigError
from gatekeeper.providers.failover import Attempt

NOW = datetime.now(UTC)
OVER, FINE = Signal(True), Signal(False)


class TestSignals:
    def test_429_503_529_and_timeouts_say_overloaded(self) -> None:
        for status in (429, 503, 529):
            assert signal_of(status, "upstream_rate_limited", 12.0, 0.0) == OVER
        assert signal_of(None, "upstream_timeout", 30_000.0, 0.0) == OVER

    def test_answers_and_the_clients_own_errors_say_fine(self) -> None:
        for status in (200, 400, 404, 422):
            assert signal_of(status, None, 12.0, 0.0) == FINE
        assert signal_of(500, "upstream_error", 12.0, 0.0) == FINE  # a fault, not pushback

    def test_an_attempt_that_never_reached_the_upstream_says_nothing(self) -> None:
        assert signal_of(None, "breaker open", 0.0, 0.0) is None
        assert signal_of(None, "upstream_busy", 0.0, 0.0) is None

    def test_a_slow_answer_counts_only_with_a_latency_target(self) -> None:
        assert signal_of(200, None, 2_500.0, 0.0) == FINE
        assert signal_of(200, None, 2_500.0, 2.0) == OVER
        assert signal_of(200, None, 1_500.0, 2.0) == FINE
        assert signal_of(400, None, 2_500.0, 2.0) == FINE  # the client's error, however slow


class TestAimd:
    def test_starts_at_the_ceiling_and_halves_on_pushback(self) -> None:
        a = Aimd(16)
        assert a.limit == 16
        assert a.observe(OVER, 16, now=10.0, hold_s=0.1) == 8
        assert a.observe(OVER, 16, now=10.2, hold_s=0.1) == 4

    def test_one_decrease_per_round_trip(self) -> None:
        """The 429s of requests sent under the old limit do not lower it again."""
        a = Aimd(16)
        a.observe(OVER, 16, now=10.0, hold_s=0.5)
        for t in (10.1, 10.2, 10.4):
            assert a.observe(OVER, 16, now=t, hold_s=0.5) == 8
        assert a.observe(OVER, 8, now=10.5, hold_s=0.5) == 4
        assert a.decreases == 2

    def test_the_cool_down_has_a_floor_when_slots_are_held_briefly(self) -> None:
        a = Aimd(16)
        a.observe(OVER, 16, now=10.0, hold_s=0.0)
        assert a.observe(OVER, 16, now=10.0 + MIN_COOLDOWN_S / 2, hold_s=0.0) == 8
        assert a.observe(OVER, 16, now=10.0 + MIN_COOLDOWN_S, hold_s=0.0) == 4

    def test_never_below_the_floor(self) -> None:
        a = Aimd(16, floor=3)
        for i in range(10):
            a.observe(OVER, 16, now=float(i), hold_s=0.1)
        assert a.limit == 3

    def test_grows_one_slot_per_limit_answers_while_in_use(self) -> None:
        a = Aimd(16)
        a.observe(OVER, 16, now=0.0, hold_s=0.1)  # 8
        for _ in range(8):
            a.observe(FINE, 8, now=1.0, hold_s=0.1)
        assert a.limit == 9
        for _ in range(200):
            a.observe(FINE, 16, now=1.0, hold_s=0.1)
        assert a.limit == 16  # the ceiling: the configured limit

    def test_an_idle_limit_learns_nothing(self) -> None:
        a = Aimd(16)
        a.observe(OVER, 16, now=0.0, hold_s=0.1)  # 8
        for _ in range(1000):
            a.observe(FINE, 3, now=1.0, hold_s=0.1)  # under half of it in use
        assert a.limit == 8

    def test_refuses_a_floor_above_the_ceiling_and_a_bad_factor(self) -> None:
        with pytest.raises(ValueError, match="floor"):
            Aimd(2, floor=3)
        for factor in (0.0, 1.0, 1.5):
            with pytest.raises(ValueError, match="factor"):
                Aimd(8, backoff=factor)

    @settings(max_examples=300, deadline=None)
    @given(
        ceiling=st.integers(1, 64),
        floor=st.integers(1, 64),
        backoff=st.floats(0.05, 0.95),
        events=st.lists(
            st.tuples(st.booleans(), st.integers(0, 80), st.floats(0, 0.2), st.floats(0, 1)),
            max_size=200,
        ),
    )
    def test_the_limit_stays_between_floor_and_ceiling(
        self,
        ceiling: int,
        floor: int,
        backoff: float,
        events: list[tuple[bool, int, float, float]],
    ) -> None:
        floor = min(floor, ceiling)
        a, now = Aimd(ceiling, floor, backoff), 0.0
        for overloaded, in_flight, step, hold in events:
            now += step
            before = a.limit
            after = a.observe(Signal(overloaded), in_flight, now, hold)
            assert floor <= after <= ceiling
            assert after <= before if overloaded else after >= before


class TestResize:
    def test_growing_grants_waiters_shrinking_preempts_no_one(self) -> None:
        s = Scheduler(CapacityConfig(max_in_flight=2))
        assert s.offer("a", 1, 0.0, 30.0).kind == "admit"
        assert s.offer("a", 1, 0.0, 30.0).kind == "admit"
        queued = [s.offer("a", 1, 0.0, 30.0).waiter for _ in range(3)]
        assert s.resize(1) == [] and s.in_flight == 2  # both keep running
        s.release("a", 0.1)
        assert s.queued == 3 and s.in_flight == 1  # at the new limit: nobody let in
        granted = s.resize(3)
        assert granted == queued[:2] and s.in_flight == 3 and s.queued == 1


class Request:
    headers: Mapping[str, str] = {}

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}


def claims(n: int) -> Claims:
    return Claims("i", f"k{n}", f"j{n}", NOW, NOW, NOW, "acme")  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def learning_gate(clock: Clock, ceiling: int = 4, **learn: Any) -> CapacityGate:
    config = CapacityConfig(
        max_in_flight=64, providers={"up": ceiling}, learn=LearnConfig(enabled=True, **learn)
    )
    return CapacityGate(config, 30.0, clock=clock)


def rate_limited(provider: str = "up") -> Attempt:
    return Attempt(provider, "m", 429, "upstream_rate_limited", 3.0)


def answered(provider: str = "up") -> Attempt:
    return Attempt(provider, "m", 200, None, 3.0)


async def enter(g: CapacityGate, limiter: ConcurrencyLimiter, n: int) -> Slot:
    slot = limiter.acquire(claims(n), False)
    waiting = g.enter(slot, claims(n), Request(), "up")  # type: ignore[arg-type]
    if waiting is not None:
        await waiting
    return slot


class TestGate:
    async def test_a_429_lowers_the_providers_limit_and_arrivals_queue_under_it(self) -> None:
        clock, limiter = Clock(), ConcurrencyLimiter()
        g = learning_gate(clock)
        held = [await enter(g, limiter, n) for n in range(4)]
        g.observe(rate_limited())
        assert g.limits() == {"up": 2}
        for slot in held[:3]:  # 4 → 1 in flight: the new limit of 2 has room for one more
            slot.release()
        one = await enter(g, limiter, 10)
        waiting = asyncio.ensure_future(enter(g, limiter, 11))
        await asyncio.sleep(0)
        assert not waiting.done() and g.depths()["standard"] == 1
        held[3].release()
        (await waiting).release()
        one.release()
        assert g.providers["up"].scheduler.in_flight == 0 and g.scheduler.in_flight == 0

    async def test_growth_lets_a_queued_request_in_without_a_release(self) -> None:
        clock, limiter = Clock(), ConcurrencyLimiter()
        g = learning_gate(clock)
        g.observe(rate_limited())  # 4 → 2
        held = [await enter(g, limiter, n) for n in range(2)]
        waiting = asyncio.ensure_future(enter(g, limiter, 9))
        await asyncio.sleep(0)
        assert not waiting.done()
        g.observe(answered())  # 2 + 1/2
        g.observe(answered())  # 3: one more slot, granted to the waiter
        slot = await asyncio.wait_for(waiting, 1)
        assert g.limits() == {"up": 3} and g.providers["up"].scheduler.in_flight == 3
        for s in (*held, slot):
            s.release()

    async def test_other_providers_and_a_gate_without_learning_are_untouched(self) -> None:
        clock = Clock()
        g = learning_gate(clock)
        g.observe(rate_limited("elsewhere"))
        g.observe(Attempt("up", "m", None, "breaker open", 0.0))
        assert g.limits() == {"up": 4}
        fixed = CapacityGate(CapacityConfig(max_in_flight=8, providers={"up": 4}), 30.0)
        fixed.observe(rate_limited())
        assert fixed.limits() == {"up": 4} and fixed.learned == {}

    async def test_the_floor_and_backoff_come_from_the_config(self) -> None:
        clock = Clock()
        g = learning_gate(clock, ceiling=10, min_in_flight=3, backoff=0.8)
        g.observe(rate_limited())
        assert g.limits() == {"up": 8}
        for _ in range(10):
            clock.t += 1
            g.observe(rate_limited())
        assert g.limits() == {"up": 3}


class TestConfig:
    def test_off_by_default(self) -> None:
        assert parse_capacity({"max_in_flight": 4}).learn == LearnConfig()

    def test_read_with_its_providers(self) -> None:
        c = parse_capacity(
            {
                "max_in_flight": 32,
                "providers": {"openai": 16},
                "learn": {"enabled": True, "min_in_flight": 2, "backoff": 0.7, "latency_s": 20},
            }
        )
        assert c.learn == LearnConfig(True, 2, 0.7, 20.0)

    @pytest.mark.parametrize(
        ("learn", "providers", "message"),
        [
            ({"enabled": True}, {}, "needs capacity.providers"),
            ({"backoff": 1.0}, {"openai": 4}, "between 0 and 1"),
            ({"backoff": 0}, {"openai": 4}, "must be a number > 0"),
            ({"latency_s": -1}, {"openai": 4}, ">= 0"),
            ({"enabled": True, "min_in_flight": 5}, {"openai": 4}, "above the limit"),
            ({"enabled": "yes"}, {"openai": 4}, "true or false"),
            ({"rate": 3}, {"openai": 4}, "unknown key"),
        ],
    )
    def test_refuses_what_cannot_work(
        self, learn: dict[str, Any], providers: dict[str, int], message: str
    ) -> None:
        with pytest.raises(ConfigError, match=message):
            parse_capacity({"max_in_flight": 8, "providers": providers, "learn": learn})

"""The circuit breaker as a state machine, and the pool's backoff, deadline and breakers.

``Breaker`` takes the time as an argument, so its tests pass numbers. The pool
tests use in-memory ``Provider`` objects (no HTTP) and a hand-driven clock where the
breaker's time matters; backoff waits are real but short.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from gatekeeper.errors import ProviderError, ProviderTimeout, ProviderUnavailable, UpstreamBusy
from gatekeeper.providers.base import Call, Reply, ReplyStream, Usage
from gatekeeper.providers.failover import Attempt, Breaker, FailoverPolicy
from gatekeeper.providers.pool import ProviderPool
from gatekeeper.routing.matrix import ModelSpec

POLICY = FailoverPolicy(breaker_failures=3, breaker_reset_s=10.0)


def opened(policy: FailoverPolicy = POLICY, at: float = 100.0) -> Breaker:
    breaker = Breaker(policy)
    for _ in range(policy.breaker_failures):
        breaker.failure(at)
    assert breaker.state == "open"
    return breaker


class TestBreaker:
    def test_opens_after_n_consecutive_failures(self) -> None:
        """N−1 failures keep it closed; the Nth reports the change to "open"."""
        breaker = Breaker(POLICY)
        assert [breaker.failure(1.0) for _ in range(3)] == [None, None, "open"]
        assert breaker.state == "open"
        assert breaker.opened_at == 1.0

    def test_a_success_resets_the_count(self) -> None:
        """Failures must be consecutive: one success in between starts over."""
        breaker = Breaker(POLICY)
        breaker.failure(1.0)
        breaker.failure(1.0)
        assert breaker.success() is None  # closed → closed is no change
        assert [breaker.failure(2.0) for _ in range(2)] == [None, None]
        assert breaker.state == "closed"

    def test_open_refuses_until_the_reset_time(self) -> None:
        breaker = opened(at=100.0)
        assert not breaker.allow(100.0)
        assert not breaker.allow(109.99)
        assert breaker.state == "open"

    def test_half_open_lets_exactly_one_probe_through(self) -> None:
        """At the reset time one caller probes; the others are refused meanwhile."""
        breaker = opened(at=100.0)
        assert breaker.allow(110.0)
        assert breaker.state == "half_open"
        assert not breaker.allow(110.0)
        assert not breaker.allow(111.0)

    def test_a_successful_probe_closes(self) -> None:
        breaker = opened(at=100.0)
        assert breaker.allow(110.0)
        assert breaker.success() == "closed"
        assert breaker.state == "closed"
        assert breaker.allow(110.0) and breaker.allow(110.0)
        assert breaker.failures == 0

    def test_a_failed_probe_reopens_for_another_period(self) -> None:
        breaker = opened(at=100.0)
        assert breaker.allow(110.0)
        assert breaker.failure(110.5) == "open"
        assert breaker.opened_at == 110.5
        assert not breaker.allow(120.0)
        assert breaker.allow(120.5)

    def test_a_probe_that_never_reports_does_not_wedge_it(self) -> None:
        """A probe cancelled mid-flight: another is allowed one reset period later."""
        breaker = opened(at=100.0)
        assert breaker.allow(110.0)  # the probe, which then vanishes
        assert not breaker.allow(119.9)
        assert breaker.allow(120.0)
        assert breaker.state == "half_open"

    def test_force_open_from_a_peer(self) -> None:
        """A peer's word opens a closed breaker; it half-opens like any other."""
        breaker = Breaker(POLICY)
        breaker.force_open(50.0)
        assert breaker.state == "open"
        assert not breaker.allow(59.0)
        assert breaker.allow(60.0)

    def test_force_open_leaves_a_half_open_probe_alone(self) -> None:
        breaker = opened(at=100.0)
        assert breaker.allow(110.0)
        breaker.force_open(110.1)
        assert breaker.state == "half_open"
        assert breaker.success() == "closed"


# ---------------------------------------------------------------------- the pool


def spec(name: str, provider: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        provider=provider,
        upstream=name,
        kind="chat",
        input_per_1k=0.001,
        output_per_1k=0.002,
        context_window=8192,
        max_output_tokens=1024,
    )


@dataclass
class FakeProvider:
    """Answers from a script: each call pops an error to raise (None = success)."""

    name: str
    script: list[ProviderError | None] = field(default_factory=list)
    hang: bool = False
    calls: list[float] = field(default_factory=list)
    kind: str = "fake"
    total_timeout_s: float = float("inf")

    async def chat(self, call: Call) -> Reply:
        self.calls.append(time.monotonic())
        if self.hang:
            await asyncio.sleep(3600)
        error = self.script.pop(0) if self.script else None
        if error is not None:
            raise error
        return Reply(b'{"ok": true}', Usage(1, 1))

    async def chat_stream(self, call: Call) -> ReplyStream:
        raise NotImplementedError

    async def embeddings(self, call: Call) -> Reply:
        return await self.chat(call)

    async def aclose(self) -> None:
        return None


@dataclass
class Hook:
    changes: list[tuple[str, str]] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    def attempt_done(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)

    def failover(self, request_id: str, failed: Attempt, next_model: ModelSpec) -> None:
        return None

    def breaker_changed(self, provider: str, state: str) -> None:
        self.changes.append((provider, state))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def unavailable(retry_after: float | None = None) -> ProviderUnavailable:
    return ProviderUnavailable("a returned 503", provider="a", retry_after=retry_after)


A, B = spec("m-a", "a"), spec("m-b", "b")
CALL = Call(A, {"model": "m-a", "messages": []}, "req_1")


def pool(*providers: FakeProvider, **kw: object) -> ProviderPool:
    return ProviderPool({p.name: p for p in providers}, **kw)  # type: ignore[arg-type]


class TestPoolBackoff:
    async def test_a_retry_on_the_same_provider_waits_for_retry_after(self) -> None:
        """503 with Retry-After 0.3 s: the second try waits 0.3 s first."""
        a, sleep = FakeProvider("a", [unavailable(retry_after=0.3)]), Sleeps()
        served = await pool(a, sleep=sleep).chat((A, A), CALL, time.monotonic() + 5)
        assert [x.status for x in served.attempts] == [None, 200]
        assert sleep.waits == [0.3]

    async def test_retry_after_is_capped(self) -> None:
        """An upstream asking for 60 s is waited on only up to ``retry_after_cap_s``."""
        a, sleep = FakeProvider("a", [unavailable(retry_after=60)]), Sleeps()
        policy = FailoverPolicy(retry_after_cap_s=0.05)
        await pool(a, policy=policy, sleep=sleep).chat((A, A), CALL, time.monotonic() + 5)
        assert sleep.waits == [0.05]
        assert len(a.calls) == 2

    async def test_another_provider_is_tried_at_once(self) -> None:
        """Failing over to a different provider does not wait for a's Retry-After."""
        a, b = FakeProvider("a", [unavailable(retry_after=5)]), FakeProvider("b")
        sleep = Sleeps()
        served = await pool(a, b, sleep=sleep).chat((A, B), CALL, time.monotonic() + 10)
        assert served.model is B
        assert sleep.waits == []

    async def test_a_wait_past_the_deadline_is_not_taken(self) -> None:
        """Retry-After beyond the overall deadline: give up now with the upstream's error."""
        a, sleep = FakeProvider("a", [unavailable(retry_after=3)]), Sleeps()
        clock = FrozenClock(100.0)
        with pytest.raises(ProviderUnavailable) as caught:
            await pool(a, clock=clock, sleep=sleep).chat((A, A), CALL, clock.now + 1)
        assert sleep.waits == []  # no backoff taken: 3 s would end past the deadline
        assert len(a.calls) == 1
        assert caught.value.retry_after == 3
        assert caught.value.headers["retry-after"] == "3"

    async def test_the_overall_deadline_bounds_a_hanging_upstream(self) -> None:
        """A provider that never answers costs the remaining time, then a 504; no more tries."""
        a, b = FakeProvider("a", hang=True), FakeProvider("b")
        clock = asyncio.get_running_loop().time  # the clock the timeout runs on
        with pytest.raises(ProviderTimeout, match="overall deadline reached"):
            await pool(a, b, clock=clock).chat((A, B), CALL, clock() + 0.05)
        assert len(a.calls) == 1
        assert b.calls == []  # no time was left for it


@dataclass
class Sleeps:
    """The pool's backoff waits, recorded instead of slept."""

    waits: list[float] = field(default_factory=list)

    async def __call__(self, delay: float) -> None:
        self.waits.append(delay)


@dataclass
class FrozenClock:
    """The pool's clock, standing still: deadlines are measured from ``now``."""

    now: float

    def __call__(self) -> float:
        return self.now


class TestPoolBreakers:
    async def test_failures_open_the_breaker_and_then_skip_the_provider(self) -> None:
        """After N failed requests on a, the next ones go straight to b."""
        clock, hook = Clock(), Hook()
        a = FakeProvider("a", [unavailable() for _ in range(3)])
        b = FakeProvider("b")
        p = pool(a, b, policy=POLICY, hook=hook, clock=clock)
        for _ in range(3):
            assert (await p.chat((A, B), CALL, clock.now + 30)).model is B
        assert hook.changes == [("a", "open")]
        assert p.open_breakers() == {"a"}

        served = await p.chat((A, B), CALL, clock.now + 30)
        assert len(a.calls) == 3
        assert served.attempts[0] == Attempt("a", "m-a", None, "breaker open", 0.0)
        assert all(x.error != "breaker open" for x in hook.attempts)  # not health samples

    async def test_a_probe_after_the_reset_closes_it(self) -> None:
        clock, hook = Clock(), Hook()
        a, b = FakeProvider("a", [unavailable() for _ in range(3)]), FakeProvider("b")
        p = pool(a, b, policy=POLICY, hook=hook, clock=clock)
        for _ in range(3):
            await p.chat((A, B), CALL, clock.now + 30)
        clock.now += POLICY.breaker_reset_s
        served = await p.chat((A, B), CALL, clock.now + 30)
        assert served.model is A
        assert hook.changes == [("a", "open"), ("a", "closed")]
        assert p.open_breakers() == frozenset()

    async def test_a_cancelled_probe_does_not_shut_the_provider_out_for_good(self) -> None:
        """The client goes away during the probe; a later request may probe again."""
        clock = Clock()
        a, b = FakeProvider("a", [unavailable() for _ in range(3)]), FakeProvider("b")
        p = pool(a, b, policy=POLICY, clock=clock)
        for _ in range(3):
            await p.chat((A, B), CALL, clock.now + 30)
        clock.now += POLICY.breaker_reset_s
        a.hang = True
        probe = asyncio.ensure_future(p.chat((A, B), CALL, clock.now + 30))
        await asyncio.sleep(0.01)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        a.hang = False
        assert (await p.chat((A, B), CALL, clock.now + 30)).model is B  # probe still out

        clock.now += POLICY.breaker_reset_s
        assert (await p.chat((A, B), CALL, clock.now + 30)).model is A

    async def test_every_breaker_open_is_a_503_with_retry_after(self) -> None:
        clock = Clock()
        a = FakeProvider("a", [unavailable() for _ in range(3)])
        p = pool(a, policy=POLICY, clock=clock)
        for _ in range(3):
            with pytest.raises(ProviderUnavailable):
                await p.chat((A,), CALL, clock.now + 30)
        with pytest.raises(ProviderUnavailable, match="circuit breaker open for a") as caught:
            await p.chat((A,), CALL, clock.now + 30)
        assert caught.value.headers == {"retry-after": "1"}
        assert len(a.calls) == 3


class TestShouldFailOver:
    """Which upstream failures move a request on to the next provider."""

    def test_default_statuses_fail_over_and_client_errors_do_not(self) -> None:
        """429/5xx fail over; the upstream's 400 is the client's own error."""
        from gatekeeper.errors import ProviderError, ProviderRejected
        from gatekeeper.providers.failover import should_fail_over

        assert should_fail_over(ProviderError("x", upstream_status=429))
        assert should_fail_over(ProviderError("x", upstream_status=503))
        assert not should_fail_over(ProviderRejected("x", upstream_status=400))

    def test_auth_failures_and_timeouts_always_fail_over(self) -> None:
        """401/403 (our key is bad) and status-less failures fail over whatever the list."""
        from gatekeeper.errors import ProviderError, ProviderTimeout
        from gatekeeper.providers.failover import FailoverPolicy, should_fail_over

        only_429 = FailoverPolicy(retry_statuses=frozenset({429}))
        assert should_fail_over(ProviderError("x", upstream_status=401), only_429)
        assert should_fail_over(ProviderTimeout("x"), only_429)
        assert not should_fail_over(ProviderError("x", upstream_status=500), only_429)


def busy() -> UpstreamBusy:
    return UpstreamBusy("a: no free connection within 5 s", provider="a")


class TestPoolWaitIsNotTheProvidersFault:
    async def test_busy_attempts_never_open_the_breaker(self) -> None:
        """However many pool-wait timeouts pile up, the breaker stays closed and the
        health hook hears nothing of them; the request fails over to the next provider."""
        a, b = FakeProvider("a", [busy()] * 10), FakeProvider("b", [])
        hook = Hook()
        p = pool(a, b, policy=POLICY, hook=hook)
        for _ in range(10):
            served = await p.chat((A, B), CALL, time.monotonic() + 5)
            assert served.model is B
            assert served.attempts[0].error == "upstream_busy"
        assert p.breakers["a"].state == "closed" and p.breakers["a"].failures == 0
        assert all(x.provider == "b" for x in hook.attempts)
        assert hook.changes == []

    async def test_a_busy_half_open_probe_lets_the_next_probe_go(self) -> None:
        """A probe that met a full pool reported nothing about the provider."""
        clock = Clock()
        a = FakeProvider("a", [busy()])
        p = pool(a, FakeProvider("b", []), policy=POLICY, clock=clock)
        p.breakers["a"] = opened(at=clock.now - POLICY.breaker_reset_s)
        await p.chat((A, B), CALL, clock.now + 5)
        assert p.breakers["a"].state == "half_open" and p.breakers["a"].allow(clock.now)

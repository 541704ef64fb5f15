"""Circuit breakers on real processes: open after failures, shared across nodes, half-open.

Provider ``bad`` (a fake upstream answering 500) is first in the failover chain,
``good`` second. The breaker opens after ``FailoverPolicy.breaker_failures``
consecutive failures and lets a probe through ``breaker_reset_s`` later (the
defaults; they are not configurable from YAML). What reaches ``bad`` is read from
its own request log; breaker changes from BH_EVENTS.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import nats
import orjson
import pytest
from nats.aio.msg import Msg

from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.bus.streams import EVENTS
from gatekeeper.providers.failover import DEFAULT_POLICY
from tests.conftest import openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model

StartGateway = Callable[..., GatewayProcess]

FAILURES = DEFAULT_POLICY.breaker_failures  # 5
RESET_S = DEFAULT_POLICY.breaker_reset_s  # 10 s
SAMPLES = 15


@pytest.fixture
def bad() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=Behavior(status=500, error_message="upstream on fire")) as fake:
        yield fake


@pytest.fixture
def good() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def start(start_gateway: StartGateway, bad: FakeOpenAI, good: FakeOpenAI) -> GatewayProcess:
    """``m-bad`` on bad (cheaper, chain priority 1), ``m-good`` on good (priority 2)."""
    return start_gateway(
        providers=[openai_provider("bad", bad), openai_provider("good", good)],
        models=[
            chat_model("m-bad", "bad", input_per_1k=0.0001, output_per_1k=0.0002),
            chat_model("m-good", "good"),
        ],
    )


class Client:
    def __init__(self, token: str) -> None:
        self.http = httpx.Client(timeout=10, headers={"authorization": f"Bearer {token}"})

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def chat(self, gw: GatewayProcess, model: str) -> httpx.Response:
        response = self.http.post(
            f"{gw.base_url}/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert response.status_code == 200, response.text
        return response

    def timed(self, gw: GatewayProcess, model: str, n: int = SAMPLES) -> float:
        """Median seconds of ``n`` requests for ``model``; every one served by good."""
        took = []
        for _ in range(n):
            started = time.perf_counter()
            response = self.chat(gw, model)
            took.append(time.perf_counter() - started)
            assert response.headers["x-gatekeeper-provider"] == "good"
        return statistics.median(took)


class BreakerEvents:
    """Live ``bh.events.breaker.bad`` messages, as (monotonic time, payload)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[float, dict[str, Any]]] = []

    async def __aenter__(self) -> BreakerEvents:
        self.nc = await nats.connect(self.url)

        async def on_event(msg: Msg) -> None:
            self.seen.append((time.monotonic(), orjson.loads(msg.data)))

        await self.nc.subscribe("bh.events.breaker.bad", cb=on_event)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def wait_for(self, state: str, within: float = 3.0) -> float:
        deadline = time.monotonic() + within
        while True:
            for at, event in self.seen:
                if event["state"] == state:
                    return at
            assert time.monotonic() < deadline, f"no breaker {state!r} event: {self.seen}"
            await asyncio.sleep(0.01)


async def stored_breaker_events(url: str) -> list[dict[str, Any]]:
    """Every ``bh.events.breaker.bad`` event kept in BH_EVENTS, oldest first."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe("bh.events.breaker.bad", stream=EVENTS, ordered_consumer=True)
        events = []
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                break
            events.append(orjson.loads(msg.data))
        await sub.unsubscribe()
    finally:
        await nc.close()
    return events


def open_breaker(client: Client, gw: GatewayProcess, bad: FakeOpenAI) -> float:
    """``FAILURES`` requests for m-bad: each fails on bad, then good answers (median s)."""
    took = client.timed(gw, "m-bad", FAILURES)
    assert len(bad.script.requests) == FAILURES
    return took


@pytest.mark.slow
class TestBreakerOpens:
    async def test_an_open_breaker_costs_nothing(
        self,
        start_gateway: StartGateway,
        bad: FakeOpenAI,
        good: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """After 5 failures bad is no longer called, and failing over costs no latency."""
        gw = start(start_gateway, bad, good)
        with Client(issuer.token()) as client:
            client.timed(gw, "m-good", 3)  # warm both connection pools
            async with BreakerEvents(nats_server.url) as events:
                failing_median = await asyncio.to_thread(open_breaker, client, gw, bad)
                await events.wait_for("open")

            open_median = await asyncio.to_thread(client.timed, gw, "m-bad")
            direct_median = await asyncio.to_thread(client.timed, gw, "m-good")
        print(
            f"\nmedian latency: m-bad failing over {failing_median * 1000:.1f} ms, "
            f"m-bad with breaker open {open_median * 1000:.1f} ms, "
            f"m-good direct {direct_median * 1000:.1f} ms"
        )
        assert len(bad.script.requests) == FAILURES  # not one more
        assert open_median <= direct_median * 1.5 + 0.005

        stored = await stored_breaker_events(nats_server.url)
        assert [(e["type"], e["provider"], e["state"]) for e in stored] == [
            ("breaker", "bad", "open")
        ]
        assert stored[0]["node_id"] and stored[0]["ts"] > 0

    async def test_nodes_learn_of_an_open_breaker_from_each_other(
        self,
        start_gateway: StartGateway,
        bad: FakeOpenAI,
        good: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """B never called bad; once A's breaker opens, B skips bad too."""
        a, b = start(start_gateway, bad, good), start(start_gateway, bad, good)
        with Client(issuer.token()) as client:
            async with BreakerEvents(nats_server.url) as events:
                await asyncio.to_thread(open_breaker, client, a, bad)
                await events.wait_for("open")
            await asyncio.sleep(0.1)  # B got the same message; let it apply it

            for _ in range(10):
                response = await asyncio.to_thread(client.chat, b, "m-bad")
                assert response.headers["x-gatekeeper-provider"] == "good"
            assert len(bad.script.requests) == FAILURES

            # auto routing on B leaves bad out too, though m-bad is the cheaper model
            response = await asyncio.to_thread(client.chat, b, "auto")
            assert response.headers["x-gatekeeper-model"] == "m-good"
            assert "breaker skipped: bad" in response.headers["x-gatekeeper-route-reason"]
        assert len(bad.script.requests) == FAILURES
        assert "breaker.opened_by_peer" in b.logs()


@pytest.mark.slow
class TestBreakerRecovers:
    async def test_half_open_probe_closes_the_breaker(
        self,
        start_gateway: StartGateway,
        bad: FakeOpenAI,
        good: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """10 s after opening, one probe reaches the healed bad; its success closes it."""
        gw = start(start_gateway, bad, good)
        with Client(issuer.token()) as client:
            async with BreakerEvents(nats_server.url) as events:
                await asyncio.to_thread(open_breaker, client, gw, bad)
                opened = await events.wait_for("open")
                bad.script.default = Behavior()  # healed, but nobody knows yet

                response = await asyncio.to_thread(client.chat, gw, "m-bad")
                assert response.headers["x-gatekeeper-provider"] == "good"
                assert len(bad.script.requests) == FAILURES

                await asyncio.sleep(max(0.0, opened + RESET_S + 0.2 - time.monotonic()))
                probe = await asyncio.to_thread(client.chat, gw, "m-bad")
                assert probe.headers["x-gatekeeper-provider"] == "bad"
                assert len(bad.script.requests) == FAILURES + 1
                await events.wait_for("closed")

            for _ in range(3):  # closed: bad serves again
                response = await asyncio.to_thread(client.chat, gw, "m-bad")
                assert response.headers["x-gatekeeper-provider"] == "bad"
        stored = await stored_breaker_events(nats_server.url)
        assert [e["state"] for e in stored] == ["open", "closed"]

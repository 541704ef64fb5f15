"""Routing on real processes: modes, headers, the cluster-wide latency view, route events.

Two fake OpenAI upstreams play two providers. Requests go over HTTP to real gateway
processes; what the router decided is read back from the response headers, from
which fake upstream saw the request, and from BH_EVENTS.
"""

from __future__ import annotations

import asyncio
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
from tests.conftest import openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model

StartGateway = Callable[..., GatewayProcess]

PUBLISH_INTERVAL_S = 0.5
SLOW_FIRST_BYTE_S = 0.3
HELLO = [{"role": "user", "content": "hello there"}]  # scores simple, 0.00


def quality(q: float) -> dict[str, float]:
    tasks = ("simple", "general", "code", "math", "reasoning", "legal", "creative")
    return dict.fromkeys(tasks, q)


@pytest.fixture
def fast() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def slow() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(default=Behavior(first_byte_delay=SLOW_FIRST_BYTE_S)) as fake:
        yield fake


def chat(
    gw: GatewayProcess,
    token: str,
    model: str = "auto",
    mode: str | None = None,
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"}
    if mode is not None:
        headers["x-routing-mode"] = mode
    return httpx.post(
        f"{gw.base_url}/chat/completions",
        headers=headers,
        json={"model": model, "messages": HELLO, "max_tokens": 5},
        timeout=10,
    )


def served(response: httpx.Response) -> tuple[str, str, str]:
    """(model, provider, routing mode) as the gateway reports them."""
    assert response.status_code == 200, response.text
    h = response.headers
    return h["x-gatekeeper-model"], h["x-gatekeeper-provider"], h["x-gatekeeper-routing-mode"]


# ---------------------------------------------------------------------- modes


@pytest.fixture
def budget() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def premium() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def tiered(start_gateway: StartGateway, budget: FakeOpenAI, premium: FakeOpenAI) -> GatewayProcess:
    """``small`` on provider budget (cheap, quality 0.8); ``large`` on premium (0.95)."""
    return start_gateway(
        providers=[openai_provider("budget", budget), openai_provider("premium", premium)],
        models=[
            chat_model(
                "small",
                "budget",
                upstream="small-2025",
                input_per_1k=0.0001,
                output_per_1k=0.0002,
                quality=quality(0.8),
            ),
            chat_model(
                "large",
                "premium",
                upstream="large-2025",
                input_per_1k=0.01,
                output_per_1k=0.03,
                quality=quality(0.95),
            ),
        ],
    )


@pytest.mark.slow
class TestModes:
    def test_cost_and_capability_modes_from_the_header(
        self, tiered: GatewayProcess, issuer: Issuer, budget: FakeOpenAI, premium: FakeOpenAI
    ) -> None:
        """cost → the cheaper model that meets the bar; capability → the better one."""
        token = issuer.token()
        cheap = chat(tiered, token, mode="cost")
        assert served(cheap) == ("small", "budget", "cost")
        assert cheap.headers["x-gatekeeper-route-reason"].startswith("cost: cheapest with simple")
        assert budget.script.requests[-1]["model"] == "small-2025"

        best = chat(tiered, token, mode="Capability")  # case does not matter
        assert served(best) == ("large", "premium", "capability")
        assert best.headers["x-gatekeeper-route-reason"].startswith(
            "capability: highest simple quality 0.95"
        )
        assert premium.script.requests[-1]["model"] == "large-2025"

        default = chat(tiered, token)  # no header, no claim: routing.default_mode (cost)
        assert served(default) == ("small", "budget", "cost")

    def test_an_unknown_mode_is_a_400_naming_the_header(
        self, tiered: GatewayProcess, issuer: Issuer, budget: FakeOpenAI, premium: FakeOpenAI
    ) -> None:
        """``X-Routing-Mode: bogus`` → 400 with param X-Routing-Mode; no upstream is called."""
        response = chat(tiered, issuer.token(), mode="bogus")
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "X-Routing-Mode"
        assert error["code"] == "invalid_routing_mode"
        assert error["type"] == "invalid_request_error"
        assert "'bogus'" in error["message"]
        assert budget.script.requests == premium.script.requests == []

    def test_the_keys_routing_claim_applies_without_a_header(
        self, tiered: GatewayProcess, issuer: Issuer
    ) -> None:
        """A key minted with routing mode capability gets capability; a header overrides it."""
        token = issuer.token(routing_mode="capability")
        response = chat(tiered, token)
        assert served(response) == ("large", "premium", "capability")
        for header in (
            "x-gatekeeper-model",
            "x-gatekeeper-provider",
            "x-gatekeeper-routing-mode",
            "x-gatekeeper-route-reason",
            "x-request-id",
        ):
            assert response.headers[header]
        assert served(chat(tiered, token, mode="cost")) == ("small", "budget", "cost")

    def test_the_keys_quality_threshold_raises_the_bar(
        self, tiered: GatewayProcess, issuer: Issuer
    ) -> None:
        """In cost mode a key asking for quality 0.9 skips the 0.8 model."""
        response = chat(tiered, issuer.token(quality_threshold=0.9), mode="cost")
        assert served(response) == ("large", "premium", "cost")
        assert "quality >= 0.90" in response.headers["x-gatekeeper-route-reason"]


# ---------------------------------------------------------------------- latency


@pytest.mark.slow
class TestLatencyAcrossNodes:
    async def test_latency_mode_uses_health_published_by_other_nodes(
        self,
        start_gateway: StartGateway,
        fast: FakeOpenAI,
        slow: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """Node B, having served nothing, routes latency mode by node A's BH_HEALTH reports.

        ``slow-model`` is cheaper (cost mode picks it) but its first byte takes 0.3 s;
        ``fast-model`` answers at once. Equal quality, so only health tells them apart.
        """
        setup: dict[str, Any] = {
            "providers": [openai_provider("fast", fast), openai_provider("slow", slow)],
            "models": [
                chat_model("fast-model", "fast", input_per_1k=0.002, output_per_1k=0.004),
                chat_model("slow-model", "slow", input_per_1k=0.0005, output_per_1k=0.001),
            ],
            "health": {"publish_interval_s": PUBLISH_INTERVAL_S},
        }
        a, b = start_gateway(**setup), start_gateway(**setup)
        token = issuer.token()

        nc = await nats.connect(nats_server.url)
        reports: list[dict[str, Any]] = []

        async def seen(msg: Msg) -> None:
            reports.append(orjson.loads(msg.data))

        try:
            await nc.subscribe("bh.health.>", cb=seen)
            await nc.flush()
            for _ in range(3):  # traffic through A only, both models by name
                assert served(await achat(a, token, "fast-model"))[0] == "fast-model"
                assert served(await achat(a, token, "slow-model"))[0] == "slow-model"
            deadline = time.monotonic() + 5 * PUBLISH_INTERVAL_S
            while {m for r in reports for m in r["models"]} != {"fast-model", "slow-model"}:
                assert time.monotonic() < deadline, f"no health reports from A: {reports}"
                await asyncio.sleep(0.05)
        finally:
            await nc.close()
        assert {r["node_id"] for r in reports} == {reports[0]["node_id"]}  # only A published
        p99 = {m: s["p99_ms"] for r in reports for m, s in r["models"].items()}
        assert p99["slow-model"] >= SLOW_FIRST_BYTE_S * 1000
        assert p99["fast-model"] < p99["slow-model"]
        slow_seen = len(slow.script.requests)
        await asyncio.sleep(0.1)  # B got the same reports as we did; let it read them

        routed = await achat(b, token, "auto", mode="latency")
        assert served(routed) == ("fast-model", "fast", "latency")
        reason = routed.headers["x-gatekeeper-route-reason"]
        assert reason.startswith("latency: fastest p99 TTFT "), reason
        assert len(slow.script.requests) == slow_seen

        # the contrast: cost mode on the same node picks the cheaper, slow model
        assert served(await achat(b, token, "auto", mode="cost"))[0] == "slow-model"


async def achat(
    gw: GatewayProcess, token: str, model: str, mode: str | None = None
) -> httpx.Response:
    """``chat`` off the event loop."""
    return await asyncio.to_thread(chat, gw, token, model, mode)


# ---------------------------------------------------------------------- events


@pytest.mark.slow
class TestRouteEvents:
    async def test_every_routing_decision_is_on_bh_events(
        self, tiered: GatewayProcess, issuer: Issuer, nats_server: EmbeddedNats
    ) -> None:
        """Each request's decision lands on ``bh.events.route`` with its request id."""
        token = issuer.token()
        auto = await achat(tiered, token, "auto", mode="capability")
        named = await achat(tiered, token, "small")
        assert served(auto)[0] == "large" and served(named)[0] == "small"

        events = await route_events(
            nats_server.url, {auto.headers["x-request-id"], named.headers["x-request-id"]}
        )
        event = events[auto.headers["x-request-id"]]
        assert event["type"] == "route"
        assert event["requested_model"] == "auto"
        assert event["mode"] == "capability"
        assert event["task"] == "simple"
        assert event["score"] == 0.0
        assert event["level"] == "small"
        assert event["candidates"] == ["large", "small"]
        assert event["chosen"] == "large"
        assert event["provider"] == "premium"
        assert event["reason"] == auto.headers["x-gatekeeper-route-reason"]
        assert event["plan"] == ["premium/large", "budget/small"]
        assert event["below_threshold"] is False
        assert event["node_id"] and event["ts"] > 0

        event = events[named.headers["x-request-id"]]
        assert event["requested_model"] == "small"
        assert event["mode"] == "cost"
        assert event["candidates"] == ["small"]
        assert event["chosen"] == "small"
        assert event["reason"] == "requested model small"
        assert event["plan"] == ["budget/small", "premium/large"]  # fails over across providers


async def route_events(url: str, request_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The stored ``bh.events.route`` events of these requests (waits up to 3 s)."""
    nc = await nats.connect(url)
    found: dict[str, dict[str, Any]] = {}
    try:
        sub = await nc.jetstream().subscribe(
            "bh.events.route", stream=EVENTS, ordered_consumer=True
        )
        deadline = time.monotonic() + 3
        while set(found) != request_ids:
            assert time.monotonic() < deadline, f"route events missing: {request_ids - set(found)}"
            try:
                msg = await sub.next_msg(timeout=max(0.05, deadline - time.monotonic()))
            except nats.errors.TimeoutError:
                continue
            event = orjson.loads(msg.data)
            if event.get("request_id") in request_ids:
                found[event["request_id"]] = event
        await sub.unsubscribe()
    finally:
        await nc.close()
    return found

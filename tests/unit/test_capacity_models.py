"""Per-model limits: the model's slot, then the provider's, then the node's; all given back."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from gatekeeper.auth.claims import Claims
from gatekeeper.budget.concurrency import ConcurrencyLimiter, Slot
from gatekeeper.capacity.gate import CapacityGate
from gatekeeper.capacityconfig import CapacityConfig, LaneConfig, parse_capacity
from gatekeeper.edgeconfig import ConcurrencyConfig
from gatekeeper.errors import ClientDisconnected, ConfigError, GatewayError

NOW = datetime.now(UTC)


class Request:
    """An ASGI request whose client hangs up when ``gone`` is set."""

    headers: Mapping[str, str] = {}

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


def claims(n: int, priority: str | None = None) -> Claims:
    return Claims("i", f"k{n}", f"j{n}", NOW, NOW, NOW, "acme", priority=priority)  # type: ignore[arg-type]


def gate(node: int, providers: dict[str, int], models: dict[str, int]) -> CapacityGate:
    config = CapacityConfig(max_in_flight=node, providers=providers, models=models)
    return CapacityGate(config, 30.0)


async def enter(
    g: CapacityGate,
    limiter: ConcurrencyLimiter,
    n: int,
    provider: str,
    model: str,
    request: Request | None = None,
    priority: str | None = None,
) -> Slot:
    slot = limiter.acquire(claims(n, priority), False)
    try:
        waiting = g.enter(slot, claims(n, priority), request or Request(), provider, model)  # type: ignore[arg-type]
        if waiting is not None:
            await waiting
    except BaseException:
        slot.release()  # what the pipeline's finally does
        raise
    return slot


def in_flight(g: CapacityGate) -> dict[str, int]:
    """Slots held: the node's ("") and every provider's and model's."""
    out = {"": g.scheduler.in_flight}
    for name, inner in (*g.providers.items(), *g.models.items()):
        out[name] = inner.scheduler.in_flight
    return out


async def test_a_model_limit_queues_that_model_only() -> None:
    """m-slow holds 1 slot; its next request waits; m-fast on the same provider runs."""
    g, limiter = gate(8, {}, {"m-slow": 1}), ConcurrencyLimiter()
    first = await enter(g, limiter, 1, "openai", "m-slow")
    second = asyncio.ensure_future(enter(g, limiter, 2, "openai", "m-slow"))
    await asyncio.sleep(0)
    assert not second.done() and g.depths()["standard"] == 1
    fast = await enter(g, limiter, 3, "openai", "m-fast")  # past the queued m-slow request
    assert in_flight(g) == {"": 2, "m-slow": 1}  # the waiting one holds no node slot
    first.release()
    (await second).release()
    fast.release()
    assert in_flight(g) == {"": 0, "m-slow": 0} and g.depths()["standard"] == 0


async def test_model_then_provider_then_node_and_a_hang_up_gives_back_what_is_held() -> None:
    g, limiter = gate(8, {"openai": 1}, {"m": 2}), ConcurrencyLimiter()
    held = await enter(g, limiter, 1, "openai", "other")  # takes the provider's only slot
    assert in_flight(g) == {"": 1, "openai": 1, "m": 0}
    request = Request()
    waiting = asyncio.ensure_future(enter(g, limiter, 2, "openai", "m", request))
    await asyncio.sleep(0)
    assert in_flight(g) == {"": 1, "openai": 1, "m": 1}  # the model's slot, waiting for openai
    request.gone.set()  # the client hangs up while queued for the provider
    with pytest.raises(ClientDisconnected):
        await waiting
    assert in_flight(g) == {"": 1, "openai": 1, "m": 0} and g.depths()["standard"] == 0
    held.release()
    assert in_flight(g) == {"": 0, "openai": 0, "m": 0}


async def test_a_request_granted_the_provider_goes_on_to_the_node() -> None:
    g, limiter = gate(1, {"openai": 1}, {"m": 1}), ConcurrencyLimiter()
    first = await enter(g, limiter, 1, "openai", "m")
    assert in_flight(g) == {"": 1, "openai": 1, "m": 1}
    other = asyncio.ensure_future(enter(g, limiter, 2, "anthropic", "x"))  # node only
    chained = asyncio.ensure_future(enter(g, limiter, 3, "openai", "m"))
    await asyncio.sleep(0)
    assert g.depths()["standard"] == 2  # one at the node, one at the model
    first.release()  # the node's slot goes to ``other``, the model's to ``chained``
    (await other).release()
    slot = await chained  # model, then provider, then the node
    assert in_flight(g) == {"": 1, "openai": 1, "m": 1}
    slot.release()
    assert in_flight(g) == {"": 0, "openai": 0, "m": 0} and g.depths()["standard"] == 0


async def test_shed_at_the_node_gives_the_model_and_provider_slots_back() -> None:
    lanes = {n: LaneConfig(queue=0) for n in ("critical", "standard", "batch")}
    config = CapacityConfig(max_in_flight=1, providers={"openai": 2}, models={"m": 2}, lanes=lanes)
    g, limiter = CapacityGate(config, 30.0), ConcurrencyLimiter()
    held = await enter(g, limiter, 1, "anthropic", "x")  # the node's only slot
    with pytest.raises(GatewayError) as shed:
        await enter(g, limiter, 2, "openai", "m")
    assert shed.value.status == 429 and shed.value.code == "lane_queue_full"
    assert in_flight(g) == {"": 1, "openai": 0, "m": 0}
    held.release()
    assert in_flight(g) == {"": 0, "openai": 0, "m": 0}


async def test_shed_by_a_full_model_lane_takes_nothing_further() -> None:
    lanes = {n: LaneConfig(queue=0) for n in ("critical", "standard", "batch")}
    config = CapacityConfig(max_in_flight=8, providers={"openai": 4}, models={"m": 1}, lanes=lanes)
    g, limiter = CapacityGate(config, 30.0), ConcurrencyLimiter()
    held = await enter(g, limiter, 1, "openai", "m")
    with pytest.raises(GatewayError) as shed:
        await enter(g, limiter, 2, "openai", "m")
    assert shed.value.status == 429
    assert in_flight(g) == {"": 1, "openai": 1, "m": 1}  # only the first request's
    held.release()
    assert in_flight(g) == {"": 0, "openai": 0, "m": 0}


async def test_lanes_order_the_waiters_of_a_model() -> None:
    g, limiter = gate(8, {}, {"m": 1}), ConcurrencyLimiter()
    first = await enter(g, limiter, 1, "openai", "m")
    order: list[str] = []

    async def one(n: int, lane: str) -> None:
        slot = await enter(g, limiter, n, "openai", "m", priority=lane)
        order.append(lane)
        slot.release()

    batch = asyncio.ensure_future(one(2, "batch"))
    await asyncio.sleep(0)
    critical = asyncio.ensure_future(one(3, "critical"))
    await asyncio.sleep(0)
    assert g.depths() == {"critical": 1, "standard": 0, "batch": 1}
    first.release()
    await asyncio.gather(batch, critical)
    assert order == ["critical", "batch"]


async def test_random_workload_never_exceeds_a_limit_and_gives_every_slot_back() -> None:
    """Requests to random models, holding for random times, some hanging up while queued."""
    rng = random.Random(7)
    models = {"a": ("p", 2), "b": ("p", 3), "c": ("q", 1), "d": ("q", 9)}
    g = gate(5, {"p": 4, "q": 3}, {"a": 2, "c": 1})
    limiter = ConcurrencyLimiter(ConcurrencyConfig(key_requests=999, tenant_requests=999))
    limits = {"": 5, "p": 4, "q": 3, "a": 2, "c": 1}
    peak = dict.fromkeys(limits, 0)
    outcomes = {"ran": 0, "gone": 0, "most_queued": 0}

    async def one(n: int) -> None:
        model = rng.choice(sorted(models))
        request, lane = Request(), rng.choice(["critical", "standard", "batch"])
        if rng.random() < 0.2:
            asyncio.get_running_loop().call_later(rng.uniform(0, 0.01), request.gone.set)
        try:
            slot = await enter(g, limiter, n, models[model][0], model, request, lane)
        except ClientDisconnected:
            outcomes["gone"] += 1
            return
        outcomes["most_queued"] = max(outcomes["most_queued"], sum(g.depths().values()))
        for name, count in in_flight(g).items():
            assert count <= limits[name], (name, count)
            peak[name] = max(peak[name], count)
        await asyncio.sleep(rng.uniform(0, 0.005))
        slot.release()
        outcomes["ran"] += 1

    await asyncio.gather(*(one(n) for n in range(300)))
    assert in_flight(g) == dict.fromkeys(limits, 0)
    assert g.depths() == {"critical": 0, "standard": 0, "batch": 0}
    assert outcomes["ran"] + outcomes["gone"] == 300 and outcomes["gone"] > 0
    assert peak == limits  # every limit was reached, none passed
    assert outcomes["most_queued"] > 10  # and requests waited at them


def test_parse_models() -> None:
    cfg = parse_capacity({"max_in_flight": 8, "models": {"gpt-4o": 3, "claude-3-5-sonnet": 1}})
    assert cfg.models == {"gpt-4o": 3, "claude-3-5-sonnet": 1}
    assert parse_capacity({"max_in_flight": 8, "models": None}).models == {}
    with pytest.raises(ConfigError, match=r"capacity\.models: needs capacity\.max_in_flight"):
        parse_capacity({"models": {"gpt-4o": 3}})
    for bad in ({"gpt-4o": 0}, {"gpt-4o": "3"}, {"gpt-4o": 2.5}, {"": 1}, ["gpt-4o"], "gpt-4o"):
        with pytest.raises(ConfigError, match=r"capacity\.models: a mapping of model name"):
            parse_capacity({"max_in_flight": 8, "models": bad})

"""Per-provider limits: a provider slot, then the node's; every path gives both back."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from gatekeeper.auth.claims import Claims
from gatekeeper.budget.concurrency import ConcurrencyLimiter, Slot
from gatekeeper.capacity.gate import CapacityGate
from gatekeeper.capacityconfig import CapacityConfig, parse_capacity
from gatekeeper.errors import ConfigError, GatewayError

NOW = datetime.now(UTC)


class Request:
    headers: Mapping[str, str] = {}

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never hangs up
        return {"type": "http.disconnect"}


def claims(n: int, tenant: str = "acme") -> Claims:
    return Claims("i", f"k{n}", f"j{n}", NOW, NOW, NOW, tenant)  # type: ignore[arg-type]


def gate(node: int, **providers: int) -> CapacityGate:
    return CapacityGate(CapacityConfig(max_in_flight=node, providers=providers), 30.0)


async def enter(
    g: CapacityGate, limiter: ConcurrencyLimiter, n: int, provider: str, tenant: str = "acme"
) -> Slot:
    slot = limiter.acquire(claims(n, tenant), False)
    waiting = g.enter(slot, claims(n, tenant), Request(), provider)  # type: ignore[arg-type]
    if waiting is not None:
        await waiting
    return slot


async def test_provider_limit_queues_while_the_node_has_room() -> None:
    g, limiter = gate(4, slow=1), ConcurrencyLimiter()
    first = await enter(g, limiter, 1, "slow")
    other = await enter(g, limiter, 2, "fast")  # no limit of its own: the node's only
    second = asyncio.ensure_future(enter(g, limiter, 3, "slow"))
    await asyncio.sleep(0)
    assert not second.done() and g.depths()["standard"] == 1
    assert g.scheduler.in_flight == 2 and g.providers["slow"].scheduler.in_flight == 1
    first.release()
    (await second).release()
    other.release()
    assert g.scheduler.in_flight == 0 and g.providers["slow"].scheduler.in_flight == 0


async def test_node_wait_holds_the_provider_slot_and_a_hang_up_gives_both_back() -> None:
    g, limiter = gate(1, slow=2), ConcurrencyLimiter()
    held = await enter(g, limiter, 1, "fast")
    slot = limiter.acquire(claims(2), False)
    waiting = g.enter(slot, claims(2), Request(), "slow")  # type: ignore[arg-type]
    assert waiting is not None
    task = asyncio.ensure_future(waiting)
    await asyncio.sleep(0)
    assert g.providers["slow"].scheduler.in_flight == 1 and g.depths()["standard"] == 1
    task.cancel()  # the handler is cancelled while queued for the node
    with pytest.raises(asyncio.CancelledError):
        await task
    slot.release()  # what the pipeline's finally does
    assert g.depths()["standard"] == 0 and g.providers["slow"].scheduler.in_flight == 0
    held.release()
    assert g.scheduler.in_flight == 0


async def test_shed_by_a_full_provider_lane_is_a_429_holding_nothing() -> None:
    cfg = parse_capacity({"max_in_flight": 8, "providers": {"slow": 1}, "lanes": {}})
    cfg = CapacityConfig(
        max_in_flight=8,
        providers=cfg.providers,
        lanes={n: type(lane)(queue=0) for n, lane in cfg.lanes.items()},
    )
    g, limiter = CapacityGate(cfg, 30.0), ConcurrencyLimiter()
    held = await enter(g, limiter, 1, "slow")
    with pytest.raises(GatewayError) as shed:
        await enter(g, limiter, 2, "slow")
    assert shed.value.status == 429
    assert g.scheduler.in_flight == 1  # the node slot was never taken
    held.release()
    assert g.scheduler.in_flight == 0 and g.providers["slow"].scheduler.in_flight == 0


def test_parse_providers() -> None:
    cfg = parse_capacity({"max_in_flight": 8, "providers": {"openai": 3}})
    assert cfg.providers == {"openai": 3}
    with pytest.raises(ConfigError, match="needs capacity"):
        parse_capacity({"providers": {"openai": 3}})
    with pytest.raises(ConfigError, match=r"capacity\.providers"):
        parse_capacity({"max_in_flight": 8, "providers": {"openai": 0}})


class TestProviderReservations:
    """``capacity.provider_reserved``: slots of one provider's limit that only a tenant
    may use; the others share what is left of that provider's limit."""

    @staticmethod
    def gate(**learn: Any) -> CapacityGate:
        cfg = parse_capacity(
            {
                "max_in_flight": 16,
                "providers": {"slow": 3, "fast": 4},
                "provider_reserved": {"slow": {"big": 2}},
                "learn": learn or None,
            }
        )
        return CapacityGate(cfg, 30.0)

    async def test_a_reserved_tenant_gets_its_provider_slots_while_others_queue(self) -> None:
        g, limiter = self.gate(), ConcurrencyLimiter()
        shared = await enter(g, limiter, 1, "slow")  # acme takes the one shared slot
        queued = asyncio.ensure_future(enter(g, limiter, 2, "slow"))
        await asyncio.sleep(0)
        assert not queued.done()  # acme may not take big's slots, idle as they are
        big = [await enter(g, limiter, 10 + i, "slow", tenant="big") for i in range(2)]
        assert g.providers["slow"].scheduler.in_flight == 3
        fast = await enter(g, limiter, 3, "fast")  # another provider: no reservations
        shared.release()
        (await queued).release()
        for slot in (*big, fast):
            slot.release()
        assert g.providers["slow"].scheduler.in_flight == 0 and g.scheduler.in_flight == 0

    async def test_past_its_reservation_a_tenant_borrows_the_shared_slots(self) -> None:
        g, limiter = self.gate(), ConcurrencyLimiter()
        mine = [await enter(g, limiter, i, "slow", tenant="big") for i in range(3)]
        assert g.providers["slow"].scheduler.borrowed == 1
        waiting = asyncio.ensure_future(enter(g, limiter, 9, "slow"))  # the shared slot is taken
        await asyncio.sleep(0)
        assert not waiting.done()
        mine[2].release()  # the borrowed slot comes back: acme gets it
        (await waiting).release()
        for slot in mine[:2]:
            slot.release()
        assert g.providers["slow"].scheduler.used == {}

    async def test_a_learned_limit_never_goes_below_the_reservation(self) -> None:
        g = self.gate(enabled=True, min_in_flight=2)
        s = g.providers["slow"].scheduler
        s.resize(2)  # the floor a learned limit can reach
        assert s.shared == 0
        limiter = ConcurrencyLimiter()
        big = [await enter(g, limiter, i, "slow", tenant="big") for i in range(2)]
        for slot in big:
            slot.release()

    def test_parse(self) -> None:
        base = {"max_in_flight": 8, "providers": {"slow": 3}}
        cfg = parse_capacity({**base, "provider_reserved": {"slow": {"big": 2}}})
        assert cfg.provider_reserved == {"slow": {"big": 2}}
        with pytest.raises(ConfigError, match=r"has no limit in capacity\.providers"):
            parse_capacity({**base, "provider_reserved": {"other": {"big": 1}}})
        with pytest.raises(ConfigError, match=r"more than capacity\.providers\.slow \(3\)"):
            parse_capacity({**base, "provider_reserved": {"slow": {"big": 2, "mid": 2}}})
        with pytest.raises(ConfigError, match="slot count >= 1"):
            parse_capacity({**base, "provider_reserved": {"slow": {"big": 0}}})
        with pytest.raises(ConfigError, match=r"capacity\.learn\.min_in_flight \(1\)"):
            parse_capacity(
                {**base, "provider_reserved": {"slow": {"big": 2}}, "learn": {"enabled": True}}
            )

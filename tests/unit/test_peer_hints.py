"""Peer breaker events are hints: signed by a registered node, and never over this node's
own evidence that the provider is healthy."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from nacl.signing import SigningKey

from gatekeeper.auth.paserk import encode_public, pid
from gatekeeper.bus.events import EventBus
from gatekeeper.bus.health_bus import HealthBus
from gatekeeper.config import HealthConfig
from gatekeeper.control.envelope import seal
from gatekeeper.control.node_events import sign_event
from gatekeeper.control.registry import NodeKeyRegistry, node_key_kv_key, registration_body
from gatekeeper.control.reporting import Rejections
from gatekeeper.providers.demo import DemoProvider
from gatekeeper.providers.failover import Attempt
from gatekeeper.providers.pool import ProviderPool

OPERATOR, PEER, ATTACKER, SELF = (SigningKey(bytes([50 + i]) * 32) for i in range(4))
SUBJECT = "bh.events.breaker.demo"


@dataclass
class Msg:
    subject: str
    data: bytes


class FakeOutbox:
    def put(self, subject: str, data: bytes, headers: Any = None) -> None:
        return None


def bus() -> tuple[HealthBus, ProviderPool, Rejections]:
    reg = NodeKeyRegistry({pid(bytes(OPERATOR.verify_key)): OPERATOR.verify_key})
    key = node_key_kv_key("peer", 1)
    body = registration_body("peer", 1, encode_public(bytes(PEER.verify_key)), 1.0)
    reg.add(key, seal(OPERATOR, key, body, 1.0))
    pool = ProviderPool({"demo": DemoProvider("demo")})
    rejections = Rejections(clock=lambda: 0.0)
    events = EventBus(FakeOutbox(), "self", SELF)  # type: ignore[arg-type]
    health = HealthBus(
        None,  # type: ignore[arg-type]
        "self",
        pool,
        events,
        HealthConfig(),
        registry=reg,
        rejections=rejections,
    )
    return health, pool, rejections


def event(signer: SigningKey, node: str = "peer", state: str = "open") -> Msg:
    payload = {
        "type": "breaker",
        "provider": "demo",
        "state": state,
        "node_id": node,
        "ts": time.time(),
    }
    return Msg(SUBJECT, sign_event(signer, SUBJECT, payload))


class TestBreakerHints:
    async def test_a_registered_peers_open_opens_the_breaker(self) -> None:
        health, pool, _ = bus()
        await health._on_breaker(event(PEER))
        assert pool.breaker_open("demo")

    async def test_forged_events_do_nothing(self) -> None:
        health, pool, rejections = bus()
        unsigned = {"type": "breaker", "provider": "demo", "state": "open", "node_id": "peer"}
        await health._on_breaker(Msg(SUBJECT, orjson.dumps({**unsigned, "ts": time.time()})))
        await health._on_breaker(event(ATTACKER))
        await health._on_breaker(event(ATTACKER, node="made-up"))
        await health._on_breaker(Msg("bh.events.breaker.other", event(PEER).data))
        assert not pool.breaker_open("demo")
        assert rejections.count_of("breaker") == 4

    async def test_own_recent_success_outweighs_a_peers_open(self) -> None:
        health, pool, _ = bus()
        health.attempt_done(Attempt("demo", "m", 200, None, 5.0))
        await health._on_breaker(event(PEER))
        assert not pool.breaker_open("demo")

    async def test_a_peers_closed_changes_nothing(self) -> None:
        health, pool, _ = bus()
        pool.breakers["demo"].force_open(time.monotonic())
        await health._on_breaker(event(PEER, state="closed"))
        assert pool.breaker_open("demo")

    async def test_forged_health_reports_are_not_kept(self) -> None:
        health, _, rejections = bus()
        report = {
            "node_id": "peer",
            "provider": "demo",
            "ts": time.time(),
            "models": {"m": {"p99_ttft_ms": 1e9}},
        }
        subject = "bh.health.demo.peer"
        await health._on_health(Msg(subject, orjson.dumps(report)))
        await health._on_health(Msg(subject, sign_event(ATTACKER, subject, report)))
        await health._on_health(
            Msg("bh.health.demo.other", sign_event(PEER, "bh.health.demo.other", report))
        )
        assert health.reports == {}
        await health._on_health(Msg(subject, sign_event(PEER, subject, report)))
        assert ("peer", "demo") in health.reports
        assert rejections.count_of("health") == 3

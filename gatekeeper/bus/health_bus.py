"""Provider health over NATS: each node publishes its windows to BH_HEALTH and reads all.

    bh.health.<provider>.<node>   {"node_id", "provider", "ts", "models": {model: stats}}

Every node keeps the latest report of every node; latency routing uses the worst
recent p99 TTFT per model across them (reports older than 3 intervals are ignored).
A breaker that opens anywhere is announced on ``bh.events.breaker.<provider>``;
every node opens its own breaker for that provider on hearing it.
SLA breaches (p99 or error rate over the configured limits) go to BH_ALERTS, one
per provider, model, metric and minute cluster-wide (``Nats-Msg-Id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from gatekeeper.bus.events import EventBus
from gatekeeper.bus.streams import subject_token
from gatekeeper.config import HealthConfig
from gatekeeper.health import HealthBook, latency_view, sla_breaches
from gatekeeper.providers.failover import Attempt
from gatekeeper.providers.pool import ProviderPool

log = structlog.get_logger("gatekeeper.health")


class HealthBus:
    def __init__(
        self, nc: Client, node_id: str, pool: ProviderPool, events: EventBus, cfg: HealthConfig
    ) -> None:
        self.nc, self.node_id, self.pool, self.events, self.cfg = nc, node_id, pool, events, cfg
        self.book = HealthBook(cfg.window_s)
        self.reports: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[Any] = []
        self._view: dict[str, float] = {}
        self._view_at = 0.0

    # -------------------------------------------------------------- in-process

    def attempt_done(self, attempt: Attempt) -> None:
        if attempt.error == "breaker open":
            return
        self.book.record(
            attempt.provider, attempt.model, time.monotonic(), attempt.ms, attempt.error is None
        )

    def latency(self) -> dict[str, float]:
        """model → p99 TTFT seconds across all nodes (recomputed at most once a second)."""
        now = time.monotonic()
        if now - self._view_at > 1.0:
            fresh = now - 3 * self.cfg.publish_interval_s
            self._view = latency_view(
                (r for at, r in self.reports.values() if at >= fresh), self.cfg.sla_error_rate
            )
            self._view_at = now
        return self._view

    # -------------------------------------------------------------- NATS

    async def start(self) -> None:
        self._subs = [
            await self.nc.subscribe("bh.health.>", cb=self._on_health),
            await self.nc.subscribe("bh.events.breaker.>", cb=self._on_breaker),
        ]
        self._tasks = [asyncio.ensure_future(self._publish_forever())]

    async def _on_health(self, msg: Msg) -> None:
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
            report = orjson.loads(msg.data)
            self.reports[(report["node_id"], report["provider"])] = (
                time.monotonic(),
                report["models"],
            )

    async def _on_breaker(self, msg: Msg) -> None:
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
            event = orjson.loads(msg.data)
            breaker = self.pool.breakers.get(event["provider"])
            if (
                breaker is not None
                and event["state"] == "open"
                and event.get("node_id") != self.node_id
            ):
                breaker.force_open(time.monotonic())
                log.info(
                    "breaker.opened_by_peer", provider=event["provider"], peer=event.get("node_id")
                )

    def publish_once(self) -> None:
        now = time.monotonic()
        minute = int(time.time() // 60)
        for provider, by_model in self.book.snapshot(now).items():
            models = {m: s.to_dict() for m, s in by_model.items()}
            payload = {
                "node_id": self.node_id,
                "provider": provider,
                "ts": round(time.time(), 3),
                "models": models,
            }
            self.reports[(self.node_id, provider)] = (now, models)
            if self.nc.is_connected:
                task = asyncio.ensure_future(
                    self.nc.publish(
                        f"bh.health.{subject_token(provider)}.{subject_token(self.node_id)}",
                        orjson.dumps(payload),
                    )
                )
                task.add_done_callback(_quiet)
            for breach in sla_breaches(
                provider, by_model, p99_ms=self.cfg.sla_p99_ms, error_rate=self.cfg.sla_error_rate
            ):
                self.events.alert(
                    "sla_breach",
                    breach,
                    msg_id=(f"sla:{provider}:{breach['model']}:{breach['metric']}:{minute}"),
                )

    async def _publish_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.publish_interval_s)
            self.publish_once()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _quiet(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()

"""Provider health over NATS: each node publishes its windows to BH_HEALTH and reads all.

    bh.health.<provider>.<node>   {"node_id", "provider", "ts", "models": {model: stats}}

Every node keeps the latest report of every node; latency routing uses the worst
recent p99 TTFT per model across them (reports older than 3 intervals are ignored).
A breaker that opens anywhere is announced on ``bh.events.breaker.<provider>``;
every node opens its own breaker for that provider on hearing it, unless its own
attempts there succeeded within the last ``breaker_reset_s`` (a peer's word is a
hint; what this node sees itself wins, and its own half-open probe closes it).
Reports and breaker events are signed by the sender's node key and accepted only
from registered nodes, for the node id they were signed by (``node_events``).
SLA breaches (p99 or error rate over the configured limits) go to BH_ALERTS, one
per provider, model, metric and minute cluster-wide (``Nats-Msg-Id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from gatekeeper.bus.events import EventBus
from gatekeeper.config import HealthConfig
from gatekeeper.control.envelope import ControlValueRejected
from gatekeeper.control.node_events import open_event, sign_event
from gatekeeper.control.registry import NodeKeyRegistry
from gatekeeper.control.reporting import Rejections
from gatekeeper.health import HealthBook, latency_view, sla_breaches
from gatekeeper.providers.failover import Attempt
from gatekeeper.providers.pool import ProviderPool
from gatekeeper.subjects import subject_token

log = structlog.get_logger("gatekeeper.health")


class HealthBus:
    def __init__(
        self,
        nc: Client,
        node_id: str,
        pool: ProviderPool,
        events: EventBus,
        cfg: HealthConfig,
        *,
        registry: NodeKeyRegistry | None = None,
        rejections: Rejections | None = None,
    ) -> None:
        self.nc, self.node_id, self.pool, self.events, self.cfg = nc, node_id, pool, events, cfg
        self.registry = registry or NodeKeyRegistry({})
        self.rejections = rejections or Rejections()
        self.last_ok: dict[str, float] = {}  # provider → when an own attempt last succeeded
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
        if attempt.error is None:
            self.last_ok[attempt.provider] = time.monotonic()
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

    def _open(self, kind: str, msg: Msg, at: int) -> dict[str, Any] | None:
        """The verified payload of a peer's message, or None (refused and reported).

        ``at``: which subject token names the provider.
        """
        try:
            event = open_event(msg.data, msg.subject, self.registry, time.time())
            provider = event.get("provider")
            tokens = msg.subject.split(".")
            if not isinstance(provider, str) or tokens[at : at + 1] != [subject_token(provider)]:
                raise ControlValueRejected("wrong_shape", "provider does not match the subject")
        except ControlValueRejected as exc:
            self.rejections.reject(kind, msg.subject, exc.reason, exc.detail)
            return None
        return event

    async def _on_health(self, msg: Msg) -> None:
        report = self._open("health", msg, 2)
        if report is None or report["node_id"] == self.node_id:
            return
        models = report.get("models")
        if msg.subject.rpartition(".")[2] != subject_token(report["node_id"]) or not isinstance(
            models, dict
        ):
            self.rejections.reject("health", msg.subject, "wrong_shape", "node or models")
            return
        self.reports[(report["node_id"], report["provider"])] = (time.monotonic(), models)

    async def _on_breaker(self, msg: Msg) -> None:
        event = self._open("breaker", msg, 3)
        if event is None or event["node_id"] == self.node_id or event.get("state") != "open":
            return  # a peer's "closed" changes nothing here: only this node's probes close
        provider = event["provider"]
        breaker = self.pool.breakers.get(provider)
        if breaker is None:
            return
        now = time.monotonic()
        ok_at = self.last_ok.get(provider)
        if ok_at is not None and now - ok_at < self.pool.policy.breaker_reset_s:
            log.info("breaker.peer_hint_ignored", provider=provider, peer=event["node_id"])
            return
        breaker.force_open(now)
        log.info("breaker.opened_by_peer", provider=provider, peer=event["node_id"])

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
                subject = f"bh.health.{subject_token(provider)}.{subject_token(self.node_id)}"
                task = asyncio.ensure_future(
                    self.nc.publish(subject, sign_event(self.events.signing_key, subject, payload))
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

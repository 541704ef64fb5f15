"""One gateway node (one worker process): builds every step and wires the pipeline.

Nothing here decides anything; it connects NATS, provisions JetStream, creates the
HTTP pools, keyring, ledger and audit chain, and hands them to ``Pipeline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog
from nats.aio.client import Client
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError, NotFoundError

from gatekeeper.audit.chain import AuditChain, load_or_create_node_key
from gatekeeper.audit.publisher import AuditPublisher, Sealed
from gatekeeper.audit.spool import AuditSpool
from gatekeeper.auth.paserk import decode_public
from gatekeeper.auth.verifier import Keyring, TokenVerifier
from gatekeeper.budget.admission import LedgerAdmission
from gatekeeper.budget.gossip import Gossip
from gatekeeper.budget.ledger import BudgetLedger
from gatekeeper.bus.config_watch import MATRIX_KEY, ConfigWatcher, LiveConfig
from gatekeeper.bus.connect import connect
from gatekeeper.bus.events import EventBus
from gatekeeper.bus.health_bus import HealthBus
from gatekeeper.bus.outbox import Outbox
from gatekeeper.bus.sessions import SessionTracker
from gatekeeper.bus.streams import (
    AUDIT,
    BUDGET_BUCKET,
    CONFIG_BUCKET,
    ensure_streams,
    subject_token,
)
from gatekeeper.catalog import Catalog
from gatekeeper.config import Config, ProviderConfig
from gatekeeper.observability.metrics import Metrics, MetricsSettings
from gatekeeper.pipeline import Pipeline
from gatekeeper.providers.base import Provider
from gatekeeper.providers.demo import DEMO_PROVIDER, DemoProvider, demo_models
from gatekeeper.providers.openai import OpenAIProvider
from gatekeeper.providers.pool import ProviderPool
from gatekeeper.routing.live import LiveRouter
from gatekeeper.routing.matrix import Matrix, model_dict

log = structlog.get_logger("gatekeeper.node")


def build_provider(cfg: ProviderConfig) -> Provider:
    if cfg.kind == "demo":
        return DemoProvider(cfg.name)
    if cfg.kind == "anthropic":
        from gatekeeper.providers.anthropic import AnthropicProvider

        return AnthropicProvider(cfg)
    return OpenAIProvider(cfg)


def build_providers(config: Config, catalog: Catalog) -> dict[str, Provider]:
    providers = {p.name: build_provider(p) for p in config.enabled_providers}
    if catalog.demo and DEMO_PROVIDER not in providers:
        providers[DEMO_PROVIDER] = DemoProvider()
    return providers


def build_verifier(config: Config) -> TokenVerifier:
    keyring = Keyring(decode_public(k) for k in config.auth.issuers)
    return TokenVerifier(keyring, leeway=config.auth.leeway_s, cache_size=config.auth.cache_size)


@dataclass(slots=True)
class Node:
    node_id: str
    config: Config
    nc: Client
    pipeline: Pipeline
    audit: AuditPublisher
    events: EventBus
    admission: LedgerAdmission
    gossip: Gossip
    router: LiveRouter
    watcher: ConfigWatcher
    health: HealthBus
    sessions: SessionTracker
    outbox: Outbox
    metrics: Metrics
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    nats_state: str = "connected"

    def readiness(self) -> dict[str, Any]:
        connected = self.nc.is_connected
        providers = len(self.pipeline.pool.providers)
        return {
            "ready": connected and providers > 0,
            "node_id": self.node_id,
            "nats": "connected" if connected else "disconnected",
            "providers": providers,
            "audit_spool_depth": self.audit.spool_depth,
            "audit_spool_alert": self.audit.spool_depth >= self.config.audit.spool_alert_records,
            "asyncio_tasks": len(asyncio.all_tasks()),  # a leak shows as growth (make soak)
        }

    async def stop(self, grace: float) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending = list(self.pipeline.background)
        if pending:
            await asyncio.wait(pending, timeout=grace)
        await self.audit.stop(wait_s=min(grace, 10.0))
        await self.gossip.stop()
        await self.watcher.stop()
        await self.health.stop()
        await self.sessions.stop()
        await self.outbox.stop()
        await self.pipeline.pool.aclose()
        with contextlib.suppress(Exception):
            await self.nc.drain()


async def start_node(config: Config, catalog: Catalog, node_id: str, nats_url: str) -> Node:
    nc = await connect(
        nats_url, name=f"gatekeeper:{node_id}", connect_timeout_s=config.nats.connect_timeout_s
    )
    js = nc.jetstream()
    for line in await ensure_streams(js, config.nats.replicas):
        log.debug("streams.provisioned", detail=line)
    state_dir = Path(config.state_dir) / "nodes" / node_id
    key = load_or_create_node_key(state_dir / "node.key")
    spool = AuditSpool(Path(config.audit.spool_dir) / node_id)
    chain = await _resume_chain(js, node_id, key, spool)
    audit = AuditPublisher(nc, chain, spool, node_id=node_id, strict=config.audit.mode == "strict")
    outbox = Outbox(nc)
    outbox.start()
    events = EventBus(outbox, node_id)
    await events.publish_node_key(js, chain)
    await audit.start()
    metrics = Metrics(MetricsSettings.from_env(os.environ))
    pool = ProviderPool(
        build_providers(config, catalog), policy=config.failover, hook=metrics.pool_hook(events)
    )
    health = HealthBus(nc, node_id, pool, events, config.health)
    events.on_attempt = health.attempt_done
    await health.start()
    router = LiveRouter(
        Matrix(catalog.models),
        catalog.chain,
        default_mode=config.routing.default_mode,
        quality_threshold=config.routing.quality_threshold,
        unavailable=catalog.unavailable,
        health=health.latency,
    )
    ledger = BudgetLedger(node_id)
    gossip = Gossip(
        nc,
        outbox,
        await js.key_value(BUDGET_BUCKET),
        ledger,
        interval_s=config.limits.gossip_interval_ms / 1000,
    )
    await gossip.start()  # own slots are loaded before any traffic is admitted
    admission = LedgerAdmission(
        ledger,
        default_max_tokens=config.limits.default_max_tokens,
        alerts=events,
        on_change=gossip.changed,
    )
    verifier = build_verifier(config)
    watcher = await _watch_config(nc, config, catalog, verifier, router, pool, events)
    gossip.on_dropped = admission.forget
    sessions = SessionTracker(nc, ledger, node_id)
    sessions.start()
    pipeline = Pipeline(
        config, verifier, router, admission, pool, _Auditor(audit, events, sessions, metrics)
    )
    node = Node(
        node_id=node_id,
        config=config,
        nc=nc,
        pipeline=pipeline,
        audit=audit,
        events=events,
        admission=admission,
        gossip=gossip,
        router=router,
        watcher=watcher,
        health=health,
        sessions=sessions,
        outbox=outbox,
        metrics=metrics,
    )
    metrics.track_budgets(admission.usage)
    node.tasks.append(asyncio.ensure_future(metrics.run(pool.breakers, audit)))
    node.tasks.append(
        asyncio.ensure_future(watch_spool(audit, events, node_id, config.audit.spool_alert_records))
    )
    return node


async def watch_spool(
    audit: AuditPublisher, events: EventBus, node_id: str, limit: int, every_s: float = 5.0
) -> None:
    """Raise a BH_ALERTS ``audit_spool`` alert while the spool is deeper than ``limit``."""
    while True:
        await asyncio.sleep(every_s)
        depth = audit.spool_depth
        if depth >= limit:
            bucket = int(time.time() // 600)
            events.alert(
                "audit_spool", {"depth": depth, "limit": limit}, msg_id=f"spool:{node_id}:{bucket}"
            )


async def _watch_config(
    nc: Client,
    config: Config,
    catalog: Catalog,
    verifier: TokenVerifier,
    router: LiveRouter,
    pool: ProviderPool,
    events: EventBus,
) -> ConfigWatcher:
    """Seed BH_CONFIG's matrix from the YAML on first start, load it, then follow it."""
    kv = await nc.jetstream().key_value(CONFIG_BUCKET)
    seed = orjson.dumps({"models": [model_dict(m) for m in config.models]})
    with contextlib.suppress(KeyWrongLastSequenceError, BadRequestError):
        await kv.create(MATRIX_KEY, seed)
    live = LiveConfig(
        verifier.keyring,
        verifier.revocations,
        router.replace_matrix,
        frozenset(pool.providers),
        extra_models=demo_models() if catalog.demo else (),
        static_kids=frozenset(verifier.keyring),
        on_reject=events.config_rejected,
    )
    watcher = ConfigWatcher(kv, live, nc)
    await watcher.load()
    watcher.start()
    return watcher


class _Auditor:
    """The pipeline's step 8: the audit record, plus the routing event and session beside it."""

    def __init__(
        self, audit: AuditPublisher, events: EventBus, sessions: SessionTracker, metrics: Metrics
    ) -> None:
        self.audit = audit
        self.events = events
        self.sessions = sessions
        self.metrics = metrics

    def begin(self, ex: Any) -> Sealed:
        sealed = self.audit.seal(ex)  # strict: on its way to JetStream already
        self.sessions.seen(ex)  # this and the routing event: while the ack travels
        self.routed(ex)
        return sealed

    async def end(self, ex: Any, sealed: Sealed) -> None:
        try:
            await self.audit.finish(sealed)
        finally:  # counted once the reply is on its way
            asyncio.get_running_loop().call_soon(self.metrics.request_done, ex, time.perf_counter())

    async def commit(self, ex: Any) -> None:
        await self.end(ex, self.begin(ex))

    def routed(self, ex: Any) -> None:
        """The exchange's routing event, once."""
        if not ex.routed and ex.route is not None:
            ex.routed = True
            self.events.routed(ex)


async def _resume_chain(js: Any, node_id: str, key: Any, spool: AuditSpool) -> AuditChain:
    """Continue this node's chain after its newest record (spool first, then BH_AUDIT).

    Only "this node has no record yet" starts a new chain; any other failure to read
    the stream stops the start, so a restarted node never forks its chain at seq 1.
    """
    last: dict[str, Any] | None = None
    for _, data in spool.pending():
        last = orjson.loads(data)
    if last is None:
        try:
            msg = await js.get_last_msg(AUDIT, f"bh.audit.*.{subject_token(node_id)}")
        except NotFoundError:
            pass
        else:
            last = orjson.loads(msg.data)
    return AuditChain.resume(node_id, key, last)

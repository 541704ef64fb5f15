"""One gateway node (one worker process): builds every step and wires the pipeline.

Nothing here decides anything; it connects NATS, provisions JetStream, creates the
HTTP pools, keyring, ledger and audit chain, and hands them to ``Pipeline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from nacl.signing import SigningKey, VerifyKey
from nats.aio.client import Client
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError

from gatekeeper.audit import anonymous
from gatekeeper.audit.anonymous import AnonymousTally
from gatekeeper.audit.checkpointer import Checkpointer, CheckpointLog
from gatekeeper.audit.publisher import AuditPublisher, Sealed
from gatekeeper.audit.resume import resume_chain
from gatekeeper.audit.spool import AuditSpool
from gatekeeper.auth.node_key import load_or_create_node_key
from gatekeeper.auth.paserk import decode_public
from gatekeeper.auth.shield import Shield, watch_auth_failures
from gatekeeper.auth.verifier import Keyring, TokenVerifier
from gatekeeper.batches.worker import batch_worker
from gatekeeper.budget.admission import LedgerAdmission
from gatekeeper.budget.concurrency import ConcurrencyLimiter
from gatekeeper.budget.escrow_bus import EscrowBus, NodeKeys
from gatekeeper.budget.gossip import Gossip
from gatekeeper.budget.ledger import BudgetLedger
from gatekeeper.budget.sessions import SessionTracker
from gatekeeper.budget.strict import StrictBook
from gatekeeper.bus.acks import AckedPublisher
from gatekeeper.bus.config_watch import MATRIX_KEY, ConfigWatcher, LiveConfig
from gatekeeper.bus.connect import ErrorWatch, connect
from gatekeeper.bus.events import EventBus
from gatekeeper.bus.health_bus import HealthBus
from gatekeeper.bus.node_keys import ControlPlane, bootstrap
from gatekeeper.bus.outbox import Outbox
from gatekeeper.bus.streams import (
    BUDGET_BUCKET,
    CACHE_BUCKET,
    CACHE_OBJECTS,
    CONFIG_BUCKET,
    ESCROW_BUCKET,
    CacheBuckets,
    JobsConsumer,
    check_node_id,
    ensure_streams,
)
from gatekeeper.cache.index import KeyIndex, watch_index
from gatekeeper.cache.memory import AnswerMemory
from gatekeeper.cache.secret import load_cache_secret
from gatekeeper.cache.service import ResultCache
from gatekeeper.cache.store import CacheStore
from gatekeeper.capacity.gate import CapacityGate
from gatekeeper.catalog import Catalog
from gatekeeper.config import Config, config_secrets
from gatekeeper.control.registry import NodeKeyRegistry
from gatekeeper.control.reporting import Rejections
from gatekeeper.control.slots import SlotVerifier
from gatekeeper.control.values import signed_matrix
from gatekeeper.errors import ConfigError
from gatekeeper.exchange import AuditRef, Exchange
from gatekeeper.observability.metrics import Metrics, MetricsSettings
from gatekeeper.passes.service import PassService, build_passes
from gatekeeper.pipeline import Pipeline
from gatekeeper.providers.base import Provider
from gatekeeper.providers.demo import DEMO_PROVIDER, DemoProvider, demo_models
from gatekeeper.providers.failover import Attempt
from gatekeeper.providers.limits import DEFAULT_LIMITS, UpstreamLimits
from gatekeeper.providers.openai import OpenAIProvider
from gatekeeper.providers.pool import ProviderPool
from gatekeeper.providers.settings import ProviderConfig
from gatekeeper.routing.live import LiveRouter
from gatekeeper.routing.matrix import Matrix, model_dict
from gatekeeper.scrub import Scrubber
from gatekeeper.tasks import TaskSet

log = structlog.get_logger("gatekeeper.node")


def build_provider(
    cfg: ProviderConfig, limits: UpstreamLimits = DEFAULT_LIMITS, scrub: Scrubber | None = None
) -> Provider:
    if cfg.kind == "demo":
        return DemoProvider(cfg.name)
    if cfg.kind == "anthropic":
        from gatekeeper.providers.anthropic import AnthropicProvider

        return AnthropicProvider(cfg, limits=limits, scrub=scrub)
    return OpenAIProvider(cfg, limits=limits, scrub=scrub)


def build_providers(config: Config, catalog: Catalog) -> dict[str, Provider]:
    scrub = Scrubber(config_secrets(config))  # upstream texts never carry a configured secret
    providers = {
        p.name: build_provider(p, config.upstream, scrub) for p in config.enabled_providers
    }
    if catalog.demo and DEMO_PROVIDER not in providers:
        providers[DEMO_PROVIDER] = DemoProvider()
    return providers


def build_verifier(config: Config, metrics: Metrics | None = None) -> TokenVerifier:
    keyring = Keyring(decode_public(k) for k in config.auth.issuers)
    return TokenVerifier(
        keyring,
        leeway=config.auth.leeway_s,
        cache_size=config.auth.cache_size,
        max_lifetime=config.auth.max_token_lifetime,
        negative_cache_size=config.shield.negative_cache_size,
        on_failure=metrics.auth_failed if metrics is not None else None,
    )


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
    checkpointer: Checkpointer
    tally: AnonymousTally
    shield: Shield | None = None
    passes: PassService | None = None
    escrow: EscrowBus | None = None
    tasks: TaskSet = field(default_factory=TaskSet)  # the node's own loops
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
        await self.tasks.aclose()
        pending = list(self.pipeline.background)
        if pending:
            await asyncio.wait(pending, timeout=grace)
        if self.pipeline.cache is not None:
            await self.pipeline.cache.aclose()
        await anonymous.flush(self.tally, self.audit.commit_record, self.node_id, time.time())
        await self.audit.stop(wait_s=min(grace, 10.0))
        await self.checkpointer.checkpoint()  # the chain's final state, signed
        await self.gossip.stop()
        if self.escrow is not None:
            await self.escrow.stop()
        await self.watcher.stop()
        await self.health.stop()
        await self.sessions.stop()
        await self.outbox.stop()
        await self.pipeline.pool.aclose()
        with contextlib.suppress(Exception):
            await self.nc.drain()


async def start_node(config: Config, catalog: Catalog, node_id: str, nats_url: str) -> Node:
    try:
        check_node_id(node_id)
    except ValueError as exc:
        raise ConfigError(f"node_id: {exc}") from None
    metrics = Metrics(MetricsSettings.from_env(os.environ))
    nats_errors = ErrorWatch(on_denied=metrics.nats_permission_denied.inc)
    nc = await connect(
        nats_url,
        name=f"gatekeeper:{node_id}",
        connect_timeout_s=config.nats.connect_timeout_s,
        auth=config.nats,
        watch=nats_errors,
    )
    async with contextlib.AsyncExitStack() as stack:  # a failed start unwinds what it started
        stack.push_async_callback(_close, nc)
        node = await _build(stack, config, catalog, node_id, nc, metrics)
        stack.pop_all()  # started: from here on ``Node.stop`` owns every lifetime
    return node


async def _close(nc: Client) -> None:
    with contextlib.suppress(Exception):
        await nc.close()


async def _build(
    stack: contextlib.AsyncExitStack,
    config: Config,
    catalog: Catalog,
    node_id: str,
    nc: Client,
    metrics: Metrics,
) -> Node:
    """Every component of the node, each started one's stop pushed on ``stack``."""
    js = nc.jetstream()
    # nats.provision false (a node user): only check the streams, never create them
    jobs = JobsConsumer(config.batches.ack_wait_s, config.batches.max_deliver)
    buckets = CacheBuckets(config.cache.max_ttl_s, config.cache.max_bytes)
    provisioned = await ensure_streams(
        js, config.nats.replicas, create=config.nats.provision, jobs=jobs, cache=buckets
    )
    for line in provisioned:
        log.debug("streams.provisioned", detail=line)
    state_dir = Path(config.state_dir) / "nodes" / node_id
    key = load_or_create_node_key(state_dir / "node.key")
    control = await bootstrap(await js.key_value(CONFIG_BUCKET), config.control, node_id, key)
    spool = AuditSpool(Path(config.audit.spool_dir) / node_id)
    local = CheckpointLog(state_dir / "checkpoints.jsonl")
    own = key.verify_key
    registry = control.registry

    def key_at(t: float) -> VerifyKey | None:  # the key valid then (a record older than
        return registry.key_at(node_id, t) or own  # the first registration: our own)

    resumed = await resume_chain(js, node_id, key, spool, local.newest(), key_at)
    chain = resumed.chain
    audit = AuditPublisher(nc, chain, spool, node_id=node_id, strict=config.audit.mode == "strict")
    outbox = Outbox(nc)
    outbox.start()
    stack.push_async_callback(outbox.stop)
    events = EventBus(outbox, node_id, key)
    _report_foreign(events, node_id, resumed.foreign)
    await audit.start()
    stack.push_async_callback(audit.stop, 1.0)
    checkpointer = Checkpointer(
        node_id,
        key,
        chain,
        local,
        js,
        interval_s=config.audit.checkpoint_interval_s,
        written=local.newest(),
    )
    rejections = Rejections(events.control_rejected, metrics.control_rejected)
    pool = ProviderPool(
        build_providers(config, catalog), policy=config.failover, hook=metrics.pool_hook(events)
    )
    stack.push_async_callback(pool.aclose)
    health = HealthBus(
        nc,
        node_id,
        pool,
        events,
        config.health,
        registry=control.registry,
        rejections=rejections,
    )
    events.on_attempt = health.attempt_done
    await health.start()
    stack.push_async_callback(health.stop)
    router = LiveRouter(
        Matrix(catalog.models),
        catalog.chain,
        default_mode=config.routing.default_mode,
        quality_threshold=config.routing.quality_threshold,
        unavailable=catalog.unavailable,
        health=health.latency,
        same_provider_retries=config.failover.same_provider_retries,
    )
    ledger = BudgetLedger(node_id)
    gossip = Gossip(
        nc,
        outbox,
        await js.key_value(BUDGET_BUCKET),
        ledger,
        signing_key=key,
        verifier=SlotVerifier(
            control.registry, factor=config.control.slot_limit_factor, limit_of=ledger.limit_of
        ),
        rejections=rejections,
        interval_s=config.limits.gossip_interval_ms / 1000,
    )
    await gossip.start()  # own slots are loaded before any traffic is admitted
    stack.push_async_callback(gossip.stop)
    escrow = EscrowBus(
        nc,
        await js.key_value(ESCROW_BUCKET),
        NodeKeys(control.registry.current, node_id, key.verify_key),
        StrictBook(node_id),
        key,
        default_mode=config.limits.budget_mode,
        wait_s=config.limits.strict_wait_ms / 1000,
        interval_s=config.limits.gossip_interval_ms / 1000,
    )
    await escrow.start()  # own escrow replicas too
    stack.push_async_callback(escrow.stop)
    admission = LedgerAdmission(
        ledger,
        default_max_tokens=config.limits.default_max_tokens,
        alerts=events,
        on_change=gossip.changed,
        metrics=metrics,
        strict=escrow,
    )
    verifier = build_verifier(config, metrics)
    metrics.samplers.append(lambda: metrics.verifications_seen(verifier.verifications))
    shield = Shield(config.shield, knows=verifier.knows)
    watcher = await _watch_config(
        nc, config, catalog, verifier, router, pool, control, rejections, gossip.node_registered
    )
    stack.push_async_callback(watcher.stop)
    gossip.on_dropped = admission.forget
    sessions = SessionTracker(nc, ledger, node_id)
    sessions.start()
    stack.push_async_callback(sessions.stop)
    tally = AnonymousTally(config.audit.anonymous_max_clients)
    passes = build_passes(
        config.passes,
        nc.jetstream(timeout=2.0),  # a double-spend check that cannot answer fails fast
        ledger,
        verifier,
        replicas=config.nats.replicas,
        on_change=gossip.changed,
    )
    cache = None  # the result cache (docs/capacity.md): off unless configured
    if config.cache.enabled:
        cache = await build_cache(config, nc, node_id, key, registry, pool, metrics, audit.acks)
    capacity = None  # priority lanes (docs/capacity.md): off unless configured
    if config.capacity.enabled:
        capacity = CapacityGate(config.capacity, config.server.request_timeout_s, metrics)
        unknown = sorted(set(config.capacity.models) - {m.name for m in config.models})
        if unknown and config.models:  # one may yet come through BH_CONFIG: a warning only
            log.warning("capacity.unknown_models", models=unknown, hint="not in models:")
        gate = capacity
        metrics.samplers.append(lambda: metrics.lane_depths(gate.depths()))
        if gate.providers:
            metrics.samplers.append(lambda: metrics.provider_limits(gate.limits()))
        if gate.learned:  # learned provider limits: every finished attempt is a signal
            health_hook = health.attempt_done

            def on_attempt(attempt: Attempt) -> None:
                health_hook(attempt)
                gate.observe(attempt)

            events.on_attempt = on_attempt
    pipeline = Pipeline(
        config,
        verifier,
        router,
        admission,
        pool,
        _Auditor(audit, events, sessions, metrics, tally),
        concurrency=ConcurrencyLimiter(config.limits.concurrency, config.server.limits.max_streams),
        passes=passes.redeemer if passes is not None else None,
        cache=cache,
        capacity=capacity,
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
        escrow=escrow,
        router=router,
        watcher=watcher,
        health=health,
        sessions=sessions,
        outbox=outbox,
        metrics=metrics,
        checkpointer=checkpointer,
        tally=tally,
        shield=shield,
        passes=passes,
    )
    tasks = node.tasks
    if passes is not None:
        tasks.spawn(passes.rotate_forever(), "passes.rotate")
    metrics.track_budgets(admission.usage)
    if config.batches.enabled and config.batches.workers:  # batch lines (gatekeeper.batches)
        worker = batch_worker(nc, pipeline, key, registry, node_id, config)
        tasks.spawn(worker.run(), "batches.worker")
    if cache is not None and cache.store.index is not None:  # misses without a read
        kv, index = cache.store.kv, cache.store.index
        tasks.spawn(watch_index(kv, index, lambda: nc.stats["reconnects"]), "cache.index")
    tasks.spawn(checkpointer.run(), "audit.checkpoints")
    tasks.spawn(
        anonymous.flush_every(
            tally, audit.commit_record, node_id, config.audit.anonymous_interval_s
        ),
        "audit.anonymous",
    )
    tasks.spawn(metrics.run(pool.breakers, audit), "metrics.sample")
    tasks.spawn(watch_auth_failures(shield, events.alert, node_id), "shield.auth_failures")
    tasks.spawn(
        watch_spool(audit, events, node_id, config.audit.spool_alert_records), "audit.spool_alert"
    )
    return node


async def build_cache(
    config: Config,
    nc: Client,
    node_id: str,
    key: SigningKey,
    registry: NodeKeyRegistry,
    pool: ProviderPool,
    metrics: Metrics,
    acks: AckedPublisher,
) -> ResultCache:
    """The result cache over BH_CACHE / BH_CACHE_OBJ, signing with this node's key."""
    js = nc.jetstream(timeout=2.0)
    kv = await js.key_value(CACHE_BUCKET)
    index = KeyIndex(config.cache.index_max_keys) if config.cache.index_max_keys else None
    store = CacheStore(
        kv,
        await js.object_store(CACHE_OBJECTS),
        node_id,
        key,
        lambda node: tuple(entry.verify_key for entry in registry.history(node)),
        inline_max=config.cache.inline_max_bytes,
        timeout_s=config.cache.lookup_timeout_s,
        on_rejected=lambda reason: metrics.control_rejected("cache_entry", reason),
        index=index,
        memory=(
            AnswerMemory(config.cache.memory_bytes, config.cache.memory_recheck_s)
            if config.cache.memory_bytes
            else None
        ),
        acks=acks,  # started with the audit publisher
        subject=f"$KV.{CACHE_BUCKET}.",
    )
    secret = load_cache_secret(config.cache.key_secret_file)
    return ResultCache(config.cache, store, pool, secret, metrics)


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
    control: ControlPlane,
    rejections: Rejections,
    on_node_key: Callable[[str], None],
) -> ConfigWatcher:
    """Seed BH_CONFIG's matrix from the YAML on first start (operator-signed, so only
    where the operator key is), load it, then follow it."""
    kv = await nc.jetstream().key_value(CONFIG_BUCKET)
    if control.operator_key is not None and config.nats.provision:  # a node user may not
        seed = signed_matrix(control.operator_key, [model_dict(m) for m in config.models])
        with contextlib.suppress(KeyWrongLastSequenceError, BadRequestError):
            await kv.create(MATRIX_KEY, seed)
    live = LiveConfig(
        verifier.keyring,
        verifier.revocations,
        router.replace_matrix,
        frozenset(pool.providers),
        operators=control.operators,
        registry=control.registry,
        extra_models=demo_models() if catalog.demo else (),
        static_kids=frozenset(verifier.keyring),
        rejections=rejections,
        on_node_key=on_node_key,
    )
    watcher = ConfigWatcher(kv, live, nc)
    await watcher.load()
    watcher.start()
    return watcher


class _Auditor:
    """The pipeline's step 8: the audit record, plus the routing event and session beside it.

    A request that never authenticated gets no record of its own: it is counted in
    ``tally`` (one summary record per interval, ``gatekeeper.audit.anonymous``).
    """

    def __init__(
        self,
        audit: AuditPublisher,
        events: EventBus,
        sessions: SessionTracker,
        metrics: Metrics,
        tally: AnonymousTally,
    ) -> None:
        self.audit = audit
        self.events = events
        self.sessions = sessions
        self.metrics = metrics
        self.tally = tally

    def begin(self, ex: Exchange) -> Sealed:
        sealed = self.audit.seal(ex)  # strict: on its way to JetStream already
        self.sessions.seen(ex)  # this and the routing event: while the ack travels
        self.routed(ex)
        if ex.resumed is not None:  # mid-stream failover: its own event
            self.events.continued(ex)
        return sealed

    async def end(self, ex: Exchange, sealed: Sealed) -> None:
        try:
            stream_seq = await self.audit.finish(sealed, stored=ex.witness is not None)
            if ex.witness is not None:  # a batch line: where its record is (BH_AUDIT)
                usage = ex.usage  # the charge, as the record carries it
                charged = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
                ex.witness(
                    AuditRef(self.audit.node_id, sealed.seq, sealed.hash, stream_seq), charged
                )
        finally:  # counted once the reply is on its way
            asyncio.get_running_loop().call_soon(self.metrics.request_done, ex, time.perf_counter())

    async def commit(self, ex: Exchange) -> None:
        if ex.claims is None:
            self.tally.count(ex.client, ex.error_code or "unauthenticated")
            asyncio.get_running_loop().call_soon(self.metrics.request_done, ex, time.perf_counter())
            return
        await self.end(ex, self.begin(ex))

    def routed(self, ex: Exchange) -> None:
        """The exchange's routing event, once."""
        if not ex.routed and ex.route is not None:
            ex.routed = True
            self.events.routed(ex)


def _report_foreign(events: EventBus, node_id: str, foreign: list[tuple[int, str]]) -> None:
    """Records on this node's subjects that it did not sign: logged and alerted."""
    for stream_seq, problem in foreign:
        log.error("audit.foreign_record", node_id=node_id, stream_seq=stream_seq, problem=problem)
        events.alert(
            "audit_foreign_record",
            {"node_id": node_id, "stream_seq": stream_seq, "problem": problem},
            msg_id=f"foreign:{node_id}:{stream_seq}",
        )

"""Prometheus metrics: OpenTelemetry GenAI names where they exist, ``gatekeeper_*`` beside them.

    gen_ai_client_token_usage                  histogram  tokens per request, input|output
    gen_ai_client_operation_duration_seconds   histogram  whole request, as the client saw it
    gen_ai_server_time_to_first_token_seconds  histogram  streams: until the first chunk
    gatekeeper_requests_total                  counter    status, model, provider, mode, tenant
    gatekeeper_overhead_seconds                histogram  time in the gateway, not upstream
    gatekeeper_upstream_attempts_total         counter    provider, outcome
    gatekeeper_upstream_attempt_duration_seconds histogram provider, outcome
    gatekeeper_failovers_total                 counter    from_provider, to_provider
    gatekeeper_cost_usd_total                  counter    provider, model, tenant
    gatekeeper_breaker_state                   gauge      0 closed, 1 half_open, 2 open
    gatekeeper_audit_spool_depth               gauge      records waiting in the spool
    gatekeeper_auth_failures_total             counter    reason (refused tokens)
    gatekeeper_token_verifications_total       counter    Ed25519 signature checks done
    gatekeeper_budget_remaining / _used_ratio  gauge      opt-in, top-N keys (scrape time)
    gatekeeper_lane_queue_depth                gauge      lane (priority lanes, docs/capacity.md)
    gatekeeper_lane_wait_seconds               histogram  lane: time queued, granted or not
    gatekeeper_lane_shed_total                 counter    lane, reason (429/503 load shedding)
    gatekeeper_capacity_limit                  gauge      provider: its limit now (capacity.learn)

The hot path does not touch prometheus_client: a request adds into plain dicts
(``BufferedCounter``/``BufferedHistogram``; the cost is in BENCHMARKS.md) and a node task
flushes them into the instruments once a second, and before every scrape. With
``--workers N`` the instruments live in prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor) and any worker renders the sum.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, multiprocess
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gatekeeper.observability.buffers import (
    BufferedCounter,
    BufferedHistogram,
    LabelLimit,
    counter,
    histogram,
)
from gatekeeper.observability.keys import BudgetCollector, KeyRow, KeyTracker, Usage
from gatekeeper.providers.failover import Attempt, Breaker
from gatekeeper.routing.matrix import ModelSpec

if TYPE_CHECKING:
    from gatekeeper.exchange import Exchange
    from gatekeeper.providers.pool import PoolHook

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Bucket boundaries recommended by the OpenTelemetry GenAI semantic conventions.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)
OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Cardinality bounds. Read from the environment (``GATEKEEPER_METRICS_*``)."""

    max_tenants: int = 100  # distinct tenant labels per process; later tenants are "_other"
    budget_keys: int = 0  # top-N keys exported as gatekeeper_budget_*; 0 = off
    tracked_keys: int = 1000  # keys remembered for the dashboard and the budget gauges
    flush_interval_s: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> MetricsSettings:
        def number(name: str, default: int) -> int:
            raw = env.get(f"GATEKEEPER_METRICS_{name}", "")
            return max(0, int(raw)) if raw.strip().isdigit() else default

        default = cls()
        return cls(
            max_tenants=number("MAX_TENANTS", default.max_tenants),
            budget_keys=number("BUDGET_KEYS", default.budget_keys),
            tracked_keys=max(1, number("TRACKED_KEYS", default.tracked_keys)),
        )


# ---------------------------------------------------------------------- the metrics


class SpoolSource(Protocol):
    @property
    def spool_depth(self) -> int: ...


class Metrics:
    """Every instrument of one process, and how a finished request updates them."""

    def __init__(self, settings: MetricsSettings | None = None) -> None:
        self.settings = settings or MetricsSettings()
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        self.registry = r = CollectorRegistry()
        self.keys = KeyTracker(self.settings.tracked_keys)
        self._tenants = LabelLimit(self.settings.max_tenants)
        self._errors = LabelLimit(64)
        self._extra: list[Collector] = []
        self._exposition: CollectorRegistry | None = None
        response = ("gen_ai_response_model",)
        self.tokens = histogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used (OpenTelemetry GenAI)",
            (*GENAI_LABELS, *response, "gen_ai_token_type"),
            TOKEN_BUCKETS,
            r,
        )
        self.duration = histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration: the whole request, failover included (OpenTelemetry GenAI)",
            (*GENAI_LABELS, *response, "error_type"),
            DURATION_BUCKETS,
            r,
        )
        self.ttft = histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first token of a stream (OpenTelemetry GenAI)",
            (*GENAI_LABELS, *response),
            TTFT_BUCKETS,
            r,
        )
        self.requests = counter(
            "gatekeeper_requests_total",
            "Finished chat and embeddings requests",
            ("endpoint", "status", "model", "provider", "routing_mode", "tenant"),
            r,
        )
        self.overhead = histogram(
            "gatekeeper_overhead_seconds",
            "Time spent in the gateway, excluding upstream attempts (streams: until headers)",
            ("endpoint", "stream"),
            OVERHEAD_BUCKETS,
            r,
        )
        self.attempts = counter(
            "gatekeeper_upstream_attempts_total",
            "Upstream attempts by outcome (ok, error, skipped: breaker open)",
            ("provider", "outcome"),
            r,
        )
        self.attempt_duration = histogram(
            "gatekeeper_upstream_attempt_duration_seconds",
            "Upstream attempt latency (streams: until the first chunk)",
            ("provider", "outcome"),
            DURATION_BUCKETS,
            r,
        )
        self.failovers = counter(
            "gatekeeper_failovers_total",
            "Failovers from one provider to the next in an attempt plan",
            ("from_provider", "to_provider"),
            r,
        )
        self.cost = counter(
            "gatekeeper_cost_usd_total",
            "Spend in USD at the matrix prices",
            ("provider", "model", "tenant"),
            r,
        )
        self.refusals = counter(
            "gatekeeper_budget_refusals_total",
            "Requests refused by admission: kind rate (rpm/tpm) or budget (tokens/USD)",
            ("kind",),
            r,
        )
        self.charged_requests = counter(
            "gatekeeper_usage_charged_total",
            "Accepted requests by where their charge came from: upstream, counted, reserved",
            ("usage_source",),
            r,
        )
        self.charged_tokens = counter(
            "gatekeeper_usage_charged_tokens_total",
            "Tokens charged to budgets, by usage_source",
            ("usage_source",),
            r,
        )
        self.suspicious = counter(
            "gatekeeper_usage_suspicious_total",
            "Upstream usage reports not believed (too few tokens for the text received)",
            ("usage_source",),
            r,
        )
        self.cache_results = counter(
            "gatekeeper_cache_requests_total",
            "Chat requests by result-cache outcome: HIT, MISS, COALESCED, BYPASS",
            ("result",),
            r,
        )
        self.cache_saved = counter(
            "gatekeeper_cache_saved_usd_total",
            "Upstream cost not spent thanks to cache hits and coalesced requests (list price)",
            (),
            r,
        )
        self.lane_wait = histogram(
            "gatekeeper_lane_wait_seconds",
            "Time a request waited in its priority lane (granted, shed or gone)",
            ("lane",),
            DURATION_BUCKETS,
            r,
        )
        self.lane_shed_count = counter(
            "gatekeeper_lane_shed_total",
            "Requests shed by the priority lanes, by lane and reason",
            ("lane", "reason"),
            r,
        )
        self.lane_depth = Gauge(
            "gatekeeper_lane_queue_depth",
            "Requests waiting in each priority lane (sum over workers)",
            ["lane"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.capacity_limit = Gauge(
            "gatekeeper_capacity_limit",
            "Upstream requests a provider may run at once on this node, learned or configured"
            " (sum over workers)",
            ["provider"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.breaker_state = Gauge(
            "gatekeeper_breaker_state",
            "Circuit breaker per provider: 0 closed, 1 half_open, 2 open (worst worker)",
            ["provider"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.spool_depth = Gauge(
            "gatekeeper_audit_spool_depth",
            "Audit records waiting in the local spool (sum over workers)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.nats_permission_denied = Counter(
            "gatekeeper_nats_permission_denied",
            "Publishes or subscriptions the NATS server refused this node (its permissions)",
            registry=r,
        )
        self.control_rejections = Counter(
            "gatekeeper_control_rejected_total",
            "Control values refused: config entries, budget slots, peer events (by kind, reason)",
            ["kind", "reason"],
            registry=r,
        )
        self.auth_failures = counter(
            "gatekeeper_auth_failures_total",
            "Refused API tokens by reason (missing, bad_signature, expired, ...)",
            ("reason",),
            r,
        )
        self.verifications = counter(
            "gatekeeper_token_verifications_total",
            "Ed25519 signature checks done (known tokens, good or bad, cost none)",
            ("algorithm",),
            r,
        )
        self.samplers: list[Callable[[], None]] = []  # run with the gauges, once a second
        self._verified_seen = 0
        self._buffers: tuple[BufferedCounter | BufferedHistogram, ...] = (
            self.auth_failures,
            self.verifications,
            self.tokens,
            self.duration,
            self.ttft,
            self.requests,
            self.overhead,
            self.attempts,
            self.attempt_duration,
            self.failovers,
            self.cost,
            self.refusals,
            self.cache_results,
            self.cache_saved,
            self.lane_wait,
            self.lane_shed_count,
            self.charged_requests,
            self.charged_tokens,
            self.suspicious,
        )
        self.usage: Usage | None = None

    def control_rejected(self, kind: str, reason: str) -> None:
        """One refused control value (gatekeeper.control.reporting.Rejections counts here)."""
        self.control_rejections.labels(kind, reason).inc()

    # ------------------------------------------------------------------ hot path

    def request_done(self, ex: Exchange, now: float | None = None) -> None:
        """One finished chat/embeddings request (from the auditor; ``now``: when it ended)."""
        if now is None:
            now = time.perf_counter()
        route, served, claims = ex.route, ex.served, ex.claims
        op = ex.endpoint
        spec = served or (route.model if route is not None else None)
        provider = spec.provider if spec is not None else ""
        model = spec.name if spec is not None else ""
        requested = ex.requested_model if route is not None else ""  # routed: a known name
        tenant = self._tenants(claims.tenant) if claims is not None else ""
        mode = route.mode if route is not None else ""
        self.requests.inc((op, str(ex.status), model, provider, mode, tenant))
        error = self._errors(ex.error_code) if ex.error_code else ""
        elapsed = now - ex.started
        self.duration.observe((op, provider, requested, model, error), elapsed)
        spent = ex.ttft_ms / 1000 if ex.ttft_ms is not None else elapsed
        upstream = sum(a.ms for a in ex.attempts) / 1000
        self.overhead.observe((op, "true" if ex.stream else "false"), max(0.0, spent - upstream))
        cost = 0.0
        if served is not None:
            labels = (op, provider, requested, model)
            if ex.ttft_ms is not None:
                self.ttft.observe(labels, ex.ttft_ms / 1000)
            usage = ex.usage
            if usage is not None:
                self.tokens.observe((*labels, "input"), usage.prompt_tokens)
                if op == "chat":
                    self.tokens.observe((*labels, "output"), usage.completion_tokens)
                cost = served.cost_usd(usage.prompt_tokens, usage.completion_tokens)
                self.cost.inc((provider, model, tenant), cost)
        if claims is not None:
            self.keys.seen(claims, cost)

    def refused(self, kind: str) -> None:
        """Admission refused a request (``rate`` or ``budget``): counted, never alerted."""
        self.refusals.inc((kind,))

    def charged(self, source: str, tokens: int, suspicious: bool) -> None:
        """A request's budget charge was decided (``usage_source``)."""
        self.charged_requests.inc((source,))
        self.charged_tokens.inc((source,), tokens)
        if suspicious:
            self.suspicious.inc((source,))

    def cache_result(self, result: str, saved_usd: float) -> None:
        """One request's result-cache outcome, and the upstream cost it saved."""
        self.cache_results.inc((result,))
        if saved_usd > 0:
            self.cache_saved.inc((), saved_usd)

    def lane_waited(self, lane: str, seconds: float) -> None:
        self.lane_wait.observe((lane,), seconds)

    def lane_shed(self, lane: str, reason: str) -> None:
        self.lane_shed_count.inc((lane, reason))

    def lane_depths(self, depths: Mapping[str, int]) -> None:
        for lane, depth in depths.items():
            self.lane_depth.labels(lane).set(depth)

    def provider_limits(self, limits: Mapping[str, int]) -> None:
        for provider, limit in limits.items():
            self.capacity_limit.labels(provider).set(limit)

    def auth_failed(self, reason: str) -> None:
        """The verifier refused a token (its ``on_failure`` hook)."""
        self.auth_failures.inc((reason,))

    def verifications_seen(self, total: int) -> None:
        """The verifier's running count of signature checks (sampled, not per request)."""
        if total > self._verified_seen:
            self.verifications.inc(("ed25519",), total - self._verified_seen)
            self._verified_seen = total

    def attempt_done(self, attempt: Attempt) -> None:
        if attempt.error == "breaker open":
            self.attempts.inc((attempt.provider, "skipped"))
            return
        outcome = "ok" if attempt.error is None else "error"
        self.attempts.inc((attempt.provider, outcome))
        self.attempt_duration.observe((attempt.provider, outcome), attempt.ms / 1000)

    def failover(self, failed: Attempt, next_model: ModelSpec) -> None:
        self.failovers.inc((failed.provider, next_model.provider))

    def breaker_changed(self, provider: str, state: str) -> None:
        self.breaker_state.labels(provider).set(BREAKER_STATES.get(state, 0))

    def pool_hook(self, inner: PoolHook) -> PoolHook:
        """The pool's hook: these metrics first, then ``inner`` (the event bus)."""
        return MeteredHook(self, inner)

    # ------------------------------------------------------------------ periodic

    def sample(self, breakers: Mapping[str, Breaker], spool: SpoolSource) -> None:
        for provider, breaker in breakers.items():
            self.breaker_state.labels(provider).set(BREAKER_STATES.get(breaker.state, 0))
        self.spool_depth.set(spool.spool_depth)
        for sampler in self.samplers:
            sampler()

    def flush(self) -> None:
        for buffer in self._buffers:
            buffer.flush()

    async def run(self, breakers: Mapping[str, Breaker], spool: SpoolSource) -> None:
        """Node task: sample the gauges and flush the buffers every second (and at the end)."""
        try:
            while True:
                self.sample(breakers, spool)
                self.flush()
                await asyncio.sleep(self.settings.flush_interval_s)
        finally:
            self.flush()

    # ------------------------------------------------------------------ exposition

    def track_budgets(self, usage: Usage) -> None:
        """Budgets come from the ledger: the dashboard's keys, and the opt-in gauges."""
        self.usage = usage
        if self.settings.budget_keys > 0:
            self.add_collector(BudgetCollector(self.keys, usage, self.settings.budget_keys))

    def add_collector(self, collector: Collector) -> None:
        self._extra.append(collector)
        if self._exposition is not None:
            self._exposition.register(collector)

    def exposition(self) -> CollectorRegistry:
        """What ``/metrics`` renders: this process, or every worker in multiprocess mode."""
        if self._exposition is None:
            if self.multiprocess_dir is None:
                registry = self.registry
            else:
                registry = CollectorRegistry()
                multiprocess.MultiProcessCollector(registry, self.multiprocess_dir)  # type: ignore[no-untyped-call]
            for collector in self._extra:
                registry.register(collector)
            self._exposition = registry
        return self._exposition

    def render(self) -> bytes:
        for sampler in self.samplers:
            sampler()
        self.flush()
        return generate_latest(self.exposition())

    def totals(self) -> dict[str, Any]:
        """Sums over the exposition (what /metrics says), for the dashboard."""
        for sampler in self.samplers:  # the lane depths as of now, as a scrape has them
            sampler()
        self.flush()
        return summarize(self.exposition().collect())

    def top_keys(self, n: int) -> list[KeyRow]:
        if self.usage is None:
            return []
        rows = self.keys.rows(self.usage)
        rows.sort(key=lambda r: (-r.spend_usd, -r.tokens, r.key_id))
        return rows[:n]


def summarize(families: Iterable[Metric]) -> dict[str, Any]:
    """Totals from collected metric families (pure)."""
    out: dict[str, Any] = {
        "requests": 0.0,
        "errors": 0.0,
        "failovers": 0.0,
        "tokens_input": 0.0,
        "tokens_output": 0.0,
        "cost_usd": 0.0,
        "audit_spool_depth": 0.0,
        "cache_saved_usd": 0.0,
        "breakers": {},
        "lane_depth": {},  # lane -> waiters
        "lane_shed": {},  # lane -> reason -> requests shed
        "cache_results": {},  # HIT | MISS | COALESCED | BYPASS -> requests
    }
    for family in families:
        for s in family.samples:
            if s.name == "gatekeeper_requests_total":
                out["requests"] += s.value
                if int(s.labels.get("status") or 0) >= 400:
                    out["errors"] += s.value
            elif s.name == "gatekeeper_failovers_total":
                out["failovers"] += s.value
            elif s.name == "gen_ai_client_token_usage_sum":
                out[f"tokens_{s.labels.get('gen_ai_token_type', 'input')}"] += s.value
            elif s.name == "gatekeeper_cost_usd_total":
                out["cost_usd"] += s.value
            elif s.name == "gatekeeper_audit_spool_depth":
                out["audit_spool_depth"] += s.value
            elif s.name == "gatekeeper_lane_queue_depth":
                _add(out["lane_depth"], s.labels.get("lane", ""), s.value)
            elif s.name == "gatekeeper_lane_shed_total":
                shed = out["lane_shed"].setdefault(s.labels.get("lane", ""), {})
                _add(shed, s.labels.get("reason", ""), s.value)
            elif s.name == "gatekeeper_cache_requests_total":
                _add(out["cache_results"], s.labels.get("result", ""), s.value)
            elif s.name == "gatekeeper_cache_saved_usd_total":
                out["cache_saved_usd"] += s.value
            elif s.name == "gatekeeper_breaker_state":
                provider = s.labels.get("provider", "")
                out["breakers"][provider] = max(out["breakers"].get(provider, 0), int(s.value))
    return out


def _add(into: dict[str, float], key: str, value: float) -> None:
    into[key] = into.get(key, 0.0) + value


class MeteredHook:
    """A ``PoolHook`` that records metrics, then hands on to another hook."""

    __slots__ = ("inner", "metrics")

    def __init__(self, metrics: Metrics, inner: PoolHook) -> None:
        self.metrics, self.inner = metrics, inner

    def attempt_done(self, attempt: Attempt) -> None:
        self.metrics.attempt_done(attempt)
        self.inner.attempt_done(attempt)

    def failover(self, request_id: str, failed: Attempt, next_model: ModelSpec) -> None:
        self.metrics.failover(failed, next_model)
        self.inner.failover(request_id, failed, next_model)

    def breaker_changed(self, provider: str, state: str) -> None:
        self.metrics.breaker_changed(provider, state)
        self.inner.breaker_changed(provider, state)


# ---------------------------------------------------------------------- workers


def prepare_multiprocess_dir(state_dir: str, host: str, port: int) -> str:
    """A fresh ``PROMETHEUS_MULTIPROC_DIR`` for a supervisor's workers (wiped at start).

    A directory the operator set in the environment is kept, but its ``*.db`` files
    (a previous run's values) are removed.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return str(path)
    safe = "".join(c if c.isalnum() else "_" for c in host)
    path = Path(state_dir).resolve() / "metrics" / f"{safe}-{port}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return str(path)


def worker_exited(pid: int, env: Mapping[str, str]) -> None:
    """Drop a dead worker's live gauges (its counters stay in the sums)."""
    path = env.get(MULTIPROC_ENV)
    if path:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]

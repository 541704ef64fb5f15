"""Metrics and dashboard logic, with no server: buffers, labels, totals, keys, health rows."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatekeeper.auth.claims import Budget, Claims
from gatekeeper.exchange import Exchange
from gatekeeper.observability.buffers import OTHER, BufferedCounter, BufferedHistogram, LabelLimit
from gatekeeper.observability.dashboard import bearer_ok, newest, provider_health
from gatekeeper.observability.keys import BudgetCollector, KeyTracker, key_row
from gatekeeper.observability.metrics import (
    Metrics,
    MetricsSettings,
    prepare_multiprocess_dir,
    summarize,
)
from gatekeeper.observability.panels import cache_panel, lanes_panel
from gatekeeper.providers.base import Usage
from gatekeeper.providers.failover import Attempt, Breaker
from gatekeeper.routing.decision import RouteDecision
from gatekeeper.routing.matrix import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
MINI = ModelSpec("gpt-4o-mini", "openai", "gpt-4o-mini", "chat", 0.001, 0.002, 128000, 4096)
SONNET = ModelSpec("claude", "anthropic", "claude", "chat", 0.003, 0.015, 200000, 4096)


def claims(sub: str = "key_a", tenant: str = "acme", budget: Budget | None = None) -> Claims:
    now = datetime.now(UTC)
    return Claims("iss", sub, "jti", now, now, now + timedelta(days=1), tenant, budget)


def exchange(**over: object) -> Exchange:
    ex = Exchange("req_1", time.perf_counter() - 0.5, "chat")
    ex.claims = claims()
    ex.requested_model = "auto"
    ex.route = RouteDecision(MINI, (MINI, SONNET), "cost", "cheapest")
    ex.served = MINI
    ex.attempts = (Attempt("openai", "gpt-4o-mini", 200, None, 400.0),)
    ex.usage = Usage(prompt_tokens=10, completion_tokens=20)
    for name, value in over.items():
        setattr(ex, name, value)
    return ex


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: bytes, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == name and want <= ls)


class TestBuffers:
    def test_buffered_histogram_renders_like_plain_observe(self) -> None:
        """Bulk-adding into the child's buckets gives the same exposition as observe()."""
        buckets = (0.01, 0.1, 1.0)
        plain_reg, buffered_reg = CollectorRegistry(), CollectorRegistry()
        plain = Histogram("h_seconds", "h", ["a"], buckets=buckets, registry=plain_reg)
        buffered = BufferedHistogram(
            Histogram("h_seconds", "h", ["a"], buckets=buckets, registry=buffered_reg), buckets
        )
        for v in (0.001, 0.01, 0.05, 0.1, 0.5, 3.0, 3.0):
            plain.labels("x").observe(v)
            buffered.observe(("x",), v)
        assert value(generate_latest(buffered_reg), "h_seconds_count") == 0  # until a flush
        buffered.flush()

        def strip(reg: CollectorRegistry) -> dict[object, float]:
            return {k: v for k, v in samples(generate_latest(reg)).items() if "created" not in k[0]}

        assert strip(buffered_reg) == strip(plain_reg)

    def test_buffered_counter_adds_up_between_flushes(self) -> None:
        reg = CollectorRegistry()
        c = BufferedCounter(Counter("c_total", "c", ["a"], registry=reg))
        c.inc(("x",))
        c.inc(("x",), 2)
        assert value(generate_latest(reg), "c_total") == 0
        c.flush()
        c.inc(("x",))
        c.flush()
        assert value(generate_latest(reg), "c_total", a="x") == 4

    def test_buffers_without_labels_flush_into_the_plain_instrument(self) -> None:
        """gatekeeper_cache_saved_usd_total has no labels: its flush must not call labels()."""
        reg = CollectorRegistry()
        c = BufferedCounter(Counter("saved_total", "s", [], registry=reg))
        h = BufferedHistogram(Histogram("h_seconds", "h", [], buckets=(1.0,), registry=reg), (1.0,))
        c.inc((), 0.25)
        c.inc((), 0.5)
        h.observe((), 0.5)
        c.flush()
        h.flush()
        assert value(generate_latest(reg), "saved_total") == 0.75
        assert value(generate_latest(reg), "h_seconds_count") == 1

    def test_a_cache_hit_saving_cost_renders(self) -> None:
        m = Metrics()
        m.cache_result("HIT", 0.125)
        assert value(m.render(), "gatekeeper_cache_saved_usd_total") == 0.125

    def test_label_limit_keeps_the_first_values(self) -> None:
        limit = LabelLimit(2)
        assert [limit(v) for v in ("a", "b", "c", "a", "d")] == ["a", "b", OTHER, "a", OTHER]


class TestRequestDone:
    def test_a_served_request_updates_every_family(self) -> None:
        """Counter, GenAI histograms, cost and overhead (elapsed minus attempts)."""
        m = Metrics()
        m.request_done(exchange())
        text = m.render()
        assert (
            value(
                text,
                "gatekeeper_requests_total",
                endpoint="chat",
                status="200",
                model="gpt-4o-mini",
                provider="openai",
                routing_mode="cost",
                tenant="acme",
            )
            == 1
        )
        genai = {
            "gen_ai_operation_name": "chat",
            "gen_ai_provider_name": "openai",
            "gen_ai_request_model": "auto",
            "gen_ai_response_model": "gpt-4o-mini",
        }
        token = "gen_ai_client_token_usage_sum"
        assert value(text, token, gen_ai_token_type="input", **genai) == 10
        assert value(text, token, gen_ai_token_type="output", **genai) == 20
        duration = "gen_ai_client_operation_duration_seconds_sum"
        assert value(text, duration, error_type="", **genai) == pytest.approx(0.5, abs=0.05)
        # 0.5 s in the gateway, 0.4 s of it upstream: ~0.1 s overhead.
        overhead = value(text, "gatekeeper_overhead_seconds_sum", endpoint="chat")
        assert overhead == pytest.approx(0.1, abs=0.05)
        assert value(text, "gatekeeper_cost_usd_total") == pytest.approx(0.00005)
        assert value(text, "gen_ai_server_time_to_first_token_seconds_count") == 0

    def test_a_stream_measures_ttft_and_overhead_until_its_headers(self) -> None:
        m = Metrics()
        m.request_done(exchange(stream=True, ttft_ms=450.0))
        text = m.render()
        assert value(text, "gen_ai_server_time_to_first_token_seconds_sum") == 0.45
        overhead = value(text, "gatekeeper_overhead_seconds_sum", stream="true")
        assert overhead == pytest.approx(0.05, abs=1e-6)

    def test_a_refused_request_has_no_model_labels(self) -> None:
        """An unrouted request (bad token, unknown model) never puts client text in labels."""
        m = Metrics()
        m.request_done(
            exchange(
                claims=None,
                route=None,
                served=None,
                attempts=(),
                usage=None,
                requested_model="made-up-model-name",
                status=401,
                error_code="invalid_api_key",
            )
        )
        text = m.render()
        assert b"made-up-model-name" not in text
        assert value(text, "gatekeeper_requests_total", status="401", model="", tenant="") == 1
        assert summarize(m.exposition().collect())["errors"] == 1

    def test_tenants_past_the_limit_share_one_label(self) -> None:
        m = Metrics(MetricsSettings(max_tenants=2))
        for tenant in ("a", "b", "c", "d"):
            m.request_done(exchange(claims=claims(sub=f"key_{tenant}", tenant=tenant)))
        text = m.render()
        assert value(text, "gatekeeper_requests_total", tenant=OTHER) == 2
        assert value(text, "gatekeeper_requests_total", tenant="a") == 1

    def test_settings_from_the_environment(self) -> None:
        env = {"GATEKEEPER_METRICS_MAX_TENANTS": "7", "GATEKEEPER_METRICS_BUDGET_KEYS": "x"}
        settings = MetricsSettings.from_env(env)
        assert (settings.max_tenants, settings.budget_keys) == (7, 0)


class TestPoolHook:
    class Inner:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def attempt_done(self, attempt: Attempt) -> None:
            self.calls.append("attempt")

        def failover(self, request_id: str, failed: Attempt, next_model: ModelSpec) -> None:
            self.calls.append("failover")

        def breaker_changed(self, provider: str, state: str) -> None:
            self.calls.append(f"breaker:{state}")

    def test_counts_then_hands_on(self) -> None:
        m, inner = Metrics(), self.Inner()
        hook = m.pool_hook(inner)
        failed = Attempt("openai", "gpt-4o-mini", 500, "upstream_error", 12.0)
        hook.attempt_done(failed)
        hook.failover("req_1", failed, SONNET)
        hook.attempt_done(Attempt("anthropic", "claude", None, "breaker open", 0.0))
        hook.breaker_changed("openai", "open")
        assert inner.calls == ["attempt", "failover", "attempt", "breaker:open"]
        text = m.render()
        assert value(text, "gatekeeper_failovers_total", to_provider="anthropic") == 1
        assert value(text, "gatekeeper_upstream_attempts_total", outcome="error") == 1
        assert value(text, "gatekeeper_upstream_attempts_total", outcome="skipped") == 1
        assert value(text, "gatekeeper_breaker_state", provider="openai") == 2

    def test_sample_reads_breakers_and_spool(self) -> None:
        class Spool:
            spool_depth = 3

        half = Breaker()
        half.state = "half_open"
        m = Metrics()
        m.sample({"openai": Breaker(), "anthropic": half}, Spool())
        totals = summarize(m.exposition().collect())
        assert totals["breakers"] == {"openai": 0, "anthropic": 1}
        assert totals["audit_spool_depth"] == 3


class TestCapacityPanels:
    def test_totals_carry_lane_queues_sheds_and_cache_outcomes(self) -> None:
        """What the dashboard's capacity panels read, summed from the exposition."""
        m = Metrics()
        depths = {"critical": 0, "standard": 2, "batch": 5}
        m.samplers.append(lambda: m.lane_depths(depths))
        m.lane_shed("batch", "lane_queue_full")
        m.lane_shed("batch", "lane_queue_full")
        m.lane_shed("batch", "shed_for_priority")
        m.lane_shed("standard", "queue_wait_exceeded")
        for result, saved in (("HIT", 0.25), ("HIT", 0.5), ("MISS", 0.0), ("COALESCED", 0.125)):
            m.cache_result(result, saved)
        m.cache_result("BYPASS", 0.0)
        totals = m.totals()  # runs the samplers: the depths as of now
        assert totals["lane_depth"] == {"critical": 0, "standard": 2, "batch": 5}
        assert totals["lane_shed"] == {
            "batch": {"lane_queue_full": 2, "shed_for_priority": 1},
            "standard": {"queue_wait_exceeded": 1},
        }
        assert totals["cache_results"] == {"HIT": 2, "MISS": 1, "COALESCED": 1, "BYPASS": 1}
        assert totals["cache_saved_usd"] == pytest.approx(0.875)
        depths["batch"] = 1
        assert m.totals()["lane_depth"]["batch"] == 1

    def test_lanes_panel_every_lane_and_reason_in_order(self) -> None:
        panel = lanes_panel(
            {"standard": 2.0, "batch": 5.0}, {"batch": {"lane_queue_full": 3.0}}, True
        )
        assert panel["enabled"] is True
        assert panel["reasons"] == [
            "lane_queue_full",
            "queue_full",
            "queue_wait_exceeded",
            "shed_for_priority",
        ]
        assert [(r["lane"], r["queued"]) for r in panel["lanes"]] == [
            ("critical", 0),
            ("standard", 2),
            ("batch", 5),
        ]
        assert panel["lanes"][2]["shed"] == dict.fromkeys(panel["reasons"], 0) | {
            "lane_queue_full": 3
        }
        assert lanes_panel({}, {}, False)["enabled"] is False

    def test_cache_panel_hit_ratio_and_saved_cost(self) -> None:
        panel = cache_panel({"HIT": 3.0, "MISS": 4.0, "COALESCED": 1.0, "BYPASS": 9.0}, 0.5, True)
        assert panel == {
            "enabled": True,
            "hit": 3,
            "miss": 4,
            "coalesced": 1,
            "bypass": 9,
            "hit_ratio": 0.375,  # 3 / (3 + 4 + 1): bypassed requests were never looked up
            "saved_usd": 0.5,
        }
        assert cache_panel({"BYPASS": 2.0}, 0.0, True)["hit_ratio"] == 0.0
        assert cache_panel({}, 0.0, False)["enabled"] is False


class TestKeys:
    def test_key_row_reads_budget_counters(self) -> None:
        counters = {
            "tok": {"used": 800, "in_flight": 0, "limit": 1000},
            "usd": {"used": 2_500_000, "in_flight": 0, "limit": 10_000_000},
            "preq": {"used": 4, "in_flight": 0, "limit": None},
        }
        row = key_row(claims(), counters, local_spend=99.0)
        assert row.budget == {"tokens": (800, 1000), "usd": (2.5, 10.0)}
        assert (row.requests, row.tokens, row.spend_usd) == (4, 800, 2.5)
        assert row.used_ratio == 0.8
        assert row.to_dict()["budget_used_pct"] == 80.0

    def test_without_usd_budget_spend_is_this_nodes(self) -> None:
        row = key_row(claims(), {"tok": {"used": 5, "limit": None}}, local_spend=0.25)
        assert row.spend_usd == 0.25 and row.budget == {} and row.used_ratio == 0.0

    def test_tracker_forgets_the_oldest_key(self) -> None:
        keys = KeyTracker(limit=2)
        for sub in ("a", "b", "a", "c"):
            keys.seen(claims(sub=sub), 1.0)
        assert list(keys.claims) == ["a", "c"]
        assert keys.spend == {"a": 2.0, "c": 1.0}

    def test_budget_collector_exports_the_top_n_by_used_ratio(self) -> None:
        keys = KeyTracker(limit=10)
        used = {"a": 100, "b": 900, "c": 500}
        for sub in used:
            keys.seen(claims(sub=sub, budget=Budget(1000, None, "month")), 0.0)

        def usage(c: Claims) -> dict[str, dict[str, int | None]]:
            return {"tok": {"used": used[c.sub], "limit": 1000}}

        reg = CollectorRegistry()
        reg.register(BudgetCollector(keys, usage, top=2))
        text = generate_latest(reg)
        assert value(text, "gatekeeper_budget_used_ratio", key_id="b") == 0.9
        assert value(text, "gatekeeper_budget_remaining", key_id="c", kind="tokens") == 500
        assert b'key_id="a"' not in text


class TestDashboardParts:
    def test_provider_health_merges_nodes_and_models(self) -> None:
        entries = [
            ("openai", {"m1": {"count": 10, "errors": 0, "p50_ms": 100, "p99_ms": 300}}),
            ("openai", {"m2": {"count": 10, "errors": 5, "p50_ms": 400, "p99_ms": 900}}),
            ("anthropic", {"m3": {"count": 2, "errors": 2, "p50_ms": 0, "p99_ms": 0}}),
        ]
        rows = provider_health(entries)
        assert rows["openai"] == {
            "count": 20,
            "errors": 5,
            "error_rate": 0.25,
            "p50_ms": 200.0,  # weighted by successes: (100*10 + 400*5) / 15
            "p99_ms": 900.0,
        }
        assert rows["anthropic"]["error_rate"] == 1.0

    def test_newest_first_and_bad_json_skipped(self) -> None:
        raw = [b'{"ts": 1, "a": 1}', b"not json", b'{"ts": 2, "a": 2, "b": 3}']
        assert newest(raw, ("ts", "a")) == [{"ts": 2, "a": 2}, {"ts": 1, "a": 1}]

    @pytest.mark.parametrize(
        ("header", "ok"),
        [("Bearer s3cret", True), ("bearer s3cret", True), ("Bearer nope", False), (None, False)],
    )
    def test_bearer(self, header: str | None, ok: bool) -> None:
        assert bearer_ok(header, "s3cret") is ok


class TestMultiprocess:
    WORKER = textwrap.dedent(
        """
        import sys, time
        from gatekeeper.observability.metrics import Metrics
        from tests.unit.test_metrics import exchange
        m = Metrics()
        for _ in range(int(sys.argv[1])):
            m.request_done(exchange())
        m.breaker_changed("openai", sys.argv[2])
        m.flush()
        """
    )
    RENDER = "from gatekeeper.observability.metrics import Metrics; import sys; "
    RENDER += "sys.stdout.buffer.write(Metrics().render())"

    def test_workers_values_add_up_in_any_process(self, tmp_path: Path) -> None:
        """Two 'workers' write; a third process renders the sum (and the worst breaker)."""
        directory = prepare_multiprocess_dir(str(tmp_path), "127.0.0.1", 1)
        env = {"PROMETHEUS_MULTIPROC_DIR": directory, "PATH": "/usr/bin:/bin"}

        def run(*args: str) -> bytes:
            done = subprocess.run(
                [sys.executable, "-c", *args], cwd=ROOT, env=env, capture_output=True, check=True
            )
            return done.stdout

        run(self.WORKER, "3", "closed")
        run(self.WORKER, "4", "open")
        text = run(self.RENDER)
        assert value(text, "gatekeeper_requests_total", status="200") == 7
        assert value(text, "gen_ai_client_token_usage_count", gen_ai_token_type="input") == 7
        assert value(text, "gatekeeper_breaker_state", provider="openai") == 2

    def test_the_directory_is_wiped_at_start(self, tmp_path: Path) -> None:
        directory = Path(prepare_multiprocess_dir(str(tmp_path), "::1", 9))
        (directory / "counter_1.db").write_bytes(b"x")
        assert list(Path(prepare_multiprocess_dir(str(tmp_path), "::1", 9)).iterdir()) == []


class TestDeployFiles:
    def test_alerts_and_grafana_name_only_metrics_that_exist(self) -> None:
        """deploy/ must follow the metric and label names the gateway exports."""
        m = Metrics(MetricsSettings(budget_keys=1))
        m.track_budgets(lambda c: {"tok": {"used": 1, "limit": 10}})
        m.request_done(
            exchange(stream=True, ttft_ms=100.0, claims=claims(budget=Budget(10, None, "day")))
        )
        failed = Attempt("openai", "gpt-4o-mini", 500, "upstream_error", 1.0)
        m.attempt_done(failed)
        m.failover(failed, SONNET)

        class Spool:
            spool_depth = 0

        m.sample({"openai": Breaker()}, Spool())
        known: set[str] = set()
        for family in text_string_to_metric_families(m.render().decode()):
            for s in family.samples:
                known.add(s.name)
                known.update(s.labels)
        for path in (
            ROOT / "deploy/prometheus/alerts.yml",
            ROOT / "deploy/grafana/gatekeeper.json",
        ):
            used = set(re.findall(r"\b(?:gen_ai|gatekeeper)_[a-z_]+", path.read_text()))
            assert used, path
            assert used <= known, (path.name, sorted(used - known))

"""Observability end to end: /metrics, the overhead header, secret-free logs, the dashboard.

The dashboard test drives the page in headless Chromium over the DevTools protocol
(a websocket; no selenium) and skips when no Chromium is installed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import ClientConnection, connect

from gatekeeper.auth.claims import CacheClaim
from tests.conftest import anthropic_provider, openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_anthropic import FakeAnthropic
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import ROOT, GatewayProcess, Issuer, chat_model, embedding_model

ADMIN = "adm1n-obs-s3cret-9f2c"
ANTHROPIC_KEY = "sk-ant-fake-upstream"
ARTIFACTS = ROOT / "test-artifacts"


def metric_sum(text: str, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and want <= set(s.labels.items())
    )


def scrape(gw: GatewayProcess, token: str | None = ADMIN) -> str:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with httpx.Client() as fresh:  # a new connection: any worker may answer
        reply = fresh.get(f"{gw.url}/metrics", headers=headers, timeout=5)
    assert reply.status_code == 200, reply.text
    return reply.text


def wait_for(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def chat(gw: GatewayProcess, token: str, **extra: Any) -> httpx.Response:
    with httpx.Client() as fresh:
        return fresh.post(
            f"{gw.base_url}/chat/completions",
            headers={"authorization": f"Bearer {token}", **extra.pop("headers", {})},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra},
            timeout=20,
        )


@pytest.fixture
def admin_gateway(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> GatewayProcess:
    return start_gateway(
        providers=[openai_provider("openai", fake_openai)],
        models=[
            chat_model("gpt-4o-mini", "openai"),
            embedding_model("text-embedding-3-small", "openai"),
        ],
        server={"admin_token": ADMIN},
        env={"GATEKEEPER_METRICS_BUDGET_KEYS": "5"},
    )


@pytest.fixture
def capacity_gateway(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI, tmp_path: Path
) -> GatewayProcess:
    """One slot, no batch queue, the result cache on: panels with something to show."""
    secret = tmp_path / "cache.secret"
    secret.write_bytes(b"k" * 32)
    secret.chmod(0o600)
    return start_gateway(
        providers=[openai_provider("openai", fake_openai)],
        models=[chat_model("gpt-4o-mini", "openai")],
        server={"admin_token": ADMIN},
        capacity={"max_in_flight": 1, "lanes": {"batch": {"queue": 0}}},
        cache={"enabled": True, "key_secret_file": str(secret)},
    )


@contextlib.contextmanager
def queued_and_shed(gw: GatewayProcess, issuer: Issuer, fake: FakeOpenAI) -> Iterator[list[str]]:
    """A cache MISS and HIT, then, while yielded, the slot held, one standard request
    queued and one batch request shed (429 lane_queue_full). Yields the cache states."""
    cached = issuer.token(cache=CacheClaim(ttl_s=60))
    states = [chat(gw, cached, temperature=0).headers["x-gatekeeper-cache"] for _ in range(2)]
    hold = threading.Event()
    fake.script.default = Behavior(hold=hold)
    standard = issuer.token()
    with ThreadPoolExecutor(2) as pool:
        try:
            running = pool.submit(chat, gw, standard)
            wait_for(lambda: len(fake.script.requests) == 2, what="the slot taken")
            waiting = pool.submit(chat, gw, standard)
            wait_for(
                lambda: metric_sum(scrape(gw), "gatekeeper_lane_queue_depth") == 1,
                what="one request queued",
            )
            shed = chat(gw, issuer.token(priority="batch"))
            assert shed.status_code == 429
            assert shed.json()["error"]["code"] == "lane_queue_full"
            yield states
        finally:
            hold.set()
        assert running.result().status_code == waiting.result().status_code == 200


class TestMetricsEndpoint:
    def test_requests_tokens_and_latency_in_genai_names(
        self, admin_gateway: GatewayProcess, issuer: Issuer
    ) -> None:
        """Chat, a stream and embeddings through the SDK all show up, with GenAI labels."""
        client = openai.OpenAI(
            base_url=admin_gateway.base_url, api_key=issuer.token(), max_retries=0
        )
        msgs: Any = [{"role": "user", "content": "hi"}]
        client.chat.completions.create(model="gpt-4o-mini", messages=msgs)
        client.chat.completions.create(model="gpt-4o-mini", messages=msgs)
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True):
            pass
        client.embeddings.create(model="text-embedding-3-small", input="hello")
        wait_for(
            lambda: metric_sum(scrape(admin_gateway), "gatekeeper_requests_total") == 4,
            what="4 requests in /metrics",
        )
        text = scrape(admin_gateway)
        assert metric_sum(text, "gatekeeper_requests_total", endpoint="chat", status="200") == 3
        genai = {"gen_ai_provider_name": "openai", "gen_ai_response_model": "gpt-4o-mini"}
        tokens = "gen_ai_client_token_usage_count"
        assert metric_sum(text, tokens, gen_ai_token_type="output", **genai) == 3
        assert metric_sum(text, tokens, gen_ai_operation_name="embeddings") == 1
        assert metric_sum(text, "gen_ai_server_time_to_first_token_seconds_count") == 1
        assert metric_sum(text, "gen_ai_client_operation_duration_seconds_count") == 4
        assert metric_sum(text, "gatekeeper_overhead_seconds_count") == 4
        assert metric_sum(text, "gatekeeper_breaker_state", provider="openai") == 0
        assert "gatekeeper_audit_spool_depth" in text
        # GATEKEEPER_METRICS_BUDGET_KEYS=5: keys with a budget would appear; this one has none.
        assert metric_sum(text, "gatekeeper_budget_remaining") == 0

    def test_budget_gauges_are_opt_in_top_n(
        self, admin_gateway: GatewayProcess, issuer: Issuer
    ) -> None:
        token = issuer.token(budget_tokens=100_000)
        assert chat(admin_gateway, token, max_tokens=50).status_code == 200
        wait_for(
            lambda: metric_sum(scrape(admin_gateway), "gatekeeper_budget_used_ratio") > 0,
            what="budget gauge",
        )
        text = scrape(admin_gateway)
        assert 0 < metric_sum(text, "gatekeeper_budget_remaining", kind="tokens") < 100_000

    def test_with_an_admin_token_metrics_needs_it(self, admin_gateway: GatewayProcess) -> None:
        for headers in ({}, {"authorization": "Bearer wrong"}):
            reply = httpx.get(f"{admin_gateway.url}/metrics", headers=headers)
            assert reply.status_code == 401
            assert reply.json()["error"]["code"] == "invalid_api_key"
        # The query parameter is for the dashboard's browser only, not for scrapers.
        assert httpx.get(f"{admin_gateway.url}/metrics?token={ADMIN}").status_code == 401

    def test_without_admin_token_metrics_is_open_and_dashboard_off(
        self, gateway: GatewayProcess
    ) -> None:
        assert "gatekeeper_breaker_state" in scrape(gateway, token=None)
        reply = httpx.get(f"{gateway.url}/dashboard?token=anything")
        assert reply.status_code == 404
        assert reply.json()["error"]["code"] == "dashboard_disabled"


class TestOverheadHeader:
    def test_json_and_stream_responses_carry_it(
        self, admin_gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """Overhead = time in the gateway minus upstream time; never more than the total."""
        fake_openai.script.push(Behavior(first_byte_delay=0.3), Behavior(first_byte_delay=0.3))
        token = issuer.token()
        for stream in (False, True):
            started = time.perf_counter()
            reply = chat(admin_gateway, token, stream=stream)
            total_ms = (time.perf_counter() - started) * 1000
            assert reply.status_code == 200
            overhead = float(reply.headers["x-gatekeeper-overhead-ms"])
            assert 0 <= overhead < total_ms - 250  # the 300 ms upstream wait is not overhead

    def test_errors_carry_it_too(self, admin_gateway: GatewayProcess) -> None:
        reply = chat(admin_gateway, "not-a-token")
        assert reply.status_code == 401
        assert float(reply.headers["x-gatekeeper-overhead-ms"]) >= 0


@pytest.mark.slow
class TestWorkers:
    def test_any_worker_renders_every_workers_counts(
        self, start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI, issuer: Issuer
    ) -> None:
        """--workers 2: requests served by both workers add up in one exposition."""
        gw = start_gateway(
            providers=[openai_provider("openai", fake_openai)],
            models=[chat_model("gpt-4o-mini", "openai")],
            workers=2,
            server={"admin_token": ADMIN},
        )
        token = issuer.token()
        sent = 0
        nodes: set[str] = set()
        while len(nodes) < 2 and sent < 60:
            reply = chat(gw, token, headers={"x-request-id": f"mp-{sent}"})
            assert reply.status_code == 200
            sent += 1
            if sent % 10 == 0:
                nodes = {r["node_id"] for r in dashboard_snapshot(gw)["routes"]}
        assert len(nodes) == 2, "both workers should have served requests"
        for _ in range(4):  # whichever worker answers, the sum is the same
            wait_for(
                lambda: metric_sum(scrape(gw), "gatekeeper_requests_total") == sent,
                what=f"{sent} requests",
            )


def dashboard_snapshot(gw: GatewayProcess) -> dict[str, Any]:
    """The last snapshot of a short SSE read (history from BH_EVENTS is loaded by then)."""
    with httpx.stream("GET", f"{gw.url}/dashboard/events?token={ADMIN}", timeout=10) as s:
        assert s.status_code == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        seen = 0
        for line in s.iter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen == 2:
                    snap: dict[str, Any] = json.loads(line[6:])
                    return snap
    raise AssertionError("no snapshot")


class TestDashboardAccess:
    def test_needs_the_admin_token(self, admin_gateway: GatewayProcess) -> None:
        for path in ("/dashboard", "/dashboard?token=wrong", "/dashboard/events"):
            reply = httpx.get(admin_gateway.url + path)
            assert reply.status_code == 401, path
            assert reply.json()["error"]["type"] == "invalid_request_error"
        page = httpx.get(
            f"{admin_gateway.url}/dashboard", headers={"authorization": f"Bearer {ADMIN}"}
        )
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert page.headers["referrer-policy"] == "no-referrer"
        assert httpx.get(f"{admin_gateway.url}/dashboard/static/dashboard.js").status_code == 200
        assert httpx.get(f"{admin_gateway.url}/dashboard/static/../app.py").status_code == 404

    def test_events_stream_snapshots_with_recent_routes(
        self, admin_gateway: GatewayProcess, issuer: Issuer
    ) -> None:
        assert chat(admin_gateway, issuer.token(), headers={"x-request-id": "dash-1"}).is_success
        snap = dashboard_snapshot(admin_gateway)
        assert snap["totals"]["requests"] == 1
        assert [r["request_id"] for r in snap["routes"]] == ["dash-1"]
        assert snap["providers"][0]["provider"] == "openai"
        assert snap["keys"][0]["tenant"] == "acme"


class TestCapacityPanels:
    def test_snapshot_has_lane_queues_sheds_and_cache_ratio(
        self, capacity_gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """The panels' JSON: what is queued now, what was shed, the cache's hits and savings."""
        with queued_and_shed(capacity_gateway, issuer, fake_openai) as states:
            assert states == ["MISS", "HIT"]
            snap = dashboard_snapshot(capacity_gateway)
        lanes = {row["lane"]: row for row in snap["lanes"]["lanes"]}
        assert snap["lanes"]["enabled"] is True
        assert [lanes[n]["queued"] for n in ("critical", "standard", "batch")] == [0, 1, 0]
        assert lanes["batch"]["shed"]["lane_queue_full"] == 1
        assert sum(sum(row["shed"].values()) for row in lanes.values()) == 1
        cache = snap["cache"]
        assert cache["enabled"] is True
        assert (cache["hit"], cache["miss"], cache["coalesced"]) == (1, 1, 0)
        assert cache["bypass"] == 1  # the running request (no policy); queued and shed: not yet
        assert cache["hit_ratio"] == 0.5
        assert cache["saved_usd"] == pytest.approx(7 * 0.001 / 1000 + 5 * 0.002 / 1000)
        text = scrape(capacity_gateway)  # the same numbers as /metrics
        assert metric_sum(text, "gatekeeper_cache_saved_usd_total") == cache["saved_usd"]
        assert metric_sum(text, "gatekeeper_lane_shed_total", lane="batch") == 1

    def test_with_lanes_and_cache_off_the_panels_say_so(
        self, admin_gateway: GatewayProcess, issuer: Issuer
    ) -> None:
        assert chat(admin_gateway, issuer.token()).is_success
        snap = dashboard_snapshot(admin_gateway)
        assert snap["lanes"]["enabled"] is False and snap["cache"]["enabled"] is False
        assert all(row["queued"] == 0 for row in snap["lanes"]["lanes"])
        assert snap["cache"]["hit"] == snap["cache"]["miss"] == 0


# ---------------------------------------------------------------------- logs


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=ANTHROPIC_KEY) as fake:
        yield fake


class TestLogs:
    def test_no_token_or_provider_key_reaches_the_log(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
        issuer: Issuer,
    ) -> None:
        """A session with failovers and upstream errors that echo secrets, at debug level."""
        gw = start_gateway(
            providers=[
                openai_provider("openai", fake_openai),
                anthropic_provider(
                    "anthropic",
                    fake_anthropic,
                    timeouts={"connect_s": 2, "first_byte_s": 2, "total_s": 30},
                ),
            ],
            models=[
                chat_model("gpt-4o-mini", "openai"),
                chat_model("claude-3-5-sonnet", "anthropic", upstream="claude-3-5-sonnet-x"),
            ],
            server={"admin_token": ADMIN},
            env={"GATEKEEPER_LOG_LEVEL": "debug"},
        )
        token = issuer.token(budget_tokens=1_000_000)
        echo = f"bad key {fake_openai.api_key} / {ANTHROPIC_KEY} for Bearer {token}"
        assert chat(gw, token).status_code == 200
        # openai fails (echoing the secrets) → failover to anthropic.
        fake_openai.script.push(Behavior(status=500, error_message=echo))
        assert chat(gw, token).status_code == 200
        # Both fail, echoing the secrets: the final error is a logged 5xx.
        fake_openai.script.push(Behavior(status=503, error_message=echo))
        fake_anthropic.script.push(Behavior(status=500, error_message=echo))
        failed = chat(gw, token, headers={"x-request-id": "logs-failed-1"})
        assert failed.status_code >= 500
        fake_openai.script.push(Behavior(status=401, error_message=echo))
        chat(gw, token)
        assert chat(gw, token, stream=True).status_code == 200
        assert chat(gw, "v4.public.bm90LWEtcmVhbC10b2tlbi1hdC1hbGw").status_code == 401
        httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {ADMIN}"})
        httpx.get(f"{gw.url}/dashboard?token={ADMIN}")
        httpx.get(f"{gw.url}/dashboard?token=wrong-{ADMIN}")
        assert gw.terminate(30) == 0

        log = gw.logs()
        for secret in (token, ADMIN, fake_openai.api_key, ANTHROPIC_KEY, token[10:40]):
            assert secret not in log, f"a secret leaked into the log: {secret[:12]}…"
        assert "[REDACTED]" in log  # the echoed secrets did reach a log line, masked
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert any(line["event"] == "node.started" for line in lines)
        failed_lines = [line for line in lines if line.get("request_id") == "logs-failed-1"]
        assert failed_lines, "the failed request's log line carries its request id"
        assert all(line["level"] in ("debug", "info", "warning", "error") for line in lines)


# ---------------------------------------------------------------------- the browser


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium process with DevTools on a loopback port (fresh profile)."""

    def __init__(self, binary: str, profile: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        self.log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1500",
                "about:blank",
            ],
            stdout=self.log,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
        )
        active = profile / "DevToolsActivePort"
        wait_for(lambda: active.exists() and active.read_text().count("\n") >= 1, 30, "DevTools")
        port = int(active.read_text().splitlines()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
        self.page_url: str = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


class Browser:
    """One page, driven over the DevTools protocol's websocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return reply["result"].get("value")

    def number(self, element_id: str) -> float:
        raw = self.evaluate(f"document.getElementById('{element_id}').dataset.value || ''")
        return float(raw) if raw else -1.0

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        )


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    binary = chromium()
    if binary is None:
        if os.environ.get("GATEKEEPER_REQUIRE_BROWSER"):  # .ci/run sets it once Chromium is in
            pytest.fail("GATEKEEPER_REQUIRE_BROWSER is set but no Chromium was found")
        pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it")
    process = Chromium(binary, tmp_path / "chromium-profile")
    try:
        with connect(process.page_url, max_size=None) as ws:
            yield Browser(ws)
    finally:
        process.close()


@pytest.mark.slow
class TestDashboardInBrowser:
    def test_numbers_move_with_traffic_and_match_metrics(
        self,
        admin_gateway: GatewayProcess,
        browser: Browser,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
    ) -> None:
        """The page goes live, counts requests as they flow, and ends equal to /metrics."""
        fake_openai.script.default = Behavior(first_byte_delay=0.02)
        browser.call("Page.navigate", url=f"{admin_gateway.url}/dashboard?token={ADMIN}")
        wait_for(
            lambda: browser.evaluate("document.getElementById('status')?.textContent") == "live",
            20,
            "the page to go live",
        )
        assert browser.number("requests-total") == 0

        token, sent, stop = issuer.token(budget_usd=100.0), [0], threading.Event()

        def traffic() -> None:
            with httpx.Client() as client:
                while not stop.is_set():
                    client.post(
                        f"{admin_gateway.base_url}/chat/completions",
                        headers={"authorization": f"Bearer {token}"},
                        json={
                            "model": "gpt-4o-mini",
                            "messages": [{"role": "user", "content": "x"}],
                        },
                        timeout=20,
                    )
                    sent[0] += 1
                    time.sleep(0.05)

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            wait_for(lambda: browser.number("requests-total") > 0, 10, "a first count")
            first = browser.number("requests-total")
            wait_for(lambda: browser.number("requests-total") > first + 5, 10, "the count moving")
            wait_for(lambda: browser.number("rps") > 0, 10, "requests per second")
            rows = "document.querySelectorAll('#routes tbody tr:not(.empty)').length"
            wait_for(lambda: browser.evaluate(rows) > 0, 10, "routing decisions")
            provider = "document.querySelector('#providers tbody tr')?.dataset.provider"
            assert browser.evaluate(provider) == "openai"
            keys = "document.querySelector('#keys tbody tr td')?.textContent"
            assert browser.evaluate(keys).startswith("key_")
        finally:
            stop.set()
            worker.join(30)
        total = sent[0]
        wait_for(lambda: browser.number("requests-total") == total, 10, f"the page to show {total}")
        assert metric_sum(scrape(admin_gateway), "gatekeeper_requests_total") == total
        browser.screenshot(ARTIFACTS / "dashboard.png")

    def test_lane_and_cache_panels_show_queues_sheds_and_hits(
        self,
        capacity_gateway: GatewayProcess,
        browser: Browser,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
    ) -> None:
        """The lanes table shows what is queued and shed; the cache cards its hit ratio."""
        browser.call("Page.navigate", url=f"{capacity_gateway.url}/dashboard?token={ADMIN}")
        wait_for(
            lambda: browser.evaluate("document.getElementById('status')?.textContent") == "live",
            20,
            "the page to go live",
        )
        assert browser.evaluate("document.querySelectorAll('#lanes tbody tr[data-lane]').length")
        assert browser.number("cache-hit-ratio") == 0

        def lane(name: str, key: str) -> float:
            raw = browser.evaluate(
                f'document.querySelector(\'#lanes tr[data-lane="{name}"] '
                f"td[data-key=\"{key}\"]')?.dataset.value || ''"
            )
            return float(raw) if raw else -1.0

        with queued_and_shed(capacity_gateway, issuer, fake_openai):
            wait_for(lambda: lane("standard", "queued") == 1, 10, "a standard request queued")
            wait_for(lambda: lane("batch", "lane_queue_full") == 1, 10, "a batch request shed")
            assert lane("batch", "shed") == 1 and lane("critical", "queued") == 0
            wait_for(lambda: browser.number("cache-hit-ratio") == 0.5, 10, "one hit in two")
            assert browser.evaluate("document.getElementById('cache-hit-ratio').textContent") == (
                "50.0 %"
            )
            assert browser.number("cache-saved") > 0
            browser.screenshot(ARTIFACTS / "dashboard-capacity.png")
        wait_for(lambda: lane("standard", "queued") == 0, 10, "the queue drained")
        assert lane("batch", "lane_queue_full") == 1  # a count, not a gauge

"""``python -m bench.chaos`` (``make chaos``): real processes, real faults, checked invariants.

    .venv/bin/python -m bench.chaos                 every scenario, full length
    .venv/bin/python -m bench.chaos --fast          short versions (under a minute in all)
    .venv/bin/python -m bench.chaos --only a,c      some scenarios

Each scenario starts its own nats-server(s), fake upstream(s) (``tests.harness``) and
``gatekeeper serve`` processes on 127.0.0.1, injects one fault under load, checks an
invariant and prints ``PASS``/``FAIL`` with its figures. Every load is bounded in
requests and seconds (no scenario runs past ``SCENARIO_S``). Exit status 1 if any
scenario failed. The fast CI versions of a, b and g are pytest integration tests
(``tests/integration/test_audit_durability.py``, ``test_streams.py``); this harness
adds measurements and the provider-side faults. See docs/chaos-soak.md.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gatekeeper.bus.embedded import EmbeddedNats, free_port
from tests.conftest import openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, base_config, chat_model
from tests.integration.test_audit_durability import (
    MODEL,
    Load,
    assert_one_record_each,
    records,
    wait_spool_empty,
)
from tests.integration.test_streams import audit_leader, wait_for_jetstream

SCENARIO_S = 60.0  # hard ceiling per scenario (client deadlines are shorter)
FIRST_BYTE_S = 1.0  # first_byte_s of the stalling provider in scenario c


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    passed: bool
    figures: str
    seconds: float


class Rig:
    """Processes for one scenario; everything is stopped when the ``with`` block ends."""

    def __init__(self, tmp: Path, issuer: Issuer) -> None:
        self.tmp, self.issuer = tmp, issuer
        self.stack = contextlib.ExitStack()
        self.n = 0

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def nats(self, **cluster: Any) -> EmbeddedNats:
        self.n += 1
        server = EmbeddedNats(self.tmp / f"nats{self.n}", name=f"chaos-{self.n}", **cluster)
        self.stack.callback(server.stop)
        server.start()
        return server

    def cluster(self) -> list[EmbeddedNats]:
        ports = [free_port() for _ in range(3)]
        routes = [f"nats://127.0.0.1:{p}" for p in ports]
        password = secrets.token_urlsafe(24)  # one client password for the cluster
        servers = [
            self.nats(cluster_name="gk-chaos", cluster_port=p, routes=routes, password=password)
            for p in ports
        ]
        wait_for_jetstream(servers)
        return servers

    def fake(self, default: Behavior | None = None) -> FakeOpenAI:
        fake = FakeOpenAI(default).start()
        self.stack.callback(fake.stop)
        return fake

    def gateway(
        self,
        fakes: list[FakeOpenAI],
        nats_url: str,
        env: dict[str, str] | None = None,
        first_byte_s: float = 5.0,
        **extra: Any,
    ) -> GatewayProcess:
        """Provider ``p0`` (model MODEL) first in the chain, then ``p1`` (model ``backup``)…"""
        self.n += 1
        timeouts = {"connect_s": 2, "first_byte_s": first_byte_s, "total_s": 30}
        providers = [
            openai_provider(f"p{i}", fake, timeouts=timeouts) for i, fake in enumerate(fakes)
        ]
        models = [chat_model(MODEL if i == 0 else f"backup{i}", f"p{i}") for i in range(len(fakes))]
        cfg = base_config(providers, models, self.issuer, self.tmp / f"state{self.n}", **extra)
        gw = GatewayProcess(cfg, self.tmp / f"gw{self.n}", nats_url, env=env or {})
        self.stack.callback(gw.stop)
        gw.start(timeout=30)
        return gw


# ---------------------------------------------------------------------- helpers


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def established(port: int) -> int:
    """ESTABLISHED TCP sockets on 127.0.0.1 with ``port`` at either end (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        ports = {int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)}
        if fields[3] == "01" and port in ports:
            count += 1
    return count


@dataclass(frozen=True, slots=True)
class Reply:
    status: int | None
    seconds: float
    provider: str | None
    body: bytes


def burst(
    gw: GatewayProcess, token: str, n: int, clients: int, deadline_s: float, **body: Any
) -> list[Reply]:
    """``n`` chat requests from ``clients`` threads, each bounded by ``deadline_s``."""
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body}
    headers = {"authorization": f"Bearer {token}"}
    local = threading.local()
    opened: list[httpx.Client] = []

    def one(_: int) -> Reply:
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=httpx.Timeout(deadline_s, connect=2))
            opened.append(local.http)
        started = time.monotonic()
        try:
            r = local.http.post(f"{gw.base_url}/chat/completions", json=payload, headers=headers)
        except httpx.HTTPError:
            return Reply(None, time.monotonic() - started, None, b"")
        seconds = time.monotonic() - started
        return Reply(r.status_code, seconds, r.headers.get("x-gatekeeper-provider"), r.content)

    with ThreadPoolExecutor(clients) as pool:
        replies = list(pool.map(one, range(n)))
    for http in opened:
        http.close()
    return replies


def latency(replies: list[Reply]) -> str:
    ms = [r.seconds * 1000 for r in replies]
    return f"p50 {pct(ms, 50):.0f} ms, p99 {pct(ms, 99):.0f} ms, max {max(ms):.0f} ms"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


# ---------------------------------------------------------------------- scenarios


def nats_killed(rig: Rig, fast: bool) -> str:
    """a. nats-server SIGKILLed mid-load, restarted: one BH_AUDIT record per 200."""
    nats = rig.nats()
    gw = rig.gateway([rig.fake(Behavior(first_byte_delay=0.005))], nats.url)
    before, down = (1.5, 1.5) if fast else (5.0, 5.0)
    with Load(gw, rig.issuer.token()) as load:
        time.sleep(before)
        nats.kill()
        during = len(load.seen)
        time.sleep(down)
        served_down = [s for s in load.seen[during:] if s.status == 200]
        nats.start()
        restarted = time.monotonic()
        reconnect = _until(lambda: _ready(gw)["nats"] == "connected", 20)
        drain = wait_spool_empty(gw, timeout=30)
        recovered = time.monotonic() - restarted
        time.sleep(before)
    ok = load.completed_ok()
    recs = records(nats.url)
    check(len(ok) > 20, f"only {len(ok)} complete 200s")
    assert_one_record_each(ok, recs)
    check(recovered < 15, f"recovery took {recovered:.1f}s (bar 15 s)")
    return (
        f"{len(load.seen)} requests, {len(ok)} complete 200s, {len(recs)} records, "
        f"{len(served_down)} 200s while NATS was down {down:.1f}s; reconnected "
        f"{reconnect:.2f}s after restart, spool ({drain.depth}) empty {recovered:.2f}s after"
    )


def gateway_killed(rig: Rig, fast: bool) -> str:
    """b. a gateway SIGKILLed mid-load, restarted with the same node id: no record lost."""
    nats = rig.nats()
    env = {"GATEKEEPER_NODE_ID": "gk-chaos"}
    gw = rig.gateway([rig.fake(Behavior(first_byte_delay=0.005))], nats.url, env=env)
    before = 1.5 if fast else 5.0
    with Load(gw, rig.issuer.token()) as load:
        time.sleep(before)
        gw.kill()
        started = time.monotonic()
        gw.start(timeout=30)
        ready_s = time.monotonic() - started
        time.sleep(before)
    wait_spool_empty(gw)
    ok = load.completed_ok()
    recs = records(nats.url)
    check(len(ok) > 20, f"only {len(ok)} complete 200s")
    assert_one_record_each(ok, recs)
    check({r["node_id"] for r in recs} == {"gk-chaos-w0"}, "records from another node id")
    seqs = [r["seq"] for r in recs]
    check(seqs == list(range(1, len(recs) + 1)), "the node's chain has a gap or restarts")
    refused = sum(s.status is None for s in load.seen)
    return (
        f"{len(load.seen)} requests, {len(ok)} complete 200s, {len(recs)} records, chain seq "
        f"1..{seqs[-1]} unbroken; restart-to-ready {ready_s:.2f}s; {refused} refused while down"
    )


def provider_stalls(rig: Rig, fast: bool) -> str:
    """c. p0 stalls past first_byte_s: requests fail over to p1; none hangs."""
    nats = rig.nats()
    stall = rig.fake(Behavior(first_byte_delay=FIRST_BYTE_S + 3))
    good = rig.fake()
    gw = rig.gateway([stall, good], nats.url, first_byte_s=FIRST_BYTE_S)
    n, clients, deadline = (40, 8, FIRST_BYTE_S + 5) if fast else (200, 16, FIRST_BYTE_S + 5)
    replies = burst(gw, rig.issuer.token(), n, clients, deadline)
    time.sleep(0.5)
    left_open = established(gw.port)
    statuses = {r.status for r in replies}
    via = sum(r.provider == "p1" for r in replies)
    check(statuses == {200}, f"statuses {statuses}")
    check(via == n, f"only {via} of {n} served by p1")
    check(max(r.seconds for r in replies) < deadline, "a request ran into the client deadline")
    check(left_open == 0, f"{left_open} client connections still open at the gateway")
    reached = len(stall.script.requests)
    return (
        f"{n} requests ({clients} clients): all 200 via p1, {latency(replies)}; "
        f"{reached} reached the stalled p0 (the breaker cuts the rest); "
        f"{left_open} client connections open afterwards"
    )


def rate_limit_storm(rig: Rig, fast: bool) -> str:
    """d. p0 answers 429 with Retry-After to everything: no 5xx while p1 is healthy."""
    nats = rig.nats()
    storm = rig.fake(Behavior(status=429, retry_after=1, error_message="slow down"))
    good = rig.fake()
    gw = rig.gateway([storm, good], nats.url)
    n, clients = (100, 8) if fast else (1000, 16)
    replies = burst(gw, rig.issuer.token(), n, clients, 15.0)
    statuses = [r.status for r in replies]
    bad = [s for s in statuses if s is None or s >= 500]
    check(not bad, f"{len(bad)} 5xx or dropped: {sorted(set(map(str, bad)))}")
    check(set(statuses) == {200}, f"statuses {set(statuses)}")
    reached = len(storm.script.requests)
    return (
        f"{n} requests ({clients} clients): all 200, {latency(replies)}; "
        f"{reached} reached the 429ing p0, {sum(r.provider == 'p1' for r in replies)} served by p1"
    )


def streams_cut(rig: Rig, fast: bool) -> str:
    """e. the only provider cuts every stream after 2 chunks: an SSE error, no [DONE], no hang."""
    nats = rig.nats()
    cut = rig.fake(Behavior(chunks=6, cut_after_chunks=2, chunk_delay=0.01))
    gw = rig.gateway([cut], nats.url)
    n, clients = (30, 6) if fast else (300, 16)
    deadline = 10.0
    replies = burst(gw, rig.issuer.token(), n, clients, deadline, stream=True)
    done = [r for r in replies if r.body.rstrip().endswith(b"data: [DONE]")]
    errored = [r for r in replies if r.status == 200 and b'data: {"error"' in r.body]
    refused = [r for r in replies if r.status is not None and r.status >= 500]
    hung = [r for r in replies if r.status is None]
    check(not done, f"{len(done)} streams ended in a silent [DONE]")
    check(not hung, f"{len(hung)} requests hung or were dropped")
    check(len(errored) + len(refused) == n, f"{n - len(errored) - len(refused)} without an error")
    return (
        f"{n} streams: {len(errored)} ended with an SSE error event, {len(refused)} refused "
        f"with 5xx before streaming, 0 [DONE], 0 hung; {latency(replies)}"
    )


BUDGET_BODY = {"max_tokens": 20, "messages": [{"role": "user", "content": "hello there"}]}
COST = 30  # tokens reserved == used per request (see tests/integration/test_budget_cluster.py)
CLIENTS = 4


def budget_partition(rig: Rig, fast: bool) -> str:
    """f. 2 nodes, one token budget, nats-server killed mid-run: overspend within the bound."""
    nats = rig.nats()
    fake = rig.fake(Behavior(prompt_tokens=10, completion_tokens=20, first_byte_delay=0.01))
    nodes = [rig.gateway([fake], nats.url) for _ in range(2)]
    limit = (100 if fast else 400) * COST
    token = rig.issuer.token(budget_tokens=limit, budget_period="total")
    admitted: list[int] = [0, 0]
    statuses: set[int | None] = set()
    refused: set[int] = set()
    lock = threading.Lock()
    stop_at = time.monotonic() + 40
    killed_at_spent: list[int] = []

    def client(first: int) -> None:
        k = first
        with httpx.Client(timeout=10, headers={"authorization": f"Bearer {token}"}) as http:
            while time.monotonic() < stop_at and len(refused) < len(nodes):
                node, k = k % 2, k + 1
                try:
                    r = http.post(
                        f"{nodes[node].base_url}/chat/completions",
                        json={"model": MODEL, **BUDGET_BODY},
                    )
                    status: int | None = r.status_code
                except httpx.HTTPError:
                    status = None
                with lock:
                    statuses.add(status)
                    if status == 200:
                        admitted[node] += 1
                    elif status == 429:
                        refused.add(node)
                    if not killed_at_spent and sum(admitted) * COST >= limit // 3:
                        nats.kill()
                        killed_at_spent.append(sum(admitted) * COST)

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    nats.start()
    spent = COST * sum(admitted)
    views, converged = usage_views(nodes, token, spent, timeout=10)
    left = limit - killed_at_spent[0] if killed_at_spent else limit
    # docs/budget.md, partition case: each other node may spend what was left, plus the
    # requests in flight when NATS died (admitted, not yet counted by the clients).
    bound = (len(nodes) - 1) * left + CLIENTS * COST
    check(bool(killed_at_spent), "NATS was never killed (too few admissions)")
    check(refused == {0, 1}, f"nodes {sorted({0, 1} - refused)} never refused within 40 s")
    check(statuses <= {200, 429}, f"statuses {statuses}")
    check(spent <= limit + bound, f"spent {spent} > limit {limit} + bound {bound}")
    check(views == [spent, spent], f"node views {views} != spent {spent} 10 s after NATS returned")
    return (
        f"limit {limit} tokens, NATS killed at {killed_at_spent[0]} spent; spent {spent} "
        f"(overspend {spent - limit}, bound (N-1) x left + {CLIENTS} in flight = {bound}); "
        f"admitted per node {admitted}; both views = {spent} {converged:.2f}s after NATS returned"
    )


def usage_views(
    nodes: list[GatewayProcess], token: str, want: int, timeout: float
) -> tuple[list[int], float]:
    """Poll every node's ``tok.used`` until all equal ``want``; (last views, seconds)."""
    started = time.monotonic()
    views: list[int] = []
    with httpx.Client(timeout=5, headers={"authorization": f"Bearer {token}"}) as http:
        while time.monotonic() - started < timeout:
            views = [
                int(http.get(f"{n.base_url}/gatekeeper/usage").json()["counters"]["tok"]["used"])
                for n in nodes
            ]
            if views == [want] * len(nodes):
                break
            time.sleep(0.05)
    return views, time.monotonic() - started


def cluster_leader_killed(rig: Rig, fast: bool) -> str:
    """g. 3-node NATS cluster, R3 streams, BH_AUDIT's leader SIGKILLed: no 200 loses its record."""
    servers = rig.cluster()
    url = ",".join(s.url for s in servers)
    gw = rig.gateway([rig.fake(Behavior(first_byte_delay=0.005))], url, nats={"replicas": 3})
    leader = audit_leader(url)
    victim = next(s for s in servers if s.name == leader)
    survivors = ",".join(s.url for s in servers if s is not victim)
    before = 1.5 if fast else 5.0
    with Load(gw, rig.issuer.token()) as load:
        time.sleep(before)
        victim.kill()
        killed = time.monotonic()
        new = None
        while time.monotonic() - killed < 20:
            new = audit_leader(survivors)
            if new and new != leader:
                break
            time.sleep(0.1)
        failover_s = time.monotonic() - killed
        time.sleep(before)
    check(bool(new) and new != leader, "no new BH_AUDIT leader within 20 s")
    drain = wait_spool_empty(gw)
    ok = load.completed_ok()
    recs = records(survivors)
    check(len(ok) > 20, f"only {len(ok)} complete 200s")
    assert_one_record_each(ok, recs)
    return (
        f"leader {leader} killed, new leader {new} after {failover_s:.2f}s; "
        f"{len(load.seen)} requests, {len(ok)} complete 200s, {len(recs)} records; {drain}"
    )


SCENARIOS: dict[str, Callable[[Rig, bool], str]] = {
    "a": nats_killed,
    "b": gateway_killed,
    "c": provider_stalls,
    "d": rate_limit_storm,
    "e": streams_cut,
    "f": budget_partition,
    "g": cluster_leader_killed,
}


def _ready(gw: GatewayProcess) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{gw.url}/readyz", timeout=2).json()
    return body


def _until(condition: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(httpx.HTTPError):
            if condition():
                return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


# ---------------------------------------------------------------------- running


def run_one(key: str, fast: bool, tmp: Path, issuer: Issuer) -> Outcome:
    scenario = SCENARIOS[key]
    name = f"{key}. {scenario.__name__}"
    started = time.monotonic()
    try:
        with Rig(tmp / key, issuer) as rig:
            figures = scenario(rig, fast)
        passed = True
    except Exception as exc:  # noqa: BLE001 -- the one boundary: a scenario's failure is reported
        figures = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        passed = False
    seconds = time.monotonic() - started
    if seconds > SCENARIO_S:
        figures += f" [took {seconds:.0f}s, over the {SCENARIO_S:.0f}s ceiling]"
        passed = False
    return Outcome(name, passed, figures, seconds)


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gk-chaos-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: a,b,…,g")
    p.add_argument("--fast", action="store_true", help="short versions of each scenario")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    keys = [k.strip() for k in a.only.split(",") if k.strip()]
    unknown = set(keys) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {','.join(SCENARIOS)}")
    outcomes = []
    with workspace() as tmp:
        issuer = Issuer(tmp / "issuer")
        for key in keys:
            print(f"[chaos {time.strftime('%H:%M:%S')}] {key} ...", flush=True)
            outcome = run_one(key, a.fast, tmp, issuer)
            outcomes.append(outcome)
            verdict = "PASS" if outcome.passed else "FAIL"
            print(
                f"{verdict} {outcome.name} ({outcome.seconds:.1f}s): {outcome.figures}", flush=True
            )
    failed = [o for o in outcomes if not o.passed]
    total = sum(o.seconds for o in outcomes)
    print(f"\n{len(outcomes) - len(failed)}/{len(outcomes)} passed in {total:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.run`` (``make bench``): the gateway against its upstream, side by side.

    .venv/bin/python -m bench.run                      3 runs x 10 s per scenario
    .venv/bin/python -m bench.run --quick              1 run x 3 s (smoke)
    .venv/bin/python -m bench.run --runs 3 --duration 10 --httpx-baseline --scaling
    .venv/bin/python -m bench.run --quick --only peers   peer gateways vs direct only (printed)

Starts, all on 127.0.0.1 free ports: the fake upstream (``bench.upstream``), a
nats-server with JetStream, and ``python -m gatekeeper serve`` pointing a provider
of kind ``openai`` at the upstream (demo off, audit strict). Loads each target with
``wrk`` (1 and 32 connections), reads CPU time and peak RSS from ``/proc``, times
streams with an aiohttp client, runs the micro-benchmarks in ``bench/`` and rewrites
the generated section of BENCHMARKS.md (between the ``bench:start``/``bench:end``
markers; everything else in the file is kept). Every figure is the median of runs.
Needs ``wrk`` on PATH (``apt-get install wrk``). Linux only (reads /proc).
When ``make bench-peers`` has installed them, LiteLLM proxy and Portkey's gateway run the
same scenarios as pass-throughs to the same upstream (``bench/peers.py``; ``--no-peers``).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx

from bench import baseline_build, peers
from bench.loadgen import (
    CHAT_BODY,
    MESSAGES_BODY,
    MESSAGES_PATH,
    RESPONSES_BODY,
    RESPONSES_PATH,
    Helpers,
    Scenario,
    Target,
    measure,
    process_tree,
    run_streams,
    run_wrk,
    stop_process,
)
from bench.report import GATEWAY, Results, bar_lines, render, write_section
from gatekeeper.bus.embedded import EmbeddedNats, free_port
from tests.harness.gateway import GatewayProcess, Issuer, base_config, chat_model, embedding_model

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass(frozen=True, slots=True)
class Options:
    runs: int
    duration: float
    warmup: float
    quick: bool
    scaling: bool
    httpx_baseline: bool
    stream_requests: int
    stream_concurrency: int
    chunks: int
    chunk_delay_ms: float
    output: Path | None
    micro: bool
    argv: tuple[str, ...]
    peers: bool = True  # LiteLLM proxy and Portkey, if `make bench-peers` installed them
    only_peers: bool = False  # direct and the peers only: no gateway, baselines or micro
    baseline: Path | None = None  # another build's checkout, measured in the same rounds


@dataclass(frozen=True, slots=True)
class Stage:
    """What every step of a run shares: options, the process stack, the fixed services."""

    opts: Options
    stack: contextlib.ExitStack
    tmp: Path
    upstream_url: str
    nats_url: str
    issuer: Issuer
    helpers: Helpers
    full_token: str  # budget + rpm + tpm: every pipeline step runs
    plain_token: str  # no limits


# --------------------------------------------------------------------------- processes


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    name = " ".join(map(str, proc.args)) if isinstance(proc.args, list) else str(proc.args)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            r = httpx.post(
                url, content=CHAT_BODY, timeout=2, headers={"content-type": "application/json"}
            )
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} not answering {url} in {timeout}s")


def start_server(
    stack: contextlib.ExitStack, module: str, args: list[str], workdir: Path, port: int
) -> subprocess.Popen[bytes]:
    """``python -m <module> --port P …``; stopped (SIGTERM, then SIGKILL) when ``stack`` ends."""
    log = workdir / f"{module.rsplit('.', 1)[-1]}-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [PY, "-m", module, "--port", str(port), *args],
            cwd=ROOT,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    stack.callback(stop_process, proc)
    _wait_http(f"http://127.0.0.1:{port}/v1/chat/completions", proc, log)
    return proc


def tree(proc: subprocess.Popen[bytes] | None) -> Callable[[], list[int]]:
    """The live process tree of ``proc`` (a gateway supervisor and its workers)."""
    assert proc is not None
    return lambda: process_tree(proc.pid)


def start_gateway(stage: Stage, workers: int) -> GatewayProcess:
    """``python -m gatekeeper serve`` in front of the stage's upstream (see ``launch_gateway``)."""
    return launch_gateway(
        stage.stack, stage.tmp, stage.upstream_url, stage.nats_url, stage.issuer, workers
    )


def launch_gateway(
    stack: contextlib.ExitStack,
    tmp: Path,
    upstream_url: str,
    nats_url: str,
    issuer: Issuer,
    workers: int,
) -> GatewayProcess:
    """``python -m gatekeeper serve`` in front of the upstream; waits for every worker."""
    provider = {
        "name": "bench",
        "kind": "openai",
        "base_url": f"{upstream_url}/v1",
        "api_key": "sk-bench",
        "timeouts": {"connect_s": 2, "first_byte_s": 10, "total_s": 30},
    }
    models = [
        chat_model("gpt-4o-mini", "bench"),
        embedding_model("text-embedding-3-small", "bench"),
    ]
    state = tmp / f"state-w{workers}"
    config = base_config([provider], models, issuer, state, demo="off", audit={"mode": "strict"})
    gw = GatewayProcess(config, tmp / f"gw-w{workers}", nats_url, workers=workers)
    stack.callback(gw.stop)
    gw.start(timeout=60)
    deadline = time.monotonic() + 60
    while gw.logs().count('"node.started"') < workers:  # every worker, not just the first
        if time.monotonic() > deadline or (gw.proc and gw.proc.poll() is not None):
            raise RuntimeError(f"gateway workers did not all start:\n{gw.logs()[-3000:]}")
        time.sleep(0.1)
    return gw


def check_ok(
    base_url: str,
    token: str | None,
    path: str = "/v1/chat/completions",
    body: str = CHAT_BODY,
) -> None:
    """One request before any load: a benchmark of error responses measures nothing."""
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    r = httpx.post(f"{base_url}{path}", content=body, headers=headers, timeout=10)
    kinds = {"chat.completion", "response"}
    if r.status_code != 200 or (r.json().get("object") not in kinds and "content" not in r.json()):
        raise RuntimeError(f"{base_url}: {r.status_code} {r.text[:500]}")


# --------------------------------------------------------------------------- measuring


def round_order(
    matrix: list[Scenario], i: int, swap: Sequence[tuple[int, int]] = ()
) -> list[Scenario]:
    """The scenarios in the order round ``i`` runs them: in odd rounds each pair of
    positions in ``swap`` trades places, so neither build of a pair always runs first."""
    order = list(matrix)
    if i % 2:
        for a, b in swap:
            order[a], order[b] = order[b], order[a]
    return order


def run_matrix(
    matrix: list[Scenario], opts: Options, helpers: Helpers, swap: Sequence[tuple[int, int]] = ()
) -> None:
    """Warm every scenario up once, then run them interleaved ``opts.runs`` times
    (``round_order``: the pairs in ``swap`` alternate which goes first)."""
    for sc in matrix:
        log(f"warm-up  {sc.target.name} c{sc.connections}")
        run_wrk(
            sc.target.url, sc.connections, opts.warmup, sc.target.token, headers=sc.target.headers
        )
    for i in range(opts.runs):
        for sc in round_order(matrix, i, swap):
            sample = measure(sc.target, sc.connections, opts.duration, helpers)
            sc.samples.append(sample)
            w = sample.wrk
            log(
                f"run {i + 1}/{opts.runs} {sc.target.name:<28} c{sc.connections:<3} "
                f"{w.rps:9.0f} req/s  p50 {w.p50_ms:.3f} ms  p99 {w.p99_ms:.3f} ms  "
                f"non-2xx {w.non_2xx}  sock-err {w.socket_errors}"
            )


def added_p50(direct: Scenario, gateway: Scenario) -> list[float]:
    """Per run: gateway p50 − direct p50 (same run, interleaved)."""
    return [
        g.wrk.p50_ms - d.wrk.p50_ms for d, g in zip(direct.samples, gateway.samples, strict=True)
    ]


def run_micro(results: Results) -> None:
    for name in ("auth_bench", "budget_bench", "routing_bench", "privacypass_bench"):
        path = ROOT / "bench" / f"{name}.py"
        if not path.exists():
            continue
        log(f"micro    {name}")
        try:
            done = subprocess.run(
                [PY, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
            )
            text = done.stdout.rstrip()
            if done.returncode != 0:
                text += f"\n[exit {done.returncode}]\n{done.stderr.strip()[-2000:]}"
        except subprocess.TimeoutExpired:
            text = "[timed out after 300 s]"
        results.micro[f"python bench/{name}.py"] = text


# --------------------------------------------------------------------------- the run


def bench(opts: Options, stack: contextlib.ExitStack, tmp: Path) -> Results:
    results = Results()
    results.note_load()
    up_port = free_port()
    up_args = ["--chunks", str(opts.chunks), "--chunk-delay-ms", str(opts.chunk_delay_ms)]
    upstream = start_server(stack, "bench.upstream", up_args, tmp, up_port)
    nats = EmbeddedNats(tmp / "nats", name="bench-nats")
    stack.callback(nats.stop)
    nats.start()
    assert nats.proc is not None
    issuer = Issuer(tmp / "issuer")
    stage = Stage(
        opts,
        stack,
        tmp,
        f"http://127.0.0.1:{up_port}",
        nats.url,
        issuer,
        Helpers(nats.proc.pid, upstream.pid),
        issuer.token("bench", budget_tokens=10**12, rpm=10**9, tpm=10**12),
        issuer.token("bench-plain"),
    )
    direct = Target("direct (upstream only)", stage.upstream_url, None, tree(upstream))
    if not opts.only_peers:
        gw1 = one_worker(stage, direct, results)
        streams(stage, gw1, results)
        if opts.scaling:
            gw1.stop()
            scaling(stage, results)
        if opts.httpx_baseline:
            baselines(stage, results)
        gw1.stop()  # done with; idle, it would still share the CPUs with the peers
    if opts.peers:
        peer_gateways(stage, direct, results)
    if opts.micro and not opts.only_peers:
        run_micro(results)
    results.note_load()
    results.wall_s = time.time() - results.started
    return results


def one_worker(stage: Stage, direct: Target, results: Results) -> GatewayProcess:
    """Direct vs gateway (1 worker; full and plain token) at 1 and 32 connections."""
    gw = start_gateway(stage, 1)
    for token in (stage.full_token, stage.plain_token):
        check_ok(gw.url, token)
    full = Target("gateway w1, full pipeline", gw.url, stage.full_token, tree(gw.proc), 1)
    plain = Target("gateway w1, plain token", gw.url, stage.plain_token, full.pids, 1)
    responses = Target("gateway w1, Responses API", gw.url, stage.full_token, full.pids, 1,
                       path=RESPONSES_PATH, body=RESPONSES_BODY)  # fmt: skip
    messages = Target("gateway w1, Messages API", gw.url, stage.full_token, full.pids, 1,
                      path=MESSAGES_PATH, body=MESSAGES_BODY)  # fmt: skip
    for target in (responses, messages):
        check_ok(gw.url, stage.full_token, target.path, target.body)
    targets: tuple[Target, ...] = (direct, full)
    swap: list[tuple[int, int]] = []
    if stage.opts.baseline is not None:  # the other build, right after this one in each round
        b = baseline_build.start(stage.opts.baseline, stage.upstream_url, stage.tmp, stage.stack)
        log(f"baseline {b.label} at {b.url}")
        check_ok(b.url, b.token)
        results.baseline = b.label
        base = Target(
            f"{b.label} w1, full pipeline", b.url, b.token, lambda: process_tree(b.pid), 1
        )
        targets = (*targets, base)
    targets = (*targets, plain, responses, messages)
    matrix = [Scenario(t, c) for c in (1, 32) for t in targets]
    if stage.opts.baseline is not None:  # this build and the baseline take turns going first
        swap = [(k * len(targets) + 1, k * len(targets) + 2) for k in range(2)]
    run_matrix(matrix, stage.opts, stage.helpers, swap)
    results.scenarios += matrix
    names = {full.name: "full pipeline", plain.name: "plain token"}
    names |= {responses.name: "Responses API", messages.name: "Messages API"}
    for sc in matrix[1 : len(targets)]:  # the 1-connection scenarios after direct
        key = names.get(sc.target.name, sc.target.name)
        results.added_p50_ms[key] = added_p50(matrix[0], sc)
    return gw


def streams(stage: Stage, gw: GatewayProcess, results: Results) -> None:
    n, conc = stage.opts.stream_requests, stage.opts.stream_concurrency
    log(f"streams  {n} x direct, gateway (concurrency {conc})")
    results.streams["direct (upstream only)"] = run_streams(stage.upstream_url, None, n, conc)
    results.streams["gateway w1, full pipeline"] = run_streams(gw.url, stage.full_token, n, conc)
    base = (
        find_target(results, f"{results.baseline} w1, full pipeline") if results.baseline else None
    )
    if base is not None:  # the baseline build: both, in turn, in every round (paired ratios)
        runs = results.stream_rounds
        for i in range(stage.opts.runs):
            pair = [(GATEWAY, gw.url, stage.full_token), (base.name, base.url, base.token)]
            for name, url, token in pair if i % 2 else pair[::-1]:
                runs.setdefault(name, []).append(run_streams(url, token, n, conc))
        results.streams[base.name] = runs[base.name][-1]
        results.streams["gateway w1, full pipeline (again)"] = runs[GATEWAY][-1]
    for name, s in results.streams.items():
        log(
            f"         {name:<28} TTFT p50 {s.ttft_p50_ms:.3f} ms p99 {s.ttft_p99_ms:.3f} ms "
            f"{s.chunks_per_s:9.0f} chunks/s failed {s.failed}"
        )


def find_target(results: Results, name: str) -> Target | None:
    return next((s.target for s in results.scenarios if s.target.name == name), None)


def scaling(stage: Stage, results: Results) -> None:
    """The gateway with 2 and 4 workers at 32 connections, one at a time."""
    for workers in (2, 4):
        gw = start_gateway(stage, workers)
        check_ok(gw.url, stage.full_token)
        name = f"gateway w{workers}, full pipeline"
        matrix = [Scenario(Target(name, gw.url, stage.full_token, tree(gw.proc), workers), 32)]
        run_matrix(matrix, stage.opts, stage.helpers)
        results.scenarios += matrix
        gw.stop()


def baselines(stage: Stage, results: Results) -> None:
    """Bare Starlette pass-throughs, httpx vs aiohttp vs h1 as the upstream client."""
    matrix = []
    for module, label in (
        ("bench.baseline_httpx", "baseline Starlette + httpx"),
        ("bench.baseline_aiohttp", "baseline Starlette + aiohttp"),
        ("bench.baseline_h1", "baseline Starlette + h1 (gateway's client)"),
    ):
        port = free_port()
        proc = start_server(
            stage.stack, module, ["--upstream", stage.upstream_url], stage.tmp, port
        )
        matrix.append(Scenario(Target(label, f"http://127.0.0.1:{port}", None, tree(proc)), 32))
    run_matrix(matrix, stage.opts, stage.helpers)
    results.scenarios += matrix


def peer_gateways(stage: Stage, direct: Target, results: Results) -> None:
    """LiteLLM proxy and Portkey (``bench/peers.py``) vs direct at 1 and 32 connections."""
    found = peers.available(stage.upstream_url, stage.tmp, (free_port(), free_port()))
    if not found:
        log(peers.HINT)
        return
    targets = []
    for peer in found:
        log(f"start    {peer.name} on port {peer.port}")
        try:
            proc = peers.start(peer, stage.stack, stage.tmp)
        except RuntimeError as e:  # one broken peer must not cost the whole run
            log(f"skipped  {peer.name}: {e}")
            continue
        results.peers.append(peer.version)
        targets.append(Target(peer.name, peer.url, peer.token, tree(proc), headers=peer.headers))
    if not targets:
        return
    base = Scenario(direct, 1)  # direct again, interleaved with the peers: their added p50
    matrix = [Scenario(t, c) for c in (1, 32) for t in targets]
    run_matrix([base, *matrix], stage.opts, stage.helpers)
    results.scenarios += matrix
    for sc in matrix[: len(targets)]:
        results.added_p50_ms[sc.target.name] = added_p50(base, sc)
    n, conc = stage.opts.stream_requests, stage.opts.stream_concurrency
    log(f"streams  {n} x direct, peers (concurrency {conc})")
    if direct.name not in results.streams:
        results.streams[direct.name] = run_streams(stage.upstream_url, None, n, conc)
    for t in targets:
        s = results.streams[t.name] = run_streams(t.url, t.token, n, conc, t.headers)
        log(f"         {t.name:<28} TTFT p50 {s.ttft_p50_ms:.3f} ms failed {s.failed}")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.run", description="Gateway vs direct-upstream benchmarks."
    )
    p.add_argument("--runs", type=int, default=3, help="runs per scenario (median reported)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per scenario")
    p.add_argument("--quick", action="store_true", help="smoke: 1 run x 3 s, 50 streams")
    p.add_argument("--scaling", action="store_true", help="also gateway with 2 and 4 workers")
    p.add_argument(
        "--httpx-baseline",
        action="store_true",
        help="also bare Starlette pass-throughs with httpx, aiohttp and the gateway's h1",
    )
    p.add_argument("--stream-requests", type=int, default=200)
    p.add_argument("--stream-concurrency", type=int, default=8)
    p.add_argument("--chunks", type=int, default=20, help="content chunks per upstream stream")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="upstream pause per chunk")
    p.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="print the section, keep the file")
    p.add_argument("--no-micro", action="store_true", help="skip bench/*_bench.py")
    p.add_argument("--no-peers", action="store_true", help="skip LiteLLM proxy and Portkey")
    p.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another build (with its .venv): measured in the same rounds, "
        "with ratio bars (bench/baseline_build.py)",
    )
    p.add_argument(
        "--only",
        choices=["peers"],
        help="peers: direct and the peer gateways only (implies --no-write)",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.runs, a.duration, a.warmup = 1, 3.0, 1.0
        a.stream_requests = min(a.stream_requests, 50)
    if a.only == "peers" and a.no_peers:
        p.error("--only peers and --no-peers exclude each other")
    if a.runs < 1 or a.duration < 1 or a.duration > 120:
        p.error("--runs must be >= 1 and --duration between 1 and 120 s")
    return Options(
        a.runs,
        a.duration,
        a.warmup,
        a.quick,
        a.scaling,
        a.httpx_baseline,
        a.stream_requests,
        a.stream_concurrency,
        a.chunks,
        a.chunk_delay_ms,
        None if a.no_write or a.only == "peers" else a.output,
        not a.no_micro,
        tuple(argv),
        not a.no_peers,
        a.only == "peers",
        a.baseline.resolve() if a.baseline else None,
    )


def _raise_interrupt(signum: int, _: Any) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    with (
        _sigterm_as_interrupt(),
        tempfile.TemporaryDirectory(prefix="gk-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        try:
            results = bench(opts, stack, Path(tmp))
        except KeyboardInterrupt:
            log("interrupted: stopping every process")
            return 130
        finally:
            stack.close()  # stop gateway, nats, upstream, baselines before the temp dir goes
    section = render(results, opts)
    if opts.output is None:
        print(section)
    else:
        write_section(opts.output, section)
        log(f"wrote {opts.output}")
    print("\n".join(bar_lines(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

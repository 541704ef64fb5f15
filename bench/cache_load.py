"""The result cache under load at a 0 % hit rate: what caching costs when nothing repeats.

    .venv/bin/python -m bench.cache_load [--rounds 6] [--duration 4] [--no-store]

Starts the bench upstream, one nats-server and two gateways, one with ``cache.enabled:
false`` and one with the cache on (the key's ``cache`` claim opts in), then alternates
them round by round (even rounds the cache-off gateway first): one ``wrk`` run at 32
connections per gateway, every request's prompt new (``BENCH_UNIQUE``), so each one on
the cache-on gateway is a lookup, a miss, an upstream call and a signed store.
``--no-store`` sends ``Cache-Control: no-store`` (the lookup and the miss only).

Printed per round and as the median of the per-round ratios (cache on ÷ off): the
gateway process tree's CPU per request (utime + stime from ``/proc``) and req/s. Issue
19's bar is ≤ 1.05× (``bench.cache_ab`` measures the sequential latencies).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from bench import report
from bench.ab import Round
from bench.cache_ab import surroundings
from bench.loadgen import cpu_seconds, process_tree, run_wrk
from gatekeeper.auth.claims import CacheClaim
from tests.harness.gateway import GatewayProcess, base_config, chat_model

MODEL = "gpt-4o-mini"
BODY = (
    '{"model":"gpt-4o-mini","temperature":0,'
    '"messages":[{"role":"user","content":"Hello!"}],"max_tokens":16}'
)


def measure(gw: GatewayProcess, token: str, opts: argparse.Namespace) -> Round:
    assert gw.proc is not None
    pids = process_tree(gw.proc.pid)
    before = cpu_seconds(pids)
    headers = {"cache-control": "no-store"} if opts.no_store else None
    w, _ = run_wrk(gw.url, 32, opts.duration, token, BODY, headers=headers, unique=True)
    if w.non_2xx or w.socket_errors:
        raise RuntimeError(f"{w.non_2xx} non-2xx, {w.socket_errors} socket errors")
    spent = cpu_seconds(pids) - before
    return Round(w.rps, spent / max(1, w.requests) * 1e6, w.p50_ms)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cache_load", description=__doc__)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    p.add_argument("--no-store", action="store_true", help="Cache-Control: no-store")
    opts = p.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gk-cache-load-")))
        nats, issuer, secret, provider = surroundings(stack, tmp)
        gateways: dict[str, GatewayProcess] = {}
        for name, cache in (
            ("off", {"enabled": False}),
            ("on", {"enabled": True, "key_secret_file": str(secret)}),
        ):
            config = base_config(
                [provider],
                [chat_model(MODEL, "bench")],
                issuer,
                tmp / f"state-{name}",
                audit={"mode": "strict"},
                cache=cache,
            )
            gw = GatewayProcess(config, tmp / f"gw-{name}", nats.url)
            stack.callback(gw.stop)
            gw.start(timeout=60)
            gateways[name] = gw
        limits = {"budget_tokens": 10**12, "rpm": 10**9, "tpm": 10**12}
        token = issuer.token("bench", cache=CacheClaim(ttl_s=3600), **limits)
        for gw in gateways.values():  # warm-up, not counted
            run_wrk(gw.url, 32, 2, token, BODY, unique=True)
        results: dict[str, list[Round]] = {"off": [], "on": []}
        for i in range(opts.rounds):
            for name in ("off", "on") if i % 2 == 0 else ("on", "off"):
                results[name].append(measure(gateways[name], token, opts))
            a, b = results["on"][-1], results["off"][-1]
            print(
                f"round {i + 1}: on {a.throughput:7.0f}/s {a.cpu_us:5.0f} µs"
                f" | off {b.throughput:7.0f}/s {b.cpu_us:5.0f} µs",
                flush=True,
            )
        pairs = list(zip(results["on"], results["off"], strict=True))
        cpu = report.paired(pairs, lambda r: r.cpu_us)
        rps = report.paired(pairs, lambda r: r.throughput)
        what = "lookup + miss (no-store)" if opts.no_store else "lookup + miss + store"
        print(
            f"cache on ÷ off, {what}: CPU per request {cpu:.3f}×, req/s {rps:.3f}×"
            f" (median of {opts.rounds} paired rounds)"
        )


if __name__ == "__main__":
    main()

"""This build against another, round by round: CPU per request from ``/proc``.

    .venv/bin/python -m bench.ab --baseline ../before [--rounds 6] [--connections 32]
                                 [--duration 5] [--streams 0] [--chunks 20] [--keys 1]

Starts one ``bench.upstream`` and, in front of it, this tree's gateway and the baseline
tree's (``bench/baseline_build.py``; each with its own nats-server), then alternates
them round by round: even rounds this build first, odd rounds the baseline first. Each
round is one ``wrk`` run per build at ``--connections`` (or, with ``--streams N``, N
streaming chat completions per build, 8 at a time). What it prints, per round and then
as the median of the per-round ratios (this build ÷ the baseline):

* throughput (req/s, or chunks/s for streams);
* CPU per request or stream: the gateway process tree's utime + stime over the round,
  divided by what it served;
* p50 latency (wrk's), or TTFT p50 for streams.

A paired ratio is steadier than a ratio of medians on a shared machine: a slow minute
slows both halves of a round. ``bench.run --baseline`` gives the bars; this is the
quicker look, and what the notes in BENCHMARKS.md call the A/B.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from bench import baseline_build, report
from bench.loadgen import cpu_seconds, process_tree, run_streams, run_wrk
from bench.run import launch_gateway, start_server
from gatekeeper.bus.embedded import EmbeddedNats, free_port
from tests.harness.gateway import Issuer

__all__ = ["Round", "alternate", "main", "paired", "parse_rounds", "report_ratios", "spread"]


@dataclass(frozen=True, slots=True)
class Round:
    throughput: float  # req/s or chunks/s
    cpu_us: float  # per request or stream
    p50_ms: float  # latency p50 or TTFT p50


@dataclass(frozen=True, slots=True)
class Build:
    name: str
    url: str
    token: str
    pid: int  # its process tree is measured
    tokens: tuple[str, ...] = ()  # wrk takes these in turn instead of ``token`` (many keys)


def paired(ours: list[Round], theirs: list[Round], field: str) -> float:
    """The median over rounds of ours ÷ theirs for one field (``bench.report.paired``)."""
    return report.paired(list(zip(ours, theirs, strict=True)), attrgetter(field))


def measure(build: Build, opts: argparse.Namespace) -> Round:
    pids = process_tree(build.pid)
    before = cpu_seconds(pids)
    if opts.streams:
        s = run_streams(build.url, build.token, opts.streams, 8)
        if s.failed:
            raise RuntimeError(f"{build.name}: {s.failed} streams failed")
        spent = cpu_seconds(pids) - before
        return Round(s.chunks_per_s, spent / opts.streams * 1e6, s.ttft_p50_ms)
    w, _ = run_wrk(build.url, opts.connections, opts.duration, build.token, tokens=build.tokens)
    if w.non_2xx or w.socket_errors:
        raise RuntimeError(f"{build.name}: {w.non_2xx} non-2xx, {w.socket_errors} socket errors")
    spent = cpu_seconds(pids) - before
    return Round(w.rps, spent / max(1, w.requests) * 1e6, w.p50_ms)


def parse_rounds(p: argparse.ArgumentParser) -> argparse.Namespace:
    """``p``'s arguments, with the options of the paired rounds added (``alternate``)."""
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--streams", type=int, default=0, help="N streams per round instead of wrk")
    p.add_argument("--chunks", type=int, default=20, help="content chunks per upstream stream")
    p.add_argument("--keys", type=int, default=1, help="wrk: spread requests over N keys")
    opts = p.parse_args()
    if opts.keys > 1 and opts.streams:
        p.error("--keys is for wrk runs, not --streams")
    return opts


def alternate(
    ours: Build, theirs: Build, opts: argparse.Namespace
) -> tuple[list[Round], list[Round]]:
    """Both warmed up, then ``opts.rounds`` rounds of each, alternating which goes first
    (even rounds ``ours``); each round printed as it ends."""
    for build in (ours, theirs):  # warm-up, not counted
        run_wrk(build.url, opts.connections, 2, build.token)
    mine: list[Round] = []
    other: list[Round] = []
    for i in range(opts.rounds):
        for build in (ours, theirs) if i % 2 == 0 else (theirs, ours):
            (mine if build is ours else other).append(measure(build, opts))
        a, b = mine[-1], other[-1]
        print(
            f"round {i + 1}: {ours.name} {a.throughput:9.0f}/s {a.cpu_us:6.0f} µs"
            f" {a.p50_ms:7.3f} ms | {theirs.name} {b.throughput:9.0f}/s {b.cpu_us:6.0f} µs"
            f" {b.p50_ms:7.3f} ms",
            flush=True,
        )
    return mine, other


def report_ratios(mine: list[Round], other: list[Round], opts: argparse.Namespace) -> None:
    """Throughput, CPU and p50: the median over rounds of ours ÷ theirs."""
    unit = "chunks/s" if opts.streams else "req/s"
    what = "stream" if opts.streams else "request"
    for field, label in (
        ("throughput", unit),
        ("cpu_us", f"CPU per {what}"),
        ("p50_ms", "TTFT p50" if opts.streams else "p50"),
    ):
        ratio = paired(mine, other, field)
        print(f"{label}: {ratio:.3f}× (median of {opts.rounds} paired rounds)")


def spread(issuer: Issuer, n: int) -> tuple[str, ...]:
    """``n`` keys of their own tenants (none for 1: the build's one token is used)."""
    if n <= 1:
        return ()
    limits = {"budget_tokens": 10**12, "rpm": 10**9, "tpm": 10**12}
    return tuple(issuer.token(f"bench-{i}", **limits) for i in range(n))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, required=True, help="a checkout with its .venv")
    opts = parse_rounds(p)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gk-ab-")))
        port = free_port()
        start_server(stack, "bench.upstream", ["--chunks", str(opts.chunks)], tmp, port)
        upstream = f"http://127.0.0.1:{port}"
        nats = EmbeddedNats(tmp / "nats", name="ab-nats")
        stack.callback(nats.stop)
        nats.start()
        issuer = Issuer(tmp / "issuer")
        gw = launch_gateway(stack, tmp, upstream, nats.url, issuer, 1)
        assert gw.proc is not None
        token = issuer.token("bench", budget_tokens=10**12, rpm=10**9, tpm=10**12)
        base = baseline_build.start(opts.baseline, upstream, tmp, stack)
        ours = Build("this build", gw.url, token, gw.proc.pid, spread(issuer, opts.keys))
        theirs = Build(
            base.label,
            base.url,
            base.token,
            base.pid,
            spread(Issuer(tmp / "baseline" / "issuer"), opts.keys),
        )
        mine, other = alternate(ours, theirs, opts)
        report_ratios(mine, other, opts)


if __name__ == "__main__":
    main()

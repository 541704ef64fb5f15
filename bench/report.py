"""The generated section of BENCHMARKS.md: facts about the run, tables, bars.

``write_section`` replaces only the text between ``<!-- bench:start -->`` and
``<!-- bench:end -->``; anything else in the file (notes, profiles) is kept.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bench.loadgen import CHAT_BODY, Scenario, StreamResult, wrk_version

if TYPE_CHECKING:
    from bench.run import Options

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass(slots=True)
class Results:
    scenarios: list[Scenario] = field(default_factory=list)
    added_p50_ms: dict[str, list[float]] = field(default_factory=dict)
    streams: dict[str, StreamResult] = field(default_factory=dict)
    # with --baseline: this build's and the baseline's streams, in turn, round by round
    stream_rounds: dict[str, list[StreamResult]] = field(default_factory=dict)
    micro: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    wall_s: float = 0.0
    loadavg: list[str] = field(default_factory=list)  # /proc/loadavg at start and end
    peers: list[str] = field(default_factory=list)  # peer gateways measured, with versions
    baseline: str = ""  # "baseline <commit>": another build measured in the same rounds

    def note_load(self) -> None:
        with contextlib.suppress(OSError):
            self.loadavg.append(" ".join(Path("/proc/loadavg").read_text().split()[:3]))


START, END = "<!-- bench:start -->", "<!-- bench:end -->"
PEERS_NOTE = (
    "- **Peers:** other gateways as plain pass-throughs to the same upstream, installed by "
    "`make bench-peers` (`bench/peers.py`). *LiteLLM proxy*: `litellm --config` with one "
    "model `openai/gpt-4o-mini` at the upstream, `--num_workers 1`, a master key (the "
    "bearer token), no database, no callbacks, local cost map. *Portkey gateway*: "
    "`node build/start-server.js --headless`, routed by `x-portkey-provider: openai` and "
    "`x-portkey-custom-host` headers, no config. Their CPU and RSS are of their own process "
    "tree; added p50 is against a direct run interleaved with theirs. Portkey waits 25 ms "
    "before the first chunk of every stream (`src/handlers/streamHandler.ts`), which its "
    "TTFT includes."
)
DIRECT, GATEWAY = "direct (upstream only)", "gateway w1, full pipeline"  # stream targets
BAR_RPS_PER_WORKER = 4000.0
BAR_ADDED_P50_MS = 0.4
BAR_INGRESS_RATIO = 1.2  # issue 16: another API's added latency vs chat completions'
BAR_BASELINE = 0.05  # a change keeps the ratios to the build before it within 5 %


def _cmd(args: list[str]) -> str:
    try:
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    if done.returncode != 0:
        return "?"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def machine() -> str:
    model, mem_kib = "?", 0
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(
            (ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?"
        )
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        mem_kib = next((int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal:")), 0)
    return (
        f"{_cmd(['nproc'])} CPUs (`nproc`), {model}, {mem_kib / 2**20:.1f} GiB RAM, "
        f"Linux {_cmd(['uname', '-r'])}"
    )


def versions() -> str:
    from importlib.metadata import version

    commit = _cmd(["git", "rev-parse", "--short", "HEAD"])
    dirty = _cmd(["git", "status", "--porcelain", "--untracked-files=no"]) not in ("", "?")
    libs = ", ".join(
        f"{name} {version(name)}"
        for name in (
            "uvicorn",
            "starlette",
            "uvloop",
            "httptools",
            "aiohttp",
            "httpx",
            "nats-py",
            "orjson",
        )
    )
    nats = _cmd([str(Path(PY).parent / "nats-server"), "--version"])
    return (
        f"Python {sys.version.split()[0]}; gatekeeper `{commit}`"
        f"{' + uncommitted changes in tracked files' if dirty else ''}; {wrk_version()}; "
        f"{nats}; {libs}"
    )


def find(results: Results, name: str, connections: int) -> Scenario | None:
    return next(
        (s for s in results.scenarios if s.target.name == name and s.connections == connections),
        None,
    )


def bars(results: Results) -> list[tuple[str, str, bool]]:
    out = []
    gw32 = find(results, "gateway w1, full pipeline", 32)
    if gw32 is not None:
        rps = gw32.median(lambda s: s.wrk.rps)
        clean = all(s.wrk.non_2xx == 0 and s.wrk.socket_errors == 0 for s in gw32.samples)
        out.append(
            (
                f"≥ {BAR_RPS_PER_WORKER:,.0f} req/s per worker at 32 connections "
                "(gateway, 1 worker, full pipeline, no errors)",
                f"{rps:,.0f} req/s" + ("" if clean else " (with errors)"),
                clean and rps >= BAR_RPS_PER_WORKER,
            )
        )
    added = results.added_p50_ms.get("full pipeline")
    if added:
        med = statistics.median(added)
        out.append(
            (
                f"p50 added latency ≤ {BAR_ADDED_P50_MS} ms at 1 connection "
                "(gateway p50 − direct p50, full pipeline)",
                f"{med:.3f} ms",
                med <= BAR_ADDED_P50_MS,
            )
        )
        for api in ("Responses API", "Messages API"):  # gatekeeper.ingress: within 1.2x of chat
            other = results.added_p50_ms.get(api)
            if other and med > 0:
                ratio = statistics.median(other) / med
                out.append(
                    (
                        f"{api} added p50 ≤ {BAR_INGRESS_RATIO}× chat completions' (1 connection)",
                        f"{statistics.median(other):.3f} ms ({ratio:.2f}×)",
                        ratio <= BAR_INGRESS_RATIO,
                    )
                )
    return out + baseline_bars(results)


def baseline_bars(results: Results) -> list[tuple[str, str, bool]]:
    """This build against ``--baseline``'s: each ratio is the median of the per-round
    ratios (the two builds run back to back in every round, so a slow spell of the
    machine slows both)."""
    if not results.baseline:
        return []
    out: list[tuple[str, str, bool]] = []
    label, tol = results.baseline, BAR_BASELINE
    base32, gw32 = find(results, f"{label} w1, full pipeline", 32), find(results, GATEWAY, 32)
    if base32 is not None and gw32 is not None:
        pairs = list(zip(gw32.samples, base32.samples, strict=True))
        ratio = paired(pairs, lambda s: s.wrk.rps)
        out.append((f"req/s at 32 connections ≥ {1 - tol:.2f}× {label}'s", f"{ratio:.3f}×",
                    ratio >= 1 - tol))  # fmt: skip
        cpu = paired(pairs, lambda s: s.cpu_s / max(1, s.wrk.requests))
        out.append((f"CPU s / 1k req at 32 connections ≤ {1 + tol:.2f}× {label}'s",
                    f"{cpu:.3f}×", cpu <= 1 + tol))  # fmt: skip
    mine, theirs = (
        results.added_p50_ms.get("full pipeline"),
        results.added_p50_ms.get(f"{label} w1, full pipeline"),
    )
    if mine and theirs:
        ratio = paired(list(zip(mine, theirs, strict=True)), lambda v: v)
        out.append((f"added p50 at 1 connection ≤ {1 + tol:.2f}× {label}'s", f"{ratio:.3f}×",
                    ratio <= 1 + tol))  # fmt: skip
    got, base_s = (
        results.stream_rounds.get(GATEWAY),
        results.stream_rounds.get(f"{label} w1, full pipeline"),
    )
    direct = results.streams.get(DIRECT)
    if got and base_s and direct is not None:
        pairs_s = list(zip(got, base_s, strict=True))
        ratio = paired(pairs_s, lambda r: r.ttft_p50_ms - direct.ttft_p50_ms)
        out.append((f"stream added TTFT p50 ≤ {1 + tol:.2f}× {label}'s", f"{ratio:.3f}×",
                    ratio <= 1 + tol))  # fmt: skip
        cps = paired(pairs_s, lambda r: r.chunks_per_s)
        out.append((f"stream chunks/s ≥ {1 - tol:.2f}× {label}'s", f"{cps:.3f}×",
                    cps >= 1 - tol))  # fmt: skip
    return out


def paired(pairs: list[tuple[T, T]], value: Callable[[T], float]) -> float:
    """Median over rounds of value(this build) / value(baseline); rounds where the
    baseline's value is not positive are left out (nan if none is left)."""
    ratios = [value(a) / value(b) for a, b in pairs if value(b) > 0]
    return statistics.median(ratios) if ratios else math.nan


def bar_lines(results: Results) -> list[str]:
    return [f"{'PASS' if ok else 'FAIL'}  {name}: {got}" for name, got, ok in bars(results)]


def _scenario_table(results: Results) -> list[str]:
    rows = [
        "| Scenario | Conns | req/s | p50 ms | p99 ms | CPU s / 1k req | CPU busy "
        "| Peak RSS MiB | NATS CPU s / 1k req | non-2xx / socket errors | other load "
        "| req/s per run |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for sc in results.scenarios:
        busy = sc.median(lambda s: s.cpu_s / s.wrk.seconds * 100)
        errors = (
            sum(s.wrk.non_2xx for s in sc.samples),
            sum(s.wrk.socket_errors for s in sc.samples),
        )
        nats = f"{sc.per_1k(lambda s: s.nats_cpu_s):.3f}" if sc.target.workers else "–"
        rows.append(
            f"| {sc.target.name} | {sc.connections} | {sc.median(lambda s: s.wrk.rps):,.0f} "
            f"| {sc.median(lambda s: s.wrk.p50_ms):.3f} | {sc.median(lambda s: s.wrk.p99_ms):.3f} "
            f"| {sc.per_1k(lambda s: s.cpu_s):.3f} | {busy:.0f}% "
            f"| {max(s.rss_kib for s in sc.samples) / 1024:.1f} | {nats} "
            f"| {errors[0]} / {errors[1]} | {sc.median(lambda s: s.other_load) * 100:.0f}% "
            f"| {', '.join(f'{s.wrk.rps:,.0f}' for s in sc.samples)} |"
        )
    return rows


def _extra_tables(results: Results) -> list[str]:
    out = [
        "",
        "### Added p50 latency at 1 connection",
        "",
        "Per run: gateway (or peer) p50 − direct p50, both measured in the same round.",
        "",
        "| Token / peer | per run (ms) | median (ms) |",
        "|---|---|--:|",
    ]
    for name, values in results.added_p50_ms.items():
        out.append(
            f"| {name} | {', '.join(f'{v:.3f}' for v in values)} "
            f"| {statistics.median(values):.3f} |"
        )
    scaled = [
        s
        for s in results.scenarios
        if s.target.workers
        and s.connections == 32
        and s.target.name.startswith("gateway w")
        and "full" in s.target.name
    ]
    if len(scaled) > 1:
        out += [
            "",
            "### Scaling (32 connections, full pipeline)",
            "",
            "| Workers | req/s | req/s per worker | p50 ms | p99 ms | CPU s / 1k req |",
            "|--:|--:|--:|--:|--:|--:|",
        ]
        for sc in scaled:
            rps = sc.median(lambda s: s.wrk.rps)
            out.append(
                f"| {sc.target.workers} | {rps:,.0f} | {rps / sc.target.workers:,.0f} "
                f"| {sc.median(lambda s: s.wrk.p50_ms):.3f} "
                f"| {sc.median(lambda s: s.wrk.p99_ms):.3f} "
                f"| {sc.per_1k(lambda s: s.cpu_s):.3f} |"
            )
    base = {
        s.target.name: s.median(lambda x: x.wrk.rps)
        for s in results.scenarios
        if s.target.name.startswith("baseline")
    }
    if base:
        hx = base.get("baseline Starlette + httpx", 0)
        ah = base.get("baseline Starlette + aiohttp", 0)
        lean = base.get("baseline Starlette + h1 (gateway's client)", 0)
        out += [
            "",
            "### Upstream client: httpx vs aiohttp vs h1 (bare Starlette pass-through, "
            "1 uvicorn worker, 32 connections)",
            "",
            f"httpx.AsyncClient {hx:,.0f} req/s, aiohttp.ClientSession {ah:,.0f} req/s, "
            f"gatekeeper.providers.h1 {lean:,.0f} req/s: h1 is {lean / ah:.2f}× aiohttp and "
            f"{lean / hx:.2f}× httpx here."
            if hx and ah
            else "",
        ]
    if results.streams:
        out += [
            "",
            "### Streaming (aiohttp client; TTFT = request sent → first SSE event)",
            "",
            "| Target | streams | failed | TTFT p50 ms | TTFT p99 ms | chunks | chunks/s |",
            "|---|--:|--:|--:|--:|--:|--:|",
        ]
        for name, s in results.streams.items():
            out.append(
                f"| {name} | {s.requests} | {s.failed} | {s.ttft_p50_ms:.3f} "
                f"| {s.ttft_p99_ms:.3f} | {s.chunks} | {s.chunks_per_s:,.0f} |"
            )
        d, g = results.streams.get(DIRECT), results.streams.get(GATEWAY)
        if d and g:
            out += [
                "",
                f"Added TTFT p50: {g.ttft_p50_ms - d.ttft_p50_ms:.3f} ms; "
                f"p99: {g.ttft_p99_ms - d.ttft_p99_ms:.3f} ms.",
            ]
        others = [n for n in results.streams if n not in (DIRECT, GATEWAY)]
        for name in others if d else []:  # the peer gateways
            p = results.streams[name]
            out += [
                "",
                f"Added TTFT, {name}: p50 {p.ttft_p50_ms - d.ttft_p50_ms:.3f} ms; "
                f"p99: {p.ttft_p99_ms - d.ttft_p99_ms:.3f} ms.",
            ]
    for cmd, text in results.micro.items():
        out += ["", f"### `{cmd}`", "", "```text", text, "```"]
    return out


def render(results: Results, opts: Options) -> str:
    """The whole generated section, markers included."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(results.started))
    cmd = " ".join(("python -m bench.run", *opts.argv))
    lines = [
        START,
        f"## Run of {when}",
        "",
        "_Generated by `python -m bench.run`; rerunning replaces everything between "
        "the `bench:start`/`bench:end` markers._",
        "",
    ]
    if opts.quick:
        lines += ["**Quick (smoke) run: 1 run × 3 s. Not representative.**", ""]
    lines += [
        f"- **Command:** `{cmd}` (took {results.wall_s:.0f} s)",
        f"- **Machine:** {machine()}; load average (1/5/15 min) before → after: "
        f"{' → '.join(results.loadavg) or '?'}",
        f"- **Versions:** {versions()}"
        + (f"; peers: {', '.join(results.peers)}" if results.peers else ""),
        f"- **Method:** `wrk -t1 -c<conns> -d{opts.duration:.0f}s --latency -s "
        f"bench/wrk/chat.lua`, body `{CHAT_BODY}`; {opts.runs} run(s) × "
        f"{opts.duration:.0f} s per scenario after a {opts.warmup:.0f} s warm-up, "
        "scenarios interleaved, **median** of runs reported. Upstream: `bench.upstream` "
        "(raw asyncio protocol on uvloop). Gateway: `python -m gatekeeper serve`, one "
        "provider of kind `openai`, demo off, audit `strict`, its own nats-server with "
        "JetStream. *Full pipeline* token: budget 10¹² tokens, rpm 10⁹, tpm 10¹² (auth, "
        "rate limit, budget, routing, strict audit all run); *plain* token: no limits.",
        "- **Reading the table:** CPU s / 1k req and peak RSS (VmHWM) are of the server "
        "process tree under load (the upstream for *direct*, the gateway supervisor + "
        "workers, the baseline server); CPU busy = its CPU seconds / wall seconds "
        "(100% = one core). wrk, the upstream, nats-server and the gateway all share "
        "this machine's CPUs; *other load* = process CPU time the machine spent on anything "
        "else during the run (other users' jobs: busy time from /proc/stat minus wrk, the "
        "upstream, nats-server and the target; approximate), in cores × 100% — well "
        "above 0% means that run shared the CPUs with someone else.",
        *([PEERS_NOTE] if results.peers else []),
        "",
        "### Bars",
        "",
        "| Bar | Measured | Result |",
        "|---|--:|:-:|",
    ]
    lines += [
        f"| {name} | {got} | **{'PASS' if ok else 'FAIL'}** |" for name, got, ok in bars(results)
    ]
    lines += [
        "",
        "### Throughput and latency",
        "",
        *_scenario_table(results),
        *_extra_tables(results),
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the generated section of ``path`` (or add it); keep all other text."""
    text = (
        path.read_text()
        if path.exists()
        else (
            "# Benchmarks\n\nHow fast Gatekeeper is next to its upstream. Regenerate with "
            "`make bench` (`python -m bench.run`); see `bench/run.py` for the options.\n\n"
        )
    )
    start, end = text.find(START), text.find(END)
    if start >= 0 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text if text.endswith("\n") else text + "\n")

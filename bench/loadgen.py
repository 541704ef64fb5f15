"""Load generators and meters for ``bench.run``: wrk, a streaming client, /proc readings.

* ``run_wrk`` drives ``wrk --latency -s bench/wrk/chat.lua`` and parses its report;
* ``run_streams`` sends streaming chat completions with aiohttp and times the
  first chunk of each;
* ``process_tree``/``cpu_seconds``/``peak_rss_kib`` read ``/proc`` (Linux only);
* ``measure`` is one wrk run of a ``Scenario`` with those readings around it,
  including how busy the machine was with anything else (other people's jobs).

Loopback only: every URL must point at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

HERE = Path(__file__).resolve().parent
CHAT_LUA = HERE / "wrk" / "chat.lua"
CHAT_PATH = "/v1/chat/completions"
CHAT_BODY = (
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}],"max_tokens":16}'
)
# The same question through the other two client APIs (gatekeeper.ingress); the Responses
# one with store false, so its figure is the translation's cost, not a KV write's.
RESPONSES_PATH = "/v1/responses"
RESPONSES_BODY = '{"model":"gpt-4o-mini","input":"Hello!","max_output_tokens":16,"store":false}'
MESSAGES_PATH = "/v1/messages"
MESSAGES_BODY = (
    '{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"Hello!"}]}'
)
STREAM_BODY = (
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}],'
    '"max_tokens":64,"stream":true,"stream_options":{"include_usage":true}}'
)
STREAMS_TIMEOUT_S = 180.0  # bound on one whole run_streams call
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def loopback_only(url: str) -> str:
    host = urlsplit(url).hostname
    if host != "127.0.0.1":
        raise ValueError(f"benchmarks only target 127.0.0.1, not {host!r}")
    return url


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PCT_RE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([0-9.]+)(us|ms|s|m|h)\s*$", re.M)
_REQS_RE = re.compile(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", re.M)
_RPS_RE = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.M)
_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCK_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(text: str) -> WrkResult:
    """The figures of a ``wrk --latency`` report; raises ValueError if it has none."""
    pct = {int(m[1]): float(m[2]) * _UNITS_MS[m[3]] for m in _PCT_RE.finditer(text)}
    reqs, rps = _REQS_RE.search(text), _RPS_RE.search(text)
    if reqs is None or rps is None or 50 not in pct or 99 not in pct:
        raise ValueError(f"not a wrk --latency report:\n{text}")
    non2xx = _NON2XX_RE.search(text)
    sock = _SOCK_RE.search(text)
    return WrkResult(
        requests=int(reqs[1]),
        seconds=float(reqs[2]) * _UNITS_MS[reqs[3]] / 1000,
        rps=float(rps[1]),
        p50_ms=pct[50],
        p99_ms=pct[99],
        non_2xx=int(non2xx[1]) if non2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
    )


def wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        return "not installed"
    first = (out.stdout + out.stderr).splitlines()[0]
    return first.split(" Copyright", 1)[0].strip()  # "wrk 4.2.0 [epoll]"


def run_wrk(
    base_url: str,
    connections: int,
    duration_s: float,
    token: str | None,
    body: str = CHAT_BODY,
    threads: int = 1,
    headers: dict[str, str] | None = None,
    path: str = CHAT_PATH,
    unique: bool = False,
    tokens: Sequence[str] = (),
) -> tuple[WrkResult, str]:
    """One bounded wrk run against ``base_url`` + ``path``; returns (figures, raw report).
    ``unique``: no two requests alike (each message content gets its own prefix).
    ``tokens``: requests take these in turn instead of ``token`` (many keys)."""
    url = loopback_only(base_url.rstrip("/") + path)
    env = {**os.environ, "BENCH_TOKEN": token or "", "BENCH_BODY": body, "BENCH_PATH": path}
    env["BENCH_UNIQUE"] = str(time.time_ns() % 1_000_000_007) if unique else ""
    env["BENCH_TOKENS"] = "\n".join(tokens)
    env["BENCH_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in (headers or {}).items())
    seconds = max(1, round(duration_s))
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(CHAT_LUA),
        url,
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout), done.stdout


# --------------------------------------------------------------------------- /proc


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (gateway supervisor + workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
            todo += _children(p)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes, in seconds (vanished ones count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14, 15 of proc(5)
    return total / _CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children (wrk runs), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (``/proc/stat``: user … softirq, no steal).

    irq/softirq ticks are included because the kernel also charges them to whichever
    process was running, so process times (ours included) contain them too.
    """
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / _CLK_TCK


def peak_rss_kib(pids: list[int]) -> int:
    """The largest VmHWM (peak resident set) among the given processes, in KiB."""
    peak = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
                        break
        except OSError:
            continue
    return peak


# --------------------------------------------------------------------------- scenarios


@dataclass(slots=True)
class Target:
    """Something wrk can load: a URL, the token it needs, the processes that serve it."""

    name: str
    url: str
    token: str | None
    pids: Callable[[], list[int]]
    workers: int = 0  # gateway worker processes (0: not a gateway)
    headers: dict[str, str] = field(default_factory=dict)  # extra request headers (peers)
    path: str = CHAT_PATH  # the API it is asked through (chat, responses, messages)
    body: str = CHAT_BODY


@dataclass(frozen=True, slots=True)
class Sample:
    """One wrk run with the server's /proc readings around it."""

    wrk: WrkResult
    cpu_s: float
    nats_cpu_s: float
    rss_kib: int
    other_load: float  # cores busy with anything but wrk, the target, upstream, nats-server


@dataclass(slots=True)
class Scenario:
    target: Target
    connections: int
    samples: list[Sample] = field(default_factory=list)

    def median(self, get: Callable[[Sample], float]) -> float:
        return statistics.median(get(s) for s in self.samples)

    def per_1k(self, get: Callable[[Sample], float]) -> float:
        """Median over runs of ``get(sample)`` per 1,000 requests completed."""
        return self.median(lambda s: get(s) / max(1, s.wrk.requests) * 1000)


@dataclass(frozen=True, slots=True)
class Helpers:
    """Processes that serve every scenario: measured apart from the target's own."""

    nats_pid: int
    upstream_pid: int


def measure(target: Target, connections: int, duration: float, helpers: Helpers) -> Sample:
    """One wrk run, with CPU time of the target, nats-server and everything else around it."""
    pids = target.pids()
    side = [p for p in (helpers.upstream_pid,) if p not in pids]
    before = (
        cpu_seconds(pids),
        cpu_seconds([helpers.nats_pid]),
        cpu_seconds(side),
        children_cpu_seconds(),
        machine_busy_seconds(),
        time.monotonic(),
    )
    result, _ = run_wrk(
        target.url,
        connections,
        duration,
        target.token,
        body=target.body,
        headers=target.headers,
        path=target.path,
    )
    pids = target.pids()
    after = (
        cpu_seconds(pids),
        cpu_seconds([helpers.nats_pid]),
        cpu_seconds(side),
        children_cpu_seconds(),
        machine_busy_seconds(),
        time.monotonic(),
    )
    own, nats, upstream, wrk, machine, wall = (b - a for a, b in zip(before, after, strict=True))
    return Sample(
        result,
        own,
        nats,
        peak_rss_kib(pids),
        other_load=max(0.0, machine - own - nats - upstream - wrk) / wall,
    )


# --------------------------------------------------------------------------- streams


@dataclass(frozen=True, slots=True)
class StreamResult:
    requests: int
    failed: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    chunks: int
    seconds: float

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0


async def _one_stream(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[float, int] | None:
    started = time.perf_counter()
    ttft: float | None = None
    buf = bytearray()
    async with session.post(url, data=STREAM_BODY.encode(), headers=headers) as resp:
        if resp.status != 200:
            await resp.read()
            return None
        while True:
            data = await resp.content.readany()
            if not data:
                break
            buf += data
            if ttft is None and b"data:" in buf:
                ttft = time.perf_counter() - started
    events = [e for e in bytes(buf).split(b"\n\n") if e.startswith(b"data:")]
    if ttft is None or not events or events[-1].strip() != b"data: [DONE]":
        return None
    return ttft * 1000, len(events) - 1


async def _streams(
    base_url: str, token: str | None, n: int, concurrency: int, extra: dict[str, str]
) -> StreamResult:
    url = loopback_only(base_url.rstrip("/") + CHAT_PATH)
    headers = {"content-type": "application/json", **extra}
    if token:
        headers["authorization"] = f"Bearer {token}"
    ttfts: list[float] = []
    chunks = failed = 0
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        await _one_stream(session, url, headers)  # warm the connection

        async def one() -> None:
            nonlocal chunks, failed
            async with sem:
                try:
                    got = await _one_stream(session, url, headers)
                except (aiohttp.ClientError, TimeoutError):
                    got = None
            if got is None:
                failed += 1
            else:
                ttfts.append(got[0])
                chunks += got[1]

        started = time.perf_counter()
        async with asyncio.timeout(STREAMS_TIMEOUT_S):
            await asyncio.gather(*(one() for _ in range(n)))
        seconds = time.perf_counter() - started
    return StreamResult(
        n,
        failed,
        percentile(ttfts, 50) if ttfts else math.nan,
        percentile(ttfts, 99) if ttfts else math.nan,
        chunks,
        seconds,
    )


def run_streams(
    base_url: str,
    token: str | None,
    n: int = 200,
    concurrency: int = 8,
    headers: dict[str, str] | None = None,
) -> StreamResult:
    """``n`` streaming chat completions, ``concurrency`` at a time, on a fresh uvloop."""
    streams = _streams(base_url, token, n, concurrency, headers or {})
    try:
        import uvloop
    except ImportError:
        return asyncio.run(streams)
    return uvloop.run(streams)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s: every bench process ends this way."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)

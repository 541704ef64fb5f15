"""``python -m bench.soak`` (``make soak``): steady load on one gateway; does anything grow?

    .venv/bin/python -m bench.soak                  10 minutes (the default)
    .venv/bin/python -m bench.soak --minutes 3      shortened; say so when quoting it
    .venv/bin/python -m bench.soak --no-write       print the section, keep the doc

Starts, on 127.0.0.1: the fast fake upstream (``bench.upstream``), a nats-server with
JetStream and one ``gatekeeper serve`` (1 worker, audit strict) with ``bench.run``'s
helpers; loads it with ``wrk -c8`` (full pipeline token: budget, rpm, tpm all high)
in successive slices of at most 30 s, and every 10 s samples the gateway process
tree's resident set (VmRSS), open descriptors (``/proc/<pid>/fd``) and ``/readyz``
(NATS state, audit spool depth, the worker's asyncio task count).

After the warm-up (the first 20 % of the run), growth is the mean of the last two
samples against the mean of the first two after warm-up. Bars: RSS growth < 10 %,
descriptors other than client sockets flat within ``FD_SLACK``. The result is
appended to docs/chaos-soak.md under a dated heading. Exit status 1 if a bar is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats

from bench.loadgen import process_tree, run_wrk
from bench.run import check_ok, launch_gateway, start_server
from gatekeeper.bus.embedded import EmbeddedNats, free_port
from gatekeeper.bus.streams import AUDIT
from tests.harness.gateway import Issuer

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "chaos-soak.md"
SAMPLE_S = 10.0
SLICE_S = 30.0
CONNECTIONS = 8
RSS_BAR_PCT = 10.0
FD_SLACK = 4
TASK_SLACK = CONNECTIONS + 2  # request tasks in flight at a sample come and go


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the load began
    rss_kib: int  # VmRSS summed over the gateway process tree
    fds: int  # open descriptors summed over the tree
    clients: int  # of those, client connections (wrk's, open or not between slices)
    spool: int  # audit spool depth (-1: /readyz did not answer)
    nats: str
    tasks: int  # asyncio tasks in the worker (-1: not reported)


def vm_rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def client_connections(port: int) -> int:
    """ESTABLISHED TCP sockets whose local end is ``port`` (the gateway's side)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].split(":")[1], 16) == port:
            count += 1
    return count


def sample(pid: int, url: str, t: float) -> Sample:
    pids = process_tree(pid)
    clients = client_connections(int(url.rsplit(":", 1)[1]))
    rss, fds = sum(vm_rss_kib(p) for p in pids), sum(fd_count(p) for p in pids)
    try:
        ready = httpx.get(f"{url}/readyz", timeout=2).json()
        spool, state = int(ready["audit_spool_depth"]), str(ready["nats"])
        tasks = int(ready.get("asyncio_tasks", -1))
    except (httpx.HTTPError, ValueError, KeyError):
        spool, state, tasks = -1, "?", -1
    return Sample(t, rss, fds, clients, spool, state, tasks)


class Sampler:
    """A thread that takes a ``Sample`` every ``SAMPLE_S`` until stopped."""

    def __init__(self, pid: int, url: str) -> None:
        self.pid, self.url = pid, url
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            s = sample(self.pid, self.url, time.monotonic() - self.started)
            self.samples.append(s)
            log(
                f"t={s.t:5.0f}s  rss {s.rss_kib / 1024:7.1f} MiB  fds {s.fds:4d} "
                f"(clients {s.clients})  spool {s.spool}  tasks {s.tasks}"
            )
            if self._stop.wait(SAMPLE_S):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def audit_messages(url: str) -> int:
    async def count() -> int:
        nc = await nats.connect(url, connect_timeout=5)
        try:
            return int((await nc.jetstream().stream_info(AUDIT)).state.messages)
        finally:
            await nc.close()

    return asyncio.run(count())


@dataclass(frozen=True, slots=True)
class Verdict:
    rss_growth_pct: float
    fd_growth: int
    task_growth: int
    ok: bool


def judge(samples: list[Sample], warmup_s: float) -> Verdict:
    after = [s for s in samples if s.t >= warmup_s]
    if len(after) < 4:
        raise RuntimeError(f"only {len(after)} samples after warm-up; run longer")
    base_rss = (after[0].rss_kib + after[1].rss_kib) / 2
    end_rss = (after[-1].rss_kib + after[-2].rss_kib) / 2
    growth = 100 * (end_rss - base_rss) / base_rss
    own = [s.fds - s.clients for s in after]  # descriptors that are not client sockets
    fd_growth = round((own[-1] + own[-2]) / 2 - (own[0] + own[1]) / 2)
    tasks = [s.tasks for s in after]
    task_growth = round((tasks[-1] + tasks[-2]) / 2 - (tasks[0] + tasks[1]) / 2)
    ok = growth < RSS_BAR_PCT and abs(fd_growth) <= FD_SLACK and task_growth <= TASK_SLACK
    return Verdict(growth, fd_growth, task_growth, ok)


def render(
    minutes: float, samples: list[Sample], verdict: Verdict, totals: str, argv: list[str]
) -> str:
    verdict_word = "PASS" if verdict.ok else "FAIL"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    short = "" if minutes >= 10 else f" (shortened: {minutes:g} min instead of 10)"
    rows = "\n".join(
        f"| {s.t:5.0f} | {s.rss_kib / 1024:7.1f} | {s.fds:4d} | {s.clients:3d} "
        f"| {s.fds - s.clients:4d} | {s.spool:5d} | {s.tasks:5d} | {s.nats} |"
        for s in samples
    )
    return f"""
### Soak {stamp}{short}

Command: `{" ".join(["python -m bench.soak", *argv])}`; machine: {os.cpu_count()} CPUs (nproc),
{os.uname().sysname} {os.uname().release}. Load: wrk -c{CONNECTIONS}, slices of
<= {SLICE_S:.0f} s, full pipeline token, audit strict, 1 worker.

{totals}

| t (s) | RSS (MiB) | fds | client conns | fds − clients | spool | tasks | nats |
|------:|----------:|----:|-------------:|--------------:|------:|------:|------|
{rows}

After the warm-up (first 20 %): RSS growth **{verdict.rss_growth_pct:+.1f} %**
(bar < {RSS_BAR_PCT:.0f} %), fd growth (client sockets excluded)
**{verdict.fd_growth:+d}** (bar: within ±{FD_SLACK}), asyncio task growth
**{verdict.task_growth:+d}** (bar: at most +{TASK_SLACK}; in-flight requests are tasks too) —
**{verdict_word}**.
"""


def soak(minutes: float, stack: contextlib.ExitStack, tmp: Path) -> tuple[list[Sample], str]:
    up_port = free_port()
    upstream = start_server(stack, "bench.upstream", [], tmp, up_port)
    up_url = f"http://127.0.0.1:{up_port}"
    nats_server = EmbeddedNats(tmp / "nats", name="soak-nats")
    stack.callback(nats_server.stop)
    nats_server.start()
    issuer = Issuer(tmp / "issuer")
    token = issuer.token("soak", budget_tokens=10**12, rpm=10**9, tpm=10**12)
    gw = launch_gateway(stack, tmp, up_url, nats_server.url, issuer, 1)
    check_ok(gw.url, token)
    assert gw.proc is not None and upstream.pid
    total_s = minutes * 60
    requests = non_2xx = errors = 0
    rates: list[float] = []
    with Sampler(gw.proc.pid, gw.url) as sampler:
        while (left := total_s - (time.monotonic() - sampler.started)) >= 1:
            result, _ = run_wrk(gw.url, CONNECTIONS, min(SLICE_S, left), token)
            requests += result.requests
            non_2xx += result.non_2xx
            errors += result.socket_errors
            rates.append(result.rps)
        time.sleep(0.5)
    time.sleep(2)  # let the spool drain before counting BH_AUDIT
    records = audit_messages(nats_server.url)
    totals = (
        f"{requests} requests in {len(rates)} slices ({min(rates):.0f}–{max(rates):.0f} req/s), "
        f"{non_2xx} non-2xx, {errors} socket errors; BH_AUDIT holds {records} records "
        f"(requests + 1 check, + any wrk left in flight at a slice end)."
    )
    return sampler.samples, totals


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    p.add_argument("--no-write", action="store_true", help="print the section, keep the doc")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not 1 <= a.minutes <= 120:
        p.error("--minutes must be between 1 and 120")
    args = sys.argv[1:] if argv is None else argv
    with (
        tempfile.TemporaryDirectory(prefix="gk-soak-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        samples, totals = soak(a.minutes, stack, Path(tmp))
        stack.close()
    verdict = judge(samples, 0.2 * a.minutes * 60)
    section = render(a.minutes, samples, verdict, totals, args)
    print(section)
    if not a.no_write:
        with DOC.open("a") as f:
            f.write(section)
        log(f"appended to {DOC}")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())

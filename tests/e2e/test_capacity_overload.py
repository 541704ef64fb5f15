"""Critical latency under overload: the issue's bar, end to end (httpx, real NATS).

One gateway with ``capacity.max_in_flight`` slots in front of a fake OpenAI upstream that
takes 200-300 ms to answer each request, so the upstream time dwarfs the gateway's own.
Critical latency is measured first on an idle node, then while batch and standard clients
flood it with more requests than it has slots and queue places. The bar: critical p99
within 1.5x of the idle figure, batch shed (429/503, ``retry-after``, the OpenAI error
shape), no critical request shed. The flood runs in a process of its own, so the test
process (the critical clients and the fake upstream) does not share its interpreter lock
with 40 busy clients: what is timed is the gateway, not the test's own client.

Why it can hold without pre-emption: critical is granted first, so a critical arrival
waits only for the next slot to free. With the ``SLOTS`` holds spread at random over a
mean upstream time ``h``, the 99th percentile of that wait is about
``h * (1 - 0.01 ** (1 / SLOTS))``: some 60 ms for 16 slots of 250 ms, a fifth of a critical
request's own time. The upstream times vary (as real ones do): identical ones would keep
slots in lockstep (one stall of the gateway's loop grants several releases together, and
equal holds keep them together), the slots would free in waves, and a critical arrival
could wait a whole upstream time.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gatekeeper.capacity.gate import SHED_REASONS
from tests.conftest import openai_provider
from tests.e2e.test_capacity_lanes import until
from tests.e2e.test_observability import metric_sum
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # a latency ratio: nothing else running

MODEL = "gpt-4o-mini"
ADMIN = "adm1n-overload-7c1e"
UPSTREAM_S = (0.2, 0.3)  # an upstream answer takes a uniform random time in this range
SLOTS = 16  # capacity.max_in_flight
CRITICAL_CLIENTS = 4  # each sends its requests one after another
CRITICAL_EACH = 25  # requests per critical client and phase: 100 samples per phase
BATCH_CLIENTS = 30  # with the standard ones: 40 flooding clients > 16 slots + 14 queue places
STANDARD_CLIENTS = 10  # fits the standard lane's queue: standard is queued, never shed


# STALLS: a stall of the whole machine (a shared CI host) delays every request in flight
# at once. With 4 critical clients that makes up to 4 of a window's 100 samples slow, past
# its p99 (the second slowest), whatever the scheduler does. So when the first loaded window
# misses the bar, one more is measured and the better one decides; both are printed, and
# two misses in a row fail the test.


def p99(samples: list[float]) -> float:
    """Nearest-rank 99th percentile (of 100 samples: the second slowest)."""
    ordered = sorted(samples)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


def metrics(gw: GatewayProcess) -> str:
    headers = {"authorization": f"Bearer {ADMIN}"}
    return httpx.get(f"{gw.url}/metrics", headers=headers, timeout=5).text


def shed_total(gw: GatewayProcess) -> float:
    return metric_sum(metrics(gw), "gatekeeper_lane_shed_total")


def post(client: httpx.Client, key: str, text: str) -> httpx.Response:
    return client.post(
        "/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": text}]},
    )


def critical_latencies(
    gw: GatewayProcess, keys: list[str], each: int = CRITICAL_EACH
) -> tuple[list[float], list[int]]:
    """(seconds, status) of every request of one sequential client per key."""
    took: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def run(key: str) -> None:
        with httpx.Client(base_url=gw.base_url, timeout=30) as client:
            for i in range(each):
                started = time.perf_counter()
                status = post(client, key, f"critical {i}").status_code
                with lock:
                    took.append(time.perf_counter() - started)
                    statuses.append(status)

    threads = [threading.Thread(target=run, args=(key,)) for key in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return took, statuses


def flood(base_url: str, keys: dict[str, str], stop: Any, out: Any) -> None:
    """The flooding clients (run in a spawned process: see the module docstring).

    ``STANDARD_CLIENTS`` + ``BATCH_CLIENTS`` clients send one request after another until
    ``stop`` is set; a shed one waits its ``retry-after``, as the openai SDK's retries do.
    Puts ``{"served": {lane: n}, "shed": [(lane, status, retry-after, body)], "other": []}``
    on ``out`` at the end, or ``{"error": ...}`` if a client failed.
    """
    try:
        asyncio.run(_flood(base_url, keys, stop, out))
    except Exception as exc:  # the test process reports it
        out.put({"error": repr(exc)})


async def _flood(base_url: str, keys: dict[str, str], stop: Any, out: Any) -> None:
    served = {"batch": 0, "standard": 0}
    shed: list[tuple[str, int, str, Any]] = []
    other: list[int] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:

        async def one(lane: str) -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": lane}]}
            headers = {"authorization": f"Bearer {keys[lane]}"}
            while not stop.is_set():
                reply = await client.post("/chat/completions", headers=headers, json=body)
                if reply.status_code == 200:
                    served[lane] += 1
                    continue
                retry = reply.headers.get("retry-after", "")
                if reply.status_code in (429, 503):
                    shed.append((lane, reply.status_code, retry, reply.json()))
                else:
                    other.append(reply.status_code)
                await asyncio.sleep(float(retry) if retry.isdigit() else 1.0)

        tasks = []
        for lane in ["standard"] * STANDARD_CLIENTS + ["batch"] * BATCH_CLIENTS:
            tasks.append(asyncio.create_task(one(lane)))
            await asyncio.sleep(UPSTREAM_S[0] / SLOTS)  # staggered: no first wave of slots
        await asyncio.to_thread(stop.wait)  # set by the test process
        await asyncio.gather(*tasks)
    out.put({"served": served, "shed": shed, "other": other})


def test_critical_p99_stays_within_1_5x_of_unloaded_while_batch_is_shed(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI, issuer: Issuer
) -> None:
    rng = random.Random(19)
    fake_openai.script.push(  # more than the test sends
        *(Behavior(first_byte_delay=rng.uniform(*UPSTREAM_S)) for _ in range(5000))
    )
    gw = start_gateway(
        providers=[openai_provider("openai", fake_openai)],
        models=[chat_model(MODEL, "openai")],
        capacity={
            "max_in_flight": SLOTS,
            "max_queued": 24,  # never reached: 4 batch + 10 standard + 4 critical
            "lanes": {"batch": {"queue": 4}, "standard": {"queue": STANDARD_CLIENTS}},
        },
        server={"admin_token": ADMIN},
    )
    critical = [issuer.token(tenant="ops", priority="critical") for _ in range(CRITICAL_CLIENTS)]
    critical_latencies(gw, critical, each=3)  # warm up: connections, token caches

    idle, idle_statuses = critical_latencies(gw, critical)

    spawn = multiprocessing.get_context("spawn")
    stop, out = spawn.Event(), spawn.Queue()
    keys = {"batch": issuer.token(priority="batch"), "standard": issuer.token()}
    flooding = spawn.Process(target=flood, args=(gw.base_url, keys, stop, out))
    flooding.start()
    unloaded_p99 = p99(idle)
    windows: list[float] = []  # the loaded p99 of each window measured
    try:
        until("the batch lane to overflow", lambda: shed_total(gw) > 0)
        for _ in range(2):  # a second window only if the first misses (see STALLS)
            loaded, loaded_statuses = critical_latencies(gw, critical)
            assert loaded_statuses == [200] * CRITICAL_CLIENTS * CRITICAL_EACH
            windows.append(p99(loaded))
            if windows[-1] <= 1.5 * unloaded_p99:
                break
    finally:
        stop.set()
        result = out.get(timeout=30)
        flooding.join(30)
    shown = ", ".join(f"{w * 1000:.0f} ms" for w in windows)
    print(f"critical p99: unloaded {unloaded_p99 * 1000:.0f} ms, loaded {shown}")
    assert idle_statuses == [200] * CRITICAL_CLIENTS * CRITICAL_EACH
    assert unloaded_p99 >= UPSTREAM_S[0]  # the upstream time is in the figure
    assert min(windows) <= 1.5 * unloaded_p99, (unloaded_p99, windows)

    # the flood exceeded slots and queues: batch, the lowest lane, was shed, and only batch
    assert "error" not in result, result
    assert result["other"] == []
    assert {lane for lane, *_ in result["shed"]} == {"batch"}
    assert result["served"]["standard"] > 0 and result["served"]["batch"] > 0  # not starved
    for _, status, retry_after, body in result["shed"]:
        assert status in (429, 503) and int(retry_after) >= 1
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] in SHED_REASONS
        assert body["error"]["type"] == ("requests" if status == 429 else "server_error")
        assert "at capacity" in body["error"]["message"]
    text = metrics(gw)
    assert metric_sum(text, "gatekeeper_lane_shed_total", lane="batch") == len(result["shed"])
    assert metric_sum(text, "gatekeeper_lane_shed_total", lane="critical") == 0
    assert metric_sum(text, "gatekeeper_lane_shed_total", lane="standard") == 0
    assert metric_sum(text, "gatekeeper_lane_wait_seconds_count", lane="critical") > 0  # it queued

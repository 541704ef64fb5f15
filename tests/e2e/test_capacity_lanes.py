"""Priority lanes, reserved shares and load shedding end to end: openai SDK, real NATS.

One gateway with ``capacity.max_in_flight`` of 1 or 2 in front of a fake OpenAI upstream
that holds every answer until the test releases it (``Behavior.hold``), so the node is
saturated on demand. Queue depths are read from ``/metrics`` (sampled at scrape time);
the order the upstream saw requests in is its request log.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import nats
import openai
import orjson
import pytest

from gatekeeper.bus.streams import AUDIT
from tests.conftest import openai_provider
from tests.e2e.test_budget_leaks import used
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model

pytestmark = pytest.mark.slow  # multi-process and timing: make check runs these per file

MODEL = "gpt-4o-mini"


@pytest.fixture
def hold(fake_openai: FakeOpenAI) -> Iterator[threading.Event]:
    event = threading.Event()
    fake_openai.script.default = Behavior(hold=event)
    yield event
    event.set()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(16) as ex:
        yield ex


def gateway(
    start: Callable[..., GatewayProcess], fake: FakeOpenAI, **capacity: Any
) -> GatewayProcess:
    timeouts = {"connect_s": 2, "first_byte_s": 30, "total_s": 30}
    return start(
        providers=[openai_provider("openai", fake, timeouts=timeouts)],
        models=[chat_model(MODEL, "openai")],
        capacity=capacity,
    )


def ask(gw: GatewayProcess, key: str, text: str, **headers: str) -> tuple[int, Any, Any]:
    """(status, headers, body or error body) of one chat request via the SDK."""
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=40)
    messages: Any = [{"role": "user", "content": text}]
    try:
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, extra_headers=headers
        )
    except openai.APIStatusError as err:
        return err.status_code, err.response.headers, err.body
    return raw.status_code, raw.headers, raw.parse()


def seen(fake: FakeOpenAI) -> list[str]:
    return [str(r["messages"][0]["content"]) for r in fake.script.requests]  # type: ignore[index]


def until(what: str, cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def depths(gw: GatewayProcess) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{gw.url}/metrics", timeout=5).text.splitlines():
        if line.startswith("gatekeeper_lane_queue_depth{"):
            out[line.split('lane="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return out


def queued(gw: GatewayProcess) -> float:
    return sum(depths(gw).values())


def records(
    nats_url: str, want: int, pick: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + 10
            while True:
                info = await js.stream_info(AUDIT)
                found = []
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    record = orjson.loads((await js.get_msg(AUDIT, seq)).data)
                    if pick(record):
                        found.append(record)
                if len(found) >= want or time.monotonic() > deadline:
                    return found
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    return asyncio.run(read())


def test_critical_overtakes_queued_standard_and_batch(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    issuer: Issuer,
    hold: threading.Event,
    pool: ThreadPoolExecutor,
) -> None:
    gw = gateway(start_gateway, fake_openai, max_in_flight=1)
    batch, std = issuer.token(priority="batch"), issuer.token()
    crit = issuer.token(priority="critical")
    futures: list[Future[tuple[int, Any, Any]]] = [pool.submit(ask, gw, batch, "first")]
    until("the first upstream call", lambda: len(fake_openai.script.requests) == 1)
    for n, (key, text) in enumerate(
        [(batch, "b1"), (batch, "b2"), (std, "s1"), (std, "s2"), (crit, "c1")]
    ):
        futures.append(pool.submit(ask, gw, key, text))
        until(f"{text} queued", lambda n=n: queued(gw) == n + 1)  # type: ignore[misc]
    # a critical key sending its own work as batch goes to the batch lane (header lowers)
    futures.append(pool.submit(ask, gw, crit, "b3", **{"x-gatekeeper-priority": "batch"}))
    # a standard key cannot raise itself with the header
    until("b3 queued", lambda: depths(gw).get("batch") == 3)
    futures.append(pool.submit(ask, gw, std, "s3", **{"x-gatekeeper-priority": "critical"}))
    until("s3 queued", lambda: depths(gw).get("standard") == 3)
    hold.set()
    assert [f.result()[0] for f in futures] == [200] * 8
    assert seen(fake_openai) == ["first", "c1", "s1", "s2", "s3", "b1", "b2", "b3"]
    until("queues empty", lambda: queued(gw) == 0)


def test_reserved_share_stays_available_while_another_tenant_floods(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    issuer: Issuer,
    hold: threading.Event,
    pool: ThreadPoolExecutor,
) -> None:
    gw = gateway(start_gateway, fake_openai, max_in_flight=2, reserved={"gold": 1})
    flood = issuer.token(tenant="other", priority="critical")
    futures = [pool.submit(ask, gw, flood, f"o{i}") for i in range(4)]
    until("the flood queued", lambda: queued(gw) == 3)  # one runs in the shared slot
    assert seen(fake_openai) == ["o0"] or len(seen(fake_openai)) == 1
    gold = pool.submit(ask, gw, issuer.token(tenant="gold", priority="batch"), "gold")
    until("gold upstream", lambda: "gold" in seen(fake_openai))  # past 3 queued criticals
    assert queued(gw) == 3
    hold.set()
    assert gold.result()[0] == 200
    assert [f.result()[0] for f in futures] == [200] * 4


def test_shedding_429_503_with_retry_after_one_record_each_nothing_charged(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    issuer: Issuer,
    nats_server: Any,
    hold: threading.Event,
    pool: ThreadPoolExecutor,
) -> None:
    gw = gateway(
        start_gateway,
        fake_openai,
        max_in_flight=1,
        max_queued=2,
        retry_after_s=2,
        lanes={"batch": {"queue": 1}, "standard": {"max_wait_s": 1}},
    )
    keys = {
        n: issuer.token(priority=p, budget_tokens=10_000)
        for n, p in [
            ("first", "critical"),
            ("b1", "batch"),
            ("b2", "batch"),
            ("s1", "standard"),
            ("c1", "critical"),
        ]
    }
    first = pool.submit(ask, gw, keys["first"], "first")
    until("the first upstream call", lambda: len(fake_openai.script.requests) == 1)
    b1 = pool.submit(ask, gw, keys["b1"], "b1")
    until("b1 queued", lambda: queued(gw) == 1)
    status, headers, body = ask(gw, keys["b2"], "b2")  # the batch lane holds 1
    assert status == 429 and headers["retry-after"] == "2"
    assert body["code"] == "lane_queue_full" and "batch lane" in body["message"]
    s1 = pool.submit(ask, gw, keys["s1"], "s1")  # standard: sheds after max_wait_s
    until("s1 queued", lambda: queued(gw) == 2)
    c1 = pool.submit(ask, gw, keys["c1"], "c1")  # all queues full: evicts batch's b1
    status, headers, body = b1.result()
    assert status == 503 and headers["retry-after"] == "2"
    assert body["code"] == "shed_for_priority"
    status, headers, body = s1.result()
    assert status == 503 and body["code"] == "queue_wait_exceeded" and headers["retry-after"]
    hold.set()
    assert first.result()[0] == 200 and c1.result()[0] == 200
    assert seen(fake_openai) == ["first", "c1"]  # no shed request reached the upstream
    shed = records(nats_server.url, 3, lambda r: r["status"] in (429, 503))
    assert sorted((r["status"], r["error_code"]) for r in shed) == [
        (429, "lane_queue_full"),
        (503, "queue_wait_exceeded"),
        (503, "shed_for_priority"),
    ]
    assert all(r["attempts"] == [] and r["total_tokens"] == 0 for r in shed)
    for n in ("b1", "b2", "s1"):
        assert used(gw, keys[n])["used"] == 0
    metrics = httpx.get(f"{gw.url}/metrics", timeout=5).text
    assert 'gatekeeper_lane_shed_total{lane="batch",reason="lane_queue_full"} 1.0' in metrics
    assert 'gatekeeper_lane_wait_seconds_count{lane="standard"} 1.0' in metrics


def test_hangup_while_queued_releases_the_place_and_writes_one_499(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    issuer: Issuer,
    nats_server: Any,
    hold: threading.Event,
    pool: ThreadPoolExecutor,
) -> None:
    gw = gateway(start_gateway, fake_openai, max_in_flight=1)
    key = issuer.token(budget_tokens=10_000)
    first = pool.submit(ask, gw, key, "first")
    until("the first upstream call", lambda: len(fake_openai.script.requests) == 1)
    gone = issuer.token(tenant="leaver", budget_tokens=10_000)
    c = openai.OpenAI(base_url=gw.base_url, api_key=gone, max_retries=0, timeout=1.0)
    messages: Any = [{"role": "user", "content": "gone"}]
    waiting = pool.submit(c.chat.completions.create, model=MODEL, messages=messages)
    until("queued", lambda: queued(gw) == 1)
    with pytest.raises(openai.APITimeoutError):
        waiting.result()  # the client hangs up while queued
    until("its place released", lambda: queued(gw) == 0)
    after = pool.submit(ask, gw, key, "after")
    hold.set()
    assert first.result()[0] == 200 and after.result()[0] == 200
    assert seen(fake_openai) == ["first", "after"]
    (rec,) = records(nats_server.url, 1, lambda r: r["tenant"] == "leaver")
    assert rec["status"] == 499 and rec["error_code"] == "client_disconnected"
    assert used(gw, gone)["used"] == 0


def test_a_provider_limit_queues_its_own_requests_only(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    issuer: Issuer,
    hold: threading.Event,
    pool: ThreadPoolExecutor,
) -> None:
    """capacity.providers: slow's 1 slot is taken, its next request waits, fast's runs."""
    timeouts = {"connect_s": 2, "first_byte_s": 30, "total_s": 30}
    gw = start_gateway(
        providers=[
            openai_provider(name, fake_openai, timeouts=timeouts) for name in ("slow", "fast")
        ],
        models=[chat_model("m-slow", "slow", MODEL), chat_model("m-fast", "fast", MODEL)],
        capacity={"max_in_flight": 4, "providers": {"slow": 1}},
    )
    key = issuer.token()

    def one(model: str, text: str) -> int:
        c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=40)
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
        return 200

    futures = [pool.submit(one, "m-slow", "slow1")]
    until("slow1 upstream", lambda: seen(fake_openai) == ["slow1"])
    futures.append(pool.submit(one, "m-slow", "slow2"))
    until("slow2 queued", lambda: queued(gw) == 1)
    futures.append(pool.submit(one, "m-fast", "fast1"))
    until("fast1 upstream past the queued slow2", lambda: "fast1" in seen(fake_openai))
    assert queued(gw) == 1 and "slow2" not in seen(fake_openai)
    hold.set()
    assert [f.result() for f in futures] == [200] * 3
    assert seen(fake_openai) == ["slow1", "fast1", "slow2"]


def test_a_provider_reservation_lets_its_tenant_past_the_queue_of_others(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    issuer: Issuer,
    hold: threading.Event,
    pool: ThreadPoolExecutor,
) -> None:
    """capacity.provider_reserved: 1 of openai's 2 slots is big's; acme gets the other one
    and queues for more, while big's request goes upstream at once, past acme's queue."""
    timeouts = {"connect_s": 2, "first_byte_s": 30, "total_s": 30}
    gw = start_gateway(
        providers=[openai_provider("openai", fake_openai, timeouts=timeouts)],
        models=[chat_model(MODEL, "openai")],
        capacity={
            "max_in_flight": 8,
            "providers": {"openai": 2},
            "provider_reserved": {"openai": {"big": 1}},
        },
    )
    acme, big = issuer.token(tenant="acme"), issuer.token(tenant="big")
    futures = [pool.submit(ask, gw, acme, "acme1")]
    until("acme1 upstream", lambda: seen(fake_openai) == ["acme1"])
    futures.append(pool.submit(ask, gw, acme, "acme2"))  # big's slot is idle, and not lent
    until("acme2 queued", lambda: queued(gw) == 1)
    futures.append(pool.submit(ask, gw, big, "big1"))
    until("big1 upstream past the queued acme2", lambda: "big1" in seen(fake_openai))
    assert queued(gw) == 1 and "acme2" not in seen(fake_openai)
    hold.set()
    assert [f.result()[0] for f in futures] == [200] * 3
    assert seen(fake_openai) == ["acme1", "big1", "acme2"]


def test_a_model_limit_queues_that_model_only_on_a_shared_provider(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    issuer: Issuer,
    hold: threading.Event,
    pool: ThreadPoolExecutor,
) -> None:
    """capacity.models: m-slow's 1 slot is taken, its next request waits, m-fast's runs."""
    timeouts = {"connect_s": 2, "first_byte_s": 30, "total_s": 30}
    gw = start_gateway(
        providers=[openai_provider("openai", fake_openai, timeouts=timeouts)],
        models=[chat_model("m-slow", "openai", MODEL), chat_model("m-fast", "openai", MODEL)],
        capacity={"max_in_flight": 4, "providers": {"openai": 3}, "models": {"m-slow": 1}},
    )
    key = issuer.token()

    def one(model: str, text: str) -> int:
        c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=40)
        c.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
        return 200

    futures = [pool.submit(one, "m-slow", "slow1")]
    until("slow1 upstream", lambda: seen(fake_openai) == ["slow1"])
    futures.append(pool.submit(one, "m-slow", "slow2"))
    until("slow2 queued", lambda: queued(gw) == 1)
    futures += [pool.submit(one, "m-fast", f"fast{i}") for i in (1, 2)]
    until("both m-fast requests upstream", lambda: len(seen(fake_openai)) == 3)
    assert queued(gw) == 1 and "slow2" not in seen(fake_openai)
    futures.append(pool.submit(one, "m-fast", "fast3"))  # the provider's 3 slots are taken
    until("fast3 queued for the provider", lambda: queued(gw) == 2)
    hold.set()
    assert [f.result() for f in futures] == [200] * 5
    order = seen(fake_openai)
    assert order[0] == "slow1" and sorted(order[1:3]) == ["fast1", "fast2"]
    assert sorted(order[3:]) == ["fast3", "slow2"]
    until("queues empty", lambda: queued(gw) == 0)

"""Provider limits learned from 429s, end to end: openai SDK, real NATS, a real upstream.

The fake OpenAI upstream takes 3 requests at once and answers a 4th with 429 and
``retry-after`` (OpenAI's concurrency limits do the same). Twelve clients keep asking
through a gateway whose provider limit is 16. With ``capacity.learn`` the gateway learns
a limit near 3 within a second and queues the rest in its lanes, so the upstream stops
pushing back and most clients get answers. Without it most requests keep getting 429s.
The breaker is set out of the way and retries off: only the learned limit decides what
reaches the upstream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model

pytestmark = pytest.mark.slow  # multi-process and timing: make check runs these per file

MODEL = "gpt-4o-mini"
UPSTREAM_ROOM = 3
CLIENTS = 12
WARM_S, MEASURE_S = 1.5, 2.5


def limit_of(gw: GatewayProcess, provider: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(f'gatekeeper_capacity_limit{{provider="{provider}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no gatekeeper_capacity_limit for {provider}")


def load(gw: GatewayProcess, key: str, fake: FakeOpenAI) -> tuple[dict[int, int], int, int]:
    """Twelve clients for WARM_S + MEASURE_S; (client statuses, upstream calls, upstream
    429s), the last two over the measured part only."""
    statuses: dict[int, int] = {}
    lock, stop = threading.Lock(), threading.Event()

    def client() -> None:
        c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=30)
        while not stop.is_set():
            try:
                c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
                status = 200
            except openai.APIStatusError as err:
                status = err.status_code
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

    with ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(CLIENTS):
            pool.submit(client)
        time.sleep(WARM_S)
        calls0, over0 = len(fake.script.requests), fake.over_limit
        time.sleep(MEASURE_S)
        calls1, over1 = len(fake.script.requests), fake.over_limit
        stop.set()
    return statuses, calls1 - calls0, over1 - over0


@pytest.mark.parametrize("learn", [True, False], ids=["learned", "fixed"])
def test_the_gateway_learns_the_upstreams_concurrency_from_its_429s(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    issuer: Issuer,
    learn: bool,
) -> None:
    fake_openai.max_concurrent = UPSTREAM_ROOM
    fake_openai.script.default = Behavior(first_byte_delay=0.05)
    gw = start_gateway(
        providers=[openai_provider("openai", fake_openai)],
        models=[chat_model(MODEL, "openai")],
        capacity={
            "max_in_flight": 64,
            "providers": {"openai": 16},
            "learn": {"enabled": learn},
        },
        failover={"breaker_failures": 1_000_000, "same_provider_retries": 0},
    )
    assert limit_of(gw, "openai") == 16
    statuses, calls, over = load(gw, issuer.token(), fake_openai)
    assert set(statuses) <= {200, 429, 503}, statuses
    assert fake_openai.peak <= UPSTREAM_ROOM
    pushed_back = over / (over + calls)
    if learn:
        assert 1 <= limit_of(gw, "openai") <= UPSTREAM_ROOM + 2
        assert pushed_back < 0.25, (over, calls)
        assert statuses[200] > sum(statuses.values()) - statuses[200], statuses
    else:
        assert limit_of(gw, "openai") == 16
        assert pushed_back > 0.5, (over, calls)

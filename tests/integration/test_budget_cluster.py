"""Distributed budgets on real processes: gateways, one real nats-server, one fake upstream.

Every request here reserves exactly what it costs: the prompt ``"hello there"`` is
estimated at 10 tokens, ``max_tokens`` is 20, and the fake upstream reports 10 + 20
usage. So a budget that is a multiple of ``COST`` can be spent to the last token, and
any token past it is overspend, which docs/budget.md bounds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import nats
import orjson
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.bus.streams import ALERTS
from gatekeeper.config import LimitsConfig
from gatekeeper.routing.router import estimate_tokens
from tests.conftest import openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model

MESSAGES = [{"role": "user", "content": "hello there"}]
PROMPT_TOKENS = estimate_tokens(MESSAGES)  # the gateway's own estimate: 10
MAX_TOKENS = 20
COST = PROMPT_TOKENS + MAX_TOKENS  # reserved == used == 30 tokens per request
BODY = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": MAX_TOKENS}

GOSSIP_INTERVAL_S = LimitsConfig().gossip_interval_ms / 1000
PROPAGATION_S = 0.05  # NATS publish + KV watch delivery on loopback, generously
D_S = GOSSIP_INTERVAL_S + PROPAGATION_S  # "d" of docs/budget.md

StartGateway = Callable[..., GatewayProcess]


@pytest.fixture
def upstream(fake_openai: FakeOpenAI) -> FakeOpenAI:
    """The fake upstream reports exactly the reserved usage, after a short think."""
    assert PROMPT_TOKENS == 10
    fake_openai.script.default = Behavior(
        prompt_tokens=PROMPT_TOKENS, completion_tokens=MAX_TOKENS, first_byte_delay=0.02
    )
    return fake_openai


def start_nodes(
    start_gateway: StartGateway, fake: FakeOpenAI, n: int, **extra: Any
) -> list[GatewayProcess]:
    """``n`` gateway processes on the same nats-server; each has its own port, so node id."""
    return [
        start_gateway(
            providers=[openai_provider("openai", fake)],
            models=[chat_model("gpt-4o-mini", "openai")],
            **extra,
        )
        for _ in range(n)
    ]


# ---------------------------------------------------------------------- clients


@dataclass(frozen=True, slots=True)
class Outcome:
    node: int
    status: int
    code: str | None
    sent: float
    done: float


class Key:
    """One API key as its client sees it: chat with any node, read any node's usage view."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.http = httpx.Client(timeout=20, headers={"authorization": f"Bearer {token}"})

    def __enter__(self) -> Key:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def chat(self, gw: GatewayProcess) -> httpx.Response:
        return self.http.post(f"{gw.base_url}/chat/completions", json=BODY)

    def usage(self, gw: GatewayProcess) -> dict[str, Any]:
        response = self.http.get(f"{gw.base_url}/gatekeeper/usage")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def used(self, gw: GatewayProcess) -> int:
        """``tok.used`` as ``gw`` sees it, once nothing is in flight there."""
        counter = self.usage(gw)["counters"]["tok"]
        assert counter["in_flight"] == 0
        return int(counter["used"])

    def spend(self, gw: GatewayProcess, requests: int) -> None:
        """Send ``requests`` requests that must all succeed."""
        for _ in range(requests):
            response = self.chat(gw)
            assert response.status_code == 200, response.text

    def spend_until_refused(self, gw: GatewayProcess, cap: int = 1000) -> int:
        """Send requests one at a time until one is refused; returns how many succeeded."""
        for admitted in range(cap):
            response = self.chat(gw)
            if response.status_code != 200:
                assert response.status_code == 429, response.text
                assert error_code(response) == "insufficient_quota"
                return admitted
        raise AssertionError(f"{cap} requests and still admitted")

    def converge(self, nodes: list[GatewayProcess], value: int, timeout: float) -> float:
        """Poll until every node reports ``tok.used == value``; returns the seconds it took."""
        started = time.monotonic()
        seen: list[int] = []
        while time.monotonic() - started < timeout:
            seen = [self.used(gw) for gw in nodes]
            if seen == [value] * len(nodes):
                return time.monotonic() - started
            time.sleep(0.005)
        raise AssertionError(f"nodes did not all reach {value} within {timeout}s: {seen}")


def error_code(response: httpx.Response) -> str | None:
    if response.status_code == 200:
        return None
    return str(response.json()["error"]["code"])


def hammer(
    nodes: list[GatewayProcess], token: str, clients: int, deadline_s: float = 30.0
) -> list[Outcome]:
    """``clients`` threads send round-robin over ``nodes`` until every node has refused.

    A node that refused once never admits again here (usage only grows), so the run
    ends when each node answered 429 insufficient_quota at least once.
    """
    refused: set[int] = set()
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def client(first: int) -> None:
        k = first
        with Key(token) as key:
            while time.monotonic() < stop_at:
                with lock:
                    if len(refused) == len(nodes):
                        return
                node, k = k % len(nodes), k + 1
                sent = time.monotonic()
                response = key.chat(nodes[node])
                outcome = Outcome(
                    node, response.status_code, error_code(response), sent, time.monotonic()
                )
                with lock:
                    outcomes.append(outcome)
                    if outcome.code == "insufficient_quota":
                        refused.add(node)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    assert len(refused) == len(nodes), f"not every node refused within {deadline_s}s"
    return outcomes


# ---------------------------------------------------------------------- the bound


def max_admissions_within(outcomes: list[Outcome], d: float) -> int:
    """Most admissions one node can have made in any interval of length ``d``.

    A request is admitted somewhere between sending and its answer, so every
    admitted request whose [sent, done] meets the interval is counted (an upper
    bound on ``A_i(t − d, t]`` of docs/budget.md).
    """
    worst = 0
    for node in {o.node for o in outcomes}:
        mine = [o for o in outcomes if o.node == node and o.status == 200]
        for end in (o.sent + d for o in mine):
            worst = max(worst, sum(1 for o in mine if o.sent <= end and o.done > end - d))
    return worst


def documented_bound(nodes: int, limit: int, per_d: int, r_max: int) -> int:
    """``(N − 1) × min(L, ⌈r·d⌉ × R_max)``, with ⌈r·d⌉ measured as ``per_d``."""
    return (nodes - 1) * min(limit, per_d * r_max)


# ---------------------------------------------------------------------- alerts


def alert_line(payload: dict[str, Any]) -> int | str:
    """A budget alert's line: its threshold in percent, or ``"exhausted"``."""
    if payload["type"] == "budget_exhausted":
        return "exhausted"
    return int(payload["threshold_pct"])


async def stored_alerts(js: JetStreamContext, key_id: str) -> Counter[int | str]:
    """Budget alerts of ``key_id`` kept in BH_ALERTS, counted per line."""
    info = await js.stream_info(ALERTS)
    found: Counter[int | str] = Counter()
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        payload = orjson.loads((await js.get_msg(ALERTS, seq)).data)
        if payload.get("key_id") == key_id:
            assert payload["counter"].startswith("tok.")
            found[alert_line(payload)] += 1
    return found


# ---------------------------------------------------------------------- tests


@pytest.mark.slow
class TestOverspendBound:
    def test_three_nodes_stay_within_the_documented_bound(
        self, start_gateway: StartGateway, upstream: FakeOpenAI, issuer: Issuer
    ) -> None:
        """Three nodes under concurrent load overspend at most (N−1)·min(L, ⌈r·d⌉·R_max)."""
        nodes = start_nodes(start_gateway, upstream, 3)
        limit = 400 * COST
        token = issuer.token(budget_tokens=limit, budget_period="total")

        outcomes = hammer(nodes, token, clients=6)

        assert {o.status for o in outcomes} <= {200, 429}
        assert {o.code for o in outcomes if o.status == 429} == {"insufficient_quota"}
        spent = COST * sum(o.status == 200 for o in outcomes)
        per_d = max_admissions_within(outcomes, D_S)
        bound = documented_bound(len(nodes), limit, per_d, COST)
        first = min(o.sent for o in outcomes)
        last = max(o.done for o in outcomes if o.status == 200)
        per_node = Counter(o.node for o in outcomes if o.status == 200)
        rate = max(per_node.values()) / (last - first)
        print(
            f"\noverspend: spent {spent} of {limit} tokens -> overspend {spent - limit} "
            f"(bound {bound}: N=3, d={D_S}s, per-node peak {per_d} admissions per d, "
            f"mean {rate:.0f}/s per node, R_max={COST}); admitted per node {dict(per_node)}"
        )
        assert spent <= limit + bound

        # Once the load stops, every node's merged view is exactly what clients were served.
        with Key(token) as key:
            took = key.converge(nodes, spent, timeout=1.0)
        print(f"convergence: all 3 nodes report {spent} after {took * 1000:.0f} ms")


class TestSingleNode:
    def test_one_node_never_overspends(
        self, start_gateway: StartGateway, upstream: FakeOpenAI, issuer: Issuer
    ) -> None:
        """One node with 16 concurrent clients spends the budget exactly, never more."""
        (node,) = start_nodes(start_gateway, upstream, 1)
        limit = 100 * COST
        token = issuer.token(budget_tokens=limit, budget_period="total")

        outcomes = hammer([node], token, clients=16)

        spent = COST * sum(o.status == 200 for o in outcomes)
        print(f"\nsingle node: spent {spent} of {limit} with 16 clients")
        assert spent <= limit
        assert spent == limit  # reservations equal usage, so nothing is left unspent
        with Key(token) as key:
            assert key.used(node) == spent


@pytest.mark.slow
class TestRestart:
    def test_sigkill_and_restart_does_not_resurrect_the_budget(
        self, start_gateway: StartGateway, upstream: FakeOpenAI, issuer: Issuer
    ) -> None:
        """A node restarted with the same id reloads its own slots before it admits anyone."""
        (node,) = start_nodes(start_gateway, upstream, 1, env={"GATEKEEPER_NODE_ID": "fixed"})
        with Key(issuer.token(budget_tokens=10 * COST, budget_period="total")) as key:
            key.spend(node, 6)
            assert key.usage(node)["node_id"] == "fixed-w0"

            node.kill()  # SIGKILL right after the last answer: no graceful flush
            node.start()  # same port, config and node id

            after = key.usage(node)
            assert after["node_id"] == "fixed-w0"
            assert after["counters"]["tok"]["used"] == 6 * COST
            assert key.spend_until_refused(node) == 4


@pytest.mark.slow
class TestNatsOutage:
    def test_nodes_enforce_alone_and_converge_when_nats_returns(
        self,
        start_gateway: StartGateway,
        upstream: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """Without NATS each node enforces its last merged view; afterwards all agree."""
        a, b = start_nodes(start_gateway, upstream, 2)
        with Key(issuer.token(budget_tokens=100 * COST, budget_period="total")) as key:
            key.spend(a, 25)
            key.spend(b, 25)
            key.converge([a, b], 50 * COST, timeout=1.0)

            nats_server.kill()
            # Each node still counts the other's 25 requests, so each admits 50 more alone:
            # the partition case of docs/budget.md, up to (N − 1) × what was left.
            assert key.spend_until_refused(a) == 50
            assert key.spend_until_refused(b) == 50
            assert key.used(a) == key.used(b) == 100 * COST

            nats_server.start()  # same port and store
            took = key.converge([a, b], 150 * COST, timeout=5.0)
            print(f"\nNATS outage: both nodes report {150 * COST} {took:.2f}s after the restart")
            assert key.spend_until_refused(a) == 0
            assert key.spend_until_refused(b) == 0


@pytest.mark.slow
class TestAlerts:
    async def test_each_threshold_is_stored_once_per_node(
        self,
        start_gateway: StartGateway,
        upstream: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """80 %, 100 % and ``budget_exhausted`` land in BH_ALERTS once per node that saw them.

        Each node reports a line the first time its view is past it (by its own
        settle or by gossip), and ``budget_exhausted`` at its first refusal for budget,
        never per refusal. Its ``Nats-Msg-Id`` ends in a MAC keyed by its node key, so
        nobody can pre-publish the id to silence it; the price is one copy per node
        (consumers group by counter and line).
        """
        nodes = start_nodes(start_gateway, upstream, 2)
        token = issuer.token(budget_tokens=60 * COST, budget_period="total")
        with Key(token) as key:
            key_id = key.usage(nodes[0])["key_id"]
        nc = await nats.connect(nats_server.url)
        published: Counter[int | str] = Counter()

        async def seen(msg: Msg) -> None:
            published[alert_line(orjson.loads(msg.data))] += 1

        try:
            await nc.subscribe(f"bh.alerts.budget.{key_id}", cb=seen)
            await nc.flush()
            await asyncio.to_thread(hammer, nodes, token, 4)
            js = nc.jetstream()
            deadline = time.monotonic() + 3.0
            while set(await stored_alerts(js, key_id)) != {80, 100, "exhausted"}:
                assert time.monotonic() < deadline, "alerts missing from BH_ALERTS"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a late duplicate would have landed by now
            stored = await stored_alerts(js, key_id)
        finally:
            await nc.close()
        print(f"\nalerts: published {dict(published)}, stored {dict(stored)}")
        assert stored == published  # nothing de-duplicated away between distinct nodes
        assert published[80] == 2  # each node saw 80 % (at the latest when it refused)
        assert 1 <= published[100] <= 2
        assert 1 <= published["exhausted"] <= 2  # once per node at most: not per refusal

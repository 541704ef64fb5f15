"""Strict budgets on real processes: 0 overspend across 3 nodes, with and without a partition.

Three gateway processes share one nats-server; the third reaches it through a
loopback TCP proxy that the test cuts mid-load. Every request asks for ``COST``
tokens (see test_budget_cluster.py); near the limit the gateway lowers the cap it
sends to fit the share it holds. The fake upstream bills exactly what it was allowed
(prompt + the cap it received), like a real server that generates to the cap, and
the sum of its bills must never pass the limit. The price is refusals near the
limit: rights stranded on a node that no longer receives requests (or that is cut
off) are not spent; the tests print how much of the budget was spent.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gatekeeper.bus.embedded import EmbeddedNats
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer
from tests.harness.tcp_proxy import TcpProxy
from tests.integration.test_budget_cluster import COST, PROMPT_TOKENS, Key, error_code, start_nodes

StartGateway = Callable[..., GatewayProcess]


class Outcomes(Counter[tuple[int, int | str | None]]):
    """(node, 200 or error code) → count, plus the time line of answers."""

    def __init__(self) -> None:
        super().__init__()
        self.timeline: list[tuple[float, int | str | None]] = []

    def premature_refusals(self) -> int:
        """Refusals answered while some node could still admit (a later 200 exists)."""
        last_ok = max((t for t, code in self.timeline if code == 200), default=0.0)
        return sum(1 for t, code in self.timeline if code != 200 and t < last_ok)


def load(
    nodes: list[GatewayProcess],
    token: str,
    clients: int,
    *,
    seconds: float,
    at: Callable[[Outcomes], None] | None = None,
) -> Outcomes:
    """``clients`` threads round-robin over ``nodes`` for ``seconds`` (or until every node
    refused 10 times in a row); ``at(outcomes)`` is called by the first thread each loop."""
    outcomes = Outcomes()
    streak: Counter[int] = Counter()
    lock = threading.Lock()
    started = time.monotonic()

    def client(first: int) -> None:
        k = first
        with Key(token) as key:
            while time.monotonic() - started < seconds:
                if first == 0 and at is not None:
                    at(outcomes)
                node, k = k % len(nodes), k + 1
                response = key.chat(nodes[node])
                code = error_code(response) or response.status_code
                with lock:
                    outcomes[(node, code)] += 1
                    outcomes.timeline.append((time.monotonic(), code))
                    streak[node] = streak[node] + 1 if response.status_code == 429 else 0
                    if all(streak[n] >= 10 for n in range(len(nodes))):
                        return

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return outcomes


@pytest.fixture
def upstream(fake_openai: FakeOpenAI) -> FakeOpenAI:
    """Bills the prompt plus the full cap it was sent (its text fits the cap), after a
    short think."""
    fake_openai.script.default = Behavior(
        prompt_tokens=PROMPT_TOKENS, bill_to_cap=True, obey_cap=True, first_byte_delay=0.02
    )
    return fake_openai


def billed(fake: FakeOpenAI) -> int:
    """Tokens the upstream billed: prompt + the cap of every call it served."""
    return sum(PROMPT_TOKENS + int(str(r["max_tokens"])) for r in fake.script.requests)


def served(outcomes: Counter[tuple[int, int | str | None]]) -> int:
    return sum(n for (_node, code), n in outcomes.items() if code == 200)


@pytest.mark.slow
class TestStrictBudget:
    def test_three_nodes_under_concurrent_load_never_overspend(
        self, start_gateway: StartGateway, upstream: FakeOpenAI, issuer: Issuer
    ) -> None:
        """Every admission is backed by rights the admitting node holds: Σ spent ≤ limit."""
        nodes = start_nodes(start_gateway, upstream, 3)
        limit = 100 * COST
        token = issuer.token(budget_tokens=limit, budget_period="total", budget_mode="strict")
        outcomes = load(nodes, token, 6, seconds=20)
        calls, spent = len(upstream.script.requests), billed(upstream)
        refused = sum(n for (_node, code), n in outcomes.items() if code == "insufficient_quota")
        print(
            f"\nstrict, 3 nodes: {served(outcomes)} served, {spent} of {limit} tokens billed "
            f"({100 * spent / limit:.1f} %), {refused} refused "
            f"({outcomes.premature_refusals()} while another node could still admit), "
            f"{dict(outcomes)}"
        )
        assert set(code for _n, code in outcomes) <= {200, "insufficient_quota"}
        assert calls == served(outcomes)
        assert spent <= limit  # 0 overspend
        with Key(token) as key:  # every node's ledger view agrees once gossip settled
            key.converge(nodes, spent, timeout=5.0)

    def test_a_node_cut_off_from_nats_spends_only_what_it_holds(
        self,
        start_gateway: StartGateway,
        upstream: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """The third node's NATS link is cut mid-load: still 0 overspend overall.

        After the cut it can serve only from the share it already holds; the others
        go on with theirs. After healing, the key is spent until every node refuses.
        """
        proxy = TcpProxy(nats_server.port).start()
        try:
            a, b = start_nodes(start_gateway, upstream, 2)
            via_proxy = nats_server.url.replace(f":{nats_server.port}", f":{proxy.port}")
            (c,) = start_nodes(start_gateway, upstream, 1, nats_url=via_proxy)
            nodes = [a, b, c]
            limit = 300 * COST
            token = issuer.token(budget_tokens=limit, budget_period="total", budget_mode="strict")

            def cut_once(outcomes: Outcomes) -> None:
                if served(outcomes) >= 100 and not proxy.cuts:  # a third of the way
                    proxy.cut()

            during = load(nodes, token, 6, seconds=8, at=cut_once)
            calls_during, spent = len(upstream.script.requests), billed(upstream)
            assert proxy.cuts == 1
            on_c = {code: n for (node, code), n in during.items() if node == 2}
            print(
                f"\nstrict, C partitioned after 100 served: {served(during)} served, "
                f"{spent} of {limit} "
                f"billed ({100 * spent / limit:.1f} %), {during.premature_refusals()} refusals "
                f"while another node could still admit; C: {on_c}; all: {dict(during)}"
            )
            ready = httpx.get(f"{c.url}/readyz", timeout=5).json()
            assert ready["nats"] == "disconnected"  # the partition was real
            assert calls_during == served(during)
            assert spent <= limit  # 0 overspend while partitioned
            proxy.heal()
            time.sleep(3)  # C reconnects (nats-py backs off between attempts)
            after = load(nodes, token, 3, seconds=10)
            calls, spent = len(upstream.script.requests), billed(upstream)
            print(
                f"after healing: {served(after)} more; total {spent} of {limit} billed "
                f"({100 * spent / limit:.1f} %)"
            )
            assert calls == served(during) + served(after)
            assert spent <= limit  # 0 overspend overall
        finally:
            proxy.stop()

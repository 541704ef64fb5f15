"""The four ways a client got free tokens, each closed, through the official openai SDK.

One gateway process, one real nats-server, a fake upstream that really behaves the
way each leak needs. Every test drives a key until the gateway refuses it and then
checks the key's ledger (``GET /v1/gatekeeper/usage``) and the audit records: the
budget is never exceeded (on one node the bound is 0: every charge is at most its
reservation, which fits what was left), and each record says where its charge
came from (``usage_source``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import nats
import openai
import orjson
import pytest

from gatekeeper.budget.tokens import count_text
from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.bus.streams import AUDIT
from tests.conftest import anthropic_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_anthropic import FakeAnthropic
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model

MESSAGES: Any = [{"role": "user", "content": "hello there"}]
PROMPT_RESERVED = 10  # the gateway's cheap estimate of MESSAGES (chars/4 + framing)
PROMPT_COUNTED = 8  # o200k: "hello there" is 2 tokens, + 3 per message + 3 priming


def client(gw: GatewayProcess, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=token, max_retries=0, timeout=20)


def used(gw: GatewayProcess, token: str) -> dict[str, Any]:
    """The key's token counter as the gateway sees it, once nothing is in flight."""
    deadline = time.monotonic() + 5
    while True:
        r = httpx.get(
            f"{gw.base_url}/gatekeeper/usage", headers={"authorization": f"Bearer {token}"}
        )
        tok: dict[str, Any] = r.json()["counters"]["tok"]
        if tok["in_flight"] == 0 or time.monotonic() > deadline:
            return tok
        time.sleep(0.05)


def audit_records(nats_url: str, want: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Chat records in BH_AUDIT (waits until ``want`` are there)."""

    async def read() -> list[dict[str, Any]]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + timeout
            while True:
                info = await js.stream_info(AUDIT)
                found = []
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    record = orjson.loads((await js.get_msg(AUDIT, seq)).data)
                    if record.get("served_model"):
                        found.append(record)
                if len(found) >= want or time.monotonic() > deadline:
                    return found
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    return asyncio.run(read())


def budget_token(issuer: Issuer, tokens: int) -> str:
    return issuer.token(budget_tokens=tokens, budget_period="total")


class TestHangUp:
    def test_a_client_that_hangs_up_before_the_usage_chunk_pays_the_reservation(
        self,
        gateway: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        nats_server: EmbeddedNats,
    ) -> None:
        """Paced SSE, usage chunk last; the SDK client closes after 3 chunks.

        Each hang-up is charged the counted prompt plus the reservation's completion
        part (``usage_source: reserved``), never 0, so a 300-token budget admits a
        handful of streams, not hundreds, and is not exceeded.
        """
        fake_openai.script.default = Behavior(
            text="word " * 40, chunks=200, chunk_delay=0.03, completion_tokens=40
        )
        budget = 300
        token = budget_token(issuer, budget)
        sdk = client(gateway, token)
        admitted = 0
        for _ in range(40):
            try:
                stream = sdk.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, max_tokens=20, stream=True
                )
            except openai.RateLimitError as err:
                assert err.code == "insufficient_quota"
                break
            admitted += 1
            for i, _chunk in enumerate(stream):
                if i == 2:
                    break
            stream.close()
        tok = used(gateway, token)
        records = audit_records(nats_server.url, admitted)
        print(f"\nhang-up: {admitted} streams admitted on {budget}; used {tok['used']}")
        assert tok["used"] <= budget
        assert 2 <= admitted <= budget // (PROMPT_COUNTED + 1)
        assert len(records) == admitted
        assert {r["usage_source"] for r in records} == {"reserved"}
        assert all(r["total_tokens"] > PROMPT_COUNTED for r in records)
        assert sum(r["total_tokens"] for r in records) == tok["used"]


class TestMissingUsage:
    @pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
    def test_an_upstream_that_omits_usage_is_counted(
        self,
        gateway: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        nats_server: EmbeddedNats,
        stream: bool,
    ) -> None:
        """No ``usage`` at all: the gateway counts prompt and the completion it received."""
        text = "The quick brown fox jumps over the lazy dog. " * 4
        fake_openai.script.default = Behavior(text=text, chunks=6, omit_usage=True, obey_cap=True)
        budget = 600
        token = budget_token(issuer, budget)
        sdk = client(gateway, token)
        served = 0
        for _ in range(100):
            try:
                if stream:
                    for _chunk in sdk.chat.completions.create(
                        model="gpt-4o-mini", messages=MESSAGES, max_tokens=60, stream=True
                    ):
                        pass
                else:
                    sdk.chat.completions.create(
                        model="gpt-4o-mini", messages=MESSAGES, max_tokens=60
                    )
            except openai.RateLimitError:
                break
            served += 1
        tok = used(gateway, token)
        records = audit_records(nats_server.url, served)
        per_request = PROMPT_COUNTED + count_text([text], "o200k")
        print(f"\nno usage ({'sse' if stream else 'json'}): {served} served, used {tok['used']}")
        assert tok["used"] <= budget
        assert served <= budget // per_request + 1
        assert {r["usage_source"] for r in records} == {"counted"}
        assert records[0]["total_tokens"] == per_request  # the last may have been clamped
        assert sum(r["total_tokens"] for r in records) == tok["used"]

    def test_zero_usage_with_content_is_not_trusted(
        self,
        gateway: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        nats_server: EmbeddedNats,
    ) -> None:
        """A unary ``usage: {0, 0}`` beside a real reply is counted instead."""
        fake_openai.script.default = Behavior(text="a reply of some length " * 5, zero_usage=True)
        token = budget_token(issuer, 1000)
        client(gateway, token).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=60
        )
        (record,) = audit_records(nats_server.url, 1)
        assert record["usage_source"] == "counted"
        assert record["prompt_tokens"] == PROMPT_COUNTED
        assert record["completion_tokens"] > 0
        assert used(gateway, token)["used"] == record["total_tokens"]

    @pytest.mark.parametrize(
        ("completion_tokens", "source"), [(1, "counted"), (60, "upstream")], ids=["lies", "honest"]
    )
    def test_a_stream_whose_usage_is_too_low_for_its_text_is_counted(
        self,
        gateway: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        nats_server: EmbeddedNats,
        completion_tokens: int,
        source: str,
    ) -> None:
        """Plain content chunks with a usage chunk: the parse-free bound settles an honest
        report; 1 token for 180 characters is not believed and the text is counted."""
        text = "The quick brown fox jumps over the lazy dog. " * 4
        fake_openai.script.default = Behavior(
            text=text, chunks=6, prompt_tokens=9, completion_tokens=completion_tokens
        )
        token = budget_token(issuer, 10_000)
        for _chunk in client(gateway, token).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=100, stream=True
        ):
            pass
        (record,) = audit_records(nats_server.url, 1)
        assert record["usage_source"] == source
        if source == "counted":
            assert record["completion_tokens"] == count_text([text], "o200k")
        else:
            assert (record["prompt_tokens"], record["completion_tokens"]) == (9, 60)
        assert used(gateway, token)["used"] == record["total_tokens"]


class TestReservationBound:
    def test_n_times_max_tokens_is_clamped_to_the_budget(
        self, gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """``n: 16, max_tokens: 900`` on a 1,000-token budget, upstream bills n × cap.

        The gateway sends ``max_tokens`` clamped to ``(1000 − prompt) // 16`` and the
        bill stays inside the budget; the next request cannot fit even one token per
        choice and gets 429 ``insufficient_quota``.
        """
        fake_openai.script.default = Behavior(bill_to_cap=True, prompt_tokens=PROMPT_RESERVED)
        token = budget_token(issuer, 1000)
        sdk = client(gateway, token)
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=16, max_tokens=900)
        sent = fake_openai.script.requests[-1]
        assert sent["max_tokens"] == (1000 - PROMPT_RESERVED) // 16
        assert used(gateway, token)["used"] <= 1000
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=16)
        assert refused.value.code == "insufficient_quota"
        assert used(gateway, token)["used"] <= 1000

    def test_a_request_without_max_tokens_gets_an_explicit_cap(
        self, gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """No ``max_tokens``: the upstream still gets one (never its own 4,096 default)."""
        fake_openai.script.default = Behavior(bill_to_cap=True, prompt_tokens=PROMPT_RESERVED)
        budget = 3000
        token = budget_token(issuer, budget)
        sdk = client(gateway, token)
        for _ in range(10):
            try:
                sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            except openai.RateLimitError:
                break
        caps = [r["max_tokens"] for r in fake_openai.script.requests]
        print(f"\nno max_tokens: caps sent {caps}, used {used(gateway, token)['used']}")
        assert caps[0] == 1024  # limits.default_max_tokens
        assert all(isinstance(c, int) and c <= 4096 for c in caps)
        assert used(gateway, token)["used"] <= budget

    def test_cost_changing_fields_are_refused_for_budgeted_keys(
        self, gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """``service_tier: priority`` has a price the reservation cannot bound: 400."""
        budgeted = client(gateway, budget_token(issuer, 1000))
        with pytest.raises(openai.BadRequestError) as bad:
            budgeted.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, service_tier="priority"
            )
        assert bad.value.code == "unsupported_parameter"
        assert bad.value.param == "service_tier"
        budgeted.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, service_tier="auto", seed=1
        )
        client(gateway, issuer.token()).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, service_tier="priority"
        )
        assert fake_openai.script.requests[-1]["service_tier"] == "priority"


class TestEmbeddings:
    def test_embeddings_without_usage_are_counted(
        self,
        gateway: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        nats_server: EmbeddedNats,
    ) -> None:
        """An embeddings reply without ``usage`` is charged the counted input (cl100k)."""
        fake_openai.script.default = Behavior(omit_usage=True)
        token = budget_token(issuer, 1000)
        client(gateway, token).embeddings.create(
            model="text-embedding-3-small", input=["hello there", "general kenobi"]
        )
        records = [r for r in audit_records(nats_server.url, 1) if r["completion_tokens"] == 0]
        assert [r["usage_source"] for r in records] == ["counted"]
        assert records[0]["prompt_tokens"] == count_text(
            ["hello there", "general kenobi"], "cl100k"
        )
        assert used(gateway, token)["used"] == records[0]["total_tokens"]


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key="sk-ant-budget-test") as fake:
        yield fake


class TestAnthropicDefault:
    def test_no_max_tokens_never_becomes_anthropic_s_4096(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_anthropic: FakeAnthropic,
        issuer: Issuer,
    ) -> None:
        """Anthropic requires ``max_tokens``; the gateway sends its own reserved cap
        (``limits.default_max_tokens``), not 4,096, so a to-the-cap bill fits the budget."""
        gw = start_gateway(
            providers=[anthropic_provider("anthropic", fake_anthropic)],
            models=[chat_model("claude-3-5-haiku", "anthropic")],
        )
        fake_anthropic.script.default = Behavior(bill_to_cap=True, prompt_tokens=PROMPT_RESERVED)
        budget = 2500
        token = budget_token(issuer, budget)
        sdk = client(gw, token)
        for stream in (False, True):
            if stream:
                for _chunk in sdk.chat.completions.create(
                    model="claude-3-5-haiku", messages=MESSAGES, stream=True
                ):
                    pass
            else:
                sdk.chat.completions.create(model="claude-3-5-haiku", messages=MESSAGES)
        caps = [r["max_tokens"] for r in fake_anthropic.script.requests]
        assert caps == [1024, 1024]
        assert used(gw, token)["used"] == 2 * (PROMPT_RESERVED + 1024) <= budget

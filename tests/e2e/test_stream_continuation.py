"""Mid-stream failover: a stream cut, stalled or failed after its first chunk is finished
by the next provider, and the client (the official SDK) sees one stream (docs/failover.md)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import nats
import openai
import orjson
import pytest

from gatekeeper.bus.embedded import EmbeddedNats
from tests.conftest import anthropic_provider, openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_anthropic import FakeAnthropic
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model

pytestmark = pytest.mark.slow  # multi-process and timing: make check runs these per file

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away."
MESSAGES = [{"role": "user", "content": "tell me about the fox"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
STALL = {"connect_s": 2, "first_byte_s": 5, "total_s": 30, "stall_s": 1.0}
# the continuing side is never meant to stall: a short stall timeout there only trips when
# a loaded machine delays the fake's next event (seen under the parallel suite)
SLOW_STALL = {**STALL, "stall_s": 5.0}


@pytest.fixture
def fake_anthropic() -> Any:
    with FakeAnthropic(api_key="sk-ant-fake") as fake:
        yield fake


@pytest.fixture
def gw(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> GatewayProcess:
    """openai (gpt-4o, a short stall timeout) → anthropic (claude, a long one)."""
    return start_gateway(
        providers=[
            openai_provider("openai", fake_openai, timeouts=STALL),
            anthropic_provider("anthropic", fake_anthropic, timeouts=SLOW_STALL),
        ],
        models=[
            chat_model("gpt-4o", "openai"),
            chat_model("claude-3-5-sonnet", "anthropic", upstream="claude-3-5-sonnet-20241022"),
        ],
    )


def sdk(gw: GatewayProcess, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=token, max_retries=0, timeout=20)


def records(nats_url: str, request_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The BH_AUDIT records of one request (waits for the first)."""

    async def read() -> list[dict[str, Any]]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + timeout
            while True:
                info = await js.stream_info("BH_AUDIT")
                found = []
                for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
                    record = orjson.loads((await js.get_msg("BH_AUDIT", seq)).data)
                    if record.get("request_id") == request_id:
                        found.append(record)
                if found or time.monotonic() > deadline:
                    await asyncio.sleep(0.2)  # a second record, if any, would be there now
                    return found
                await asyncio.sleep(0.05)
        finally:
            await nc.close()

    return asyncio.run(read())


def event(nats_url: str, request_id: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        nc = await nats.connect(nats_url)
        try:
            sub = await nc.jetstream().subscribe("bh.events.continuation", ordered_consumer=True)
            while True:
                found = orjson.loads((await sub.next_msg(timeout=5)).data)
                if found["request_id"] == request_id:
                    return dict(found)
        finally:
            await nc.close()

    return asyncio.run(read())


def stream_chat(gw: GatewayProcess, token: str, rid: str, **kw: Any) -> list[Any]:
    return list(
        sdk(gw, token).chat.completions.create(
            model=kw.pop("model", "gpt-4o"),
            messages=kw.pop("messages", MESSAGES),  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": rid, **kw.pop("headers", {})},
            **kw,
        )
    )


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


class TestContinued:
    def test_anthropic_finishes_what_openai_began(
        self,
        gw: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
        nats_server: EmbeddedNats,
    ) -> None:
        """Cut, stalled or failed by an error event: each character once, one
        finish_reason, one id; usage is both attempts' sum; the final chunk, the audit
        record and BH_EVENTS name both segments and the seam."""
        broken = {
            "cut": Behavior(text=TEXT, chunks=6, cut_after_chunks=3),
            "stall": Behavior(text=TEXT, chunks=6, stall_after_chunks=3),
            "error": Behavior(text=TEXT, chunks=6, error_after_chunks=3, chunk_delay=0.02),
        }
        for how, behavior in broken.items():
            fake_openai.script.push(behavior)
            fake_anthropic.script.push(
                Behavior(text=TEXT, resume_overlap=0, prompt_tokens=30, completion_tokens=9)
            )
            chunks = stream_chat(gw, issuer.token(), f"cont-{how}")
            assert text_of(chunks) == TEXT, how
            finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
            assert [f for f in finishes if f] == ["stop"] and finishes[-1] == "stop"
            assert {c.id for c in chunks} == {"chatcmpl-fake"}
            assert len({c.created for c in chunks}) == 1

            report = chunks[-2].model_extra["x_gatekeeper"]["continued"]
            assert [s["provider"] for s in report] == ["openai", "anthropic"]
            assert report[0]["seam"] == 0 and report[1]["usage_source"] == "upstream"
            assert report[0]["usage_source"] == "counted" and report[0]["completion_tokens"] > 0
            # up to three 12-character pieces arrived (a piece read with the error event
            # that follows it is not forwarded): the prefill is exactly what was sent
            seam = report[1]["seam"]
            assert seam in (12, 24, 36)
            prefill = fake_anthropic.script.requests[-1]["messages"][-1]
            assert prefill["role"] == "assistant"
            assert prefill["content"] == [{"type": "text", "text": TEXT[:seam].rstrip()}]
            usage = chunks[-1].usage
            assert usage is not None
            assert usage.prompt_tokens == report[0]["prompt_tokens"] + 30
            assert usage.completion_tokens == report[0]["completion_tokens"] + 9

            (record,) = records(nats_server.url, f"cont-{how}")
            assert record["status"] == 200 and record["continued"] == report
            assert record["total_tokens"] == usage.total_tokens
            assert [a["provider"] for a in record["attempts"]] == ["openai", "anthropic"]
            assert event(nats_server.url, f"cont-{how}")["segments"] == report

    def test_openai_kind_is_told_to_continue_and_its_repeat_is_trimmed(
        self,
        gw: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
    ) -> None:
        """claude (cut) → gpt-4o: the partial turn plus an instruction; it repeats the
        last 9 characters, which the client does not see twice."""
        fake_anthropic.script.push(Behavior(text=TEXT, chunks=5, cut_after_chunks=2))
        fake_openai.script.push(Behavior(text=TEXT, resume_overlap=9))
        chunks = stream_chat(gw, issuer.token(), "cont-openai", model="claude-3-5-sonnet")
        assert text_of(chunks) == TEXT
        sent = fake_openai.script.requests[-1]["messages"]
        assert sent[-2]["role"] == "assistant" and TEXT.startswith(sent[-2]["content"])
        assert sent[-1]["role"] == "user" and "cut off" in sent[-1]["content"]

    def test_a_tool_call_cut_mid_arguments_is_restarted_whole(
        self,
        gw: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
    ) -> None:
        """Half the arguments reached the gateway, none reached the client: one valid call."""
        call = 'TOOL:get_weather {"city": "Paris", "unit": "celsius"}'
        fake_openai.script.push(Behavior(text=call, chunks=4, cut_after_chunks=2))
        fake_anthropic.script.push(Behavior(text=call))
        chunks = stream_chat(gw, issuer.token(), "cont-tool", tools=TOOLS)
        calls: dict[int, dict[str, str]] = {}
        for c in chunks:
            for d in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                got = calls.setdefault(d.index, {"name": "", "args": ""})
                got["name"] += (d.function.name or "") if d.function else ""
                got["args"] += (d.function.arguments or "") if d.function else ""
        assert list(calls) == [0] and calls[0]["name"] == "get_weather"
        assert orjson.loads(calls[0]["args"]) == {"city": "Paris", "unit": "celsius"}
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


class TestNotContinued:
    def test_when_every_provider_fails_mid_stream_the_error_ends_it(
        self,
        gw: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
    ) -> None:
        """Nobody could finish: the SSE error event, no [DONE], never a truncated success."""
        fake_openai.script.push(Behavior(text=TEXT, chunks=6, cut_after_chunks=2))
        fake_anthropic.script.push(Behavior(text=TEXT, chunks=4, cut_after_chunks=1))
        body = raw_stream(gw, issuer.token(), {})
        assert b"upstream_stream_interrupted" in body and b"[DONE]" not in body
        assert len(fake_anthropic.script.requests) == 1

    def test_turned_off_by_header_or_key_the_cut_ends_the_stream_as_before(
        self,
        gw: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
    ) -> None:
        off = {"x-gatekeeper-continuation": "off"}
        for token, headers in (
            (issuer.token(), off),
            (issuer.token(stream_continuation=False), {}),
        ):
            fake_openai.script.push(Behavior(text=TEXT, chunks=6, cut_after_chunks=2))
            body = raw_stream(gw, token, headers)
            assert b"upstream_stream_interrupted" in body and b"[DONE]" not in body
        assert fake_anthropic.script.requests == []


def raw_stream(gw: GatewayProcess, token: str, headers: dict[str, str]) -> bytes:
    with httpx.stream(
        "POST",
        f"{gw.base_url}/chat/completions",
        headers={"authorization": f"Bearer {token}", **headers},
        json={"model": "gpt-4o", "messages": MESSAGES, "stream": True},
        timeout=20,
    ) as r:
        assert r.status_code == 200
        return r.read()


class TestHangUp:
    def test_client_gone_during_the_continuation_one_record_both_charged(
        self,
        gw: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
        nats_server: EmbeddedNats,
    ) -> None:
        """The cut attempt counted, the abandoned one charged its cap; one record."""
        fake_openai.script.push(Behavior(text=TEXT, chunks=6, cut_after_chunks=3))
        fake_anthropic.script.push(Behavior(text=TEXT, chunks=8, chunk_delay=0.2, resume_overlap=0))
        stream = sdk(gw, issuer.token()).chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            max_tokens=50,
            extra_headers={"x-request-id": "cont-hangup"},
        )
        seen = ""
        for c in stream:
            seen += (c.choices[0].delta.content or "") if c.choices else ""
            if len(seen) > 3 * 12:  # past the seam: the continuation is streaming
                break
        stream.close()
        (record,) = records(nats_server.url, "cont-hangup")
        assert record["status"] == 499
        first, second = record["continued"]
        assert first["usage_source"] == "counted" and first["completion_tokens"] > 0
        assert second["usage_source"] == "reserved"
        # its cap: the request's 50 less the delivered text at 4 characters a token
        assert second["completion_tokens"] == 50 - math.ceil(second["seam"] / 4)
        assert (
            record["completion_tokens"] == first["completion_tokens"] + second["completion_tokens"]
        )


class TestOtherIngress:
    def test_responses_and_messages_streams_are_continued_too(
        self,
        gw: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
    ) -> None:
        """The same seam under /v1/responses (openai SDK) and /v1/messages (anthropic SDK)."""
        token = issuer.token()
        for _ in range(2):
            fake_openai.script.push(Behavior(text=TEXT, chunks=6, cut_after_chunks=3))
            fake_anthropic.script.push(Behavior(text=TEXT, resume_overlap=0))
        events = list(sdk(gw, token).responses.create(model="gpt-4o", input="fox", stream=True))
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text == TEXT and events[-1].type == "response.completed"

        client = anthropic.Anthropic(
            base_url=gw.base_url.removesuffix("/v1"), api_key=token, max_retries=0, timeout=20
        )
        with client.messages.stream(
            model="gpt-4o", max_tokens=200, messages=[{"role": "user", "content": "fox"}]
        ) as stream:
            message = stream.get_final_message()
        assert message.content[0].text == TEXT  # type: ignore[union-attr]
        assert message.stop_reason == "end_turn"

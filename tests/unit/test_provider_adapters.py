"""The OpenAI and Anthropic adapters against the in-memory transport (no sockets).

``MemoryTransport`` hands each request to a handler and returns its scripted reply
through the same caps and decoding as a real transport, so these tests pin what an
adapter sends and how it treats every kind of reply: success, the upstream's own
errors (scrubbed), redirects, 200s that are not results, caps, cuts.
"""

from __future__ import annotations

import gzip

import orjson
import pytest

from gatekeeper.errors import (
    ProviderError,
    ProviderRejected,
    StreamInterrupted,
    UpstreamBusy,
    UpstreamTooLarge,
)
from gatekeeper.providers.anthropic import AnthropicProvider
from gatekeeper.providers.base import Call
from gatekeeper.providers.limits import UpstreamLimits
from gatekeeper.providers.memory import MemoryTransport, Scripted, Sent
from gatekeeper.providers.openai import OpenAIProvider
from gatekeeper.providers.settings import ProviderConfig
from gatekeeper.providers.transport import ConnectionClosed, NoResponse, PoolExhausted
from gatekeeper.routing.matrix import ModelSpec
from gatekeeper.scrub import Scrubber

KEY = "sk-proj-UNITKEY0123456789abcdefgh"
MODEL = ModelSpec("mini", "up", "mini-upstream", "chat", 0.001, 0.002, 128000, 4096)
CALL = Call(MODEL, {"model": "mini", "messages": [{"role": "user", "content": "hi"}]}, "req_1")
COMPLETION = orjson.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
)


def openai(reply: Scripted | Exception, limits: UpstreamLimits | None = None) -> OpenAIProvider:
    def handler(sent: Sent) -> Scripted:
        if isinstance(reply, Exception):
            raise reply
        return reply

    cfg = ProviderConfig("up", "openai", "http://upstream.invalid/v1", KEY)
    transport = MemoryTransport(handler, limits or UpstreamLimits())
    return OpenAIProvider(cfg, transport, limits=limits or UpstreamLimits(), scrub=Scrubber([KEY]))


def sent_of(p: OpenAIProvider | AnthropicProvider) -> list[Sent]:
    assert isinstance(p.pool, MemoryTransport)
    return p.pool.sent


class TestOpenAIUnary:
    async def test_sends_the_upstream_model_key_and_request_id(self) -> None:
        p = openai(Scripted(body=(COMPLETION,)))
        reply = await p.chat(CALL)
        assert reply.body == COMPLETION and reply.usage.total_tokens == 5
        sent = sent_of(p)[0]
        assert sent.path == "/chat/completions"
        assert sent.headers["authorization"] == f"Bearer {KEY}"
        assert sent.headers["x-request-id"] == "req_1"
        assert orjson.loads(sent.body)["model"] == "mini-upstream"

    async def test_a_gzip_reply_is_decoded(self) -> None:
        p = openai(
            Scripted(headers={"content-encoding": "gzip"}, body=(gzip.compress(COMPLETION),))
        )
        assert (await p.chat(CALL)).body == COMPLETION

    @pytest.mark.parametrize(
        "body",
        [b"<html>oops</html>", b"[1, 2]", b'{"error": {"message": "quota"}}', b'{"object": "x"}'],
        ids=["not-json", "not-object", "error-object", "no-choices"],
    )
    async def test_a_200_that_is_not_a_completion_is_a_provider_error(self, body: bytes) -> None:
        """Never passed on as success; failover-able (retryable, no upstream status)."""
        with pytest.raises(ProviderError) as info:
            await openai(Scripted(body=(body,))).chat(CALL)
        assert info.value.code == "upstream_invalid_response" and info.value.retryable

    async def test_embeddings_need_a_data_list(self) -> None:
        with pytest.raises(ProviderError, match="'data'"):
            await openai(Scripted(body=(COMPLETION,))).embeddings(CALL)

    async def test_a_redirect_is_never_success(self) -> None:
        reply = Scripted(status=302, headers={"location": "/login"}, body=(b'{"ok": true}',))
        with pytest.raises(ProviderError, match="302") as info:
            await openai(reply).chat(CALL)
        assert info.value.status == 502

    async def test_a_4xx_message_is_passed_on_without_the_key(self) -> None:
        err = {"error": {"message": f"bad: authorization=Bearer {KEY}", "code": "bad_thing"}}
        with pytest.raises(ProviderRejected) as info:
            await openai(Scripted(status=422, body=(orjson.dumps(err),))).chat(CALL)
        assert info.value.status == 422 and info.value.code == "bad_thing"
        assert KEY not in info.value.message and "bad:" in info.value.message

    async def test_an_unrecognised_error_text_is_not_shown(self) -> None:
        with pytest.raises(ProviderError) as info:
            await openai(Scripted(status=500, body=(f"trace: {KEY}".encode(),))).chat(CALL)
        assert "not shown" in info.value.message and "req_1" in info.value.message
        assert "trace" not in info.value.message

    async def test_a_body_over_the_cap(self) -> None:
        limits = UpstreamLimits(max_body_bytes=1024)
        with pytest.raises(UpstreamTooLarge):
            await openai(Scripted(body=(b"x" * 2048,)), limits).chat(CALL)

    async def test_no_response_after_sending_is_not_retryable(self) -> None:
        """The upstream may have acted on it: no failover re-sends it elsewhere."""
        with pytest.raises(ProviderError) as info:
            await openai(NoResponse("closed")).chat(CALL)
        assert info.value.code == "upstream_no_response" and not info.value.retryable

    async def test_a_full_pool_is_busy_not_the_providers_fault(self) -> None:
        with pytest.raises(UpstreamBusy) as info:
            await openai(PoolExhausted("full")).chat(CALL)
        assert not info.value.blames_provider and info.value.retryable


def sse(*events: bytes) -> tuple[bytes, ...]:
    return tuple(b"data: " + e + b"\n\n" for e in events)


CHUNK = orjson.dumps({"choices": [{"index": 0, "delta": {"content": "hi"}}]})


class TestOpenAIStream:
    async def test_chunks_then_done(self) -> None:
        p = openai(Scripted(body=sse(CHUNK, CHUNK, b"[DONE]")))
        stream = await p.chat_stream(CALL)
        rest = [part async for part in stream.rest]
        assert stream.first + b"".join(rest) == b"".join(sse(CHUNK, CHUNK))
        assert stream.state.completed

    async def test_an_oversized_event_before_the_first_chunk(self) -> None:
        limits = UpstreamLimits(max_sse_event_bytes=1024)
        with pytest.raises(UpstreamTooLarge, match="server-sent event"):
            await openai(Scripted(body=(b"data: " + b"x" * 4096,)), limits).chat_stream(CALL)

    async def test_an_oversized_event_mid_stream_cuts_the_stream(self) -> None:
        limits = UpstreamLimits(max_sse_event_bytes=1024)
        stream = await openai(
            Scripted(body=(*sse(CHUNK), b"data: " + b"x" * 4096)), limits
        ).chat_stream(CALL)
        with pytest.raises(StreamInterrupted, match="server-sent event"):
            async for _ in stream.rest:
                pass

    async def test_a_cut_mid_stream(self) -> None:
        reply = Scripted(body=sse(CHUNK), fail=ConnectionClosed("cut"))
        stream = await openai(reply).chat_stream(CALL)
        with pytest.raises(StreamInterrupted):
            async for _ in stream.rest:
                pass


def anthropic(reply: Scripted) -> AnthropicProvider:
    cfg = ProviderConfig("claude", "anthropic", "http://upstream.invalid", KEY)
    return AnthropicProvider(cfg, MemoryTransport(lambda sent: reply), scrub=Scrubber([KEY]))


MESSAGE = orjson.dumps(
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "bonjour"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 4, "output_tokens": 1},
    }
)


class TestAnthropic:
    async def test_a_message_becomes_a_chat_completion(self) -> None:
        p = anthropic(Scripted(body=(MESSAGE,)))
        reply = await p.chat(CALL)
        out = orjson.loads(reply.body)
        assert out["choices"][0]["message"]["content"] == "bonjour"
        assert reply.usage.total_tokens == 5
        sent = sent_of(p)[0]
        assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == KEY

    @pytest.mark.parametrize(
        "body",
        [b"nope", b"[]", b'{"type": "error", "error": {"message": "overloaded"}}', b"{}"],
        ids=["not-json", "not-object", "error-object", "no-content"],
    )
    async def test_a_200_that_is_not_a_message(self, body: bytes) -> None:
        with pytest.raises(ProviderError) as info:
            await anthropic(Scripted(body=(body,))).chat(CALL)
        assert info.value.code == "upstream_invalid_response"

    async def test_an_error_message_is_scrubbed(self) -> None:
        err = {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": f"x-api-key: {KEY}"},
        }
        with pytest.raises(ProviderRejected) as info:
            await anthropic(Scripted(status=400, body=(orjson.dumps(err),))).chat(CALL)
        assert KEY not in info.value.message

    async def test_a_stream_error_event_is_scrubbed(self) -> None:
        """An ``error`` event (its text reflected from our headers) reaches nobody unscrubbed."""
        event = orjson.dumps(
            {"type": "error", "error": {"type": "overloaded_error", "message": f"key {KEY}"}}
        )
        p = anthropic(Scripted(body=(b"event: error\ndata: " + event + b"\n\n",)))
        with pytest.raises(StreamInterrupted) as info:
            await p.chat_stream(CALL)
        assert KEY not in info.value.message and "overloaded_error" in info.value.message

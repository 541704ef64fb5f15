"""The fake Anthropic server speaks the documented wire format over real loopback HTTP.

The client here is a plain aiohttp session, independent of the gateway's own upstream
client (``gatekeeper.providers.h1``, tested in ``test_upstream_client.py``), so a bug in
one cannot hide a bug in the other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import aiohttp
import orjson
import pytest

from gatekeeper.providers.anthropic_stream import SSEParser, StreamTranslator
from gatekeeper.providers.anthropic_wire import (
    anthropic_headers,
    error_from_anthropic,
    from_anthropic_response,
    to_anthropic_request,
)
from tests.harness.behavior import Behavior
from tests.harness.fake_anthropic import FakeAnthropic

HEADERS = anthropic_headers("sk-ant-test")
BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hello"}],
}
WEATHER_TOOL = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession,
    fake: FakeAnthropic,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    payload = orjson.dumps(BODY if body is None else body)
    url = f"{fake.url}/v1/messages"
    async with http.post(url, data=payload, headers=HEADERS if headers is None else headers) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


async def stream_events(
    http: aiohttp.ClientSession, fake: FakeAnthropic, body: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    parser = SSEParser()
    events: list[tuple[str, dict[str, Any]]] = []
    async with http.post(f"{fake.url}/v1/messages", json=body, headers=HEADERS) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        async for chunk in resp.content.iter_any():
            events += [(name, orjson.loads(data)) for name, data in parser.feed(chunk)]
    return events


class TestFakeAnthropicStartStop:
    def test_binds_a_free_loopback_port(self) -> None:
        """Two servers at once each get their own 127.0.0.1 port; stop() is idempotent."""
        with FakeAnthropic() as one, FakeAnthropic() as two:
            assert one.url.startswith("http://127.0.0.1:")
            assert one.url != two.url
        one.stop()


class TestFakeAnthropicRequestChecks:
    async def test_missing_api_key_is_401(
        self, fake: FakeAnthropic, http: aiohttp.ClientSession
    ) -> None:
        """No x-api-key → 401 authentication_error in Anthropic's error shape."""
        status, _, body = await post(http, fake, headers={"anthropic-version": "2023-06-01"})
        assert status == 401
        error = orjson.loads(body)
        assert error["type"] == "error"
        assert error["error"]["type"] == "authentication_error"
        assert error["request_id"].startswith("req_")

    async def test_wrong_api_key_is_401_when_a_key_is_set(
        self, http: aiohttp.ClientSession
    ) -> None:
        """With api_key given, only that key is accepted."""
        with FakeAnthropic(api_key="sk-ant-right") as fake:
            status, _, _ = await post(http, fake)
            assert status == 401
            status, _, _ = await post(http, fake, headers=anthropic_headers("sk-ant-right"))
            assert status == 200

    async def test_missing_version_header_is_400(
        self, fake: FakeAnthropic, http: aiohttp.ClientSession
    ) -> None:
        """No anthropic-version → 400 invalid_request_error, as the real API answers."""
        status, _, body = await post(http, fake, headers={"x-api-key": "k"})
        assert status == 400
        assert orjson.loads(body)["error"]["type"] == "invalid_request_error"

    @pytest.mark.parametrize("missing", ["model", "max_tokens", "messages"])
    async def test_required_fields(
        self, fake: FakeAnthropic, http: aiohttp.ClientSession, missing: str
    ) -> None:
        """model, max_tokens and messages are required; the script is not consulted."""
        fake.script.push(Behavior(status=500))
        body = {k: v for k, v in BODY.items() if k != missing}
        status, _, raw = await post(http, fake, body=body)
        assert status == 400
        assert orjson.loads(raw)["error"]["type"] == "invalid_request_error"
        assert fake.script.requests == []
        assert (await post(http, fake))[0] == 500  # the scripted behaviour is still queued


class TestFakeAnthropicMessages:
    async def test_message_shape(self, fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
        """A non-streaming answer is a complete Messages object; the request is recorded."""
        fake.script.push(Behavior(text="Hi there", prompt_tokens=11, completion_tokens=3))
        status, headers, raw = await post(http, fake)
        assert status == 200
        assert headers["content-type"].startswith("application/json")
        message = orjson.loads(raw)
        assert message["id"].startswith("msg_")
        assert message == {
            "id": message["id"],
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": "Hi there"}],
            "model": "claude-sonnet-4-5",
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 3},
        }
        assert fake.script.requests == [BODY]
        assert fake.script.headers[0]["x-api-key"] == "sk-ant-test"
        assert fake.script.headers[0]["anthropic-version"] == "2023-06-01"

    async def test_scripted_tool_use(
        self, fake: FakeAnthropic, http: aiohttp.ClientSession
    ) -> None:
        """'TOOL:<name> <json>' on a request with tools answers with a tool_use block."""
        fake.script.push(Behavior(text='TOOL:get_weather {"city": "Oslo"}'))
        _, _, raw = await post(http, fake, body={**BODY, "tools": [WEATHER_TOOL]})
        message = orjson.loads(raw)
        assert message["stop_reason"] == "tool_use"
        (block,) = message["content"]
        assert block["type"] == "tool_use"
        assert block["id"].startswith("toolu_")
        assert (block["name"], block["input"]) == ("get_weather", {"city": "Oslo"})

    async def test_tool_text_without_tools_is_plain_text(
        self, fake: FakeAnthropic, http: aiohttp.ClientSession
    ) -> None:
        """Without tools in the request the TOOL: text is just text."""
        fake.script.push(Behavior(text="TOOL:"))
        _, _, raw = await post(http, fake)
        assert orjson.loads(raw)["content"] == [{"type": "text", "text": "TOOL:"}]

    @pytest.mark.parametrize(
        ("status", "kind"),
        [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (529, "overloaded_error"),
        ],
    )
    async def test_error_statuses(
        self, fake: FakeAnthropic, http: aiohttp.ClientSession, status: int, kind: str
    ) -> None:
        """Each scripted status carries its documented Anthropic error type."""
        fake.script.push(Behavior(status=status, error_message="nope"))
        got, headers, raw = await post(http, fake)
        assert got == status
        assert "retry-after" not in headers
        error = orjson.loads(raw)
        assert (error["type"], error["error"]) == ("error", {"type": kind, "message": "nope"})

    async def test_retry_after_and_extra_headers(
        self, fake: FakeAnthropic, http: aiohttp.ClientSession
    ) -> None:
        """retry_after becomes a retry-after header; extra_headers are sent as given."""
        fake.script.push(
            Behavior(status=429, retry_after=2, extra_headers={"x-should-retry": "true"})
        )
        status, headers, _ = await post(http, fake)
        assert status == 429
        assert headers["retry-after"] == "2"
        assert headers["x-should-retry"] == "true"

    async def test_first_byte_delay(self, fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
        """Nothing arrives before first_byte_delay has passed."""
        fake.script.push(Behavior(first_byte_delay=0.3))
        started = time.monotonic()
        status, _, _ = await post(http, fake)
        assert status == 200
        assert time.monotonic() - started >= 0.3

    async def test_cut_json_body(self, fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
        """cut_after_chunks on a JSON answer drops the connection halfway through the body."""
        fake.script.push(Behavior(cut_after_chunks=0))
        with pytest.raises(aiohttp.ClientPayloadError):
            await post(http, fake)


class TestFakeAnthropicStream:
    async def test_documented_event_sequence(
        self, fake: FakeAnthropic, http: aiohttp.ClientSession
    ) -> None:
        """message_start, content_block_start, ping, N text deltas, stop, delta, message_stop."""
        fake.script.push(Behavior(text="Hello, stream!", chunks=4, completion_tokens=9))
        events = await stream_events(http, fake, {**BODY, "stream": True})
        names = [name for name, _ in events]
        assert names == [
            "message_start",
            "content_block_start",
            "ping",
            *["content_block_delta"] * 4,
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        assert all(data["type"] == name for name, data in events)
        start = events[0][1]["message"]
        assert start["content"] == [] and start["stop_reason"] is None
        assert start["usage"] == {"input_tokens": 7, "output_tokens": 1}
        assert events[1][1]["content_block"] == {"type": "text", "text": ""}
        deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
        assert {d["type"] for d in deltas} == {"text_delta"}
        assert "".join(d["text"] for d in deltas) == "Hello, stream!"
        assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
        assert events[-2][1]["usage"] == {"output_tokens": 9}

    async def test_tool_use_stream(self, fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
        """A scripted tool call streams as tool_use start + input_json_delta fragments."""
        fake.script.push(Behavior(text='TOOL:get_weather {"city": "Lima"}', chunks=3))
        body = {**BODY, "stream": True, "tools": [WEATHER_TOOL]}
        events = await stream_events(http, fake, body)
        block = events[1][1]["content_block"]
        assert (block["type"], block["name"], block["input"]) == ("tool_use", "get_weather", {})
        fragments = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
        assert len(fragments) == 3
        assert orjson.loads("".join(fragments)) == {"city": "Lima"}
        assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    async def test_chunk_delay_paces_the_deltas(
        self, fake: FakeAnthropic, http: aiohttp.ClientSession
    ) -> None:
        """chunk_delay separates consecutive deltas."""
        fake.script.push(Behavior(chunks=4, chunk_delay=0.1))
        started = time.monotonic()
        await stream_events(http, fake, {**BODY, "stream": True})
        assert time.monotonic() - started >= 0.3

    async def test_cut_after_chunks(self, fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
        """The connection drops after N deltas, the chunked body left unterminated."""
        fake.script.push(Behavior(chunks=5, cut_after_chunks=2))
        parser, seen = SSEParser(), []
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.post(
                f"{fake.url}/v1/messages", json={**BODY, "stream": True}, headers=HEADERS
            ) as resp:
                async for chunk in resp.content.iter_any():
                    seen += [name for name, _ in parser.feed(chunk)]
        assert seen.count("content_block_delta") == 2
        assert "message_stop" not in seen

    async def test_client_disconnect_is_recorded(
        self, fake: FakeAnthropic, http: aiohttp.ClientSession
    ) -> None:
        """A client that hangs up mid-stream shows in script.disconnects."""
        fake.script.push(Behavior(chunks=50, chunk_delay=0.02))
        resp = await http.post(
            f"{fake.url}/v1/messages", json={**BODY, "stream": True}, headers=HEADERS
        )
        await resp.content.readany()
        resp.close()
        for _ in range(250):  # the fake notices at its next write
            if fake.script.disconnects:
                break
            await asyncio.sleep(0.02)
        assert fake.script.disconnects == 1

    async def test_client_gone_during_first_byte_delay_is_recorded(
        self, fake: FakeAnthropic
    ) -> None:
        """A client that times out before the first byte also counts as a disconnect."""
        fake.script.push(Behavior(first_byte_delay=0.5))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.1)) as http:
            with pytest.raises(asyncio.TimeoutError):
                await post(http, fake)
        for _ in range(100):  # the fake notices when its delay ends
            if fake.script.disconnects:
                break
            await asyncio.sleep(0.02)
        assert fake.script.disconnects == 1


class TestTranslationAgainstFake:
    """The pure translation round-trips through the fake's real wire output."""

    OPENAI_BODY: ClassVar[dict[str, Any]] = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ],
    }

    async def test_non_streaming(self, fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
        """OpenAI body → fake Anthropic → OpenAI chat.completion."""
        fake.script.push(Behavior(text="Hello!", prompt_tokens=9, completion_tokens=2))
        body = to_anthropic_request(self.OPENAI_BODY, "claude-sonnet-4-5", 256)
        status, _, raw = await post(http, fake, body=body)
        assert status == 200
        assert fake.script.requests[0]["system"] == "Be brief."
        out = from_anthropic_response(orjson.loads(raw), "gpt-4o", "chatcmpl-1", 0)
        assert out["choices"][0]["message"]["content"] == "Hello!"
        assert out["usage"]["total_tokens"] == 11

    async def test_streaming(self, fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
        """The fake's SSE, parsed and translated, is a well-formed OpenAI chunk stream."""
        fake.script.push(Behavior(text="Hello, world!", chunks=5))
        openai_body = {**self.OPENAI_BODY, "stream": True}
        body = to_anthropic_request(openai_body, "claude-sonnet-4-5", 256)
        translator = StreamTranslator("gpt-4o", "chatcmpl-1", 0, include_usage=True)
        lines: list[bytes] = []
        for name, data in await stream_events(http, fake, body):
            lines += translator.feed(name, orjson.dumps(data))
        chunks = [orjson.loads(line[6:]) for line in lines]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "Hello, world!"
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["usage"]["completion_tokens"] == 5
        assert translator.finished

    async def test_error(self, fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
        """An overloaded answer parses into its message and type for the pool."""
        fake.script.push(Behavior(status=529, error_message="Overloaded"))
        status, _, raw = await post(http, fake)
        assert error_from_anthropic(status, raw) == ("Overloaded", "overloaded_error")

"""OpenAI chat ⇄ Anthropic Messages translation, as the two wire formats document it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gatekeeper.errors import InvalidRequest, ProviderError, StreamInterrupted
from gatekeeper.providers.anthropic_stream import SSEParser, StreamTranslator
from gatekeeper.providers.anthropic_wire import (
    ANTHROPIC_VERSION,
    TokenUsage,
    anthropic_headers,
    error_from_anthropic,
    from_anthropic_response,
    to_anthropic_request,
)


def translate(**body: Any) -> dict[str, Any]:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return to_anthropic_request(body, "claude-sonnet-4-5", 1024)


def text(t: str) -> dict[str, str]:
    return {"type": "text", "text": t}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


class TestToAnthropicRequest:
    def test_minimal_request(self) -> None:
        """The upstream model, the default max_tokens and the messages as content blocks."""
        assert translate() == {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": [text("hi")]}],
        }

    def test_anthropic_headers(self) -> None:
        """Every call carries x-api-key and anthropic-version."""
        headers = anthropic_headers("sk-ant-test")
        assert headers["x-api-key"] == "sk-ant-test"
        assert headers["anthropic-version"] == ANTHROPIC_VERSION == "2023-06-01"

    def test_system_and_developer_messages_become_top_level_system(self) -> None:
        """System text, strings or parts, is hoisted out and joined by blank lines."""
        out = translate(
            messages=[
                {"role": "system", "content": "Be terse."},
                {"role": "developer", "content": [text("Answer in French."), text("")]},
                {"role": "user", "content": "hi"},
            ]
        )
        assert out["system"] == "Be terse.\n\nAnswer in French."
        assert out["messages"] == [{"role": "user", "content": [text("hi")]}]

    def test_consecutive_same_role_messages_merge(self) -> None:
        """Anthropic requires alternation, so runs of one role become one turn."""
        out = translate(
            messages=[
                {"role": "user", "content": "one"},
                {"role": "user", "content": [text("two")]},
                {"role": "assistant", "content": "three"},
                {"role": "assistant", "content": "four"},
                {"role": "user", "content": "five"},
            ]
        )
        assert out["messages"] == [
            {"role": "user", "content": [text("one"), text("two")]},
            {"role": "assistant", "content": [text("three"), text("four")]},
            {"role": "user", "content": [text("five")]},
        ]

    def test_empty_messages_are_skipped(self) -> None:
        """Anthropic rejects empty content, so an empty message disappears."""
        out = translate(
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": "again"},
            ]
        )
        assert out["messages"] == [{"role": "user", "content": [text("hi"), text("again")]}]

    def test_max_tokens(self) -> None:
        """max_completion_tokens wins over max_tokens; the default fills in when absent."""
        assert translate(max_tokens=50)["max_tokens"] == 50
        assert translate(max_tokens=50, max_completion_tokens=70)["max_tokens"] == 70

    @pytest.mark.parametrize("value", [0, -3, "10", True, 1.5])
    def test_bad_max_tokens_is_rejected(self, value: object) -> None:
        """A max_tokens that is not a positive integer names the parameter."""
        with pytest.raises(InvalidRequest) as info:
            translate(max_tokens=value)
        assert info.value.param == "max_tokens"

    def test_sampling_parameters(self) -> None:
        """temperature (clamped to Anthropic's 0–1), top_p, stop → stop_sequences."""
        out = translate(temperature=0.3, top_p=0.9, stop="END")
        assert (out["temperature"], out["top_p"], out["stop_sequences"]) == (0.3, 0.9, ["END"])
        out = translate(temperature=1.7, top_p=1, stop=["a", "b"])
        assert out["temperature"] == 1.0
        assert "top_p" not in out  # 1.0 is the default; newer models reject both set
        assert out["stop_sequences"] == ["a", "b"]

    def test_user_stream_and_harmless_fields(self) -> None:
        """user → metadata.user_id, stream kept; seed, penalties and the like are dropped."""
        out = translate(
            user="u-42",
            stream=True,
            stream_options={"include_usage": True},
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            logit_bias={"1": 2},
            response_format={"type": "text"},
            n=1,
        )
        assert out["metadata"] == {"user_id": "u-42"}
        assert out["stream"] is True
        assert set(out) == {"model", "max_tokens", "messages", "metadata", "stream"}

    @pytest.mark.parametrize(
        ("field", "param"),
        [
            ({"n": 2}, "n"),
            ({"logprobs": True}, "logprobs"),
            ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
            ({"modalities": ["text", "audio"]}, "modalities"),
            ({"functions": [{"name": "f"}]}, "functions"),
            ({"stop": [1]}, "stop"),
            ({"temperature": "hot"}, "temperature"),
        ],
    )
    def test_fields_that_cannot_be_honoured_are_rejected(
        self, field: dict[str, Any], param: str
    ) -> None:
        """A field Anthropic cannot honour raises InvalidRequest naming it."""
        with pytest.raises(InvalidRequest) as info:
            translate(**field)
        assert info.value.param == param

    @pytest.mark.parametrize(
        ("messages", "param"),
        [
            ([], "messages"),
            ([{"role": "system", "content": "only rules"}], "messages"),
            ([{"role": "function", "content": "x"}], "messages[0].role"),
            ([{"role": "user", "content": [{"type": "input_audio"}]}], "messages[0].content[0]"),
            ([{"role": "user", "content": 42}], "messages[0].content"),
        ],
    )
    def test_bad_messages_are_rejected(self, messages: list[Any], param: str) -> None:
        """Messages Anthropic cannot take raise InvalidRequest with the offending path."""
        with pytest.raises(InvalidRequest) as info:
            translate(messages=messages)
        assert info.value.param == param

    def test_tools_become_anthropic_tools(self) -> None:
        """Function tools → {name, description, input_schema}; no schema → empty object."""
        bare = {"type": "function", "function": {"name": "ping"}}
        out = translate(tools=[WEATHER_TOOL, bare])
        assert out["tools"] == [
            {
                "name": "get_weather",
                "description": "Current weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
            {"name": "ping", "input_schema": {"type": "object", "properties": {}}},
        ]
        assert "tool_choice" not in out

    def test_non_function_tools_are_rejected(self) -> None:
        """Only function tools have an Anthropic equivalent."""
        with pytest.raises(InvalidRequest) as info:
            translate(tools=[WEATHER_TOOL, {"type": "custom", "custom": {"name": "x"}}])
        assert info.value.param == "tools[1]"

    @pytest.mark.parametrize(
        ("choice", "expected"),
        [
            ("auto", {"type": "auto"}),
            ("none", {"type": "none"}),
            ("required", {"type": "any"}),
            (
                {"type": "function", "function": {"name": "get_weather"}},
                {"type": "tool", "name": "get_weather"},
            ),
        ],
    )
    def test_tool_choice(self, choice: object, expected: dict[str, Any]) -> None:
        """auto/none/required/a named function → auto/none/any/tool."""
        assert translate(tools=[WEATHER_TOOL], tool_choice=choice)["tool_choice"] == expected

    def test_parallel_tool_calls_false(self) -> None:
        """parallel_tool_calls=false → disable_parallel_tool_use on the tool choice."""
        out = translate(tools=[WEATHER_TOOL], parallel_tool_calls=False)
        assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
        out = translate(tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False)
        assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}

    def test_bad_tool_choice_is_rejected(self) -> None:
        """An unknown tool_choice names the parameter."""
        with pytest.raises(InvalidRequest) as info:
            translate(tools=[WEATHER_TOOL], tool_choice="sometimes")
        assert info.value.param == "tool_choice"

    def test_tool_round_trip_history(self) -> None:
        """Assistant tool_calls → tool_use blocks; tool messages → one user turn of results."""
        out = translate(
            messages=[
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "toolu_2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C sunny"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": [text("21C")]},
                {"role": "user", "content": "Thanks"},
            ]
        )
        assert out["messages"][1:] == [
            {
                "role": "assistant",
                "content": [
                    text("Checking."),
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [text("21C")]},
                    text("Thanks"),
                ],
            },
        ]

    def test_assistant_with_only_tool_calls(self) -> None:
        """content: null next to tool_calls yields just the tool_use block."""
        call = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        out = translate(
            messages=[
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
            ]
        )
        assert out["messages"][1]["content"] == [
            {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
        ]

    @pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
    def test_tool_call_arguments_must_be_a_json_object(self, arguments: str) -> None:
        """Arguments Anthropic cannot take as `input` name the exact field."""
        call = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": arguments}}
        with pytest.raises(InvalidRequest) as info:
            translate(messages=[{"role": "assistant", "tool_calls": [call]}])
        assert info.value.param == "messages[0].tool_calls[0].function.arguments"

    def test_tool_message_needs_its_call_id(self) -> None:
        """A tool result without tool_call_id cannot be linked to its tool_use."""
        with pytest.raises(InvalidRequest) as info:
            translate(messages=[{"role": "tool", "content": "x"}])
        assert info.value.param == "messages[0].tool_call_id"

    def test_images(self) -> None:
        """A base64 data: URL → base64 source; an https URL → url source; order kept."""
        out = translate(
            messages=[
                {
                    "role": "user",
                    "content": [
                        text("What is in these?"),
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0K"},
                        },
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"},
                        },
                    ],
                }
            ]
        )
        assert out["messages"][0]["content"] == [
            text("What is in these?"),
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
            },
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ]

    @pytest.mark.parametrize(
        "url", ["ftp://example.com/a.png", "data:image/png,rawbytes", "data:;base64,AAAA"]
    )
    def test_unusable_image_urls_are_rejected(self, url: str) -> None:
        """Only http(s) and base64 data: URLs have an Anthropic image source."""
        part = {"type": "image_url", "image_url": {"url": url}}
        with pytest.raises(InvalidRequest) as info:
            translate(messages=[{"role": "user", "content": [part]}])
        assert info.value.param == "messages[0].content[0]"


def anthropic_message(**overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "content": [text("Hello"), text(", world")],
        "model": "claude-sonnet-4-5",
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 6},
    }
    message.update(overrides)
    return message


class TestFromAnthropicResponse:
    def test_text_answer(self) -> None:
        """Text blocks are joined; the public model, id and created are the caller's."""
        out = from_anthropic_response(anthropic_message(), "gpt-4o", "chatcmpl-abc", 1700000000)
        assert out == {
            "id": "chatcmpl-abc",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello, world", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 12,
                "completion_tokens": 6,
                "total_tokens": 18,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        }

    @pytest.mark.parametrize(
        ("stop_reason", "finish"),
        [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("something_new", "stop"),
            (None, "stop"),
        ],
    )
    def test_stop_reasons(self, stop_reason: str | None, finish: str) -> None:
        """Anthropic's stop_reason maps onto OpenAI's finish_reason."""
        out = from_anthropic_response(anthropic_message(stop_reason=stop_reason), "m", "id", 0)
        assert out["choices"][0]["finish_reason"] == finish

    def test_cache_tokens_count_as_prompt_tokens(self) -> None:
        """Cache writes and reads are prompt tokens; reads also show as cached_tokens."""
        usage = {
            "input_tokens": 10,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 1000,
            "output_tokens": 5,
        }
        out = from_anthropic_response(anthropic_message(usage=usage), "m", "id", 0)
        assert out["usage"] == {
            "prompt_tokens": 1110,
            "completion_tokens": 5,
            "total_tokens": 1115,
            "prompt_tokens_details": {"cached_tokens": 1000},
        }

    def test_tool_use_becomes_tool_calls(self) -> None:
        """tool_use blocks → tool_calls with JSON-string arguments; no text → content null."""
        content = [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Rome"}},
            {"type": "tool_use", "id": "toolu_2", "name": "ping", "input": {}},
        ]
        body = anthropic_message(content=content, stop_reason="tool_use")
        message = from_anthropic_response(body, "m", "id", 0)["choices"][0]["message"]
        assert message["content"] is None
        assert message["tool_calls"] == [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
            },
            {"id": "toolu_2", "type": "function", "function": {"name": "ping", "arguments": "{}"}},
        ]

    def test_thinking_blocks_are_left_out(self) -> None:
        """Blocks OpenAI has no place for (thinking) do not leak into the content."""
        content = [{"type": "thinking", "thinking": "hmm", "signature": "s"}, text("42")]
        out = from_anthropic_response(anthropic_message(content=content), "m", "id", 0)
        assert out["choices"][0]["message"]["content"] == "42"

    def test_body_without_content_is_a_provider_error(self) -> None:
        """A 200 that is not a message is the upstream's fault, so failover can try another."""
        with pytest.raises(ProviderError):
            from_anthropic_response({"type": "message"}, "m", "id", 0)


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {orjson.dumps(data).decode()}\n\n".encode()


# A realistic recorded stream: a text block, then a tool call whose input arrives as
# input_json_delta fragments, with a ping between — the order Anthropic documents.
TOOL_STREAM = b"".join(
    [
        sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 472,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 28,
                        "output_tokens": 2,
                    },
                },
            },
        ),
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": text("")},
        ),
        sse("ping", {"type": "ping"}),
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Okay"},
            },
        ),
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": ", checking."},
            },
        ),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    "name": "get_weather",
                    "input": {},
                },
            },
        ),
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
        ),
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": "San'},
            },
        ),
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": ' Francisco"}'},
            },
        ),
        sse("content_block_stop", {"type": "content_block_stop", "index": 1}),
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 89},
            },
        ),
        sse("message_stop", {"type": "message_stop"}),
    ]
)


def run_stream(raw: bytes, *, include_usage: bool, step: int | None = None) -> list[Any]:
    """Feed ``raw`` through SSEParser + StreamTranslator, ``step`` bytes at a time."""
    parser = SSEParser()
    translator = StreamTranslator("gpt-4o", "chatcmpl-1", 1700000000, include_usage)
    out: list[bytes] = []
    step = step or len(raw)
    for i in range(0, len(raw), step):
        for event, data in parser.feed(raw[i : i + step]):
            out += translator.feed(event, data)
    assert translator.finished
    for line in out:
        assert line.startswith(b"data: ") and line.endswith(b"\n\n")
    return [orjson.loads(line[6:]) for line in out]


class TestStreamTranslator:
    def test_tool_stream_becomes_openai_chunks(self) -> None:
        """Role first, text deltas, a tool call opening then its argument fragments, finish."""
        chunks = run_stream(TOOL_STREAM, include_usage=False)
        deltas = [c["choices"][0]["delta"] for c in chunks]
        assert deltas == [
            {"role": "assistant", "content": ""},
            {"content": "Okay"},
            {"content": ", checking."},
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            },
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "San'}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": ' Francisco"}'}}]},
            {},
        ]
        assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 6 + ["tool_calls"]
        assert {(c["id"], c["object"], c["model"], c["created"]) for c in chunks} == {
            ("chatcmpl-1", "chat.completion.chunk", "gpt-4o", 1700000000)
        }
        assert all("usage" not in c for c in chunks)

    def test_usage_chunk_when_asked(self) -> None:
        """With include_usage a last chunk has choices: [] and the usage; others usage: null."""
        chunks = run_stream(TOOL_STREAM, include_usage=True)
        assert all(c["usage"] is None for c in chunks[:-1])
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {
            "prompt_tokens": 500,
            "completion_tokens": 89,
            "total_tokens": 589,
            "prompt_tokens_details": {"cached_tokens": 28},
        }

    def test_translator_exposes_usage_and_finished(self) -> None:
        """The caller reads the usage for billing whether or not the client asked for it."""
        translator = StreamTranslator("m", "c", 0, include_usage=False)
        assert not translator.finished
        for event, data in SSEParser().feed(TOOL_STREAM):
            translator.feed(event, data)
        assert translator.finished
        assert translator.usage == TokenUsage(500, 89, 28)
        assert translator.usage.total_tokens == 589

    @pytest.mark.parametrize("step", [1, 2, 3, 7, 64])
    def test_events_split_across_reads(self, step: int) -> None:
        """Bytes arriving in arbitrary slices give exactly the same chunks."""
        whole = run_stream(TOOL_STREAM, include_usage=True)
        assert run_stream(TOOL_STREAM, include_usage=True, step=step) == whole

    def test_crlf_stream(self) -> None:
        """A CRLF-framed stream translates the same as an LF one."""
        crlf = TOOL_STREAM.replace(b"\n", b"\r\n")
        assert run_stream(crlf, include_usage=True, step=5) == run_stream(
            TOOL_STREAM, include_usage=True
        )

    @pytest.mark.parametrize(
        ("stop_reason", "finish"), [("end_turn", "stop"), ("max_tokens", "length")]
    )
    def test_finish_reason(self, stop_reason: str, finish: str) -> None:
        """The finish chunk carries the mapped message_delta stop_reason."""
        translator = StreamTranslator("m", "c", 0, include_usage=False)
        translator.feed("message_start", b'{"type":"message_start","message":{"usage":{}}}')
        delta = {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {}}
        assert translator.feed("message_delta", orjson.dumps(delta)) == []
        (last,) = translator.feed("message_stop", b'{"type":"message_stop"}')
        assert orjson.loads(last[6:])["choices"][0]["finish_reason"] == finish

    def test_ping_and_block_stop_emit_nothing(self) -> None:
        """Keep-alives and block boundaries have no OpenAI counterpart."""
        translator = StreamTranslator("m", "c", 0, include_usage=False)
        assert translator.feed("ping", b'{"type": "ping"}') == []
        assert translator.feed("content_block_stop", b'{"type":"content_block_stop"}') == []
        assert translator.feed("some_future_event", b"{}") == []

    def test_event_type_from_payload_when_event_line_missing(self) -> None:
        """Without an `event:` line (type "message") the payload's type decides."""
        translator = StreamTranslator("m", "c", 0, include_usage=False)
        (role,) = translator.feed("message", b'{"type":"message_start","message":{}}')
        assert orjson.loads(role[6:])["choices"][0]["delta"]["role"] == "assistant"

    def test_nothing_after_message_stop(self) -> None:
        """Once finished, late events are ignored."""
        translator = StreamTranslator("m", "c", 0, include_usage=False)
        translator.feed("message_stop", b'{"type":"message_stop"}')
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}
        assert translator.feed("content_block_delta", orjson.dumps(delta)) == []

    def test_error_event_raises_stream_interrupted(self) -> None:
        """A mid-stream error event raises StreamInterrupted carrying the upstream status."""
        translator = StreamTranslator("m", "c", 0, include_usage=False)
        translator.feed("message_start", b'{"type":"message_start","message":{}}')
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        with pytest.raises(StreamInterrupted) as info:
            translator.feed("error", orjson.dumps(error))
        assert info.value.upstream_status == 529
        assert "Overloaded" in info.value.message
        assert not translator.finished

    def test_malformed_event_raises_stream_interrupted(self) -> None:
        """Data that is not a JSON object is an interrupted stream, not a crash."""
        translator = StreamTranslator("m", "c", 0, include_usage=False)
        with pytest.raises(StreamInterrupted):
            translator.feed("content_block_delta", b"{truncated")


class TestSSEParser:
    def test_events_and_data(self) -> None:
        """Each blank-line-terminated block is one (event, data) pair."""
        parser = SSEParser()
        raw = b'event: ping\ndata: {"type":"ping"}\n\nevent: message_stop\ndata: {}\n\n'
        assert parser.feed(raw) == [("ping", b'{"type":"ping"}'), ("message_stop", b"{}")]

    def test_incomplete_event_waits(self) -> None:
        """Nothing is returned until the event's blank line arrives."""
        parser = SSEParser()
        assert parser.feed(b"event: ping\ndata: {}") == []
        assert parser.feed(b"\n") == []
        assert parser.feed(b"\n") == [("ping", b"{}")]

    def test_line_endings(self) -> None:
        """LF, CRLF and lone CR all end lines — even a CRLF split between two reads."""
        parser = SSEParser()
        assert parser.feed(b"event: a\r\ndata: 1\r") == []
        assert parser.feed(b"\ndata: 2\r\n\r\n") == [("a", b"1\n2")]  # not a blank line
        assert parser.feed(b"event: b\rdata: 3\r\r") == [("b", b"3")]

    def test_comments_multiline_data_and_defaults(self) -> None:
        """Comments are skipped, data lines join with \\n, no event line means "message"."""
        parser = SSEParser()
        raw = b": keep-alive\n\ndata: line one\ndata:line two\nid: 7\n\nevent: empty\ndata:\n\n"
        assert parser.feed(raw) == [("message", b"line one\nline two")]

    def test_leading_bom_is_ignored(self) -> None:
        """A UTF-8 byte order mark at the very start is not part of the first field."""
        parser = SSEParser()
        assert parser.feed(b"\xef\xbb") == []
        assert parser.feed(b"\xbfevent: x\ndata: 1\n\n") == [("x", b"1")]


class TestErrorFromAnthropic:
    def test_documented_error_body(self) -> None:
        """The message and type come from Anthropic's error object."""
        body = orjson.dumps(
            {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"},
                "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
            }
        )
        assert error_from_anthropic(529, body) == ("Overloaded", "overloaded_error")

    @pytest.mark.parametrize(
        ("status", "kind"),
        [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (529, "overloaded_error"),
            (418, "invalid_request_error"),
        ],
    )
    def test_type_from_status_when_body_is_not_anthropic(self, status: int, kind: str) -> None:
        """A proxy's HTML page still yields a type (from the status) and a short message."""
        message, got = error_from_anthropic(status, b"<html>Bad Gateway</html>")
        assert (message, got) == ("<html>Bad Gateway</html>", kind)

    def test_empty_body(self) -> None:
        """No body at all: the message says which status came back."""
        assert error_from_anthropic(500, b"") == ("HTTP 500", "api_error")

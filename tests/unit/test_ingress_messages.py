"""The Messages API adapters as pure functions, against the shapes Anthropic documents."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gatekeeper.errors import (
    AuthError,
    BudgetExceeded,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from gatekeeper.ingress.messages_stream import MessagesStream
from gatekeeper.ingress.messages_wire import count_tokens, error_body, from_chat, to_chat

# The tool-use example of Anthropic's Messages API reference (a weather tool).
DOC_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "system": [{"type": "text", "text": "You are a weather bot."}],
    "tools": [{
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                         "required": ["location"]},
    }],
    "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    "stop_sequences": ["\n\nHuman:"],
    "temperature": 0.5,
    "top_k": 40,
    "metadata": {"user_id": "user-123"},
    "messages": [
        {"role": "user", "content": "What's the weather like in San Francisco?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Let me look it up.", "signature": "sig"},
            {"type": "text", "text": "I'll check."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
             "input": {"location": "San Francisco, CA"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
             "content": [{"type": "text", "text": "15 degrees"}]},
            {"type": "text", "text": "And tomorrow?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}},
        ]},
    ],
}  # fmt: skip


class TestRequest:
    def test_the_documented_tool_use_request_becomes_a_chat_request(self) -> None:
        """System, tools, tool_choice, stop, sampling, metadata and every block type map over;
        the alias picks the matrix model; thinking is dropped."""
        chat = to_chat(DOC_REQUEST, {"claude-sonnet-4-5": "gpt-4o"})
        assert chat == {
            "model": "gpt-4o",
            "max_tokens": 1024,
            "temperature": 0.5,
            "stop": ["\n\nHuman:"],
            "user": "user-123",
            "tools": [{"type": "function", "function": {
                "name": "get_weather",
                "description": "Get the current weather in a given location",
                "parameters": DOC_REQUEST["tools"][0]["input_schema"]}}],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "messages": [
                {"role": "system", "content": "You are a weather bot."},
                {"role": "user", "content": "What's the weather like in San Francisco?"},
                {"role": "assistant", "content": "I'll check.", "tool_calls": [{
                    "id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
                    "function": {"name": "get_weather",
                                 "arguments": '{"location":"San Francisco, CA"}'}}]},
                {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9",
                 "content": "15 degrees"},
                {"role": "user", "content": [
                    {"type": "text", "text": "And tomorrow?"},
                    {"type": "image_url",
                     "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                ]},
            ],
        }  # fmt: skip

    def test_stream_asks_for_usage(self) -> None:
        chat = to_chat({**DOC_REQUEST, "stream": True}, {})
        assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}

    @pytest.mark.parametrize(
        ("change", "param"),
        [
            ({"max_tokens": None}, "max_tokens"),
            ({"max_tokens": 0}, "max_tokens"),
            ({"max_tokens": True}, "max_tokens"),
            ({"model": ""}, "model"),
            ({"messages": []}, "messages"),
            ({"messages": "hi"}, "messages"),
            ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
            ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
            ({"messages": [{"role": "user", "content": [{"type": "document"}]}]},
             "messages.0.content.0.type"),
            ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
             "messages.0.content.0.source"),
            ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
             "messages.0.content.0.tool_use_id"),
            ({"system": 5}, "system"),
            ({"temperature": 3}, "temperature"),
            ({"top_k": -1}, "top_k"),
            ({"stop_sequences": "x"}, "stop_sequences"),
            ({"tools": [{"name": "x"}]}, "tools.0.input_schema"),
            ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
            ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
            ({"metadata": []}, "metadata"),
            ({"stream": "yes"}, "stream"),
            ({"stream": 1}, "stream"),
        ],
    )  # fmt: skip
    def test_bad_fields_are_named(self, change: dict[str, Any], param: str) -> None:
        """Every malformed field is an InvalidRequest naming it (never a KeyError/TypeError)."""
        with pytest.raises(InvalidRequest) as caught:
            to_chat({**DOC_REQUEST, **change}, {})
        assert caught.value.param == param

    def test_count_tokens_estimates_the_translated_prompt(self) -> None:
        """count_tokens needs no max_tokens and grows with the prompt and the tools."""
        small = orjson.loads(count_tokens({"model": "m", "messages": [
            {"role": "user", "content": "hi"}]}, {}))["input_tokens"]  # fmt: skip
        big = orjson.loads(count_tokens({**DOC_REQUEST, "max_tokens": None}, {}))["input_tokens"]
        assert 0 < small < big


def chat_reply(message: dict[str, Any], finish: str) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561},
    })  # fmt: skip


class TestResponse:
    def test_a_tool_call_becomes_the_documented_tool_use_message(self) -> None:
        body = chat_reply({"role": "assistant", "content": "I'll check.", "tool_calls": [{
            "id": "toolu_01A", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location": "SF"}'}}]},
            "tool_calls")  # fmt: skip
        msg = orjson.loads(from_chat(body, "claude-sonnet-4-5", "req_abc"))
        assert msg == {
            "id": "msg_abc", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "I'll check."},
                        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
                         "input": {"location": "SF"}}],
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": 472, "output_tokens": 89},
        }  # fmt: skip

    @pytest.mark.parametrize(
        ("finish", "reason"),
        [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")],
    )
    def test_stop_reasons(self, finish: str, reason: str) -> None:
        msg = orjson.loads(from_chat(chat_reply({"content": "x"}, finish), "m", "r"))
        assert msg["stop_reason"] == reason

    def test_an_upstream_that_omits_everything_still_gives_a_message(self) -> None:
        msg = orjson.loads(from_chat(b'{"choices": []}', "m", "r"))
        assert msg["content"] == [] and msg["usage"] == {"input_tokens": 0, "output_tokens": 0}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + orjson.dumps({"object": "chat.completion.chunk", "choices": choices,
                                     **extra}) + b"\n\n"  # fmt: skip


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.split(b"\n\n"):
        if block:
            name, data = block.split(b"\n", 1)
            out.append((name.removeprefix(b"event: ").decode(), orjson.loads(data[6:])))
    return out


class TestStream:
    def test_text_then_a_tool_call_gives_the_documented_event_sequence(self) -> None:
        """Anthropic's order: message_start, ping, one block at a time (start, deltas, stop),
        message_delta with stop_reason and usage, message_stop; data.type = event name."""
        s = MessagesStream("claude-sonnet-4-5", "req_1", prompt_estimate=10)
        raw = s.feed(chunk({"role": "assistant", "content": ""}) + chunk({"content": "Okay"}))
        raw += s.feed(chunk({"content": ", checking."}))
        raw += s.feed(chunk({"tool_calls": [{"index": 0, "id": "toolu_9", "type": "function",
                                             "function": {"name": "get_weather",
                                                          "arguments": ""}}]}))  # fmt: skip
        raw += s.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"loc'}}]}))
        raw += s.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '": 1}'}}]}))
        raw += s.feed(
            chunk({}, "tool_calls")
            + chunk(None, usage={"prompt_tokens": 12, "completion_tokens": 7})
        )
        raw += s.done()
        got = events(raw)
        assert all(name == data["type"] for name, data in got)
        assert [n for n, _ in got] == [
            "message_start", "ping",
            "content_block_start", "content_block_delta", "content_block_delta",
            "content_block_stop",
            "content_block_start", "content_block_delta", "content_block_delta",
            "content_block_stop",
            "message_delta", "message_stop",
        ]  # fmt: skip
        start = got[0][1]["message"]
        assert start["id"] == "msg_1" and start["content"] == [] and start["stop_reason"] is None
        assert got[2][1] == {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}  # fmt: skip
        assert got[6][1]["content_block"] == {"type": "tool_use", "id": "toolu_9",
                                               "name": "get_weather", "input": {}}  # fmt: skip
        assert [d["delta"] for _, d in got[7:9]] == [
            {"type": "input_json_delta", "partial_json": '{"loc'},
            {"type": "input_json_delta", "partial_json": '": 1}'},
        ]
        assert got[10][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
        assert got[10][1]["usage"] == {"input_tokens": 12, "output_tokens": 7}

    def test_a_failure_mid_stream_is_an_anthropic_error_event(self) -> None:
        s = MessagesStream("m", "req_1")
        s.feed(chunk({"content": "par"}))
        name, data = events(s.error(ProviderUnavailable("upstream down")))[0]
        assert name == "error"
        assert data == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "upstream down"},
        }


@pytest.mark.parametrize(
    ("err", "status", "kind"),
    [
        (AuthError("x"), 401, "authentication_error"),
        (PermissionDenied("x"), 403, "permission_error"),
        (ModelNotFound("x"), 404, "not_found_error"),
        (InvalidRequest("x"), 400, "invalid_request_error"),
        (RateLimited("x", retry_after=2), 429, "rate_limit_error"),
        (BudgetExceeded("x", retry_after=2), 429, "rate_limit_error"),
        (ProviderUnavailable("x"), 529, "overloaded_error"),
        (ProviderTimeout("x"), 504, "timeout_error"),
        (ProviderError("x"), 500, "api_error"),
        (GatewayError("x"), 500, "api_error"),
    ],
)
def test_errors_map_to_anthropics_types_and_statuses(
    err: GatewayError, status: int, kind: str
) -> None:
    got_status, body = error_body(err)
    assert got_status == status
    assert orjson.loads(body) == {"type": "error", "error": {"type": kind, "message": "x"}}

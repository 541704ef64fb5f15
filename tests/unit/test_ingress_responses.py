"""The Responses API adapters as pure functions, against the shapes OpenAI documents."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gatekeeper.errors import InvalidRequest, ProviderUnavailable
from gatekeeper.ingress.responses_stream import ResponsesStream
from gatekeeper.ingress.responses_wire import (
    chat_history,
    output_items,
    parse_request,
    with_history,
)

# The function-calling example of OpenAI's Responses guide: a tool, a call, its output.
DOC_REQUEST: dict[str, Any] = {
    "model": "gpt-4.1",
    "instructions": "You are a weather bot.",
    "input": [
        {"role": "user", "content": "What is the weather like in Paris today?"},
        {"type": "function_call", "id": "fc_12345xyz", "call_id": "call_12345xyz",
         "name": "get_weather", "arguments": '{"location":"Paris, France"}'},
        {"type": "function_call_output", "call_id": "call_12345xyz", "output": "14 degrees"},
        {"role": "user", "content": [
            {"type": "input_text", "text": "And this picture?"},
            {"type": "input_image", "image_url": "https://example.com/p.png", "detail": "low"},
        ]},
    ],
    "tools": [{"type": "function", "name": "get_weather",
               "description": "Get current temperature for a given location.",
               "parameters": {"type": "object",
                              "properties": {"location": {"type": "string"}},
                              "required": ["location"], "additionalProperties": False},
               "strict": True}],
    "tool_choice": {"type": "function", "name": "get_weather"},
    "text": {"format": {"type": "json_schema", "name": "weather",
                        "schema": {"type": "object"}, "strict": True}},
    "max_output_tokens": 500,
    "temperature": 0.2,
    "parallel_tool_calls": False,
    "reasoning": {"effort": "low"},
    "metadata": {"k": "v"},
}  # fmt: skip


class TestRequest:
    def test_the_documented_function_call_request_becomes_a_chat_request(self) -> None:
        parsed = parse_request(DOC_REQUEST, {})
        with_history(parsed, [], DOC_REQUEST)
        assert parsed.chat == {
            "model": "gpt-4.1",
            "messages": [
                {"role": "system", "content": "You are a weather bot."},
                {"role": "user", "content": "What is the weather like in Paris today?"},
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": "call_12345xyz", "type": "function",
                    "function": {"name": "get_weather",
                                 "arguments": '{"location":"Paris, France"}'}}]},
                {"role": "tool", "tool_call_id": "call_12345xyz", "content": "14 degrees"},
                {"role": "user", "content": [
                    {"type": "text", "text": "And this picture?"},
                    {"type": "image_url",
                     "image_url": {"url": "https://example.com/p.png", "detail": "low"}}]},
            ],
            "temperature": 0.2,
            "max_tokens": 500,
            "parallel_tool_calls": False,
            "tools": [{"type": "function", "function": {
                "name": "get_weather",
                "description": "Get current temperature for a given location.",
                "parameters": DOC_REQUEST["tools"][0]["parameters"], "strict": True}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "weather", "schema": {"type": "object"}, "strict": True}},
            "reasoning_effort": "low",
        }  # fmt: skip
        assert parsed.store is True and parsed.echo["metadata"] == {"k": "v"}

    def test_history_goes_between_instructions_and_the_new_input(self) -> None:
        body = {"model": "m", "input": "again", "instructions": "Be brief."}
        parsed = parse_request(body, {"m": "gpt-4o"})
        with_history(parsed, [{"role": "user", "content": "hi"}], body)
        assert parsed.chat["model"] == "gpt-4o"
        assert [m["content"] for m in parsed.chat["messages"]] == ["Be brief.", "hi", "again"]

    @pytest.mark.parametrize(
        ("change", "param"),
        [
            ({"model": None}, "model"),
            ({"input": None}, "input"),
            ({"input": 3}, "input"),
            ({"input": ["x"]}, "input[0]"),
            ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
            ({"input": [{"type": "function_call", "name": "f"}]}, "input[0]"),
            ({"input": [{"type": "function_call_output"}]}, "input[0].call_id"),
            ({"input": [{"type": "file_search_call"}]}, "input[0].type"),
            ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
             "input[0].content[0].type"),
            ({"input": [{"role": "user", "content": [{"type": "input_image",
                                                      "file_id": "f"}]}]},
             "input[0].content[0]"),
            ({"tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
            ({"tools": "all"}, "tools"),
            ({"tool_choice": "maybe"}, "tool_choice"),
            ({"text": {"format": {"type": "xml"}}}, "text.format"),
            ({"temperature": 9}, "temperature"),
            ({"max_output_tokens": -1}, "max_output_tokens"),
            ({"store": "yes"}, "store"),
            ({"previous_response_id": 7}, "previous_response_id"),
            ({"stream": 1}, "stream"),
        ],
    )  # fmt: skip
    def test_bad_fields_are_named(self, change: dict[str, Any], param: str) -> None:
        with pytest.raises(InvalidRequest) as caught:
            parse_request({**DOC_REQUEST, **change}, {})
        assert caught.value.param == param


class TestResponse:
    def test_a_chat_reply_becomes_message_and_function_call_items(self) -> None:
        chat = {"choices": [{"message": {"role": "assistant", "content": "Let me check.",
                                         "tool_calls": [{"id": "call_1", "type": "function",
                                                         "function": {"name": "get_weather",
                                                                      "arguments": "{}"}}]},
                             "finish_reason": "tool_calls"}]}  # fmt: skip
        items, incomplete = output_items(chat, "abc")
        assert incomplete is None
        assert items == [
            {"type": "message", "id": "msg_abc", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Let me check.", "annotations": [],
                          "logprobs": []}]},
            {"type": "function_call", "id": "fc_abc_0", "call_id": "call_1",
             "name": "get_weather", "arguments": "{}", "status": "completed"},
        ]  # fmt: skip
        assert chat_history(items) == [{"role": "assistant", "content": "Let me check.",
                                        "tool_calls": [chat["choices"][0]["message"][
                                            "tool_calls"][0]]}]  # fmt: skip

    def test_length_is_incomplete(self) -> None:
        chat = {"choices": [{"message": {"content": "cut"}, "finish_reason": "length"}]}
        assert output_items(chat, "a")[1] == "max_output_tokens"


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + orjson.dumps({"choices": choices, **extra}) + b"\n\n"


def events(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.split(b"\n\n"):
        if block:
            name, data = block.split(b"\n", 1)
            event = orjson.loads(data[6:])
            assert name == b"event: " + event["type"].encode()
            out.append(event)
    return out


class TestStream:
    def test_text_and_a_call_give_the_documented_sequence_with_stable_ids(self) -> None:
        kept: list[dict[str, Any]] = []
        s = ResponsesStream("abc", "gpt-4o", 1700000000, {}, True, kept.append)
        raw = s.feed(chunk({"role": "assistant", "content": ""}) + chunk({"content": "Hi"}))
        raw += s.feed(chunk({"content": " there"}))
        raw += s.feed(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": ""},
                        }
                    ]
                }
            )
        )
        raw += s.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))
        raw += s.feed(
            chunk({}, "tool_calls")
            + chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 4})
        )
        raw += s.done()
        got = events(raw)
        assert [e["sequence_number"] for e in got] == list(range(len(got)))
        assert [e["type"] for e in got] == [
            "response.created", "response.in_progress",
            "response.output_item.added", "response.content_part.added",
            "response.output_text.delta", "response.output_text.delta",
            "response.output_text.done", "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added", "response.function_call_arguments.delta",
            "response.function_call_arguments.done", "response.output_item.done",
            "response.completed",
        ]  # fmt: skip
        assert got[0]["response"]["id"] == got[-1]["response"]["id"] == "resp_abc"
        assert got[0]["response"]["status"] == "in_progress"
        assert {e["item_id"] for e in got[3:8]} == {"msg_abc"}
        assert got[6]["text"] == "Hi there"
        assert got[9]["item"]["id"] == got[12]["item"]["id"] == "fc_abc_0"
        assert got[11]["arguments"] == "{}"
        final = got[-1]["response"]
        assert final["status"] == "completed"
        assert final["output"] == [got[8]["item"], got[12]["item"]]
        assert final["usage"]["input_tokens"] == 3 and final["usage"]["total_tokens"] == 7
        assert kept == [final]

    def test_a_failure_mid_stream_is_error_then_response_failed(self) -> None:
        s = ResponsesStream("abc", "m", 0, {}, False)
        s.feed(chunk({"content": "pa"}))
        got = events(s.error(ProviderUnavailable("upstream down")))
        assert [e["type"] for e in got] == ["error", "response.failed"]
        assert got[0]["message"] == "upstream down"
        assert got[1]["response"]["status"] == "failed"
        assert got[1]["response"]["error"]["message"] == "upstream down"

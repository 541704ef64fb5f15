"""Hostile bodies: whatever JSON arrives, the ingress parsers answer InvalidRequest or a
chat request, never another exception (which would be a 500)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.errors import InvalidRequest
from gatekeeper.ingress.messages_wire import count_tokens, to_chat
from gatekeeper.ingress.responses_wire import parse_request, with_history

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
)
words = st.sampled_from(["type", "role", "content", "text", "tool_use", "tool_result", "id",
                         "name", "input", "image", "source", "message", "function_call",
                         "function_call_output", "call_id", "arguments", "output", "user",
                         "assistant", "input_text", "input_image", "image_url",
                         "format"])  # fmt: skip
json_values = st.recursive(
    scalars | words,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(words, inner, max_size=5),
    max_leaves=25,
)
FIELDS = ["max_tokens", "system", "messages", "tools", "tool_choice", "stream",
          "stop_sequences", "temperature", "top_p", "top_k", "metadata", "input",
          "instructions", "text", "max_output_tokens", "store", "previous_response_id",
          "reasoning", "parallel_tool_calls", "user"]  # fmt: skip
VALID = {"max_tokens": 8, "input": "x", "messages": [{"role": "user", "content": "x"}]}
bodies = st.fixed_dictionaries(
    {"model": st.just("m")},
    optional={f: json_values | st.just(VALID.get(f, 1)) for f in FIELDS},
)


@settings(max_examples=300, deadline=None)
@given(bodies)
def test_messages_parse_never_crashes(body: dict[str, Any]) -> None:
    try:
        to_chat(body, {})
        count_tokens(body, {})
    except InvalidRequest:
        pass


@settings(max_examples=300, deadline=None)
@given(bodies)
def test_responses_parse_never_crashes(body: dict[str, Any]) -> None:
    try:
        parsed = parse_request(body, {})
        with_history(parsed, [], body)
    except InvalidRequest:
        pass

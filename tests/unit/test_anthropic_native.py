"""The Messages pass-through to Anthropic: bodies and events unchanged, usage learned."""

from __future__ import annotations

import orjson
import pytest

from gatekeeper.errors import StreamInterrupted
from gatekeeper.providers.anthropic_native import NativeStream, native_payload, native_reply
from gatekeeper.providers.base import StreamState, Usage

# Anthropic's documented streaming example, shortened.
EVENTS = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
    b'"type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,'
    b'"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"thinking","thinking":""}}\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"signature_delta","signature":"EqQB"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":15}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def test_the_body_goes_as_it_is_but_model_and_stream() -> None:
    body = {"model": "alias", "max_tokens": 5, "thinking": {"type": "enabled"}, "messages": []}
    sent = orjson.loads(native_payload(body, "claude-x", stream=True))
    assert sent == {**body, "model": "claude-x", "stream": True}


def test_events_pass_unchanged_whatever_the_read_boundaries() -> None:
    """Byte-split anywhere, the same events come out, and usage and the end are seen."""
    for size in (1, 7, len(EVENTS)):
        state = StreamState()
        s = NativeStream(state)
        out = b"".join(s.feed(EVENTS[i : i + size]) for i in range(0, len(EVENTS), size))
        assert out == EVENTS
        assert s.finished and state.completed
        assert state.usage == Usage(25, 15)


def test_an_error_event_interrupts_the_stream() -> None:
    s = NativeStream(StreamState())
    err = (
        b'event: error\ndata: {"type":"error",'
        b'"error":{"type":"overloaded_error","message":"x"}}\n\n'
    )
    with pytest.raises(StreamInterrupted):
        s.feed(err)


def test_a_reply_keeps_its_bytes_and_reports_usage() -> None:
    raw = (
        b'{"id":"msg_1","content":[{"type":"redacted_thinking","data":"z"}],'
        b'"usage":{"input_tokens":3,"output_tokens":4}}'
    )
    reply = native_reply(raw, orjson.loads(raw))
    assert reply.body == raw and reply.usage == Usage(3, 4)


def test_the_budget_cap_replaces_the_clients_max_tokens() -> None:
    """The reservation bounds what the upstream may bill only if its cap is what is sent."""
    body = {"model": "alias", "max_tokens": 4096, "messages": []}
    sent = orjson.loads(native_payload(body, "claude-x", stream=False, max_tokens=300))
    assert sent["max_tokens"] == 300


def test_a_thinking_budget_above_the_cap_is_lowered_below_it() -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    body = {"model": "a", "max_tokens": 4096, "thinking": thinking, "messages": []}
    sent = orjson.loads(native_payload(body, "claude-x", stream=True, max_tokens=1500))
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1499}
    kept = orjson.loads(native_payload(body, "claude-x", stream=True, max_tokens=3000))
    assert kept["thinking"] == thinking

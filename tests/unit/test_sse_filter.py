"""The OpenAI stream filter: the same bytes forwarded, the same chunks counted and kept
for counting, however the upstream's bytes are split into reads."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.budget.charge import stream_chars, stream_texts
from gatekeeper.errors import StreamInterrupted
from gatekeeper.providers.base import StreamState
from gatekeeper.providers.sse import OpenAIStreamFilter


def chunk(text: str) -> bytes:
    return orjson.dumps(
        {"id": "c", "object": "chat.completion.chunk", "choices": [{"delta": {"content": text}}]}
    )


USAGE = orjson.dumps(
    {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
)

# (event bytes, forwarded?, its payload if kept for counting)
EVENTS = {
    "chunk": (b"data: " + chunk("hi") + b"\n\n", True, chunk("hi")),
    "tight": (b"data:" + chunk("yo") + b"\n\n", True, chunk("yo")),
    "says_error": (b"data: " + chunk('"error"') + b"\n\n", True, chunk('"error"')),
    "says_done": (b"data: " + chunk("[DONE]") + b"\n\n", True, chunk("[DONE]")),
    "usage": (b"data: " + USAGE + b"\n\n", False, USAGE),
    "comment": (b": keep-alive\n\n", False, None),
    "named": (b"event: ping\ndata: {}\n\n", True, None),
    "done": (b"data: [DONE]\n\n", False, None),
}


def run(events: list[str], cuts: list[int]) -> tuple[bytes, StreamState]:
    raw = b"".join(EVENTS[name][0] for name in events)
    state = StreamState()
    filt = OpenAIStreamFilter(state, include_usage=False)
    out, last = [], 0
    for at in [*sorted({c % (len(raw) + 1) for c in cuts}), len(raw)]:
        out.append(filt.feed(raw[last:at]))
        last = at
    return b"".join(out), state


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(sorted(EVENTS)), max_size=12),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
)
def test_any_split_gives_the_event_by_event_result(events: list[str], cuts: list[int]) -> None:
    out, state = run(events, cuts)
    assert out == b"".join(EVENTS[n][0] for n in events if EVENTS[n][1])
    kept = [EVENTS[n][2] for n in events if EVENTS[n][2] is not None]
    assert state.payloads == kept
    assert state.chunks == sum(1 for n in events if EVENTS[n][2] is not None)
    assert state.completed == ("done" in events)
    assert (state.usage is not None) == ("usage" in events)
    assert state.captured == sum(len(p) for p in state.payloads)


def test_kept_payloads_are_what_counting_reads() -> None:
    out, state = run(["chunk", "usage", "tight", "comment", "done"], [7, 300])
    assert out == EVENTS["chunk"][0] + EVENTS["tight"][0]
    assert stream_chars(state.payloads) == 4
    assert stream_texts(state.payloads) == ["hi", "yo"]


def test_an_error_event_after_plain_chunks_forwards_and_keeps_none_of_that_read() -> None:
    state = StreamState()
    filt = OpenAIStreamFilter(state, include_usage=False)
    assert filt.feed(EVENTS["chunk"][0]) == EVENTS["chunk"][0]
    with pytest.raises(StreamInterrupted):
        filt.feed(EVENTS["chunk"][0] + b'data: {"error": {"message": "overloaded"}}\n\n')
    assert state.payloads == [chunk("hi")]  # only what reached the client

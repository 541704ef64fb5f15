"""The pure parts of mid-stream failover (gatekeeper.continuation.seam)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gatekeeper.auth.claims import parse_claims
from gatekeeper.budget.accounting_segments import charge_segments
from gatekeeper.budget.segments import Segment
from gatekeeper.continuation.seam import (
    CONTINUE_INSTRUCTION,
    OverlapTrimmer,
    Splicer,
    ToolHold,
    delivered,
    overlap,
    resume_request,
)
from gatekeeper.continuation.stitch import allowed, drain, stitch
from gatekeeper.errors import StreamInterrupted
from gatekeeper.providers.base import Call, StreamState, Usage
from gatekeeper.providers.failover import FailoverPolicy
from gatekeeper.providers.memory import MemoryTransport, Scripted
from gatekeeper.providers.openai import OpenAIProvider
from gatekeeper.providers.pool import ProviderPool
from gatekeeper.providers.settings import ProviderConfig
from gatekeeper.providers.transport import ConnectionClosed
from gatekeeper.routing.matrix import ModelSpec

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def chunk(delta: dict[str, Any], finish: str | None = None, **head: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({**HEAD, **head, "choices": [choice]}) + b"\n\n"


def parsed(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(e[5:]) for e in data.split(b"\n\n") if e.startswith(b"data:")]


def tool(index: int, args: str, **opening: Any) -> bytes:
    call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if opening:
        call.update(id=opening["id"], type="function")
        call["function"]["name"] = opening["name"]
    return chunk({"tool_calls": [call]})


class TestDelivered:
    def test_text_finish_and_head_from_captured_payloads(self) -> None:
        """Raw payloads (OpenAI filter) and framed chunks (Anthropic translator) both read."""
        raw = [
            chunk({"role": "assistant", "content": ""}, id="up-1")[6:-2],
            chunk({"content": "Hel"}),
            chunk({"content": "lo"})[6:-2],
        ]
        seen = delivered(raw)
        assert seen.text == "Hello" and seen.finish is None
        assert seen.head == {**HEAD, "id": "up-1"}

    def test_a_finish_already_sent_is_seen(self) -> None:
        assert delivered([chunk({"content": "x"}), chunk({}, "stop")]).finish == "stop"


BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class TestResumeRequest:
    def test_anthropic_prefills_without_trailing_whitespace(self) -> None:
        """Anthropic refuses a prefill ending in whitespace: it is left off, expected back."""
        r = resume_request(BODY, "anthropic", "Hello there \n", 50)
        assert r.body["messages"][-1] == {"role": "assistant", "content": "Hello there"}
        assert r.tail == " \n" and r.min_overlap == 1
        assert r.body["max_tokens"] == 50 and BODY["messages"] == [BODY["messages"][0]]

    def test_openai_kind_gets_the_partial_turn_and_an_instruction(self) -> None:
        body = {**BODY, "max_completion_tokens": 100}
        r = resume_request(body, "openai", "Hello there", 40)
        assert r.body["messages"][-2:] == [
            {"role": "assistant", "content": "Hello there"},
            {"role": "user", "content": CONTINUE_INSTRUCTION},
        ]
        assert r.body["max_completion_tokens"] == 40 and "max_tokens" not in r.body
        assert r.tail == "Hello there"

    def test_nothing_delivered_is_a_restart(self) -> None:
        """A cut before any text (or inside a tool call): the same request again."""
        r = resume_request(BODY, "openai", "", None)
        assert r.body == BODY and r.tail == ""


class TestOverlap:
    def test_longest_repeat_at_least_the_minimum(self) -> None:
        assert overlap("the lazy dog", "lazy dog jumps", 3) == len("lazy dog")
        assert overlap("the end", "end", 3) == 3
        assert overlap("the", "xyz", 1) == 0
        assert overlap("ab", "b!", 3) == 0  # a repeat this short is a coincidence

    def test_trimmer_holds_only_while_a_longer_repeat_is_possible(self) -> None:
        t = OverlapTrimmer("quick brown fox", 3)
        assert t.feed("brown") == ""  # could still be "brown fox…"
        assert t.feed(" fox jumps") == " jumps"
        assert t.feed(" over") == " over"

    def test_trimmer_passes_a_fresh_start_at_once(self) -> None:
        t = OverlapTrimmer("quick brown fox", 3)
        assert t.feed("Jumps") == "Jumps"

    def test_flush_decides_on_what_it_has(self) -> None:
        t = OverlapTrimmer("fox ", 1)
        assert t.feed(" ") == ""
        assert t.flush() == ""  # the whitespace left off the prefill came back: dropped
        assert OverlapTrimmer("fox", 3).flush() == ""


class TestToolHold:
    def test_a_call_is_held_until_its_arguments_are_whole(self) -> None:
        hold = ToolHold()
        assert hold.feed(chunk({"role": "assistant", "content": ""})) != b""
        assert hold.feed(tool(0, "", id="c1", name="get")) == b""
        assert hold.feed(tool(0, '{"city": ')) == b""
        assert hold.partial
        out = hold.feed(tool(0, '"Paris"}'))
        calls = [p["choices"][0]["delta"]["tool_calls"][0] for p in parsed(out)]
        assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Paris"}'
        assert not hold.partial and hold.complete[0].name == "get"

    def test_a_clean_end_without_finish_sends_what_is_held(self) -> None:
        hold = ToolHold()
        data = tool(0, '{"a": 1', id="c1", name="f")
        assert hold.feed(data) == b"" and hold.flush() == data

    def test_dropped_partial_call_is_never_sent(self) -> None:
        hold = ToolHold()
        hold.feed(tool(0, '{"a": 1', id="c1", name="f"))
        hold.drop()
        assert not hold.partial and hold.complete == []

    def test_text_passes_untouched(self) -> None:
        data = chunk({"content": "hi"})
        assert ToolHold().feed(data) is data


class TestSplicer:
    def test_continuation_chunks_join_the_original_stream(self) -> None:
        """Head rewritten, role and usage chunks dropped, overlap trimmed, finish kept back."""
        s = Splicer(HEAD, OverlapTrimmer("lazy dog", 3), 0, usage=False)
        other = {"id": "msg-2", "created": 99, "model": "other"}
        out = s.feed(chunk({"role": "assistant", "content": ""}, **other))
        out += s.feed(chunk({"content": "dog sleeps"}, **other))
        out += s.feed(chunk({}, "stop", **other))
        out += s.feed(b"data: " + orjson.dumps({**other, "choices": [], "usage": {}}) + b"\n\n")
        chunks = parsed(out)
        assert [c["choices"][0]["delta"] for c in chunks] == [{"content": " sleeps"}]
        assert all(c["id"] == "chatcmpl-1" and c["created"] == 7 for c in chunks)
        assert s.final == {"finish_reason": "stop"} and s.text == " sleeps"

    def test_tool_calls_are_numbered_after_those_already_sent(self) -> None:
        s = Splicer(HEAD, OverlapTrimmer(""), 2, usage=True)
        (c,) = parsed(s.feed(tool(0, "{}", id="c9", name="f")))
        assert c["choices"][0]["delta"]["tool_calls"][0]["index"] == 2
        assert c["usage"] is None  # the client asked for usage: chunks carry it, as null


class TestSwitches:
    def test_header_or_claim_turns_it_off(self) -> None:
        claims = parse_claims(
            orjson.dumps(
                {
                    "iss": "gatekeeper",
                    "sub": "k",
                    "jti": "j",
                    "iat": "2025-01-01T00:00:00Z",
                    "nbf": "2025-01-01T00:00:00Z",
                    "exp": "2099-01-01T00:00:00Z",
                    "tenant": "t",
                    "stream_continuation": False,
                }
            )
        )
        assert claims.stream_continuation is False
        assert not allowed({}, claims)
        assert not allowed({"x-gatekeeper-continuation": "off"}, None)
        assert allowed({}, None) and allowed({"x-gatekeeper-continuation": "on"}, None)


class TestCharge:
    def test_both_segments_are_charged_each_at_its_price(self) -> None:
        """The cut one counted from what arrived, the other as reported; cost per model."""
        cheap = ModelSpec("a", "pa", "gpt-4o", "chat", 1.0, 1.0, 1000, 100)
        dear = ModelSpec("b", "pb", "claude-x", "chat", 10.0, 10.0, 1000, 100)
        body = {"messages": [{"role": "user", "content": "hello"}]}
        cut = StreamState()
        cut.keep(chunk({"content": "one two three"}))
        done = StreamState(usage=Usage(20, 4))
        done.keep(chunk({"content": "four"}))
        segs = [Segment(cheap, "openai", body, cut, ()), Segment(dear, "x", body, done, ())]
        charges, total, cost = charge_segments(segs, "complete", 0)
        assert charges[0].source == "counted" and charges[0].completion > 0
        assert charges[1].prompt == 20 and charges[1].completion == 4
        assert total.source == "counted"
        assert total.completion == charges[0].completion + 4
        assert cost == cheap.cost_usd(charges[0].prompt, charges[0].completion) + dear.cost_usd(
            20, 4
        )


class TestStitchedStream:
    """The I/O loop over in-memory upstreams (the real OpenAI adapter and pool)."""

    @staticmethod
    def run(limit: int, replies: dict[str, Scripted]) -> tuple[bytes, Any]:
        def provider(name: str) -> OpenAIProvider:
            cfg = ProviderConfig(name=name, kind="openai", base_url="http://x/v1", api_key="k")
            return OpenAIProvider(cfg, MemoryTransport(lambda sent: replies[name]))

        pool = ProviderPool(
            {name: provider(name) for name in replies},
            policy=FailoverPolicy(max_continuations=limit),
        )
        plan = tuple(ModelSpec(n, n, "gpt-4o", "chat", 0.001, 0.002, 1000, 100) for n in replies)
        call = Call(plan[0], {"messages": [{"role": "user", "content": "hi"}]}, "r", True)

        async def go() -> tuple[bytes, Any]:
            served = await pool.chat_stream(plan, call, 1e12)
            stream, record = stitch(pool, served, call, plan, 1e12, True)
            out = [stream.first]

            async def collect(part: bytes) -> None:
                out.append(part)

            await drain(stream, collect)  # as the pump does
            return b"".join(out), record

        return asyncio.run(go())

    @staticmethod
    def sse(*texts: str, end: bool) -> Scripted:
        body = [chunk({"role": "assistant", "content": ""})]
        body += [chunk({"content": t}) for t in texts]
        if end:
            body += [chunk({}, "stop"), b"data: [DONE]\n\n"]
        fail = None if end else ConnectionClosed("cut")
        return Scripted(headers={"content-type": "text/event-stream"}, body=tuple(body), fail=fail)

    def test_two_seams_within_the_limit(self) -> None:
        """a cut, b cut, c ends it: three segments, each seam after the text so far."""
        replies = {
            "a": self.sse("one ", "two ", end=False),
            "b": self.sse("three ", end=False),
            "c": self.sse("four", end=True),
        }
        out, record = self.run(2, replies)
        chunks = parsed(out)
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        assert text == "one two three four"
        assert [s.seam for s in record.segments] == [0, 8, 14]
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0

    def test_past_the_limit_the_break_is_the_error(self) -> None:
        replies = {"a": self.sse("one ", end=False), "b": self.sse("two", end=False)}
        with pytest.raises(StreamInterrupted):
            self.run(1, {**replies, "c": self.sse("x", end=True)})

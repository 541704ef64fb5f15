"""Pure decisions at a stream's seam: what was delivered, what to ask next, how to splice.

    delivered        the text and finish the client already has (from the captured chunks)
    ToolHold         tool-call chunks held back until their arguments are whole JSON
    resume_request   the body that asks the next provider to go on from the seam
    OverlapTrimmer   drops what a continuation repeats of the delivered text
    Splicer          a continuation's chunks → chunks of the client's one stream

No I/O here; ``gatekeeper.continuation.stitch`` runs these around the upstream calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

CONTINUE_INSTRUCTION = (
    "Your previous reply was cut off. Continue it from exactly where it stopped: do not "
    "repeat anything already written, add no preamble, and do not restart the reply."
)
TAIL_CHARS = 200  # how much of the delivered text an instruction-led continuation may repeat
MIN_OVERLAP = 3  # shorter repeats are taken as coincidence, not trimmed
PREFILL_WIRES = frozenset({"anthropic"})  # continue a trailing assistant turn natively


def events(data: bytes) -> list[bytes]:
    """The SSE events in ``data`` (whole events, each without its blank line)."""
    return [e for e in data.split(b"\n\n") if e.strip()]


def chunk_of(event: bytes) -> dict[str, Any] | None:
    """The JSON object of a ``data:`` event (or a bare payload); None for anything else."""
    payload = event[5:] if event.startswith(b"data:") else event
    payload = payload.strip()
    if payload.startswith(b"data:"):  # a kept chunk in its SSE framing
        payload = payload[5:].strip()
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _choice(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        return choices[0]
    return None


def _delta(choice: Mapping[str, Any]) -> Mapping[str, Any]:
    delta = choice.get("delta")
    return delta if isinstance(delta, Mapping) else {}


@dataclass(frozen=True, slots=True)
class Delivered:
    """What the client has of the answer when the stream broke."""

    text: str  # the ``content`` deltas, joined
    finish: str | None  # a ``finish_reason`` already sent
    head: dict[str, Any]  # id, object, created, model of the stream's chunks


def delivered(payloads: Sequence[bytes]) -> Delivered:
    """Read the captured chunk payloads of a stream (``StreamState.payloads``)."""
    parts: list[str] = []
    finish: str | None = None
    head: dict[str, Any] = {}
    for payload in payloads:
        obj = chunk_of(payload)
        if obj is None:
            continue
        if not head:
            head = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
        choice = _choice(obj)
        if choice is None:
            continue
        content = _delta(choice).get("content")
        if isinstance(content, str):
            parts.append(content)
        if isinstance(choice.get("finish_reason"), str):
            finish = choice["finish_reason"]
    head.setdefault("object", "chat.completion.chunk")
    return Delivered("".join(parts), finish, head)


# ---------------------------------------------------------------------- tool calls


@dataclass(frozen=True, slots=True)
class ToolCall:
    index: int
    id: str
    name: str
    arguments: str


def _whole_json(text: str) -> bool:
    stripped = text.rstrip()
    if not stripped or stripped[-1] not in '}]"el0123456789':
        return False
    try:
        orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return False
    return True


class ToolHold:
    """Holds tool-call chunks back until every call seen so far has whole JSON arguments.

    A stream cut inside a call's arguments then has sent none of that call, so the next
    provider can start it afresh; a client never gets half a JSON object. Chunks
    without tool calls pass straight through (a ``finish_reason`` first releases what
    is held). Only streams whose request offers tools use this.
    """

    __slots__ = ("_args", "_held", "_meta", "complete")

    def __init__(self) -> None:
        self._held: list[bytes] = []
        self._args: dict[int, str] = {}
        self._meta: dict[int, tuple[str, str]] = {}
        self.complete: list[ToolCall] = []  # calls released to the client, in order

    @property
    def partial(self) -> bool:
        """A call has started but its arguments are not whole yet (nothing of it sent)."""
        return bool(self._held)

    def feed(self, data: bytes) -> bytes:
        if not self._held and b'"tool_calls"' not in data:
            return data
        out: list[bytes] = []
        for event in events(data):
            obj = chunk_of(event)
            choice = _choice(obj) if obj is not None else None
            calls = _delta(choice).get("tool_calls") if choice is not None else None
            if not isinstance(calls, list) or not calls:
                if choice is not None and choice.get("finish_reason"):
                    out.extend(self._release())
                out.append(event + b"\n\n")
                continue
            self._held.append(event + b"\n\n")
            for call in calls:
                self._note(call)
            if all(_whole_json(args) for args in self._args.values()):
                out.extend(self._release())
        return b"".join(out)

    def _note(self, call: object) -> None:
        if not isinstance(call, Mapping) or not isinstance(call.get("index"), int):
            return
        index = call["index"]
        fn = call.get("function")
        fn = fn if isinstance(fn, Mapping) else {}
        if index not in self._args:
            self._args[index] = ""
            self._meta[index] = (str(call.get("id") or ""), str(fn.get("name") or ""))
        fragment = fn.get("arguments")
        if isinstance(fragment, str):
            self._args[index] += fragment

    def _release(self) -> list[bytes]:
        held, self._held = self._held, []
        for index, args in self._args.items():
            call_id, name = self._meta[index]
            self.complete.append(ToolCall(index, call_id, name, args))
        self._args, self._meta = {}, {}
        return held

    def flush(self) -> bytes:
        """What is still held, at a clean end without a ``finish_reason`` (sent as is)."""
        return b"".join(self._release())

    def drop(self) -> None:
        """Forget the partial call (at a seam: the next provider starts it again)."""
        self._held, self._args, self._meta = [], {}, {}


# ---------------------------------------------------------------------- the request


@dataclass(frozen=True, slots=True)
class Resume:
    """How to ask a provider to go on: the body, and what its answer may repeat."""

    body: dict[str, Any]
    tail: str  # the end of the delivered text that the continuation may start with
    min_overlap: int  # the shortest repeat of ``tail`` that is trimmed


def resume_request(
    body: Mapping[str, Any], wire: str, text: str, completion_left: int | None
) -> Resume:
    """The original request plus the delivered ``text`` as the assistant's turn so far.

    Anthropic-kind providers continue a trailing assistant turn natively (prefill;
    Anthropic refuses one that ends in whitespace, so that is left off and expected
    back). Others get the partial turn and an instruction to continue it; what they
    repeat of the last ``TAIL_CHARS`` is trimmed. ``completion_left`` becomes the cap.
    """
    messages = list(body.get("messages") or ())
    out = dict(body)
    tail, minimum = "", 1
    if text and wire in PREFILL_WIRES:
        prefix = text.rstrip()
        tail = text[len(prefix) :]
        if prefix:
            messages.append({"role": "assistant", "content": prefix})
    elif text:
        messages.append({"role": "assistant", "content": text})
        messages.append({"role": "user", "content": CONTINUE_INSTRUCTION})
        tail, minimum = text[-TAIL_CHARS:], MIN_OVERLAP
    out["messages"] = messages
    if completion_left is not None:
        capped = False
        for name in ("max_completion_tokens", "max_tokens"):
            if out.get(name) is not None:
                out[name], capped = completion_left, True
        if not capped:
            out["max_tokens"] = completion_left
    return Resume(out, tail, minimum)


def completion_cap(body: Mapping[str, Any]) -> int | None:
    """The completion cap the original request was sent with (None: none)."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


# ---------------------------------------------------------------------- overlap


def overlap(tail: str, start: str, minimum: int) -> int:
    """The longest ``k >= minimum`` with ``tail[-k:] == start[:k]`` (0: none)."""
    for k in range(min(len(tail), len(start)), minimum - 1, -1):
        if k > 0 and tail.endswith(start[:k]):
            return k
    return 0


class OverlapTrimmer:
    """Feeds a continuation's text; drops its first characters that repeat ``tail``.

    Text is held only while it could still be the start of a longer repeat; then the
    longest repeat found is dropped and everything after it passes as it comes.
    """

    __slots__ = ("_buf", "_done", "minimum", "tail")

    def __init__(self, tail: str, minimum: int = 1) -> None:
        self.tail, self.minimum = tail, minimum
        self._buf = ""
        self._done = not tail

    def feed(self, text: str) -> str:
        if self._done:
            return text
        self._buf += text
        buf, tail = self._buf, self.tail
        longer = any(
            tail[-k:].startswith(buf) for k in range(max(len(buf) + 1, self.minimum), len(tail) + 1)
        )
        return "" if longer else self.flush()

    def flush(self) -> str:
        """Decide now (the continuation has more than text to say, or ended)."""
        if self._done:
            return ""
        self._done = True
        buf, self._buf = self._buf, ""
        return buf[overlap(self.tail, buf, self.minimum) :]


# ---------------------------------------------------------------------- splicing


class Splicer:
    """A continuation's OpenAI chunks → chunks of the client's stream.

    Every chunk gets the stream's ``head`` (id, created, model); the continuation's
    role chunk and usage chunks are dropped (the stitcher sends the summed usage); its
    text passes through the ``OverlapTrimmer``; its tool calls are numbered after the
    ``tool_offset`` calls already sent. The chunk with ``finish_reason`` is kept back
    in ``final`` for the stitcher to send last, with the continuation report.
    """

    __slots__ = ("_usage_field", "final", "head", "text", "tool_offset", "trimmer")

    def __init__(
        self, head: Mapping[str, Any], trimmer: OverlapTrimmer, tool_offset: int, usage: bool
    ) -> None:
        self.head = dict(head)
        self.trimmer = trimmer
        self.tool_offset = tool_offset
        self._usage_field = usage  # the client asked for usage: chunks carry "usage": null
        self.text = ""  # text sent to the client from this continuation
        self.final: dict[str, Any] | None = None

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in events(data):
            obj = chunk_of(event)
            choice = _choice(obj) if obj is not None else None
            if choice is None:
                continue  # usage-only chunks, comments, anything that is not a chunk
            delta = dict(_delta(choice))
            delta.pop("role", None)
            content = delta.pop("content", None)
            text = self.trimmer.feed(content) if isinstance(content, str) else ""
            finish = choice.get("finish_reason")
            if delta or finish:  # more than text follows: the overlap is decided now
                text += self.trimmer.flush()
            if text:
                out.append(self.chunk({"content": text}))
                self.text += text
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                delta["tool_calls"] = [self._renumber(c) for c in calls]
            if delta:
                out.append(self.chunk(delta))
            if finish:
                self.final = {"finish_reason": finish}
        return b"".join(out)

    def _renumber(self, call: object) -> object:
        if isinstance(call, Mapping) and isinstance(call.get("index"), int):
            return {**call, "index": call["index"] + self.tool_offset}
        return call

    def flush(self) -> bytes:
        """Text still held by the trimmer (the continuation ended without more)."""
        text = self.trimmer.flush()
        self.text += text
        return self.chunk({"content": text}) if text else b""

    def chunk(self, delta: Mapping[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj: dict[str, Any] = {**self.head, "choices": [choice], **extra}
        if self._usage_field and "usage" not in obj:
            obj["usage"] = None
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def usage_chunk(self, prompt: int, completion: int) -> bytes:
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return b"data: " + orjson.dumps({**self.head, "choices": [], "usage": usage}) + b"\n\n"

"""Anthropic's streaming events → OpenAI ``chat.completion.chunk`` SSE, incrementally (pure).

SSEParser         raw upstream bytes       → ``(event, data)`` pairs
StreamTranslator  one Anthropic SSE event  → OpenAI chunk lines (never ``[DONE]``)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from gatekeeper.errors import StreamInterrupted, UpstreamTooLarge
from gatekeeper.providers.anthropic_wire import (
    _STATUS_OF_TYPE,
    TokenUsage,
    finish_reason,
)

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SSEParser:
    """Incremental ``text/event-stream`` parser (WHATWG rules).

    Feed raw bytes as they arrive; get back every event completed so far as
    ``(event, data)``. Handles events split anywhere across reads, LF/CRLF/CR line
    ends, comments, multi-line ``data`` (joined with ``\\n``) and a leading BOM.
    An event without a type is ``"message"``; an event without data is dropped.
    One event (its data lines, or a line without end) over ``max_event`` bytes raises
    ``UpstreamTooLarge``.
    """

    __slots__ = ("_buf", "_cr", "_data", "_event", "_fresh", "_size", "max_event")

    def __init__(self, max_event: int = 1024 * 1024) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[bytes] = []
        self._size = 0  # data bytes of the event being assembled
        self.max_event = max_event
        self._fresh = True  # nothing seen yet: a BOM may still come
        self._cr = False  # the last read ended in CR: a leading LF belongs to it

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        if not chunk:
            return []
        buf = self._buf + chunk
        if self._fresh:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._buf = buf
                return []
            self._fresh, buf = False, buf.removeprefix(_BOM)
        if self._cr and buf.startswith(b"\n"):
            buf = buf[1:]
        events: list[tuple[str, bytes]] = []
        start = 0
        for eol in _EOL.finditer(buf):
            self._line(buf[start : eol.start()], events)
            start = eol.end()
        self._cr = start == len(buf) and buf.endswith(b"\r")
        self._buf = buf[start:]
        if len(self._buf) + self._size > self.max_event:
            raise UpstreamTooLarge(
                f"the upstream sent a server-sent event over {self.max_event} bytes"
            )
        return events

    def _line(self, line: bytes, events: list[tuple[str, bytes]]) -> None:
        if not line:
            if self._data != [b""] and self._data:  # WHATWG: empty data is not dispatched
                events.append((self._event or "message", b"\n".join(self._data)))
            self._event, self._data, self._size = "", [], 0
            return
        if line.startswith(b":"):
            return  # comment / keep-alive
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"data":
            self._data.append(value)
            self._size += len(value) + 1
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")


class StreamTranslator:
    """Anthropic stream events in, OpenAI ``chat.completion.chunk`` SSE lines out.

    Emits the role chunk first, then content and ``tool_calls`` deltas (a tool call
    opens with index/id/name and empty arguments; argument fragments follow), and on
    ``message_stop`` a chunk carrying ``finish_reason`` plus, with ``include_usage``, a
    ``choices: []`` usage chunk; ``finished`` then turns true. It never emits
    ``data: [DONE]`` — the caller writes that. An Anthropic ``error`` event (or a
    malformed one) raises ``StreamInterrupted``; the stream is dead after that.
    """

    def __init__(
        self, public_model: str, completion_id: str, created: int, include_usage: bool
    ) -> None:
        self._head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": public_model,
        }
        self._include_usage = include_usage
        self._started = False
        self._tools: dict[object, int] = {}  # Anthropic block index → OpenAI tool index
        self._finish = "stop"
        self.usage = TokenUsage()
        self.finished = False

    def feed(self, event: str, data: bytes) -> list[bytes]:
        if self.finished or event == "ping":
            return []
        payload = _event_payload(data)
        if event == "message":  # no `event:` line: fall back on the payload's type
            event = str(payload.get("type"))
        if event == "error":
            raise _stream_error(payload)
        if event == "message_start":
            message = payload.get("message")
            if isinstance(message, Mapping):
                self.usage = self.usage.updated(message.get("usage"))
            return self._start()
        if event == "content_block_start":
            return self._block_start(payload)
        if event == "content_block_delta":
            return self._block_delta(payload)
        if event == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, Mapping) and delta.get("stop_reason"):
                self._finish = finish_reason(delta["stop_reason"])
            self.usage = self.usage.updated(payload.get("usage"))
        elif event == "message_stop":
            return self._stop()
        return []  # content_block_stop and unknown events carry nothing for OpenAI

    def _block_start(self, payload: Mapping[str, Any]) -> list[bytes]:
        block = payload.get("content_block")
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "tool_use" and isinstance(block, Mapping):
            index = self._tools[payload.get("index")] = len(self._tools)
            function = {"name": block.get("name"), "arguments": ""}
            call = {"index": index, "id": block.get("id"), "type": "function", "function": function}
            return self._emit({"tool_calls": [call]})
        if kind == "text" and isinstance(block, Mapping) and block.get("text"):
            return self._emit({"content": block["text"]})
        return []

    def _block_delta(self, payload: Mapping[str, Any]) -> list[bytes]:
        delta = payload.get("delta")
        if not isinstance(delta, Mapping):
            return []
        if delta.get("type") == "text_delta" and delta.get("text"):
            return self._emit({"content": delta["text"]})
        index = self._tools.get(payload.get("index"))
        fragment = delta.get("partial_json")
        if delta.get("type") == "input_json_delta" and index is not None and fragment:
            call = {"index": index, "function": {"arguments": fragment}}
            return self._emit({"tool_calls": [call]})
        return []  # thinking, signatures, citations: nothing OpenAI clients expect

    def _emit(self, delta: dict[str, Any]) -> list[bytes]:
        return [*self._start(), self._chunk(delta)]

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _stop(self) -> list[bytes]:
        self.finished = True
        out = [*self._start(), self._chunk({}, self._finish)]
        if self._include_usage:
            out.append(_sse({**self._head, "choices": [], "usage": self.usage.to_openai()}))
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        chunk: dict[str, Any] = {**self._head, "choices": [choice]}
        if self._include_usage:
            chunk["usage"] = None  # as OpenAI does on every chunk but the last
        return _sse(chunk)


def _sse(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _event_payload(data: bytes) -> Mapping[str, Any]:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        raise StreamInterrupted("anthropic: malformed stream event", provider="anthropic")
    return payload


def _stream_error(payload: Mapping[str, Any]) -> StreamInterrupted:
    err = payload.get("error")
    kind = err.get("type") if isinstance(err, Mapping) else None
    message = err.get("message") if isinstance(err, Mapping) else None
    kind = kind if isinstance(kind, str) else "api_error"
    return StreamInterrupted(
        f"anthropic: stream failed ({kind}): {message or 'no message'}",
        provider="anthropic",
        upstream_status=_STATUS_OF_TYPE.get(kind),
        retryable=kind in ("overloaded_error", "api_error", "rate_limit_error"),
    )

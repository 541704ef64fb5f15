"""The chat chunk stream → Anthropic's Messages stream events, incrementally (pure).

message_start, ping
content_block_start {text | tool_use}  content_block_delta {text_delta | input_json_delta}
content_block_stop  (one block open at a time, as Anthropic sends them)
message_delta {stop_reason, usage}  message_stop      — from ``done``
error {type, message}                                — from ``error``
"""

from __future__ import annotations

from typing import Any

from gatekeeper.errors import GatewayError
from gatekeeper.ingress.chunks import chunks, deltas, sse
from gatekeeper.ingress.messages_wire import STOP_REASONS, error_type, message_id

_PING = sse("ping", {"type": "ping"})


class MessagesStream:
    """Feed the pipeline's OpenAI SSE bytes; get Anthropic SSE bytes back."""

    __slots__ = ("_block", "_calls", "_finish", "_head", "_next", "_prompt", "_started", "_usage")

    def __init__(self, model: str, request_id: str, prompt_estimate: int = 0) -> None:
        self._prompt = prompt_estimate
        self._head: dict[str, Any] = {
            "id": message_id(request_id),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt_estimate, "output_tokens": 0},
        }
        self._started = False
        self._block: tuple[str, int] | None = None  # ("text" | "tool:<i>", block index) open
        self._next = 0  # the next block's index
        self._calls: dict[int, int] = {}  # chat tool-call index → block index
        self._finish: str | None = None
        self._usage: tuple[int, int] | None = None

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out += (sse("message_start", {"type": "message_start", "message": self._head}), _PING)
        for chunk in chunks(data):
            d = deltas(chunk)
            if d.usage is not None:
                self._usage = d.usage
            if d.finish is not None:
                self._finish = d.finish
            if d.text:
                out += self._open("text", {"type": "text", "text": ""})
                assert self._block is not None
                delta = {"type": "text_delta", "text": d.text}
                out.append(_delta(self._block[1], delta))
            for index, call_id, name, args in d.calls:
                out += self._call(index, call_id, name, args)
        return b"".join(out)

    def _call(self, index: int, call_id: str | None, name: str | None, args: str) -> list[bytes]:
        out: list[bytes] = []
        if index not in self._calls:
            block = {"type": "tool_use", "id": call_id or f"toolu_{index}", "name": name or ""}
            out += self._open(f"tool:{index}", {**block, "input": {}})
            assert self._block is not None
            self._calls[index] = self._block[1]
        if args:
            delta = {"type": "input_json_delta", "partial_json": args}
            out.append(_delta(self._calls[index], delta))
        return out

    def _open(self, key: str, block: dict[str, Any]) -> list[bytes]:
        if self._block is not None and self._block[0] == key:
            return []
        out = self._close()
        self._block = (key, self._next)
        self._next += 1
        start = {"type": "content_block_start", "index": self._block[1], "content_block": block}
        out.append(sse("content_block_start", start))
        return out

    def _close(self) -> list[bytes]:
        if self._block is None:
            return []
        index, self._block = self._block[1], None
        return [sse("content_block_stop", {"type": "content_block_stop", "index": index})]

    def done(self, ex: Any = None) -> bytes:
        """The close of the message: the open block, the stop reason and usage, the stop."""
        out = self._close()
        prompt, completion = self._usage or (self._prompt, 0)
        reason = STOP_REASONS.get(self._finish or "stop", "end_turn")
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }
        out += (sse("message_delta", delta), sse("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error(self, err: GatewayError) -> bytes:
        return error_event(err)


def error_event(err: GatewayError) -> bytes:
    """Anthropic's mid-stream ``error`` event (the stream ends after it)."""
    _, kind = error_type(err)
    return sse("error", {"type": "error", "error": {"type": kind, "message": err.message}})


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return sse(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )

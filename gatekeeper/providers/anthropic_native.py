"""Anthropic Messages in, Anthropic Messages out: the pass-through for ``/v1/messages``.

When a Messages API request (``gatekeeper.ingress.messages``) is routed to an Anthropic
provider, the client's own body is sent (only ``model`` and ``stream`` set by the
gateway), so what chat completions cannot carry — ``thinking`` and ``redacted_thinking``
blocks with their signatures, ``cache_control``, ``top_k``, server tools — reaches
Anthropic untouched, and the answer comes back as Anthropic sent it. Pure functions and
one incremental stream reader; the usage is still learned for the budget and audit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gatekeeper.providers.anthropic_stream import SSEParser, _event_payload, _stream_error
from gatekeeper.providers.anthropic_wire import TokenUsage
from gatekeeper.providers.base import Reply, StreamState, Usage


def native_payload(
    native: Mapping[str, Any], upstream_model: str, *, stream: bool, max_tokens: int | None = None
) -> bytes:
    """The client's Messages body for the upstream: its model, and ``max_tokens`` the
    budget's cap (the reservation is an upper bound only if the cap sent is the one
    reserved); a thinking budget above it is lowered to fit (Anthropic wants it below)."""
    out = {**native, "model": upstream_model, "stream": stream}
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
        thinking = out.get("thinking")
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        if isinstance(thinking, dict) and isinstance(budget, int) and budget >= max_tokens:
            out["thinking"] = {**thinking, "budget_tokens": max(1, max_tokens - 1)}
    return orjson.dumps(out)


def native_reply(raw: bytes, message: Mapping[str, Any]) -> Reply:
    """The upstream's message bytes as they are (``message``: them, parsed and checked)."""
    u = TokenUsage().updated(message.get("usage"))
    return Reply(raw, Usage(u.prompt_tokens, u.completion_tokens))


class NativeStream:
    """Anthropic SSE in, the same events out (whole events only), usage recorded."""

    __slots__ = ("finished", "parser", "state", "usage")

    def __init__(self, state: StreamState, max_event: int = 1024 * 1024) -> None:
        self.parser = SSEParser(max_event)
        self.state = state
        self.usage = TokenUsage()
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event, payload in self.parser.feed(data):
            if self.finished:
                break
            if event == "ping":
                out.append(b"event: ping\ndata: " + payload + b"\n\n")
                continue
            body = _event_payload(payload)
            kind = event if event != "message" else str(body.get("type"))
            if kind == "error":
                raise _stream_error(body)
            if kind == "message_start" and isinstance(body.get("message"), Mapping):
                self.usage = self.usage.updated(body["message"].get("usage"))
            elif kind == "message_delta":
                self.usage = self.usage.updated(body.get("usage"))
            elif kind == "message_stop":
                self.finished = self.state.completed = True
                self.state.usage = Usage(self.usage.prompt_tokens, self.usage.completion_tokens)
            out.append(b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n")
        self.state.chunks += len(out)
        return b"".join(out)

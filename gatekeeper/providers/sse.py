"""Pure SSE handling for OpenAI-format streams: split, learn usage, strip, re-emit."""

from __future__ import annotations

import orjson

from gatekeeper.errors import GatewayError
from gatekeeper.providers.base import StreamState, Usage


class OpenAIStreamFilter:
    """Feeds raw upstream bytes; returns the bytes to forward to the client.

    Only whole events are forwarded (an event split across TCP reads waits for its
    end). ``data: [DONE]`` is swallowed and recorded in ``state.completed``; a usage
    chunk is recorded in ``state.usage`` and forwarded only if the client asked for
    it (``stream_options.include_usage``). Other events pass through byte for byte.
    """

    __slots__ = ("_buf", "include_usage", "state")

    def __init__(self, state: StreamState, *, include_usage: bool) -> None:
        self._buf = b""
        self.include_usage = include_usage
        self.state = state

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        self._buf = buf[end + 2 :]
        out = []
        for event in buf[: end + 2].split(b"\n\n"):
            if event and self._keep(event):
                out.append(event + b"\n\n")
        return b"".join(out)

    def _keep(self, event: bytes) -> bool:
        if not event.startswith(b"data:"):
            return not event.startswith(b":")  # drop comments/keep-alives, keep others
        payload = event[5:].strip()
        if payload == b"[DONE]":
            self.state.completed = True
            return False
        self.state.chunks += 1
        if b'"usage"' not in payload:
            return True
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return True
        if not isinstance(obj, dict):
            return True
        usage = Usage.from_openai(obj.get("usage"))
        if usage is None:
            return True
        self.state.usage = usage
        return self.include_usage or bool(obj.get("choices"))

    @property
    def finished(self) -> bool:
        return self.state.completed


def error_event(err: GatewayError) -> bytes:
    """The SSE event a client gets when a stream fails after it started."""
    return b"data: " + orjson.dumps(err.body()) + b"\n\n"

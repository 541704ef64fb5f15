"""Pure SSE handling for OpenAI-format streams: split, learn usage, strip, re-emit."""

from __future__ import annotations

import orjson

from gatekeeper.errors import GatewayError, StreamInterrupted, UpstreamTooLarge
from gatekeeper.providers.base import CAPTURE_BYTES, StreamState, Usage

_ERRORS = (b'{"error"', b'{"object":"error"')  # an error object instead of a chunk


class OpenAIStreamFilter:
    """Feeds raw upstream bytes; returns the bytes to forward to the client.

    Only whole events are forwarded (an event split across TCP reads waits for its
    end). ``data: [DONE]`` is swallowed and recorded in ``state.completed``; a usage
    chunk is recorded in ``state.usage`` and forwarded only if the client asked for
    it (``stream_options.include_usage``). An error object in the stream (``data:
    {"error": …}``) raises ``StreamInterrupted``: the upstream gave up mid-answer.
    Other events pass through byte for byte.
    An event (or undelimited bytes) longer than ``max_event`` raises ``UpstreamTooLarge``.
    """

    __slots__ = ("_buf", "include_usage", "max_event", "state")

    def __init__(
        self, state: StreamState, *, include_usage: bool, max_event: int = 1024 * 1024
    ) -> None:
        self._buf = b""
        self.include_usage = include_usage
        self.max_event = max_event
        self.state = state

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            self._check(buf)
            return b""
        self._buf = rest = buf[end + 2 :]
        if len(rest) > self.max_event:
            self._check(rest)
        state = self.state
        payloads = state.payloads
        kept = len(payloads)
        out: list[bytes] = []
        try:  # one pass per read, no call per event: this runs for every chunk of every stream
            for event in buf[:end].split(b"\n\n"):
                if not event.startswith(b"data:"):
                    if event and not event.startswith(b":"):  # comments, keep-alives: dropped
                        out.append(event)
                    continue
                payload = event[5:].strip()
                if payload == b"[DONE]":
                    state.completed = True
                    continue
                if payload.startswith(_ERRORS):
                    raise StreamInterrupted(
                        "the upstream sent an error event mid-stream", code="upstream_stream_error"
                    )
                state.chunks += 1
                size = len(payload)  # StreamState.keep, inlined
                if state.captured + size <= CAPTURE_BYTES:
                    payloads.append(payload)
                    state.captured += size
                else:
                    state.overflow += size
                if b'"usage"' not in payload or self._usage(payload):
                    out.append(event)
        except StreamInterrupted:  # the events before it are not forwarded: not kept either
            state.forget(kept)
            raise
        return b"\n\n".join(out) + b"\n\n" if out else b""

    def _check(self, pending: bytes) -> None:
        if len(pending) > self.max_event:
            raise UpstreamTooLarge(
                f"the upstream sent a server-sent event over {self.max_event} bytes"
            )

    def _usage(self, payload: bytes) -> bool:
        """Learn the usage a chunk reports; whether the chunk is still forwarded."""
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

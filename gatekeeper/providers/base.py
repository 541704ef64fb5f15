"""What every provider adapter offers the pool, and the values they exchange."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gatekeeper.routing.matrix import ModelSpec

DONE_EVENT = b"data: [DONE]\n\n"
CAPTURE_BYTES = 4 * 1024 * 1024  # stream payload bytes kept for counting, per stream


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @staticmethod
    def from_openai(obj: object) -> Usage | None:
        if not isinstance(obj, dict):
            return None
        p, c = obj.get("prompt_tokens"), obj.get("completion_tokens", 0)
        if not isinstance(p, int) or not isinstance(c, int):
            return None
        return Usage(p, c)


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt's input: the client's OpenAI body aimed at one model."""

    model: ModelSpec
    body: dict[str, Any]
    request_id: str
    include_usage: bool = False  # the client asked for stream_options.include_usage
    native: Mapping[str, Any] | None = None  # a /v1/messages body, for an Anthropic upstream


@dataclass(frozen=True, slots=True)
class Reply:
    """A finished non-streaming answer in OpenAI wire format."""

    body: bytes
    usage: Usage | None  # None: the upstream reported none
    parsed: Any = None  # the body as parsed by the adapter (for counting, if needed)


@dataclass(slots=True)
class StreamState:
    """What a stream learned while it ran: filled in by the adapter as chunks pass."""

    usage: Usage | None = None
    completed: bool = False  # upstream signalled a clean end
    chunks: int = 0
    # Every data payload received (up to CAPTURE_BYTES), kept by reference: counted
    # only if the upstream never reports usage. ``overflow``: bytes past the cap.
    payloads: list[bytes] = field(default_factory=list)
    captured: int = 0
    overflow: int = 0

    def forget(self, kept: int) -> None:
        """Drop the payloads after the first ``kept`` (they never reached the client)."""
        for payload in self.payloads[kept:]:
            self.captured -= len(payload)
        del self.payloads[kept:]

    def keep(self, payload: bytes) -> None:
        size = len(payload)
        if self.captured + size <= CAPTURE_BYTES:
            self.payloads.append(payload)
            self.captured += size
        else:
            self.overflow += size


class ReplyStream:
    """An upstream stream already past its first chunk.

    ``first`` holds the first OpenAI SSE bytes (so failover can happen before it);
    iterating ``rest`` yields the remaining SSE bytes, never ``[DONE]`` — the
    pipeline sends that itself once the audit record is safe. The adapter raises
    ``StreamInterrupted`` from ``rest`` when the upstream cuts the stream.
    """

    __slots__ = ("_close", "first", "rest", "state")

    def __init__(
        self, first: bytes, rest: AsyncIterator[bytes], state: StreamState, close: Any
    ) -> None:
        self.first = first
        self.rest = rest
        self.state = state
        self._close = close

    async def aclose(self) -> None:
        await self._close()


class Provider(Protocol):
    """An upstream. Raises only ``gatekeeper.errors.ProviderError`` subclasses."""

    name: str
    kind: str
    total_timeout_s: float  # bound on one unary call (the pool applies it); inf: none

    async def chat(self, call: Call) -> Reply: ...

    async def chat_stream(self, call: Call) -> ReplyStream: ...

    async def embeddings(self, call: Call) -> Reply: ...

    async def aclose(self) -> None: ...

"""An in-memory ``Transport`` for unit tests of the provider adapters (no sockets).

In the spirit of ``httpx.MockTransport``: a handler receives each ``Sent`` request and
returns a ``Scripted`` reply (status, headers, body pieces). The reply goes through
the same caps and decoding as a real transport (``max_body_bytes``, gzip/deflate), so
an adapter's handling of a hostile reply is testable without a server.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from gatekeeper.providers.limits import DEFAULT_LIMITS, UpstreamLimits
from gatekeeper.providers.transport import (
    Decoder,
    Endpoint,
    TooLarge,
    UpstreamError,
    check_header_text,
)


@dataclass(frozen=True, slots=True)
class Sent:
    """One request as the upstream would have received it."""

    path: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Scripted:
    """The reply: ``body`` pieces arrive one ``read_chunk`` each; ``fail`` is raised
    after them instead of a clean end (a cut or a stall)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: tuple[bytes, ...] = ()
    fail: UpstreamError | None = None


Handler = Callable[[Sent], Awaitable[Scripted] | Scripted]


class MemoryResponse:
    __slots__ = ("_decoder", "_fail", "_left", "_pieces", "closed", "headers", "status")

    def __init__(self, reply: Scripted, limits: UpstreamLimits) -> None:
        self.status = reply.status
        self.headers = {k.lower(): v for k, v in reply.headers.items()}
        self._pieces = collections.deque(reply.body)
        self._fail = reply.fail
        self._left = limits.max_body_bytes
        self._decoder = Decoder.for_headers(self.headers, limits.max_body_bytes)
        self.closed = False

    def set_read_timeout(self, seconds: float) -> None:
        return None  # scripted bytes never stall

    async def read_chunk(self) -> bytes:
        while self._pieces:
            data = self._pieces.popleft()
            if self._decoder is not None:
                data = self._decoder.decode(data)
            if data:
                self._left -= len(data)
                if self._left < 0:
                    raise TooLarge("the upstream's body exceeds the size cap")
                return data
        if self._fail is not None:
            raise self._fail
        return b""

    async def read(self) -> bytes:
        parts = []
        try:
            while data := await self.read_chunk():
                parts.append(data)
            return b"".join(parts)
        finally:
            self.close()

    def close(self) -> None:
        self.closed = True


class MemoryTransport:
    """Answers every POST with ``handler(Sent)``; records what was sent in ``sent``."""

    def __init__(self, handler: Handler, limits: UpstreamLimits = DEFAULT_LIMITS) -> None:
        self.handler = handler
        self.limits = limits
        self.sent: list[Sent] = []
        self.responses: list[MemoryResponse] = []
        self.closed = False

    def endpoint(self, path: str, headers: Mapping[str, str]) -> Endpoint:
        for k, v in headers.items():
            check_header_text(k, v)
        return Endpoint(path, tuple(headers.items()))

    async def post(
        self, endpoint: Endpoint, body: bytes, extra: Mapping[str, str] | None = None
    ) -> MemoryResponse:
        sent = Sent(endpoint.path, {**dict(endpoint.headers), **dict(extra or {})}, body)
        self.sent.append(sent)
        reply = self.handler(sent)
        if not isinstance(reply, Scripted):
            reply = await reply
        resp = MemoryResponse(reply, self.limits)
        self.responses.append(resp)
        return resp

    async def aclose(self) -> None:
        self.closed = True

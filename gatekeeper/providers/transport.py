"""The upstream transport interface, in the spirit of httpx's ``AsyncBaseTransport``.

A provider adapter talks to its upstream only through a ``Transport``:

* ``endpoint(path, headers)`` once at start: a prepared POST target (a transport may
  pre-encode it; ``h1`` keeps the request head's fixed bytes);
* ``post(endpoint, body, extra)`` per call: returns once the response head arrived;
  the ``UpstreamResponse`` then gives the body whole (``read``) or as it arrives
  (``read_chunk``), and must be ``close``\\ d (``read`` closes it itself);
* ``aclose()`` at stop.

Every transport honours the same contract, checked by the conformance suite
(``tests/integration/test_transport_conformance.py``): the caps in ``UpstreamLimits``,
1xx skipped, no redirect followed, a POST never re-sent once any of its bytes were
written, a bounded wait for a connection slot (``PoolExhausted``), proxies from the
environment. Failures are this module's ``UpstreamError`` tree only;
``providers.http`` maps it onto the gateway's ``ProviderError`` tree in one place.

Implementations: ``h1`` (the default, our own HTTP/1.1 client), ``aio``
(aiohttp-based), ``memory`` (in-memory, for unit tests of the adapters).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


class UpstreamError(Exception):
    """The HTTP exchange failed (no usable response)."""


class ConnectFailed(UpstreamError):
    """No connection could be opened (nothing was sent)."""


class PoolExhausted(UpstreamError):
    """No connection slot came free within ``pool_wait_s`` (nothing was sent).

    The gateway is busy, not the upstream: failover tries the next provider and the
    provider's health and breaker are left alone.
    """


class ReadTimeout(UpstreamError, TimeoutError):
    """No response head, or no body bytes, within ``read_s``."""


class ConnectionClosed(UpstreamError):
    """The upstream closed the connection before the response ended."""


class NoResponse(ConnectionClosed):
    """The connection closed after request bytes were written and before any answer.

    The upstream may have acted on the request (an LLM call billed), so it is never
    re-sent.
    """


class ProtocolError(UpstreamError):
    """The upstream's bytes are not HTTP/1.1 (or not decodable)."""


class TooLarge(UpstreamError):
    """The upstream exceeded a cap (head, body, decoded body, one SSE event)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A prepared POST target. ``wire`` is the transport's own pre-encoding (or empty)."""

    path: str
    headers: tuple[tuple[str, str], ...]
    wire: bytes = b""


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Lower-case names; repeated headers joined with ``", "``."""
        ...

    async def read(self) -> bytes:
        """The whole (decoded) body, at most ``max_body_bytes``; then closes."""
        ...

    async def read_chunk(self) -> bytes:
        """The body bytes that arrived so far (waiting for some); ``b""`` at the end."""
        ...

    def set_read_timeout(self, seconds: float) -> None:
        """Bound every later wait on body bytes by ``seconds`` (a stream's stall limit)."""
        ...

    def close(self) -> None:
        """Done: a finished connection may be reused, any other is closed."""
        ...


class Transport(Protocol):
    def endpoint(self, path: str, headers: Mapping[str, str]) -> Endpoint: ...

    async def post(
        self, endpoint: Endpoint, body: bytes, extra: Mapping[str, str] | None = None
    ) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


def check_header_text(name: str, value: str) -> None:
    if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
        raise ValueError("header names and values may not contain CR, LF (or ':' in names)")


class Decoder:
    """``gzip``/``deflate`` decoding that never produces more than ``limit`` bytes in all.

    A bomb (a small body that expands to gigabytes) fails with ``TooLarge`` after at
    most ``limit + 1`` decoded bytes, whatever the ratio.
    """

    __slots__ = ("_z", "encoding", "left")

    def __init__(self, encoding: str, limit: int) -> None:
        wbits = 16 + zlib.MAX_WBITS if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._z = zlib.decompressobj(wbits)
        self.encoding = encoding
        self.left = limit

    @staticmethod
    def for_headers(headers: Mapping[str, str], limit: int) -> Decoder | None:
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            return Decoder(encoding, limit)
        if encoding in ("", "identity"):
            return None
        raise ProtocolError(f"unsupported content-encoding {encoding[:40]!r}")

    def decode(self, data: bytes) -> bytes:
        try:
            out = self._z.decompress(data, self.left + 1)
        except zlib.error:
            raise ProtocolError(f"undecodable {self.encoding} body") from None
        self.left -= len(out)
        if self.left < 0:
            raise TooLarge("the upstream's decoded body exceeds the size cap")
        if self._z.unconsumed_tail:  # stopped at the cap with input left: over it
            raise TooLarge("the upstream's decoded body exceeds the size cap")
        return out

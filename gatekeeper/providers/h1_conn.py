"""``h1``'s wire side: one connection (an asyncio protocol over llhttp) and its response.

See ``providers.h1`` for the behaviour; this module holds the per-byte work: the head
cap, capped decoding, flow control (pause above a high-water mark for a streaming
reader, never for ``read``), framing by length, chunks or close.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol, cast

import httptools

from gatekeeper.providers.limits import UpstreamLimits
from gatekeeper.providers.transport import (
    ConnectionClosed,
    Decoder,
    NoResponse,
    ProtocolError,
    ReadTimeout,
    TooLarge,
    UpstreamError,
)

_HIGH_WATER = 256 * 1024  # buffered body bytes before a streaming read pauses the socket


class Owner(Protocol):
    """The pool a connection belongs to."""

    limits: UpstreamLimits

    def _give_back(self, conn: Connection) -> None: ...


class Connection(asyncio.Protocol):
    """One TCP/TLS connection; carries one exchange at a time."""

    def __init__(self, pool: Owner) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.response: Response | None = None
        self.paused = False
        self.keep_alive = False
        self.head_bytes = 0  # bytes fed while the current response head is incomplete

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        resp = self.response
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if resp is not None and resp.error is None:
                self._fail(ProtocolError(f"invalid HTTP response ({str(exc)[:80]})"))
            self.abort()
            return
        if resp is not None and not resp.head_done:
            self.head_bytes += len(data)
            if self.head_bytes > self.pool.limits.max_header_bytes:
                self._fail(TooLarge("the upstream's response head exceeds the size cap"))
                self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp = self.response
        if resp is not None and not resp.complete:
            if resp.head_done and resp.until_close:
                resp.on_message_complete()  # body framed by connection close
            elif resp.head_done:
                self._fail(ConnectionClosed("the upstream closed the connection mid-body"))
            else:
                self._fail(NoResponse("the upstream closed the connection without answering"))

    def pause_writing(self) -> None:  # request bodies are bounded by the server's cap
        return None

    def resume_writing(self) -> None:
        return None

    # httptools callbacks, forwarded to the current response
    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self.response
        if resp is None:
            return
        resp._head_size -= len(name) + len(value) + 4  # Response.on_header, inlined
        if resp._head_size < 0:
            resp.fail(TooLarge("the upstream's response head exceeds the size cap"))
            raise httptools.HttpParserError("head too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = resp.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response.on_headers_complete(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response.on_body(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it after this
        if self.response is not None:
            self.response.on_message_complete()

    # ours
    def _fail(self, exc: UpstreamError) -> None:
        if self.response is not None:
            self.response.fail(exc)

    def send(self, data: bytes, response: Response) -> None:
        assert self.transport is not None
        self.response = response
        self.keep_alive = False
        self.head_bytes = 0
        self.transport.write(data)

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.closed and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def usable(self) -> bool:
        t = self.transport
        return not self.closed and t is not None and not t.is_closing()

    def release(self) -> None:
        """Back to the pool if the response ended cleanly and may be reused; else close."""
        resp, self.response = self.response, None
        if (
            self.closed
            or resp is None
            or not resp.complete
            or resp.error is not None
            or not self.keep_alive
        ):
            self.abort()
        else:
            self.resume()
        self.pool._give_back(self)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Response:
    """An upstream response: status and headers once the head arrived, then its body."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_decoder",
        "_draining",
        "_head_size",
        "_limit",
        "_read_s",
        "_waiter",
        "complete",
        "error",
        "head_done",
        "headers",
        "status",
        "until_close",
    )

    def __init__(self, conn: Connection, read_s: float, limits: UpstreamLimits) -> None:
        self._conn = conn
        self._read_s = read_s
        self._limit = limits.max_body_bytes
        self._head_size = limits.max_header_bytes
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._draining = False  # read(): collect everything, never pause
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: Decoder | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.complete = False
        self.until_close = True
        self.error: UpstreamError | None = None

    # parser side (headers: ``Connection.on_header`` fills ``headers`` and ``_head_size``)
    def on_headers_complete(self, status: int) -> None:
        if 100 <= status < 200:  # an interim response: the real one follows
            if status == 101:
                self.fail(ProtocolError("the upstream switched protocols (101)"))
                raise httptools.HttpParserError("101")
            self.headers.clear()
            return
        self.status = status
        self.head_done = True
        h = self.headers
        self.until_close = "content-length" not in h and "chunked" not in h.get(
            "transfer-encoding", ""
        )
        try:
            self._decoder = Decoder.for_headers(h, self._limit)
        except ProtocolError as exc:
            self.fail(exc)
            raise httptools.HttpParserError("bad content-encoding") from None
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._decoder is not None:
            try:
                body = self._decoder.decode(body)
            except UpstreamError as exc:
                self.fail(exc)
                raise httptools.HttpParserError("bad body") from None
        if body:
            self._chunks.append(body)
            self._buffered += len(body)
            if self._buffered > self._limit:
                self.fail(TooLarge("the upstream's body exceeds the size cap"))
                raise httptools.HttpParserError("body too large")
            if self._buffered > _HIGH_WATER and not self._draining:
                self._conn.pause()
            self._wake()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self._wake()

    def fail(self, exc: UpstreamError) -> None:
        if self.error is None and not self.complete:
            self.error = exc
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(self._read_s, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    # caller side
    async def head(self) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    def set_read_timeout(self, seconds: float) -> None:
        self._read_s = seconds

    async def read_chunk(self) -> bytes:
        """The body bytes buffered so far (waiting for some if none); ``b""`` at the end."""
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            await self._wait()
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._conn.resume()
        return data

    async def read(self) -> bytes:
        """The whole body (at most ``max_body_bytes``); the connection goes back to the pool."""
        self._draining = True
        self._conn.resume()
        try:
            while not self.complete:
                if self.error is not None:
                    raise self.error
                await self._wait()
            if self.error is not None:
                raise self.error
            return b"".join(self._chunks)
        finally:
            self.close()

    def close(self) -> None:
        """Done with this response: a finished connection is reused, any other closed."""
        conn = self._conn
        if conn.response is self:
            conn.release()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout("no bytes from the upstream in time"))

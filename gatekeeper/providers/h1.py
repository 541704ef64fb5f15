"""A lean HTTP/1.1 client for upstream calls: keep-alive connections, llhttp parsing.

Why not aiohttp or httpx: a general client spends much of its per-request CPU on
features an upstream call never uses (cookies, redirects, auth flows, multipart,
per-request timeout objects). In a raw-ASGI uvicorn pass-through this client measured
30 µs per request against aiohttp's 89 µs (uvicorn included); the bare Starlette
baselines in BENCHMARKS.md compare all three (README "Upstream HTTP client").
It speaks exactly what the providers need:

* ``POST`` with a bytes body; ``http`` or ``https`` (the default TLS context:
  system CAs, hostname checked); one pool of keep-alive connections per provider,
  at most ``size`` at once (callers beyond that wait for a free one);
* responses framed by ``Content-Length``, chunked transfer coding or connection
  close (parsed by ``httptools``, uvicorn's parser); ``gzip``/``deflate`` bodies are
  decoded although every request asks for ``identity``;
* timeouts: ``connect_s`` to open a connection, ``read_s`` for the response head
  and for every wait on body bytes (a stalled stream fails after ``read_s``);
* a connection that was idle in the pool and dies before answering is replaced
  once (the peer closed it while idle); a response not read to its end, or a
  cancelled call, closes its connection instead of returning it to the pool.

Errors are this module's own (``UpstreamError`` and subclasses); ``providers.http``
maps them onto the gateway's ``ProviderError`` tree in one place.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import zlib
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

KEEPALIVE_S = 60.0
_HIGH_WATER = 256 * 1024  # buffered body bytes before reading pauses (slow consumer)


class UpstreamError(Exception):
    """The HTTP exchange failed (no usable response)."""


class ConnectFailed(UpstreamError):
    """No connection could be opened."""


class ReadTimeout(UpstreamError, TimeoutError):
    """No response head, or no body bytes, within ``read_s``."""


class ConnectionClosed(UpstreamError):
    """The upstream closed the connection before the response ended."""


class ProtocolError(UpstreamError):
    """The upstream's bytes are not HTTP/1.1."""


class _Connection(asyncio.Protocol):
    """One TCP/TLS connection; carries one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self.response: Response | None = None
        self.paused = False
        self.keep_alive = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"invalid HTTP response ({exc})"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        resp = self.response
        if resp is not None and not resp.complete:
            if resp.head_done and resp.until_close:
                resp.on_message_complete()  # body framed by connection close
            else:
                self._fail(ConnectionClosed("the upstream closed the connection"))

    def pause_writing(self) -> None:  # request bodies are small; nothing to throttle
        return None

    def resume_writing(self) -> None:
        return None

    # httptools callbacks, forwarded to the current response
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.on_header(name, value)

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
        self.transport.write(data)

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.closed and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

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
        "_read_s",
        "_waiter",
        "complete",
        "error",
        "head_done",
        "headers",
        "status",
        "until_close",
    )

    def __init__(self, conn: _Connection, read_s: float) -> None:
        self._conn = conn
        self._read_s = read_s
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: zlib._Decompress | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.complete = False
        self.until_close = True
        self.error: UpstreamError | None = None

    # parser side
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self, status: int) -> None:
        if 100 <= status < 200:  # an interim response: the real one follows
            self.headers.clear()
            return
        self.status = status
        self.head_done = True
        h = self.headers
        self.until_close = "content-length" not in h and "chunked" not in h.get(
            "transfer-encoding", ""
        )
        encoding = h.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error as exc:
                self.fail(ProtocolError(f"undecodable {self.headers['content-encoding']} body"))
                raise httptools.HttpParserError("bad body encoding") from exc
        if body:
            self._chunks.append(body)
            self._buffered += len(body)
            if self._buffered > _HIGH_WATER:
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

    async def read_chunk(self) -> bytes:
        """The body bytes buffered so far (waiting for some if none); ``b""`` at the end."""
        while not self._chunks:
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait()
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._conn.resume()
        return data

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
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


class Pool:
    """Keep-alive connections to one origin; at most ``size`` open at once."""

    def __init__(
        self,
        base_url: str,
        *,
        size: int,
        connect_s: float,
        read_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.base_path = parts.path.rstrip("/")
        default_port = 443 if self.tls else 80
        netloc = self.host if ":" not in self.host else f"[{self.host}]"
        self.host_header = netloc if self.port == default_port else f"{netloc}:{self.port}"
        self.ssl = (ssl_context or ssl.create_default_context()) if self.tls else None
        self.size = size
        self.connect_s = connect_s
        self.read_s = read_s
        self._idle: collections.deque[_Connection] = collections.deque()
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    def head_prefix(self, path: str, headers: Mapping[str, str]) -> bytes:
        """The fixed part of a POST's head to ``path`` (request line, host, ``headers``)."""
        lines = [f"POST {self.base_path}{path} HTTP/1.1", f"host: {self.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append("accept-encoding: identity")
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError("header names and values may not contain CR or LF")
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    async def post(self, prefix: bytes, body: bytes, extra: bytes = b"") -> Response:
        """Send ``prefix`` (from ``head_prefix``) + ``extra`` header lines + the body.

        Returns once the response head arrived; read or close the response after.
        """
        data = b"%scontent-length: %d\r\n%s\r\n%s" % (prefix, len(body), extra, body)
        for _ in range(2):
            conn = await self._acquire()
            resp = Response(conn, self.read_s)
            conn.send(data, resp)
            try:
                await resp.head()
            except ConnectionClosed:
                retry = conn.reused and not resp.head_done
                conn.release()
                if retry:
                    continue  # the peer closed it while it sat idle: once more, fresh
                raise
            except BaseException:
                conn.release()
                raise
            return resp
        raise ConnectionClosed("the upstream closed the connection")  # pragma: no cover

    async def _acquire(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE_S:
                conn.reused = True
                return conn
            conn.abort()
            self._open -= 1
        while self._open >= self.size:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: pass the turn on
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
            if self._idle:
                return await self._acquire()
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self) -> _Connection:
        if self._closed:
            raise ConnectFailed("the client is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            raise ConnectFailed(f"connect to {self.host_header} timed out") from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ConnectFailed(f"cannot connect to {self.host_header} ({reason})") from None
        return conn

    def _give_back(self, conn: _Connection) -> None:
        if conn.closed or self._closed:
            conn.abort()
            self._open -= 1
        else:
            conn.reused = False
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().abort()
            self._open -= 1

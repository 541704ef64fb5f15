"""A lean HTTP/1.1 client for upstream calls: keep-alive connections, llhttp parsing.

Why not aiohttp or httpx: a general client spends much of its per-request CPU on
features an upstream call never uses (cookies, redirects, auth flows, multipart,
per-request timeout objects). Both clients pass the same conformance suite
(docs/providers.md has the results and the benchmark that decides the default).
It speaks exactly what the providers need (the ``transport.Transport`` contract):

* ``POST`` with a bytes body; ``http`` or ``https`` (the default TLS context:
  system CAs, hostname checked), directly or through an HTTP proxy (``CONNECT``
  for https, absolute form for http; ``providers.proxy``); one pool of keep-alive
  connections per provider, at most ``size`` at once: callers beyond that wait at
  most ``pool_wait_s`` for a free one (then ``PoolExhausted``);
* responses framed by ``Content-Length``, chunked transfer coding or connection
  close (parsed by ``httptools``, uvicorn's parser); 1xx interim responses are
  skipped; ``gzip``/``deflate`` bodies are decoded (capped) although every request
  asks for ``identity``;
* caps: ``max_header_bytes`` on a response head, ``max_body_bytes`` on a body
  (after decoding) read whole or buffered at once; above a high-water mark a slow
  ``read_chunk`` consumer pauses the socket, ``read`` never does;
* timeouts: ``connect_s`` to open a connection, ``read_s`` for the response head
  and for every wait on body bytes (a stalled stream fails after ``read_s``);
* a POST is never re-sent once any of its bytes were written: a reused connection
  that closes before answering is ``NoResponse`` (the upstream may have acted on
  it). Only a connection already known closed before the write is replaced.
  A response not read to its end, or a cancelled call, closes its connection.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from gatekeeper.providers.h1_conn import Connection, Response
from gatekeeper.providers.limits import DEFAULT_LIMITS, UpstreamLimits
from gatekeeper.providers.proxy import ProxyURL, open_tunnel, proxy_for
from gatekeeper.providers.transport import (
    ConnectFailed,
    ConnectionClosed,
    Endpoint,
    NoResponse,
    PoolExhausted,
    ProtocolError,
    ReadTimeout,
    TooLarge,
    UpstreamError,
    check_header_text,
)

__all__ = [
    "ConnectFailed",
    "ConnectionClosed",
    "NoResponse",
    "Pool",
    "PoolExhausted",
    "ProtocolError",
    "ReadTimeout",
    "Response",
    "TooLarge",
    "UpstreamError",
]

KEEPALIVE_S = 60.0


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
        limits: UpstreamLimits = DEFAULT_LIMITS,
        env: Mapping[str, str] | None = None,
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
        self.limits = limits
        environ = (os.environ if env is None else env) if limits.trust_env else {}
        self.proxy: ProxyURL | None = proxy_for(parts.scheme, self.host, self.port, environ)
        self._idle: collections.deque[Connection] = collections.deque()
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    # Transport
    def endpoint(self, path: str, headers: Mapping[str, str]) -> Endpoint:
        return Endpoint(path, tuple(headers.items()), self.head_prefix(path, headers))

    async def post(
        self, endpoint: Endpoint, body: bytes, extra: Mapping[str, str] | None = None
    ) -> Response:
        lines = b""
        if extra:
            for k, v in extra.items():
                check_header_text(k, v)
            lines = "".join(f"{k}: {v}\r\n" for k, v in extra.items()).encode("latin-1")
        return await self.send(endpoint.wire, body, lines)

    def head_prefix(self, path: str, headers: Mapping[str, str]) -> bytes:
        """The fixed part of a POST's head to ``path`` (request line, host, ``headers``)."""
        target = f"{self.base_path}{path}"
        if self.proxy is not None and not self.tls:  # absolute form to an http proxy
            target = f"http://{self.host_header}{target}"
        lines = [f"POST {target} HTTP/1.1", f"host: {self.host_header}"]
        if self.proxy is not None and not self.tls and self.proxy.authorization:
            lines.append(f"proxy-authorization: {self.proxy.authorization}")
        for k, v in headers.items():
            check_header_text(k, v)
            lines.append(f"{k}: {v}")
        lines.append("accept-encoding: identity")
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    async def send(self, prefix: bytes, body: bytes, extra: bytes = b"") -> Response:
        """Send ``prefix`` (from ``head_prefix``) + ``extra`` header lines + the body.

        Returns once the response head arrived; read or close the response after.
        """
        data = b"%scontent-length: %d\r\n%s\r\n%s" % (prefix, len(body), extra, body)
        conn = await self._acquire()
        while not conn.usable():  # closed before we wrote a byte: provably unsent
            conn.release()
            conn = await self._acquire()
        resp = Response(conn, self.read_s, self.limits)
        conn.send(data, resp)
        try:
            await resp.head()
        except BaseException:
            conn.release()
            raise
        return resp

    async def _acquire(self) -> Connection:
        """An idle connection, else a new one; at ``size`` open, wait (bounded) for a turn."""
        deadline: float | None = None
        while True:
            now = time.monotonic()
            while self._idle:
                conn = self._idle.pop()
                if conn.usable() and now - conn.idle_since < KEEPALIVE_S:
                    return conn
                conn.abort()
                self._open -= 1
            if self._open < self.size:
                break
            if deadline is None:  # only a caller that must wait pays for a timer
                deadline = asyncio.get_running_loop().time() + self.limits.pool_wait_s
            await self._wait_turn(deadline)
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _wait_turn(self, deadline: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    await waiter
                except BaseException:
                    if waiter.done() and not waiter.cancelled():
                        self._wake_one()  # woken, then cancelled: pass the turn on
                    elif waiter in self._waiters:
                        self._waiters.remove(waiter)
                    raise
        except TimeoutError:
            raise PoolExhausted(
                f"no free connection to {self.host_header} within {self.limits.pool_wait_s:g} s"
                f" ({self.size} in use)"
            ) from None

    async def _connect(self) -> Connection:
        if self._closed:
            raise ConnectFailed("the client is closed")
        try:
            async with asyncio.timeout(self.connect_s):
                return await self._open_connection()
        except TimeoutError:
            raise ConnectFailed(f"connect to {self.host_header} timed out") from None
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ConnectFailed(f"cannot connect to {self.host_header} ({reason})") from None

    async def _open_connection(self) -> Connection:
        loop = asyncio.get_running_loop()
        proxy = self.proxy
        if proxy is None or not self.tls:
            host, port = (self.host, self.port) if proxy is None else (proxy.host, proxy.port)
            _, conn = await loop.create_connection(
                lambda: Connection(self),
                host,
                port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
            )
            return conn
        raw = await open_tunnel(proxy, self.host, self.port, limit=self.limits.max_header_bytes)
        conn = Connection(self)
        try:
            tls = await loop.start_tls(raw, conn, self.ssl, server_hostname=self.host)  # type: ignore[arg-type]
        except BaseException:
            raw.abort()
            raise
        if tls is None:  # pragma: no cover - only when the loop is closing
            raise ConnectFailed("TLS through the proxy failed")
        conn.connection_made(tls)
        return conn

    def _give_back(self, conn: Connection) -> None:
        if conn.closed or self._closed:
            conn.abort()
            self._open -= 1
        else:
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

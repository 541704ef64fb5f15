"""An aiohttp-based ``Transport``: the same contract as ``h1``, on a general-purpose client.

Kept as the alternative the conformance suite runs side by side with ``h1``
(``upstream.transport: aiohttp``). What it adds around aiohttp to honour the contract:
our own capped ``gzip``/``deflate`` decoding (``auto_decompress`` off), the body cap,
the total head cap (aiohttp bounds each header line and their count; we check the
sum), a bounded wait for a connection slot (a semaphore of ``size``), no redirects,
the proxy chosen once at start (``providers.proxy``), and its exceptions mapped onto
``transport.UpstreamError``. aiohttp itself never re-sends a POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

import aiohttp

from gatekeeper.providers.limits import DEFAULT_LIMITS, UpstreamLimits
from gatekeeper.providers.proxy import proxy_for
from gatekeeper.providers.transport import (
    ConnectFailed,
    ConnectionClosed,
    Decoder,
    Endpoint,
    NoResponse,
    PoolExhausted,
    ProtocolError,
    ReadTimeout,
    TooLarge,
    UpstreamError,
    check_header_text,
)

_MAX_HEADERS = 128  # aiohttp's own default count of header lines


@contextlib.contextmanager
def _mapped(*, head: bool) -> Iterator[None]:
    """aiohttp's exceptions as ``UpstreamError`` (``head``: no response head yet)."""
    try:
        yield
    except UpstreamError:
        raise
    except aiohttp.ConnectionTimeoutError:
        raise ConnectFailed("connect timed out") from None
    except TimeoutError:
        raise ReadTimeout("no bytes from the upstream in time") from None
    except aiohttp.ClientConnectorError as exc:
        raise ConnectFailed(f"cannot connect ({exc.strerror or type(exc).__name__})") from None
    except aiohttp.ClientResponseError as exc:  # the parser refused the head
        text = str(exc.message)
        if "more than" in text or "too long" in text.lower() or "Too many" in text:
            raise TooLarge("the upstream's response head exceeds the size cap") from None
        raise ProtocolError("invalid HTTP response") from None
    except aiohttp.ClientPayloadError as exc:
        text = str(exc)
        if "decompress" in text.lower():
            raise ProtocolError("undecodable body") from None
        raise ConnectionClosed("the upstream closed the connection mid-body") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        if head:
            raise NoResponse("the upstream closed the connection without answering") from exc
        raise ConnectionClosed("the upstream closed the connection mid-body") from None
    except aiohttp.ClientError as exc:
        raise ProtocolError(f"upstream exchange failed ({type(exc).__name__})") from None


class AioResponse:
    """One aiohttp response behind the ``UpstreamResponse`` contract."""

    __slots__ = ("_decoder", "_done", "_read_s", "_resp", "_sem", "_size", "headers", "status")

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        sem: asyncio.Semaphore,
        limits: UpstreamLimits,
        read_s: float,
    ) -> None:
        self._resp = resp
        self._sem: asyncio.Semaphore | None = sem
        self._read_s = read_s
        self._size = limits.max_body_bytes
        self._done = False
        self.status = resp.status
        headers: dict[str, str] = {}
        head = 0
        for k, v in resp.raw_headers:
            key, text = k.decode("latin-1").lower(), v.decode("latin-1")
            head += len(k) + len(v) + 4
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers
        if head > limits.max_header_bytes:
            self.close()
            raise TooLarge("the upstream's response head exceeds the size cap")
        try:
            self._decoder = Decoder.for_headers(headers, limits.max_body_bytes)
        except ProtocolError:
            self.close()
            raise

    def set_read_timeout(self, seconds: float) -> None:
        self._read_s = seconds

    async def read_chunk(self) -> bytes:
        while True:
            with _mapped(head=False):
                async with asyncio.timeout(self._read_s):
                    data = await self._resp.content.readany()
            if not data:
                self._done = True
                return b""
            if self._decoder is not None:
                data = self._decoder.decode(data)
                if not data:
                    continue
            if len(data) > self._size:
                raise TooLarge("the upstream's body exceeds the size cap")
            return data

    async def read(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        try:
            while True:
                data = await self.read_chunk()
                if not data:
                    return b"".join(parts)
                total += len(data)
                if total > self._size:
                    raise TooLarge("the upstream's body exceeds the size cap")
                parts.append(data)
        finally:
            self.close()

    def close(self) -> None:
        if self._done:
            self._resp.release()
        else:
            self._resp.close()
        if self._sem is not None:
            self._sem.release()
            self._sem = None


class AioTransport:
    """aiohttp ``ClientSession`` for one origin; at most ``size`` exchanges at once."""

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
        self.base = base_url.rstrip("/")
        self.size = size
        self.connect_s = connect_s
        self.read_s = read_s
        self.limits = limits
        self.ssl: ssl.SSLContext | bool = ssl_context or True
        port = parts.port or (443 if parts.scheme == "https" else 80)
        environ = (os.environ if env is None else env) if limits.trust_env else {}
        proxy = proxy_for(parts.scheme, parts.hostname, port, environ)
        self.proxy = proxy.url if proxy is not None else None
        auth = {"Proxy-Authorization": proxy.authorization} if proxy and proxy.authorization else {}
        # aiohttp sends proxy_headers on CONNECT only; an http target carries them itself
        self.proxy_headers = auth or None
        self._own_headers = auth if parts.scheme == "http" else {}
        self._sem = asyncio.Semaphore(size)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created on first use: it binds the running loop
            cap = self.limits.max_header_bytes
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.size, limit_per_host=0, ssl=self.ssl),
                auto_decompress=False,
                trust_env=False,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.connect_s, sock_read=self.read_s
                ),
                max_line_size=cap,
                max_field_size=cap,
                max_headers=_MAX_HEADERS,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    def endpoint(self, path: str, headers: Mapping[str, str]) -> Endpoint:
        for k, v in headers.items():
            check_header_text(k, v)
        own = (*self._own_headers.items(), ("accept-encoding", "identity"))
        return Endpoint(path, (*headers.items(), *own))

    async def post(
        self, endpoint: Endpoint, body: bytes, extra: Mapping[str, str] | None = None
    ) -> AioResponse:
        headers = dict(endpoint.headers)
        if extra:
            for k, v in extra.items():
                check_header_text(k, v)
            headers.update(extra)
        try:
            async with asyncio.timeout(self.limits.pool_wait_s):
                await self._sem.acquire()
        except TimeoutError:
            raise PoolExhausted(
                f"no free connection within {self.limits.pool_wait_s:g} s ({self.size} in use)"
            ) from None
        try:
            with _mapped(head=True):
                async with asyncio.timeout(self.connect_s + self.read_s):
                    resp = await self._client().post(
                        self.base + endpoint.path,
                        data=body,
                        headers=headers,
                        allow_redirects=False,
                        proxy=self.proxy,
                        proxy_headers=self.proxy_headers,
                    )
        except BaseException:
            self._sem.release()
            raise
        return AioResponse(resp, self._sem, self.limits, self.read_s)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

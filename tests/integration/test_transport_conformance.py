"""The conformance suite every upstream ``Transport`` must pass (``h1`` and ``aiohttp``).

Each test runs once per transport against a raw-socket server on 127.0.0.1 that
writes exactly the bytes the test scripts. It is the contract of
``gatekeeper.providers.transport``: bodies of 0 B to 50 MB in every framing, flow
control both ways, keep-alive reuse, a POST never re-sent once written, caps with
clear errors, 1xx/3xx/204, cut and stalled connections, a slow first byte, the
bounded wait for a connection slot, and HTTP proxies from the environment.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gatekeeper.providers import h1
from gatekeeper.providers.aio import AioTransport
from gatekeeper.providers.limits import DEFAULT_LIMITS
from gatekeeper.providers.transport import (
    ConnectionClosed,
    NoResponse,
    PoolExhausted,
    ProtocolError,
    ReadTimeout,
    TooLarge,
    Transport,
    UpstreamResponse,
)
from tests.harness.rawhttp import ForwardProxy, Handler, RawServer, ok, read_request, self_signed

TRANSPORTS = ["h1", "aiohttp"]
MiB = 1024 * 1024


def make(kind: str, url: str, **over: Any) -> Transport:
    size = over.pop("size", 4)
    read_s = over.pop("read_s", 5.0)
    ssl_context: ssl.SSLContext | None = over.pop("ssl_context", None)
    env: Mapping[str, str] = over.pop("env", {})
    limits = replace(DEFAULT_LIMITS, **over)
    cls = h1.Pool if kind == "h1" else AioTransport
    return cls(  # type: ignore[no-any-return]
        url, size=size, connect_s=2.0, read_s=read_s, ssl_context=ssl_context,
        limits=limits, env=env,
    )  # fmt: skip


@pytest.fixture(params=TRANSPORTS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


Serve = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[RawServer] = []

    async def start(handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> RawServer:
        s = await RawServer(handler).start(ssl_ctx)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture
async def transports() -> AsyncIterator[list[Transport]]:
    made: list[Transport] = []
    yield made
    for t in made:
        await t.aclose()


async def call(t: Transport, body: bytes = b"{}") -> UpstreamResponse:
    return await t.post(t.endpoint("/chat", {"content-type": "application/json"}), body)


def framed(body: bytes, framing: str) -> bytes:
    if framing == "length":
        return ok(body)
    if framing == "chunked":
        step = 65536
        pieces = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step])
            for i in range(0, len(body), step)
        )
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + pieces + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + body


class TestBodies:
    @pytest.mark.parametrize("framing", ["length", "chunked", "close"])
    @pytest.mark.parametrize("size", [0, 1, 300 * 1024, 50 * MiB])
    async def test_every_size_in_every_framing(
        self, kind: str, serve: Serve, transports: list[Transport], framing: str, size: int
    ) -> None:
        """0 B to 50 MB arrive intact, read whole, framed by length, chunks or close."""
        body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(framed(body, framing))
            await w.drain()
            if framing != "close":
                await r.read()

        t = make(kind, (await serve(handler)).url)
        transports.append(t)
        resp = await call(t)
        assert resp.status == 200
        got = await resp.read()
        assert len(got) == size and got == body

    async def test_gzip_and_deflate_are_decoded(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        replies = [
            (b"gzip", gzip.compress(b"hello gzip")),
            (b"deflate", zlib.compress(b"hello deflate")),
        ]

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            for enc, packed in replies:
                await read_request(r)
                w.write(ok(packed, b"content-encoding: " + enc))
            await r.read()

        t = make(kind, (await serve(handler)).url)
        transports.append(t)
        assert await (await call(t)).read() == b"hello gzip"
        assert await (await call(t)).read() == b"hello deflate"


class TestFlowControl:
    async def test_a_slow_reader_pauses_the_upstream(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        """A streaming consumer that stops reading stops the socket: the upstream's
        writes block long before 32 MB are out, then everything arrives intact."""
        total, piece = 32 * MiB, b"x" * 65536
        written = 0

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal written
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
            while written < total:
                w.write(piece)
                await w.drain()
                written += len(piece)
            await r.read()

        t = make(kind, (await serve(handler)).url)
        transports.append(t)
        resp = await call(t)
        got = len(await resp.read_chunk())
        await asyncio.sleep(0.3)  # the reader stalls
        assert written < total // 2
        while data := await resp.read_chunk():
            got += len(data)
        resp.close()
        assert got == total

    async def test_a_large_upload_arrives_whole(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        """An 8 MB request body to an upstream that reads it slowly arrives intact."""
        body = bytes(range(256)) * (8 * MiB // 256)
        seen: list[bytes] = []

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await asyncio.sleep(0.2)
            seen.append((await read_request(r))[1])
            w.write(ok(b"done"))
            await r.read()

        t = make(kind, (await serve(handler)).url)
        transports.append(t)
        assert await (await call(t, body)).read() == b"done"
        assert seen == [body]


class TestConnections:
    async def test_keep_alive_reuses_one_connection(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while True:
                await read_request(r)
                w.write(ok(b"x"))

        server = await serve(handler)
        t = make(kind, server.url)
        transports.append(t)
        for _ in range(10):
            assert await (await call(t)).read() == b"x"
        assert server.connections == 1

    async def test_a_written_post_is_never_re_sent(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        """A reused connection that takes the request and closes without answering:
        a clear NoResponse, and the upstream saw the request exactly once."""
        received = 0

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal received
            await read_request(r)
            received += 1
            w.write(ok(b"first"))
            await w.drain()
            await read_request(r)  # the second request arrives whole ...
            received += 1  # ... and the connection closes unanswered

        server = await serve(handler)
        t = make(kind, server.url)
        transports.append(t)
        assert await (await call(t)).read() == b"first"
        with pytest.raises(NoResponse):
            await call(t)
        await asyncio.sleep(0.1)
        assert received == 2 and server.connections == 1

    async def test_a_connection_closed_while_idle_is_replaced(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        """Closed by the upstream before anything was written: provably unsent, so the
        next call takes a fresh connection."""

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(ok(b"once"))
            await w.drain()

        server = await serve(handler)
        t = make(kind, server.url)
        transports.append(t)
        for _ in range(3):
            assert await (await call(t)).read() == b"once"
            await asyncio.sleep(0.05)
        assert server.connections == 3

    async def test_the_wait_for_a_connection_slot_is_bounded(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        """All slots held: the next caller gets PoolExhausted after pool_wait_s."""

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")
            await r.read()

        t = make(kind, (await serve(handler)).url, size=1, pool_wait_s=0.2)
        transports.append(t)
        held = await call(t)
        with pytest.raises(PoolExhausted):
            await call(t)
        held.close()


class TestCaps:
    async def test_a_huge_head_is_refused(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        """20 MB of headers: TooLarge after about the cap, not 20 MB buffered."""

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\n")
            line = b"x-filler: " + b"a" * 1000 + b"\r\n"
            for _ in range(20_000):
                w.write(line)
                await w.drain()

        t = make(kind, (await serve(handler)).url)
        transports.append(t)
        tracemalloc.start()
        try:
            with pytest.raises(TooLarge):
                await call(t)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 16 * MiB  # aiohttp holds up to 128 lines of the cap's size; h1 less

    async def test_a_body_over_the_cap_is_refused(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(ok(b"y" * (2 * MiB)))
            await r.read()

        t = make(kind, (await serve(handler)).url, max_body_bytes=MiB)
        transports.append(t)
        with pytest.raises(TooLarge):
            await (await call(t)).read()

    async def test_a_gzip_bomb_stops_at_the_cap(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        """About 200 KB that would expand to 200 MB: TooLarge once the cap is passed."""
        bomb = gzip.compress(b"\0" * (200 * MiB), compresslevel=9)

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(ok(bomb, b"content-encoding: gzip"))
            await r.read()

        t = make(kind, (await serve(handler)).url, max_body_bytes=4 * MiB)
        transports.append(t)
        tracemalloc.start()
        try:
            with pytest.raises(TooLarge):
                await (await call(t)).read()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 24 * MiB  # a few times the cap, nowhere near the 200 MiB it expands to

    async def test_an_unknown_content_encoding_is_refused(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(ok(b"...", b"content-encoding: br"))
            await r.read()

        t = make(kind, (await serve(handler)).url)
        transports.append(t)
        with pytest.raises(ProtocolError):
            await (await call(t)).read()


class TestStatuses:
    async def test_interim_1xx_responses_are_skipped(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n")
            w.write(ok(b"final"))
            await r.read()

        t = make(kind, (await serve(handler)).url)
        transports.append(t)
        resp = await call(t)
        assert resp.status == 200 and "link" not in resp.headers
        assert await resp.read() == b"final"

    async def test_a_redirect_is_returned_not_followed(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        requests: list[bytes] = []

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while True:
                requests.append((await read_request(r))[0])
                w.write(ok(b'{"ok":true}', b"location: /elsewhere", status=b"302 Found"))

        t = make(kind, (await serve(handler)).url)
        transports.append(t)
        resp = await call(t)
        assert resp.status == 302
        await resp.read()
        assert len(requests) == 1

    async def test_204_has_no_body_and_keeps_the_connection(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while True:
                await read_request(r)
                w.write(b"HTTP/1.1 204 No Content\r\n\r\n")

        server = await serve(handler)
        t = make(kind, server.url)
        transports.append(t)
        for _ in range(2):
            resp = await call(t)
            assert resp.status == 204 and await resp.read() == b""
        assert server.connections == 1


class TestFailures:
    async def test_cut_mid_body(self, kind: str, serve: Serve, transports: list[Transport]) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nsome")
            await w.drain()

        t = make(kind, (await serve(handler)).url)
        transports.append(t)
        resp = await call(t)
        with pytest.raises(ConnectionClosed):
            await resp.read()

    async def test_stall_before_the_head(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read()

        t = make(kind, (await serve(handler)).url, read_s=0.3)
        transports.append(t)
        with pytest.raises(ReadTimeout):
            await call(t)

    async def test_stall_mid_body(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nsome")
            await r.read()

        t = make(kind, (await serve(handler)).url, read_s=0.3)
        transports.append(t)
        resp = await call(t)
        with pytest.raises(ReadTimeout):
            await resp.read()

    async def test_a_slow_first_byte_within_read_s_is_fine(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            await asyncio.sleep(0.3)
            w.write(ok(b"late"))
            await r.read()

        t = make(kind, (await serve(handler)).url, read_s=2.0)
        transports.append(t)
        assert await (await call(t)).read() == b"late"

    async def test_not_http(self, kind: str, serve: Serve, transports: list[Transport]) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            await r.read()

        t = make(kind, (await serve(handler)).url)
        transports.append(t)
        with pytest.raises(ProtocolError):
            await call(t)


def echo_handler(heads: list[bytes]) -> Handler:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            heads.append((await read_request(r))[0])
            w.write(ok(b"via"))

    return handler


class TestProxies:
    async def test_http_target_goes_through_http_proxy_in_absolute_form(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        heads: list[bytes] = []
        server = await serve(echo_handler(heads))
        proxy = await ForwardProxy().start()
        env = {"HTTP_PROXY": proxy.url.replace("http://", "http://user:pa%20ss@")}
        t = make(kind, server.url, env=env)
        transports.append(t)
        assert await (await call(t)).read() == b"via"
        line, auth = proxy.seen[0]
        assert line == f"POST http://127.0.0.1:{server.port}/v1/chat HTTP/1.1"
        assert auth == "Basic dXNlcjpwYSBzcw=="  # user:pa ss
        proxy.close()

    async def test_https_target_tunnels_through_connect(
        self, kind: str, serve: Serve, transports: list[Transport], tmp_path: Path
    ) -> None:
        server_ctx, client_ctx = self_signed(tmp_path)
        heads: list[bytes] = []
        server = await serve(echo_handler(heads), server_ctx)
        proxy = await ForwardProxy().start()
        t = make(kind, server.url, env={"https_proxy": proxy.url}, ssl_context=client_ctx)
        transports.append(t)
        for _ in range(2):
            assert await (await call(t)).read() == b"via"
        assert proxy.seen == [(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1", "")]
        assert heads[0].startswith(b"POST /v1/chat HTTP/1.1")  # origin form inside TLS
        proxy.close()

    async def test_no_proxy_bypasses_the_proxy(
        self, kind: str, serve: Serve, transports: list[Transport]
    ) -> None:
        heads: list[bytes] = []
        server = await serve(echo_handler(heads))
        proxy = await ForwardProxy().start()
        env = {"HTTP_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.0/8"}
        t = make(kind, server.url, env=env)
        transports.append(t)
        assert await (await call(t)).read() == b"via"
        assert proxy.seen == [] and heads[0].startswith(b"POST /v1/chat ")
        proxy.close()

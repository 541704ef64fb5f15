"""The lean upstream HTTP/1.1 client (``gatekeeper.providers.h1``) against real sockets.

Each test starts a raw asyncio server on 127.0.0.1 that answers with exactly the
bytes the test scripts, so framing (Content-Length, chunked, connection close),
keep-alive, stalls and cuts are exercised byte for byte.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gatekeeper.providers import h1
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.rawhttp import Handler, ok, read_request
from tests.harness.rawhttp import RawServer as Server

Serve = Callable[[Handler], Awaitable[Server]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[Server] = []

    async def start(handler: Handler) -> Server:
        s = Server(handler)
        s.server = await asyncio.start_server(s._on_connect, "127.0.0.1", 0)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()


def pool_for(url: str, *, size: int = 4, read_s: float = 2.0) -> h1.Pool:
    return h1.Pool(url, size=size, connect_s=1.0, read_s=read_s)


async def post(pool: h1.Pool, body: bytes = b"{}") -> h1.Response:
    return await pool.send(pool.head_prefix("/chat", {"content-type": "application/json"}), body)


class TestRequests:
    async def test_sends_the_head_and_body_and_reads_the_reply(self, serve: Serve) -> None:
        """Request line under the base path, host header, length, identity encoding."""
        seen: list[tuple[bytes, bytes]] = []

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            seen.append(await read_request(r))
            w.write(ok(b'{"ok":true}', b"retry-after: 3"))
            await w.drain()
            await r.read()

        server = await serve(handler)
        pool = pool_for(server.url)
        resp = await post(pool, b'{"a":1}')
        assert (resp.status, resp.headers["retry-after"]) == (200, "3")
        assert await resp.read() == b'{"ok":true}'
        head, body = seen[0]
        assert head.startswith(b"POST /v1/chat HTTP/1.1\r\n")
        assert b"\r\nhost: 127.0.0.1:" in head and b"\r\naccept-encoding: identity" in head
        assert body == b'{"a":1}'
        await pool.aclose()

    async def test_keeps_connections_alive(self, serve: Serve) -> None:
        """Ten sequential calls share one connection."""

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while True:
                await read_request(r)
                w.write(ok(b"x"))

        server = await serve(handler)
        pool = pool_for(server.url)
        for _ in range(10):
            assert await (await post(pool)).read() == b"x"
        assert server.connections == 1
        await pool.aclose()

    async def test_chunked_and_gzip_bodies(self, serve: Serve) -> None:
        packed = gzip.compress(b"hello world")

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-encoding: gzip\r\n\r\n"
                + b"%x\r\n%s\r\n0\r\n\r\n" % (len(packed), packed)
            )
            await r.read()

        pool = pool_for((await serve(handler)).url)
        assert await (await post(pool)).read() == b"hello world"
        await pool.aclose()

    async def test_body_until_close(self, serve: Serve) -> None:
        """No Content-Length, not chunked: the body ends when the server closes."""

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart one, part two")
            await w.drain()

        pool = pool_for((await serve(handler)).url)
        assert await (await post(pool)).read() == b"part one, part two"
        await pool.aclose()

    async def test_streams_body_as_it_arrives(self, serve: Serve) -> None:
        release = asyncio.Event()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await w.drain()
            await release.wait()
            w.write(b"4\r\nlast\r\n0\r\n\r\n")
            await r.read()

        pool = pool_for((await serve(handler)).url)
        resp = await post(pool)
        assert await resp.read_chunk() == b"first"  # before the server sent the rest
        release.set()
        assert await resp.read_chunk() == b"last"
        assert await resp.read_chunk() == b""
        resp.close()
        await pool.aclose()


class TestFailures:
    async def test_connect_refused(self) -> None:
        pool = pool_for("http://127.0.0.1:9/v1")  # discard port: nothing listens
        with pytest.raises(h1.ConnectFailed, match="cannot connect"):
            await post(pool)

    async def test_no_head_in_time(self, serve: Serve) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read()

        pool = pool_for((await serve(handler)).url, read_s=0.2)
        with pytest.raises(h1.ReadTimeout):
            await post(pool)
        assert pool._open == 0  # the stalled connection was closed, not pooled
        await pool.aclose()

    async def test_stall_mid_body(self, serve: Serve) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nsome")
            await r.read()

        pool = pool_for((await serve(handler)).url, read_s=0.2)
        resp = await post(pool)
        with pytest.raises(h1.ReadTimeout):
            await resp.read()

    async def test_cut_mid_body(self, serve: Serve) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nsome")
            await w.drain()

        pool = pool_for((await serve(handler)).url)
        resp = await post(pool)
        with pytest.raises(h1.ConnectionClosed):
            await resp.read()
        await pool.aclose()

    async def test_not_http(self, serve: Serve) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            await r.read()

        pool = pool_for((await serve(handler)).url)
        with pytest.raises(h1.ProtocolError):
            await post(pool)
        await pool.aclose()

    async def test_idle_connection_closed_by_peer_is_replaced(self, serve: Serve) -> None:
        """A server that closes after each reply: the next call opens a fresh connection."""

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await read_request(r)
            w.write(ok(b"once"))  # says keep-alive, then closes anyway
            await w.drain()

        server = await serve(handler)
        pool = pool_for(server.url)
        for _ in range(3):
            assert await (await post(pool)).read() == b"once"
            await asyncio.sleep(0.05)  # let the close arrive while the connection idles
        assert server.connections == 3
        await pool.aclose()

    async def test_cancelled_call_closes_its_connection(self, serve: Serve) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read()

        pool = pool_for((await serve(handler)).url)
        task = asyncio.ensure_future(post(pool))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (pool._open, len(pool._idle)) == (0, 0)


class TestPoolLimit:
    async def test_callers_beyond_size_wait_for_a_free_connection(self, serve: Serve) -> None:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while True:
                await read_request(r)
                await asyncio.sleep(0.05)
                w.write(ok(b"x"))

        server = await serve(handler)
        pool = pool_for(server.url, size=2)

        async def call() -> bytes:
            return await (await post(pool)).read()

        assert await asyncio.gather(*(call() for _ in range(8))) == [b"x"] * 8
        assert server.connections == 2
        await pool.aclose()


async def test_against_the_fake_openai_server() -> None:
    """The harness's aiohttp-based fake OpenAI answers the client like a real upstream."""
    with FakeOpenAI() as fake:
        pool = pool_for(fake.url)
        prefix = pool.head_prefix(
            "/chat/completions",
            {"content-type": "application/json", "authorization": f"Bearer {fake.api_key}"},
        )
        body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
        for _ in range(3):
            resp = await pool.send(prefix, body)
            assert resp.status == 200
            assert b'"chat.completion"' in await resp.read()
        assert pool._open == 1
        await pool.aclose()

"""Raw-socket HTTP/1.1 servers and an HTTP proxy on loopback, for upstream-client tests.

``RawServer`` answers with exactly the bytes a test's handler writes, so framing,
keep-alive, stalls, cuts and hostile heads are exercised byte for byte.
``ForwardProxy`` is a small HTTP proxy: ``CONNECT`` tunnels (for https targets) and
absolute-form requests (for http targets), recording what it was asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request: (head, body), the body by its Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def ok(body: bytes, *extra: bytes, status: bytes = b"200 OK") -> bytes:
    head = b"HTTP/1.1 %s\r\ncontent-length: %d\r\n" % (status, len(body))
    return head + b"".join(e + b"\r\n" for e in extra) + b"\r\n" + body


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests = 0  # handlers may count here
        self.server: asyncio.Server | None = None
        self.scheme = "http"

    async def _on_connect(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(r, w)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()

    async def start(self, ssl_ctx: ssl.SSLContext | None = None) -> RawServer:
        self.scheme = "https" if ssl_ctx else "http"
        self.server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0, ssl=ssl_ctx)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def self_signed(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for 127.0.0.1, via the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            w.close()


class ForwardProxy:
    """An HTTP proxy on loopback; ``seen`` holds each request line (and its auth)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []  # (request line, proxy-authorization)
        self.server: asyncio.Server | None = None

    async def start(self) -> ForwardProxy:
        self.server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _on_connect(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            w.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        auth = next(
            (ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("proxy-auth")),
            "",
        )
        self.seen.append((lines[0], auth))
        method, target, _ = lines[0].split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            ur, uw = await asyncio.open_connection(host.strip("[]"), int(port))
            w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await w.drain()
        else:  # absolute form: forward this one request's bytes and the rest verbatim
            parts = urlsplit(target)
            ur, uw = await asyncio.open_connection(parts.hostname, parts.port or 80)
            uw.write(head)
        await asyncio.gather(_pipe(r, uw), _pipe(ur, w))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

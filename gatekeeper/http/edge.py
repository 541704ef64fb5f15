"""The HTTP edge: uvicorn's httptools protocol, bounded, with one write per response.

Bounds (``server.limits``, docs/limits.md), enforced here because uvicorn has none
of them for httptools:

* a request head (request line + headers) must arrive within ``header_timeout_s``
  of the connection opening or of its first byte, else 408 and the connection closes;
* a head over ``max_header_bytes`` gets 431 (at most one read chunk, 256 KiB, more
  is buffered before that is noticed);
* a body must arrive within ``body_timeout_s`` of the end of its head, else 408;
* at most ``max_connections`` per process: at the cap the oldest idle connection is
  closed to make room (``http.limits.ConnectionTable``), else the new one gets 503.

The timers cost nothing on an ordinary request: the header timer is armed once per
connection (and again only for a head that spans reads), the body timer only for a
body that does not arrive in the read that completed its head.

This subclasses uvicorn's ``HttpToolsProtocol`` and overrides four of its parser
callbacks plus ``data_received`` / ``connection_*``; the version range is pinned in
pyproject.toml and tests/unit/test_edge.py fails if those hooks move.

uvicorn writes a response's status line and headers, then its body, as two separate
``transport.write`` calls; uvloop sends each at once, so every JSON reply costs two
``send`` syscalls and two TCP segments, and the client wakes up twice. Here the
transport handed to uvicorn buffers what is written during one event-loop turn and
sends it together at the end of that turn (head and body of a reply, or the SSE
events produced in one turn). Nothing waits longer than the turn that wrote it, and
closing the connection sends what is buffered first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gatekeeper.edgeconfig import EdgeLimits
from gatekeeper.http.limits import (
    BODY_TIMEOUT,
    FULL,
    HEAD_TIMEOUT,
    HEAD_TOO_LARGE,
    LINGER_S,
    ConnectionTable,
)


class CoalescingTransport:
    """Wraps a transport: writes made in one loop turn leave in one ``send``."""

    __slots__ = ("_buffer", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(data)

    def _flush(self) -> None:
        buffer = self._buffer
        if not buffer:
            return
        self._buffer = []
        if self._transport.is_closing():
            return
        self._transport.write(buffer[0] if len(buffer) == 1 else b"".join(buffer))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._buffer = []
        self._transport.abort()

    def write_eof(self) -> None:
        """Flush, then half-close (a TLS transport cannot: its close comes later)."""
        self._flush()
        if not self._transport.is_closing() and self._transport.can_write_eof():
            self._transport.write_eof()

    # what uvicorn and the edge call on every request: explicit, not via ``__getattr__``
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._buffer))

    def __getattr__(self, name: str) -> Any:  # everything else goes to the real transport
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol over a ``CoalescingTransport``, with bounds.

    ``bounded(limits)`` makes the class a worker serves with: its own limits and
    connection table (one per process).
    """

    limits = EdgeLimits()
    table: ConnectionTable | None = None

    _timer: asyncio.TimerHandle | None
    _head: bool
    _began: bool
    _in_body: bool
    _head_bytes: int
    _refused: bool
    _tls: dict[str, Any] | None

    @classmethod
    def bounded(cls, limits: EdgeLimits) -> type[GatewayHttpProtocol]:
        attrs = {"limits": limits, "table": ConnectionTable(limits.max_connections)}
        return type("BoundedHttpProtocol", (cls,), attrs)

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped: Any = CoalescingTransport(transport, self.loop)
        super().connection_made(wrapped)
        self._head = self._began = self._in_body = self._refused = False
        self._head_bytes = 0
        self._timer = None
        self._tls = _tls_extension(transport)
        if self.table is not None and not self.table.admit(self):
            self._refuse(FULL)
            return
        self._timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.table is not None:
            self.table.discard(self)
        super().connection_lost(exc)

    @property
    def idle(self) -> bool:
        """No request in progress (waiting for a head, or part-way through one)."""
        cycle = self.cycle
        return not self._in_body and (cycle is None or cycle.response_complete)

    def evict(self) -> None:
        self._cancel_timer()
        self.transport.close()

    # ------------------------------------------------------------------ reading

    def data_received(self, data: bytes) -> None:
        if self._refused:  # lingering after a refusal: input is dropped
            return
        self._began = False
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if self._head:
            if not self._began:  # a head begun in this read is counted from the next one
                self._head_bytes += len(data)
                if self._head_bytes > self.limits.max_header_bytes:
                    self._refuse(HEAD_TOO_LARGE)
                    return
            if self._timer is None:
                self._timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)
        elif self._in_body and self._timer is None:
            self._timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": self._tls}  # type: ignore[dict-item]
        self._head = self._began = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._head = False
        self._in_body = True
        self._cancel_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._cancel_timer()
        super().on_message_complete()

    # ------------------------------------------------------------------ refusing

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._head and self.idle:
            self._refuse(HEAD_TIMEOUT)
        else:  # opened and never sent a byte, or a stalled head behind a running request
            self.transport.close()

    def _body_timeout(self) -> None:
        self._timer = None
        cycle = self.cycle
        if cycle is None or self.transport.is_closing() or not self._in_body:
            return
        if not cycle.response_started:
            self._refuse(BODY_TIMEOUT)
        else:
            self.transport.close()

    def _refuse(self, reply: bytes) -> None:
        """Send ``reply``, stop reading, half-close; the socket closes after a linger.

        Closing at once with unread input makes the kernel send RST, and the client
        may then never see the reply; a half-close lets it read the reply first.
        """
        self._refused = True
        self._cancel_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app sees http.disconnect and writes nothing
            cycle.message_event.set()
        transport = self.transport
        transport.pause_reading()
        transport.write(reply)
        transport.write_eof()
        self.loop.call_later(LINGER_S, transport.close)


def _tls_extension(transport: asyncio.Transport) -> dict[str, Any] | None:
    """ASGI's ``tls`` scope extension, reduced to what the gateway reads: the subject
    of a client certificate the handshake verified (None: no certificate)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    name = None
    if cert:
        subject = dict(pair[0] for pair in cert.get("subject", ()) if pair)
        name = str(subject.get("commonName") or "client")
    return {"client_cert_name": name, "tls_version": ssl_object.version()}

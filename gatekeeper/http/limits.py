"""Bounds of the HTTP edge: the connection table and the raw error replies the edge sends.

The decisions (which connection makes room, what a refusal looks like on the wire)
live here as plain code; ``gatekeeper.http.edge`` calls them from uvicorn's protocol
callbacks. See docs/limits.md for the values.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Protocol

from gatekeeper.errors import GatewayError, error_json

LINGER_S = 2.0  # after a refusal: time for the client to read it before the socket closes


class Connection(Protocol):
    @property
    def idle(self) -> bool:
        """Not serving a request: waiting for (or part-way through) a request head."""

    def evict(self) -> None:
        """Close this connection now to make room for a new one."""


class ConnectionTable:
    """The live connections of one process, oldest first, with a cap.

    At the cap a new connection is let in only if an idle one (keep-alive, or a
    head still arriving — a slow client) can be closed for it: the oldest such goes.
    A flood of slow connections therefore cannot lock out new clients, and
    connections with a request in progress are never cut for a newcomer.
    """

    __slots__ = ("cap", "evicted", "live", "refused")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.live: dict[Connection, None] = {}
        self.evicted = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self.live)

    def admit(self, conn: Connection) -> bool:
        if len(self.live) >= self.cap:
            victim = next((c for c in self.live if c.idle), None)
            if victim is None:
                self.refused += 1
                return False
            del self.live[victim]
            self.evicted += 1
            victim.evict()
        self.live[conn] = None
        return True

    def discard(self, conn: Connection) -> None:
        self.live.pop(conn, None)


class HeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    default_code = "request_header_fields_too_large"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"


class TooManyConnections(GatewayError):
    status = 503
    type = "server_error"
    default_code = "too_many_connections"


def raw_reply(err: GatewayError) -> bytes:
    """A complete HTTP/1.1 error response in OpenAI's shape that closes the connection.

    Sent by the edge itself, where no ASGI request exists yet (so no request id).
    """
    body = error_json(err)
    head = (
        f"HTTP/1.1 {err.status} {HTTPStatus(err.status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


HEAD_TOO_LARGE = raw_reply(
    HeadersTooLarge("The request line and headers are over the server's size limit")
)
HEAD_TIMEOUT = raw_reply(
    RequestTimeout("The request headers did not arrive in time (server.limits.header_timeout_s)")
)
BODY_TIMEOUT = raw_reply(
    RequestTimeout("The request body did not arrive in time (server.limits.body_timeout_s)")
)
FULL = raw_reply(TooManyConnections("The server has too many open connections; retry shortly"))

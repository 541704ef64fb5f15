"""The edge's bounds as plain code: the connection table, the raw replies, the hooks."""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gatekeeper.edgeconfig import EdgeLimits
from gatekeeper.http.edge import GatewayHttpProtocol
from gatekeeper.http.limits import BODY_TIMEOUT, HEAD_TOO_LARGE, ConnectionTable


class Conn:
    def __init__(self, idle: bool) -> None:
        self.idle = idle
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True


class TestConnectionTable:
    def test_at_the_cap_the_oldest_idle_connection_makes_room(self) -> None:
        table = ConnectionTable(3)
        busy, idle_old, idle_new = Conn(False), Conn(True), Conn(True)
        for c in (busy, idle_old, idle_new):
            assert table.admit(c)
        newcomer = Conn(True)
        assert table.admit(newcomer)
        assert idle_old.evicted and not busy.evicted and not idle_new.evicted
        assert len(table) == 3 and table.evicted == 1

    def test_when_every_connection_is_busy_the_newcomer_is_refused(self) -> None:
        table = ConnectionTable(2)
        table.admit(Conn(False))
        table.admit(Conn(False))
        assert not table.admit(Conn(True))
        assert table.refused == 1 and len(table) == 2

    def test_a_closed_connection_leaves_the_table(self) -> None:
        table = ConnectionTable(1)
        c = Conn(False)
        table.admit(c)
        table.discard(c)
        table.discard(c)
        assert table.admit(Conn(False))


class TestRawReplies:
    def test_a_refusal_is_a_complete_response_in_openai_shape(self) -> None:
        head, body = HEAD_TOO_LARGE.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        assert b"connection: close" in head
        assert f"content-length: {len(body)}".encode() in head
        error = orjson.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert orjson.loads(BODY_TIMEOUT.split(b"\r\n\r\n", 1)[1])["error"]["code"] == (
            "request_timeout"
        )


class TestUvicornHooks:
    def test_the_hooks_the_edge_overrides_still_exist(self) -> None:
        """http/edge.py overrides these uvicorn internals: fail loudly if they move."""
        for name in (
            "connection_made",
            "connection_lost",
            "data_received",
            "on_message_begin",
            "on_headers_complete",
            "on_message_complete",
        ):
            assert callable(getattr(HttpToolsProtocol, name)), name
        cycle_fields = RequestResponseCycle.__init__.__code__.co_names
        for attr in ("response_started", "response_complete", "disconnected", "message_event"):
            assert attr in cycle_fields, attr

    def test_bounded_makes_one_table_per_class(self) -> None:
        limits = EdgeLimits(max_connections=10)
        a, b = GatewayHttpProtocol.bounded(limits), GatewayHttpProtocol.bounded(limits)
        assert a.limits is limits and a.table is not None and a.table is not b.table
        assert a.table.cap == 10

"""Synchronous NATS publishing, written once per event-loop turn, on a nats-py connection.

``nats.Client.publish`` is a coroutine: every call builds its command, queues a
future for the client's flusher task and wakes it, so each message costs an
extra task switch and several allocations. ``BatchWriter.publish`` is a plain
function: it appends the ``PUB``/``HPUB`` command to the client's own pending
buffer (so order with the client's other commands is kept) and schedules one
write of everything pending for the end of the current loop turn. On the hot
path that is one ``writelines`` per turn for the audit record, gossip and events
together, instead of a flusher round per message.

It uses three attributes of nats-py's ``Client`` (``_pending``,
``_pending_data_size``, ``_transport``; nats-py 2.x). ``supported()`` checks they
are there, and ``tests/unit/test_bus_wire.py`` fails loudly if a nats-py upgrade
removes them. While the client is not connected the commands stay in its pending
buffer, and nats-py sends them after it reconnects, as it does for its own.

``AckSink`` lets a subscription deliver its messages synchronously from the
client's read loop (nats-py's single-response ``future`` slot, given an object
that never completes), instead of through a queue and a task per subscription.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

_HDR_START = b"NATS/1.0\r\nNats-Msg-Id: "


def supported(nc: Client) -> bool:
    return all(hasattr(nc, name) for name in ("_pending", "_pending_data_size", "_transport"))


def pub_command(subject: str, data: bytes, reply: str = "", msg_id: str | None = None) -> bytes:
    """The NATS protocol command: ``PUB``, or ``HPUB`` with a ``Nats-Msg-Id`` header."""
    if msg_id is None:
        return b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(data), data)
    hdr = b"%s%s\r\n\r\n" % (_HDR_START, msg_id.encode())
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
        subject.encode(),
        reply.encode(),
        len(hdr),
        len(hdr) + len(data),
        hdr,
        data,
    )


class BatchWriter:
    def __init__(self, nc: Client) -> None:
        if not supported(nc):
            raise RuntimeError("this nats-py version lacks the client internals BatchWriter uses")
        self.nc = nc
        self._scheduled = False
        self._loop = asyncio.get_running_loop()

    def publish(
        self, subject: str, data: bytes, reply: str = "", msg_id: str | None = None
    ) -> None:
        """Queue one message; it is written at the end of this loop turn."""
        cmd = pub_command(subject, data, reply, msg_id)
        nc: Any = self.nc
        nc._pending.append(cmd)
        nc._pending_data_size += len(cmd)
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += len(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._write)

    def flush(self) -> None:
        """Write what is pending now, not at the end of the loop turn."""
        self._write()

    def _write(self) -> None:
        self._scheduled = False
        nc: Any = self.nc
        if not nc._pending_data_size or not nc.is_connected or nc._transport is None:
            return  # nats-py writes its pending buffer itself once reconnected
        pending = nc._pending
        nc._pending = []
        nc._pending_data_size = 0
        try:
            nc._transport.writelines(pending)
        except OSError:
            nc._pending[:0] = pending  # the client's own error handling reconnects
            nc._pending_data_size += sum(map(len, pending))


class AckSink:
    """Stands in for the ``future`` of a nats-py subscription: calls ``on_msg`` for each
    message, synchronously, from the client's read loop. Never completes."""

    def __init__(self, on_msg: Callable[[Msg], None]) -> None:
        self._on_msg = on_msg

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def set_result(self, msg: Msg) -> None:
        self._on_msg(msg)

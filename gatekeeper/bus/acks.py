"""Acknowledged JetStream publishing with one reply subscription for all messages.

nats-py's ``js.publish`` does a request/reply round per message (a fresh inbox
token, a full JSON parse of every ack); this avoids both: the message goes out
through ``wire.BatchWriter`` (no coroutine, one write per loop turn), acks arrive
on one wildcard subscription delivered synchronously (``wire.AckSink``), a future
per message, and an ack counts as an error when it has a 503 status, is empty or
contains ``"error"``; otherwise its future ends with the stream sequence the ack names
(``"seq":``, read without a JSON parse; 0 if it names none). Many publishes can be in flight at
once (pipelined acks); each caller awaits only its own. Deadlines are kept by one
sweeper task (every ``SWEEP_S``) rather than a timer per message, so a publish
times out between ``timeout_s`` and ``timeout_s + SWEEP_S`` after it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from gatekeeper.bus.wire import AckSink, BatchWriter

SWEEP_S = 0.1


_SEQ = re.compile(rb'"seq":(\d*)')


def ack_stream_seq(ack: bytes) -> int:
    """The ``"seq"`` of a JetStream ack (``{"stream":"S","seq":42,…}``), 0 if none."""
    found = _SEQ.search(ack)
    return int(found.group(1)) if found is not None and found.group(1) else 0


class PublishNotAcked(NatsError):
    """JetStream answered with an error, or nothing answered (no stream, no responders)."""


class AckedPublisher:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.writer: BatchWriter | None = None
        self.pending: dict[int, asyncio.Future[int]] = {}
        self._deadlines: dict[int, float] = {}
        self._ids = itertools.count(1)
        self._prefix = ""
        self._sub: Any = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._prefix = f"_INBOX.gkack.{self.nc._nuid.next().decode()}"
        self.writer = BatchWriter(self.nc)
        sink: Any = AckSink(self._on_ack)
        self._sub = await self.nc.subscribe(f"{self._prefix}.*", future=sink)
        self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            late = [n for n, at in self._deadlines.items() if at <= now]
            for n in late:
                del self._deadlines[n]
                fut = self.pending.pop(n, None)
                if fut is not None and not fut.done():
                    fut.set_exception(TimeoutError("JetStream did not acknowledge in time"))

    def _on_ack(self, msg: Msg) -> None:
        """Runs inside the client's read loop: must not raise."""
        try:
            n = int(msg.subject[len(self._prefix) + 1 :])
        except ValueError:
            return
        fut = self.pending.pop(n, None)
        if fut is None or fut.done():
            return
        status = msg.headers.get("Status") if msg.headers else None
        if status == "503":
            fut.set_exception(PublishNotAcked("no JetStream stream took the message"))
        elif not msg.data or b'"error"' in msg.data:
            fut.set_exception(PublishNotAcked(msg.data.decode(errors="replace")[:200]))
        else:
            fut.set_result(ack_stream_seq(msg.data))

    def send(
        self,
        subject: str,
        data: bytes,
        msg_id: str | None,
        timeout_s: float,
        *,
        flush: bool = False,
    ) -> asyncio.Future[int]:
        """Publish; the returned future ends with JetStream's ack (the message's stream
        sequence), an error or a timeout. ``msg_id``: JetStream's de-duplication id
        (None: none, as a KV put).

        ``flush``: write it to the socket at once (a caller about to do other work
        while the ack travels), not at the end of the loop turn."""
        assert self.writer is not None, "start() first"
        n = next(self._ids)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending[n] = fut
        self._deadlines[n] = time.monotonic() + timeout_s
        fut.add_done_callback(lambda _: self._forget(n))
        self.writer.publish(subject, data, f"{self._prefix}.{n}", msg_id)
        if flush:
            self.writer.flush()
        return fut

    def _forget(self, n: int) -> None:
        self.pending.pop(n, None)
        self._deadlines.pop(n, None)

    async def publish(self, subject: str, data: bytes, msg_id: str | None, timeout_s: float) -> int:
        """Publish and wait (bounded) for JetStream's ack; its stream sequence. Raises on
        an error or a timeout."""
        return await self.send(subject, data, msg_id, timeout_s)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
        for fut in self.pending.values():
            if not fut.done():
                fut.cancel()
        self.pending.clear()

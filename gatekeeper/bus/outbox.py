"""Fire-and-forget NATS publishing without a task per message.

``put`` is synchronous (safe from any callback). While connected, with nothing
queued, a message goes straight to ``wire.BatchWriter`` (written at the end of
the loop turn). Otherwise it is queued and one drain coroutine writes the queue,
in order, once NATS is back. While NATS is disconnected the queue is bounded:
the oldest messages are dropped and counted (events are telemetry; the audit
trail and budget slots have their own durable paths).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from nats.aio.client import Client
from nats.errors import Error as NatsError

from gatekeeper.bus.wire import BatchWriter

Message = tuple[str, bytes, dict[str, str] | None]


class Outbox:
    def __init__(self, nc: Client, limit: int = 50_000) -> None:
        self.nc = nc
        self.queue: collections.deque[Message] = collections.deque(maxlen=limit)
        self.dropped = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writer: BatchWriter | None = None

    def put(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        writer = self._writer
        if writer is not None and not self.queue and self.nc.is_connected:
            msg_id = headers.get("Nats-Msg-Id") if headers else None
            if headers is None or (msg_id is not None and len(headers) == 1):
                writer.publish(subject, data, msg_id=msg_id)
                return
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append((subject, data, headers))
        self._wake.set()

    def start(self) -> None:
        self._writer = BatchWriter(self.nc)
        self._task = asyncio.ensure_future(self._drain_forever())

    async def _drain_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue and self.nc.is_connected:
                subject, data, headers = self.queue.popleft()
                try:
                    await self.nc.publish(subject, data, headers=headers)
                except (NatsError, OSError):
                    self.queue.appendleft((subject, data, headers))
                    await asyncio.sleep(0.25)
            if self.queue:  # disconnected: look again shortly
                await asyncio.sleep(0.25)
                self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(NatsError, OSError):
            while self.queue and self.nc.is_connected:
                subject, data, headers = self.queue.popleft()
                await self.nc.publish(subject, data, headers=headers)

"""The HTTP edge's transport: what one loop turn writes leaves in one send."""

from __future__ import annotations

import asyncio

from gatekeeper.http.edge import CoalescingTransport


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


async def test_head_and_body_written_in_one_turn_leave_together() -> None:
    real = Recorder()
    edge = CoalescingTransport(real, asyncio.get_running_loop())
    edge.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    edge.write(b"{}")
    assert real.sent == []  # nothing before the turn ends
    await asyncio.sleep(0)
    assert real.sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]


async def test_each_turn_is_sent_at_its_end() -> None:
    """A stream's events written in separate turns are not held back."""
    real = Recorder()
    edge = CoalescingTransport(real, asyncio.get_running_loop())
    for event in (b"data: 1\n\n", b"data: 2\n\n"):
        edge.write(event)
        await asyncio.sleep(0)
    assert real.sent == [b"data: 1\n\n", b"data: 2\n\n"]


async def test_close_sends_what_is_buffered_first_and_abort_drops_it() -> None:
    closing, aborting = Recorder(), Recorder()
    loop = asyncio.get_running_loop()
    a, b = CoalescingTransport(closing, loop), CoalescingTransport(aborting, loop)
    a.write(b"last words")
    b.write(b"never sent")
    a.close()
    b.abort()
    await asyncio.sleep(0)
    assert (closing.sent, closing.closed) == ([b"last words"], True)
    assert (aborting.sent, aborting.aborted) == ([], True)


async def test_everything_else_is_the_real_transport() -> None:
    real = Recorder()
    edge = CoalescingTransport(real, asyncio.get_running_loop())
    assert edge.is_closing() is False
    real.close()
    assert edge.is_closing() is True

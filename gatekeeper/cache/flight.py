"""In-flight coalescing on one node: identical requests share one upstream call.

A ``Flight`` is one upstream call run in a task the ``Coalescer`` owns, not in the
task of the request that started it: the leader's client hanging up does not end
the call while others wait on it. When the last waiter leaves, the call is
cancelled (as an uncoalesced request's would be).

* unary: every waiter gets the same ``Served[Reply]``, or its own copy of the error.
* stream: the task reads the upstream into a shared chunk list; each waiter replays
  it from the start at its own pace. Past ``max_bytes`` buffered the flight stops
  taking new waiters and is not stored, and it reads on only when the slowest
  waiter has caught up (then the buffer is dropped): bounded memory, like a plain
  stream's back-pressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gatekeeper.errors import GatewayError, StreamInterrupted
from gatekeeper.providers.base import Reply, ReplyStream, StreamState
from gatekeeper.providers.failover import Attempt
from gatekeeper.providers.pool import Served
from gatekeeper.routing.matrix import ModelSpec

__all__ = ["Coalescer", "StreamFlight", "UnaryFlight", "copy_error"]


def copy_error(err: GatewayError) -> GatewayError:
    """A waiter's own copy of a shared error (the pipeline adds headers to it)."""
    clone = type(err).__new__(type(err), *err.args)
    clone.__dict__.update(err.__dict__)
    clone.headers = dict(err.headers)
    return clone


class _Flight:
    def __init__(self, key: str) -> None:
        self.key = key
        self.waiters = 0
        self.payer_left = False  # the leader left before the answer: a follower pays
        self.task: asyncio.Task[None] | None = None
        self.on_full: Callable[[], None] = lambda: None  # stop taking new waiters

    def take_payment(self) -> bool:
        """True once, for the first follower served after the leader left."""
        if self.payer_left:
            self.payer_left = False
            return True
        return False


class UnaryFlight(_Flight):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.result: asyncio.Future[Served[Reply]] = asyncio.get_running_loop().create_future()

    async def wait(self, leader: bool) -> Served[Reply]:
        self.waiters += 1
        done = False
        try:
            served = await asyncio.shield(self.result)
            done = True
            return served
        except GatewayError as err:
            done = True
            raise copy_error(err) from None
        finally:
            self.waiters -= 1
            if not done:  # cancelled: a client went away
                if leader:
                    self.payer_left = True
                if self.waiters == 0 and self.task is not None:
                    self.task.cancel()


class StreamFlight(_Flight):
    def __init__(self, key: str, max_bytes: int) -> None:
        super().__init__(key)
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[tuple[ModelSpec, tuple[Attempt, ...], StreamState]] = (
            loop.create_future()
        )
        self.chunks: list[bytes] = []
        self.offset = 0  # stream position of chunks[0] (after the buffer was dropped)
        self.size = 0
        self.max_bytes = max_bytes
        self.storable = True
        self.finished = False
        self.error: GatewayError | None = None
        self.positions: dict[int, int] = {}  # waiter id -> next stream position
        self._changed = asyncio.Event()
        self._next_id = 0

    # ------------------------------------------------------------ the upstream side

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def push(self, chunk: bytes) -> None:
        while not self.storable and self.positions and self.size > self.max_bytes:
            if min(self.positions.values()) >= self.offset + len(self.chunks):
                self.offset += len(self.chunks)  # everyone has it: drop the buffer
                self.chunks.clear()
                self.size = 0
                break
            await self._changed.wait()
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size > self.max_bytes and self.storable:
            self.storable = False
            self.on_full()
        self._notify()

    def end(self, error: GatewayError | None) -> None:
        self.finished, self.error = True, error
        if error is not None:
            self.storable = False
        self._notify()

    # ------------------------------------------------------------ the waiters' side

    async def subscribe(self, leader: bool, state: StreamState | None) -> Served[ReplyStream]:
        """A replay of this flight for one waiter (``state``: its own; None: upstream's)."""
        self.waiters += 1
        me = self._next_id = self._next_id + 1
        self.positions[me] = 0
        try:
            model, attempts, upstream_state = await asyncio.shield(self.started)
        except BaseException as exc:
            self._leave(me, leader)
            if isinstance(exc, GatewayError):
                raise copy_error(exc) from None
            raise
        own = upstream_state if state is None else state
        replay = ReplyStream(
            self.chunks[0],
            self._replay(me, own, upstream_state),
            own,
            lambda: self._aclose(me, leader),
        )
        self.positions[me] = 1
        return Served(replay, model, attempts if leader else ())

    async def _replay(
        self, me: int, own: StreamState, upstream: StreamState
    ) -> AsyncIterator[bytes]:
        while True:
            pos = self.positions.get(me)
            if pos is None:
                return
            changed = self._changed
            if pos < self.offset + len(self.chunks):
                self.positions[me] = pos + 1
                if pos + 1 >= self.offset + len(self.chunks):
                    self._notify()  # the upstream side may wait for the slowest reader
                yield self.chunks[pos - self.offset]
                continue
            if self.finished:
                if self.error is not None:
                    raise copy_error(self.error)
                if own is not upstream:
                    own.completed = upstream.completed
                return
            await changed.wait()

    async def _aclose(self, me: int, leader: bool) -> None:
        self._leave(me, leader)

    def _leave(self, me: int, leader: bool) -> None:
        if self.positions.pop(me, None) is None:
            return
        self.waiters -= 1
        if leader and not self.finished:
            self.payer_left = True
        if self.waiters == 0 and not self.finished and self.task is not None:
            self.task.cancel()
        self._notify()


Run = Callable[[], Awaitable[Any]]


class Coalescer:
    """This node's flights by cache key, and the tasks that run them (closed together)."""

    def __init__(self) -> None:
        self.flights: dict[str, _Flight] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def find(self, key: str) -> _Flight | None:
        return self.flights.get(key)

    def start(self, flight: _Flight, run: Callable[[], Awaitable[None]]) -> None:
        self.flights[flight.key] = flight
        flight.on_full = lambda: self.forget(flight)

        async def body() -> None:
            try:
                await run()
            finally:
                self.forget(flight)

        task = asyncio.ensure_future(body())
        flight.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def forget(self, flight: _Flight) -> None:
        """No new waiter joins ``flight`` (it ended, or grew past what is stored)."""
        if self.flights.get(flight.key) is flight:
            del self.flights[flight.key]

    async def aclose(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await task


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


async def pump_stream(flight: StreamFlight, served: Served[ReplyStream], deadline: float) -> None:
    """Read one upstream stream into ``flight`` (in the flight's task)."""
    stream = served.result
    try:
        await flight.push(stream.first)
        async with asyncio.timeout(remaining(deadline)):
            async for part in stream.rest:
                await flight.push(part)
        flight.end(None)
    except StreamInterrupted as err:
        flight.end(err)
    except TimeoutError:
        flight.end(
            StreamInterrupted(
                "The stream ran past the request deadline (server.request_timeout_s)",
                code="stream_deadline_exceeded",
            )
        )
    finally:
        if not flight.finished:  # cancelled: everyone left
            flight.end(StreamInterrupted("The shared upstream stream was closed"))
        await stream.aclose()

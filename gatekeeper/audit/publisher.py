"""Step 8 — every request to BH_AUDIT: sealed into the node's chain, then published.

strict (default): ``commit`` returns only once JetStream acknowledged the record or it
    is fsynced in the local spool; for a stream, ``data: [DONE]`` follows that.
async: ``commit`` queues the record and returns; a crash (SIGKILL, power loss) loses
    what was queued but not yet acknowledged (at most ``ASYNC_QUEUE`` records,
    usually a few ms' worth). A graceful stop loses nothing: ``stop`` publishes the
    queue, waits (bounded) for the acks in flight, and spools whatever is left.

Each node's records reach BH_AUDIT in chain (seal) order. A record is published at
once only if nothing sealed before it can still end up in the spool: the spool is
empty, no record is waiting for its turn to be spooled, and every publish still
awaiting its ack went out on the current connection (one sent before a reconnect may
be lost and, after its timeout, spooled). While NATS is up but the spool still holds
records, a new record waits (in seal order, at most ``PUBLISH_TIMEOUT_S``) for the
drainer to empty it and is then published; so a loaded node leaves the spool once
NATS is back instead of relaying every record through it. Otherwise it is spooled,
in seal order: each spooled record waits until the record sealed before it is acked
or spooled. A drainer replays the spool when NATS is back; ``Nats-Msg-Id`` =
``<node>:<seq>:<hash>`` makes a replayed duplicate harmless (not the request id:
a client may choose it with ``x-request-id`` and reuse it, and JetStream would
then drop a genuine record as a duplicate).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from nats.aio.client import Client
from nats.errors import Error as NatsError

from gatekeeper.audit.chain import AuditChain
from gatekeeper.audit.record import Attempt, AuditRecord, Continuation, rfc3339_ms
from gatekeeper.audit.spool import AuditSpool
from gatekeeper.bus.acks import AckedPublisher
from gatekeeper.bus.streams import audit_subject
from gatekeeper.exchange import Exchange

log = structlog.get_logger("gatekeeper.audit")

PUBLISH_TIMEOUT_S = 2.0
ASYNC_QUEUE = 10_000
ASYNC_WINDOW = 1024  # async mode: records published but not yet acknowledged
DRAIN_BATCH = 256  # spooled records replayed per spool read, acknowledged together
STORED_WAIT_S = 10.0  # async mode: how long ``finish(stored=True)`` waits for the ack


def _msg_id(node_id: str, seq: int, digest: str) -> str:
    """The JetStream dedup id of a sealed record: the same only for the same record."""
    return f"{node_id}:{seq}:{digest}"


def to_record(ex: Exchange, node_id: str, now: float) -> AuditRecord:
    """The audit record of a finished exchange (pure). No prompt or completion text."""
    claims, route, served, usage = ex.claims, ex.route, ex.served, ex.usage
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    cost = served.cost_usd(prompt, completion) if served is not None and usage else 0.0
    resumed = ex.resumed if ex.resumed is not None and ex.resumed.continued else None
    attempts = ex.attempts
    if resumed is not None:  # mid-stream failover: each segment at its model's price
        cost, attempts = resumed.cost_usd, (*attempts, *resumed.attempts())
    return AuditRecord(
        request_id=ex.request_id,
        ts=rfc3339_ms(now - (time.perf_counter() - ex.started)),
        node_id=node_id,
        tenant=claims.tenant if claims else "_unauthenticated",
        key_id=claims.audit_key_id if claims else "",
        requested_model=ex.requested_model,
        served_model=served.name if served else "",
        provider=served.provider if served else "",
        routing_mode=route.mode if route else "",
        route_reason=route.reason if route else "",
        stream=ex.stream,
        status=ex.status,
        error_code=ex.error_code,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cost_usd=round(cost, 8),
        latency_ms=ex.elapsed_ms(),
        ttft_ms=ex.ttft_ms,
        attempts=tuple(Attempt(a.provider, a.model, a.status, a.error, a.ms) for a in attempts),
        usage_source=ex.usage_source or ("upstream" if usage else "none"),
        client_api=ex.ingress,
        upstream_wire=ex.upstream_wire,
        continued=() if resumed is None else _continued(resumed.report()),
        cache=ex.cache,
    )


def _continued(report: list[dict[str, Any]]) -> tuple[Continuation, ...]:
    return tuple(
        Continuation(
            provider=s["provider"],
            model=s["model"],
            seam=s["seam"],
            reason=s["reason"],
            prompt_tokens=s.get("prompt_tokens", 0),
            completion_tokens=s.get("completion_tokens", 0),
            usage_source=s.get("usage_source", "none"),
        )
        for s in report
    )


@dataclass(slots=True)
class Sealed:
    """A sealed record on its way: sent at once (``ack``) or still to publish or spool."""

    subject: str
    data: bytes
    msg_id: str
    seq: int = 0  # its place in the node's chain
    hash: str = ""  # and its hash: with the node, the record's identity
    previous: asyncio.Future[None] | None = None  # the record sealed before (strict)
    done: asyncio.Future[None] | None = None  # this record's fate is settled (strict)
    ack: asyncio.Future[int] | None = None
    generation: int = 0  # the connection it was sent on


@dataclass(slots=True)
class Queued:
    """A record queued in async mode; ``fate`` (if someone waits for it) gets its stream
    sequence once acknowledged, or None once spooled."""

    subject: str
    data: bytes
    msg_id: str
    fate: asyncio.Future[int | None] | None = None

    def settle(self, seq: int | None) -> None:
        if self.fate is not None and not self.fate.done():
            self.fate.set_result(seq)


class AuditPublisher:
    def __init__(
        self,
        nc: Client,
        chain: AuditChain,
        spool: AuditSpool,
        *,
        node_id: str,
        strict: bool = True,
    ) -> None:
        self.nc, self.chain, self.spool = nc, chain, spool
        self.acks = AckedPublisher(nc)  # started in ``start``
        self.node_id = node_id
        self.strict = strict
        self.published = 0
        self.spooled = 0
        self._wake = asyncio.Event()
        self._queue: asyncio.Queue[Queued] = asyncio.Queue(ASYNC_QUEUE)
        self._tasks: list[asyncio.Task[None]] = []
        self._respool: set[asyncio.Task[None]] = set()  # async mode: failed publishes
        self._stopping = False
        self._spool_lock = asyncio.Lock()
        self._previous: asyncio.Future[None] | None = None  # the last sealed record's fate
        self._spooling = 0  # records waiting for their turn in the spool
        self._waiting = 0  # records waiting for the drainer to empty the spool
        self._drained = asyncio.Condition()  # notified after every drain pass
        self._in_flight: Counter[int] = Counter()  # unacked publishes, by connection

    async def start(self) -> None:
        await self.acks.start()
        self._tasks.append(asyncio.ensure_future(self._drain_forever()))
        if not self.strict:
            self._tasks.append(asyncio.ensure_future(self._async_sender()))
        if self.spool.depth:
            self._wake.set()

    @property
    def spool_depth(self) -> int:
        return self.spool.depth

    def seal(self, ex: Exchange) -> Sealed:
        """Seal ``ex``'s record into the chain. In strict mode it is also published at
        once when nothing sealed earlier can still end up in the spool (the common
        case), so the caller can do other work while JetStream acknowledges it."""
        return self.seal_record(to_record(ex, self.node_id, time.time()))

    def seal_record(self, record: AuditRecord) -> Sealed:
        """``seal`` for a record built elsewhere (a summary of failed-auth requests)."""
        sealed, data = self.chain.seal_wire(record)
        out = Sealed(
            audit_subject(record.tenant, self.node_id),
            data,
            _msg_id(self.node_id, sealed.seq, sealed.hash),
            sealed.seq,
            sealed.hash,
        )
        if not self.strict:
            return out
        out.previous = self._previous
        out.done = self._previous = asyncio.get_running_loop().create_future()
        nc = self.nc
        behind = nc.is_connected and (self.spool.depth or self._spooling or self._waiting)
        if not behind and self._may_publish():
            out.generation = nc.stats["reconnects"]
            self._in_flight[out.generation] += 1
            # Alone in flight (light load): write now and overlap the ack with the rest
            # of the reply. Under load: one write per loop turn for all records.
            alone = not self.acks.pending
            out.ack = self.acks.send(out.subject, data, out.msg_id, PUBLISH_TIMEOUT_S, flush=alone)
        return out

    async def finish(self, s: Sealed, *, stored: bool = False) -> int | None:
        """Return once ``s`` is acknowledged by JetStream or in the spool (strict), or
        queued (async; with ``stored``, once the sender has it acknowledged or spooled,
        at most ``STORED_WAIT_S``). Returns the record's stream sequence in BH_AUDIT if
        JetStream acknowledged it, else None (spooled, queued, or not known)."""
        if s.done is None:
            return await self._queue_async(s, stored)
        try:
            if s.ack is not None:
                seq = await self._acked(s)
                if seq is not None:
                    return seq or None
            else:
                if self.nc.is_connected and (self.spool.depth or self._spooling or self._waiting):
                    await self._wait_for_drain(s.previous)
                if self._may_publish():
                    seq = await self._try_publish(s.subject, s.data, s.msg_id)
                    if seq is not None:
                        return seq or None
            await self._spool_in_turn(s.previous, s.data)
            return None
        finally:
            s.done.set_result(None)

    async def _queue_async(self, s: Sealed, stored: bool) -> int | None:
        fate: asyncio.Future[int | None] | None = None
        if stored:
            fate = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(Queued(s.subject, s.data, s.msg_id, fate))
        except asyncio.QueueFull:
            await self._to_spool(s.data)
            return None
        if fate is None:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STORED_WAIT_S):
                return await asyncio.shield(fate)
        return None

    async def commit(self, ex: Exchange) -> None:
        await self.finish(self.seal(ex))

    async def commit_record(self, record: AuditRecord) -> None:
        await self.finish(self.seal_record(record))

    async def _acked(self, s: Sealed) -> int | None:
        """The acknowledged stream sequence (0: not named), None if the publish failed."""
        assert s.ack is not None
        try:
            seq = await s.ack
            self.published += 1
            return seq
        except (NatsError, TimeoutError, OSError) as exc:
            log.warning("audit.publish_failed", msg_id=s.msg_id, error=type(exc).__name__)
            return None
        finally:
            self._in_flight_done(s.generation)

    async def _wait_for_drain(self, previous: asyncio.Future[None] | None) -> None:
        """Once the record sealed before this one is done, wait (bounded) for an empty spool."""
        self._waiting += 1
        try:
            if previous is not None and not previous.done():
                await asyncio.wait({previous})  # never cancels ``previous``
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PUBLISH_TIMEOUT_S), self._drained:
                    await self._drained.wait_for(lambda: not self.spool.depth)
        finally:
            self._waiting -= 1

    def _may_publish(self) -> bool:
        """True if publishing now keeps seal order (nothing earlier can be spooled)."""
        generation = self.nc.stats["reconnects"]
        return (
            self.nc.is_connected
            and not self.spool.depth
            and not self._spooling
            and all(gen == generation for gen in self._in_flight)
        )

    async def _try_publish(self, subject: str, data: bytes, msg_id: str) -> int | None:
        """As ``_acked``, for a record published now."""
        generation = self.nc.stats["reconnects"]
        self._in_flight[generation] += 1
        try:
            return await self._publish(subject, data, msg_id)
        except (NatsError, TimeoutError, OSError) as exc:
            log.warning("audit.publish_failed", msg_id=msg_id, error=type(exc).__name__)
            return None
        finally:
            self._in_flight_done(generation)

    def _in_flight_done(self, generation: int) -> None:
        self._in_flight[generation] -= 1
        if not self._in_flight[generation]:
            del self._in_flight[generation]

    async def _spool_in_turn(self, previous: asyncio.Future[None] | None, data: bytes) -> None:
        """Spool ``data`` once the record sealed before it is published or spooled."""
        self._spooling += 1
        try:
            if previous is not None and not previous.done():
                await asyncio.wait({previous})  # never cancels ``previous``
            await self._to_spool(data)
        finally:
            self._spooling -= 1

    async def _publish(self, subject: str, data: bytes, msg_id: str) -> int:
        seq = await self.acks.publish(subject, data, msg_id, PUBLISH_TIMEOUT_S)
        self.published += 1
        return seq

    async def _to_spool(self, data: bytes) -> None:
        async with self._spool_lock:  # keeps spool order = seal order
            await asyncio.to_thread(self.spool.append, data)
        self.spooled += 1
        self._wake.set()

    async def _async_sender(self) -> None:
        """Publish queued records without waiting for each ack (at most ``ASYNC_WINDOW``
        unacknowledged at once); a record whose publish fails goes to the spool."""
        window = asyncio.Semaphore(ASYNC_WINDOW)
        while True:
            q = await self._queue.get()
            if self.spool.depth or not self.nc.is_connected:
                await self._to_spool(q.data)
                q.settle(None)
                continue
            await window.acquire()
            fut = self.acks.send(q.subject, q.data, q.msg_id, PUBLISH_TIMEOUT_S)
            fut.add_done_callback(functools.partial(self._async_acked, window, q))

    def _async_acked(self, window: asyncio.Semaphore, q: Queued, fut: asyncio.Future[int]) -> None:
        window.release()
        if not fut.cancelled() and fut.exception() is None:
            self.published += 1
            q.settle(fut.result() or None)
            return
        q.settle(None)
        self._spool_later(q.data)

    def _spool_later(self, data: bytes) -> None:
        if self._stopping and self.spool.is_open:  # stop() awaits nothing more: spool now
            self.spool.append(data)
            self.spooled += 1
            return
        task = asyncio.ensure_future(self._to_spool(data))
        self._respool.add(task)  # stop() waits for these before closing the spool
        task.add_done_callback(self._respool.discard)

    async def _drain_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.spool.depth:
                drained = self.nc.is_connected and await self._drain_once()
                async with self._drained:
                    self._drained.notify_all()
                if not drained:
                    await asyncio.sleep(0.25)

    async def _drain_once(self) -> bool:
        """Replay up to ``DRAIN_BATCH`` spooled records in order; False if NATS failed.

        What was published is acknowledged once per batch, in a thread: ``ack_through``
        fsyncs, and once per record on the event loop it capped the
        drain below the rate of a loaded node, so the spool never emptied. A crash
        before the ack replays the batch; ``Nats-Msg-Id`` drops those copies.
        """

        published_through, ok = None, True
        for offset, data in list(itertools.islice(self.spool.pending(), DRAIN_BATCH)):
            rec = orjson.loads(data)
            subject = audit_subject(rec.get("tenant", "_"), self.node_id)
            try:
                await self._publish(subject, data, _msg_id(self.node_id, rec["seq"], rec["hash"]))
            except (NatsError, TimeoutError, OSError):
                ok = False
                break
            published_through = offset
        if published_through is not None:
            await asyncio.to_thread(self.spool.ack_through, published_through)
        if ok and not self.spool.depth:
            log.info("audit.spool_drained", published=self.published)
        return ok

    async def flush(self, wait_s: float = 10.0) -> None:
        """Wait (bounded) until queued, in-flight and spooled records are published."""
        deadline = time.monotonic() + wait_s
        while (
            self._queue.qsize() or self.acks.pending or self._respool or self.spool.depth
        ) and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.05)

    async def stop(self, wait_s: float = 10.0) -> None:
        """Publish what is queued (bounded by ``wait_s``), then keep the rest on disk.

        Order matters: the sender stops taking from the queue, the queue goes to the
        spool, the publishes in flight get ``PUBLISH_TIMEOUT_S`` to be acknowledged,
        and a failed one is spooled by its callback, all before the spool closes.
        """
        await self.flush(wait_s)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._stopping = True
        while not self._queue.empty():  # whatever async mode still holds goes to disk
            q = self._queue.get_nowait()
            self.spool.append(q.data)
            self.spooled += 1
            q.settle(None)
        in_flight = set(self.acks.pending.values())
        if in_flight:  # acks arrive, or time out and are spooled by their callback
            await asyncio.wait(in_flight, timeout=PUBLISH_TIMEOUT_S)
        await self.acks.stop()  # still unacknowledged: failed, so spooled by the callback
        await asyncio.sleep(0)
        while self._respool:
            await asyncio.wait(set(self._respool))
        self.spool.close()

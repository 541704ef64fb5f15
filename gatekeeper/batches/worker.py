"""Batch workers: every node pulls job slices from BH_JOBS and runs their lines.

Jobs are described in ``batches.jobs``. A batch whose creator died before all its
slices were queued still has its ``queueing.<batch>`` marker: every node's worker
looks for such markers at start and every ``requeue_every_s`` and queues the slices
again (a copy already queued is dropped by its Msg-Id; a line already recorded is
never run again).

Jobs are signed by the node that queued them and refused (``term``) otherwise. A
slice in progress is kept alive with ``in_progress`` every third of AckWait; a node
that dies mid-slice leaves it unacknowledged and JetStream hands it to another node
after AckWait, which skips every line whose result is recorded (``line.*``, written
once) and runs only the rest. A stopping node gives its slice back at once (``nak``).
Before each line the batch is re-read: a cancelled or expired batch runs no more lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import orjson
import structlog
from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout

from gatekeeper.auth.claims import Claims, parse_claims
from gatekeeper.batches.audited import AuditReader, check_records
from gatekeeper.batches.dispatch import Plan, plan_of
from gatekeeper.batches.execute import Responses, run_line, too_large
from gatekeeper.batches.jobs import Job, parse_job, publish_job, queue_slices
from gatekeeper.batches.lines import Line, LineError, parse_checked
from gatekeeper.batches.results import aggregate, verify
from gatekeeper.batches.signing import KeyOwners, open_value
from gatekeeper.batches.status import (
    TERMINAL,
    Progress,
    batch_usage,
    finished_status,
    moved,
    new_id,
    usage_field,
    with_errors,
)
from gatekeeper.batches.store import BatchStore, Conflict
from gatekeeper.batchesconfig import BatchesConfig
from gatekeeper.bus.streams import JOBS, JOBS_CONSUMER
from gatekeeper.config import Config
from gatekeeper.control.registry import NodeKeyRegistry
from gatekeeper.errors import GatewayError
from gatekeeper.ingress.responses import ResponsesIngress
from gatekeeper.ingress.store import ResponsesStore
from gatekeeper.pipeline import Pipeline

log = structlog.get_logger("gatekeeper.batches")


class _Lines:
    """The checked lines and dispatch plan of the batches this node works on (the newest few)."""

    def __init__(self, store: BatchStore, size: int = 4) -> None:
        self.store, self.size = store, size
        self._cache: OrderedDict[str, tuple[list[Line], Plan]] = OrderedDict()

    async def of(self, record: dict[str, Any]) -> list[Line] | None:
        got = await self.planned(record)
        return None if got is None else got[0]

    async def planned(self, record: dict[str, Any]) -> tuple[list[Line], Plan] | None:
        batch_id = record["batch"]["id"]
        if batch_id in self._cache:
            self._cache.move_to_end(batch_id)
            return self._cache[batch_id]
        tenant = record["tenant"]
        meta = await self.store.file_record(tenant, record["batch"]["input_file_id"])
        if meta is None or meta.get("sha256") != record.get("input_sha256"):
            return None
        content = await self.store.file_content(tenant, meta)
        if content is None:
            return None
        lines = parse_checked(content)
        self._cache[batch_id] = got = (lines, plan_of(record, lines))
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return got


class BatchWorker:
    def __init__(
        self,
        nc: Client,
        store: BatchStore,
        pipeline: Pipeline,
        key: SigningKey,
        owners: KeyOwners,
        node_id: str,
        cfg: BatchesConfig,
        responses: Responses,
    ) -> None:
        self.nc, self.store, self.pipeline = nc, store, pipeline
        self.key, self.owners, self.node_id, self.cfg = key, owners, node_id, cfg
        self.responses = responses  # the adapter of a /v1/responses line
        self.lines = _Lines(store)
        self.audit = AuditReader(nc)

    async def run(self) -> None:
        """``cfg.workers`` pull loops and the re-queue loop, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._requeue_loop())
            for _ in range(self.cfg.workers):
                tg.create_task(self._loop())

    async def _requeue_loop(self) -> None:
        while True:
            try:
                await self.requeue(time.time())
            except (GatewayError, NatsError, TimeoutError, Conflict) as exc:
                log.warning("batches.requeue_retry", error=str(exc)[:200])
            await asyncio.sleep(self.cfg.requeue_every_s)

    async def requeue(self, now: float) -> int:
        """Queue the slices of every batch whose queueing broke off (at least
        ``requeue_every_s`` ago: its creator is not merely still at it). Returns how many."""
        count = 0
        for tenant, batch_id, at in await self.store.queueing():
            if now - at < self.cfg.requeue_every_s:
                continue
            got = await self.store.batch(tenant, batch_id)
            if got is None and now - at < 10 * self.cfg.requeue_every_s:
                continue  # no record (yet, or not yet verifiable here): look again later
            if got is not None and got[0]["batch"]["status"] not in TERMINAL:
                record = got[0]
                lines = await self.lines.of(record)
                if lines is None:
                    job = Job("slice", tenant, batch_id)
                    await self._give_up(job, "input_file_unreadable", "The input file is gone")
                else:
                    await queue_slices(self.nc, self.key, record, lines)
                    count += 1
                    log.warning("batches.requeued", batch_id=batch_id, slices=record["slices"])
            await self.store.queued(batch_id)  # none (never recorded), ended, or queued now
        return count

    async def _loop(self) -> None:
        sub = await self.nc.jetstream(timeout=5.0).pull_subscribe_bind(JOBS_CONSUMER, JOBS)
        try:
            while True:
                try:
                    msgs = await sub.fetch(1, timeout=2.0)
                except NatsTimeout:
                    continue
                except (NatsError, TimeoutError):
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    await self._handle(msg)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        job = parse_job(msg.subject, open_value(msg.data, msg.subject, self.owners))
        if job is None:
            log.warning("batches.job_refused", subject=msg.subject[:200])
            await msg.term()
            return
        try:
            async with self._alive(msg):
                done = await (self._slice(job) if job.kind == "slice" else self._finalize(job))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # stopping: give the job back now
                await asyncio.shield(msg.nak())
            raise
        except (GatewayError, NatsError, TimeoutError, Conflict) as exc:
            log.warning("batches.job_retry", subject=msg.subject, error=str(exc)[:200])
            done = False
        except Exception:  # the worker's one boundary: a bug fails this job, not the loop
            log.exception("batches.job_bug", subject=msg.subject)
            done = False
        if done:
            await msg.ack()
        elif msg.metadata.num_delivered >= self.cfg.max_deliver:  # the last try: say so
            await self._give_up(job, "job_gave_up", f"A {job.kind} job failed on every try")
            await msg.ack()
        else:
            await msg.nak(delay=1.0)

    async def _give_up(self, job: Job, code: str, message: str) -> None:
        """The batch fails with ``code`` (a job that cannot be done must not hang it)."""
        errors = with_errors([LineError(code, message)])
        with contextlib.suppress(GatewayError, NatsError, TimeoutError, Conflict):
            await self._move(job, "failed", int(time.time()), errors=errors)
        log.error("batches.failed", batch_id=job.batch_id, code=code)

    @contextlib.asynccontextmanager
    async def _alive(self, msg: Msg) -> Any:
        """``in_progress`` every third of AckWait while the job runs."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.cfg.ack_wait_s / 3)
                with contextlib.suppress(NatsError, TimeoutError):
                    await msg.in_progress()

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------ slices

    async def _slice(self, job: Job) -> bool:
        got = await self.store.batch(job.tenant, job.batch_id)
        if got is None:
            return False  # not visible yet (or gone): redelivered a bounded number of times
        record = got[0]
        if record["batch"]["status"] in TERMINAL:
            return True
        planned = await self.lines.planned(record)
        if planned is None:  # deleted, or not the bytes the batch was checked against
            await self._give_up(job, "input_file_unreadable", "The input file is gone or altered")
            return True
        lines, plan = planned
        claims = parse_claims(orjson.dumps(record["claims"]))
        p = Progress()
        for line in (lines[i] for i in plan.order[job.start : job.end]):
            r = await self.store.line_result(job.batch_id, line.index)
            if r is None:
                if await self._stopped(job):
                    break
                r = await self._run(record, claims, line)
            p = p.add(r.ok, r.tokens)
            await self.store.put_progress(job.batch_id, job.n, p)
        p = replace(p, finished=True)
        await self.store.put_progress(job.batch_id, job.n, p)
        progress = await self.store.progress(job.batch_id)
        if len(progress) >= record["slices"] and all(s.finished for s in progress.values()):
            fin = Job("finalize", job.tenant, job.batch_id)
            await publish_job(self.nc, self.key, fin)
        return True

    async def _stopped(self, job: Job) -> bool:
        got = await self.store.batch(job.tenant, job.batch_id)
        if got is None:
            return True
        batch = got[0]["batch"]
        return bool(batch["status"] != "in_progress" or time.time() >= batch["expires_at"])

    async def _run(self, record: dict[str, Any], claims: Claims, line: Line) -> Any:
        batch = record["batch"]
        r = await run_line(
            self.pipeline,
            batch["endpoint"],
            batch["id"],
            claims,
            line,
            self.node_id,
            self.cfg.rate_limit_retries,
            self.responses,
        )
        r = too_large(r, self.cfg.max_result_bytes)
        if await self.store.record_line(batch["id"], r):
            return r
        kept = await self.store.line_result(batch["id"], line.index)  # another node's, first
        return kept if kept is not None else r

    # ------------------------------------------------------------ finalize

    async def _finalize(self, job: Job) -> bool:
        got = await self.store.batch(job.tenant, job.batch_id)
        if got is None:
            return False
        record = got[0]
        batch = record["batch"]
        if batch["status"] in TERMINAL:
            return True
        progress = await self.store.progress(job.batch_id)
        if len(progress) < record["slices"] or not all(s.finished for s in progress.values()):
            return job.n == 1  # a cancel's early ask is dropped; the last slice asks again
        now = int(time.time())
        if batch["status"] == "in_progress":
            record = await self._move(job, "finalizing", now) or record
            batch = record["batch"]
        lines = await self.lines.of(record)
        if lines is None:
            await self._give_up(job, "input_file_unreadable", "The input file is gone or altered")
            return True
        results = await self.store.line_results(job.batch_id)
        expired = time.time() >= batch["expires_at"] and len(results) < len(lines)
        unrun = "cancelled" if batch["status"] == "cancelling" else "expired" if expired else None
        agg = aggregate(job.batch_id, batch["endpoint"], lines, results, unrun)
        usage = batch_usage(progress.values())
        problems = agg.problems or verify(
            lines, agg.output, agg.errors, results, None if unrun else usage
        )
        report: dict[str, Any] = {}
        if not problems:  # the last check: the lines' records in BH_AUDIT
            records = await self.audit.records(job.tenant, results)
            checked = check_records(
                job.batch_id, job.tenant, results, records, None if unrun else usage, self.owners
            )
            problems, report = checked.problems, checked.report()
            log.info("batches.audit_checked", batch_id=job.batch_id, **report)
        status = finished_status(batch["status"], expired, bool(problems))
        fields: dict[str, Any] = {
            "request_counts": {
                "total": len(lines),
                "completed": agg.completed,
                "failed": agg.failed,
            }
        }
        if problems:
            fields["errors"] = with_errors(problems)
        else:
            fields["usage"] = usage_field(usage)
            fields["output_file_id"] = await self._file(job, "output", agg.output)
            fields["error_file_id"] = await self._file(job, "error", agg.errors)
        await self._move(job, status, now, verification=report, **fields)
        log.info(
            "batches.finished", batch_id=job.batch_id, status=status, **fields["request_counts"]
        )
        return True

    async def _file(self, job: Job, kind: str, data: bytes) -> str | None:
        if not data:
            return None
        file_id = new_id("file-")
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": f"{job.batch_id}_{kind}.jsonl",
            "purpose": "batch_output",
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }
        await self.store.put_file(job.tenant, meta, data)
        return file_id

    async def _move(
        self,
        job: Job,
        status: str,
        now: int,
        verification: dict[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """``status`` (and ``fields``) on the Batch object; ``verification`` (what the
        finalizer checked) on the record beside it, not in the Batch object."""

        def change(record: dict[str, Any]) -> dict[str, Any] | None:
            if record["batch"]["status"] in TERMINAL:
                return None
            new = {**record, "batch": moved(record["batch"], status, now, **fields)}
            if verification:
                new["verification"] = verification
            return new

        return await self.store.update_batch(job.tenant, job.batch_id, change)


def batch_worker(
    nc: Client,
    pipeline: Pipeline,
    key: SigningKey,
    registry: NodeKeyRegistry,
    node_id: str,
    config: Config,
) -> BatchWorker:
    """A node's batch worker (``node.start_node``: one line there)."""
    store = BatchStore(lambda: nc, lambda: (key, registry))
    stored = ResponsesStore(
        lambda: nc, lambda: (key, registry), config.responses, config.nats.replicas
    )
    aliases = dict(config.aliases)

    def responses() -> ResponsesIngress:  # as ``POST /v1/responses`` makes it
        return ResponsesIngress(aliases, stored)

    return BatchWorker(nc, store, pipeline, key, registry, node_id, config.batches, responses)

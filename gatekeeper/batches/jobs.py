"""Job messages on BH_JOBS and queueing a batch's slices (signed, de-duplicated).

    slice job     bh.jobs.slice.<batch>      positions [start, end) of the batch's
                                             dispatch order (``batches.dispatch``)
    finalize job  bh.jobs.finalize.<batch>   verify, aggregate, mark the batch done

Every job carries the Msg-Id ``<batch>:<kind>:<n>``: the stream's duplicate window
(BH_JOBS, 10 minutes) drops a second copy, so queueing a batch twice (its creator
and a node recovering it) queues each slice once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nacl.signing import SigningKey
from nats.aio.client import Client

from gatekeeper.batches.dispatch import plan_of
from gatekeeper.batches.lines import Line
from gatekeeper.batches.signing import seal_value


@dataclass(frozen=True, slots=True)
class Job:
    kind: str  # slice | finalize
    tenant: str
    batch_id: str
    n: int = 0
    start: int = 0
    end: int = 0

    @property
    def subject(self) -> str:
        return f"bh.jobs.{self.kind}.{self.batch_id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tenant": self.tenant,
            "batch": self.batch_id,
            "n": self.n,
            "start": self.start,
            "end": self.end,
        }


def parse_job(subject: str, body: Any) -> Job | None:
    if not isinstance(body, dict):
        return None
    kind, tenant, batch = body.get("kind"), body.get("tenant"), body.get("batch")
    nums = [body.get(k) for k in ("n", "start", "end")]
    if kind not in ("slice", "finalize") or not isinstance(tenant, str):
        return None
    if not isinstance(batch, str) or any(type(v) is not int or v < 0 for v in nums):
        return None
    job = Job(kind, tenant, batch, *nums)  # type: ignore[arg-type]
    return job if job.subject == subject and job.start <= job.end else None


async def publish_job(nc: Client, key: SigningKey, job: Job) -> None:
    msg_id = f"{job.batch_id}:{job.kind}:{job.n}"
    data = seal_value(key, job.subject, job.to_dict())
    await nc.jetstream(timeout=5.0).publish(job.subject, data, headers={"Nats-Msg-Id": msg_id})


def slice_jobs(record: dict[str, Any], lines: Sequence[Line]) -> list[Job]:
    """The slice jobs of a batch record (the same list on every node, from its input)."""
    tenant, batch_id = record["tenant"], record["batch"]["id"]
    slices = plan_of(record, lines).slices
    return [Job("slice", tenant, batch_id, s.n, s.start, s.end) for s in slices]


async def queue_slices(
    nc: Client, key: SigningKey, record: dict[str, Any], lines: Sequence[Line]
) -> int:
    """Publish every slice job of the batch (a copy already queued is dropped)."""
    jobs = slice_jobs(record, lines)
    for job in jobs:
        await publish_job(nc, key, job)
    return len(jobs)

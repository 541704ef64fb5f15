"""A finished batch checked against its lines' audit records in BH_AUDIT.

Each line result names the audit record of its request (``AuditRef``: the serving
node, the record's chain ``seq`` and ``hash``, and the BH_AUDIT stream sequence
JetStream acknowledged it at). The finalizer reads exactly those records back and
checks, before anything is published, that each is genuine (its hash, and a signature
by its node's registered key), that it is the record of that line (the node, seq and
hash the result names, ``request_id`` ``<batch>:<index>``, the batch's tenant), that it
charged the tokens the line recorded, and that the batch's usage is their sum.

Reading is bounded by the batch, not by the stream: one get by stream sequence per
line. A record whose sequence is not known (it was spooled, or queued in async mode
past the wait) is found by a binary search over the stream on its node's subject for
the tenant (a node's records reach BH_AUDIT in chain order): about log2(stream length)
gets. A record not there yet (a spool still draining) is looked for again for up to
``WAIT_S``.

    check_records   the checks (pure)
    genuine         hash and signature of one record (pure)
    locate          the binary search (over a probe: pure)
    AuditReader     the reads (I/O)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from nacl.exceptions import BadSignatureError
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from gatekeeper.audit.chain import record_hash
from gatekeeper.auth.paseto import MalformedToken, b64decode
from gatekeeper.batches.lines import LineError
from gatekeeper.batches.results import LineResult
from gatekeeper.batches.signing import KeyOwners
from gatekeeper.bus.streams import AUDIT, audit_subject
from gatekeeper.exchange import AuditRef

WAIT_S = 10.0  # how long a record not yet in BH_AUDIT is looked for again
RETRY_S = 0.5
READS_AT_ONCE = 32

Record = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AuditCheck:
    """The verification report: how many records were read back, and the problems."""

    read: int
    usage: tuple[int, int]  # the sum of the records' tokens
    problems: tuple[LineError, ...]

    def report(self) -> dict[str, Any]:
        return {"audit_records": self.read, "audit_usage": list(self.usage)}


def genuine(record: Record, owners: KeyOwners) -> bool:
    """The record's hash is its content's, signed by its node's registered key."""
    kid, sig, node, digest = (record.get(k) for k in ("sig_kid", "sig", "node_id", "hash"))
    if not all(isinstance(v, str) for v in (kid, sig, node, digest)):
        return False
    owner = owners.owner_of(str(kid))
    if owner is None or owner[0] != node:
        return False
    try:
        if record_hash(record) != digest:
            return False
        owner[1].verify(bytes.fromhex(str(digest)), b64decode(str(sig)))
    except (BadSignatureError, MalformedToken, ValueError, TypeError):
        return False
    return True


def _tokens(record: Record) -> tuple[int, int]:
    p, c = record.get("prompt_tokens"), record.get("completion_tokens")
    return (p if type(p) is int else -1, c if type(c) is int else -1)


def check_records(
    batch_id: str,
    tenant: str,
    results: Mapping[int, LineResult],
    records: Mapping[int, Record | None],
    usage: tuple[int, int] | None,
    owners: KeyOwners,
) -> AuditCheck:
    """Each line's result against the record it names; ``usage`` (None: a batch whose
    slices stopped part way) against their sum.

    A result naming no record is allowed only for a request that never authenticated
    (a revoked key: counted in a failed-auth summary, not a record of its own), which
    is not a 200 and used no tokens.
    """
    problems: list[LineError] = []
    total_in = total_out = read = 0
    for index in sorted(results):
        r, n = results[index], index + 1
        ref = r.audit
        if ref is None:
            if r.ok or r.tokens != (0, 0):
                problems.append(LineError("audit_missing", "The result names no audit record", n))
            continue
        rec = records.get(index)
        if rec is None:
            problems.append(
                LineError("audit_missing", "The line's audit record is not in BH_AUDIT", n)
            )
            continue
        read += 1
        if not genuine(rec, owners) or (rec.get("node_id"), rec.get("seq"), rec.get("hash")) != (
            ref.node,
            ref.seq,
            ref.hash,
        ):
            problems.append(LineError("audit_mismatch", "The audit record is not the one named", n))
            continue
        if rec.get("request_id") != f"{batch_id}:{index}" or rec.get("tenant") != tenant:
            problems.append(LineError("audit_mismatch", "The audit record is another request's", n))
            continue
        tokens = _tokens(rec)
        if tokens != r.tokens:
            problems.append(
                LineError(
                    "audit_usage_mismatch",
                    f"The audit record charged {tokens}, the line recorded {r.tokens}",
                    n,
                )
            )
        total_in, total_out = total_in + max(tokens[0], 0), total_out + max(tokens[1], 0)
    if usage is not None and usage != (total_in, total_out):
        problems.append(
            LineError(
                "audit_usage_mismatch",
                f"The batch's usage {usage} is not the sum of its audit records' "
                f"{(total_in, total_out)}",
            )
        )
    return AuditCheck(read, (total_in, total_out), tuple(problems))


# (stream sequence, record) of the first message on a subject at or after a sequence
Probe = Callable[[int], Awaitable[tuple[int, Record] | None]]


async def locate(probe: Probe, lo: int, hi: int, chain_seq: int) -> Record | None:
    """The record with ``chain_seq`` among one subject's messages in ``[lo, hi]``, whose
    chain seqs grow with the stream sequence: a binary search, O(log(hi - lo)) probes."""
    while lo <= hi:
        mid = (lo + hi) // 2
        got = await probe(mid)
        if got is None:  # nothing on the subject from mid on
            hi = mid - 1
            continue
        at, record = got
        seq = record.get("seq")
        if type(seq) is not int:
            return None
        if seq == chain_seq:
            return record
        if seq < chain_seq:
            lo = at + 1
        else:  # the only message in [mid, at] is past it: it is before mid, if anywhere
            hi = mid - 1
    return None


class AuditReader:
    """Reads the audit records a batch's line results name (bounded, see the module)."""

    def __init__(self, nc: Client, wait_s: float = WAIT_S) -> None:
        self.js = nc.jetstream(timeout=5.0)
        self.wait_s = wait_s

    async def records(
        self, tenant: str, results: Mapping[int, LineResult]
    ) -> dict[int, Record | None]:
        refs = {i: r.audit for i, r in results.items() if r.audit is not None}
        found: dict[int, Record | None] = {i: None for i in refs}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        gate = asyncio.Semaphore(READS_AT_ONCE)

        async def one(i: int, ref: AuditRef, last: int) -> None:
            async with gate:
                found[i] = await self._read(tenant, ref, last)

        while True:
            missing = [i for i in refs if found[i] is None]
            if missing:
                last = (await self.js.stream_info(AUDIT)).state.last_seq
                await asyncio.gather(*(one(i, refs[i], last) for i in missing))
            if all(v is not None for v in found.values()) or loop.time() >= deadline:
                return found
            await asyncio.sleep(RETRY_S)

    async def _read(self, tenant: str, ref: AuditRef, last: int) -> Record | None:
        if ref.stream_seq is not None:
            got = await self._get(ref.stream_seq)
            return None if got is None else got[1]
        subject = audit_subject(tenant, ref.node)
        return await locate(lambda at: self._get(at, subject), 1, last, ref.seq)

    async def _get(self, seq: int, subject: str | None = None) -> tuple[int, Record] | None:
        try:
            if subject is None:
                msg = await self.js.get_msg(AUDIT, seq)
            else:
                msg = await self.js.get_msg(AUDIT, seq, subject=subject, next=True)
        except NotFoundError:
            return None
        except (NatsError, TimeoutError):
            return None  # looked for again until the wait ends, then ``audit_missing``
        try:
            record = orjson.loads(msg.data or b"")
        except orjson.JSONDecodeError:
            return None
        return (msg.seq or seq, record) if isinstance(record, dict) else None

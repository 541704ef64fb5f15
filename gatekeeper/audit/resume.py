"""Where a restarted node continues its chain — never after a record it did not sign.

Anyone who may publish on ``bh.audit.*.<node>`` could append a record with a correct
plain SHA-256 ``hash`` and a junk ``sig``; resuming after it would make it the
parent of every later genuine record, and ``deny_delete`` keeps it forever. So the
record a node resumes from must carry the node's own signature (checked with the
key the node had at the record's ``ts``). A record that fails is reported
(``foreign``) and skipped: the node walks back (at most ``RESUME_SCAN`` stream
messages) to its newest genuine record. The local checkpoint file is a floor: a
node never resumes below the last checkpoint it wrote, so a cut tail stays a gap
that ``audit verify`` reports instead of being overwritten by a fork.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from nacl.signing import SigningKey, VerifyKey
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from gatekeeper.audit.chain import AuditChain, record_hash
from gatekeeper.audit.checkpoint import Checkpoint
from gatekeeper.audit.keys import node_key, record_epoch, signature_problem
from gatekeeper.audit.spool import AuditSpool
from gatekeeper.bus.streams import AUDIT

__all__ = ["RESUME_SCAN", "ResumeRefused", "Resumed", "record_problem", "resume_chain"]

RESUME_SCAN = 10_000  # stream messages walked back past foreign records, at most

KeyAt = Callable[[float], VerifyKey | None]


class ResumeRefused(RuntimeError):
    """No genuine record of this node within reach: starting would fork its chain."""


@dataclass(slots=True)
class Resumed:
    chain: AuditChain
    source: str  # "spool", "stream", "checkpoint" or "genesis"
    foreign: list[tuple[int, str]] = field(default_factory=list)  # (stream seq, why)


def record_problem(record: object, node_id: str, key_at: KeyAt) -> str | None:
    """Why ``record`` is not a record this node signed (None: it is one)."""
    if not isinstance(record, Mapping) or record.get("node_id") != node_id:
        return "not a record of this node"
    seq, digest, sig, kid = (record.get(k) for k in ("seq", "hash", "sig", "sig_kid"))
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return "no valid seq"
    if not all(isinstance(v, str) for v in (digest, sig, kid)):
        return "no hash, sig or sig_kid"
    assert isinstance(digest, str) and isinstance(sig, str) and isinstance(kid, str)
    try:
        if record_hash(record) != digest:
            return "content does not match its hash"
    except (TypeError, ValueError):
        return "cannot be encoded"
    when = record_epoch(record.get("ts"))
    key = key_at(when) if when is not None else None
    if key is None:
        return "no key of this node for the record's ts"
    return signature_problem(digest, sig, kid, node_key(bytes(key)))


def _parse(data: bytes | None) -> Any:
    try:
        return orjson.loads(data or b"")
    except orjson.JSONDecodeError:
        return None


async def _last_genuine(
    js: JetStreamContext, node_id: str, key_at: KeyAt, foreign: list[tuple[int, str]]
) -> Mapping[str, Any] | None:
    """This node's newest record in BH_AUDIT that it signed; foreign ones noted."""
    subject = f"bh.audit.*.{node_id}"
    try:
        msg = await js.get_last_msg(AUDIT, subject)
    except NotFoundError:
        return None
    stream_seq, scanned = msg.seq or 0, 0
    while True:
        record = _parse(msg.data)
        problem = record_problem(record, node_id, key_at)
        if problem is None:
            return record  # type: ignore[no-any-return]
        foreign.append((stream_seq, problem))
        while True:  # the previous message on this node's subjects
            stream_seq -= 1
            scanned += 1
            if stream_seq < 1:
                return None
            if scanned > RESUME_SCAN:
                raise ResumeRefused(
                    f"no record signed by node {node_id} in the last {RESUME_SCAN} "
                    f"messages of {AUDIT} after {len(foreign)} foreign one(s)"
                )
            try:
                msg = await js.get_msg(AUDIT, stream_seq)
            except NotFoundError:
                continue
            if (msg.subject or "").startswith("bh.audit.") and (msg.subject or "").endswith(
                f".{node_id}"
            ):
                break


async def resume_chain(
    js: JetStreamContext,
    node_id: str,
    key: SigningKey,
    spool: AuditSpool,
    floor: Checkpoint | None,
    key_at: KeyAt,
) -> Resumed:
    """The chain after this node's newest genuine record: spool, stream or checkpoint."""
    last: Mapping[str, Any] | None = None
    for _, data in spool.pending():  # our own, not yet published: newer than the stream
        last = orjson.loads(data)
    if last is not None:
        return Resumed(AuditChain.resume(node_id, key, last), "spool")
    foreign: list[tuple[int, str]] = []
    found = await _last_genuine(js, node_id, key_at, foreign)
    if floor is not None and (found is None or found["seq"] < floor.seq):
        chain = AuditChain(node_id, key, floor.seq, floor.hash)
        return Resumed(chain, "checkpoint", foreign)
    if found is None:
        return Resumed(AuditChain(node_id, key), "genesis", foreign)
    return Resumed(AuditChain.resume(node_id, key, found), "stream", foreign)

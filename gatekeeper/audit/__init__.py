"""Step 8: the tamper-evident audit trail published to JetStream ``BH_AUDIT``.

* ``record``  — ``AuditRecord`` (one per request) and ``SealedRecord`` (the wire form)
* ``chain``   — each node's SHA-256 hash chain, Ed25519-signed (key file: ``auth.node_key``)
* ``verify``  — ``verify_records``: what an auditor runs over an export
* ``spool``   — ``AuditSpool``: a crash-safe local queue for when NATS is down

The record format is a public contract, documented in ``docs/audit.md``.
"""

from gatekeeper.audit.chain import (
    GENESIS,
    AuditChain,
    canonical_bytes,
    record_hash,
    wire_bytes,
)
from gatekeeper.audit.record import Attempt, AuditRecord, SealedRecord, rfc3339_ms
from gatekeeper.audit.spool import AuditSpool, SpoolError
from gatekeeper.audit.verify import (
    Issue,
    NodeSummary,
    UnreadableLine,
    VerifyReport,
    read_jsonl,
    verify_records,
)

__all__ = [
    "GENESIS",
    "Attempt",
    "AuditChain",
    "AuditRecord",
    "AuditSpool",
    "Issue",
    "NodeSummary",
    "SealedRecord",
    "SpoolError",
    "UnreadableLine",
    "VerifyReport",
    "canonical_bytes",
    "read_jsonl",
    "record_hash",
    "rfc3339_ms",
    "verify_records",
    "wire_bytes",
]

"""What a restarted node may resume from: only a record it signed itself."""

from __future__ import annotations

import json
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from gatekeeper.audit import AuditChain, AuditRecord, record_hash, rfc3339_ms, wire_bytes
from gatekeeper.audit.checkpoint import sign_checkpoint
from gatekeeper.audit.checkpointer import CheckpointLog
from gatekeeper.audit.resume import record_problem

KEY = SigningKey(b"\x05" * 32)


def last_record() -> dict[str, object]:
    rec = AuditRecord(
        request_id="r1",
        ts=rfc3339_ms(1_700_000_000.0),
        node_id="gk-a",
        tenant="acme",
        key_id="k",
        requested_model="m",
        served_model="m",
        provider="p",
        routing_mode="cost",
        route_reason="r",
        stream=False,
        status=200,
    )
    data: dict[str, object] = json.loads(wire_bytes(AuditChain("gk-a", KEY).seal(rec)))
    return data


def own(t: float) -> VerifyKey | None:
    return KEY.verify_key


def test_the_nodes_own_record_is_a_parent() -> None:
    assert record_problem(last_record(), "gk-a", own) is None


def test_a_correct_hash_with_a_junk_signature_is_not() -> None:
    fake = last_record() | {"request_id": "injected", "sig": "AAAA"}
    fake["hash"] = record_hash(fake)
    problem = record_problem(fake, "gk-a", own)
    assert problem == "signature does not verify with the node's key"


def test_a_record_signed_by_another_key_is_not() -> None:
    other = SigningKey.generate()
    forged = json.loads(
        wire_bytes(
            AuditChain("gk-a", other).seal(
                AuditRecord.from_dict(
                    {
                        k: v
                        for k, v in last_record().items()
                        if k not in ("seq", "prev", "sig_kid", "hash", "sig")
                    }
                )
            )
        )
    )
    assert "signed with key" in (record_problem(forged, "gk-a", own) or "")


def test_other_nodes_and_altered_records_are_not() -> None:
    assert record_problem(last_record(), "gk-b", own) == "not a record of this node"
    altered = last_record() | {"status": 500}
    assert record_problem(altered, "gk-a", own) == "content does not match its hash"
    assert record_problem(b"junk", "gk-a", own) == "not a record of this node"


def test_the_local_checkpoint_log_gives_its_highest_checkpoint(tmp_path: Path) -> None:
    log = CheckpointLog(tmp_path / "n" / "checkpoints.jsonl")
    assert log.newest() is None
    for seq in (3, 9, 7):
        log.append(sign_checkpoint(KEY, "gk-a", seq, f"{seq:064x}", 1.0 * seq))
    with open(log.path, "ab") as out:
        out.write(b"not json\n")  # a torn line is skipped
    newest = log.newest()
    assert newest is not None and newest.seq == 9
    assert (log.path.stat().st_mode & 0o777) == 0o600

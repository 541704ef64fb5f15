"""The ends of the trail: genesis, signed checkpoints, key history, the stream itself.

Pure verifier tests (no I/O): a chain cut at the head, the tail or in the middle
is reported by name once the node's checkpoints are given; a key change with
history keeps the genuine trail valid; a replaced key cannot make a forged chain
verify; a record injected with a junk signature never takes a genuine one's place.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from gatekeeper.audit import (
    AuditChain,
    AuditRecord,
    record_hash,
    rfc3339_ms,
    verify_records,
    wire_bytes,
)
from gatekeeper.audit.checkpoint import (
    checkpoint_problem,
    parse_checkpoint,
    sign_checkpoint,
)
from gatekeeper.audit.trail import StreamFacts
from gatekeeper.auth.paserk import encode_public, pid
from gatekeeper.control.envelope import seal
from gatekeeper.control.registry import NodeKeyRegistry, node_key_kv_key, registration_body

T0 = 1_700_000_000.0
OPERATOR = SigningKey(b"\x07" * 32)
OPERATORS = {pid(bytes(OPERATOR.verify_key)): OPERATOR.verify_key}


def record(n: int, node: str, at: float | None = None) -> AuditRecord:
    return AuditRecord(
        request_id=f"req_{node}_{n}",
        ts=rfc3339_ms(at if at is not None else T0 + n),
        node_id=node,
        tenant="acme",
        key_id="key_1",
        requested_model="auto",
        served_model="m",
        provider="p",
        routing_mode="cost",
        route_reason="r",
        stream=False,
        status=200,
    )


def chain_of(node: str, key: SigningKey, count: int, start: int = 1) -> list[dict[str, Any]]:
    chain = AuditChain(node, key)
    return [json.loads(wire_bytes(chain.seal(record(n, node)))) for n in range(start, count + 1)]


KEYS = {node: SigningKey(bytes([i + 1]) * 32) for i, node in enumerate(("gk-a", "gk-b"))}
PUBLIC = {node: bytes(key.verify_key) for node, key in KEYS.items()}


def trail(count: int = 10) -> tuple[list[dict[str, Any]], list[Any]]:
    """Two nodes' interleaved records, and each node's checkpoint at its last record."""
    a, b = chain_of("gk-a", KEYS["gk-a"], count), chain_of("gk-b", KEYS["gk-b"], count)
    records = [r for pair in zip(a, b, strict=True) for r in pair]
    cps = [
        sign_checkpoint(KEYS[node], node, recs[-1]["seq"], recs[-1]["hash"], T0 + 100)
        for node, recs in (("gk-a", a), ("gk-b", b))
    ]
    return records, cps


def strict(records: list[Any], cps: list[Any], **kw: Any) -> Any:
    return verify_records(records, PUBLIC, require_genesis=True, checkpoints=cps, **kw)


class TestCheckpoints:
    def test_round_trip_and_signature(self) -> None:
        cp = sign_checkpoint(KEYS["gk-a"], "gk-a", 3, "ab" * 32, T0)
        again = parse_checkpoint(cp.to_bytes())
        assert again == cp and again.count == 3
        assert checkpoint_problem(again, KEYS["gk-a"].verify_key) is None

    def test_a_checkpoint_signed_by_another_key_is_refused(self) -> None:
        cp = sign_checkpoint(SigningKey.generate(), "gk-a", 3, "ab" * 32, T0)
        assert "signed with key" in (checkpoint_problem(cp, KEYS["gk-a"].verify_key) or "")

    def test_an_altered_checkpoint_is_refused(self) -> None:
        data = json.loads(sign_checkpoint(KEYS["gk-a"], "gk-a", 9, "ab" * 32, T0).to_bytes())
        data["seq"] = data["count"] = 3  # "the chain was only 3 long"
        problem = checkpoint_problem(parse_checkpoint(data), KEYS["gk-a"].verify_key)
        assert problem == "signature does not verify with the node's key"

    def test_a_forged_checkpoint_is_reported_and_not_used(self) -> None:
        records, cps = trail()
        forged = sign_checkpoint(SigningKey.generate(), "gk-a", 50, "cd" * 32, T0 + 200)
        report = strict(records, [*cps, forged])
        assert report.kinds == {"bad_checkpoint"}


class TestEnds:
    def test_an_intact_trail_with_checkpoints_verifies(self) -> None:
        records, cps = trail()
        assert strict(records, cps).ok

    def test_a_cut_head_is_named(self) -> None:
        records, cps = trail()
        cut = [r for r in records if not (r["node_id"] == "gk-a" and r["seq"] <= 2)]
        report = strict(cut, cps)
        assert report.kinds == {"cut_head"}
        assert "missing seq 1..2" in report.render()

    def test_a_cut_tail_is_named(self) -> None:
        records, cps = trail()
        cut = [r for r in records if not (r["node_id"] == "gk-b" and r["seq"] >= 8)]
        report = strict(cut, cps)
        assert report.kinds == {"cut_tail"}
        assert "seq 8..10 missing" in report.render()

    def test_first_and_last_removed_is_both(self) -> None:
        records, cps = trail()
        assert strict(records[1:-1], cps).kinds == {"cut_head", "cut_tail"}

    def test_a_missing_node_is_named(self) -> None:
        records, cps = trail()
        report = strict([r for r in records if r["node_id"] != "gk-a"], cps)
        assert report.kinds == {"missing_node"}
        assert report.issues[0].node_id == "gk-a"

    def test_from_checkpoint_accepts_a_start_the_checkpoint_anchors(self) -> None:
        records, _ = trail()
        a = [r for r in records if r["node_id"] == "gk-a"]
        anchor = sign_checkpoint(KEYS["gk-a"], "gk-a", 4, a[3]["hash"], T0 + 4.5)
        later = [r for r in a if r["seq"] > 4]
        assert strict(later, [anchor], from_checkpoint=True).ok
        assert strict(later, [anchor]).kinds == {"cut_head"}  # strict: genesis or nothing
        unanchored = [r for r in a if r["seq"] > 6]
        assert strict(unanchored, [anchor], from_checkpoint=True).kinds == {"cut_head"}

    def test_a_checkpoint_naming_another_hash_is_a_mismatch(self) -> None:
        records, cps = trail()
        a3 = next(r for r in records if r["node_id"] == "gk-a" and r["seq"] == 3)
        fork = sign_checkpoint(KEYS["gk-a"], "gk-a", 3, "ef" * 32, T0 + 3.5)
        assert a3["hash"] != fork.hash
        assert strict(records, [*cps, fork]).kinds == {"checkpoint_mismatch"}


class TestStream:
    def test_a_shrunk_stream_is_named(self) -> None:
        report = verify_records([], PUBLIC, streams=[StreamFacts("BH_AUDIT", 34, 38, 5)])
        assert report.kinds == {"shrunk_stream"}
        assert "first_seq is 34" in report.render()

    def test_messages_deleted_inside_are_named(self) -> None:
        report = verify_records([], PUBLIC, streams=[StreamFacts("BH_AUDIT", 1, 10, 8)])
        assert report.kinds == {"shrunk_stream"} and "2 message(s)" in report.render()

    def test_a_retention_change_is_named(self) -> None:
        facts = StreamFacts("BH_AUDIT", 1, 3, 3, ("max_msgs: is 5, needs unlimited",))
        report = verify_records([], PUBLIC, streams=[facts])
        assert report.kinds == {"stream_config"} and "max_msgs" in report.render()


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=12),
    node=st.sampled_from(("gk-a", "gk-b")),
    data=st.data(),
)
def test_any_contiguous_deletion_from_any_chain_is_detected(
    count: int, node: str, data: st.DataObject
) -> None:
    """Property: removing seq i..j (head, middle or tail) of one node is never OK."""
    records, cps = trail(count)
    first = data.draw(st.integers(min_value=1, max_value=count), label="first")
    last = data.draw(st.integers(min_value=first, max_value=count), label="last")
    cut = [r for r in records if not (r["node_id"] == node and first <= r["seq"] <= last)]
    report = strict(cut, cps)
    assert not report.ok
    assert report.kinds <= {"cut_head", "cut_tail", "gap", "missing_node"}


class TestKeyHistory:
    """Keys from the pinned registry: the key a node had at each record's time."""

    @staticmethod
    def registry(*keys: tuple[SigningKey, float]) -> NodeKeyRegistry:
        registry = NodeKeyRegistry(OPERATORS)
        signer = OPERATOR
        for n, (key, valid_from) in enumerate(keys, start=1):
            kv_key = node_key_kv_key("gk-a", n)
            pub = encode_public(bytes(key.verify_key))
            body = registration_body("gk-a", n, pub, valid_from)
            registry.add(kv_key, seal(signer, kv_key, body, valid_from))
            signer = key  # the next rotation is signed by this (old) key
        return registry

    def test_a_legitimate_key_change_keeps_the_genuine_trail_valid(self) -> None:
        old, new = SigningKey.generate(), SigningKey.generate()
        before = AuditChain("gk-a", old)
        recs = [json.loads(wire_bytes(before.seal(record(n, "gk-a")))) for n in (1, 2, 3)]
        seq, digest = before.state()
        after = AuditChain("gk-a", new, seq, digest)  # restarted with a new key at T0 + 10
        recs += [json.loads(wire_bytes(after.seal(record(n, "gk-a")))) for n in (11, 12)]
        registry = self.registry((old, T0 - 100), (new, T0 + 10))
        assert verify_records(recs, registry, require_genesis=True).ok
        only_new = {"gk-a": bytes(new.verify_key)}  # what "latest key only" did
        assert verify_records(recs, only_new).kinds == {"bad_signature"}

    def test_a_replaced_key_cannot_make_a_forged_chain_verify(self) -> None:
        genuine = SigningKey.generate()
        forger = SigningKey.generate()
        forged = chain_of("gk-a", forger, 3)
        registry = self.registry((genuine, T0 - 100))
        report = verify_records(forged, registry, require_genesis=True)
        assert report.kinds == {"bad_signature"} and len(report.issues) == 3
        # and a later key does not vouch for records from before its valid_from
        registry = self.registry((genuine, T0 - 100), (forger, T0 + 50))
        assert verify_records(forged, registry).kinds == {"bad_signature"}


def test_an_injected_record_never_takes_a_genuine_records_place() -> None:
    """sig "AAAA" with a correct hash at seq 4, then the node's genuine seq 4, 5."""
    key = KEYS["gk-a"]
    genuine = chain_of("gk-a", key, 5)
    injected = dict(genuine[3]) | {"request_id": "forged", "sig": "AAAA"}
    injected["hash"] = record_hash(injected)
    report = verify_records([*genuine[:3], injected, *genuine[3:]], PUBLIC, require_genesis=True)
    assert report.kinds == {"bad_signature"}
    assert report.issues[0].request_id == "forged"

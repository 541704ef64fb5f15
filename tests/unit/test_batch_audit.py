"""A finished batch against its lines' audit records (the pure part of batches.audited)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nacl.signing import SigningKey, VerifyKey

from gatekeeper.audit import AuditChain, AuditRecord, wire_bytes
from gatekeeper.auth.paserk import pid
from gatekeeper.batches.audited import check_records, genuine, locate
from gatekeeper.batches.results import LineResult
from gatekeeper.bus.acks import ack_stream_seq
from gatekeeper.exchange import AuditRef

BATCH = "batch_0123"
NODE = "gk-a-w0"


class Owners:
    def __init__(self, *pairs: tuple[str, SigningKey]) -> None:
        self.keys = {pid(bytes(k.verify_key)): (node, k.verify_key) for node, k in pairs}

    def owner_of(self, kid: str) -> tuple[str, VerifyKey] | None:
        return self.keys.get(kid)


KEY = SigningKey.generate()
OWNERS = Owners((NODE, KEY))


def record(chain: AuditChain, index: int, tokens: tuple[int, int], **over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": f"{BATCH}:{index}",
        "ts": "2025-01-31T12:34:56.789Z",
        "node_id": chain.node_id,
        "tenant": "acme",
        "key_id": "key_1",
        "requested_model": "gpt-4o-mini",
        "served_model": "gpt-4o-mini",
        "provider": "openai",
        "routing_mode": "cost",
        "route_reason": "named",
        "stream": False,
        "status": 200,
        "prompt_tokens": tokens[0],
        "completion_tokens": tokens[1],
        "total_tokens": sum(tokens),
        "cost_usd": 0.0,
        "latency_ms": 1.0,
        "ttft_ms": None,
        "attempts": (),
        **over,
    }
    out: dict[str, Any] = json.loads(wire_bytes(chain.seal(AuditRecord(**fields))))
    return out


def result(index: int, rec: dict[str, Any] | None, tokens: tuple[int, int]) -> LineResult:
    ref = None if rec is None else AuditRef(rec["node_id"], rec["seq"], rec["hash"], index + 1)
    body = {"object": "chat.completion", "choices": []}
    return LineResult(index, f"c{index}", 200, f"{BATCH}:{index}", body, NODE, tokens, ref)


def batch(n: int = 3) -> tuple[dict[int, LineResult], dict[int, Any]]:
    chain = AuditChain(NODE, KEY)
    records = {i: record(chain, i, (10 + i, 5)) for i in range(n)}
    results = {i: result(i, records[i], (10 + i, 5)) for i in range(n)}
    return results, records


def codes(check: Any) -> list[tuple[str, int | None]]:
    return [(p.code, p.line) for p in check.problems]


class TestCheckRecords:
    def test_a_batch_whose_records_agree_passes_and_counts_what_it_read(self) -> None:
        results, records = batch()
        check = check_records(BATCH, "acme", results, records, (33, 15), OWNERS)
        assert check.problems == () and check.read == 3 and check.usage == (33, 15)
        assert check.report() == {"audit_records": 3, "audit_usage": [33, 15]}

    def test_a_record_missing_from_the_stream_fails_its_line(self) -> None:
        results, records = batch()
        del records[1]
        check = check_records(BATCH, "acme", results, records, (33, 15), OWNERS)
        assert codes(check) == [("audit_missing", 2), ("audit_usage_mismatch", None)]

    def test_a_result_naming_no_record_is_missing_unless_it_never_authenticated(self) -> None:
        """A revoked key's 401 has no record of its own (a failed-auth summary counts
        it) and used nothing: allowed. A 200, or tokens, with no record: missing."""
        results, records = batch(1)
        denied = {"error": {"code": "invalid_api_key"}}
        results[1] = LineResult(1, "c1", 401, f"{BATCH}:1", denied, NODE)
        assert check_records(BATCH, "acme", results, records, (10, 5), OWNERS).problems == ()
        results[2] = LineResult(2, "c2", 200, f"{BATCH}:2", {}, NODE, (0, 0))
        results[3] = LineResult(3, "c3", 500, f"{BATCH}:3", denied, NODE, (4, 0))
        check = check_records(BATCH, "acme", results, records, None, OWNERS)
        assert codes(check) == [("audit_missing", 3), ("audit_missing", 4)]

    def test_a_record_that_charged_other_tokens_fails_the_line_and_the_sum(self) -> None:
        chain = AuditChain(NODE, KEY)
        rec = record(chain, 0, (10, 9))  # genuine, but it charged 9 output tokens
        results = {0: result(0, rec, (10, 5))}
        check = check_records(BATCH, "acme", results, {0: rec}, (10, 5), OWNERS)
        assert codes(check) == [("audit_usage_mismatch", 1), ("audit_usage_mismatch", None)]
        assert "charged (10, 9)" in check.problems[0].message

    def test_the_batch_usage_must_be_the_records_sum(self) -> None:
        """The slices' sum (what the workers recorded) against the records' sum; a
        cancelled or expired batch (usage None) checks each line only."""
        results, records = batch()
        check = check_records(BATCH, "acme", results, records, (34, 15), OWNERS)
        assert codes(check) == [("audit_usage_mismatch", None)]
        assert check_records(BATCH, "acme", results, records, None, OWNERS).problems == ()

    def test_another_requests_record_or_a_forgery_is_a_mismatch(self) -> None:
        """The record at the named place must be the one named (node, seq, hash), be
        signed by its node's registered key, and be this line's (request id, tenant)."""
        chain = AuditChain(NODE, KEY)
        other_line = record(chain, 5, (10, 5))
        other_tenant = record(chain, 0, (10, 5), tenant="globex")
        forger = AuditChain(NODE, SigningKey.generate())  # same node id, unregistered key
        forged = record(forger, 0, (10, 5))
        edited = {**record(chain, 0, (1, 5)), "prompt_tokens": 10}  # hash no longer matches
        own = record(chain, 0, (10, 5))
        cases = [
            (result(0, other_line, (10, 5)), other_line),  # names it, but it is line 5's
            (result(0, other_tenant, (10, 5)), other_tenant),
            (result(0, forged, (10, 5)), forged),
            (result(0, edited, (10, 5)), edited),
            (result(0, own, (10, 5)), {**own, "seq": own["seq"]} | {"hash": other_line["hash"]}),
        ]
        for r, rec in cases:
            check = check_records(BATCH, "acme", {0: r}, {0: rec}, (10, 5), OWNERS)
            assert codes(check)[0] == ("audit_mismatch", 1), rec


class TestGenuine:
    def test_only_the_nodes_registered_key_over_the_content(self) -> None:
        rec = record(AuditChain(NODE, KEY), 0, (1, 1))
        assert genuine(rec, OWNERS)
        assert not genuine({**rec, "status": 500}, OWNERS)
        assert not genuine({**rec, "sig": "x"}, OWNERS)
        assert not genuine(rec, Owners(("gk-b-w0", KEY)))  # the key is another node's
        assert not genuine({**rec, "hash": 5}, OWNERS)


class TestLocate:
    def stream(self) -> list[tuple[int, dict[str, Any]]]:
        """Stream seq 1..40; the node's records on the subject at every third message,
        chain seqs 7, 8, 9, … (other subjects' messages in between)."""
        return [(at, {"seq": 7 + k}) for k, at in enumerate(range(2, 41, 3))]

    def probe(self, on_subject: list[tuple[int, dict[str, Any]]], calls: list[int]) -> Any:
        async def probe(at: int) -> tuple[int, dict[str, Any]] | None:
            calls.append(at)
            return next(((s, r) for s, r in on_subject if s >= at), None)

        return probe

    def test_each_record_is_found_in_log_probes_and_an_absent_one_is_none(self) -> None:
        on_subject = self.stream()
        for _, rec in on_subject:
            calls: list[int] = []
            got = asyncio.run(locate(self.probe(on_subject, calls), 1, 40, rec["seq"]))
            assert got == rec and len(calls) <= 7
        for absent in (1, 6, 99):
            assert asyncio.run(locate(self.probe(on_subject, []), 1, 40, absent)) is None
        assert asyncio.run(locate(self.probe([], []), 1, 0, 7)) is None  # an empty stream


def test_a_line_result_keeps_its_audit_reference_and_refuses_a_bad_one() -> None:
    results, _ = batch(1)
    r = results[0]
    assert LineResult.from_dict(r.to_dict()) == r
    assert LineResult.from_dict({**r.to_dict(), "audit": {"node": NODE, "seq": 0}}) is None
    spooled = {**r.to_dict(), "audit": {**r.to_dict()["audit"], "stream_seq": None}}
    got = LineResult.from_dict(spooled)
    assert got is not None and got.audit is not None and got.audit.stream_seq is None


def test_the_stream_sequence_is_read_from_a_jetstream_ack() -> None:
    assert ack_stream_seq(b'{"stream":"BH_AUDIT","seq":42}') == 42
    assert ack_stream_seq(b'{"stream":"BH_AUDIT","seq":7,"duplicate":true}') == 7
    assert ack_stream_seq(b'{"stream":"BH_AUDIT","domain":"x","seq":1234567}') == 1234567
    assert ack_stream_seq(b'{"stream":"BH_AUDIT"}') == 0

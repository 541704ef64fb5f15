"""The verifier: an untouched export passes; every kind of tampering is named."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from gatekeeper.audit import (
    AuditChain,
    AuditRecord,
    Issue,
    VerifyReport,
    read_jsonl,
    record_hash,
    rfc3339_ms,
    verify_records,
    wire_bytes,
)
from gatekeeper.auth.paseto import b64encode

NODES = ("gk-a", "gk-b", "gk-c")


def make_record(n: int, node_id: str) -> AuditRecord:
    return AuditRecord(
        request_id=f"req_{n:04d}",
        ts=rfc3339_ms(1_700_000_000 + n / 10),
        node_id=node_id,
        tenant="acme",
        key_id="key_0123456789abcdef",
        requested_model="auto",
        served_model="llama-3.1-8b",
        provider="groq",
        routing_mode="cost",
        route_reason="simple prompt",
        stream=False,
        status=200,
        prompt_tokens=10 + n,
        completion_tokens=20,
        total_tokens=30 + n,
        cost_usd=1e-05 * n,
        latency_ms=100.0 + n,
    )


@dataclass
class Export:
    """~50 records of 3 interleaved nodes, as an auditor would download them."""

    records: list[dict[str, Any]]
    keys: dict[str, bytes]
    signing_keys: dict[str, SigningKey]

    def of(self, node_id: str) -> list[int]:
        """Positions (indexes into records) of one node's records, in seq order."""
        return [i for i, r in enumerate(self.records) if r["node_id"] == node_id]

    def write(self, path: Path, records: list[Any] | None = None) -> Path:
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records or self.records]
        path.write_text("\n".join(lines) + "\n")
        return path


@pytest.fixture
def export() -> Export:
    signing_keys = {node: SigningKey.generate() for node in NODES}
    chains = {node: AuditChain(node, signing_keys[node]) for node in NODES}
    pick = random.Random(7)
    records = []
    for n in range(50):
        node = pick.choice(NODES)
        records.append(json.loads(wire_bytes(chains[node].seal(make_record(n, node)))))
    keys = {node: bytes(key.verify_key) for node, key in signing_keys.items()}
    return Export(records, keys, signing_keys)


def verify(records: list[Any], keys: dict[str, bytes], **options: Any) -> VerifyReport:
    return verify_records(records, keys, **options)


def reseal(record: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """What a forger with some Ed25519 key can do: fix the hash, sign it again."""
    digest = record_hash(record)
    return record | {"hash": digest, "sig": b64encode(key.sign(bytes.fromhex(digest)).signature)}


class TestUntouchedExport:
    def test_verifies_ok_from_a_jsonl_file(self, export: Export, tmp_path: Path) -> None:
        """Every node's chain checks out; the report counts each node's records."""
        report = verify_records(read_jsonl(export.write(tmp_path / "audit.jsonl")), export.keys)
        assert report.ok, report.render()
        assert report.records == 50
        assert {n.node_id: n.count for n in report.nodes} == {
            node: len(export.of(node)) for node in NODES
        }
        assert all(n.first_seq == 1 and n.last_seq == n.count for n in report.nodes)

    def test_interleaving_of_nodes_does_not_matter(self, export: Export) -> None:
        """Grouping the stream by node (or any other interleaving) is still fine."""
        grouped = sorted(export.records, key=lambda r: (r["node_id"], r["seq"]))
        assert verify(grouped, export.keys).ok

    def test_an_export_may_start_mid_chain(self, export: Export) -> None:
        """Without require_genesis, a node's first record need not be seq 1."""
        later = [r for r in export.records if r["seq"] > 3]
        assert verify(later, export.keys).ok
        strict = verify(later, export.keys, require_genesis=True)
        assert strict.kinds == {"cut_head"} and len(strict.issues) == len(NODES)


class TestTampering:
    def test_an_altered_field_is_a_bad_hash(self, export: Export) -> None:
        """Changing what a request cost breaks that record's hash."""
        target = export.of("gk-a")[4]
        export.records[target] = export.records[target] | {"cost_usd": 0.0}
        report = verify(export.records, export.keys)
        assert report.kinds == {"bad_hash"}
        assert (report.issues[0].node_id, report.issues[0].seq) == ("gk-a", 5)

    def test_a_dropped_record_is_a_gap(self, export: Export) -> None:
        """Deleting a record leaves its seq missing from the node's chain."""
        del export.records[export.of("gk-b")[3]]
        report = verify(export.records, export.keys)
        assert report.kinds == {"gap"}
        assert report.issues[0].detail == "missing seq 4"

    def test_two_swapped_records_of_one_node_are_out_of_order(self, export: Export) -> None:
        """A node's records must appear in seq order; the swap is reported once."""
        first, second = export.of("gk-c")[2:4]
        records = export.records
        records[first], records[second] = records[second], records[first]
        report = verify(records, export.keys)
        assert report.kinds == {"out_of_order"}
        assert len(report.issues) == 1 and report.issues[0].seq == 3

    def test_order_checking_can_be_turned_off(self, export: Export) -> None:
        """seq and prev still prove the order, so a reordering stream can be verified."""
        first, second = export.of("gk-c")[2:4]
        records = export.records
        records[first], records[second] = records[second], records[first]
        assert verify(records, export.keys, check_order=False).ok

    def test_a_duplicated_record_is_a_duplicate(self, export: Export) -> None:
        """The same record twice (a replay, or an attempt to double-count) is named."""
        export.records.append(dict(export.records[export.of("gk-a")[2]]))
        report = verify(export.records, export.keys)
        assert report.kinds == {"duplicate"}
        assert "identical copy" in report.issues[0].detail

    def test_a_reused_request_id_is_two_requests_not_tampering(self, export: Export) -> None:
        """Clients choose x-request-id: a properly chained second record for it is fine."""
        chain = AuditChain("gk-a", export.signing_keys["gk-a"], *_last_state(export, "gk-a"))
        again = chain.seal(make_record(0, "gk-a"))  # request id req_0000 again
        report = verify([*export.records, json.loads(wire_bytes(again))], export.keys)
        assert report.ok, report.render()

    def test_a_fork_is_a_duplicate_with_different_content(self, export: Export) -> None:
        """A node that resumed from stale state signs a second, different seq."""
        stale = AuditChain("gk-b", export.signing_keys["gk-b"])
        fork = stale.seal(make_record(999, "gk-b"))
        report = verify([*export.records, json.loads(wire_bytes(fork))], export.keys)
        assert report.kinds == {"duplicate"}
        assert "fork" in report.issues[0].detail

    def test_a_signature_forged_with_another_key_is_bad_signature(self, export: Export) -> None:
        """Altering a record and re-signing it with any other key is caught."""
        target = export.of("gk-a")[-1]
        altered = export.records[target] | {"cost_usd": 0.0}
        export.records[target] = reseal(altered, SigningKey.generate())
        report = verify(export.records, export.keys)
        assert report.kinds == {"bad_signature"}

    def test_a_forged_record_mid_chain_also_breaks_the_next_link(self, export: Export) -> None:
        """The forged record's new hash no longer matches its successor's prev."""
        target = export.of("gk-a")[4]
        export.records[target] = reseal(
            export.records[target] | {"status": 500}, SigningKey.generate()
        )
        report = verify(export.records, export.keys)
        assert report.kinds == {"bad_signature", "broken_link"}
        assert [i.seq for i in report.issues] == [5, 6]

    def test_a_forger_naming_their_own_key_is_told_apart(self, export: Export) -> None:
        """A sig_kid that is not the node's key is reported as a bad signature, by name."""
        forger = SigningKey.generate()
        target = export.of("gk-c")[-1]
        fake_kid = AuditChain("gk-c", forger).key_id
        export.records[target] = reseal(export.records[target] | {"sig_kid": fake_kid}, forger)
        report = verify(export.records, export.keys)
        assert report.kinds == {"bad_signature"}
        assert fake_kid in report.issues[0].detail

    def test_a_truncated_tail_shows_once_a_later_record_is_present(self, export: Export) -> None:
        """Cutting a node's last records hides nothing once the node's next record arrives."""
        positions = export.of("gk-b")
        kept_last = export.records[positions[-1]]
        cut = set(positions[-4:])
        truncated = [r for i, r in enumerate(export.records) if i not in cut] + [kept_last]
        report = verify(truncated, export.keys)
        assert report.kinds == {"gap"}
        last = kept_last["seq"]
        assert report.issues[0].detail == f"missing seq {last - 3}..{last - 1}"

    def test_a_truncated_tail_alone_leaves_no_trace(self, export: Export) -> None:
        """The limit of any hash chain: the newest records can vanish without a gap."""
        cut = set(export.of("gk-b")[-2:])
        assert verify([r for i, r in enumerate(export.records) if i not in cut], export.keys).ok


class TestKeysAndInput:
    def test_a_node_without_a_public_key_is_reported_once(self, export: Export) -> None:
        """Its hashes and links are still checked; its signatures cannot be."""
        keys = {node: key for node, key in export.keys.items() if node != "gk-c"}
        report = verify(export.records, keys)
        assert report.kinds == {"unknown_node_key"}
        assert len(report.issues) == 1 and report.issues[0].node_id == "gk-c"

    def test_a_public_key_of_the_wrong_size_is_the_callers_error(self, export: Export) -> None:
        """Keys are raw 32-byte Ed25519 keys (decode k4.public text first)."""
        with pytest.raises(ValueError, match="gk-a"):
            verify(export.records, export.keys | {"gk-a": b"short"})

    def test_a_line_that_is_not_json_is_reported_not_raised(
        self, export: Export, tmp_path: Path
    ) -> None:
        """Blank lines are skipped; a garbled line is a malformed issue with its line number."""
        lines: list[Any] = [*export.records[:10], "", "{not json", *export.records[10:]]
        report = verify_records(read_jsonl(export.write(tmp_path / "a.jsonl", lines)), export.keys)
        assert report.kinds == {"malformed"}
        assert "line 12" in report.issues[0].detail
        assert report.records == 51

    def test_a_record_without_chain_fields_is_malformed(self, export: Export) -> None:
        """Missing seq, a non-object, or no node id: malformed, and the rest is verified."""
        target = export.of("gk-a")[-1]
        without_seq = {k: v for k, v in export.records[target].items() if k != "seq"}
        export.records[target] = without_seq
        report = verify([*export.records, [1, 2], {"seq": 1}], export.keys)
        assert report.kinds == {"malformed"}
        assert len(report.issues) == 3


class TestRender:
    def test_ok_report(self, export: Export) -> None:
        """One headline and one line per node."""
        text = verify(export.records, export.keys).render()
        assert text.splitlines()[0].startswith("audit verification: OK — 50 records, 3 nodes")
        assert "node gk-a:" in text and "seq 1.." in text

    def test_failed_report_lists_each_issue(self, export: Export) -> None:
        """Each issue line names its kind, node, seq and place in the export."""
        target = export.of("gk-b")[1]
        export.records[target] = export.records[target] | {"tenant": "someone-else"}
        text = verify(export.records, export.keys).render()
        assert "FAILED, 1 issue(s)" in text
        assert f"bad_hash         node gk-b, seq 2, request req_{target:04d}" in text
        assert f"record #{target + 1}" in text

    def test_issue_without_a_place(self) -> None:
        """An issue with no node or seq still renders."""
        assert Issue("malformed", "line 3 is not JSON").render().endswith(": line 3 is not JSON")


def _last_state(export: Export, node_id: str) -> tuple[int, str]:
    last = export.records[export.of(node_id)[-1]]
    return last["seq"], last["hash"]

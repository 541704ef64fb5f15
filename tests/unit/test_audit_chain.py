"""The audit record, its canonical encoding, each node's signed hash chain, node keys."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gatekeeper.audit import (
    GENESIS,
    Attempt,
    AuditChain,
    AuditRecord,
    SealedRecord,
    canonical_bytes,
    record_hash,
    rfc3339_ms,
    verify_records,
    wire_bytes,
)
from gatekeeper.audit.record import MAX_TEXT
from gatekeeper.auth.node_key import NodeKeyError, load_or_create_node_key, node_public_key_text
from gatekeeper.auth.paserk import decode_public, pid
from gatekeeper.auth.paseto import b64decode

DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit.md"

WIRE_FIELDS = {
    "v", "request_id", "ts", "node_id", "tenant", "key_id", "requested_model",
    "served_model", "provider", "routing_mode", "route_reason", "stream", "status",
    "error_code", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd",
    "latency_ms", "ttft_ms", "attempts", "usage_source", "client_api", "upstream_wire",
    "seq", "prev", "sig_kid",
    "hash", "sig",
}  # fmt: skip


def make_record(n: int = 1, node_id: str = "gk-1", **changes: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "request_id": f"req_{node_id}_{n}",
        "ts": rfc3339_ms(1_700_000_000 + n),
        "node_id": node_id,
        "tenant": "acme",
        "key_id": "key_0123456789abcdef",
        "requested_model": "auto",
        "served_model": "gpt-4o-mini",
        "provider": "openai",
        "routing_mode": "cost",
        "route_reason": "simple prompt",
        "stream": n % 2 == 0,
        "status": 200,
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "total_tokens": 46,
        "cost_usd": 8e-05 * n,
        "latency_ms": 812.5,
        "ttft_ms": 120.25,
        "attempts": (
            Attempt("groq", "llama-3.1-8b", 503, "upstream_unavailable", 30.1),
            Attempt("openai", "gpt-4o-mini", 200, None, 780.0),
        ),
    }
    fields.update(changes)
    return AuditRecord(**fields)


def parsed(sealed: SealedRecord) -> dict[str, Any]:
    """The record as an audit consumer sees it after reading the message."""
    result: dict[str, Any] = json.loads(wire_bytes(sealed))
    return result


class TestAuditRecord:
    def test_wire_form_has_exactly_the_documented_fields(self) -> None:
        """The record is a public contract: these fields, and no room for text or keys."""
        sealed = AuditChain("gk-1", SigningKey.generate()).seal(make_record())
        assert set(sealed.to_dict()) == WIRE_FIELDS
        assert set(sealed.to_dict()["attempts"][0]) == {
            "provider",
            "model",
            "status",
            "error",
            "ms",
        }

    def test_every_field_is_documented(self) -> None:
        """docs/audit.md has a table row for every wire field."""
        documented = set(re.findall(r"^\| `(\w+)`", DOCS.read_text(), flags=re.MULTILINE))
        assert documented >= WIRE_FIELDS

    def test_round_trips_through_its_dict(self) -> None:
        """from_dict(to_dict()) gives back the same record, sealed or not."""
        record = make_record(error_code="upstream_timeout", ttft_ms=None, status=504)
        assert AuditRecord.from_dict(record.to_dict()) == record
        sealed = AuditChain("gk-1", SigningKey.generate()).seal(record)
        assert SealedRecord.from_dict(parsed(sealed)) == sealed

    def test_from_dict_rejects_unknown_fields(self) -> None:
        """A field the schema does not have (say, a prompt) is refused, not carried along."""
        data = make_record().to_dict() | {"prompt": "tell me a secret"}
        with pytest.raises(ValueError, match="unknown fields"):
            AuditRecord.from_dict(data)

    def test_from_dict_rejects_other_versions_and_wrong_types(self) -> None:
        """Only schema v1 is read, and each field must have its documented type."""
        with pytest.raises(ValueError, match="version"):
            AuditRecord.from_dict(make_record().to_dict() | {"v": 2})
        with pytest.raises(ValueError, match="status"):
            AuditRecord.from_dict(make_record().to_dict() | {"status": "200"})
        with pytest.raises(ValueError, match="stream"):
            AuditRecord.from_dict(make_record().to_dict() | {"stream": 1})

    def test_client_chosen_text_is_cut_and_made_encodable(self) -> None:
        """A huge or invalid requested model cannot bloat or break the record."""
        record = make_record(requested_model="x" * 10_000, route_reason="bad \ud800 text")
        assert len(record.requested_model) == MAX_TEXT
        assert record.route_reason == "bad ? text"
        assert canonical_bytes(record.to_dict())

    def test_float_fields_are_always_floats(self) -> None:
        """An int cost becomes 0.0, so the canonical form never depends on the caller."""
        record = make_record(cost_usd=0, latency_ms=5)
        assert record.cost_usd == 0.0 and isinstance(record.cost_usd, float)
        assert b'"cost_usd":0.0' in canonical_bytes(record.to_dict())

    def test_non_finite_numbers_are_refused(self) -> None:
        """NaN has no canonical JSON form."""
        with pytest.raises(ValueError, match="latency_ms"):
            make_record(latency_ms=float("nan"))

    def test_timestamps_are_rfc3339_utc_with_milliseconds(self) -> None:
        """``ts`` looks like 2023-11-14T22:13:20.123Z."""
        assert rfc3339_ms(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"
        assert rfc3339_ms(1_700_000_000) == "2023-11-14T22:13:20.000Z"


class TestCanonicalBytes:
    def test_is_the_stdlib_json_an_auditor_would_write(self) -> None:
        """Sorted keys, no whitespace, raw UTF-8; hash and sig left out."""
        sealed = AuditChain("gk-1", SigningKey.generate()).seal(make_record(tenant="café"))
        record = parsed(sealed)
        body = {k: v for k, v in record.items() if k not in ("hash", "sig")}
        expected = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert canonical_bytes(record) == expected.encode("utf-8")
        assert "café".encode() in canonical_bytes(record)

    def test_floats_use_python_repr(self) -> None:
        """Small costs keep their exponent form, integral floats keep their .0."""
        encoded = canonical_bytes({"cost_usd": 8e-05, "ms": 780.0, "big": 1e16})
        assert encoded == b'{"big":1e+16,"cost_usd":8e-05,"ms":780.0}'

    def test_hash_is_sha256_hex_of_the_canonical_bytes(self) -> None:
        """record_hash is plain SHA-256 in lowercase hex."""
        record = {"b": 1, "a": "x", "hash": "ignored", "sig": "ignored"}
        assert record_hash(record) == hashlib.sha256(b'{"a":"x","b":1}').hexdigest()

    def test_wire_bytes_are_canonical_too(self) -> None:
        """The published message is the same canonical JSON, hash and sig included."""
        sealed = AuditChain("gk-1", SigningKey.generate()).seal(make_record())
        expected = json.dumps(sealed.to_dict(), sort_keys=True, separators=(",", ":"))
        assert wire_bytes(sealed) == expected.encode("utf-8")


class TestAuditChain:
    def test_first_record_starts_the_chain(self) -> None:
        """seq 1, prev is GENESIS (64 zeros)."""
        sealed = AuditChain("gk-1", SigningKey.generate()).seal(make_record())
        assert (sealed.seq, sealed.prev) == (1, GENESIS)

    def test_each_record_links_to_the_previous_hash(self) -> None:
        """prev of record n is hash of record n-1; seq counts up by one."""
        chain = AuditChain("gk-1", SigningKey.generate())
        first, second, third = (chain.seal(make_record(n)) for n in (1, 2, 3))
        assert [first.seq, second.seq, third.seq] == [1, 2, 3]
        assert second.prev == first.hash and third.prev == second.hash

    def test_hash_covers_the_record_and_its_chain_fields(self) -> None:
        """hash is record_hash of everything but hash and sig, seq and prev included."""
        sealed = AuditChain("gk-1", SigningKey.generate()).seal(make_record())
        assert sealed.hash == record_hash(parsed(sealed))
        assert sealed.hash != record_hash(parsed(sealed) | {"seq": 2})

    def test_signature_is_ed25519_over_the_raw_hash(self) -> None:
        """Any pynacl user can check sig with the node's public key; sig_kid is its pid."""
        key = SigningKey.generate()
        sealed = AuditChain("gk-1", key).seal(make_record())
        VerifyKey(bytes(key.verify_key)).verify(bytes.fromhex(sealed.hash), b64decode(sealed.sig))
        assert sealed.sig_kid == pid(bytes(key.verify_key))
        with pytest.raises(BadSignatureError):
            VerifyKey(bytes(SigningKey.generate().verify_key)).verify(
                bytes.fromhex(sealed.hash), b64decode(sealed.sig)
            )

    def test_state_lets_a_restarted_node_continue(self) -> None:
        """A chain built from state() picks up at the next seq, linked to the last hash."""
        key = SigningKey.generate()
        chain = AuditChain("gk-1", key)
        last = [chain.seal(make_record(n)) for n in (1, 2)][-1]
        assert chain.state() == (2, last.hash)
        following = AuditChain("gk-1", key, *chain.state()).seal(make_record(3))
        assert (following.seq, following.prev) == (3, last.hash)

    def test_resume_from_the_last_published_record(self) -> None:
        """resume() takes the node's newest record as read back from BH_AUDIT."""
        key = SigningKey.generate()
        last = AuditChain("gk-1", key).seal(make_record())
        resumed = AuditChain.resume("gk-1", key, parsed(last))
        assert resumed.state() == (1, last.hash)
        assert AuditChain.resume("gk-1", key, None).state() == (0, GENESIS)

    def test_resume_refuses_an_altered_or_foreign_record(self) -> None:
        """A chain never continues from a record it cannot trust."""
        key = SigningKey.generate()
        last = parsed(AuditChain("gk-1", key).seal(make_record()))
        with pytest.raises(ValueError, match="hash"):
            AuditChain.resume("gk-1", key, last | {"cost_usd": 0.0})
        with pytest.raises(ValueError, match="another node"):
            AuditChain.resume("gk-2", key, last)

    def test_refuses_a_record_of_another_node(self) -> None:
        """node_id in the record must be the chain's node."""
        with pytest.raises(ValueError, match="gk-2"):
            AuditChain("gk-1", SigningKey.generate()).seal(make_record(node_id="gk-2"))

    def test_concurrent_seals_still_form_one_chain(self) -> None:
        """seal() holds a lock: threads get distinct seqs and an unbroken chain."""
        key = SigningKey.generate()
        chain = AuditChain("gk-1", key)
        sealed: list[SealedRecord] = []

        def worker(offset: int) -> None:
            for n in range(50):
                sealed.append(chain.seal(make_record(offset + n)))

        threads = [threading.Thread(target=worker, args=(i * 1000,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        in_order = sorted(sealed, key=lambda s: s.seq)
        assert [s.seq for s in in_order] == list(range(1, 201))
        report = verify_records([parsed(s) for s in in_order], {"gk-1": bytes(key.verify_key)})
        assert report.ok, report.render()


class TestNodeKey:
    def test_created_once_with_mode_0600(self, tmp_path: Path) -> None:
        """The first call writes a k4.secret file only the owner can read; later calls load it."""
        path = tmp_path / "keys" / "node.key"
        key = load_or_create_node_key(path)
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_text().startswith("k4.secret.")
        assert bytes(load_or_create_node_key(path)) == bytes(key)
        assert [p.name for p in path.parent.iterdir()] == ["node.key"]

    def test_refuses_a_key_file_others_can_read(self, tmp_path: Path) -> None:
        """Like ssh, a group- or world-readable key is an error, not a warning."""
        path = tmp_path / "node.key"
        load_or_create_node_key(path)
        os.chmod(path, 0o640)
        with pytest.raises(NodeKeyError, match="chmod 600"):
            load_or_create_node_key(path)

    def test_refuses_a_file_that_is_not_a_key(self, tmp_path: Path) -> None:
        """Garbage in the key file is reported with the path."""
        path = tmp_path / "node.key"
        path.write_text("not a key\n")
        os.chmod(path, 0o600)
        with pytest.raises(NodeKeyError, match=r"node\.key"):
            load_or_create_node_key(path)

    def test_public_key_text_is_a_k4_public_paserk(self) -> None:
        """What auditors get decodes to the node's raw Ed25519 public key."""
        key = SigningKey.generate()
        text = node_public_key_text(key)
        assert text.startswith("k4.public.")
        assert decode_public(text) == bytes(key.verify_key)


class TestDocumentedSnippet:
    def _verify_node(self) -> Any:
        text = DOCS.read_text()
        code = text.split("<!-- snippet: verify_node -->", 1)[1].split("```python", 1)[1]
        namespace: dict[str, Any] = {}
        exec(code.split("```", 1)[0], namespace)
        return namespace["verify_node"]

    def _export(self, tmp_path: Path, records: list[dict[str, Any]]) -> Path:
        path = tmp_path / "export.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return path

    def test_the_auditor_snippet_in_the_docs_verifies_a_real_export(self, tmp_path: Path) -> None:
        """docs/audit.md's stdlib + pynacl snippet accepts what the gateway publishes."""
        key = SigningKey.generate()
        chains = {node: AuditChain(node, key) for node in ("gk-1", "gk-2")}
        records = [parsed(chains[node].seal(make_record(n, node))) for n in range(6)
                   for node in chains]  # fmt: skip
        verify_node = self._verify_node()
        path = self._export(tmp_path, records)
        assert verify_node(path, "gk-1", node_public_key_text(key)) == 6

    def test_the_auditor_snippet_catches_tampering(self, tmp_path: Path) -> None:
        """The same snippet rejects an altered and a missing record."""
        key = SigningKey.generate()
        chain = AuditChain("gk-1", key)
        records = [parsed(chain.seal(make_record(n))) for n in range(4)]
        verify_node = self._verify_node()
        altered = [*records[:2], records[2] | {"cost_usd": 0.0}, records[3]]
        with pytest.raises(ValueError, match="altered"):
            verify_node(self._export(tmp_path, altered), "gk-1", node_public_key_text(key))
        dropped = [records[0], records[2], records[3]]
        with pytest.raises(ValueError, match="missing"):
            verify_node(self._export(tmp_path, dropped), "gk-1", node_public_key_text(key))


class TestSealWire:
    def test_spliced_wire_bytes_equal_a_fresh_encoding(self) -> None:
        """The publisher's one-encode wire bytes are byte for byte ``wire_bytes``."""
        chain = AuditChain("gk-1", SigningKey.generate())
        hostile = 'x","key_id":"forged\\",\\"sig_kid\\":"'  # key-like text in a value
        records = (
            make_record(),
            make_record(error_code=hostile),  # sorts before key_id: the splice must skip it
            make_record(tenant="café", requested_model=hostile),
        )
        for record in records:
            sealed, wire = chain.seal_wire(record)
            assert wire == wire_bytes(sealed)


_finite = st.floats(allow_nan=False, allow_infinity=False)


class TestFastEncoding:
    @settings(max_examples=400, deadline=None)
    @given(
        text=st.text(max_size=40),
        numbers=st.tuples(_finite, _finite, st.none() | _finite, _finite),
        tokens=st.integers(min_value=0, max_value=2**70),
    )
    def test_sealed_bytes_are_exactly_the_standard_library_encoding(
        self, text: str, numbers: tuple[float, float, float | None, float], tokens: int
    ) -> None:
        """orjson with repr-written floats = ``json.dumps(sort_keys=True, …)``, byte for
        byte, whatever the strings, float magnitudes or integer sizes (the fallback)."""
        cost, latency, ttft, attempt_ms = numbers
        record = make_record(
            tenant=text,
            requested_model=text[::-1],
            prompt_tokens=tokens,
            cost_usd=cost,
            latency_ms=latency,
            ttft_ms=ttft,
            attempts=(Attempt("p", text, None, None, attempt_ms),),
        )
        sealed, wire = AuditChain("gk-1", SigningKey.generate()).seal_wire(record)
        assert sealed.hash == hashlib.sha256(canonical_bytes(sealed.to_dict())).hexdigest()
        assert wire == wire_bytes(sealed)

"""Failed-auth requests are counted per client and reason, within a hard bound."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from gatekeeper.audit import AuditChain, wire_bytes
from gatekeeper.audit.anonymous import OTHER, AnonymousTally, summary_record
from gatekeeper.bus.streams import (
    audit_subject,
    check_node_id,
    desired_streams,
    retention_differences,
)
from gatekeeper.subjects import tenant_token


class TestTally:
    def test_counts_per_client_and_reason(self) -> None:
        tally = AnonymousTally(max_clients=10, since=0.0)
        for _ in range(3):
            tally.count("10.0.0.1", "invalid_api_key")
        tally.count("10.0.0.2", "missing_api_key")
        since, counts, total = tally.take(60.0)
        assert (since, total) == (0.0, 4)
        assert [(c.client, c.reason, c.count) for c in counts] == [
            ("10.0.0.1", "invalid_api_key", 3),
            ("10.0.0.2", "missing_api_key", 1),
        ]
        assert tally.take(120.0)[2] == 0  # the next interval starts empty

    def test_two_thousand_clients_cost_one_bounded_record(self) -> None:
        """2,000 tokenless requests from 2,000 addresses: one record, at most 11 entries."""
        tally = AnonymousTally(max_clients=10, since=0.0)
        for i in range(2000):
            tally.count(f"10.0.{i // 256}.{i % 256}", "invalid_api_key")
        since, counts, total = tally.take(60.0)
        assert total == 2000 and len(counts) == 11
        assert counts[0].client == OTHER and counts[0].count == 1990
        rec = summary_record("gk-1", since, 60.0, counts, total)
        data = wire_bytes(AuditChain("gk-1", SigningKey.generate()).seal(rec))
        assert len(data) < 2500
        assert json.loads(data)["anonymous"][0] == {
            "client": OTHER,
            "reason": OTHER,
            "count": 1990,
        }

    @given(st.lists(st.tuples(st.text(max_size=300), st.text(max_size=300)), max_size=300))
    def test_the_bound_holds_for_any_input(self, requests: list[tuple[str, str]]) -> None:
        tally = AnonymousTally(max_clients=5, since=0.0)
        for client, reason in requests:
            tally.count(client, reason)
        _, counts, total = tally.take(1.0)
        assert len(counts) <= 6 and total == len(requests) == sum(c.count for c in counts)


class TestSubjects:
    def test_tenants_that_used_to_collide_no_longer_do(self) -> None:
        assert audit_subject("a.b", "gk-1") != audit_subject("a_b", "gk-1")
        assert audit_subject("acme", "gk-1") == "bh.audit.acme.gk-1"

    @given(st.text(max_size=200), st.text(max_size=200))
    def test_the_tenant_token_is_injective_and_one_token(self, a: str, b: str) -> None:
        ta, tb = tenant_token(a), tenant_token(b)
        assert (ta == tb) == (a == b) or ta.startswith("__")  # long names: SHA-256 prefix
        for token in (ta, tb):
            assert token and len(token) <= 128
            assert all(c.isascii() and (c.isalnum() or c in "_-") for c in token)

    def test_node_ids_are_used_verbatim_or_refused(self) -> None:
        assert check_node_id("gk_a-1") == "gk_a-1"
        for bad in ("", "a.b", "a*", "x" * 65, "a b"):
            try:
                check_node_id(bad)
            except ValueError:
                continue
            raise AssertionError(f"{bad!r} accepted")


class TestRetention:
    def test_as_provisioned_is_no_difference(self) -> None:
        audit = desired_streams(1)[0]
        assert retention_differences(audit, audit) == []

    def test_each_lowered_limit_is_named(self) -> None:
        audit = desired_streams(1)[0]
        lowered = desired_streams(1)[0]
        lowered.max_msgs, lowered.max_bytes, lowered.max_age = 5, 1024, 60.0
        found = " ".join(retention_differences(lowered, audit))
        for name in ("max_msgs", "max_bytes", "max_age"):
            assert name in found

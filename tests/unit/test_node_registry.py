"""The node key registry: operator-signed registrations, rotations, history over time."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from gatekeeper.auth.paserk import encode_public, pid
from gatekeeper.control.envelope import ControlValueRejected, seal
from gatekeeper.control.registry import (
    NodeKeyRegistry,
    node_key_kv_key,
    parse_node_key_kv_key,
    registration_body,
)

OPERATOR = SigningKey(b"\x01" * 32)
ATTACKER = SigningKey(b"\x02" * 32)
OPERATORS = {pid(bytes(OPERATOR.verify_key)): OPERATOR.verify_key}
K1, K2, K3 = (SigningKey(bytes([10 + i]) * 32) for i in range(3))


def _pub(key: SigningKey) -> str:
    return encode_public(bytes(key.verify_key))


def registration(
    node: str, n: int, key: SigningKey, valid_from: float, signer: SigningKey = OPERATOR
) -> tuple[str, bytes]:
    kv_key = node_key_kv_key(node, n)
    body = registration_body(node, n, _pub(key), valid_from)
    return kv_key, seal(signer, kv_key, body, valid_from)


def _reason(registry: NodeKeyRegistry, kv_key: str, value: bytes) -> str:
    with pytest.raises(ControlValueRejected) as info:
        registry.add(kv_key, value)
    return info.value.reason


class TestKvKeys:
    def test_round_trip(self) -> None:
        assert parse_node_key_kv_key(node_key_kv_key("node-a_1", 12)) == ("node-a_1", 12)

    @pytest.mark.parametrize(
        "kv_key",
        [
            "nodes.a.key.0",
            "nodes.a.key.01",
            "nodes.a.key.x",
            "nodes.a.b.key.1",
            "nodes.a.audit_key",
            "nodes..key.1",
            "nodes." + "a" * 65 + ".key.1",
            "issuers.a.key.1",
        ],
    )
    def test_not_registry_keys(self, kv_key: str) -> None:
        assert parse_node_key_kv_key(kv_key) is None
        assert _reason(NodeKeyRegistry(OPERATORS), kv_key, b"{}") == "bad_key"


class TestRegistration:
    def test_operator_signed_first_entry(self) -> None:
        """Entry 1 signed by an operator key makes the node known with that key."""
        reg = NodeKeyRegistry(OPERATORS)
        entry = reg.add(*registration("a", 1, K1, 100.0))
        assert reg.nodes() == frozenset({"a"})
        assert reg.current("a") == K1.verify_key
        assert entry.pub == _pub(K1) and entry.n == 1
        assert reg.owner_of(pid(bytes(K1.verify_key))) == ("a", K1.verify_key)
        assert reg.is_current("a", entry.kid)

    def test_first_entry_self_signed_is_refused(self) -> None:
        """A node cannot register itself with its own key (nor the attacker with theirs)."""
        reg = NodeKeyRegistry(OPERATORS)
        assert _reason(reg, *registration("a", 1, K1, 1.0, signer=K1)) == "unknown_kid"
        assert _reason(reg, *registration("a", 1, ATTACKER, 1.0, signer=ATTACKER)) == "unknown_kid"
        assert reg.nodes() == frozenset()

    def test_echo_of_the_same_value_is_a_no_op(self) -> None:
        reg = NodeKeyRegistry(OPERATORS)
        kv_key, value = registration("a", 1, K1, 1.0)
        assert reg.add(kv_key, value) == reg.add(kv_key, value)
        assert len(reg.history("a")) == 1

    def test_conflicting_value_for_a_held_entry(self) -> None:
        """A second, different value for an entry already held never replaces it."""
        reg = NodeKeyRegistry(OPERATORS)
        reg.add(*registration("a", 1, K1, 1.0))
        assert _reason(reg, *registration("a", 1, K2, 2.0)) == "conflict"
        assert reg.current("a") == K1.verify_key

    def test_gap(self) -> None:
        reg = NodeKeyRegistry(OPERATORS)
        assert _reason(reg, *registration("a", 2, K2, 2.0)) == "gap"

    def test_body_must_match_the_kv_key(self) -> None:
        reg = NodeKeyRegistry(OPERATORS)
        kv_key = node_key_kv_key("a", 1)
        for body in (
            registration_body("b", 1, _pub(K1), 1.0),
            registration_body("a", 2, _pub(K1), 1.0),
            {**registration_body("a", 1, _pub(K1), 1.0), "n": True},
            {**registration_body("a", 1, _pub(K1), 1.0), "pub": "k4.secret.xx"},
            {**registration_body("a", 1, _pub(K1), 1.0), "pub": 5},
            {**registration_body("a", 1, _pub(K1), 1.0), "valid_from": "soon"},
            {**registration_body("a", 1, _pub(K1), 1.0), "extra": 1},
            ["a", 1],
        ):
            assert _reason(reg, kv_key, seal(OPERATOR, kv_key, body, 1.0)) == "bad_body"

    def test_value_replayed_under_another_key(self) -> None:
        """Node a's genuine registration copied to node b's slot is refused."""
        reg = NodeKeyRegistry(OPERATORS)
        _, value = registration("a", 1, K1, 1.0)
        assert _reason(reg, node_key_kv_key("b", 1), value) == "key_mismatch"
        assert reg.nodes() == frozenset()

    def test_one_key_cannot_speak_for_two_nodes(self) -> None:
        reg = NodeKeyRegistry(OPERATORS)
        reg.add(*registration("a", 1, K1, 1.0))
        assert _reason(reg, *registration("b", 1, K1, 1.0)) == "conflict"

    def test_malformed_values(self) -> None:
        reg = NodeKeyRegistry(OPERATORS)
        kv_key = node_key_kv_key("a", 1)
        assert _reason(reg, kv_key, b"k4.public.AAAA") == "not_json"
        assert _reason(reg, kv_key, orjson.dumps({"pub": _pub(K1)})) == "wrong_shape"
        assert _reason(reg, kv_key, b"x" * 70000) == "oversized"


class TestRotation:
    def test_rotation_signed_by_the_old_key(self) -> None:
        """Entry n+1 signed by entry n's key (the node rotates itself)."""
        reg = NodeKeyRegistry(OPERATORS)
        reg.add(*registration("a", 1, K1, 100.0))
        entry = reg.add(*registration("a", 2, K2, 200.0, signer=K1))
        assert entry.signer_kid == pid(bytes(K1.verify_key))
        assert reg.current("a") == K2.verify_key
        assert reg.owner_of(pid(bytes(K1.verify_key))) == ("a", K1.verify_key)
        assert not reg.is_current("a", pid(bytes(K1.verify_key)))

    def test_rotation_signed_by_the_operator(self) -> None:
        reg = NodeKeyRegistry(OPERATORS)
        reg.add(*registration("a", 1, K1, 100.0))
        reg.add(*registration("a", 2, K2, 200.0))
        assert [e.n for e in reg.history("a")] == [1, 2]

    def test_chain_of_rotations(self) -> None:
        reg = NodeKeyRegistry(OPERATORS)
        reg.add(*registration("a", 1, K1, 100.0))
        reg.add(*registration("a", 2, K2, 200.0, signer=K1))
        reg.add(*registration("a", 3, K3, 300.0, signer=K2))
        assert reg.current("a") == K3.verify_key

    def test_rotation_signed_by_an_older_key_is_refused(self) -> None:
        """Only the immediately previous key may sign: an old (maybe leaked) key cannot."""
        reg = NodeKeyRegistry(OPERATORS)
        reg.add(*registration("a", 1, K1, 100.0))
        reg.add(*registration("a", 2, K2, 200.0, signer=K1))
        assert _reason(reg, *registration("a", 3, K3, 300.0, signer=K1)) == "unknown_kid"

    def test_rotation_signed_by_another_node_is_refused(self) -> None:
        reg = NodeKeyRegistry(OPERATORS)
        reg.add(*registration("a", 1, K1, 100.0))
        reg.add(*registration("b", 1, K2, 100.0))
        assert _reason(reg, *registration("a", 2, K3, 200.0, signer=K2)) == "unknown_kid"

    @pytest.mark.parametrize("later", [100.0, 50.0])
    def test_valid_from_must_increase(self, later: float) -> None:
        reg = NodeKeyRegistry(OPERATORS)
        reg.add(*registration("a", 1, K1, 100.0))
        assert _reason(reg, *registration("a", 2, K2, later, signer=K1)) == "bad_body"

    def test_add_all_orders_entries(self) -> None:
        """Entries read in any order (a KV listing) are applied in registry order."""
        items = [
            registration("a", 3, K3, 300.0, signer=K2),
            registration("b", 1, SigningKey(b"\x30" * 32), 5.0),
            registration("a", 1, K1, 100.0),
            registration("a", 2, K2, 200.0, signer=K1),
            ("nodes.a.key.9", b"junk"),
        ]
        reg = NodeKeyRegistry(OPERATORS)
        rejected = reg.add_all(items)
        assert [k for k, _ in rejected] == ["nodes.a.key.9"]
        assert reg.current("a") == K3.verify_key
        assert reg.nodes() == frozenset({"a", "b"})


class TestKeyAt:
    def _registry(self) -> NodeKeyRegistry:
        reg = NodeKeyRegistry(OPERATORS)
        reg.add(*registration("a", 1, K1, 100.0))
        reg.add(*registration("a", 2, K2, 200.0, signer=K1))
        reg.add(*registration("a", 3, K3, 300.0, signer=K2))
        return reg

    @pytest.mark.parametrize(
        ("t", "expected"),
        [(99.9, None), (100.0, K1), (150.0, K1), (200.0, K2), (299.0, K2), (300.0, K3), (1e12, K3)],
    )
    def test_key_in_force_at_t(self, t: float, expected: SigningKey | None) -> None:
        got = self._registry().key_at("a", t)
        assert got == (expected.verify_key if expected else None)

    def test_unknown_node(self) -> None:
        reg = self._registry()
        assert reg.key_at("b", 1e12) is None
        assert reg.current("b") is None
        assert reg.history("b") == ()

    @given(st.lists(st.floats(0, 1e10), min_size=1, max_size=6, unique=True), st.floats(0, 1e10))
    def test_key_at_is_the_latest_start_at_or_before_t(self, starts: list[float], t: float) -> None:
        starts.sort()
        keys = [SigningKey(bytes([40 + i]) * 32) for i in range(len(starts))]
        reg = NodeKeyRegistry(OPERATORS)
        for n, (start, key) in enumerate(zip(starts, keys, strict=True), 1):
            reg.add(*registration("a", n, key, start))
        before = [k for s, k in zip(starts, keys, strict=True) if s <= t]
        assert reg.key_at("a", t) == (before[-1].verify_key if before else None)

"""BH_CONFIG values a node applies: only operator-signed ones, never partially, never undone
by a bare delete, never rolled back by a replay."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from nacl.signing import SigningKey

from gatekeeper.auth.paserk import encode_public, pid
from gatekeeper.auth.verifier import Keyring, RevocationList
from gatekeeper.bus.config_watch import LiveConfig
from gatekeeper.control.envelope import seal
from gatekeeper.control.registry import NodeKeyRegistry, node_key_kv_key, registration_body
from gatekeeper.control.reporting import Rejections
from gatekeeper.control.values import (
    MATRIX_KEY,
    issuer_key,
    revocation_key,
    signed_issuer,
    signed_matrix,
    signed_revocation,
    signed_tombstone,
)
from gatekeeper.routing.matrix import Matrix

OPERATOR = SigningKey(b"\x01" * 32)
ATTACKER = SigningKey(b"\x02" * 32)
ISSUER = SigningKey(b"\x03" * 32)
ISSUER_PUB = encode_public(bytes(ISSUER.verify_key))
OPERATORS = {pid(bytes(OPERATOR.verify_key)): OPERATOR.verify_key}


def model(name: str = "m", price: float = 0.001) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "p",
        "upstream": name,
        "kind": "chat",
        "input_per_1k": price,
        "output_per_1k": price,
        "context_window": 1000,
        "max_output_tokens": 100,
        "capabilities": [],
        "quality": {},
    }


class Node:
    def __init__(self) -> None:
        self.matrices: list[Matrix] = []
        self.restored: list[tuple[str, bytes]] = []
        self.registered: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.rejections = Rejections(self.events.append, clock=lambda: 0.0)
        self.live = LiveConfig(
            Keyring(),
            RevocationList(),
            self.matrices.append,
            frozenset({"p"}),
            operators=OPERATORS,
            registry=NodeKeyRegistry(OPERATORS),
            rejections=self.rejections,
            on_node_key=self.registered.append,
            restore=lambda key, value: self.restored.append((key, value)),
        )

    def reasons(self) -> list[str]:
        return [str(e["reason"]) for e in self.events]


class TestIssuers:
    def test_signed_issuer_is_trusted_and_tombstone_removes_it(self) -> None:
        node = Node()
        node.live.apply(issuer_key(ISSUER_PUB), signed_issuer(OPERATOR, ISSUER_PUB, 1.0))
        kid = pid(bytes(ISSUER.verify_key))
        assert kid in node.live.keyring
        key = issuer_key(ISSUER_PUB)
        node.live.apply(key, signed_tombstone(OPERATOR, key, 2.0))
        assert kid not in node.live.keyring

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            (ISSUER_PUB.encode(), "not_json"),
            (signed_issuer(ATTACKER, ISSUER_PUB, 1.0), "unknown_kid"),
        ],
    )
    def test_forged_issuer(self, value: bytes, reason: str) -> None:
        node = Node()
        node.live.apply(issuer_key(ISSUER_PUB), value)
        assert len(node.live.keyring) == 0
        assert node.reasons() == [reason]

    def test_signed_pub_under_another_kid(self) -> None:
        """A genuine body for key X stored (and signed) under issuers.Y is refused."""
        node = Node()
        other = "issuers.k4.pid.other"
        node.live.apply(other, seal(OPERATOR, other, {"pub": ISSUER_PUB}, 1.0))
        assert len(node.live.keyring) == 0 and node.reasons() == ["bad_body"]

    def test_bare_delete_keeps_trust_and_restores(self) -> None:
        node = Node()
        key, value = issuer_key(ISSUER_PUB), signed_issuer(OPERATOR, ISSUER_PUB, 1.0)
        node.live.apply(key, value)
        node.live.apply(key, None)
        assert pid(bytes(ISSUER.verify_key)) in node.live.keyring
        assert node.restored == [(key, value)]
        assert node.reasons() == ["unsigned_delete"]


class TestRevocations:
    KEY = revocation_key("key_1")

    def test_signed_revocation_and_signed_unrevoke(self) -> None:
        node = Node()
        node.live.apply(self.KEY, signed_revocation(OPERATOR, "key_1", "leaked", "now", 1.0))
        assert "key_1" in node.live.revocations
        node.live.apply(self.KEY, signed_tombstone(OPERATOR, self.KEY, 2.0))
        assert "key_1" not in node.live.revocations

    def test_bare_delete_does_not_unrevoke(self) -> None:
        node = Node()
        value = signed_revocation(OPERATOR, "key_1", "leaked", "now", 1.0)
        node.live.apply(self.KEY, value)
        node.live.apply(self.KEY, None)
        assert "key_1" in node.live.revocations
        assert node.restored == [(self.KEY, value)]

    def test_replayed_older_value_is_refused(self) -> None:
        """Revoke (1), unrevoke (2), re-revoke (3): replaying (2) unrevokes nothing."""
        node = Node()
        tomb = signed_tombstone(OPERATOR, self.KEY, 2.0)
        node.live.apply(self.KEY, signed_revocation(OPERATOR, "key_1", "x", "now", 1.0))
        node.live.apply(self.KEY, tomb)
        node.live.apply(self.KEY, signed_revocation(OPERATOR, "key_1", "x", "now", 3.0))
        node.live.apply(self.KEY, tomb)
        assert "key_1" in node.live.revocations
        assert node.reasons() == ["replayed"]

    def test_the_value_in_force_seen_again_is_no_replay(self) -> None:
        node = Node()
        value = signed_revocation(OPERATOR, "key_1", "x", "now", 1.0)
        node.live.apply(self.KEY, value)
        node.live.apply(self.KEY, value)
        assert node.events == []

    def test_revocation_for_another_sub(self) -> None:
        node = Node()
        value = seal(OPERATOR, self.KEY, {"sub": "key_2"}, 1.0)
        node.live.apply(self.KEY, value)
        assert "key_2" not in node.live.revocations and node.reasons() == ["bad_body"]

    def test_unsigned_old_format(self) -> None:
        node = Node()
        node.live.apply(self.KEY, orjson.dumps({"sub": "key_1", "reason": "", "at": ""}))
        assert "key_1" not in node.live.revocations and node.reasons() == ["wrong_shape"]


class TestMatrix:
    def test_signed_matrix_replaces(self) -> None:
        node = Node()
        node.live.apply(MATRIX_KEY, signed_matrix(OPERATOR, [model()], 1.0))
        assert len(node.matrices) == 1

    def test_forged_zero_price_matrix(self) -> None:
        node = Node()
        node.live.apply(MATRIX_KEY, signed_matrix(ATTACKER, [model(price=0.0)], 1.0))
        node.live.apply(MATRIX_KEY, orjson.dumps({"models": [model(price=0.0)]}))
        assert node.matrices == [] and node.reasons() == ["unknown_kid", "wrong_shape"]

    def test_signed_but_invalid_matrix_is_not_applied_at_all(self) -> None:
        """No partial apply: one bad model refuses the whole value, the old matrix stays."""
        node = Node()
        node.live.apply(MATRIX_KEY, signed_matrix(OPERATOR, [model()], 1.0))
        node.live.apply(MATRIX_KEY, signed_matrix(OPERATOR, [model("a"), {"name": 5}], 2.0))
        assert len(node.matrices) == 1 and node.reasons() == ["bad_body"]
        node.live.apply(MATRIX_KEY, signed_matrix(OPERATOR, [model("b")], 3.0))
        assert len(node.matrices) == 2  # the refused value did not advance the replay clock


class TestNodeKeys:
    def test_registration_is_followed(self) -> None:
        node = Node()
        key = node_key_kv_key("n1", 1)
        pub = encode_public(bytes(ISSUER.verify_key))
        node.live.apply(key, seal(OPERATOR, key, registration_body("n1", 1, pub, 1.0), 1.0))
        assert node.registered == ["n1"]
        assert node.live.registry is not None and node.live.registry.current("n1")

    def test_forged_registration(self) -> None:
        node = Node()
        key = node_key_kv_key("n1", 1)
        pub = encode_public(bytes(ATTACKER.verify_key))
        node.live.apply(key, seal(ATTACKER, key, registration_body("n1", 1, pub, 1.0), 1.0))
        assert node.registered == [] and node.reasons() == ["unknown_kid"]

    def test_unrelated_keys_are_ignored(self) -> None:
        node = Node()
        node.live.apply("nodes.x.audit_key", b"k4.public.whatever")
        node.live.apply("something.else", b"junk")
        assert node.events == []

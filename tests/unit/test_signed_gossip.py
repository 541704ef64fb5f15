"""Signed budget slots, signed peer events and the rate-limited rejection reports."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from gatekeeper.auth.paserk import encode_public, pid
from gatekeeper.control.envelope import ControlValueRejected, seal
from gatekeeper.control.node_events import open_event, sign_event
from gatekeeper.control.registry import NodeKeyRegistry, node_key_kv_key, registration_body
from gatekeeper.control.reporting import RateGate, Rejections
from gatekeeper.control.slots import (
    ABSOLUTE_CAP,
    MAX_BATCH,
    RECENT,
    SlotVerifier,
    sign_slot,
    sign_slots,
)
from gatekeeper.internal.crdt import PNSlot

OPERATOR = SigningKey(b"\x01" * 32)
NODE_A, NODE_A2, NODE_B, ATTACKER = (SigningKey(bytes([20 + i]) * 32) for i in range(4))
CID = "tok.key_1.total"


def register(reg: NodeKeyRegistry, node: str, n: int, key: SigningKey, signer: SigningKey) -> None:
    kv_key = node_key_kv_key(node, n)
    body = registration_body(node, n, encode_public(bytes(key.verify_key)), float(n))
    reg.add(kv_key, seal(signer, kv_key, body, float(n)))


def registry() -> NodeKeyRegistry:
    reg = NodeKeyRegistry({pid(bytes(OPERATOR.verify_key)): OPERATOR.verify_key})
    register(reg, "a", 1, NODE_A, OPERATOR)
    register(reg, "b", 1, NODE_B, OPERATOR)
    return reg


def reason(verifier: SlotVerifier, node: str, value: bytes, **kw: bool) -> str:
    with pytest.raises(ControlValueRejected) as info:
        verifier.check(f"{CID}.{node}", CID, node, value, **kw)
    return info.value.reason


class TestSlots:
    def test_a_registered_nodes_own_slot_is_accepted(self) -> None:
        verifier = SlotVerifier(registry())
        value = sign_slot(NODE_A, f"{CID}.a", PNSlot(30, 5))
        assert verifier.check(f"{CID}.a", CID, "a", value) == PNSlot(30, 5)

    def test_each_distinct_value_is_verified_once(self) -> None:
        verifier = SlotVerifier(registry())
        value = sign_slot(NODE_A, f"{CID}.a", PNSlot(30, 5))
        for _ in range(5):
            verifier.check(f"{CID}.a", CID, "a", value)
        assert verifier.signatures == 1

    def test_own_signed_values_need_no_verification(self) -> None:
        verifier = SlotVerifier(registry())
        value = sign_slot(NODE_A, f"{CID}.a", PNSlot(3, 0))
        verifier.remember(f"{CID}.a", value, PNSlot(3, 0))
        verifier.check(f"{CID}.a", CID, "a", value)
        assert verifier.signatures == 0

    def test_memory_holds_a_few_values_per_key_however_long_it_runs(self) -> None:
        """A slot changes at every flush; remembering every value ever signed grew the
        process without end. The echo of a recent own value is still a hit."""
        verifier = SlotVerifier(registry())
        values = [sign_slot(NODE_A, f"{CID}.a", PNSlot(i, 0)) for i in range(1, 41)]
        for i, value in enumerate(values, start=1):
            verifier.remember(f"{CID}.a", value, PNSlot(i, 0))
        assert sum(len(recent) for recent in verifier.verified.values()) == RECENT
        verifier.check(f"{CID}.a", CID, "a", values[-RECENT])  # an echo a few flushes late
        assert verifier.signatures == 0
        verifier.forget(CID)  # the counter's window was collected
        assert verifier.verified == {}

    def test_unsigned_slot(self) -> None:
        assert reason(SlotVerifier(registry()), "a", PNSlot(0, 10**9).to_bytes()) == "unsigned"

    def test_made_up_node(self) -> None:
        value = sign_slot(ATTACKER, f"{CID}.made-up", PNSlot(0, 10**9))
        assert reason(SlotVerifier(registry()), "made-up", value) == "unknown_node"

    def test_another_nodes_id(self) -> None:
        """Node b's key cannot write node a's slot (the key's last token is the signer)."""
        value = sign_slot(NODE_B, f"{CID}.a", PNSlot(10**15, 0))
        assert reason(SlotVerifier(registry()), "a", value) == "bad_signature"

    def test_replayed_under_another_counter(self) -> None:
        value = sign_slot(NODE_A, "tok.key_2.total.a", PNSlot(0, 0))
        assert reason(SlotVerifier(registry()), "a", value) == "bad_signature"

    def test_n_greater_than_p_even_from_a_registered_node(self) -> None:
        value = sign_slot(NODE_A, f"{CID}.a", PNSlot(0, 10**9))
        assert reason(SlotVerifier(registry()), "a", value) == "n_exceeds_p"

    def test_absurd_against_the_limit(self) -> None:
        verifier = SlotVerifier(registry(), factor=4.0, limit_of=lambda cid: 1000)
        ok = sign_slot(NODE_A, f"{CID}.a", PNSlot(4000, 0))
        assert verifier.check(f"{CID}.a", CID, "a", ok) == PNSlot(4000, 0)
        value = sign_slot(NODE_B, f"{CID}.b", PNSlot(4001, 0))
        assert reason(verifier, "b", value) == "absurd"

    def test_absurd_without_a_known_limit(self) -> None:
        value = sign_slot(NODE_A, f"{CID}.a", PNSlot(ABSOLUTE_CAP + 1, 0))
        assert reason(SlotVerifier(registry()), "a", value) == "absurd"

    def test_regression(self) -> None:
        verifier = SlotVerifier(registry())
        verifier.check(f"{CID}.a", CID, "a", sign_slot(NODE_A, f"{CID}.a", PNSlot(10, 2)))
        older = sign_slot(NODE_A, f"{CID}.a", PNSlot(8, 2))
        assert reason(verifier, "a", older) == "regression"
        verifier.forget(CID)  # the counter was collected: a new window starts from nothing
        assert verifier.check(f"{CID}.a", CID, "a", older) == PNSlot(8, 2)

    @pytest.mark.parametrize(
        "value", [b"", b" ", b"[1,0] ", b"[1,0] !!!", b"x" * 300, b"[1,0] " + b"A" * 86]
    )
    def test_malformed(self, value: bytes) -> None:
        assert reason(SlotVerifier(registry()), "a", value) in {
            "unsigned",
            "bad_signature",
            "oversized",
        }

    def test_signed_garbage_is_malformed(self) -> None:
        from gatekeeper.auth.paseto import b64encode
        from gatekeeper.control.slots import slot_message

        data = b'{"p": 1}'
        sig = NODE_A.sign(slot_message(f"{CID}.a", data)).signature
        assert reason(SlotVerifier(registry()), "a", data + b" " + b64encode(sig).encode()) == (
            "malformed"
        )

    def test_rotation(self) -> None:
        """After a rotation peers take the new key only; the node reads its own old slots."""
        reg = registry()
        old = sign_slot(NODE_A, f"{CID}.a", PNSlot(5, 0))
        register(reg, "a", 2, NODE_A2, NODE_A)
        verifier = SlotVerifier(reg)
        assert reason(verifier, "a", old) == "bad_signature"
        assert verifier.check(f"{CID}.a", CID, "a", old, any_key=True) == PNSlot(5, 0)
        new = sign_slot(NODE_A2, f"{CID}.a", PNSlot(6, 0))
        assert verifier.check(f"{CID}.a", CID, "a", new) == PNSlot(6, 0)

    @given(st.integers(0, 2**40), st.integers(0, 2**40))
    def test_any_genuine_slot_with_n_at_most_p_round_trips(self, p: int, n: int) -> None:
        slot = PNSlot(max(p, n), min(p, n))
        value = sign_slot(NODE_A, f"{CID}.a", slot)
        assert SlotVerifier(registry()).check(f"{CID}.a", CID, "a", value) == slot


def batch(signer: SigningKey, node: str, n: int, first: int = 1) -> list[tuple[str, bytes]]:
    """``n`` counters' slots of ``node`` signed in one flush: (kv key, value) pairs."""
    keys = [f"tok.key_{first + i}.total.{node}" for i in range(n)]
    values = sign_slots(signer, [(k, PNSlot(10 + i, i)) for i, k in enumerate(keys)])
    return list(zip(keys, values, strict=True))


def check(verifier: SlotVerifier, kv_key: str, value: bytes) -> PNSlot:
    cid, _, node = kv_key.rpartition(".")
    return verifier.check(kv_key, cid, node, value)


def refused(verifier: SlotVerifier, kv_key: str, value: bytes) -> str:
    with pytest.raises(ControlValueRejected) as info:
        check(verifier, kv_key, value)
    return info.value.reason


class TestBatches:
    """One signature over a flush's slots (a Merkle root); each value carries its path."""

    @pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 200, MAX_BATCH, MAX_BATCH + 1])
    def test_every_slot_of_a_batch_is_accepted(self, n: int) -> None:
        verifier = SlotVerifier(registry())
        for i, (kv_key, value) in enumerate(batch(NODE_A, "a", n)):
            assert check(verifier, kv_key, value) == PNSlot(10 + i, i)

    def test_a_batch_costs_one_signature_check(self) -> None:
        verifier = SlotVerifier(registry())
        for kv_key, value in batch(NODE_A, "a", 200):
            check(verifier, kv_key, value)
        assert verifier.signatures == 1

    def test_more_than_max_batch_slots_are_signed_in_several_batches(self) -> None:
        verifier = SlotVerifier(registry())
        for kv_key, value in batch(NODE_A, "a", MAX_BATCH * 2 + 1):
            check(verifier, kv_key, value)
        assert verifier.signatures == 3

    def test_values_stay_small(self) -> None:
        longest = max(len(v) for _, v in batch(NODE_A, "a", MAX_BATCH))
        assert longest <= 640

    def test_a_value_replayed_under_another_counter(self) -> None:
        pairs = batch(NODE_A, "a", 4)
        value = pairs[0][1]
        assert refused(SlotVerifier(registry()), pairs[1][0], value) == "bad_signature"
        assert refused(SlotVerifier(registry()), "tok.key_99.total.a", value) == "bad_signature"

    def test_a_value_with_its_slot_changed(self) -> None:
        verifier = SlotVerifier(registry())
        kv_key, value = batch(NODE_A, "a", 4)[2]
        check(verifier, *batch(NODE_A, "a", 4)[0])  # the root is known and cached
        forged = PNSlot(0, 0).to_bytes() + value[value.index(b" ") :]
        assert refused(verifier, kv_key, forged) == "bad_signature"

    def test_a_tampered_path(self) -> None:
        from gatekeeper.auth.paseto import b64decode, b64encode

        kv_key, value = batch(NODE_A, "a", 4)[1]
        head, _, path = value.rpartition(b" ")
        raw = bytearray(b64decode(path.decode()))
        raw[5] ^= 1
        flipped = head + b" " + b64encode(bytes(raw)).encode()
        assert refused(SlotVerifier(registry()), kv_key, flipped) == "bad_signature"
        raw[0] = 7  # neither side
        bad_side = head + b" " + b64encode(bytes(raw)).encode()
        assert refused(SlotVerifier(registry()), kv_key, bad_side) == "malformed"
        too_deep = head + b" " + b64encode(b"\x00" + bytes(32) * 1 + bytes(33) * 9).encode()
        assert refused(SlotVerifier(registry()), kv_key, too_deep) in {"malformed", "oversized"}

    def test_an_attackers_batch(self) -> None:
        for kv_key, value in batch(ATTACKER, "a", 3):
            assert refused(SlotVerifier(registry()), kv_key, value) == "bad_signature"

    def test_another_nodes_batch_for_this_node(self) -> None:
        """Node b's key cannot sign node a's slots, in a batch either."""
        for kv_key, value in batch(NODE_B, "a", 3):
            assert refused(SlotVerifier(registry()), kv_key, value) == "bad_signature"

    def test_a_rotated_out_keys_batch(self) -> None:
        reg = registry()
        old = batch(NODE_A, "a", 3)
        register(reg, "a", 2, NODE_A2, NODE_A)
        verifier = SlotVerifier(reg)
        kv_key, value = old[0]
        assert refused(verifier, kv_key, value) == "bad_signature"
        cid = kv_key.rpartition(".")[0]
        assert verifier.check(kv_key, cid, "a", value, any_key=True) == PNSlot(10, 0)
        # accepted from the old key for the node's own read-back, not remembered for peers
        assert refused(verifier, *old[1]) == "bad_signature"

    def test_a_rotation_forgets_verified_roots(self) -> None:
        reg = registry()
        verifier = SlotVerifier(reg)
        pairs = batch(NODE_A, "a", 3)
        check(verifier, *pairs[0])
        register(reg, "a", 2, NODE_A2, NODE_A)
        verifier.forget_keys()
        assert refused(verifier, *pairs[1]) == "bad_signature"

    @given(
        st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)), min_size=1, max_size=40)
    )
    def test_any_genuine_batch_round_trips(self, pn: list[tuple[int, int]]) -> None:
        slots = [PNSlot(max(p, n), min(p, n)) for p, n in pn]
        keys = [f"tok.key_{i}.total.a" for i in range(len(slots))]
        verifier = SlotVerifier(registry())
        values = sign_slots(NODE_A, list(zip(keys, slots, strict=True)))
        for kv_key, value, slot in zip(keys, values, slots, strict=True):
            assert check(verifier, kv_key, value) == slot


class TestNodeEvents:
    SUBJECT = "bh.events.breaker.openai"

    def payload(self, node: str = "a", ts: float = 1000.0) -> dict[str, object]:
        return {"type": "breaker", "provider": "openai", "state": "open", "node_id": node, "ts": ts}

    def reason(self, data: bytes, subject: str = SUBJECT, now: float = 1000.0) -> str:
        with pytest.raises(ControlValueRejected) as info:
            open_event(data, subject, registry(), now)
        return info.value.reason

    def test_genuine(self) -> None:
        data = sign_event(NODE_A, self.SUBJECT, self.payload())
        event = open_event(data, self.SUBJECT, registry(), 1010.0)
        assert event["state"] == "open" and event["node_id"] == "a"

    def test_unsigned(self) -> None:
        assert self.reason(orjson.dumps(self.payload())) == "unsigned"

    def test_attacker_key(self) -> None:
        assert self.reason(sign_event(ATTACKER, self.SUBJECT, self.payload())) == "unknown_node"

    def test_claiming_another_node(self) -> None:
        assert self.reason(sign_event(NODE_B, self.SUBJECT, self.payload("a"))) == "node_mismatch"

    def test_other_subject(self) -> None:
        data = sign_event(NODE_A, "bh.events.breaker.anthropic", self.payload())
        assert self.reason(data) == "bad_signature"

    def test_tampered(self) -> None:
        doc = orjson.loads(sign_event(NODE_A, self.SUBJECT, self.payload()))
        doc["state"] = "closed"
        assert self.reason(orjson.dumps(doc)) == "bad_signature"

    @pytest.mark.parametrize("now", [1061.0, 939.0])
    def test_replayed_later_or_from_the_future(self, now: float) -> None:
        data = sign_event(NODE_A, self.SUBJECT, self.payload())
        assert self.reason(data, now=now) == "stale"

    def test_rotated_out_key(self) -> None:
        reg = registry()
        register(reg, "a", 2, NODE_A2, NODE_A)
        data = sign_event(NODE_A, self.SUBJECT, self.payload())
        with pytest.raises(ControlValueRejected) as info:
            open_event(data, self.SUBJECT, reg, 1000.0)
        assert info.value.reason == "stale_key"

    @pytest.mark.parametrize("data", [b"", b"[]", b"{", b"x" * 70_000])
    def test_malformed(self, data: bytes) -> None:
        assert self.reason(data) in {"not_json", "wrong_shape", "oversized"}


class TestRejections:
    def test_every_rejection_is_counted_but_reports_are_rate_limited(self) -> None:
        """A flood of 1000 forged slots: 1000 counted, 10 reported, then 1 per second."""
        now = [0.0]
        events: list[dict[str, object]] = []
        counted: list[tuple[str, str]] = []
        rej = Rejections(events.append, lambda k, r: counted.append((k, r)), clock=lambda: now[0])
        for _ in range(1000):
            rej.reject("slot", "tok.x.total.evil", "unknown_node")
        assert len(counted) == 1000 and len(events) == 10
        now[0] = 1.0
        rej.reject("slot", "tok.x.total.evil", "unknown_node")
        assert len(events) == 11 and events[-1]["suppressed"] == 990
        assert rej.count_of("slot") == 1001

    def test_kinds_have_separate_budgets(self) -> None:
        events: list[dict[str, object]] = []
        rej = Rejections(events.append, clock=lambda: 0.0)
        for _ in range(50):
            rej.reject("slot", "k", "unsigned")
        rej.reject("revocation", "revoked.x", "unknown_kid")
        assert events[-1]["kind"] == "revocation"

    def test_gate_refills(self) -> None:
        gate = RateGate(burst=2, per_s=0.5)
        assert [gate.allow("x", 0.0) for _ in range(3)] == [True, True, False]
        assert not gate.allow("x", 1.0)
        assert gate.allow("x", 2.0)

"""The CRDT counters: G-Counter, PN-Counter and the escrow (bounded) counter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.internal.crdt import EscrowCounter, GCounter, PNCounter, PNSlot

NODES = ("a", "b", "c", "d")
node_ids = st.sampled_from(NODES)
amounts = st.integers(min_value=0, max_value=1_000)
gcounters = st.dictionaries(node_ids, amounts).map(GCounter)
pncounters = st.builds(PNCounter, gcounters, gcounters)
increments = st.lists(st.tuples(node_ids, amounts), max_size=30)


class TestGCounter:
    def test_increment_adds_to_the_nodes_own_slot(self) -> None:
        """Each node's increments land in its own slot; the value is the sum."""
        counter = GCounter()
        counter.increment("a", 3)
        counter.increment("b", 4)
        counter.increment("a")
        assert (counter.slot("a"), counter.slot("b"), counter.slot("z")) == (4, 4, 0)
        assert counter.value == 8

    @pytest.mark.parametrize("bad", [-1, 1.5, True])
    def test_rejects_amounts_that_are_not_non_negative_ints(self, bad: object) -> None:
        """A G-Counter only grows, by whole units."""
        with pytest.raises(ValueError):
            GCounter().increment("a", bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            GCounter({"a": bad})  # type: ignore[dict-item]

    def test_merge_slot_keeps_the_maximum(self) -> None:
        """A stale or duplicate slot is ignored; a newer one replaces the old."""
        counter = GCounter({"a": 5})
        assert counter.merge_slot("a", 3) is False
        assert counter.merge_slot("a", 5) is False
        assert counter.merge_slot("a", 9) is True
        assert counter.value == 9

    def test_merge_returns_a_new_counter_and_leaves_inputs_alone(self) -> None:
        """``merge`` is pure; ``merge_in`` is the in-place form."""
        left, right = GCounter({"a": 1, "b": 5}), GCounter({"a": 3})
        merged = left.merge(right)
        assert merged == GCounter({"a": 3, "b": 5})
        assert left == GCounter({"a": 1, "b": 5}) and right == GCounter({"a": 3})
        assert left.merge_in(right) is True and left == merged

    def test_single_slot_message_carries_only_that_node(self) -> None:
        """``only(node)`` is the gossip form of one node's slot and decodes like any state."""
        counter = GCounter({"a": 2, "b": 7})
        message = counter.only("b").to_bytes()
        assert message == b'{"b":7}'
        assert GCounter.from_bytes(message) == GCounter({"b": 7})

    @given(gcounters)
    def test_bytes_round_trip(self, counter: GCounter) -> None:
        """``from_bytes(to_bytes(c)) == c`` for every counter."""
        assert GCounter.from_bytes(counter.to_bytes()) == counter

    @pytest.mark.parametrize("data", [b"", b"[1]", b'{"a": -1}', b'{"a": "1"}', b"{"])
    def test_from_bytes_rejects_malformed_input(self, data: bytes) -> None:
        """Garbage from the network is a ValueError, never a corrupt counter."""
        with pytest.raises(ValueError):
            GCounter.from_bytes(data)


class TestGCounterLaws:
    @given(gcounters, gcounters)
    def test_merge_is_commutative(self, a: GCounter, b: GCounter) -> None:
        """a ⊔ b == b ⊔ a."""
        assert a.merge(b) == b.merge(a)

    @given(gcounters, gcounters, gcounters)
    def test_merge_is_associative(self, a: GCounter, b: GCounter, c: GCounter) -> None:
        """(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)."""
        assert a.merge(b).merge(c) == a.merge(b.merge(c))

    @given(gcounters)
    def test_merge_is_idempotent(self, a: GCounter) -> None:
        """a ⊔ a == a."""
        assert a.merge(a) == a

    @given(gcounters, gcounters, node_ids, amounts)
    def test_value_is_monotone_under_merge_and_increment(
        self, a: GCounter, b: GCounter, node: str, n: int
    ) -> None:
        """Neither merging nor incrementing ever lowers the value."""
        merged = a.merge(b)
        assert merged.value >= max(a.value, b.value)
        before = merged.value
        merged.increment(node, n)
        assert merged.value == before + n

    @given(increments, st.data())
    def test_any_delivery_order_with_duplicates_and_redelivery_converges(
        self, ops: list[tuple[str, int]], data: st.DataObject
    ) -> None:
        """Per-node state messages delivered shuffled, duplicated, dropped then re-sent,
        converge to the sum of all increments."""
        replicas = {node: GCounter() for node in NODES}
        messages: list[bytes] = []
        for node, n in ops:
            replicas[node].increment(node, n)
            messages.append(replicas[node].only(node).to_bytes())
        order = data.draw(st.permutations(messages))
        dupes = data.draw(st.lists(st.sampled_from(messages), max_size=10)) if messages else []
        dropped = data.draw(st.sets(st.integers(0, max(0, len(order) - 1)), max_size=5))
        first_pass = [m for i, m in enumerate(order) if i not in dropped] + dupes
        redelivered = [order[i] for i in sorted(dropped) if i < len(order)]
        receiver = GCounter()
        for message in [*first_pass, *redelivered]:
            receiver.merge_in(GCounter.from_bytes(message))
        assert receiver.value == sum(n for _, n in ops)

    @given(increments, st.data())
    def test_only_each_nodes_latest_message_is_needed(
        self, ops: list[tuple[str, int]], data: st.DataObject
    ) -> None:
        """Older states may be lost for good: the latest one per node is enough."""
        replicas = {node: GCounter() for node in NODES}
        latest: dict[str, bytes] = {}
        stale: list[bytes] = []
        for node, n in ops:
            replicas[node].increment(node, n)
            if node in latest:
                stale.append(latest[node])
            latest[node] = replicas[node].only(node).to_bytes()
        kept = data.draw(st.lists(st.sampled_from(stale), max_size=10)) if stale else []
        receiver = GCounter()
        for message in data.draw(st.permutations([*latest.values(), *kept])):
            receiver.merge_in(GCounter.from_bytes(message))
        assert receiver.value == sum(n for _, n in ops)


class TestPNSlot:
    def test_value_is_p_minus_n(self) -> None:
        """A slot's value is what its node added minus what it took back."""
        assert PNSlot(10, 4).value == 6

    def test_join_takes_each_half_maximum(self) -> None:
        """Joining two snapshots of one node yields the later one."""
        assert PNSlot(5, 1).join(PNSlot(3, 2)) == PNSlot(5, 2)

    @given(amounts, amounts)
    def test_bytes_round_trip(self, p: int, n: int) -> None:
        """The wire form ``[p, n]`` round trips."""
        slot = PNSlot(p, n)
        assert PNSlot.from_bytes(slot.to_bytes()) == slot

    @pytest.mark.parametrize("data", [b"[1]", b"[1,-2]", b'{"p":1}', b"x", b"[1,2,3]"])
    def test_from_bytes_rejects_malformed_input(self, data: bytes) -> None:
        """Anything but two non-negative ints is a ValueError."""
        with pytest.raises(ValueError):
            PNSlot.from_bytes(data)


class TestPNCounter:
    def test_value_is_increments_minus_decrements(self) -> None:
        """Reservations released come off the value; both halves still only grow."""
        counter = PNCounter()
        counter.increment("a", 10)
        counter.decrement("a", 4)
        counter.increment("b", 1)
        assert counter.value == 7
        assert counter.slot("a") == PNSlot(10, 4)

    def test_merge_slot_reports_growth(self) -> None:
        """A slot is news only if one of its halves grew."""
        counter = PNCounter()
        assert counter.merge_slot("a", PNSlot(3, 1)) is True
        assert counter.merge_slot("a", PNSlot(3, 1)) is False
        assert counter.merge_slot("a", PNSlot(2, 2)) is True
        assert counter.slot("a") == PNSlot(3, 2)

    @given(pncounters)
    def test_bytes_round_trip(self, counter: PNCounter) -> None:
        """Full state round trips through its JSON form."""
        assert PNCounter.from_bytes(counter.to_bytes()) == counter

    @given(pncounters, node_ids)
    def test_single_slot_message_merges_like_the_slot(self, counter: PNCounter, node: str) -> None:
        """Merging ``only(node)`` equals merging ``slot(node)``."""
        via_message, via_slot = PNCounter(), PNCounter()
        via_message.merge_in(PNCounter.from_bytes(counter.only(node).to_bytes()))
        via_slot.merge_slot(node, counter.slot(node))
        assert via_message == via_slot

    @given(pncounters, pncounters, pncounters)
    def test_merge_laws(self, a: PNCounter, b: PNCounter, c: PNCounter) -> None:
        """Merge is commutative, associative and idempotent."""
        assert a.merge(b) == b.merge(a)
        assert a.merge(b).merge(c) == a.merge(b.merge(c))
        assert a.merge(a) == a

    @given(st.lists(st.tuples(node_ids, amounts, st.booleans()), max_size=30), st.data())
    def test_shuffled_duplicated_slot_messages_converge(
        self, ops: list[tuple[str, int, bool]], data: st.DataObject
    ) -> None:
        """Any delivery order of per-node slots, with duplicates, gives Σ inc − Σ dec."""
        replicas = {node: PNCounter() for node in NODES}
        messages: list[tuple[str, bytes]] = []
        for node, n, up in ops:
            if up:
                replicas[node].increment(node, n)
            else:
                replicas[node].decrement(node, n)
            messages.append((node, replicas[node].slot(node).to_bytes()))
        dupes = data.draw(st.lists(st.sampled_from(messages), max_size=10)) if messages else []
        receiver = PNCounter()
        for node, message in data.draw(st.permutations([*messages, *dupes])):
            receiver.merge_slot(node, PNSlot.from_bytes(message))
        assert receiver.value == sum(n if up else -n for _, n, up in ops)


class TestEscrowCounter:
    def test_owner_starts_with_all_rights(self) -> None:
        """The owner holds the whole total; everyone else holds none."""
        escrow = EscrowCounter(100, owner="a")
        assert (escrow.rights("a"), escrow.rights("b")) == (100, 0)

    def test_spend_only_what_you_hold(self) -> None:
        """Spending beyond one's rights is refused and changes nothing."""
        escrow = EscrowCounter(10, owner="a")
        assert escrow.spend("a", 7) is True
        assert escrow.spend("a", 4) is False
        assert escrow.spend("b", 1) is False
        assert (escrow.value, escrow.rights("a")) == (7, 3)

    def test_transfer_moves_rights(self) -> None:
        """A node can hand its rights on; the receiver can then spend them."""
        escrow = EscrowCounter(10, owner="a")
        assert escrow.transfer("a", "b", 6) is True
        assert escrow.transfer("a", "c", 5) is False
        assert escrow.transfer("b", "b", 1) is False
        assert escrow.spend("b", 6) is True
        assert (escrow.rights("a"), escrow.rights("b"), escrow.value) == (4, 0, 6)

    def test_merge_refuses_a_different_counter(self) -> None:
        """Total and owner are identity: replicas of different budgets never merge."""
        with pytest.raises(ValueError):
            EscrowCounter(10, owner="a").merge(EscrowCounter(11, owner="a"))

    def test_bytes_round_trip(self) -> None:
        """Full state round trips through its JSON form."""
        escrow = EscrowCounter(50, owner="a")
        escrow.transfer("a", "b", 20)
        escrow.spend("a", 5)
        assert EscrowCounter.from_bytes(escrow.to_bytes()) == escrow

    @settings(max_examples=60)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(("spend", "transfer", "gossip")), node_ids, node_ids, amounts
            ),
            max_size=60,
        )
    )
    def test_usage_never_exceeds_total_whatever_the_gossip(
        self, ops: list[tuple[str, str, str, int]]
    ) -> None:
        """Each node acting on its own (stale) replica can never push Σ used past the total."""
        total = 1_500
        replicas = {node: EscrowCounter(total, owner="a") for node in NODES}
        for op, node, other, n in ops:
            if op == "spend":
                replicas[node].spend(node, n)
            elif op == "transfer":
                replicas[node].transfer(node, other, n)
            else:
                replicas[other].merge_in(replicas[node])
            everything = replicas["a"].copy()
            for replica in replicas.values():
                everything.merge_in(replica)
            assert everything.value <= total
            assert all(everything.rights(x) >= 0 for x in NODES)
        merged = replicas["a"]
        for replica in replicas.values():
            merged = merged.merge(replica)
        assert sum(merged.rights(x) for x in NODES) + merged.value == total

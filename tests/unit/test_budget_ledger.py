"""BudgetLedger: atomic reservations, settling, gossip merge and expiry on one node."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekeeper.budget.ledger import BudgetLedger, ReservationClosed
from gatekeeper.budget.windows import counter_id, window_id
from gatekeeper.errors import BudgetExceeded, RateLimited
from gatekeeper.internal.crdt import PNSlot

NOW = datetime(2026, 11, 22, 14, 5, 30, tzinfo=UTC)
TOK = counter_id("tok", "key1", window_id("day", NOW))
USD = counter_id("usd", "key1", window_id("month", NOW))
REQ = counter_id("req", "key1", window_id("minute", NOW))
TPM = counter_id("tpm", "key1", window_id("minute", NOW))
TOTAL = counter_id("usd", "key1", "total")


def gossip(source: BudgetLedger, *targets: BudgetLedger) -> None:
    """What the NATS layer does: publish source's dirty own slots, merge them everywhere."""
    for cid, slot in source.own_dirty():
        for target in targets:
            target.merge_remote(cid, source.node_id, slot)


class TestReserve:
    def test_admits_within_limit_and_holds_the_amounts(self) -> None:
        """An admitted reservation counts in the value at once."""
        ledger = BudgetLedger("n1")
        ledger.reserve({TOK: 300, REQ: 1}, {TOK: 1000, REQ: 10}, NOW)
        assert (ledger.value(TOK), ledger.held(TOK), ledger.value(REQ)) == (300, 300, 1)
        assert ledger.remaining(TOK, 1000) == 700

    def test_refusal_holds_nothing_on_any_counter(self) -> None:
        """Admission is all-or-nothing across counters."""
        ledger = BudgetLedger("n1")
        ledger.reserve({TOK: 900}, {TOK: 1000}, NOW)
        with pytest.raises(BudgetExceeded):
            ledger.reserve({REQ: 1, TOK: 200}, {REQ: 10, TOK: 1000}, NOW)
        assert (ledger.value(REQ), ledger.value(TOK)) == (0, 900)

    def test_exactly_reaching_the_limit_is_allowed(self) -> None:
        """The check is ``usage + amount <= limit``."""
        ledger = BudgetLedger("n1")
        ledger.reserve({TOK: 1000}, {TOK: 1000}, NOW)
        assert ledger.remaining(TOK, 1000) == 0

    def test_budget_refusal_is_insufficient_quota_until_the_window_resets(self) -> None:
        """A day budget refuses with code insufficient_quota and Retry-After to midnight UTC."""
        ledger = BudgetLedger("n1")
        with pytest.raises(BudgetExceeded) as caught:
            ledger.reserve({TOK: 1001}, {TOK: 1000}, NOW)
        midnight = datetime(2026, 11, 23, tzinfo=UTC)
        assert caught.value.code == "insufficient_quota"
        assert caught.value.retry_after == (midnight - NOW).total_seconds()

    def test_rate_refusal_is_rate_limit_exceeded_until_the_minute_rolls(self) -> None:
        """A per-minute counter refuses with rate_limit_exceeded and a 30 s Retry-After."""
        ledger = BudgetLedger("n1")
        ledger.reserve({REQ: 2}, {REQ: 2}, NOW)
        with pytest.raises(RateLimited) as caught:
            ledger.reserve({REQ: 1}, {REQ: 2}, NOW)
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.retry_after == 30.0
        assert caught.value.headers["retry-after"] == "30"

    def test_budget_refusal_wins_over_rate_refusal(self) -> None:
        """When both refuse, the client learns about the budget: waiting a minute won't help."""
        ledger = BudgetLedger("n1")
        with pytest.raises(BudgetExceeded):
            ledger.reserve({REQ: 5, USD: 5}, {REQ: 1, USD: 1}, NOW)

    def test_counters_without_a_limit_are_tracked_but_never_refuse(self) -> None:
        """Usage of an uncapped counter is still counted."""
        ledger = BudgetLedger("n1")
        ledger.reserve({TOTAL: 10**9}, {}, NOW)
        assert ledger.value(TOTAL) == 10**9

    def test_remote_usage_counts_towards_admission(self) -> None:
        """What peers spent, once gossiped, reduces what this node may admit."""
        ledger = BudgetLedger("n1")
        ledger.merge_remote(TOK, "n2", PNSlot(800, 0))
        with pytest.raises(BudgetExceeded):
            ledger.reserve({TOK: 201}, {TOK: 1000}, NOW)
        ledger.reserve({TOK: 200}, {TOK: 1000}, NOW)

    def test_rejects_negative_amounts_and_malformed_counter_ids(self) -> None:
        """Programming errors are ValueErrors, not budget decisions."""
        ledger = BudgetLedger("n1")
        with pytest.raises(ValueError):
            ledger.reserve({TOK: -1}, {}, NOW)
        with pytest.raises(ValueError):
            ledger.reserve({"tok:key1:d20261122": 1}, {}, NOW)

    def test_rejects_node_ids_unfit_for_kv_keys(self) -> None:
        """A node id becomes part of a NATS KV key."""
        with pytest.raises(ValueError):
            BudgetLedger("node.1")

    @settings(max_examples=50)
    @given(
        st.lists(
            st.tuples(st.integers(1, 400), st.integers(0, 400), st.sampled_from("skr")),
            max_size=60,
        )
    )
    def test_one_node_never_overspends(self, steps: list[tuple[int, int, str]]) -> None:
        """Any mix of concurrent reserves, settles (actual <= reserved) and releases
        keeps usage within the limit at every moment."""
        ledger, limit, open_ = BudgetLedger("n1"), 1000, []
        for amount, actual, action in steps:
            with contextlib.suppress(BudgetExceeded):
                open_.append(ledger.reserve({TOK: amount}, {TOK: limit}, NOW))
            if action == "s" and open_:
                held = open_.pop(0)
                ledger.settle(held, {TOK: min(actual, held.amounts[TOK])})
            elif action == "r" and open_:
                ledger.release(open_.pop())
            assert ledger.value(TOK) <= limit


class TestSettle:
    def test_unused_part_goes_back(self) -> None:
        """Settling below the reservation frees the difference."""
        ledger = BudgetLedger("n1")
        held = ledger.reserve({TOK: 500}, {TOK: 1000}, NOW)
        ledger.settle(held, {TOK: 120})
        assert (ledger.value(TOK), ledger.held(TOK), ledger.own(TOK)) == (120, 0, PNSlot(500, 380))

    def test_overrun_is_committed_in_full(self) -> None:
        """Usage above the estimate happened upstream, so it is recorded truthfully."""
        ledger = BudgetLedger("n1")
        held = ledger.reserve({TOK: 100}, {TOK: 1000}, NOW)
        ledger.settle(held, {TOK: 150})
        assert ledger.value(TOK) == 150

    def test_counters_missing_from_actual_commit_the_reserved_amount(self) -> None:
        """The request counter stays counted when the caller only reports tokens."""
        ledger = BudgetLedger("n1")
        held = ledger.reserve({TOK: 100, REQ: 1}, {}, NOW)
        ledger.settle(held, {TOK: 40})
        assert (ledger.value(TOK), ledger.value(REQ), ledger.held(REQ)) == (40, 1, 0)

    def test_unreserved_counters_in_actual_are_committed(self) -> None:
        """Usage on a counter nobody reserved is still recorded."""
        ledger = BudgetLedger("n1")
        held = ledger.reserve({TOK: 100}, {}, NOW)
        ledger.settle(held, {TOK: 100, TOTAL: 7})
        assert ledger.value(TOTAL) == 7

    def test_settling_twice_raises(self) -> None:
        """A second settle would double count, so it is a bug."""
        ledger = BudgetLedger("n1")
        held = ledger.reserve({TOK: 100}, {}, NOW)
        ledger.settle(held, {TOK: 10})
        with pytest.raises(ReservationClosed):
            ledger.settle(held, {TOK: 10})
        assert ledger.open_reservations() == 0


class TestRelease:
    def test_release_gives_everything_back(self) -> None:
        """A failed request leaves no trace in the value."""
        ledger = BudgetLedger("n1")
        held = ledger.reserve({TOK: 100, REQ: 1}, {}, NOW)
        assert ledger.release(held) is True
        assert (ledger.value(TOK), ledger.value(REQ), ledger.held(TOK)) == (0, 0, 0)

    def test_release_after_settle_is_a_no_op(self) -> None:
        """``try: … settle … finally: release`` is safe."""
        ledger = BudgetLedger("n1")
        held = ledger.reserve({TOK: 100}, {}, NOW)
        ledger.settle(held, {TOK: 60})
        assert ledger.release(held) is False
        assert ledger.value(TOK) == 60


class TestGossip:
    def test_own_dirty_reports_each_changed_slot_once(self) -> None:
        """The gossip layer gets our changed slots, then nothing until they change again."""
        ledger = BudgetLedger("n1")
        held = ledger.reserve({TOK: 100, REQ: 1}, {}, NOW)
        assert sorted(ledger.own_dirty()) == [(REQ, PNSlot(1, 0)), (TOK, PNSlot(100, 0))]
        assert ledger.own_dirty() == []
        ledger.settle(held, {TOK: 30})
        assert ledger.own_dirty() == [(TOK, PNSlot(100, 70))]

    def test_merge_remote_keeps_the_latest_slot(self) -> None:
        """Stale and duplicate gossip is ignored (per-half max)."""
        ledger = BudgetLedger("n1")
        assert ledger.merge_remote(TOK, "n2", PNSlot(50, 10)) is True
        assert ledger.merge_remote(TOK, "n2", PNSlot(40, 10)) is False
        assert ledger.merge_remote(TOK, "n2", PNSlot(50, 10)) is False
        assert ledger.value(TOK) == 40
        assert ledger.own_dirty() == []

    def test_peers_converge_on_the_same_view(self) -> None:
        """After one gossip round each way, every node sees the same totals."""
        a, b, c = BudgetLedger("a"), BudgetLedger("b"), BudgetLedger("c")
        a.settle(a.reserve({TOK: 100}, {}, NOW), {TOK: 70})
        b.reserve({TOK: 50}, {}, NOW)
        c.release(c.reserve({TOK: 999}, {}, NOW))
        for node in (a, b, c):
            gossip(node, *(other for other in (a, b, c) if other is not node))
        assert a.value(TOK) == b.value(TOK) == c.value(TOK) == 120

    def test_load_own_restores_a_restarted_node(self) -> None:
        """After a restart, own slots from KV are loaded before traffic and built upon."""
        ledger = BudgetLedger("n1")
        ledger.load_own(TOK, PNSlot(500, 100))
        assert ledger.own_dirty() == []
        ledger.reserve({TOK: 10}, {}, NOW)
        assert ledger.own_dirty() == [(TOK, PNSlot(510, 100))]

    def test_own_slot_echo_merges_like_load_own(self) -> None:
        """Our own slot seen through the KV watcher never moves us backwards."""
        ledger = BudgetLedger("n1")
        ledger.reserve({TOK: 10}, {}, NOW)
        assert ledger.merge_remote(TOK, "n1", PNSlot(5, 0)) is False
        assert ledger.own(TOK) == PNSlot(10, 0)

    def test_load_own_republishes_a_joined_slot(self) -> None:
        """If we moved on before the KV copy arrived, the join is published again."""
        ledger = BudgetLedger("n1")
        ledger.release(ledger.reserve({TOK: 10}, {}, NOW))
        ledger.own_dirty()
        ledger.load_own(TOK, PNSlot(20, 0))
        assert ledger.own_dirty() == [(TOK, PNSlot(20, 10))]

    def test_rejects_malformed_counter_ids_from_gossip(self) -> None:
        """Garbage keys from the network never become counters."""
        with pytest.raises(ValueError):
            BudgetLedger("n1").merge_remote("nonsense", "n2", PNSlot(1, 0))


class TestGc:
    def test_drops_counters_whose_window_ended_before_the_grace(self) -> None:
        """Ended windows go; current and ``total`` counters stay."""
        ledger = BudgetLedger("n1")
        ledger.reserve({REQ: 1, TOK: 1, TOTAL: 1}, {}, NOW)
        assert ledger.gc(NOW + timedelta(minutes=5), grace=timedelta(minutes=10)) == []
        assert ledger.gc(NOW + timedelta(minutes=11), grace=timedelta(minutes=10)) == [REQ]
        assert (len(ledger), ledger.value(REQ), ledger.value(TOK)) == (2, 0, 1)

    def test_late_gossip_for_collected_windows_is_ignored(self) -> None:
        """A slow peer cannot resurrect a collected counter."""
        ledger = BudgetLedger("n1")
        ledger.gc(NOW + timedelta(hours=1))
        assert ledger.merge_remote(REQ, "n2", PNSlot(3, 0)) is False
        assert len(ledger) == 0

    def test_settle_after_collection_is_skipped(self) -> None:
        """A request straddling the collection settles without error."""
        ledger = BudgetLedger("n1")
        held = ledger.reserve({REQ: 1}, {}, NOW)
        ledger.gc(NOW + timedelta(hours=1))
        ledger.settle(held, {REQ: 1})
        assert len(ledger) == 0 and ledger.open_reservations() == 0


class TestCluster:
    @settings(max_examples=40)
    @given(
        st.integers(2, 5),
        st.lists(st.lists(st.integers(1, 50), min_size=5, max_size=5), max_size=30),
    )
    def test_overspend_stays_within_the_documented_bound(
        self, nodes: int, rounds: list[list[int]]
    ) -> None:
        """With full gossip between rounds and at most m admissions per node per round,
        usage never passes limit + (N − 1) · m · R_max (docs/budget.md)."""
        limit, r_max, m = 500, 50, 1
        ledgers = [BudgetLedger(f"n{i}") for i in range(nodes)]
        for wants in rounds:
            for ledger, amount in zip(ledgers, wants, strict=False):
                with contextlib.suppress(BudgetExceeded):
                    ledger.settle(ledger.reserve({TOK: amount}, {TOK: limit}, NOW), {TOK: amount})
            for ledger in ledgers:
                gossip(ledger, *(other for other in ledgers if other is not ledger))
            assert ledgers[0].value(TOK) <= limit + (nodes - 1) * m * r_max

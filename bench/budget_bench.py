"""Microbenchmark: p50 of one reserve + settle cycle on a ledger with ~1000 counters.

Each cycle is what one chat completion costs the budget step: a reservation
across four counters of one key (day tokens, month micro-USD, requests per
minute, tokens per minute) and a settle with the real usage. The ledger also
holds slots from 4 peer nodes on every counter, as it would in a cluster.

    .venv/bin/python -m bench.budget_bench        (target: p50 <= 20 µs)
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime

from gatekeeper.budget.ledger import BudgetLedger
from gatekeeper.budget.windows import Kind, Period, counter_id, window_id
from gatekeeper.internal.crdt import PNSlot

KEYS = 250  # x 4 counters each = 1000 counters
PEERS = ("node-b", "node-c", "node-d", "node-e")
CYCLES = 50_000
TARGET_US = 20.0
_PLAN: tuple[tuple[Kind, Period, int, int], ...] = (
    # kind, period, reserve, limit
    ("tok", "day", 1_200, 10**12),
    ("usd", "month", 3_600, 10**15),
    ("req", "minute", 1, 10**9),
    ("tpm", "minute", 1_200, 10**12),
)


def build(now: datetime) -> tuple[BudgetLedger, list[tuple[dict[str, int], dict[str, int]]]]:
    """A ledger with KEYS x 4 counters and peer slots, plus each key's (amounts, limits)."""
    ledger = BudgetLedger("node-a")
    asks = []
    for k in range(KEYS):
        amounts: dict[str, int] = {}
        limits: dict[str, int] = {}
        for kind, period, amount, limit in _PLAN:
            cid = counter_id(kind, f"key{k}", window_id(period, now))
            amounts[cid], limits[cid] = amount, limit
            for i, peer in enumerate(PEERS):
                ledger.merge_remote(cid, peer, PNSlot(1_000 * (i + 1), 10 * i))
        asks.append((amounts, limits))
    return ledger, asks


def run() -> float:
    """Time CYCLES reserve+settle cycles one by one; return the p50 in µs."""
    now = datetime.now(UTC)
    ledger, asks = build(now)
    actual_of = [{cid: amount // 2 for cid, amount in amounts.items()} for amounts, _ in asks]
    clock = time.perf_counter_ns
    samples = []
    for i in range(CYCLES):
        amounts, limits = asks[i % KEYS]
        actual = actual_of[i % KEYS]
        start = clock()
        reservation = ledger.reserve(amounts, limits, now)
        ledger.settle(reservation, actual)
        samples.append(clock() - start)
        if i % 1_000 == 0:
            ledger.own_dirty()
    print(f"ledger counters: {len(ledger)}, cycles: {CYCLES}")
    p50 = statistics.median(samples) / 1_000
    p99 = statistics.quantiles(samples, n=100)[98] / 1_000
    print(f"reserve+settle p50: {p50:.2f} µs   p99: {p99:.2f} µs   (target p50 <= {TARGET_US} µs)")
    return p50


if __name__ == "__main__":
    run()

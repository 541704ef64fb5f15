"""Step 4 of the pipeline: token, spend and rate budgets shared across nodes by CRDTs.

- :mod:`~gatekeeper.budget.windows`  UTC windows and counter ids (``tok.key_1.d20261122``)
- :mod:`~gatekeeper.budget.decide`   pure decisions, errors, ``x-ratelimit-*`` headers, alerts
- :mod:`~gatekeeper.budget.ledger`   ``BudgetLedger``: one node's counters, reserve/settle/gossip

The design and its overspend bound are in docs/budget.md.
"""

from gatekeeper.budget.decide import (
    Decision,
    Denial,
    crossed_thresholds,
    decide,
    denial_error,
    fits,
    format_reset,
    ratelimit_headers,
)
from gatekeeper.budget.ledger import BudgetLedger, Reservation, ReservationClosed
from gatekeeper.budget.windows import (
    CounterKey,
    counter_id,
    parse_counter_id,
    seconds_to_reset,
    window_end,
    window_id,
    window_reset,
)

__all__ = [
    "BudgetLedger",
    "CounterKey",
    "Decision",
    "Denial",
    "Reservation",
    "ReservationClosed",
    "counter_id",
    "crossed_thresholds",
    "decide",
    "denial_error",
    "fits",
    "format_reset",
    "parse_counter_id",
    "ratelimit_headers",
    "seconds_to_reset",
    "window_end",
    "window_id",
    "window_reset",
]

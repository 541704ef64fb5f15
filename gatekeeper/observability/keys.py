"""API keys for the dashboard and the opt-in budget gauges: limits from claims, usage from
the CRDT ledger."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gatekeeper.auth.claims import Claims

Usage = Callable[[Claims], Mapping[str, Mapping[str, int | None]]]


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One API key as the dashboard and the budget gauges show it."""

    key_id: str
    tenant: str
    requests: int  # in its budget period (else the UTC day), cluster-wide
    tokens: int
    spend_usd: float  # cluster-wide with a USD budget, else what this node served
    budget: dict[str, tuple[float, float]]  # kind (tokens|usd) -> (used, limit)

    @property
    def used_ratio(self) -> float:
        return max((used / limit for used, limit in self.budget.values() if limit), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "tenant": self.tenant,
            "requests": self.requests,
            "tokens": self.tokens,
            "spend_usd": round(self.spend_usd, 6),
            "budget_used_pct": round(self.used_ratio * 100, 1) if self.budget else None,
        }


class KeyTracker:
    """The most recently seen keys (their claims carry the limits) and this node's spend."""

    __slots__ = ("claims", "limit", "spend")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.claims: dict[str, Claims] = {}
        self.spend: dict[str, float] = {}

    def seen(self, claims: Claims, cost_usd: float) -> None:
        key = claims.sub
        self.claims.pop(key, None)
        self.claims[key] = claims
        self.spend[key] = self.spend.get(key, 0.0) + cost_usd
        if len(self.claims) > self.limit:
            oldest = next(iter(self.claims))
            del self.claims[oldest]
            self.spend.pop(oldest, None)

    def rows(self, usage: Usage) -> list[KeyRow]:
        return [key_row(c, usage(c), self.spend.get(k, 0.0)) for k, c in list(self.claims.items())]


def key_row(
    claims: Claims, counters: Mapping[str, Mapping[str, int | None]], local_spend: float
) -> KeyRow:
    """One key's row from its ledger counters (``LedgerAdmission.usage``); pure."""

    def used(kind: str) -> int:
        return int(counters.get(kind, {}).get("used") or 0)

    budget: dict[str, tuple[float, float]] = {}
    for kind, name, scale in (("tok", "tokens", 1), ("usd", "usd", 1_000_000)):
        limit = counters.get(kind, {}).get("limit")
        if limit:
            budget[name] = (used(kind) / scale, limit / scale)
    spend = used("usd") / 1_000_000 if "usd" in counters else local_spend
    return KeyRow(claims.sub, claims.tenant, used("preq"), used("tok"), spend, budget)


class BudgetCollector(Collector):
    """``gatekeeper_budget_*`` for the top-N keys by budget used, computed at scrape time.

    Values come from the CRDT ledger (cluster-wide); the keys are those the node that
    answers the scrape has served (their limits travel in their tokens).
    """

    def __init__(self, keys: KeyTracker, usage: Usage, top: int) -> None:
        self.keys, self.usage, self.top = keys, usage, top

    def collect(self) -> Iterator[Metric]:
        labels = ["key_id", "tenant", "kind"]
        remaining = GaugeMetricFamily(
            "gatekeeper_budget_remaining", "Budget left (tokens, or USD)", labels=labels
        )
        ratio = GaugeMetricFamily(
            "gatekeeper_budget_used_ratio", "Budget used / limit (0..1+)", labels=labels
        )
        rows = sorted(self.keys.rows(self.usage), key=lambda r: (-r.used_ratio, -r.spend_usd))
        for row in [r for r in rows if r.budget][: self.top]:
            for kind, (used, limit) in row.budget.items():
                values = [row.key_id, row.tenant, kind]
                remaining.add_metric(values, max(0.0, limit - used))
                ratio.add_metric(values, used / limit)
        yield remaining
        yield ratio

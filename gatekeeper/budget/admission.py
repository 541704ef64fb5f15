"""Steps 3–4 — rate limits (rpm, tpm) and budget (tokens, USD) as one reservation.

A request reserves on every counter its key limits: 1 request, and an estimate of
its tokens (prompt estimate + ``max_tokens`` or the configured default) and cost.
When the response ends, the reservation is settled to the real usage the upstream
reported; a failed request keeps only its request count.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from gatekeeper.auth.claims import Claims
from gatekeeper.budget.decide import crossed_thresholds, ratelimit_headers
from gatekeeper.budget.ledger import BudgetLedger, Reservation
from gatekeeper.budget.windows import counter_id, seconds_to_reset, window_id
from gatekeeper.errors import BudgetExceeded
from gatekeeper.pipeline import Exchange
from gatekeeper.routing.router import estimate_tokens
from gatekeeper.validate import ChatRequest

MICRO = 1_000_000
_SAFE = re.compile(r"[A-Za-z0-9_=-]{1,128}")


class AlertSink(Protocol):
    def budget_alert(
        self, key_id: str, counter: str, threshold: float, value: int, limit: int
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Ticket:
    reservation: Reservation
    limits: dict[str, int]
    ids: dict[str, str]  # kind -> counter id
    est_tokens: int


def _nothing() -> None:
    return None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def counter_key(sub: str) -> str:
    """The key id as counter-id material: as is when safe, else a short stable hash."""
    if _SAFE.fullmatch(sub):
        return sub
    return "h" + hashlib.blake2b(sub.encode(), digest_size=12).hexdigest()


def plan_counters(claims: Claims, now: datetime) -> tuple[dict[str, str], dict[str, int]]:
    """Counter ids (by kind) and limits for a key at ``now`` (pure)."""
    key = counter_key(claims.sub)
    ids: dict[str, str] = {}
    limits: dict[str, int] = {}
    if claims.rpm is not None or claims.tpm is not None:
        minute = window_id("minute", now)
        if claims.rpm is not None:
            ids["req"] = counter_id("req", key, minute)
            limits[ids["req"]] = claims.rpm
        if claims.tpm is not None:
            ids["tpm"] = counter_id("tpm", key, minute)
            limits[ids["tpm"]] = claims.tpm
    budget = claims.budget
    # Every key is tracked per period (its budget's, else the day), limited or not:
    # BH_SESSIONS and /v1/gatekeeper/usage read these cluster-wide counts.
    window = window_id(budget.period if budget is not None else "day", now)
    ids["tok"] = counter_id("tok", key, window)
    ids["preq"] = counter_id("req", key, window)
    if budget is not None:
        if budget.tokens is not None:
            limits[ids["tok"]] = budget.tokens
        if budget.usd is not None:
            ids["usd"] = counter_id("usd", key, window)
            limits[ids["usd"]] = round(budget.usd * MICRO)
    return ids, limits


class LedgerAdmission:
    def __init__(
        self,
        ledger: BudgetLedger,
        *,
        default_max_tokens: int,
        alerts: AlertSink | None = None,
        clock: Callable[[], datetime] = _utcnow,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.on_change = on_change or _nothing
        self.ledger = ledger
        self.default_max_tokens = default_max_tokens
        self.alerts = alerts
        self.clock = clock
        # Per budget counter: the highest usage this node has checked the alert lines
        # against. Set at its first admission here, so a restarted node does not report
        # again the lines that were passed before it started.
        self._alert_checked: dict[str, int] = {}
        self._plans: dict[tuple[int, Claims], tuple[dict[str, str], dict[str, int]]] = {}

    def _plan(self, claims: Claims, now: datetime) -> tuple[dict[str, str], dict[str, int]]:
        """``plan_counters``, computed once per key and minute (every window this uses
        — minute, day, month, total — changes only on a minute boundary)."""
        cache_key = (int(now.timestamp()) // 60, claims)
        plan = self._plans.get(cache_key)
        if plan is None:
            if len(self._plans) >= 4096:
                self._plans.clear()
            plan = self._plans[cache_key] = plan_counters(claims, now)
        return plan

    def admit(self, ex: Exchange, req: ChatRequest | None) -> Ticket | None:
        claims = ex.claims
        if claims is None:
            return None
        now = self.clock()
        ids, limits = self._plan(claims, now)
        if req is not None:
            estimated = ex.route.prompt_tokens if ex.route is not None else 0
            prompt = estimated or estimate_tokens(req.body["messages"])
            completion = req.max_tokens or self.default_max_tokens
        else:  # embeddings: the input is the whole cost
            prompt, completion = max(1, ex.input_chars // 4), 0
        est = prompt + completion
        model = ex.route.model if ex.route is not None else None
        amounts = {
            ids[k]: v for k, v in (("req", 1), ("preq", 1), ("tpm", est), ("tok", est)) if k in ids
        }
        if "usd" in ids:
            worst = model.cost_usd(prompt, completion) if model is not None else 0.0
            amounts[ids["usd"]] = math.ceil(worst * MICRO)
        for kind in ("tok", "usd"):
            if kind in ids:
                self._alert_checked.setdefault(ids[kind], self._committed(ids[kind]))
        try:
            reservation = self.ledger.reserve(amounts, limits, now)
        except BudgetExceeded:
            self._alert(claims.sub, ids, limits)  # gossip may have pushed it past a line
            raise
        self.on_change()
        return Ticket(reservation, limits, ids, est)

    def settle(self, ex: Exchange) -> None:
        ticket = ex.ticket
        if not isinstance(ticket, Ticket):
            return
        usage = ex.usage
        used = usage.total_tokens if usage else 0
        cost = 0
        if usage and ex.served is not None:
            cost = round(ex.served.cost_usd(usage.prompt_tokens, usage.completion_tokens) * MICRO)
        actual = {
            cid: {"req": 1, "preq": 1, "tpm": used, "tok": used, "usd": cost}[kind]
            for kind, cid in ticket.ids.items()
        }
        self.ledger.settle(ticket.reservation, actual)
        self.on_change()
        if ex.claims is not None:
            self._alert(ex.claims.sub, ticket.ids, ticket.limits)

    def _committed(self, cid: str) -> int:
        return self.ledger.value(cid) - self.ledger.held(cid)

    def _alert(self, key_id: str, ids: dict[str, str], limits: dict[str, int]) -> None:
        """Report each alert line once per node, when this node first sees usage past it.

        Usage may pass a line by this node's settle or by a peer's gossip (then no
        settle here crosses it), so the lines are checked between the highest usage
        already checked and now. Every node that sees a line reports it;
        ``Nats-Msg-Id`` makes BH_ALERTS keep one message per counter and line.
        """
        if self.alerts is None:
            return
        for kind in ("tok", "usd"):
            cid = ids.get(kind)
            if cid is None or cid not in limits:
                continue
            now_used = self._committed(cid)
            checked = self._alert_checked.get(cid, now_used)
            if now_used <= checked:
                continue
            self._alert_checked[cid] = now_used
            for threshold in crossed_thresholds(checked, now_used, limits[cid]):
                self.alerts.budget_alert(key_id, cid, threshold, now_used, limits[cid])

    def forget(self, counter_ids: list[str]) -> None:
        """Counters the ledger dropped (their window ended): drop their alert marks too."""
        for cid in counter_ids:
            self._alert_checked.pop(cid, None)

    def usage(self, claims: Claims) -> dict[str, dict[str, int | None]]:
        """This node's merged view of a key's counters (for ``GET /v1/gatekeeper/usage``)."""
        ids, limits = plan_counters(claims, self.clock())
        return {
            kind: {
                "used": self.ledger.value(cid) - self.ledger.held(cid),
                "in_flight": self.ledger.held(cid),
                "limit": limits.get(cid),
            }
            for kind, cid in ids.items()
        }

    def headers(self, ex: Exchange) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers, on successes and on refusals alike."""
        now = self.clock()
        if isinstance(ex.ticket, Ticket):
            ids, limits = ex.ticket.ids, ex.ticket.limits
        elif ex.claims is not None and (ex.claims.rpm is not None or ex.claims.tpm is not None):
            ids, limits = self._plan(ex.claims, now)
        else:
            return {}
        reset = seconds_to_reset("minute", now) or 0.0
        req, tpm = ids.get("req"), ids.get("tpm")
        return ratelimit_headers(
            limit_requests=limits[req] if req else None,
            remaining_requests=self.ledger.remaining(req, limits[req]) if req else 0,
            reset_requests=reset,
            limit_tokens=limits[tpm] if tpm else None,
            remaining_tokens=self.ledger.remaining(tpm, limits[tpm]) if tpm else 0,
            reset_tokens=reset,
        )

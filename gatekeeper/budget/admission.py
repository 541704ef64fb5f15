"""Steps 3–4 — rate limits (rpm, tpm) and budget (tokens, USD) as one reservation.

A request reserves on every counter its key limits: 1 request, and an upper bound of
its tokens — prompt estimate + ``n × max_tokens``, the cap then sent upstream (see
:mod:`~gatekeeper.budget.reserve`) — and of its cost. When the response ends the
reservation is settled to an honest charge (:mod:`~gatekeeper.budget.charge`): the
upstream's usage when believable, else our own count; a request that never reached
an upstream keeps only its request count. Keys in ``strict`` budget mode also hold
their tokens against this node's escrowed share (:mod:`~gatekeeper.budget.strict`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import structlog

from gatekeeper.auth.claims import Claims
from gatekeeper.budget.accounting import charge_exchange
from gatekeeper.budget.accounting_segments import charge_continued
from gatekeeper.budget.charge import Charge
from gatekeeper.budget.decide import crossed_thresholds, ratelimit_headers, retry_after
from gatekeeper.budget.fields import CHAT_ALLOWED, EMBEDDINGS_ALLOWED, check_fields, check_n
from gatekeeper.budget.ledger import BudgetLedger
from gatekeeper.budget.reserve import (
    QuotaTooSmall,
    Reserve,
    choices,
    completion_cap,
    plan_reserve,
    with_cap,
)
from gatekeeper.budget.tickets import (
    MICRO,
    AlertSink,
    BudgetMetrics,
    NeedShare,
    StrictHolds,
    Ticket,
    counter_key,
    plan_counters,
)
from gatekeeper.errors import BudgetExceeded, RateLimited
from gatekeeper.exchange import Exchange
from gatekeeper.routing.matrix import ModelSpec
from gatekeeper.routing.router import estimate_tokens
from gatekeeper.validate import ChatRequest

log = structlog.get_logger("gatekeeper.budget")

__all__ = ["MICRO", "LedgerAdmission", "Ticket", "counter_key", "plan_counters"]


def _nothing() -> None:
    return None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _to_next_minute(now: datetime) -> float:
    """``seconds_to_reset("minute", now)`` without building datetimes (UTC has no
    leap seconds in POSIX time, so every minute starts at a multiple of 60)."""
    return 60.0 - now.timestamp() % 60.0


class LedgerAdmission:
    def __init__(
        self,
        ledger: BudgetLedger,
        *,
        default_max_tokens: int,
        alerts: AlertSink | None = None,
        clock: Callable[[], datetime] = _utcnow,
        on_change: Callable[[], None] | None = None,
        metrics: BudgetMetrics | None = None,
        strict: StrictHolds | None = None,
    ) -> None:
        self.on_change = on_change or _nothing
        self.ledger = ledger
        self.default_max_tokens = default_max_tokens
        self.alerts = alerts
        self.clock = clock
        self.metrics = metrics
        self.strict = strict
        # Per budget counter: the highest usage this node has checked the alert lines
        # against. Set at its first admission here, so a restarted node does not report
        # again the lines that were passed before it started.
        self._alert_checked: dict[str, int] = {}
        self._exhausted: set[str] = set()  # counters this node reported exhausted
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

    # ------------------------------------------------------------------ admit

    def admit(
        self, ex: Exchange, req: ChatRequest | None
    ) -> Ticket | Coroutine[Any, Any, Ticket] | None:
        """Reserve, or raise; a strict key short of escrow returns a coroutine to await."""
        claims = ex.claims
        model = ex.route.model if ex.route is not None else None
        body = req.body if req is not None else (ex.upstream_body or {})
        if req is not None:
            check_n(body)
        if claims is None:
            if req is not None:
                ex.upstream_body = with_cap(body, self._cap(req, model))
            return None
        if claims.budget is not None:
            check_fields(body, CHAT_ALLOWED if req is not None else EMBEDDINGS_ALLOWED)
        strict = self.strict is not None and self.strict.is_strict(claims)
        try:
            return self._admit(ex, req, claims, model, body, strict)
        except NeedShare as short:
            assert self.strict is not None
            return self._admit_after(short, ex, req, claims, model, body)

    async def _admit_after(
        self,
        short: NeedShare,
        ex: Exchange,
        req: ChatRequest | None,
        claims: Claims,
        model: ModelSpec | None,
        body: dict[str, Any],
    ) -> Ticket:
        """Wait (bounded) for an escrow share to arrive, then admit or refuse."""
        assert self.strict is not None
        got = await self.strict.acquire(short.cid, short.limit, short.need)
        try:
            return self._admit(ex, req, claims, model, body, True, final=True)
        except NeedShare:
            raise self._refuse_quota(claims, short.cid, short.limit, self.clock()) from None
        finally:
            if not got:
                log.debug("budget.strict_share_missing", counter=short.cid, need=short.need)

    def _cap(self, req: ChatRequest, model: ModelSpec | None) -> int:
        return completion_cap(
            req.max_tokens, self.default_max_tokens, model.max_output_tokens if model else 0
        )

    def _admit(
        self,
        ex: Exchange,
        req: ChatRequest | None,
        claims: Claims,
        model: ModelSpec | None,
        body: dict[str, Any],
        strict: bool,
        *,
        final: bool = False,
    ) -> Ticket:
        now = self.clock()
        ids, limits = self._plan(claims, now)
        reserve = self._reserve(ex, req, ids, limits, model, claims, now, strict, final)
        if req is not None:
            ex.upstream_body = with_cap(body, reserve.max_tokens)
        prompt, completion, est = reserve.prompt, reserve.completion, reserve.total
        amounts = {
            ids[k]: v for k, v in (("req", 1), ("preq", 1), ("tpm", est), ("tok", est)) if k in ids
        }
        if "usd" in ids:
            worst = model.cost_usd(prompt, completion) if model is not None else 0.0
            amounts[ids["usd"]] = math.ceil(worst * MICRO)
        checked = self._alert_checked
        for kind in ("tok", "usd"):
            cid = ids.get(kind)
            if cid is not None and cid not in checked:
                checked[cid] = self._committed(cid)
        ledger_limits = limits
        held: tuple[tuple[str, int], ...] = ()
        if strict:
            held = self._hold_strict(ids, limits, amounts, claims, now, final)
            # the escrow decides these counters; the ledger only tracks them
            ledger_limits = {c: v for c, v in limits.items() if c not in dict(held)}
        try:
            reservation = self.ledger.reserve(amounts, ledger_limits, now)
        except (BudgetExceeded, RateLimited) as err:
            self._release_strict(held)
            self._refused(claims.sub, ids, limits, amounts, err)
            raise
        self.on_change()
        return Ticket(reservation, limits, ids, est, reserve, body, held)

    def _reserve(
        self,
        ex: Exchange,
        req: ChatRequest | None,
        ids: dict[str, str],
        limits: dict[str, int],
        model: ModelSpec | None,
        claims: Claims,
        now: datetime,
        strict: bool,
        final: bool,
    ) -> Reserve:
        """The reservation: the prompt estimate plus n × the cap, clamped to the budget."""
        if req is None:  # embeddings: the input is the whole cost
            return Reserve(max(1, ex.input_chars // 4), 1, 0)
        estimated = ex.route.prompt_tokens if ex.route is not None else 0
        prompt = estimated or estimate_tokens(req.body["messages"])
        n, cap = choices(req.body), self._cap(req, model)
        per_1k = (model.input_per_1k, model.output_per_1k) if model else (0.0, 0.0)

        def want(kind: str) -> int:  # what a strict node asks its peers for: all of it, uncapped
            if kind == "tok":
                return prompt + n * cap
            return math.ceil(model.cost_usd(prompt, n * cap) * MICRO) if model else 1

        room_tok = self._room(ids, limits, "tok", strict)
        room_usd = self._room(ids, limits, "usd", strict)
        if strict and not final and self.strict is not None:
            for kind in ("tok", "usd"):
                cid = ids.get(kind)
                if cid in limits and self.strict.room(cid) is None:  # no share here yet
                    raise NeedShare(cid, limits[cid], want(kind))
        try:
            return plan_reserve(
                prompt,
                n,
                cap,
                room_tokens=room_tok,
                room_micro_usd=room_usd,
                input_micro_per_token=per_1k[0] * MICRO / 1000,
                output_micro_per_token=per_1k[1] * MICRO / 1000,
            )
        except QuotaTooSmall:
            kind = "tok" if room_tok is not None and (room_tok - prompt) // n < 1 else "usd"
            cid = ids[kind]
            if strict and not final:
                raise NeedShare(cid, limits[cid], want(kind)) from None
            raise self._refuse_quota(claims, cid, limits[cid], now) from None

    def _room(
        self, ids: dict[str, str], limits: dict[str, int], kind: str, strict: bool
    ) -> int | None:
        cid = ids.get(kind)
        if cid is None or cid not in limits:
            return None
        if strict and self.strict is not None:
            room = self.strict.room(cid)
            return 0 if room is None else room
        return max(0, limits[cid] - self.ledger.value(cid))

    def _hold_strict(
        self,
        ids: dict[str, str],
        limits: dict[str, int],
        amounts: dict[str, int],
        claims: Claims,
        now: datetime,
        final: bool,
    ) -> tuple[tuple[str, int], ...]:
        assert self.strict is not None
        held: list[tuple[str, int]] = []
        for kind in ("tok", "usd"):
            cid = ids.get(kind)
            if cid is None or cid not in limits:
                continue
            if not self.strict.hold(cid, limits[cid], amounts[cid]):
                self._release_strict(tuple(held))
                if not final:
                    raise NeedShare(cid, limits[cid], amounts[cid])
                raise self._refuse_quota(claims, cid, limits[cid], now)
            held.append((cid, amounts[cid]))
        return tuple(held)

    def _release_strict(self, held: tuple[tuple[str, int], ...]) -> None:
        for cid, amount in held:
            assert self.strict is not None
            self.strict.settle(cid, amount, 0)

    # ------------------------------------------------------------------ refusals

    def _refuse_quota(self, claims: Claims, cid: str, limit: int, now: datetime) -> BudgetExceeded:
        """429 insufficient_quota: not even a minimal request fits what the key has left."""
        self._report_exhausted(claims.sub, cid, limit)
        if self.metrics is not None:
            self.metrics.refused("budget")
        return BudgetExceeded(
            f"The budget of key {counter_key(claims.sub)} cannot fit even a minimal request "
            f"(limit {limit}); please try again after the budget resets.",
            retry_after=retry_after(cid, now),
        )

    def _refused(
        self,
        key_id: str,
        ids: dict[str, str],
        limits: dict[str, int],
        amounts: dict[str, int],
        err: BudgetExceeded | RateLimited,
    ) -> None:
        if self.metrics is not None:
            self.metrics.refused("budget" if isinstance(err, BudgetExceeded) else "rate")
        if isinstance(err, BudgetExceeded):
            for kind in ("tok", "usd"):
                cid = ids.get(kind)
                if cid in limits and self.ledger.value(cid) + amounts[cid] > limits[cid]:
                    self._report_exhausted(key_id, cid, limits[cid])
        self._alert(key_id, ids, limits)  # gossip may have pushed it past a line

    def _report_exhausted(self, key_id: str, cid: str, limit: int) -> None:
        """``budget_exhausted``, once per counter (and so per period) from this node;
        BH_ALERTS keeps one per counter cluster-wide (``Nats-Msg-Id``)."""
        if self.alerts is None or cid in self._exhausted:
            return
        self._exhausted.add(cid)
        self.alerts.budget_exhausted(key_id, cid, self._committed(cid), limit)

    # ------------------------------------------------------------------ settle

    def charge(self, ex: Exchange) -> None:
        """Decide the exchange's charge once: ``ex.usage`` and ``ex.usage_source``."""
        ticket = ex.ticket
        if not isinstance(ticket, Ticket) or ex.usage_source or ex.served is None:
            return
        result: Charge | None
        if ex.resumed is not None and ex.resumed.continued:  # several upstreams streamed
            result = charge_continued(ex.resumed, ex.ended, ticket.reserve.completion)
        else:
            result = charge_exchange(
                ex.served,
                ex.endpoint,
                ticket.body,
                ex.reply,
                ex.stream_state,
                ex.ended,
                ticket.reserve.completion,
            )
        if result is None:
            return
        ex.usage, ex.usage_source = result.usage(), result.source
        if result.suspicious:
            log.warning(
                "budget.usage_suspicious",
                request_id=ex.request_id,
                provider=ex.served.provider,
                model=ex.served.name,
                charged_prompt=result.prompt,
                charged_completion=result.completion,
            )
        if self.metrics is not None:
            self.metrics.charged(result.source, result.total, result.suspicious)

    def settle(self, ex: Exchange) -> None:
        ticket = ex.ticket
        if not isinstance(ticket, Ticket):
            return
        self.charge(ex)
        usage = ex.usage if ex.usage_source else None
        used = usage.total_tokens if usage else 0
        cost = 0
        if usage and ex.resumed is not None and ex.resumed.continued:
            cost = round(ex.resumed.cost_usd * MICRO)  # each segment at its model's price
        elif usage and ex.served is not None:
            cost = round(ex.served.cost_usd(usage.prompt_tokens, usage.completion_tokens) * MICRO)
        per_kind = {"req": 1, "preq": 1, "tpm": used, "tok": used, "usd": cost}
        actual = {cid: per_kind[kind] for kind, cid in ticket.ids.items()}
        self.ledger.settle(ticket.reservation, actual)
        if self.strict is not None:
            for cid, amount in ticket.strict:
                self.strict.settle(cid, amount, actual[cid])
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
            self._exhausted.discard(cid)

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
        reset = _to_next_minute(now)
        req, tpm = ids.get("req"), ids.get("tpm")
        return ratelimit_headers(
            limit_requests=limits[req] if req else None,
            remaining_requests=self.ledger.remaining(req, limits[req]) if req else 0,
            reset_requests=reset,
            limit_tokens=limits[tpm] if tpm else None,
            remaining_tokens=self.ledger.remaining(tpm, limits[tpm]) if tpm else 0,
            reset_tokens=reset,
        )

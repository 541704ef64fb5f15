"""Steps 3–4 (``budget.LedgerAdmission``) against an in-memory ledger and alert sink.

No NATS: the CRDT ledger is a plain value here, the clock is fixed, and alerts are
recorded. What is checked: one atomic reservation per request, refusals in the
caller's shape, the charge settled into the counters, the completion cap sent upstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from gatekeeper.auth import paserk
from gatekeeper.auth.claims import Claims
from gatekeeper.auth.keyfiles import mint
from gatekeeper.auth.verifier import Keyring, TokenVerifier
from gatekeeper.budget.admission import LedgerAdmission, Ticket
from gatekeeper.budget.ledger import BudgetLedger
from gatekeeper.errors import BudgetExceeded, RateLimited
from gatekeeper.exchange import Exchange
from gatekeeper.providers.base import Reply, Usage
from gatekeeper.routing.decision import RouteDecision
from gatekeeper.routing.matrix import ModelSpec
from gatekeeper.validate import validate_chat

SECRET = paserk.generate_secret_key()
VERIFIER = TokenVerifier(Keyring([paserk.public_key_of(SECRET)]))
NOW = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
MODEL = ModelSpec("small", "up", "small-1", "chat", 0.001, 0.002, 8192, 1024)
BODY = {"model": "small", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 50}


def claims(**limits: Any) -> Claims:
    return VERIFIER.verify_token(mint(SECRET, "acme", **limits))


@dataclass
class Alerts:
    seen: list[tuple[str, ...]] = field(default_factory=list)

    def budget_alert(
        self, key_id: str, counter: str, threshold: float, value: int, limit: int
    ) -> None:
        self.seen.append(("alert", counter, str(threshold)))

    def budget_exhausted(self, key_id: str, counter: str, value: int, limit: int) -> None:
        self.seen.append(("exhausted", counter))


def admission(ledger: BudgetLedger | None = None) -> LedgerAdmission:
    return LedgerAdmission(
        ledger if ledger is not None else BudgetLedger("n1"),
        default_max_tokens=256,
        alerts=Alerts(),
        clock=lambda: NOW,
    )


def exchange(who: Claims | None, rid: str = "req_1") -> Exchange:
    ex = Exchange(rid, 0.0, "chat", claims=who)
    ex.route = RouteDecision(MODEL, (MODEL,), "requested", "requested model small")
    return ex


def serve(ex: Exchange, usage: Usage) -> None:
    """What the pipeline puts on the exchange after the upstream answered."""
    ex.served, ex.usage = MODEL, usage
    ex.reply = Reply(b"{}", usage)


class TestAdmit:
    def test_a_reservation_is_a_ticket_and_the_cap_goes_upstream(self) -> None:
        a, ex = admission(), exchange(claims(budget_tokens=10_000))
        ticket = a.admit(ex, validate_chat(BODY))
        assert isinstance(ticket, Ticket)
        assert ex.upstream_body is not None and ex.upstream_body["max_tokens"] == 50

    def test_requests_past_rpm_are_refused_with_retry_after(self) -> None:
        a, who = admission(), claims(rpm=2)
        for i in range(2):
            ex = exchange(who, f"req_{i}")
            ex.ticket = a.admit(ex, validate_chat(BODY))
            serve(ex, Usage(1, 1))
            a.settle(ex)
        with pytest.raises(RateLimited) as caught:
            a.admit(exchange(who, "req_3"), validate_chat(BODY))
        assert caught.value.status == 429
        assert "retry-after" in caught.value.headers

    def test_a_spent_budget_refuses_the_next_request(self) -> None:
        a, who = admission(), claims(budget_tokens=20)
        ex = exchange(who)
        ex.ticket = a.admit(ex, validate_chat({**BODY, "max_tokens": 10}))
        serve(ex, Usage(15, 5))
        a.settle(ex)
        with pytest.raises(BudgetExceeded) as caught:
            a.admit(exchange(who, "req_2"), validate_chat(BODY))
        assert caught.value.status == 429
        assert a.alerts.seen[-1][0] == "exhausted"  # type: ignore[union-attr]

    def test_an_unauthenticated_exchange_reserves_nothing(self) -> None:
        ex = exchange(None)
        assert admission().admit(ex, validate_chat(BODY)) is None
        assert ex.upstream_body is not None and ex.upstream_body["max_tokens"] == 50


class TestSettle:
    def test_the_upstream_usage_is_what_the_counters_keep(self) -> None:
        ledger = BudgetLedger("n1")
        a, ex = admission(ledger), exchange(claims(budget_tokens=10_000))
        ex.ticket = ticket = a.admit(ex, validate_chat(BODY))
        assert isinstance(ticket, Ticket)
        serve(ex, Usage(7, 5))
        a.settle(ex)
        tok = ticket.ids["tok"]
        assert (ledger.value(tok), ledger.held(tok)) == (12, 0)
        assert (ex.usage, ex.usage_source) == (Usage(7, 5), "upstream")

    def test_a_failed_request_gives_its_reservation_back(self) -> None:
        ledger = BudgetLedger("n1")
        a, ex = admission(ledger), exchange(claims(budget_tokens=10_000))
        ex.ticket = ticket = a.admit(ex, validate_chat(BODY))
        assert isinstance(ticket, Ticket)
        a.settle(ex)  # never served: nothing charged
        assert (ledger.value(ticket.ids["tok"]), ledger.held(ticket.ids["tok"])) == (0, 0)

    def test_the_ratelimit_headers_follow_the_counters(self) -> None:
        a, ex = admission(), exchange(claims(rpm=5))
        ex.ticket = a.admit(ex, validate_chat(BODY))
        headers = a.headers(ex)
        assert headers["x-ratelimit-limit-requests"] == "5"
        assert headers["x-ratelimit-remaining-requests"] == "4"
        assert headers["x-ratelimit-reset-requests"] == "1m0s"  # NOW is on a minute


class TestMinuteReset:
    @pytest.mark.parametrize(
        "now",
        [
            datetime(2026, 12, 2, 10, 30, tzinfo=UTC),
            datetime(2026, 12, 2, 10, 30, 59, 999_999, tzinfo=UTC),
            datetime(2026, 12, 31, 23, 59, 0, 1, tzinfo=UTC),
            datetime(2028, 2, 29, 0, 0, 17, 250_000, tzinfo=UTC),
        ],
    )
    def test_the_epoch_shortcut_is_seconds_to_reset(self, now: datetime) -> None:
        from gatekeeper.budget.admission import _to_next_minute
        from gatekeeper.budget.windows import seconds_to_reset

        assert _to_next_minute(now) == pytest.approx(seconds_to_reset("minute", now), abs=1e-5)

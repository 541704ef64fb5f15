"""Pure budget decisions, errors, OpenAI rate-limit headers, alerts and UTC windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gatekeeper.budget.decide import (
    NO_RESET_RETRY_AFTER,
    Decision,
    Denial,
    crossed_thresholds,
    decide,
    denial_error,
    fits,
    format_reset,
    ratelimit_headers,
)
from gatekeeper.budget.windows import (
    CounterKey,
    counter_id,
    parse_counter_id,
    seconds_to_reset,
    window_end,
    window_id,
    window_reset,
)
from gatekeeper.errors import BudgetExceeded, RateLimited

NOW = datetime(2026, 11, 22, 14, 5, 30, tzinfo=UTC)


class TestDecide:
    def test_admits_when_everything_fits(self) -> None:
        """view + reserved + cost <= limit admits, and says what is left afterwards."""
        assert decide(500, 200, 300, 1000) == Decision(True, 0, "within_limit")

    def test_refuses_a_cost_that_would_exceed(self) -> None:
        """Refusal reports what is left now."""
        assert decide(500, 200, 301, 1000) == Decision(False, 300, "would_exceed_limit")

    def test_fits_is_the_same_rule_without_allocating(self) -> None:
        """The ledger's hot-path predicate agrees with ``decide`` at the boundary."""
        assert fits(500, 200, 300, 1000) and not fits(500, 200, 301, 1000)

    def test_refuses_when_the_limit_is_already_reached(self) -> None:
        """Gossip can push the view past the limit; remaining never goes negative."""
        assert decide(1200, 0, 0, 1000) == Decision(False, 0, "limit_reached")


class TestDenialError:
    def test_rate_denial_is_rate_limited_with_seconds_to_the_minute(self) -> None:
        """requests-per-minute refusal → 429 rate_limit_exceeded, Retry-After to :00."""
        err = denial_error([Denial("req.k1.min202611221405", 60, 1, 60)], NOW)
        assert isinstance(err, RateLimited)
        assert (err.code, err.retry_after, err.headers["retry-after"]) == (
            "rate_limit_exceeded",
            30.0,
            "30",
        )
        assert "Limit 60, Used 60, Requested 1" in err.message

    def test_budget_denial_is_insufficient_quota_until_the_month_rolls(self) -> None:
        """A monthly spend refusal waits for 1 December 00:00 UTC."""
        err = denial_error([Denial("usd.k1.m202611", 5, 9, 10)], NOW)
        assert isinstance(err, BudgetExceeded)
        assert err.code == "insufficient_quota"
        assert err.retry_after == (datetime(2026, 12, 1, tzinfo=UTC) - NOW).total_seconds()

    def test_budget_wins_and_the_longest_wait_is_reported(self) -> None:
        """Of several refusals, the budget class wins and its longest reset applies."""
        denials = [
            Denial("req.k1.min202611221405", 1, 1, 1),
            Denial("tok.k1.d20261122", 1, 1, 1),
            Denial("usd.k1.m202611", 1, 1, 1),
        ]
        err = denial_error(denials, NOW)
        assert isinstance(err, BudgetExceeded)
        assert "m202611" in err.message

    def test_total_budget_never_resets(self) -> None:
        """A lifetime budget carries a fixed, long Retry-After."""
        err = denial_error([Denial("tok.k1.total", 1, 1, 1)], NOW)
        assert err.retry_after == NO_RESET_RETRY_AFTER

    def test_needs_a_denial(self) -> None:
        """An empty list is a programming error."""
        with pytest.raises(ValueError):
            denial_error([], NOW)


class TestFormatReset:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0, "0s"),
            (-3, "0s"),
            (0.0004, "1ms"),
            (0.02, "20ms"),
            (1, "1s"),
            (59.5, "59.5s"),
            (60, "1m0s"),
            (360, "6m0s"),
            (3723.25, "1h2m3.25s"),
        ],
    )
    def test_writes_durations_like_openai(self, seconds: float, text: str) -> None:
        """Go-style durations, as in OpenAI's ``x-ratelimit-reset-*`` headers."""
        assert format_reset(seconds) == text

    def test_rounds_up_to_the_millisecond(self) -> None:
        """A client waiting the advertised time never retries early."""
        assert format_reset(1.0001) == "1.001s"


class TestRatelimitHeaders:
    def test_writes_both_families(self) -> None:
        """Requests and tokens limits, remaining counts and resets, as OpenAI names them."""
        headers = ratelimit_headers(
            limit_requests=60,
            remaining_requests=59,
            reset_requests=1,
            limit_tokens=150_000,
            remaining_tokens=149_984,
            reset_tokens=0.006,
        )
        assert headers == {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-tokens": "6ms",
        }

    def test_omits_a_family_without_a_limit_and_clamps_remaining(self) -> None:
        """No token limit → no token headers; remaining is never negative."""
        headers = ratelimit_headers(limit_requests=5, remaining_requests=-2, reset_requests=30)
        assert headers == {
            "x-ratelimit-limit-requests": "5",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "30s",
        }


class TestCrossedThresholds:
    def test_reports_each_line_crossed(self) -> None:
        """Going from 70 % to 100 % crosses both the 80 % and 100 % lines."""
        assert crossed_thresholds(700, 1000, 1000) == [0.8, 1.0]

    def test_a_line_fires_only_on_the_change_that_reaches_it(self) -> None:
        """Starting on or above a line does not fire it again."""
        assert crossed_thresholds(800, 900, 1000) == []
        assert crossed_thresholds(799, 800, 1000) == [0.8]

    def test_no_alerts_without_growth_or_limit(self) -> None:
        """Shrinking usage or a zero limit never alerts."""
        assert crossed_thresholds(900, 100, 1000) == []
        assert crossed_thresholds(0, 10, 0) == []


class TestWindows:
    @pytest.mark.parametrize(
        ("period", "wid", "reset"),
        [
            ("minute", "min202611221405", datetime(2026, 11, 22, 14, 6, tzinfo=UTC)),
            ("day", "d20261122", datetime(2026, 11, 23, tzinfo=UTC)),
            ("month", "m202611", datetime(2026, 12, 1, tzinfo=UTC)),
            ("total", "total", None),
        ],
    )
    def test_ids_and_resets(self, period: str, wid: str, reset: datetime | None) -> None:
        """Each period's window id and roll-over time, in UTC; the id parses back to its end."""
        assert window_id(period, NOW) == wid  # type: ignore[arg-type]
        assert window_reset(period, NOW) == reset  # type: ignore[arg-type]
        assert window_end(wid) == reset

    def test_december_rolls_into_the_next_year(self) -> None:
        """The month after December is January of the next year."""
        late = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
        assert window_reset("month", late) == datetime(2027, 1, 1, tzinfo=UTC)
        assert window_reset("day", late) == datetime(2027, 1, 1, tzinfo=UTC)
        assert window_end("m202612") == datetime(2027, 1, 1, tzinfo=UTC)

    def test_other_timezones_are_converted_to_utc(self) -> None:
        """01:30 on the 23rd in UTC+3 is still the 22nd in UTC."""
        local = datetime(2026, 11, 23, 1, 30, tzinfo=timezone(timedelta(hours=3)))
        assert window_id("day", local) == "d20261122"

    def test_naive_datetimes_are_refused(self) -> None:
        """A naive time would silently pick the wrong window."""
        with pytest.raises(ValueError):
            window_id("day", datetime(2026, 11, 22))

    def test_seconds_to_reset(self) -> None:
        """Half a minute is left in 14:05 at 14:05:30."""
        assert seconds_to_reset("minute", NOW) == 30.0
        assert seconds_to_reset("total", NOW) is None


class TestCounterIds:
    def test_format_and_round_trip(self) -> None:
        """``kind.key_id.window`` parses back into its parts."""
        cid = counter_id("tok", "key_7Hq2-x=", "d20261122")
        assert cid == "tok.key_7Hq2-x=.d20261122"
        assert parse_counter_id(cid) == CounterKey("tok", "key_7Hq2-x=", "d20261122")
        assert str(parse_counter_id(cid)) == cid

    @pytest.mark.parametrize(
        "bad",
        ["tok.key1", "eur.key1.total", "tok.key.1.total", "tok.key:1.total", "tok.key1.d2026"],
    )
    def test_malformed_ids_are_refused(self, bad: str) -> None:
        """Only KV-key-safe parts, a known kind and a real window id are accepted."""
        with pytest.raises(ValueError):
            parse_counter_id(bad)

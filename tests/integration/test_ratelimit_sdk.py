"""Rate limits and budgets as the official OpenAI SDK sees them.

The gateway answers a refused request the way OpenAI does: 429 with
``code = rate_limit_exceeded`` (wait for the minute to roll) or ``insufficient_quota``
(the budget is spent), a ``retry-after`` header in seconds, and ``x-ratelimit-*``
headers on every admitted response. The SDK's own retry logic acts on them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import openai
import pytest

from gatekeeper.budget.decide import NO_RESET_RETRY_AFTER
from gatekeeper.budget.windows import seconds_to_reset
from gatekeeper.routing.router import estimate_tokens
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer

MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]
MAX_TOKENS = 20
COST = estimate_tokens(MESSAGES) + MAX_TOKENS  # reserved per request, and used: 30
_GO_DURATION = re.compile(r"(\d+m)?(\d+(\.\d+)?s|\d+ms)")


@pytest.fixture
def sdk(gateway: GatewayProcess) -> Iterator[Callable[..., openai.OpenAI]]:
    """``sdk(token, **options)``: an OpenAI client on the gateway, closed after the test."""
    made: list[openai.OpenAI] = []

    def make(token: str, **kw: Any) -> openai.OpenAI:
        made.append(
            openai.OpenAI(
                base_url=gateway.base_url, api_key=token, **{"max_retries": 0, "timeout": 20, **kw}
            )
        )
        return made[-1]

    yield make
    for c in made:
        c.close()


def ask(c: openai.OpenAI) -> Any:
    """One chat completion, raw, so its headers can be read."""
    return c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=MAX_TOKENS
    )


@pytest.fixture
def exact_usage(fake_openai: FakeOpenAI) -> None:
    """The upstream reports exactly what the gateway reserved: 10 + 20 tokens."""
    fake_openai.script.default = Behavior(
        prompt_tokens=COST - MAX_TOKENS, completion_tokens=MAX_TOKENS
    )


@pytest.fixture
def fresh_minute() -> None:
    """Start well inside a UTC minute, so a test's requests share one rpm/tpm window."""
    left = seconds_to_reset("minute", datetime.now(UTC)) or 0.0
    if left < 10:
        time.sleep(left + 0.05)


def seconds_left_in_minute() -> float:
    return seconds_to_reset("minute", datetime.now(UTC)) or 0.0


class Recorder:
    """Every HTTP response the SDK receives, as (status, retry-after header)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str | None]] = []

    def __call__(self, response: Any) -> None:  # the SDK's own httpx-style Response
        self.seen.append((response.status_code, response.headers.get("retry-after")))

    def http_client(self) -> Any:
        return openai.DefaultHttpxClient(event_hooks={"response": [self]})


@pytest.mark.usefixtures("exact_usage", "fresh_minute")
class TestRequestsPerMinute:
    def test_headers_then_rate_limit_error_on_the_fourth_request(
        self, sdk: Callable[..., openai.OpenAI], issuer: Issuer
    ) -> None:
        """rpm=3: three answers count down x-ratelimit-remaining-requests, the 4th is a 429."""
        c = sdk(issuer.token(rpm=3))
        for remaining in (2, 1, 0):
            headers = ask(c).headers
            assert headers["x-ratelimit-limit-requests"] == "3"
            assert headers["x-ratelimit-remaining-requests"] == str(remaining)
            assert _GO_DURATION.fullmatch(headers["x-ratelimit-reset-requests"])
            assert "x-ratelimit-limit-tokens" not in headers  # no tpm on this key

        with pytest.raises(openai.RateLimitError) as info:
            ask(c)
        err = info.value
        assert err.status_code == 429 and err.code == "rate_limit_exceeded"
        retry_after = int(err.response.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert abs(retry_after - seconds_left_in_minute()) <= 2  # until the minute rolls

    def test_tokens_per_minute(self, sdk: Callable[..., openai.OpenAI], issuer: Issuer) -> None:
        """tpm=100 and 30-token requests: remaining tokens 70, 40, 10, then a 429."""
        c = sdk(issuer.token(tpm=100))
        for remaining in (70, 40, 10):
            headers = ask(c).headers
            assert headers["x-ratelimit-limit-tokens"] == "100"
            assert headers["x-ratelimit-remaining-tokens"] == str(remaining)
            assert _GO_DURATION.fullmatch(headers["x-ratelimit-reset-tokens"])
        with pytest.raises(openai.RateLimitError) as info:
            ask(c)
        assert info.value.code == "rate_limit_exceeded"
        assert 1 <= int(info.value.response.headers["retry-after"]) <= 60

    def test_sdk_retries_after_the_retry_after_it_was_given(
        self, sdk: Callable[..., openai.OpenAI], issuer: Issuer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """max_retries=1: the SDK plans its wait from retry-after, retries once, then raises.

        The wait itself (up to a minute) is shortened to 0.2 s; what is checked is
        that the SDK chose the server's retry-after over its own 0.5–8 s backoff.
        """
        recorder = Recorder()
        c = sdk(issuer.token(rpm=1), max_retries=1, http_client=recorder.http_client())
        planned: list[float] = []
        sdk_wait = c._calculate_retry_timeout

        def shortened(*args: Any, **kw: Any) -> float:
            planned.append(sdk_wait(*args, **kw))
            return 0.2

        monkeypatch.setattr(c, "_calculate_retry_timeout", shortened)
        ask(c)
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as info:
            ask(c)
        elapsed = time.monotonic() - started

        assert info.value.code == "rate_limit_exceeded"
        assert [status for status, _ in recorder.seen] == [200, 429, 429]  # one retry
        first_retry_after = recorder.seen[1][1]
        assert first_retry_after is not None
        assert planned == [float(first_retry_after)]
        assert elapsed >= 0.2
        print(f"\nSDK planned a {planned[0]:.0f}s wait from retry-after, retried once, raised")


@pytest.mark.usefixtures("exact_usage")
class TestBudget:
    def test_exhausted_budget_is_insufficient_quota_and_not_retried(
        self, sdk: Callable[..., openai.OpenAI], issuer: Issuer
    ) -> None:
        """A spent budget → RateLimitError(insufficient_quota); retry-after too long to retry."""
        recorder = Recorder()
        c = sdk(
            issuer.token(budget_tokens=2 * COST, budget_period="total"),
            max_retries=2,
            http_client=recorder.http_client(),
        )
        ask(c)
        ask(c)
        with pytest.raises(openai.RateLimitError) as info:
            ask(c)
        err = info.value
        assert err.status_code == 429 and err.code == "insufficient_quota"
        assert int(err.response.headers["retry-after"]) == NO_RESET_RETRY_AFTER
        # A total budget never resets: the SDK sees a day-long retry-after and gives up.
        assert [status for status, _ in recorder.seen] == [200, 200, 429]

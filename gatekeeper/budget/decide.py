"""Pure budget and rate-limit decisions: values in, values (or errors) out.

``decide`` says whether one counter admits a cost; ``denial_error`` turns the
counters that refused into the one error the client sees; ``ratelimit_headers``
and ``format_reset`` speak OpenAI's ``x-ratelimit-*`` dialect; and
``crossed_thresholds`` finds the 80 % / 100 % alert lines a change crossed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from gatekeeper.budget.windows import RATE_KINDS, parse_counter_id, window_end
from gatekeeper.errors import BudgetExceeded, RateLimited

NO_RESET_RETRY_AFTER = 86_400.0
"""Retry-After (seconds) for a ``total`` budget, which never resets by itself."""

_DESCRIBE = {
    "req": "requests per min (RPM)",
    "tpm": "tokens per min (TPM)",
    "tok": "token budget",
    "usd": "spend budget (micro-USD)",
    "pass": "Privacy Passes issued",
}


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a cost is admitted against one counter.

    ``remaining`` is what is left *after* this cost when admitted, and what is
    left now when refused (never negative).
    """

    admitted: bool
    remaining: int
    reason: str  # "within_limit" | "would_exceed_limit" | "limit_reached"


def fits(view: int, reserved: int, cost: int, limit: int) -> bool:
    """The admission rule itself: ``view + reserved + cost <= limit`` (hot path, no allocation)."""
    return view + reserved + cost <= limit


def decide(view: int, reserved: int, cost: int, limit: int) -> Decision:
    """Admit ``cost`` iff ``view + reserved + cost <= limit``.

    ``view`` is the merged usage this node knows of (its own exactly, other
    nodes' as last gossiped); ``reserved`` is what this node holds in flight
    that ``view`` does not yet include.
    """
    used = view + reserved
    if fits(view, reserved, cost, limit):
        return Decision(True, limit - used - cost, "within_limit")
    if used >= limit:
        return Decision(False, 0, "limit_reached")
    return Decision(False, limit - used, "would_exceed_limit")


@dataclass(frozen=True, slots=True)
class Denial:
    """One counter that refused a reservation, with the numbers that made it refuse."""

    counter_id: str
    used: int
    cost: int
    limit: int


def retry_after(counter_id: str, now: datetime) -> float:
    """Seconds from ``now`` until ``counter_id``'s window rolls over."""
    end = window_end(parse_counter_id(counter_id).window_id)
    if end is None:
        return NO_RESET_RETRY_AFTER
    return max(0.0, (end - now).total_seconds())


def _message(denial: Denial, wait: float) -> str:
    key = parse_counter_id(denial.counter_id)
    what = _DESCRIBE[key.kind]
    numbers = f"Limit {denial.limit}, Used {denial.used}, Requested {denial.cost}"
    if key.kind in RATE_KINDS:
        head = f"Rate limit reached for {what} on key {key.key_id}"
    else:
        head = f"The {what} of key {key.key_id} is exhausted for window {key.window_id}"
    return f"{head}: {numbers}. Please try again in {format_reset(wait)}."


def denial_error(denials: Sequence[Denial], now: datetime) -> RateLimited | BudgetExceeded:
    """The error for a refused reservation.

    A budget refusal (tok/usd) wins over a rate refusal (req/tpm): waiting out
    the minute would not help. Retry-After is the longest wait among the
    refusals of the winning class, since all of them must clear.
    """
    if not denials:
        raise ValueError("denial_error needs at least one denial")
    budget = [d for d in denials if parse_counter_id(d.counter_id).kind not in RATE_KINDS]
    group = budget or list(denials)
    waits = [retry_after(d.counter_id, now) for d in group]
    worst = max(range(len(group)), key=waits.__getitem__)
    message = _message(group[worst], waits[worst])
    if budget:
        return BudgetExceeded(message, retry_after=waits[worst])
    return RateLimited(message, retry_after=waits[worst])


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes ``x-ratelimit-reset-*``: ``20ms``, ``59.5s``, ``6m0s``.

    Go ``time.Duration`` style, rounded *up* to the millisecond so a client
    that waits exactly this long never retries early.
    """
    millis = math.ceil(round(seconds * 1000, 6)) if seconds > 0 else 0
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def ratelimit_headers(
    *,
    limit_requests: int | None = None,
    remaining_requests: int = 0,
    reset_requests: float = 0.0,
    limit_tokens: int | None = None,
    remaining_tokens: int = 0,
    reset_tokens: float = 0.0,
) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers; a family is left out when its limit is None."""
    headers: dict[str, str] = {}
    if limit_requests is not None:
        headers["x-ratelimit-limit-requests"] = str(limit_requests)
        headers["x-ratelimit-remaining-requests"] = str(max(0, remaining_requests))
        headers["x-ratelimit-reset-requests"] = format_reset(reset_requests)
    if limit_tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(limit_tokens)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, remaining_tokens))
        same = limit_requests is not None and reset_tokens == reset_requests  # one window
        headers["x-ratelimit-reset-tokens"] = (
            headers["x-ratelimit-reset-requests"] if same else format_reset(reset_tokens)
        )
    return headers


def crossed_thresholds(
    before: int, after: int, limit: int, thresholds: Sequence[float] = (0.8, 1.0)
) -> list[float]:
    """The alert lines (fractions of ``limit``) that usage crossed going from before to after.

    A line ``t`` is crossed when ``before < t·limit <= after``; each line
    therefore fires once per counter, on the change that reaches it.
    """
    if limit <= 0 or after <= before:
        return []
    return sorted(t for t in thresholds if before < t * limit <= after)

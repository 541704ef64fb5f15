"""Pure failover decisions: backoff, circuit breaker, the final error.

The attempt plan (which models, in which order) is the route's: ``gatekeeper.routing.decision``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from gatekeeper.errors import (
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from gatekeeper.routing.decision import SAME_PROVIDER_RETRIES


@dataclass(frozen=True, slots=True)
class FailoverPolicy:
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 2.0
    retry_after_cap_s: float = 5.0
    same_provider_retries: int = SAME_PROVIDER_RETRIES
    breaker_failures: int = 5
    breaker_reset_s: float = 10.0
    # Upstream statuses that move on to the next provider. 401/403 (the gateway's own
    # provider key is bad) always do; connect errors and timeouts always do.
    retry_statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504, 529})
    # A stream cut after its first chunk is finished by the next provider in the plan,
    # at most this many times per request (0: never; gatekeeper.continuation).
    max_continuations: int = 2


DEFAULT_POLICY = FailoverPolicy()
AUTH_FAILURES = frozenset({401, 403})


def should_fail_over(err: ProviderError, policy: FailoverPolicy = DEFAULT_POLICY) -> bool:
    """Whether an attempt's error moves on to the next provider (pure)."""
    status = err.upstream_status
    if status is None:  # connect error, timeout, stream cut before its first byte
        return err.retryable
    return status in policy.retry_statuses or status in AUTH_FAILURES


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try against one provider, as recorded in the audit trail and events."""

    provider: str
    model: str
    status: int | None
    error: str | None
    ms: float


def next_backoff(
    attempt: int,
    retry_after: float | None,
    policy: FailoverPolicy = DEFAULT_POLICY,
    rand: float | None = None,
) -> float:
    """Exponential backoff with full jitter; an upstream's Retry-After wins, up to a cap."""
    if retry_after is not None:
        return min(retry_after, policy.retry_after_cap_s)
    ceiling = min(policy.backoff_cap_s, policy.backoff_base_s * (2.0 ** max(0, attempt - 1)))
    return ceiling * (random.random() if rand is None else rand)


def final_error(errors: Sequence[ProviderError], attempts: Sequence[Attempt]) -> ProviderError:
    """What the client gets when every attempt failed: names what was tried."""
    reasons = [e.message for e in errors]
    reasons += [
        f"{a.provider}: {a.error}"
        for a in attempts
        if a.status is None and a.error == "breaker open"
    ]
    message = "All upstream attempts failed: " + "; ".join(reasons)
    retry_after = max((e.retry_after or 0.0 for e in errors), default=0.0) or None
    if errors and all(isinstance(e, ProviderTimeout) for e in errors):
        return ProviderTimeout(message, retry_after=retry_after)
    if any(isinstance(e, ProviderUnavailable) for e in errors):
        headers = {"retry-after": str(max(1, round(retry_after)))} if retry_after else None
        return ProviderUnavailable(message, retry_after=retry_after, headers=headers)
    return ProviderError(message)


class Breaker:
    """A per-provider circuit breaker: closed → open after N failures → half-open probe.

    Time is passed in, so the breaker is a pure state machine.
    """

    __slots__ = ("failures", "opened_at", "policy", "probe_at", "probing", "state")

    def __init__(self, policy: FailoverPolicy = DEFAULT_POLICY) -> None:
        self.policy = policy
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False
        self.probe_at = 0.0

    def allow(self, now: float) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and now - self.opened_at >= self.policy.breaker_reset_s:
            self.state = "half_open"
        # A probe that never reported back (cancelled mid-flight) is written off after
        # one reset period; otherwise the breaker would stay half-open for good.
        if self.state == "half_open" and (
            not self.probing or now - self.probe_at >= self.policy.breaker_reset_s
        ):
            self.probing = True
            self.probe_at = now
            return True
        return False

    def success(self) -> str | None:
        """Record a success; returns the new state if it changed."""
        self.failures = 0
        self.probing = False
        if self.state != "closed":
            self.state = "closed"
            return "closed"
        return None

    def release_probe(self) -> None:
        """An attempt ended without a verdict on the provider (the gateway was busy):
        a half-open probe may go again."""
        self.probing = False

    def failure(self, now: float) -> str | None:
        """Record a failure; returns the new state if it changed."""
        self.failures += 1
        self.probing = False
        if self.state == "half_open" or (
            self.state == "closed" and self.failures >= self.policy.breaker_failures
        ):
            self.state = "open"
            self.opened_at = now
            return "open"
        return None

    def force_open(self, now: float) -> None:
        """Open on a peer's word (learned over NATS)."""
        if self.state == "closed":
            self.state = "open"
            self.opened_at = now

"""A provider's concurrency limit learned from its answers: AIMD. Pure: no clock, no I/O.

The configured ``capacity.providers.<name>`` is the ceiling and the starting point.
Every finished upstream attempt is a signal:

- **overloaded** (the upstream answered 429, 503 or 529, or timed out, or, with
  ``latency_s`` set, a successful attempt took longer than that: a unary answer to its
  end, a stream to its first chunk): the limit is multiplied
  by ``backoff`` (never below ``min_in_flight``), at most once per *cool-down*. The
  cool-down is the mean time a slot is held (one round trip of the upstream, at least
  ``MIN_COOLDOWN_S``): the requests already in flight when the first 429 came were sent
  under the old limit, and their 429s say nothing new.
- **fine** (any other answer, including the client's own 4xx and a 500, which is a
  fault, not pushback): the limit grows by ``1 / limit``, one slot per ``limit``
  answers (about one per round trip), but only while the limit is in use (at least
  half of it in flight). A limit nobody presses against learns nothing, so a quiet
  hour does not carry it back to the ceiling untested.

Attempts that never reached the upstream (breaker open, no connection slot) are no
signal at all.

Each node learns from the 429s it is sent. Several nodes in front of one provider
each back off when that provider pushes back, and additive-increase /
multiplicative-decrease converges to a fair share among them without a coordinator
(Chiu & Jain, 1989), so the learned limits add up to what the provider accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MIN_COOLDOWN_S", "OVERLOAD_STATUSES", "Aimd", "Signal", "signal_of"]

OVERLOAD_STATUSES = frozenset({429, 503, 529})  # rate limited, unavailable, Anthropic overloaded
MIN_COOLDOWN_S = 0.05


@dataclass(frozen=True, slots=True)
class Signal:
    overloaded: bool


_OVERLOADED, _FINE = Signal(True), Signal(False)


def signal_of(status: int | None, error: str | None, ms: float, latency_s: float) -> Signal | None:
    """What one finished attempt says about the upstream's room; None: nothing."""
    if status is None:
        # no answer: a timeout says the upstream is slow; no slot or an open breaker, nothing
        return _OVERLOADED if error == "upstream_timeout" else None
    if status in OVERLOAD_STATUSES:
        return _OVERLOADED
    if latency_s > 0 and status < 400 and ms > latency_s * 1000:
        return _OVERLOADED
    return _FINE


class Aimd:
    """One provider's learned limit, between ``floor`` and ``ceiling`` (whole slots)."""

    __slots__ = ("backoff", "ceiling", "decreases", "floor", "last_decrease", "window")

    def __init__(self, ceiling: int, floor: int = 1, backoff: float = 0.5) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError("a learned limit needs 1 <= floor <= ceiling")
        if not 0 < backoff < 1:
            raise ValueError("backoff is a factor between 0 and 1")
        self.ceiling, self.floor, self.backoff = ceiling, floor, backoff
        self.window = float(ceiling)  # the limit, with its fraction of a slot
        self.last_decrease = float("-inf")
        self.decreases = 0

    @property
    def limit(self) -> int:
        return int(self.window)

    def observe(self, signal: Signal, in_flight: int, now: float, hold_s: float) -> int:
        """The limit after one signal; ``in_flight``: slots held when it came."""
        if signal.overloaded:
            if now - self.last_decrease >= max(hold_s, MIN_COOLDOWN_S):
                self.window = max(float(self.floor), self.window * self.backoff)
                self.last_decrease = now
                self.decreases += 1
        elif in_flight * 2 >= self.limit and self.window < self.ceiling:
            self.window = min(float(self.ceiling), self.window + 1.0 / self.limit)
        return self.limit

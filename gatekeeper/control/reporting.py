"""Refused control values: counted every time, reported at a bounded rate.

A flood of forged messages must not become a flood of events or log lines: each
kind has a token bucket (``burst`` at once, then ``per_s``); what the bucket
refuses is counted and named in the next report as ``suppressed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

__all__ = ["RateGate", "Rejections"]

log = structlog.get_logger("gatekeeper.control")

CONFIG_KINDS = frozenset({"issuer", "revocation", "matrix", "node_key"})


@dataclass(slots=True)
class RateGate:
    """A token bucket per name (pure: time is passed in)."""

    burst: float = 10.0
    per_s: float = 1.0
    _tokens: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, name: str, now: float) -> bool:
        tokens, at = self._tokens.get(name, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.per_s)
        if tokens < 1.0:
            self._tokens[name] = (tokens, now)
            return False
        self._tokens[name] = (tokens - 1.0, now)
        return True


class Rejections:
    """Where every refused control value goes: a metric, the log and BH_EVENTS."""

    def __init__(
        self,
        emit: Callable[[dict[str, Any]], None] = lambda event: None,
        count: Callable[[str, str], None] = lambda kind, reason: None,
        *,
        gate: RateGate | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emit = emit
        self.count = count
        self.gate = gate or RateGate()
        self.clock = clock
        self.totals: dict[tuple[str, str], int] = {}
        self._suppressed: dict[str, int] = {}

    def reject(self, kind: str, key: str, reason: str, detail: str = "") -> None:
        """Count one refused value of ``kind`` (issuer, revocation, slot, breaker, ...)."""
        self.totals[(kind, reason)] = self.totals.get((kind, reason), 0) + 1
        self.count(kind, reason)
        if not self.gate.allow(kind, self.clock()):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        suppressed = self._suppressed.pop(kind, 0)
        log.warning(
            "config.rejected" if kind in CONFIG_KINDS else "control.rejected",
            kind=kind,
            key=key[:200],
            reason=reason,
            suppressed=suppressed,
        )
        self.emit(
            {
                "kind": kind,
                "key": key[:200],
                "reason": reason,
                "error": f"{reason}: {detail}" if detail else reason,
                "suppressed": suppressed,
            }
        )

    def count_of(self, kind: str, reason: str | None = None) -> int:
        return sum(n for (k, r), n in self.totals.items() if k == kind and reason in (None, r))

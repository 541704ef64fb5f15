"""Provider health as pure values: sliding windows of latency and errors per model.

Time to first token (TTFT) is what a stream's attempt measures (the pool returns a
stream once its first chunk arrived); for a non-streaming attempt the whole answer
is the first token, so its latency counts as its TTFT.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HealthStats:
    count: int
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.999999) - 1))
    return sorted_values[rank]


class HealthWindow:
    """The last ``window_s`` seconds (at most ``max_samples``) of one provider/model."""

    __slots__ = ("max_samples", "samples", "window_s")

    def __init__(self, window_s: float = 60.0, max_samples: int = 1024) -> None:
        self.window_s = window_s
        self.max_samples = max_samples
        self.samples: collections.deque[tuple[float, float, bool]] = collections.deque(
            maxlen=max_samples
        )

    def add(self, now: float, ms: float, ok: bool) -> None:
        self.samples.append((now, ms, ok))

    def stats(self, now: float) -> HealthStats:
        cutoff = now - self.window_s
        while self.samples and self.samples[0][0] < cutoff:
            self.samples.popleft()
        latencies = sorted(ms for _, ms, ok in self.samples if ok)
        errors = sum(1 for _, _, ok in self.samples if not ok)
        return HealthStats(
            len(self.samples),
            errors,
            round(percentile(latencies, 0.5), 3),
            round(percentile(latencies, 0.99), 3),
        )


class HealthBook:
    """All windows of one node, keyed by (provider, model)."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self.windows: dict[tuple[str, str], HealthWindow] = {}

    def record(self, provider: str, model: str, now: float, ms: float, ok: bool) -> None:
        key = (provider, model)
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = HealthWindow(self.window_s)
        window.add(now, ms, ok)

    def snapshot(self, now: float) -> dict[str, dict[str, HealthStats]]:
        """provider → model → stats, for the windows that still hold samples."""
        out: dict[str, dict[str, HealthStats]] = {}
        for (provider, model), window in self.windows.items():
            stats = window.stats(now)
            if stats.count:
                out.setdefault(provider, {})[model] = stats
        return out


def latency_view(
    reports: Iterable[Mapping[str, Mapping[str, float | int]]], max_error_rate: float = 1.0
) -> dict[str, float]:
    """model → p99 TTFT in seconds across nodes' reports (the worst node counts).

    A model failing more than ``max_error_rate`` of its attempts on any node is left
    out (unknown health ranks last), so a fast-failing model never looks "fast".
    """
    view: dict[str, float] = {}
    failing: set[str] = set()
    for report in reports:
        for model, stats in report.items():
            count, errors = stats.get("count", 0), stats.get("errors", 0)
            if not count:
                continue
            if errors >= count or errors / count > max_error_rate:
                failing.add(model)
                continue
            p99 = float(stats.get("p99_ms", 0.0)) / 1000
            view[model] = max(view.get(model, 0.0), p99)
    for model in failing:
        view.pop(model, None)
    return view


def sla_breaches(
    provider: str,
    by_model: Mapping[str, HealthStats],
    *,
    p99_ms: float,
    error_rate: float,
    min_count: int = 20,
) -> list[dict[str, object]]:
    """The SLA breaches in one provider's stats (pure): p99 or error rate over a limit."""
    out: list[dict[str, object]] = []
    for model, s in by_model.items():
        if s.count < min_count:
            continue
        if s.p99_ms > p99_ms:
            out.append(
                {
                    "provider": provider,
                    "model": model,
                    "metric": "p99_ms",
                    "value": s.p99_ms,
                    "limit": p99_ms,
                }
            )
        if s.error_rate > error_rate:
            out.append(
                {
                    "provider": provider,
                    "model": model,
                    "metric": "error_rate",
                    "value": round(s.error_rate, 4),
                    "limit": error_rate,
                }
            )
    return out

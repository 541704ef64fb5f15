"""Metric updates off the hot path, and label values with a bound.

A request adds into plain dicts (BENCHMARKS.md has the cost); ``flush`` moves the sums into
the prometheus_client instruments, whose updates cost more (a lock, and an mmap
write in multiprocess mode).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter, Histogram

OTHER = "_other"  # the label value past a label's limit


class LabelLimit:
    """The first ``limit`` distinct values pass as they are; every later one is ``_other``."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        return OTHER


class BufferedCounter:
    """Adds into a dict on the hot path; ``flush`` moves the sums into the counter."""

    __slots__ = ("children", "metric", "pending")

    def __init__(self, metric: Counter) -> None:
        self.metric = metric
        self.pending: dict[tuple[str, ...], float] = {}
        self.children: dict[tuple[str, ...], Counter] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self.pending[labels] = self.pending.get(labels, 0.0) + amount

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for labels, amount in pending.items():
            child = self.children.get(labels)
            if child is None:  # an instrument without labels takes no labels() call
                child = self.metric.labels(*labels) if labels else self.metric
                self.children[labels] = child
            child.inc(amount)


class BufferedHistogram:
    """Counts per bucket in a list on the hot path; ``flush`` adds them to the histogram.

    prometheus_client has no bulk ``observe``, so the flush adds to the child's
    (non-cumulative) bucket values and sum directly; tests/unit/test_metrics.py checks
    the output equals that of plain ``observe`` calls.
    """

    __slots__ = ("bounds", "children", "metric", "pending")

    def __init__(self, metric: Histogram, buckets: Sequence[float]) -> None:
        self.metric = metric
        self.bounds = (*(float(b) for b in buckets), float("inf"))
        self.pending: dict[tuple[str, ...], list[float]] = {}
        self.children: dict[tuple[str, ...], Histogram] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        buf = self.pending.get(labels)
        if buf is None:
            buf = self.pending[labels] = [0.0] * (len(self.bounds) + 1)
        buf[0] += value
        buf[bisect_left(self.bounds, value) + 1] += 1

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for labels, buf in pending.items():
            child = self.children.get(labels)
            if child is None:
                child = self.metric.labels(*labels) if labels else self.metric
                self.children[labels] = child
            child._sum.inc(buf[0])
            for i, n in enumerate(buf[1:]):
                if n:
                    child._buckets[i].inc(n)


def histogram(
    name: str, doc: str, labels: Sequence[str], buckets: Sequence[float], registry: Any
) -> BufferedHistogram:
    return BufferedHistogram(
        Histogram(name, doc, labels, buckets=buckets, registry=registry), buckets
    )


def counter(name: str, doc: str, labels: Sequence[str], registry: Any) -> BufferedCounter:
    return BufferedCounter(Counter(name, doc, labels, registry=registry))

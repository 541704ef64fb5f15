"""bench/report.py's bars against ``--baseline``: medians of per-round ratios (no processes)."""

from __future__ import annotations

import math

from bench.loadgen import Sample, Scenario, StreamResult, Target, WrkResult
from bench.report import DIRECT, GATEWAY, Results, baseline_bars, paired

BASE = "baseline abc1234"


def sample(rps: float, cpu_s: float, p50_ms: float = 1.0) -> Sample:
    requests = int(rps * 10)
    return Sample(WrkResult(requests, 10.0, rps, p50_ms, p50_ms * 3, 0, 0), cpu_s, 0.0, 0, 0.0)


def scenario(name: str, samples: list[Sample]) -> Scenario:
    return Scenario(Target(name, "http://127.0.0.1:1", None, list, 1), 32, samples)


def stream(ttft_ms: float, chunks_per_s: float) -> StreamResult:
    return StreamResult(200, 0, ttft_ms, ttft_ms * 2, int(chunks_per_s), 1.0)


def test_paired_is_the_median_of_the_round_ratios() -> None:
    assert paired([(2.0, 1.0), (3.0, 3.0), (1.0, 2.0)], lambda v: v) == 1.0
    assert math.isnan(paired([(1.0, 0.0)], lambda v: v))  # no usable round


def test_a_slow_round_slows_both_builds_and_moves_no_bar() -> None:
    """Round 2 ran at half speed for both builds, and in round 3 this build met a slow
    spell alone: the median of the round ratios says 0.9 (a ratio of the medians would
    say 0.7)."""
    results = Results(baseline=BASE)
    mine = [sample(900, 5.4), sample(450, 2.7), sample(700, 4.2)]  # 0.6 ms of CPU a request
    theirs = [sample(1000, 5.0), sample(500, 2.5), sample(1000, 5.0)]  # 0.5 ms
    results.scenarios = [scenario(GATEWAY, mine), scenario(f"{BASE} w1, full pipeline", theirs)]
    results.added_p50_ms = {
        "full pipeline": [1.1, 2.2, 1.1],
        f"{BASE} w1, full pipeline": [1.0, 2.0, 1.0],
    }
    results.streams = {DIRECT: stream(1.0, 100_000)}
    results.stream_rounds = {
        GATEWAY: [stream(3.0, 19_000), stream(5.0, 9_500), stream(3.0, 19_000)],
        f"{BASE} w1, full pipeline": [
            stream(3.0, 20_000),
            stream(5.0, 10_000),
            stream(3.0, 20_000),
        ],
    }
    bars = {
        name.split(" ≥")[0].split(" ≤")[0]: (got, ok) for name, got, ok in baseline_bars(results)
    }
    assert bars["req/s at 32 connections"] == ("0.900×", False)
    assert bars["CPU s / 1k req at 32 connections"] == ("1.200×", False)
    assert bars["added p50 at 1 connection"] == ("1.100×", False)
    assert bars["stream added TTFT p50"] == ("1.000×", True)
    assert bars["stream chunks/s"] == ("0.950×", True)


def test_the_two_builds_take_turns_going_first() -> None:
    """Round by round, the pair in ``swap`` alternates, so neither build always runs
    right after the direct run; the others keep their places."""
    from bench.run import round_order

    names = ["direct", "this build", "baseline", "plain"]
    matrix = [scenario(n, []) for n in names]
    order = [[sc.target.name for sc in round_order(matrix, i, [(1, 2)])] for i in range(3)]
    assert order == [
        ["direct", "this build", "baseline", "plain"],
        ["direct", "baseline", "this build", "plain"],
        ["direct", "this build", "baseline", "plain"],
    ]
    assert [sc.target.name for sc in round_order(matrix, 1)] == names  # nothing to swap


def test_the_ab_ratio_is_the_median_of_the_paired_rounds() -> None:
    """``bench.ab``: round i of this build over round i of the baseline, then the median;
    a round where both builds were slowed alike does not move it."""
    from bench.ab import Round
    from bench.ab import paired as ab_paired

    ours = [Round(900, 110, 1.0), Round(450, 220, 2.0), Round(1000, 100, 1.0)]
    theirs = [Round(1000, 100, 1.0), Round(500, 200, 2.0), Round(1000, 100, 1.1)]
    assert ab_paired(ours, theirs, "throughput") == 0.9
    assert math.isclose(ab_paired(ours, theirs, "cpu_us"), 1.1)
    assert math.isclose(ab_paired(ours, theirs, "p50_ms"), 1.0)

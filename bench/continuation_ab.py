"""Same gateway, same run: streams with mid-stream failover on (the default) and off.

    .venv/bin/python -m bench.continuation_ab URL TOKEN [ROUNDS]

``x-gatekeeper-continuation: off`` turns the stitching wrapper off for a request, so the
two sets of streams differ only by it; rounds alternate on/off and the medians of TTFT p50
and chunks/s are printed with their ratio (issue 20: no cost when nothing fails).
"""

from __future__ import annotations

import statistics
import sys

from bench.loadgen import run_streams

OFF = {"x-gatekeeper-continuation": "off"}


def main(argv: list[str]) -> None:
    url, token = argv[0], argv[1]
    rounds = int(argv[2]) if len(argv) > 2 else 5
    on: list[tuple[float, float]] = []
    off: list[tuple[float, float]] = []
    run_streams(url, token, 50, 8)  # warm-up
    for _ in range(rounds):
        for headers, out in ((None, on), (OFF, off)):
            r = run_streams(url, token, 200, 8, headers)
            assert r.failed == 0, r
            out.append((r.ttft_p50_ms, r.chunks_per_s))
    for name, got in (("on", on), ("off", off)):
        print(f"continuation {name:<3} TTFT p50 " + ", ".join(f"{t:.3f}" for t, _ in got)
              + " ms; chunks/s " + ", ".join(f"{c:,.0f}" for _, c in got))  # fmt: skip
    ttft = statistics.median(t for t, _ in on) / statistics.median(t for t, _ in off)
    cps = statistics.median(c for _, c in on) / statistics.median(c for _, c in off)
    print(f"on ÷ off: TTFT p50 {ttft:.3f}×, chunks/s {cps:.3f}× (medians of {rounds} rounds)")


if __name__ == "__main__":
    main(sys.argv[1:])

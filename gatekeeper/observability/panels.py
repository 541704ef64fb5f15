"""The dashboard's capacity panels, from metric totals (pure): priority lanes, result cache.

Both read what ``Metrics.totals`` summed from the exposition, so they show what
``/metrics`` says (with workers: every worker's counts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gatekeeper.capacity.gate import SHED_REASONS
from gatekeeper.capacityconfig import LANES

__all__ = ["cache_panel", "lanes_panel"]

CACHE_RESULTS = ("HIT", "MISS", "COALESCED", "BYPASS")


def lanes_panel(
    depth: Mapping[str, float], shed: Mapping[str, Mapping[str, float]], enabled: bool
) -> dict[str, Any]:
    """Per lane: the requests queued now (node, provider and model queues together) and
    those shed so far, by reason (in the order of ``SHED_REASONS``)."""
    rows = []
    for lane in LANES:
        by_reason = {r: int(shed.get(lane, {}).get(r, 0)) for r in SHED_REASONS}
        queued = int(depth.get(lane, 0))
        rows.append({"lane": lane, "queued": queued, "shed": by_reason})
    return {"enabled": enabled, "reasons": list(SHED_REASONS), "lanes": rows}


def cache_panel(results: Mapping[str, float], saved_usd: float, enabled: bool) -> dict[str, Any]:
    """The result cache: outcomes, hit ratio = HIT / (HIT + MISS + COALESCED), cost saved."""
    counts = {r: int(results.get(r, 0)) for r in CACHE_RESULTS}
    looked_up = counts["HIT"] + counts["MISS"] + counts["COALESCED"]
    return {
        "enabled": enabled,
        **{k.lower(): n for k, n in counts.items()},
        "hit_ratio": round(counts["HIT"] / looked_up, 4) if looked_up else 0.0,
        "saved_usd": saved_usd,  # list-price cost of the upstream calls not made
    }

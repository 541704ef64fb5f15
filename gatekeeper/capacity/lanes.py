"""Which lane a request waits in (pure).

The key's ``priority`` claim (else ``capacity.default_priority``) is the lane, and also
the ceiling: the request header ``x-gatekeeper-priority`` may move a request to that
lane or a lower one (a critical key sending its background work as ``batch``), never
higher. An unknown header value is ignored, not an error: it can only lower a lane.
"""

from __future__ import annotations

from gatekeeper.capacityconfig import LANES

__all__ = ["HEADER", "lane_of"]

HEADER = "x-gatekeeper-priority"
_RANK = {name: i for i, name in enumerate(LANES)}


def lane_of(claim: str | None, default: str, header: str | None) -> int:
    """The lane index (0 = critical) for a key's claim, the config default and the header."""
    ceiling = _RANK[claim or default]
    if header is None:
        return ceiling
    asked = _RANK.get(header.strip().lower())
    return ceiling if asked is None or asked < ceiling else asked

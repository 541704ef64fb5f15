"""The charge of a stream finished by several upstreams (``gatekeeper.continuation``).

Each segment is charged as the stream it was: the ones cut at a seam as ``cut``
(their usage if the upstream sent it, else counted from what arrived), the last as
the exchange ended. The total is their sum; its source the least certain of theirs.
"""

from __future__ import annotations

from collections.abc import Sequence

from gatekeeper.budget.accounting import charge_stream
from gatekeeper.budget.charge import Charge, Ended
from gatekeeper.budget.segments import Continued, Segment

_RANK = {"upstream": 0, "counted": 1, "reserved": 2}


def charge_segments(
    segments: Sequence[Segment], ended: str, reserved_completion: int
) -> tuple[tuple[Charge, ...], Charge, float]:
    """(per-segment charges, their sum, the summed cost in USD)."""
    last = len(segments) - 1
    how: Ended = "complete" if ended == "complete" else "cut" if ended == "cut" else "hangup"
    charges = tuple(
        charge_stream(
            seg.model,
            seg.body,
            seg.state,
            how if i == last else "cut",
            (seg.cap if seg.cap is not None else reserved_completion) if i == last else 0,
        )
        for i, seg in enumerate(segments)
    )
    source = max((c.source for c in charges), key=_RANK.__getitem__)
    total = Charge(
        sum(c.prompt for c in charges),
        sum(c.completion for c in charges),
        source,
        suspicious=any(c.suspicious for c in charges),
    )
    cost = sum(
        seg.model.cost_usd(c.prompt, c.completion) for seg, c in zip(segments, charges, strict=True)
    )
    return charges, total, cost


def charge_continued(record: Continued, ended: str, reserved_completion: int) -> Charge:
    """Charge a stitched stream once: the segments' charges and cost go on ``record``.

    A stream that ended complete was already charged by its stitcher (for the final
    chunk's report); any other end is charged here, as it ended.
    """
    if ended != "complete" or not record.charges:
        record.charges, _, record.cost_usd = charge_segments(
            record.segments, ended, reserved_completion
        )
    c = record.charges
    source = max((x.source for x in c), key=_RANK.__getitem__)
    return Charge(
        sum(x.prompt for x in c),
        sum(x.completion for x in c),
        source,
        suspicious=any(x.suspicious for x in c),
    )

"""What a stitched stream is made of: one segment per upstream attempt that streamed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gatekeeper.budget.charge import Charge
from gatekeeper.providers.base import StreamState
from gatekeeper.providers.failover import Attempt
from gatekeeper.routing.matrix import ModelSpec


@dataclass(frozen=True, slots=True)
class Segment:
    """One upstream stream's share of the answer.

    ``seam`` is the number of answer characters the client had when it began (0 for
    the first); ``reason`` is the error code that ended the segment before it ("" for
    the first); ``cap`` the completion cap it was sent with (None: the original's).
    """

    model: ModelSpec
    wire: str
    body: dict[str, Any]
    state: StreamState
    attempts: tuple[Attempt, ...]
    seam: int = 0
    reason: str = ""
    cap: int | None = None


@dataclass(slots=True)
class Continued:
    """The segments of one client stream, in order (the first is the original attempt)."""

    segments: list[Segment] = field(default_factory=list)
    charges: tuple[Charge, ...] = ()  # per segment, once charged
    cost_usd: float = 0.0  # the segments' summed cost, once charged

    @property
    def continued(self) -> bool:
        return len(self.segments) > 1

    def attempts(self) -> tuple[Attempt, ...]:
        """Every attempt of the continuations (the first segment's are the exchange's)."""
        return tuple(a for seg in self.segments[1:] for a in seg.attempts)

    def report(self) -> list[dict[str, Any]]:
        """The segments as the audit record, the event and the final chunk show them."""
        out = []
        for i, seg in enumerate(self.segments):
            item: dict[str, Any] = {
                "provider": seg.model.provider,
                "model": seg.model.name,
                "seam": seg.seam,
                "reason": seg.reason,
            }
            if i < len(self.charges):
                c = self.charges[i]
                item.update(
                    prompt_tokens=c.prompt, completion_tokens=c.completion, usage_source=c.source
                )
            out.append(item)
        return out

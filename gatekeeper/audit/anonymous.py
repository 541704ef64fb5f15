"""Failed-auth requests are counted, not chained one by one.

A request that never authenticated has no tenant to bill and no key to name; a
record each would let anyone without a token fill ``BH_AUDIT`` (which nothing may
delete). Instead each node counts them per (client address, error code) and, once
per ``audit.anonymous_interval_s``, seals one summary record (tenant
``_anonymous``) holding the counts. At most ``audit.anonymous_max_clients`` pairs
are kept per interval; the rest are added up under client ``_other``. So an
unauthenticated client can make a node store at most one summary record of
bounded size per interval, whatever it sends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gatekeeper.audit.record import (
    ANONYMOUS_TENANT,
    MAX_TEXT,
    AnonymousCount,
    AuditRecord,
    rfc3339_ms,
)

__all__ = ["OTHER", "AnonymousTally", "flush", "flush_every", "summary_record"]

OTHER = "_other"
_MAX_REASON = 64


@dataclass(slots=True)
class AnonymousTally:
    """Counts per (client, reason) for the current interval, at most ``max_clients`` pairs."""

    max_clients: int
    since: float = field(default_factory=time.time)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    total: int = 0

    def count(self, client: str, reason: str) -> None:
        """One more failed-auth request (cheap: a dict update)."""
        key = (client[:MAX_TEXT] or "-", reason[:_MAX_REASON] or "-")
        self.total += 1
        if key in self.counts:
            self.counts[key] += 1
        elif len(self.counts) < self.max_clients:
            self.counts[key] = 1
        else:  # bounded: a new pair beyond the cap only adds to one overflow bucket
            other = (OTHER, OTHER)
            self.counts[other] = self.counts.get(other, 0) + 1

    def take(self, now: float) -> tuple[float, tuple[AnonymousCount, ...], int]:
        """``(since, counts, total)`` of the interval that ends now; starts the next."""
        since, counts, total = self.since, self.counts, self.total
        self.since, self.counts, self.total = now, {}, 0
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return since, tuple(AnonymousCount(c, r, n) for (c, r), n in ordered), total


def summary_record(
    node_id: str, since: float, now: float, counts: tuple[AnonymousCount, ...], total: int
) -> AuditRecord:
    """The one record of an interval's failed-auth requests (pure)."""
    return AuditRecord(
        request_id=f"anon-{node_id}-{int(since * 1000)}",
        ts=rfc3339_ms(since),
        node_id=node_id,
        tenant=ANONYMOUS_TENANT,
        key_id="",
        requested_model="",
        served_model="",
        provider="",
        routing_mode="",
        route_reason=f"{total} failed-auth requests until {rfc3339_ms(now)}",
        stream=False,
        status=401,
        error_code="auth_summary",
        latency_ms=round((now - since) * 1000, 3),
        anonymous=counts,
    )


async def flush_every(
    tally: AnonymousTally,
    commit: Callable[[AuditRecord], Awaitable[None]],
    node_id: str,
    interval_s: float,
    clock: Callable[[], float] = time.time,
) -> None:
    """Seal the interval's summary (if anything was counted) every ``interval_s``."""
    while True:
        await asyncio.sleep(interval_s)
        await flush(tally, commit, node_id, clock())


async def flush(
    tally: AnonymousTally,
    commit: Callable[[AuditRecord], Awaitable[None]],
    node_id: str,
    now: float,
) -> None:
    """Seal the summary of what was counted since the last flush (nothing: no record)."""
    if not tally.total:
        tally.since = now
        return
    since, counts, total = tally.take(now)
    await commit(summary_record(node_id, since, now, counts, total))

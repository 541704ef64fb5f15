"""The values the admission step works with: counter plans, tickets, the hooks it calls.

Pure (no I/O): ``plan_counters`` says which counters a key's request touches and their
limits; a ``Ticket`` is what an admitted request carries until it is settled.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gatekeeper.auth.claims import Claims
from gatekeeper.budget.ledger import Reservation
from gatekeeper.budget.reserve import Reserve
from gatekeeper.budget.windows import counter_id, window_id

MICRO = 1_000_000
_SAFE = re.compile(r"[A-Za-z0-9_=-]{1,128}")


class AlertSink(Protocol):
    def budget_alert(
        self, key_id: str, counter: str, threshold: float, value: int, limit: int
    ) -> None: ...

    def budget_exhausted(self, key_id: str, counter: str, value: int, limit: int) -> None: ...


class BudgetMetrics(Protocol):
    """Counters the admission step feeds (gatekeeper.observability.metrics)."""

    def refused(self, kind: str) -> None: ...  # "rate" | "budget"

    def charged(self, source: str, tokens: int, suspicious: bool) -> None: ...


class StrictHolds(Protocol):
    """Escrowed shares of ``strict`` budget counters (gatekeeper.budget.strict)."""

    def is_strict(self, claims: Claims) -> bool: ...

    def room(self, cid: str) -> int | None: ...  # None: no share known here yet

    def hold(self, cid: str, limit: int, amount: int) -> bool: ...

    def settle(self, cid: str, held: int, actual: int) -> None: ...

    def acquire(self, cid: str, limit: int, need: int) -> Awaitable[bool]: ...


@dataclass(frozen=True, slots=True)
class Ticket:
    reservation: Reservation
    limits: dict[str, int]
    ids: dict[str, str]  # kind -> counter id
    est_tokens: int
    reserve: Reserve
    body: dict[str, Any]  # the request body (for counting, if needed)
    strict: tuple[tuple[str, int], ...] = ()  # (counter id, amount held in escrow)


def counter_key(sub: str) -> str:
    """The key id as counter-id material: as is when safe, else a short stable hash."""
    if _SAFE.fullmatch(sub):
        return sub
    return "h" + hashlib.blake2b(sub.encode(), digest_size=12).hexdigest()


def plan_counters(claims: Claims, now: datetime) -> tuple[dict[str, str], dict[str, int]]:
    """Counter ids (by kind) and limits for a key at ``now`` (pure)."""
    key = counter_key(claims.sub)
    ids: dict[str, str] = {}
    limits: dict[str, int] = {}
    if claims.rpm is not None or claims.tpm is not None:
        minute = window_id("minute", now)
        if claims.rpm is not None:
            ids["req"] = counter_id("req", key, minute)
            limits[ids["req"]] = claims.rpm
        if claims.tpm is not None:
            ids["tpm"] = counter_id("tpm", key, minute)
            limits[ids["tpm"]] = claims.tpm
    budget = claims.budget
    # Every key is tracked per period (its budget's, else the day), limited or not:
    # BH_SESSIONS and /v1/gatekeeper/usage read these cluster-wide counts.
    window = window_id(budget.period if budget is not None else "day", now)
    ids["tok"] = counter_id("tok", key, window)
    ids["preq"] = counter_id("req", key, window)
    if budget is not None:
        if budget.tokens is not None:
            limits[ids["tok"]] = budget.tokens
        if budget.usd is not None:
            ids["usd"] = counter_id("usd", key, window)
            limits[ids["usd"]] = round(budget.usd * MICRO)
    return ids, limits


class NeedShare(Exception):
    """A strict counter's local escrow share is too small (internal: never escapes)."""

    def __init__(self, cid: str, limit: int, need: int) -> None:
        super().__init__(cid)
        self.cid, self.limit, self.need = cid, limit, need

"""Steps 3–4, admission: rate limits and budget as one atomic reservation (a ``Ticket``),
after the request's fair share of in-flight slots (``budget.ConcurrencyLimiter``).

The reservation itself is ``gatekeeper.budget.admission.LedgerAdmission``; settling it
happens with the audit record (``pipeline.audit``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from gatekeeper.budget.tickets import Ticket
from gatekeeper.exchange import Exchange
from gatekeeper.validate import ChatRequest

__all__ = ["Admission", "Ticket"]


class Admission(Protocol):
    def admit(self, ex: Exchange, req: ChatRequest | None) -> Ticket | Awaitable[Ticket] | None:
        """Reserve, or raise; a strict key short of escrow share gets an awaitable."""

    def settle(self, ex: Exchange) -> None: ...

    def charge(self, ex: Exchange) -> None:
        """Decide what the exchange is charged (``ex.usage``, ``ex.usage_source``)."""

    def headers(self, ex: Exchange) -> dict[str, str]: ...

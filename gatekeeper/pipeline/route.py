"""Step 5, the route: the model for a request and its failover plan (``RouteDecision``).

Deciding is pure (``gatekeeper.routing.live.LiveRouter``); it runs before admission
because a USD reservation needs the chosen model's price.
"""

from __future__ import annotations

from typing import Protocol

from gatekeeper.auth.claims import Claims
from gatekeeper.routing.decision import RouteDecision
from gatekeeper.validate import ChatRequest

__all__ = ["RouteDecision", "Router"]


class Router(Protocol):
    def route(
        self,
        req: ChatRequest,
        claims: Claims | None,
        mode_header: str | None,
        open_breakers: frozenset[str],
    ) -> RouteDecision: ...

    def route_embedding(self, model: str) -> RouteDecision: ...

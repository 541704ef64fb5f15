"""Step 5 — the router the pipeline calls: score, choose, and plan the failover order.

Pure apart from reading the current matrix and health view it is handed (both are
swapped whole when BH_CONFIG or BH_HEALTH changes, never mutated in place).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from gatekeeper.auth.claims import Claims, model_allowed
from gatekeeper.errors import ModelNotFound
from gatekeeper.routing.decision import SAME_PROVIDER_RETRIES, RouteDecision, plan_attempts
from gatekeeper.routing.matrix import Matrix, ModelSpec
from gatekeeper.routing.router import (
    AUTO,
    Requirements,
    Route,
    RoutingMode,
    choose,
    parse_mode,
    peers,
)
from gatekeeper.routing.scorer import Complexity, score
from gatekeeper.validate import ChatRequest

HealthView = Callable[[], Mapping[str, float]]
UNSCORED = Complexity("general", 0.0, "small")  # a named model's route, before scoring


def _no_health() -> Mapping[str, float]:
    return {}


class LiveRouter:
    def __init__(
        self,
        matrix: Matrix,
        chain: tuple[str, ...],
        *,
        default_mode: str,
        quality_threshold: float,
        health: HealthView = _no_health,
        unavailable: tuple[tuple[str, str], ...] = (),
        same_provider_retries: int = SAME_PROVIDER_RETRIES,
    ) -> None:
        self.matrix = matrix
        self.retries = same_provider_retries  # failover.same_provider_retries
        self.unavailable = dict(unavailable)
        self._allowed: dict[tuple[str, ...], Matrix] = {}
        self.chain = chain
        self.default_mode = default_mode
        self.quality_threshold = quality_threshold
        self.health = health

    def replace_matrix(self, matrix: Matrix) -> None:
        self.matrix = matrix
        self._allowed.clear()

    def _visible(self, claims: Claims | None) -> Matrix:
        """The models a key may be routed to (its ``models`` allow-list), cached per list."""
        if claims is None or claims.models is None:
            return self.matrix
        hit = self._allowed.get(claims.models)
        if hit is None:
            if len(self._allowed) >= 1024:
                self._allowed.clear()
            hit = Matrix(tuple(m for m in self.matrix if model_allowed(claims, m.name)))
            self._allowed[claims.models] = hit
        return hit

    def route(
        self,
        req: ChatRequest,
        claims: Claims | None,
        mode_header: str | None,
        open_breakers: frozenset[str],
    ) -> RouteDecision:
        routing = claims.routing if claims is not None else None
        mode = parse_mode(
            mode_header,
            routing.mode if routing else None,
            self.default_mode,
            allow_header=routing is None or routing.allow_override,
        )
        threshold = self.quality_threshold
        if routing is not None and routing.quality_threshold is not None:
            threshold = routing.quality_threshold
        messages = req.body["messages"]
        needs = Requirements.of_chat(
            messages, max_tokens=req.max_tokens, tools=req.uses_tools, json=req.wants_json
        )
        visible = self._visible(claims)
        if req.model != AUTO:
            return self._named(req, mode, needs, visible, open_breakers)
        route = choose(
            visible,
            requested_model=AUTO,
            mode=mode,
            complexity=score(messages, tools=req.uses_tools),
            quality_threshold=threshold,
            needs=needs,
            health=self.health(),
            open_breakers=open_breakers,
        )
        plan = plan_attempts(route.model, route.fallbacks, self.chain, self.retries)
        return RouteDecision(
            route.model, plan, mode, route.reason, _event(route, plan), needs.prompt_tokens
        )

    def _named(
        self,
        req: ChatRequest,
        mode: RoutingMode,
        needs: Requirements,
        visible: Matrix,
        open_breakers: frozenset[str],
    ) -> RouteDecision:
        """A named model: checked now; its failover peers (the best model for the
        prompt's task on each other provider) and its event are worked out later."""
        try:
            route = choose(
                self.matrix, requested_model=req.model, mode=mode, complexity=UNSCORED, needs=needs
            )
        except ModelNotFound as err:
            why = self.unavailable.get(req.model)
            if why:
                err.message = f"The model '{req.model}' is not available: {why}"
            raise

        def later() -> tuple[tuple[ModelSpec, ...], dict[str, Any]]:
            complexity = score(req.body["messages"], tools=req.uses_tools)
            ranked = peers(visible, complexity.task, needs, open_breakers)
            fallbacks = tuple(m for m in ranked if m.provider != route.model.provider)
            plan = plan_attempts(route.model, fallbacks, self.chain, self.retries)
            return plan, _event(dataclasses.replace(route, complexity=complexity), plan)

        return RouteDecision(
            route.model, None, mode, route.reason, prompt_tokens=needs.prompt_tokens, later=later
        )

    def route_embedding(self, model: str) -> RouteDecision:
        spec = self.matrix.get(model)
        if spec is None or spec.kind != "embedding":
            raise ModelNotFound(
                f"The model '{model[:100]}' does not exist or is not an embedding model",
                param="model",
            )
        plan = plan_attempts(spec, (), self.chain, self.retries)
        return RouteDecision(spec, plan, "requested", f"requested model {spec.name}")


def _event(route: Route, plan: tuple[ModelSpec, ...]) -> dict[str, Any]:
    c = route.complexity
    return {
        "mode": route.mode,
        "task": c.task,
        "score": c.score,
        "level": c.level,
        "candidates": list(route.candidates),
        "chosen": route.model.name,
        "provider": route.model.provider,
        "reason": route.reason,
        "plan": [f"{m.provider}/{m.name}" for m in plan],
        "below_threshold": route.below_threshold,
    }

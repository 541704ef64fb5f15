"""The route decision (step 5's output) and the failover plan it carries.

``plan_attempts`` orders the models the pool tries: the primary, then one fallback
per provider in chain order. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

from gatekeeper.routing.matrix import ModelSpec

__all__ = ["SAME_PROVIDER_RETRIES", "Plan", "RouteDecision", "plan_attempts"]

SAME_PROVIDER_RETRIES = 1  # with no other provider, the primary is tried once more


def plan_attempts(
    primary: ModelSpec,
    fallbacks: Sequence[ModelSpec],
    chain: Sequence[str],
    same_provider_retries: int = SAME_PROVIDER_RETRIES,
) -> tuple[ModelSpec, ...]:
    """The ordered models to try: the primary, then one fallback per provider in chain order.

    With no other provider available the primary is retried ``same_provider_retries``
    times (with backoff between tries).
    """
    rank = {name: i for i, name in enumerate(chain)}
    seen = {primary.provider}
    rest: list[ModelSpec] = []
    for m in sorted(fallbacks, key=lambda m: rank.get(m.provider, len(rank))):
        if m.provider not in seen:
            seen.add(m.provider)
            rest.append(m)
    if not rest:
        return (primary,) * (1 + same_provider_retries)
    return (primary, *rest)


Later = Callable[[], tuple[tuple[ModelSpec, ...], dict[str, Any]]]


class RouteDecision:
    """The model for a request, the failover plan, and the event for BH_EVENTS.

    ``plan`` and ``event`` may be deferred (``later``): a named model's failover order
    needs the prompt's task class, which is then scored only when something asks —
    the pool after a failed first attempt, or the routing event, built while the
    audit record's ack travels — and not on the request's critical path.
    """

    __slots__ = ("_event", "_later", "_plan", "mode", "model", "prompt_tokens", "reason")

    def __init__(
        self,
        model: ModelSpec,
        plan: tuple[ModelSpec, ...] | None,
        mode: str,
        reason: str,
        event: dict[str, Any] | None = None,
        prompt_tokens: int = 0,  # the router's prompt estimate (0: not estimated)
        later: Later | None = None,
    ) -> None:
        self.model, self.mode, self.reason, self.prompt_tokens = model, mode, reason, prompt_tokens
        self._plan, self._event, self._later = plan, event, later

    def _resolve(self) -> None:
        if self._later is not None:
            self._plan, self._event = self._later()
            self._later = None

    @property
    def plan(self) -> Sequence[ModelSpec]:
        """What the pool tries, in order (``model`` first; the rest computed on demand)."""
        if self._plan is not None:
            return self._plan
        return Plan(self.model, self)

    def full_plan(self) -> tuple[ModelSpec, ...]:
        self._resolve()
        assert self._plan is not None
        return self._plan

    @property
    def event(self) -> dict[str, Any]:
        self._resolve()
        return self._event or {}

    def headers(self) -> dict[str, str]:
        return {"x-gatekeeper-routing-mode": self.mode, "x-gatekeeper-route-reason": self.reason}


class Plan(Sequence[ModelSpec]):
    """A deferred failover plan: the first model at once, the others when first asked for."""

    __slots__ = ("decision", "first")

    def __init__(self, first: ModelSpec, decision: RouteDecision) -> None:
        self.first, self.decision = first, decision

    def __iter__(self) -> Iterator[ModelSpec]:
        yield self.first
        yield from self.decision.full_plan()[1:]

    def __len__(self) -> int:
        return len(self.decision.full_plan())

    @overload
    def __getitem__(self, index: int) -> ModelSpec: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[ModelSpec]: ...

    def __getitem__(self, index: int | slice) -> ModelSpec | Sequence[ModelSpec]:
        if index == 0:
            return self.first
        return self.decision.full_plan()[index]

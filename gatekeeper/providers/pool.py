"""The provider pool: runs an attempt plan with failover, backoff and breakers.

All decisions come from ``failover.py``; this module only does the awaiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from gatekeeper.errors import ProviderError, ProviderRejected, ProviderTimeout, ProviderUnavailable
from gatekeeper.providers.base import Call, Provider, Reply, ReplyStream
from gatekeeper.providers.failover import (
    DEFAULT_POLICY,
    Attempt,
    Breaker,
    FailoverPolicy,
    final_error,
    next_backoff,
    should_fail_over,
)
from gatekeeper.routing.matrix import ModelSpec

T = TypeVar("T")


class PoolHook(Protocol):
    """Told about what the pool does (events stream, health, metrics). Must not block."""

    def attempt_done(self, attempt: Attempt) -> None: ...

    def failover(self, request_id: str, failed: Attempt, next_model: ModelSpec) -> None: ...

    def breaker_changed(self, provider: str, state: str) -> None: ...


class _NoHook:
    def attempt_done(self, attempt: Attempt) -> None:
        return None

    def failover(self, request_id: str, failed: Attempt, next_model: ModelSpec) -> None:
        return None

    def breaker_changed(self, provider: str, state: str) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Served(Generic[T]):
    result: T
    model: ModelSpec
    attempts: tuple[Attempt, ...]


class ProviderPool:
    def __init__(
        self,
        providers: dict[str, Provider],
        *,
        policy: FailoverPolicy = DEFAULT_POLICY,
        hook: PoolHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,  # the backoff's wait
    ) -> None:
        self.providers = providers
        self.policy = policy
        self.hook: PoolHook = hook or _NoHook()
        self.clock = clock
        self.sleep = sleep
        self.breakers = {name: Breaker(policy) for name in providers}

    def breaker_open(self, provider: str) -> bool:
        b = self.breakers.get(provider)
        return b is not None and b.state == "open"

    def open_breakers(self) -> frozenset[str]:
        return frozenset(n for n, b in self.breakers.items() if b.state == "open")

    async def chat(self, plan: Sequence[ModelSpec], call: Call, deadline: float) -> Served[Reply]:
        return await self._run(plan, call, deadline, lambda p, c: p.chat(c), unary=True)

    async def embeddings(
        self, plan: Sequence[ModelSpec], call: Call, deadline: float
    ) -> Served[Reply]:
        return await self._run(plan, call, deadline, lambda p, c: p.embeddings(c), unary=True)

    async def chat_stream(
        self, plan: Sequence[ModelSpec], call: Call, deadline: float
    ) -> Served[ReplyStream]:
        return await self._run(plan, call, deadline, lambda p, c: p.chat_stream(c))

    async def _run(
        self,
        plan: Sequence[ModelSpec],
        call: Call,
        deadline: float,
        op: Callable[[Provider, Call], Awaitable[T]],
        *,
        unary: bool = False,
    ) -> Served[T]:
        """Try ``plan`` in order. Each attempt is bounded by the request's ``deadline``
        and, for a unary call, by its provider's ``total_timeout_s``; a stream's
        attempt ends at its first chunk (the pipeline bounds the rest)."""
        attempts: list[Attempt] = []
        errors: list[ProviderError] = []
        tries_of: dict[str, int] = {}
        for i, model in enumerate(plan):
            breaker = self.breakers[model.provider]
            if not breaker.allow(self.clock()):
                attempts.append(Attempt(model.provider, model.name, None, "breaker open", 0.0))
                continue
            prior = tries_of.get(model.provider, 0)
            if prior and errors:
                delay = next_backoff(prior, errors[-1].retry_after, self.policy)
                if self.clock() + delay >= deadline:
                    break
                await self.sleep(delay)
            tries_of[model.provider] = prior + 1
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            provider = self.providers[model.provider]
            limit = min(remaining, provider.total_timeout_s) if unary else remaining
            started = self.clock()
            try:
                async with asyncio.timeout(limit):
                    result = await op(provider, _with_model(call, model))
            except TimeoutError:
                why = (
                    "overall deadline reached"
                    if limit == remaining
                    else "timed out waiting for the upstream"
                )
                err: ProviderError = ProviderTimeout(
                    f"{model.provider}: {why}", provider=model.provider
                )
            except ProviderError as exc:
                if not should_fail_over(exc, self.policy):  # the client's own error, or a
                    # status the operator chose not to fail over on: answer with it now
                    healthy = isinstance(exc, ProviderRejected)
                    self._record(
                        breaker,
                        model,
                        started,
                        exc.upstream_status,
                        None if healthy else exc.code,
                        success=healthy,
                    )
                    raise
                err = exc
            else:
                attempts.append(self._record(breaker, model, started, 200, None, success=True))
                return Served(result, model, tuple(attempts))
            errors.append(err)
            if err.blames_provider:
                failed = self._record(
                    breaker,
                    model,
                    started,
                    err.upstream_status,
                    err.code or type(err).__name__,
                    success=False,
                )
            else:  # the gateway was busy (no connection slot): health and breaker untouched
                breaker.release_probe()
                failed = Attempt(model.provider, model.name, None, err.code, self._ms(started))
            attempts.append(failed)
            if i + 1 < len(plan):
                self.hook.failover(call.request_id, failed, plan[i + 1])
        raise final_error(errors, attempts) if errors else _all_open(attempts)

    def _record(
        self,
        breaker: Breaker,
        model: ModelSpec,
        started: float,
        status: int | None,
        error: str | None,
        *,
        success: bool,
    ) -> Attempt:
        now = self.clock()
        attempt = Attempt(model.provider, model.name, status, error, self._ms(started, now))
        changed = breaker.success() if success else breaker.failure(now)
        if changed:
            self.hook.breaker_changed(model.provider, changed)
        self.hook.attempt_done(attempt)
        return attempt

    def _ms(self, started: float, now: float | None = None) -> float:
        return round(((self.clock() if now is None else now) - started) * 1000, 3)

    async def aclose(self) -> None:
        for p in self.providers.values():
            await p.aclose()


def _with_model(call: Call, model: ModelSpec) -> Call:
    if call.model is model:
        return call
    return Call(model, call.body, call.request_id, call.include_usage, call.native)


def _all_open(attempts: Sequence[Attempt]) -> ProviderError:
    names = ", ".join(sorted({a.provider for a in attempts})) or "none"
    return ProviderUnavailable(
        f"No upstream available: circuit breaker open for {names}",
        retry_after=1.0,
        headers={"retry-after": "1"},
    )

"""What the pipeline calls: look up, join a flight or lead one, store, charge per policy.

``ResultCache.plan`` is cheap and pure apart from the clock-free policy lookup: it
returns ``None`` (the pipeline calls the pool as before, after marking the exchange
BYPASS) or a ``Lookup`` whose ``chat`` / ``chat_stream`` stand in for the pool's.

Charging: the request that made the upstream call is charged as any request (its
usage, ``usage_source`` from the upstream). A HIT, and a COALESCED follower, are
charged per policy — ``free`` (0 tokens) or ``cost`` (the original usage) — with
``usage_source: cache``; if the leader of a flight went away before the answer came,
the first follower served pays the upstream call instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from gatekeeper.cache.entry import CachedAnswer
from gatekeeper.cache.flight import Coalescer, StreamFlight, UnaryFlight, pump_stream
from gatekeeper.cache.policy import (
    BYPASS,
    COALESCED,
    HIT,
    MISS,
    CacheDecision,
    CachePolicy,
    cache_key,
    decide,
)
from gatekeeper.cache.settings import CacheConfig, policy_for
from gatekeeper.cache.store import CacheStore
from gatekeeper.errors import GatewayError
from gatekeeper.providers.base import Call, Reply, ReplyStream, StreamState, Usage
from gatekeeper.providers.pool import ProviderPool, Served
from gatekeeper.routing.matrix import ModelSpec

log = structlog.get_logger("gatekeeper.cache")

__all__ = ["CacheMetrics", "Lookup", "ResultCache", "charged", "saved_usd"]


class CacheMetrics(Protocol):
    def cache_result(self, result: str, saved_usd: float) -> None: ...


class _NoMetrics:
    def cache_result(self, result: str, saved_usd: float) -> None:
        pass


class Exchangeish(Protocol):  # the fields of pipeline.Exchange the cache reads and sets
    claims: Any
    ingress: str
    stream: bool
    cache: str
    usage_source: str


def charged(policy: CachePolicy, usage: Usage | None) -> Usage:
    """What a hit is charged: nothing, or the original usage (pure)."""
    if policy.charge == "cost" and usage is not None:
        return usage
    return Usage()


def saved_usd(model: ModelSpec, original: Usage | None, charge: Usage) -> float:
    if original is None:
        return 0.0
    full = model.cost_usd(original.prompt_tokens, original.completion_tokens)
    return max(0.0, full - model.cost_usd(charge.prompt_tokens, charge.completion_tokens))


class ResultCache:
    def __init__(
        self,
        config: CacheConfig,
        store: CacheStore,
        pool: ProviderPool,
        secret: bytes,
        metrics: CacheMetrics | None = None,
    ) -> None:
        self.config, self.store, self.pool = config, store, pool
        self._secret = secret  # the HMAC key of cache keys: never logged
        self.metrics: CacheMetrics = metrics or _NoMetrics()
        self.coalescer = Coalescer()
        self.stores: set[asyncio.Future[Any]] = set()  # puts not yet acknowledged

    def plan(
        self, ex: Exchangeish, model: ModelSpec, call: Call, cache_control: str | None
    ) -> Lookup | None:
        """The lookup for this request, or None (BYPASS: the pool is called as before)."""
        policy = policy_for(ex.claims, self.config)
        decision = decide(policy, model.name, call.body, cache_control)
        if decision.bypass or policy is None:
            ex.cache = BYPASS
            self.metrics.cache_result(BYPASS, 0.0)
            return None
        tenant = ex.claims.tenant
        key = cache_key(
            self._secret, tenant, ex.ingress, model.name, ex.stream, call.body, call.native
        )
        return Lookup(self, key, tenant, model, policy, decision)

    def keep(self, key: str, tenant: str, answer: CachedAnswer, ttl_s: float) -> None:
        """Store in the background (the reply does not wait for the KV ack)."""
        size = len(answer.body) + sum(len(c) for c in answer.chunks)
        if size > self.config.max_entry_bytes:
            return
        pending: asyncio.Future[Any] | None = self.store.put_soon(key, tenant, answer, ttl_s)
        if pending is None:  # a large payload (Object Store), or no acked publisher
            pending = asyncio.ensure_future(self.store.put(key, tenant, answer, ttl_s))
        self.stores.add(pending)
        pending.add_done_callback(self.stores.discard)

    async def aclose(self) -> None:
        await self.coalescer.aclose()
        if self.stores:
            await asyncio.wait(self.stores, timeout=2.0)


@dataclass(slots=True)
class Lookup:
    cache: ResultCache
    key: str
    tenant: str
    model: ModelSpec
    policy: CachePolicy
    decision: CacheDecision

    def _as_hit(self, ex: Exchangeish, result: str, original: Usage | None) -> Usage:
        charge = charged(self.policy, original)
        ex.cache, ex.usage_source = result, "cache"
        self.cache.metrics.cache_result(result, saved_usd(self.model, original, charge))
        return charge

    async def _cached(self) -> CachedAnswer | None:
        if not self.decision.lookup:
            return None
        answer = await self.cache.store.get(self.key, self.tenant)
        if answer is not None and answer.model != self.model.name:
            return None
        return answer

    # ------------------------------------------------------------------ unary

    async def chat(
        self, ex: Exchangeish, plan: Sequence[ModelSpec], call: Call, deadline: float
    ) -> Served[Reply]:
        answer = await self._cached()
        if answer is not None and answer.kind == "json":
            usage = self._as_hit(ex, HIT, answer.usage)
            return Served(Reply(answer.body, usage), self.model, ())
        coalescer = self.cache.coalescer
        flight = coalescer.find(self.key) if self.cache.config.coalesce else None
        if isinstance(flight, UnaryFlight) and self.decision.lookup:
            served = await flight.wait(leader=False)
            if flight.take_payment():  # the leader left: this request pays the call
                ex.cache = COALESCED
                return served
            usage = self._as_hit(ex, COALESCED, served.result.usage)
            return Served(Reply(served.result.body, usage, served.result.parsed), served.model, ())
        ex.cache = MISS
        self.cache.metrics.cache_result(MISS, 0.0)
        flight = UnaryFlight(self.key)

        async def run() -> None:
            try:
                served = await self.cache.pool.chat(plan, call, deadline)
            except GatewayError as err:
                flight.result.set_exception(err)
                flight.result.exception()  # retrieved: no "never retrieved" warning
                return
            except BaseException:
                flight.result.cancel()
                raise
            flight.result.set_result(served)
            if self.decision.store and served.model.name == self.model.name:
                answer = CachedAnswer(self.model.name, served.result.usage, body=served.result.body)
                self.cache.keep(self.key, self.tenant, answer, self.policy.ttl_s)

        coalescer.start(flight, run)
        if not self.cache.config.coalesce:
            coalescer.forget(flight)
        return await flight.wait(leader=True)

    # ------------------------------------------------------------------ streams

    async def chat_stream(
        self, ex: Exchangeish, plan: Sequence[ModelSpec], call: Call, deadline: float
    ) -> Served[ReplyStream]:
        answer = await self._cached()
        if answer is not None and answer.kind == "sse":
            usage = self._as_hit(ex, HIT, answer.usage)
            return Served(_replay(answer.chunks, usage), self.model, ())
        coalescer = self.cache.coalescer
        flight = coalescer.find(self.key) if self.cache.config.coalesce else None
        if isinstance(flight, StreamFlight) and self.decision.lookup:
            served = await flight.subscribe(leader=False, state=StreamState())
            if flight.take_payment():
                ex.cache = COALESCED
                return Served(served.result, served.model, ())
            started = flight.started.result()
            usage_now = self._as_hit(ex, COALESCED, None)
            return Served(
                _charged(served.result, self.policy, started[2], usage_now), self.model, ()
            )
        ex.cache = MISS
        self.cache.metrics.cache_result(MISS, 0.0)
        flight = StreamFlight(self.key, self.cache.config.max_entry_bytes)

        async def run() -> None:
            try:
                served = await self.cache.pool.chat_stream(plan, call, deadline)
            except GatewayError as err:
                flight.started.set_exception(err)
                flight.started.exception()
                return
            except BaseException:
                flight.started.cancel()
                raise
            state = served.result.state
            flight.started.set_result((served.model, served.attempts, state))
            await pump_stream(flight, served, deadline)
            if (
                self.decision.store
                and flight.storable
                and flight.error is None
                and served.model.name == self.model.name
            ):
                answer = CachedAnswer(self.model.name, state.usage, chunks=tuple(flight.chunks))
                self.cache.keep(self.key, self.tenant, answer, self.policy.ttl_s)

        coalescer.start(flight, run)
        if not self.cache.config.coalesce:
            coalescer.forget(flight)
        return await flight.subscribe(leader=True, state=None)


def _replay(chunks: Sequence[bytes], usage: Usage) -> ReplyStream:
    """A stored stream, as the pool would hand it over (the usage is the charge)."""
    state = StreamState(usage=usage, completed=True, chunks=len(chunks))

    async def rest() -> AsyncIterator[bytes]:
        for chunk in chunks[1:]:
            yield chunk

    async def close() -> None:
        pass

    return ReplyStream(chunks[0], rest(), state, close)


def _charged(
    stream: ReplyStream, policy: CachePolicy, upstream: StreamState, start: Usage
) -> ReplyStream:
    """A follower's replay whose state, at the end, holds its charge per ``policy``."""
    own = stream.state
    own.usage = start
    inner = stream.rest

    async def rest() -> AsyncIterator[bytes]:
        async for chunk in inner:
            yield chunk
        own.usage = charged(policy, upstream.usage)

    return ReplyStream(stream.first, rest(), own, stream.aclose)

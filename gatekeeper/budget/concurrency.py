"""Fair sharing: caps on what one API key, one tenant and one process have in flight.

A request takes a ``Slot`` after its body is validated (so it is known whether it
streams) and gives it back on every path: the reply, an error, a client hang-up, a
cancellation (``Slot.release`` is idempotent; the pipeline and the SSE response both
call it in ``finally``). Caps come from the token's ``concurrency`` claim, else from
``limits.concurrency``; the process-wide stream cap from ``server.limits.max_streams``.

Per request this is two dict updates (four for a stream) and one small object.
Counters are per process: with ``--workers N`` a key may have N times its cap in
flight on one host, which is what "per process" in docs/limits.md means.
"""

from __future__ import annotations

from typing import Protocol

from gatekeeper.auth.claims import Claims
from gatekeeper.edgeconfig import ConcurrencyConfig
from gatekeeper.errors import RateLimited, ServiceUnavailable


class Gate(Protocol):
    """What a slot gives its node capacity slot back to (``capacity.CapacityGate``)."""

    def leave(self, slot: Slot) -> None: ...


__all__ = ["ConcurrencyLimiter", "Slot"]


class Slot:
    """One admitted request's share; ``release`` gives it back (once)."""

    __slots__ = ("_limiter", "gate", "key", "since", "stream", "tenant")

    def __init__(self, limiter: ConcurrencyLimiter, key: str, tenant: str, stream: bool) -> None:
        self._limiter: ConcurrencyLimiter | None = limiter
        self.key, self.tenant, self.stream = key, tenant, stream
        self.gate: Gate | None = None  # it also holds a node capacity slot (lanes)
        self.since = 0.0

    def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release(self)
            if self.gate is not None:
                self.gate.leave(self)

    @property
    def held(self) -> bool:
        return self._limiter is not None


def _dec(counts: dict[str, int], name: str) -> None:
    left = counts[name] - 1
    if left:
        counts[name] = left
    else:
        del counts[name]  # the tables hold only what is in flight


class ConcurrencyLimiter:
    """In-flight counters per key and tenant (requests, and streams among them)."""

    def __init__(self, config: ConcurrencyConfig | None = None, max_streams: int = 1024) -> None:
        self.config = config or ConcurrencyConfig()
        self.max_streams = max_streams
        self.keys: dict[str, int] = {}
        self.tenants: dict[str, int] = {}
        self.key_streams: dict[str, int] = {}
        self.tenant_streams: dict[str, int] = {}
        self.streams = 0

    def acquire(self, claims: Claims, stream: bool) -> Slot:
        """A slot for one request of ``claims``'s key, or ``RateLimited`` (429)."""
        cfg, own = self.config, claims.concurrency
        key, tenant = claims.sub, claims.tenant
        key_cap = (own.requests if own else None) or cfg.key_requests
        tenant_cap = (own.tenant_requests if own else None) or cfg.tenant_requests
        in_key, in_tenant = self.keys.get(key, 0), self.tenants.get(tenant, 0)
        if in_key >= key_cap:
            raise self._busy(f"This API key already has {in_key} requests in flight", "key")
        if in_tenant >= tenant_cap:
            raise self._busy(f"Tenant '{tenant}' already has {in_tenant} requests in flight", "t")
        if stream:
            self._check_streams(claims)
            self.key_streams[key] = self.key_streams.get(key, 0) + 1
            self.tenant_streams[tenant] = self.tenant_streams.get(tenant, 0) + 1
            self.streams += 1
        self.keys[key] = in_key + 1
        self.tenants[tenant] = in_tenant + 1
        return Slot(self, key, tenant, stream)

    def _check_streams(self, claims: Claims) -> None:
        cfg, own = self.config, claims.concurrency
        key_cap = (own.streams if own else None) or cfg.key_streams
        tenant_cap = (own.tenant_streams if own else None) or cfg.tenant_streams
        if self.key_streams.get(claims.sub, 0) >= key_cap:
            raise self._busy(f"This API key already has {key_cap} streams open", "key")
        if self.tenant_streams.get(claims.tenant, 0) >= tenant_cap:
            raise self._busy(f"Tenant '{claims.tenant}' already has {tenant_cap} streams open", "t")
        if self.streams >= self.max_streams:
            raise ServiceUnavailable(
                "The gateway has too many streams open; retry shortly",
                code="too_many_streams",
                headers={"retry-after": str(max(1, round(cfg.retry_after_s)))},
            )

    def _busy(self, message: str, scope: str) -> RateLimited:
        return RateLimited(
            f"{message}; retry when one finishes",
            retry_after=self.config.retry_after_s,
            code="concurrency_limit_exceeded" if scope == "key" else "tenant_concurrency_exceeded",
        )

    def _release(self, slot: Slot) -> None:
        _dec(self.keys, slot.key)
        _dec(self.tenants, slot.tenant)
        if slot.stream:
            _dec(self.key_streams, slot.key)
            _dec(self.tenant_streams, slot.tenant)
            self.streams -= 1

    @property
    def in_flight(self) -> int:
        return sum(self.keys.values())

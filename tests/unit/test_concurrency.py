"""Fair sharing: per-key, per-tenant and per-process in-flight caps, released on every path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from gatekeeper.auth.claims import Claims, Concurrency
from gatekeeper.budget.concurrency import ConcurrencyLimiter
from gatekeeper.edgeconfig import ConcurrencyConfig
from gatekeeper.errors import RateLimited, ServiceUnavailable
from gatekeeper.http.responses import SSEResponse

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def claims(sub: str = "key_a", tenant: str = "acme", **caps: int) -> Claims:
    return Claims(
        "gatekeeper",
        sub,
        "j",
        T0,
        T0,
        T0,
        tenant,
        concurrency=Concurrency(**caps) if caps else None,
    )


def limiter(**cfg: float) -> ConcurrencyLimiter:
    return ConcurrencyLimiter(ConcurrencyConfig(**cfg), max_streams=3)  # type: ignore[arg-type]


class TestCaps:
    def test_a_key_gets_429_with_retry_after_at_its_cap(self) -> None:
        lim = limiter(key_requests=2, retry_after_s=2)
        held = [lim.acquire(claims(), False) for _ in range(2)]
        with pytest.raises(RateLimited) as err:
            lim.acquire(claims(), False)
        assert err.value.status == 429 and err.value.headers["retry-after"] == "2"
        assert err.value.code == "concurrency_limit_exceeded"
        held[0].release()
        lim.acquire(claims(), False)  # a released slot is free again

    def test_other_keys_and_tenants_are_not_affected(self) -> None:
        lim = limiter(key_requests=1)
        lim.acquire(claims(), False)
        lim.acquire(claims("key_b"), False)
        lim.acquire(claims("key_c", "globex"), False)

    def test_the_tenant_cap_spans_its_keys(self) -> None:
        lim = limiter(tenant_requests=2)
        lim.acquire(claims("key_a"), False)
        lim.acquire(claims("key_b"), False)
        with pytest.raises(RateLimited) as err:
            lim.acquire(claims("key_c"), False)
        assert err.value.code == "tenant_concurrency_exceeded"
        lim.acquire(claims("key_d", "globex"), False)

    def test_claims_override_the_configured_caps(self) -> None:
        lim = limiter(key_requests=1)
        for _ in range(3):
            lim.acquire(claims(requests=3), False)
        with pytest.raises(RateLimited):
            lim.acquire(claims(requests=3), False)

    def test_streams_have_their_own_caps_and_a_process_cap(self) -> None:
        """A key's streams are capped apart from its requests; the process-wide
        stream cap answers 503 (the gateway's capacity, not the client's quota)."""
        lim = limiter(key_streams=1)
        lim.acquire(claims(), True)
        with pytest.raises(RateLimited):
            lim.acquire(claims(), True)
        lim.acquire(claims(), False)  # a unary request still fits
        lim.acquire(claims("key_b"), True)
        lim.acquire(claims("key_c"), True)
        with pytest.raises(ServiceUnavailable) as err:
            lim.acquire(claims("key_d"), True)
        assert err.value.code == "too_many_streams" and err.value.headers["retry-after"]

    def test_release_is_idempotent_and_the_tables_empty(self) -> None:
        lim = limiter()
        slot = lim.acquire(claims(), True)
        slot.release()
        slot.release()
        assert not slot.held
        assert (lim.keys, lim.tenants, lim.key_streams, lim.tenant_streams, lim.streams) == (
            {},
            {},
            {},
            {},
            0,
        )


Write = Callable[[bytes], Awaitable[None]]


class TestStreamRelease:
    """SSEResponse calls on_close however the stream ends."""

    async def run(self, pump: Callable[[Write], Awaitable[None]], disconnect: bool) -> int:
        closed: list[int] = []
        response = SSEResponse(pump, {}, on_close=lambda: closed.append(1))
        hung_up = asyncio.Event()

        async def receive() -> dict[str, object]:
            if disconnect:
                await asyncio.sleep(0.01)
                hung_up.set()
                return {"type": "http.disconnect"}
            await asyncio.Event().wait()
            return {}

        async def send(message: object) -> None:
            return None

        with contextlib.suppress(RuntimeError):  # the failing pump's error
            await response({"type": "http"}, receive, send)  # type: ignore[arg-type]
        return len(closed)

    async def test_a_finished_stream_releases(self) -> None:
        async def pump(write: Write) -> None:
            await write(b"data: 1\n\n")

        assert await self.run(pump, disconnect=False) == 1

    async def test_a_client_hang_up_releases(self) -> None:
        async def pump(write: Write) -> None:
            await asyncio.Event().wait()  # would stream forever

        assert await self.run(pump, disconnect=True) == 1

    async def test_a_failing_pump_releases(self) -> None:
        async def pump(write: Write) -> None:
            raise RuntimeError("upstream bug")

        assert await self.run(pump, disconnect=False) == 1

    async def test_a_cancelled_response_releases(self) -> None:
        closed: list[int] = []

        async def pump(write: Write) -> None:
            await asyncio.Event().wait()

        async def receive() -> dict[str, object]:
            await asyncio.Event().wait()
            return {}

        async def send(message: object) -> None:
            return None

        response = SSEResponse(pump, {}, on_close=lambda: closed.append(1))
        task = asyncio.ensure_future(response({"type": "http"}, receive, send))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert closed == [1]

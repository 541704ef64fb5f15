"""The upstream HTTP client (``providers.h1``) and the one place its errors become ours.

Why a lean client of our own rather than aiohttp or httpx: see ``h1``'s docstring,
README "Upstream HTTP client" and BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Protocol

from gatekeeper.config import ProviderConfig
from gatekeeper.errors import (
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    StreamInterrupted,
)
from gatekeeper.providers import h1


def make_pool(cfg: ProviderConfig) -> h1.Pool:
    return h1.Pool(
        cfg.base_url,
        size=cfg.pool_size,
        connect_s=cfg.timeouts.connect_s,
        read_s=cfg.timeouts.first_byte_s,
    )


def map_error(
    provider: str, exc: h1.UpstreamError | TimeoutError, *, streaming: bool = False
) -> ProviderError:
    """The gateway's ProviderError for an upstream-client failure or a timeout."""
    if isinstance(exc, TimeoutError):  # h1.ReadTimeout, or an asyncio.timeout around the call
        return ProviderTimeout(f"{provider}: timed out waiting for the upstream", provider=provider)
    if isinstance(exc, h1.ConnectFailed):
        return ProviderUnavailable(f"{provider}: {exc}", provider=provider)
    if isinstance(exc, h1.ConnectionClosed):
        cls = StreamInterrupted if streaming else ProviderError
        return cls(f"{provider}: the upstream closed the connection early", provider=provider)
    return ProviderError(f"{provider}: {exc}", provider=provider)


@contextlib.contextmanager
def mapped_errors(provider: str, *, streaming: bool = False) -> Iterator[None]:
    """Translate upstream-client and timeout failures into the gateway's ProviderError tree."""
    try:
        yield
    except (h1.UpstreamError, TimeoutError) as exc:
        raise map_error(provider, exc, streaming=streaming) from exc


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # HTTP-date form: treat as unknown; backoff decides
    return seconds if seconds >= 0 else None


def status_error(
    provider: str,
    status: int,
    reason: str,
    retry_after: str | None,
    *,
    code: str | None = None,
    param: str | None = None,
) -> ProviderError:
    """The error for an upstream non-2xx status. ``reason`` is the upstream's message."""
    ra = parse_retry_after(retry_after)
    msg = f"{provider} returned {status}: {reason}"
    if status == 429:
        return ProviderUnavailable(
            msg,
            provider=provider,
            upstream_status=status,
            retry_after=ra,
            code="upstream_rate_limited",
        )
    if status in (401, 403):
        return ProviderError(
            f"{provider} rejected the gateway's credentials ({status})",
            provider=provider,
            upstream_status=status,
            code="upstream_auth_failed",
        )
    if status == 408:
        return ProviderTimeout(msg, provider=provider, upstream_status=status)
    if 400 <= status < 500:
        return ProviderRejected(
            msg, provider=provider, upstream_status=status, param=param, code=code
        )
    if status in (503, 529):
        return ProviderUnavailable(msg, provider=provider, upstream_status=status, retry_after=ra)
    if status == 504:
        return ProviderTimeout(msg, provider=provider, upstream_status=status)
    return ProviderError(msg, provider=provider, upstream_status=status, retry_after=ra)


ErrorReader = Callable[[int, bytes], tuple[str, str | None, str | None]]
"""(status, body) → (message, code, param) in the upstream's own error format."""


async def post(
    pool: h1.Pool,
    prefix: bytes,
    payload: bytes,
    extra: bytes = b"",
    *,
    provider: str,
    read_error: ErrorReader,
) -> h1.Response:
    """POST and wait for the response head; a non-2xx becomes a ProviderError.

    The wait is bounded by the pool's ``read_s`` (the provider's ``first_byte_s``).
    """
    resp = await pool.post(prefix, payload, extra)
    if resp.status >= 400:
        raw = await resp.read()
        reason, code, param = read_error(resp.status, raw)
        raise status_error(
            provider, resp.status, reason, resp.headers.get("retry-after"), code=code, param=param
        )
    return resp


class Translate(Protocol):
    """Turns upstream stream bytes into OpenAI SSE bytes; knows when the stream ended."""

    def feed(self, data: bytes) -> bytes: ...

    @property
    def finished(self) -> bool: ...


async def open_stream(
    resp: h1.Response, tr: Translate, *, provider: str, first_byte_s: float
) -> tuple[bytes, AsyncIterator[bytes]]:
    """Read up to the first forwardable bytes (bounded), then hand back the rest lazily.

    Failing before the first bytes is failover-able; after it, ``rest`` raises
    ``StreamInterrupted`` if the upstream ends without finishing.
    """
    try:
        async with asyncio.timeout(first_byte_s):
            while True:
                data = await resp.read_chunk()
                if not data:
                    raise StreamInterrupted(
                        f"{provider}: stream ended before any chunk", provider=provider
                    )
                first = tr.feed(data)
                if first or tr.finished:
                    break
    except BaseException:
        resp.close()
        raise

    async def rest() -> AsyncIterator[bytes]:
        try:
            with mapped_errors(provider, streaming=True):
                while not tr.finished:
                    data = await resp.read_chunk()
                    if not data:
                        break
                    out = tr.feed(data)
                    if out:
                        yield out
            if not tr.finished:
                raise StreamInterrupted(
                    f"{provider}: the upstream ended the stream early", provider=provider
                )
        finally:
            resp.close()

    return first, rest()

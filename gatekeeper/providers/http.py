"""The upstream transport behind a provider, and the one place its errors become ours.

``make_transport`` picks the configured ``Transport`` (``upstream.transport``; see
docs/providers.md for the decision). ``map_error`` turns the transport's
``UpstreamError`` tree into the gateway's ``ProviderError`` tree. ``post`` turns a
status the client must not see as success (3xx, 4xx, 5xx) into a ``ProviderError``
whose message is scrubbed of secrets; an upstream text that is not a recognised
error message is never shown (the client gets a generic text with the request id,
the log gets the redacted detail).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Protocol

import structlog

from gatekeeper.errors import (
    ProviderError,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    StreamInterrupted,
    UpstreamBusy,
    UpstreamTooLarge,
)
from gatekeeper.providers import h1
from gatekeeper.providers.limits import DEFAULT_LIMITS, UpstreamLimits
from gatekeeper.providers.settings import ProviderConfig
from gatekeeper.providers.transport import (
    ConnectFailed,
    ConnectionClosed,
    Endpoint,
    NoResponse,
    PoolExhausted,
    TooLarge,
    Transport,
    UpstreamError,
    UpstreamResponse,
)
from gatekeeper.scrub import Scrubber

log = structlog.get_logger("gatekeeper.providers")

MAX_SHOWN = 500  # characters of an upstream error message passed on to the client


def make_transport(
    cfg: ProviderConfig,
    limits: UpstreamLimits = DEFAULT_LIMITS,
    env: Mapping[str, str] | None = None,
) -> Transport:
    """The transport ``limits.transport`` names, for this provider's origin and timeouts."""
    if limits.transport == "aiohttp":
        from gatekeeper.providers.aio import AioTransport

        return AioTransport(
            cfg.base_url,
            size=cfg.pool_size,
            connect_s=cfg.timeouts.connect_s,
            read_s=cfg.timeouts.first_byte_s,
            limits=limits,
            env=env,
        )
    return h1.Pool(
        cfg.base_url,
        size=cfg.pool_size,
        connect_s=cfg.timeouts.connect_s,
        read_s=cfg.timeouts.first_byte_s,
        limits=limits,
        env=env,
    )


def map_error(
    provider: str, exc: UpstreamError | TimeoutError, *, streaming: bool = False
) -> ProviderError:
    """The gateway's ProviderError for a transport failure or a timeout."""
    if isinstance(exc, TimeoutError):  # ReadTimeout, or an asyncio.timeout around the call
        return ProviderTimeout(f"{provider}: timed out waiting for the upstream", provider=provider)
    if isinstance(exc, PoolExhausted):
        return UpstreamBusy(f"{provider}: {exc}", provider=provider)
    if isinstance(exc, ConnectFailed):
        return ProviderUnavailable(f"{provider}: {exc}", provider=provider)
    if isinstance(exc, TooLarge):
        return UpstreamTooLarge(f"{provider}: {exc}", provider=provider)
    if isinstance(exc, NoResponse):  # stream or not: nothing arrived yet
        return ProviderError(
            f"{provider}: the upstream closed the connection after the request was sent and"
            " before answering; it was not re-sent because the upstream may have processed it",
            provider=provider,
            retryable=False,
            code="upstream_no_response",
        )
    if isinstance(exc, ConnectionClosed):
        cls = StreamInterrupted if streaming else ProviderError
        return cls(f"{provider}: the upstream closed the connection early", provider=provider)
    return ProviderError(f"{provider}: {exc}", provider=provider)


@contextlib.contextmanager
def mapped_errors(provider: str, *, streaming: bool = False) -> Iterator[None]:
    """Translate transport and timeout failures into the gateway's ProviderError tree."""
    try:
        yield
    except (UpstreamError, TimeoutError) as exc:
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
    """The error for an upstream non-2xx status. ``reason`` is already safe to show."""
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


ErrorReader = Callable[[int, bytes], tuple[str | None, str | None, str | None]]
"""(status, body) → (message, code, param) in the upstream's own error format; the
message is None when the body is not a recognised error object."""


def shown_reason(
    message: str | None, raw: bytes, *, provider: str, status: int, request_id: str, scrub: Scrubber
) -> str:
    """What the client may see of an upstream's error text: a recognised message,
    scrubbed and truncated; anything else a generic text (the detail goes to the log)."""
    if message is not None:
        text = scrub(message)
        return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"
    log.warning(
        "provider.unrecognised_error",
        provider=provider,
        status=status,
        body=scrub(raw[:1000].decode("utf-8", "replace")),
    )
    return f"the upstream's error text is not shown (logged under request id {request_id})"


def not_a_reply(provider: str, what: str) -> ProviderError:
    """A 2xx whose body is not what the API promises: failover-able, never relayed."""
    return ProviderError(
        f"{provider}: the upstream's reply is {what}",
        provider=provider,
        code="upstream_invalid_response",
    )


async def post(
    transport: Transport,
    endpoint: Endpoint,
    payload: bytes,
    extra: Mapping[str, str] | None = None,
    *,
    provider: str,
    request_id: str,
    read_error: ErrorReader,
    scrub: Scrubber,
) -> UpstreamResponse:
    """POST and wait for the response head; anything but a 2xx becomes a ProviderError.

    The wait is bounded by the transport's ``read_s`` (the provider's ``first_byte_s``).
    """
    resp = await transport.post(endpoint, payload, extra)
    status = resp.status
    if 200 <= status < 300:
        return resp
    raw = await resp.read()
    if status < 400:  # a redirect (or an odd 1xx/3xx): never followed, never success
        raise not_a_reply(provider, f"an HTTP {status} (redirects are not followed)")
    message, code, param = read_error(status, raw)
    reason = shown_reason(
        message, raw, provider=provider, status=status, request_id=request_id, scrub=scrub
    )
    raise status_error(
        provider, status, reason, resp.headers.get("retry-after"), code=code, param=param
    )


def _scrubbed(exc: ProviderError, scrub: Scrubber | None) -> ProviderError:
    """``exc`` with its message scrubbed of secrets (upstream stream errors carry text)."""
    if scrub is not None:
        exc.message = scrub(exc.message)
        exc.args = (exc.message,)
    return exc


class Translate(Protocol):
    """Turns upstream stream bytes into OpenAI SSE bytes; knows when the stream ended."""

    def feed(self, data: bytes) -> bytes: ...

    @property
    def finished(self) -> bool: ...


async def open_stream(
    resp: UpstreamResponse,
    tr: Translate,
    *,
    provider: str,
    first_byte_s: float,
    scrub: Scrubber | None = None,
    stall_s: float | None = None,
) -> tuple[bytes, AsyncIterator[bytes]]:
    """Read up to the first forwardable bytes (bounded), then hand back the rest lazily.

    Failing before the first bytes is failover-able; after it, ``rest`` raises
    ``StreamInterrupted`` if the upstream ends without finishing, or stays silent for
    ``stall_s`` (code ``upstream_stream_stalled``). An error the stream itself carried
    (an upstream ``error`` event) has its message scrubbed.
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
    except ProviderError as exc:
        resp.close()
        raise _scrubbed(exc, scrub) from exc.__cause__
    except BaseException:
        resp.close()
        raise
    if stall_s is not None:  # from here on, the silence allowed between reads
        resp.set_read_timeout(stall_s)

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
        except StreamInterrupted as exc:
            raise _scrubbed(exc, scrub) from exc.__cause__
        except ProviderTimeout as exc:  # no bytes for stall_s: the stream stalled
            raise StreamInterrupted(
                f"{provider}: the stream stalled (no bytes within the stall timeout)",
                provider=provider,
                code="upstream_stream_stalled",
            ) from exc
        except ProviderError as exc:  # a cap hit mid-stream: the stream is cut
            raise StreamInterrupted(exc.message, provider=provider, code=exc.code) from exc
        finally:
            resp.close()

    return first, rest()

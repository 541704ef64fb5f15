"""The response headers every reply and refusal carries: request id, route, served model,
``x-ratelimit-*``, and the time spent in the gateway."""

from __future__ import annotations

from gatekeeper.exchange import Exchange
from gatekeeper.pipeline.admission import Admission

__all__ = ["overhead", "reply_headers", "response_headers"]


def response_headers(ex: Exchange, admission: Admission) -> dict[str, str]:
    headers = reply_headers(ex, admission)
    headers["x-gatekeeper-overhead-ms"] = overhead(ex)
    return headers


def reply_headers(ex: Exchange, admission: Admission) -> dict[str, str]:
    """Every response header but the overhead (which needs the end time)."""
    headers = {"x-request-id": ex.request_id}
    if ex.route is not None:
        headers.update(ex.route.headers())
    if ex.served is not None:
        headers["x-gatekeeper-model"] = ex.served.name
        headers["x-gatekeeper-provider"] = ex.served.provider
    if ex.cache:
        headers["x-gatekeeper-cache"] = ex.cache
    headers.update(admission.headers(ex))
    return headers


def overhead(ex: Exchange) -> str:
    """Time in the gateway so far, minus upstream attempts (a stream's: until its headers)."""
    spent = ex.ttft_ms if ex.ttft_ms is not None else ex.elapsed_ms()
    return f"{max(0.0, spent - sum(a.ms for a in ex.attempts)):.3f}"

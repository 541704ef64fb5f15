"""Bounds on what an upstream may send, and how long a caller waits for a connection.

``upstream:`` in ``config/gatekeeper.yaml`` (documented in docs/providers.md). Every
cap turns into a 502 with a safe message when an upstream exceeds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatekeeper.errors import ConfigError
from gatekeeper.yamlread import Section

TRANSPORTS = ("h1", "aiohttp")


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    transport: str = "h1"  # which upstream HTTP client (see docs/providers.md)
    max_header_bytes: int = 64 * 1024  # one response head (status line + headers)
    max_body_bytes: int = 64 * 1024 * 1024  # one unary body after decoding (gzip/deflate)
    max_sse_event_bytes: int = 1024 * 1024  # one server-sent event (or undelimited line)
    pool_wait_s: float = 5.0  # waiting for a free connection slot; then "busy", not "down"
    trust_env: bool = True  # HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment


DEFAULT_LIMITS = UpstreamLimits()


def parse_upstream(data: object, path: str = "upstream") -> UpstreamLimits:
    s = Section(data, path)
    s.unknown(
        {
            "transport",
            "max_header_bytes",
            "max_body_bytes",
            "max_sse_event_bytes",
            "pool_wait_s",
            "trust_env",
        }
    )
    d = DEFAULT_LIMITS
    limits = UpstreamLimits(
        transport=s.choice("transport", d.transport, TRANSPORTS),
        max_header_bytes=s.integer("max_header_bytes", d.max_header_bytes, minimum=1024),
        max_body_bytes=s.integer("max_body_bytes", d.max_body_bytes, minimum=1024),
        max_sse_event_bytes=s.integer("max_sse_event_bytes", d.max_sse_event_bytes, minimum=1024),
        pool_wait_s=s.number("pool_wait_s", d.pool_wait_s),
        trust_env=s.flag("trust_env", d.trust_env),
    )
    if limits.pool_wait_s <= 0:
        raise ConfigError(f"{path}.pool_wait_s: must be greater than 0")
    return limits

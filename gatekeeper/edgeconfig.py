"""Typed configuration of the client edge: server bounds, TLS, fair sharing, the shield.

Re-exported by ``gatekeeper.config`` (which owns the YAML tree); kept apart so that
file stays small. Every value is documented in docs/limits.md; every error names its
YAML path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from gatekeeper.errors import ConfigError
from gatekeeper.yamlread import Section, as_list

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = [
    "ConcurrencyConfig",
    "EdgeLimits",
    "ShieldConfig",
    "TlsConfig",
    "parse_concurrency",
    "parse_edge_limits",
    "parse_shield",
    "parse_tls",
]


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """``server.limits``: what one worker process accepts from clients."""

    header_timeout_s: float = 10.0  # request line + headers must arrive within this
    max_header_bytes: int = 65_536  # request line + headers; more → 431
    body_timeout_s: float = 60.0  # the whole body must arrive within this of the headers
    idle_timeout_s: float = 30.0  # keep-alive: an idle connection is closed after this
    max_connections: int = 2048  # per process; at the cap the oldest idle one is closed
    max_streams: int = 1024  # concurrent SSE streams per process; more → 503
    max_messages: int = 10_000  # chat ``messages`` entries
    max_content_parts: int = 10_000  # content parts summed over all messages
    max_json_depth: int = 64  # nesting of objects/arrays in a request body


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``server.tls``: HTTPS when both files are set; mTLS for admin endpoints with a CA."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""  # set: /metrics and /dashboard also accept a client cert

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file and self.key_file)


@dataclass(frozen=True, slots=True)
class ConcurrencyConfig:
    """``limits.concurrency``: in-flight caps per process (a token's claims override)."""

    key_requests: int = 64
    key_streams: int = 32
    tenant_requests: int = 256
    tenant_streams: int = 128
    retry_after_s: float = 1.0


@dataclass(frozen=True, slots=True)
class ShieldConfig:
    """``shield``: per-client-IP limits applied before a token is verified."""

    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed
    exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # client CIDRs never limited
    requests_per_s: float = 0.0  # per client IP; 0 = no request-rate limit
    requests_burst: int = 0
    auth_failures_per_min: float = 30.0  # refill of the failed-auth bucket per IP
    auth_failures_burst: int = 60  # failures allowed at once before the IP is held
    negative_cache_size: int = 10_000  # known-bad tokens remembered (by hash)
    tracked_ips: int = 100_000  # client IPs remembered per process
    alert_failures: int = 500  # failures per alert interval that raise an alert
    alert_interval_s: float = 60.0
    retry_after_s: float = 10.0

    @property
    def networks(self) -> tuple[Network, ...]:
        """``trusted_proxies`` parsed (read once, when the shield is built)."""
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)

    @property
    def exempt_networks(self) -> tuple[Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.exempt)


def parse_edge_limits(data: object) -> EdgeLimits:
    s = Section(data, "server.limits")
    d = EdgeLimits()
    s.unknown(set(EdgeLimits.__dataclass_fields__))
    limits = EdgeLimits(
        header_timeout_s=s.number("header_timeout_s", d.header_timeout_s),
        max_header_bytes=s.integer("max_header_bytes", d.max_header_bytes, minimum=4096),
        body_timeout_s=s.number("body_timeout_s", d.body_timeout_s),
        idle_timeout_s=s.number("idle_timeout_s", d.idle_timeout_s),
        max_connections=s.integer("max_connections", d.max_connections, minimum=8),
        max_streams=s.integer("max_streams", d.max_streams, minimum=1),
        max_messages=s.integer("max_messages", d.max_messages, minimum=1),
        max_content_parts=s.integer("max_content_parts", d.max_content_parts, minimum=1),
        max_json_depth=s.integer("max_json_depth", d.max_json_depth, minimum=8),
    )
    if limits.max_json_depth > 200:  # orjson re-serialises at most 255 levels
        raise ConfigError("server.limits.max_json_depth: must be at most 200")
    return limits


def parse_tls(data: object) -> TlsConfig:
    s = Section(data, "server.tls")
    s.unknown({"cert_file", "key_file", "client_ca_file"})
    tls = TlsConfig(
        cert_file=s.text("cert_file", ""),
        key_file=s.text("key_file", ""),
        client_ca_file=s.text("client_ca_file", ""),
    )
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("server.tls: set both cert_file and key_file, or neither")
    if tls.client_ca_file and not tls.enabled:
        raise ConfigError("server.tls.client_ca_file: needs cert_file and key_file")
    return tls


def parse_concurrency(data: object) -> ConcurrencyConfig:
    s = Section(data, "limits.concurrency")
    d = ConcurrencyConfig()
    s.unknown(set(ConcurrencyConfig.__dataclass_fields__))
    return ConcurrencyConfig(
        key_requests=s.integer("key_requests", d.key_requests, minimum=1),
        key_streams=s.integer("key_streams", d.key_streams, minimum=1),
        tenant_requests=s.integer("tenant_requests", d.tenant_requests, minimum=1),
        tenant_streams=s.integer("tenant_streams", d.tenant_streams, minimum=1),
        retry_after_s=s.number("retry_after_s", d.retry_after_s),
    )


def _networks(data: object, path: str) -> tuple[Network, ...]:
    out = []
    for i, item in enumerate(as_list(data, path)):
        try:
            out.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            raise ConfigError(
                f"{path}[{i}]: not an IP address or CIDR ({str(item)[:60]!r})"
            ) from None
    return tuple(out)


def parse_shield(data: object) -> ShieldConfig:
    s = Section(data, "shield")
    d = ShieldConfig()
    s.unknown(set(ShieldConfig.__dataclass_fields__))
    networks = _networks(s.data.get("trusted_proxies"), "shield.trusted_proxies")
    exempt = _networks(s.data.get("exempt", list(d.exempt)), "shield.exempt")
    rate = s.number("requests_per_s", d.requests_per_s, positive=False)
    if rate < 0:
        raise ConfigError("shield.requests_per_s: must be >= 0 (0: no limit)")
    burst = s.integer("requests_burst", d.requests_burst)
    if rate > 0 and burst < 1:
        burst = max(1, int(rate * 2))
    return ShieldConfig(
        trusted_proxies=tuple(str(n) for n in networks),
        exempt=tuple(str(n) for n in exempt),
        requests_per_s=rate,
        requests_burst=burst,
        auth_failures_per_min=s.number("auth_failures_per_min", d.auth_failures_per_min),
        auth_failures_burst=s.integer("auth_failures_burst", d.auth_failures_burst, minimum=1),
        negative_cache_size=s.integer("negative_cache_size", d.negative_cache_size),
        tracked_ips=s.integer("tracked_ips", d.tracked_ips, minimum=16),
        alert_failures=s.integer("alert_failures", d.alert_failures, minimum=1),
        alert_interval_s=s.number("alert_interval_s", d.alert_interval_s),
        retry_after_s=s.number("retry_after_s", d.retry_after_s),
    )

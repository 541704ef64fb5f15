"""The abuse shield: per-client-IP limits applied before any token is verified.

    client IP        the TCP peer; or, when the peer is a trusted proxy
                     (``shield.trusted_proxies``), the rightmost X-Forwarded-For hop
                     that is not itself a trusted proxy
    request rate     a token bucket per IP (``requests_per_s``, off by default)
    failed auths     a bucket per IP of ``auth_failures_burst`` failures, refilled at
                     ``auth_failures_per_min``; while it is empty the IP is *held*:
                     a token the verifier has not already accepted gets 429 without
                     being looked at (a token in the verifier's cache still passes,
                     so one bad client behind a NAT does not lock out the others)

``/healthz`` and ``/readyz`` are never limited. Addresses in ``shield.exempt``
(loopback by default) are never limited either. All state is bounded
(``tracked_ips``) and per process. Per request: one or two dict lookups (the
peer's exempt/trusted memo, the failure table), plus a bucket update when the
request-rate limit is on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from gatekeeper.edgeconfig import Network, ShieldConfig
from gatekeeper.errors import GatewayError, RateLimited

__all__ = ["Shield", "TrustedProxies", "burst_alert"]

UNLIMITED_PATHS = frozenset({"/healthz", "/readyz"})
_MEMO_MAX = 4096


def _parse(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(ip.strip().strip("[]"))
    except ValueError:
        return None


class _Membership:
    """Whether an address is in a set of networks, memoised per address string."""

    __slots__ = ("_memo", "networks")

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self._memo: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        hit = self._memo.get(ip)
        if hit is None:
            addr = _parse(ip)
            hit = addr is not None and any(addr in net for net in self.networks)
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[ip] = hit
        return hit


class TrustedProxies:
    """Which peers may tell us the client's address (``X-Forwarded-For``)."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self._trusted = _Membership(networks)
        self.enabled = bool(self._trusted.networks)

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: ``peer`` unless ``peer`` is a trusted proxy."""
        if not forwarded_for or not self.enabled or peer not in self._trusted:
            return peer
        hops = [h.strip() for h in forwarded_for.split(",")]
        for hop in reversed(hops):
            if hop not in self._trusted:
                return hop if _parse(hop) is not None else peer
        return hops[0] if _parse(hops[0]) is not None else peer


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class Shield:
    """Per-IP buckets for requests and failed authentications (one per process)."""

    def __init__(
        self,
        config: ShieldConfig,
        knows: Callable[[str | None], bool] = lambda _: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.proxies = TrustedProxies(config.networks)
        self._exempt = _Membership(config.exempt_networks)
        self._knows = knows
        self._clock = clock
        self._requests: dict[str, list[float]] = {}  # ip -> [tokens, stamp]
        self._failures: dict[str, list[float]] = {}  # ip -> [failures left, stamp]
        self._fail_rate = config.auth_failures_per_min / 60.0
        self.window: Counter[str] = Counter()  # failures per IP since the last alert check
        self.refused = 0

    # ------------------------------------------------------------------ per request

    def client_ip(self, scope: Any) -> str:
        client = scope.get("client")
        peer = client[0] if client else ""
        if not self.proxies.enabled:
            return peer
        return self.proxies.client_ip(peer, _header(scope, b"x-forwarded-for"))

    def check(self, scope: Any) -> tuple[str | None, GatewayError | None]:
        """(the IP to account failures to, or None if exempt; a refusal, or None)."""
        if scope["path"] in UNLIMITED_PATHS:
            return None, None
        ip = self.client_ip(scope)
        if ip in self._exempt:
            return None, None
        now = self._clock()
        if self.config.requests_per_s > 0 and not self._take_request(ip, now):
            self.refused += 1
            return ip, RateLimited(
                "Too many requests from your address; slow down",
                retry_after=1.0,
                code="client_rate_limited",
            )
        if self._held(ip, now) and not self._knows(_header(scope, b"authorization")):
            self.refused += 1
            return ip, RateLimited(
                "Too many failed authentications from your address; retry later",
                retry_after=self.config.retry_after_s,
                code="auth_failures_exceeded",
            )
        return ip, None

    def failed(self, ip: str) -> None:
        """A request from ``ip`` was refused for its credentials (a 401)."""
        now = self._clock()
        bucket = self._failures.get(ip)
        if bucket is None:
            bucket = self._insert(self._failures, ip, float(self.config.auth_failures_burst), now)
        else:
            self._refill(bucket, now, self._fail_rate, self.config.auth_failures_burst)
        bucket[0] -= 1.0
        if len(self.window) < self.config.tracked_ips:
            self.window[ip] += 1

    # ------------------------------------------------------------------ buckets

    def _held(self, ip: str, now: float) -> bool:
        bucket = self._failures.get(ip)
        if bucket is None:
            return False
        self._refill(bucket, now, self._fail_rate, self.config.auth_failures_burst)
        return bucket[0] < 1.0

    def _take_request(self, ip: str, now: float) -> bool:
        cfg = self.config
        bucket = self._requests.get(ip)
        if bucket is None:
            bucket = self._insert(self._requests, ip, float(cfg.requests_burst), now)
        else:
            self._refill(bucket, now, cfg.requests_per_s, cfg.requests_burst)
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    @staticmethod
    def _refill(bucket: list[float], now: float, rate: float, cap: int) -> None:
        elapsed = now - bucket[1]
        if elapsed > 0:
            bucket[0] = min(float(cap), bucket[0] + elapsed * rate)
            bucket[1] = now

    def _insert(
        self, table: dict[str, list[float]], ip: str, full: float, now: float
    ) -> list[float]:
        if len(table) >= self.config.tracked_ips:
            del table[next(iter(table))]  # the oldest entry goes
        bucket = table[ip] = [full, now]
        return bucket

    def take_window(self) -> Counter[str]:
        window, self.window = self.window, Counter()
        return window


def burst_alert(window: Counter[str], threshold: int, interval_s: float) -> dict[str, Any] | None:
    """The BH_ALERTS payload for one interval's failures, or None below ``threshold``."""
    total = sum(window.values())
    if total < threshold:
        return None
    top = [{"ip": ip, "failures": n} for ip, n in window.most_common(5)]
    return {"failures": total, "interval_s": interval_s, "ips": len(window), "top": top}


async def watch_auth_failures(shield: Shield, alert: Callable[..., None], node_id: str) -> None:
    """Every ``alert_interval_s``: one ``auth_failures`` alert if the interval had a burst.

    The message id names the node and the interval, so JetStream drops duplicates.
    """
    cfg = shield.config
    while True:
        await asyncio.sleep(cfg.alert_interval_s)
        payload = burst_alert(shield.take_window(), cfg.alert_failures, cfg.alert_interval_s)
        if payload is not None:
            bucket = int(time.time() // cfg.alert_interval_s)
            alert("auth_failures", payload, msg_id=f"authfail:{node_id}:{bucket}")

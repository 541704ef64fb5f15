"""``/metrics``, and the live ``/dashboard`` (a static page fed one JSON snapshot a second).

    GET /metrics              Prometheus text; admin token (see below)
    GET /dashboard            the page (gatekeeper/static/dashboard.html); admin token
    GET /dashboard/events     text/event-stream, one snapshot a second; admin token
    GET /dashboard/static/*   the page's script and style (no data, no token)

The admin token (``server.admin_token``) is accepted as ``Authorization: Bearer …`` and,
for the dashboard only (a browser cannot set headers on a link or an EventSource), as
``?token=…``. With no admin token configured the dashboard is off (404); ``/metrics``
is then open only on a loopback listener, as a Prometheus endpoint on loopback usually
is, and off (404, with a warning at start) on any other: it names tenants and
providers. With ``server.tls.client_ca_file`` set, a client certificate that the
handshake verified against that CA is accepted in place of the admin token.

A snapshot reads what the node already has: the metrics registry (the same numbers as
``/metrics``: totals, lane queues and sheds, result-cache outcomes), the health windows
and peers' BH_HEALTH reports, the breakers, the ledger, and recent BH_EVENTS / BH_ALERTS
messages. Those are followed with core NATS subscriptions only while someone watches,
into small ring buffers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hmac
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gatekeeper.bus.streams import ALERTS, EVENTS
from gatekeeper.config import Config
from gatekeeper.errors import AuthError, NotFound, ServiceUnavailable
from gatekeeper.http.boundary import endpoint
from gatekeeper.http.responses import SSEResponse
from gatekeeper.observability.panels import cache_panel, lanes_panel

if TYPE_CHECKING:
    from gatekeeper.bus.health_bus import HealthBus
    from gatekeeper.observability.metrics import Metrics
    from gatekeeper.pipeline import Pipeline


class Node(Protocol):
    """What the dashboard reads of the running node (``gatekeeper.node.Node``)."""

    node_id: str
    nc: Client
    pipeline: Pipeline
    health: HealthBus
    metrics: Metrics


log = structlog.get_logger("gatekeeper.dashboard")

HISTORY = 50  # messages kept per ring buffer
SHOWN = 15  # of which a snapshot carries the newest
STREAM_MAX_S = 30.0  # an SSE connection ends after this; the browser reconnects
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'self'; style-src 'self'; img-src 'self' data:",
}
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


# ---------------------------------------------------------------------- pure parts


def bearer_ok(header: str | None, token: str) -> bool:
    scheme, _, value = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


def provider_health(
    entries: Iterable[tuple[str, Mapping[str, Mapping[str, float | int]]]],
) -> dict[str, dict[str, float | int]]:
    """Per provider, over every (node, model) window: counts summed, p50 weighted by
    successful samples, p99 the worst one (percentiles of separate windows do not merge
    exactly; the worst p99 is the one that matters for an SLA)."""
    acc: dict[str, list[float]] = {}
    for provider, models in entries:
        a = acc.setdefault(provider, [0, 0, 0.0, 0, 0.0])  # count, errors, p50*ok, ok, p99
        for stats in models.values():
            count, errors = int(stats.get("count", 0)), int(stats.get("errors", 0))
            ok = count - errors
            a[0] += count
            a[1] += errors
            if ok > 0:
                a[2] += float(stats.get("p50_ms", 0.0)) * ok
                a[3] += ok
                a[4] = max(a[4], float(stats.get("p99_ms", 0.0)))
    return {
        p: {
            "count": int(count),
            "errors": int(errors),
            "error_rate": round(errors / count, 4) if count else 0.0,
            "p50_ms": round(p50w / ok, 1) if ok else 0.0,
            "p99_ms": round(p99, 1),
        }
        for p, (count, errors, p50w, ok, p99) in acc.items()
    }


def _pick(raw: bytes, fields: tuple[str, ...]) -> dict[str, Any] | None:
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return {f: msg.get(f) for f in fields} if isinstance(msg, dict) else None


ROUTE_FIELDS: tuple[str, ...] = (
    "ts",
    "node_id",
    "request_id",
    "requested_model",
    "chosen",
    "provider",
    "mode",
)
ROUTE_FIELDS += ("task", "reason")
INCIDENT_FIELDS: tuple[str, ...] = (
    "ts",
    "node_id",
    "type",
    "request_id",
    "from_provider",
    "from_model",
)
INCIDENT_FIELDS += ("status", "error", "to_provider", "to_model", "provider", "state")
ALERT_FIELDS: tuple[str, ...] = (
    "ts",
    "node_id",
    "type",
    "key_id",
    "counter",
    "threshold_pct",
    "provider",
)
ALERT_FIELDS += ("model", "metric", "value", "limit", "depth")


def newest(buffer: Iterable[bytes], fields: tuple[str, ...], n: int = SHOWN) -> list[Any]:
    items = list(buffer)[-n:]
    return [m for m in (_pick(raw, fields) for raw in reversed(items)) if m is not None]


# ---------------------------------------------------------------------- the feed


class DashboardFeed:
    """Recent events and a cached snapshot for every viewer of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.routes: collections.deque[bytes] = collections.deque(maxlen=HISTORY)
        self.incidents: collections.deque[bytes] = collections.deque(maxlen=HISTORY)
        self.alerts: collections.deque[bytes] = collections.deque(maxlen=HISTORY)
        self.viewers = 0
        self._subs: list[Any] = []
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._counts: collections.deque[tuple[float, float]] = collections.deque(maxlen=16)

    # -------------------------------------------------------------- viewers

    def attach(self) -> None:
        self.viewers += 1
        self._later(self._sync())

    def detach(self) -> None:
        self.viewers -= 1
        self._later(self._sync())

    def _later(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:  # a dashboard problem must not disturb the node
                log.exception("dashboard.subscription_failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sync(self) -> None:
        """Follow BH_EVENTS / BH_ALERTS while anyone watches, and only then."""
        async with self._lock:
            nc = self.node.nc
            if self.viewers > 0 and not self._subs:
                self._subs = [
                    await nc.subscribe("bh.events.>", cb=self._on_event),
                    await nc.subscribe("bh.alerts.>", cb=self._on_alert),
                ]
                await self._load_history()
            elif self.viewers <= 0 and self._subs:
                subs, self._subs = self._subs, []
                for sub in subs:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()

    async def _on_event(self, msg: Msg) -> None:
        (self.routes if msg.subject == "bh.events.route" else self.incidents).append(msg.data)

    async def _on_alert(self, msg: Msg) -> None:
        self.alerts.append(msg.data)

    async def _load_history(self) -> None:
        """The newest messages already in the streams, so a fresh page is not empty."""
        js = self.node.nc.jetstream()
        for stream in (EVENTS, ALERTS):
            try:
                state = (await asyncio.wait_for(js.stream_info(stream), 2)).state
            except (NatsError, TimeoutError):  # no stream or no permission: live feed only
                continue
            first = max(state.first_seq, state.last_seq - HISTORY + 1)
            got = await asyncio.gather(
                *(js.get_msg(stream, seq) for seq in range(first, state.last_seq + 1)),
                return_exceptions=True,
            )
            routes, incidents, alerts = [], [], []
            for m in got:
                if isinstance(m, BaseException) or m.data is None:
                    continue
                subject = m.subject or ""
                if subject == "bh.events.route":
                    routes.append(m.data)
                elif subject.startswith("bh.events."):
                    incidents.append(m.data)
                else:
                    alerts.append(m.data)
            for buffer, old in ((self.routes, routes), (self.incidents, incidents)):
                _prepend(buffer, old)
            _prepend(self.alerts, alerts)

    # -------------------------------------------------------------- snapshot

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < 0.5:
            return self._cached[1]
        node = self.node
        totals = node.metrics.totals()
        self._counts.append((now, totals["requests"]))
        pipeline = node.pipeline
        snap = {
            "ts": round(time.time(), 3),
            "node_id": node.node_id,
            "totals": {k: v for k, v in totals.items() if not isinstance(v, dict)},
            "rps": round(self._rps(now), 2),
            "providers": self._providers(now, totals["breakers"]),
            "lanes": lanes_panel(
                totals["lane_depth"], totals["lane_shed"], pipeline.capacity is not None
            ),
            "cache": cache_panel(
                totals["cache_results"], totals["cache_saved_usd"], pipeline.cache is not None
            ),
            "keys": [row.to_dict() for row in node.metrics.top_keys(10)],
            "routes": newest(self.routes, ROUTE_FIELDS),
            "incidents": newest(self.incidents, INCIDENT_FIELDS, 10),
            "alerts": newest(self.alerts, ALERT_FIELDS),
            "watching": bool(self._subs),
        }
        self._cached = (now, snap)
        return snap

    def _rps(self, now: float) -> float:
        """Requests per second over the last ~5 s of snapshots."""
        recent = [(t, n) for t, n in self._counts if now - t <= 5.5]
        if len(recent) < 2 or recent[-1][0] - recent[0][0] <= 0:
            return 0.0
        return max(0.0, (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0]))

    def _providers(self, now: float, breakers: Mapping[str, int]) -> list[dict[str, Any]]:
        node = self.node
        health = node.health
        fresh = now - 3 * health.cfg.publish_interval_s
        peers = [
            (peer, provider, models)
            for (peer, provider), (at, models) in list(health.reports.items())
            if at >= fresh and peer != node.node_id
        ]
        own = health.book.snapshot(now)
        peers += [
            (node.node_id, p, {m: s.to_dict() for m, s in by.items()}) for p, by in own.items()
        ]
        entries = [(provider, models) for _, provider, models in peers]
        nodes: dict[str, set[str]] = {}
        for peer, provider, _ in peers:
            nodes.setdefault(provider, set()).add(peer)
        stats = provider_health(entries)
        names = sorted(set(node.pipeline.pool.breakers) | set(stats))
        local = node.pipeline.pool.breakers
        empty = {"count": 0, "errors": 0, "error_rate": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
        return [
            {
                "provider": name,
                "breaker": local[name].state if name in local else "closed",
                "breaker_worst": ("closed", "half_open", "open")[min(2, breakers.get(name, 0))],
                "nodes": len(nodes.get(name, ())),
                **stats.get(name, empty),
            }
            for name in names
        ]

    async def stream(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        """One SSE connection: a snapshot now and every second, for STREAM_MAX_S."""
        self.attach()
        try:
            await write(b"retry: 1000\n\n")
            until = time.monotonic() + STREAM_MAX_S
            while time.monotonic() < until:
                await write(b"data: " + orjson.dumps(self.snapshot()) + b"\n\n")
                await asyncio.sleep(1.0)
        finally:
            self.detach()


def _prepend(buffer: collections.deque[bytes], older: list[bytes]) -> None:
    """Put stream history before what live subscriptions already brought (no duplicates)."""
    live = list(buffer)
    seen = set(live)
    buffer.clear()
    buffer.extend([m for m in older if m not in seen] + live)


# ---------------------------------------------------------------------- routes


@functools.cache
def _asset(name: str) -> bytes:
    return (resources.files("gatekeeper") / "static" / name).read_bytes()


def client_cert_name(scope: Mapping[str, Any]) -> str | None:
    """The subject of a verified client certificate (set by the HTTP edge), if any."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    name = tls.get("client_cert_name")
    return name if isinstance(name, str) and name else None


def metrics_open(config: Config) -> bool:
    """Whether /metrics answers without credentials: only without an admin token, on
    loopback, and without mTLS for admin endpoints."""
    return not config.server.admin_token and config.server.loopback


def observability_routes(config: Config, node_of: Callable[[], Node | None]) -> list[Route]:
    admin = config.server.admin_token
    mtls = bool(config.server.tls.client_ca_file)
    feeds: list[DashboardFeed] = []  # one, for the node of this process
    if not admin and not mtls and not config.server.loopback:
        log.warning(
            "metrics.disabled",
            reason="server.host is not loopback and server.admin_token is not set",
            host=config.server.host,
        )

    def credentials_ok(request: Request) -> bool:
        if admin and bearer_ok(request.headers.get("authorization"), admin):
            return True
        return mtls and client_cert_name(request.scope) is not None

    def live_node() -> Node:
        node = node_of()
        if node is None:
            raise ServiceUnavailable("The gateway is still starting")
        return node

    def admit(request: Request, *, query: bool) -> None:
        if not admin and not mtls:
            raise NotFound(
                "The dashboard is off: set server.admin_token to turn it on",
                code="dashboard_disabled",
            )
        if credentials_ok(request):
            return
        given = request.query_params.get("token", "") if query and admin else ""
        if given and hmac.compare_digest(given.encode(), admin.encode()):
            return
        raise AuthError("This endpoint needs the admin token (server.admin_token)")

    def feed() -> DashboardFeed:
        node = live_node()
        if not feeds or feeds[0].node is not node:
            feeds[:] = [DashboardFeed(node)]
        return feeds[0]

    @endpoint
    async def metrics(request: Request, rid: str, started: float) -> Response:
        if not metrics_open(config) and not credentials_ok(request):
            if not admin and not mtls:
                raise NotFound(
                    "/metrics is off on a non-loopback listener without server.admin_token",
                    code="metrics_disabled",
                )
            raise AuthError("/metrics needs the admin token (server.admin_token)")
        body = live_node().metrics.render()
        return Response(body, headers={"x-request-id": rid}, media_type=CONTENT_TYPE_LATEST)

    @endpoint
    async def page(request: Request, rid: str, started: float) -> Response:
        admit(request, query=True)
        headers = {"x-request-id": rid, **SECURITY_HEADERS}
        return Response(_asset("dashboard.html"), headers=headers, media_type="text/html")

    @endpoint
    async def events(request: Request, rid: str, started: float) -> Response:
        admit(request, query=True)
        return SSEResponse(feed().stream, {"x-request-id": rid})

    @endpoint
    async def asset(request: Request, rid: str, started: float) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            raise NotFound(f"Unknown path {request.url.path[:200]}", code="unknown_url")
        headers = {"x-request-id": rid, "x-content-type-options": "nosniff"}
        return Response(_asset(name), headers=headers, media_type=ASSETS[name])

    return [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/events", events, methods=["GET"]),
        Route("/dashboard/static/{name}", asset, methods=["GET"]),
    ]

"""``create_app(config, node) -> Starlette``: routes, and a lifespan that builds the node.

Long-lived things (NATS connection, HTTP pools, keyring, ledger, audit chain) are
created in the lifespan and handed to the pipeline; nothing is global.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from gatekeeper.batches.api import batch_routes
from gatekeeper.bus.natsauth import redact_url
from gatekeeper.catalog import Catalog, model_entry
from gatekeeper.config import Config
from gatekeeper.errors import (
    GatewayError,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    ServiceUnavailable,
)
from gatekeeper.http.boundary import endpoint
from gatekeeper.http.inbound import Inbound, Readable, request_id_for
from gatekeeper.http.openapi import OPENAPI_JSON
from gatekeeper.http.responses import error_response, json_response
from gatekeeper.ingress.routes import ingress_routes
from gatekeeper.node import Node, start_node
from gatekeeper.observability.dashboard import observability_routes
from gatekeeper.passes.service import ISSUE_PATH, PassService
from gatekeeper.passes.wallet import DIRECTORY_PATH
from gatekeeper.pipeline import Pipeline
from gatekeeper.routing.matrix import Matrix
from gatekeeper.runtime import tune_gc

log = structlog.get_logger("gatekeeper.app")


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    node_id: str
    nats_url: str


@dataclass(slots=True)
class AppState:
    config: Config
    identity: NodeIdentity
    catalog: Catalog
    node: Node | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def live_matrix(self) -> Matrix:
        if self.node is None:
            raise ServiceUnavailable("The gateway is still starting")
        return self.node.router.matrix

    @property
    def pipeline(self) -> Pipeline:
        if self.node is None:
            raise ServiceUnavailable("The gateway is still starting")
        return self.node.pipeline


def create_app(config: Config, identity: NodeIdentity) -> FastPaths:
    state = AppState(config, identity, Catalog.build(config))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.node = await start_node(config, state.catalog, identity.node_id, identity.nats_url)
        log.info(
            "node.started",
            node_id=identity.node_id,
            nats=redact_url(identity.nats_url),
            models=len(state.catalog.models),
            demo=state.catalog.demo,
        )
        if config.server.gc_tuning:
            tune_gc()
        try:
            yield
        finally:
            await state.node.stop(config.server.shutdown_grace_s)
            log.info("node.stopped", node_id=identity.node_id)

    @endpoint
    async def chat(request: Request, rid: str, started: float) -> Response:
        return await state.pipeline.chat_completions(request, rid, started)

    @endpoint
    async def embeddings(request: Request, rid: str, started: float) -> Response:
        return await state.pipeline.embeddings(request, rid, started)

    @endpoint
    async def models(request: Request, rid: str, started: float) -> Response:
        await state.pipeline.authenticate(request)
        matrix = state.live_matrix()
        body = {"object": "list", "data": [model_entry(m, state.created) for m in matrix]}
        return json_response(orjson.dumps(body), {"x-request-id": rid})

    @endpoint
    async def model(request: Request, rid: str, started: float) -> Response:
        await state.pipeline.authenticate(request)
        name = request.path_params["model"]
        spec = state.live_matrix().get(name)
        if spec is None:
            raise ModelNotFound(f"The model '{name[:100]}' does not exist", param="model")
        return json_response(orjson.dumps(model_entry(spec, state.created)), {"x-request-id": rid})

    @endpoint
    async def usage(request: Request, rid: str, started: float) -> Response:
        """A key's own budget and rate-limit counters, as this node sees them."""
        node = state.node
        assert node is not None
        claims = await state.pipeline.authenticate(request)
        body = {
            "key_id": claims.sub,
            "tenant": claims.tenant,
            "node_id": node.node_id,
            "counters": node.admission.usage(claims),
        }
        return json_response(orjson.dumps(body), {"x-request-id": rid})

    @endpoint
    async def pass_issue(request: Request, rid: str, started: float) -> Response:
        return await _passes(state).issue(request, rid, started)

    @endpoint
    async def pass_directory(request: Request, rid: str, started: float) -> Response:
        return await _passes(state).directory(request, rid, started)

    async def healthz(request: Request) -> Response:
        return json_response(b'{"status":"ok"}', {})

    async def openapi(request: Request) -> Response:
        return json_response(OPENAPI_JSON, {})

    async def readyz(request: Request) -> Response:
        report = state.node.readiness() if state.node else {"ready": False, "starting": True}
        status = 200 if report.get("ready") else 503
        return json_response(orjson.dumps(report), {}, status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        rid = request_id_for(request.headers.get("x-request-id"))
        err: GatewayError
        if exc.status_code == 405:
            err = MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}")
        else:
            err = NotFound(f"Unknown path {request.url.path[:200]}", code="unknown_url")
        return error_response(
            err,
            rid,
            {"allow": exc.headers.get("allow", "")}
            if exc.headers and "allow" in exc.headers
            else None,
        )

    extra_routes, extra_fast = ingress_routes(config, lambda: state.node)
    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        *extra_routes,  # /v1/messages, /v1/responses (gatekeeper.ingress)
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/gatekeeper/usage", usage, methods=["GET"]),
        *batch_routes(
            config.batches, config.server.max_body_bytes, lambda: state.node, dict(config.aliases)
        ),
        Route(ISSUE_PATH, pass_issue, methods=["POST"]),
        Route(DIRECTORY_PATH, pass_directory, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *observability_routes(config, lambda: state.node),  # /metrics, /dashboard
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    app.state.gateway = state
    fast = {("POST", "/v1/chat/completions"): chat, ("POST", "/v1/embeddings"): embeddings}
    return FastPaths(state, app, {**fast, **extra_fast})


def _passes(state: AppState) -> PassService:
    node = state.node
    if node is None:
        raise ServiceUnavailable("The gateway is still starting")
    if node.passes is None:
        raise NotFound("Privacy Passes are not enabled here (passes.enabled)", code="unknown_url")
    return node.passes


class FastPaths:
    """Sends the hot endpoints straight to their handler; everything else to Starlette.

    The handlers carry their own error boundary, so skipping Starlette's middleware
    and router for them changes no behaviour, only the per-request cost.

    Every HTTP request first passes the node's abuse shield (``auth.shield``): a
    refusal is answered here; a 401 is accounted to the client's address.
    """

    def __init__(
        self,
        gateway: AppState,
        app: Starlette,
        routes: dict[tuple[str, str], Callable[[Readable], Awaitable[Response]]],
    ) -> None:
        self.gateway = gateway
        self.app = app
        self.routes = routes
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        node = self.gateway.node
        failed = None  # where a 401 is accounted: the shield, for a non-exempt address
        if node is not None and node.shield is not None:
            ip, refusal = node.shield.check(scope)
            if refusal is not None:
                rid = request_id_for(None)
                await error_response(refusal, rid)(scope, receive, send)
                return
            if ip is not None:
                failed = functools.partial(node.shield.failed, ip)
        handler = self.routes.get((scope["method"], scope["path"]))
        if handler is not None:
            response = await handler(Inbound(scope, receive))
            if failed is not None and response.status_code == 401:
                failed()
            await response(scope, receive, send)
            return
        if failed is not None:
            send = _watch_401(send, failed)
        await self.app(scope, receive, send)


def _watch_401(send: Send, failed: Callable[[], None]) -> Send:
    """``send``, noting a 401 response (Starlette-routed endpoints: not the hot path)."""

    async def watched(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 401:
            failed()
        await send(message)

    return watched

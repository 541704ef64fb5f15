"""The request pipeline, top to bottom. Each step is a small object handed in.

    1 request      http.inbound + validate      parse, cap, check
    2 token        auth.TokenVerifier           Ed25519 PASETO, offline, cached
    3 rate limit   limits.Admission.admit       rpm / tpm   (CRDT counters)
    4 budget       limits.Admission.admit       tokens / usd reservation (CRDT counters)
    5 route        routing.Router.route         model + ordered fallbacks
    6 providers    providers.ProviderPool       failover chain, backoff, breakers
    7 respond      http.responses               JSON or SSE, OpenAI wire format
    8 audit        audit.Auditor.commit         BH_AUDIT (strict: acked before the end)

The route (5) is decided before admission (3–4) because a USD reservation needs the
chosen model's price; deciding is pure and takes microseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

import orjson
import structlog
from starlette.responses import Response

from gatekeeper.auth.claims import Claims, model_allowed
from gatekeeper.auth.verifier import TokenVerifier
from gatekeeper.config import Config
from gatekeeper.errors import GatewayError, PermissionDenied, StreamInterrupted
from gatekeeper.http.inbound import Readable, read_json
from gatekeeper.http.responses import SSEResponse, json_response
from gatekeeper.providers.base import DONE_EVENT, Call, Usage
from gatekeeper.providers.failover import Attempt
from gatekeeper.providers.pool import ProviderPool
from gatekeeper.providers.sse import error_event
from gatekeeper.routing.matrix import ModelSpec
from gatekeeper.routing.router import AUTO
from gatekeeper.validate import ChatRequest, validate_chat, validate_embeddings

log = structlog.get_logger("gatekeeper.pipeline")


Later = Callable[[], tuple[tuple[ModelSpec, ...], dict[str, Any]]]


class RouteDecision:
    """The model for a request, the failover plan, and the event for BH_EVENTS.

    ``plan`` and ``event`` may be deferred (``later``): a named model's failover order
    needs the prompt's task class, which is then scored only when something asks —
    the pool after a failed first attempt, or the routing event, built while the
    audit record's ack travels — and not on the request's critical path.
    """

    __slots__ = ("_event", "_later", "_plan", "mode", "model", "prompt_tokens", "reason")

    def __init__(
        self,
        model: ModelSpec,
        plan: tuple[ModelSpec, ...] | None,
        mode: str,
        reason: str,
        event: dict[str, Any] | None = None,
        prompt_tokens: int = 0,  # the router's prompt estimate (0: not estimated)
        later: Later | None = None,
    ) -> None:
        self.model, self.mode, self.reason, self.prompt_tokens = model, mode, reason, prompt_tokens
        self._plan, self._event, self._later = plan, event, later

    def _resolve(self) -> None:
        if self._later is not None:
            self._plan, self._event = self._later()
            self._later = None

    @property
    def plan(self) -> Sequence[ModelSpec]:
        """What the pool tries, in order (``model`` first; the rest computed on demand)."""
        if self._plan is not None:
            return self._plan
        return Plan(self.model, self)

    def full_plan(self) -> tuple[ModelSpec, ...]:
        self._resolve()
        assert self._plan is not None
        return self._plan

    @property
    def event(self) -> dict[str, Any]:
        self._resolve()
        return self._event or {}

    def headers(self) -> dict[str, str]:
        return {"x-gatekeeper-routing-mode": self.mode, "x-gatekeeper-route-reason": self.reason}


class Plan(Sequence[ModelSpec]):
    """A deferred failover plan: the first model at once, the others when first asked for."""

    __slots__ = ("decision", "first")

    def __init__(self, first: ModelSpec, decision: RouteDecision) -> None:
        self.first, self.decision = first, decision

    def __iter__(self) -> Iterator[ModelSpec]:
        yield self.first
        yield from self.decision.full_plan()[1:]

    def __len__(self) -> int:
        return len(self.decision.full_plan())

    @overload
    def __getitem__(self, index: int) -> ModelSpec: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[ModelSpec]: ...

    def __getitem__(self, index: int | slice) -> ModelSpec | Sequence[ModelSpec]:
        if index == 0:
            return self.first
        return self.decision.full_plan()[index]


@dataclass(slots=True)
class Exchange:
    """Everything one request learned on its way through; becomes the audit record."""

    request_id: str
    started: float
    endpoint: str
    claims: Claims | None = None
    requested_model: str = ""
    stream: bool = False
    route: RouteDecision | None = None
    served: ModelSpec | None = None
    attempts: tuple[Attempt, ...] = ()
    usage: Usage | None = None
    status: int = 200
    error_code: str | None = None
    ttft_ms: float | None = None
    ticket: Any = None
    routed: bool = False  # its routing event has been sent
    input_chars: int = 0  # embeddings: size of the input, for the token reservation

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)


class Router(Protocol):
    def route(
        self,
        req: ChatRequest,
        claims: Claims | None,
        mode_header: str | None,
        open_breakers: frozenset[str],
    ) -> RouteDecision: ...

    def route_embedding(self, model: str) -> RouteDecision: ...


class Admission(Protocol):
    """Steps 3–4: rate limits and budget as one atomic reservation."""

    def admit(self, ex: Exchange, req: ChatRequest | None) -> Any: ...

    def settle(self, ex: Exchange) -> None: ...

    def headers(self, ex: Exchange) -> dict[str, str]: ...


class Auditor(Protocol):
    async def commit(self, ex: Exchange) -> None: ...

    def begin(self, ex: Exchange) -> Any:
        """Seal the record (and send it, in strict mode); ``end`` waits for its fate."""

    async def end(self, ex: Exchange, sealed: Any) -> None: ...

    def routed(self, ex: Exchange) -> None: ...


@dataclass(slots=True)
class Pipeline:
    config: Config
    verifier: TokenVerifier
    router: Router
    admission: Admission
    pool: ProviderPool
    auditor: Auditor
    background: set[asyncio.Task[None]] = field(default_factory=set)

    # ------------------------------------------------------------------ steps 1–5

    def _authorize(self, ex: Exchange, request: Readable) -> Claims:
        claims = self.verifier.verify_bearer(request.headers.get("authorization"))
        ex.claims = claims
        return claims

    def _check_model_allowed(self, claims: Claims, model: str) -> None:
        if not model_allowed(claims, model):
            raise PermissionDenied(
                f"This API key may not use the model '{model}'",
                param="model",
                code="model_not_allowed",
            )

    async def _front(self, request: Readable, ex: Exchange) -> ChatRequest:
        claims = self._authorize(ex, request)
        body = await read_json(request, self.config.server.max_body_bytes)
        req = validate_chat(body)
        ex.requested_model, ex.stream = req.model, req.stream
        if req.model != AUTO:  # "auto" is resolved among the key's allowed models
            self._check_model_allowed(claims, req.model)
        route = self.router.route(
            req, claims, request.headers.get("x-routing-mode"), self.pool.open_breakers()
        )
        ex.route = route  # its BH_EVENTS event is sent with the audit record, off the critical path
        ex.ticket = self.admission.admit(ex, req)
        return req

    def _deadline(self) -> float:
        return time.monotonic() + self.config.server.request_timeout_s

    def _response_headers(self, ex: Exchange) -> dict[str, str]:
        headers = self._reply_headers(ex)
        headers["x-gatekeeper-overhead-ms"] = self._overhead(ex)
        return headers

    def _reply_headers(self, ex: Exchange) -> dict[str, str]:
        """Every response header but the overhead (which needs the end time)."""
        headers = {"x-request-id": ex.request_id}
        if ex.route is not None:
            headers.update(ex.route.headers())
        if ex.served is not None:
            headers["x-gatekeeper-model"] = ex.served.name
            headers["x-gatekeeper-provider"] = ex.served.provider
        headers.update(self.admission.headers(ex))
        return headers

    @staticmethod
    def _overhead(ex: Exchange) -> str:
        """Time in the gateway so far, minus upstream attempts (a stream's: until its headers)."""
        spent = ex.ttft_ms if ex.ttft_ms is not None else ex.elapsed_ms()
        return f"{max(0.0, spent - sum(a.ms for a in ex.attempts)):.3f}"

    # ------------------------------------------------------------------ endpoints

    async def chat_completions(self, request: Readable, rid: str, started: float) -> Response:
        ex = Exchange(rid, started, "chat")
        try:
            req = await self._front(request, ex)
            assert ex.route is not None
            call = Call(ex.route.model, req.body, rid, req.include_usage)
            if req.stream:
                return await self._stream(ex, call)
            served = await self.pool.chat(ex.route.plan, call, self._deadline())
        except GatewayError as err:
            await self._failed(ex, err)
            raise
        ex.served, ex.attempts, ex.usage = served.model, served.attempts, served.result.usage
        return await self._reply(ex, served.result.body)

    async def embeddings(self, request: Readable, rid: str, started: float) -> Response:
        ex = Exchange(rid, started, "embeddings")
        try:
            claims = self._authorize(ex, request)
            body = await read_json(request, self.config.server.max_body_bytes)
            ex.requested_model = validate_embeddings(body)
            ex.input_chars = len(orjson.dumps(body["input"]))
            self._check_model_allowed(claims, ex.requested_model)
            ex.route = self.router.route_embedding(ex.requested_model)
            ex.ticket = self.admission.admit(ex, None)
            call = Call(ex.route.model, body, rid)
            served = await self.pool.embeddings(ex.route.plan, call, self._deadline())
        except GatewayError as err:
            await self._failed(ex, err)
            raise
        ex.served, ex.attempts, ex.usage = served.model, served.attempts, served.result.usage
        return await self._reply(ex, served.result.body)

    async def _reply(self, ex: Exchange, body: bytes) -> Response:
        """Audit, settle, answer. Settling and the headers happen while JetStream
        acknowledges the record (strict mode sends it before this awaits)."""
        sealed = self.auditor.begin(ex)
        try:
            if ex.ticket is not None:
                self.admission.settle(ex)
            headers = self._reply_headers(ex)
        finally:  # a sealed record is always seen through (the chain waits on it)
            await self.auditor.end(ex, sealed)
        headers["x-gatekeeper-overhead-ms"] = self._overhead(ex)
        return json_response(body, headers)

    # ------------------------------------------------------------------ step 6–8

    async def _stream(self, ex: Exchange, call: Call) -> Response:
        assert ex.route is not None
        served = await self.pool.chat_stream(ex.route.plan, call, self._deadline())
        ex.served, ex.attempts = served.model, served.attempts
        ex.ttft_ms = ex.elapsed_ms()
        self.auditor.routed(ex)  # a stream may run for minutes: say how it was routed now
        stream = served.result
        t0, budget_s = ex.started, self.config.server.request_timeout_s

        async def pump(write: Callable[[bytes], Awaitable[None]]) -> None:
            finished = False
            try:
                await write(stream.first)
                async with asyncio.timeout(max(0.0, budget_s - (time.perf_counter() - t0))):
                    async for part in stream.rest:
                        await write(part)
                ex.usage = stream.state.usage
                finished = True
                await self._finish(ex)
                await write(DONE_EVENT)
            except (StreamInterrupted, TimeoutError) as exc:
                err = (
                    exc
                    if isinstance(exc, StreamInterrupted)
                    else StreamInterrupted(
                        "The stream ran past the request deadline (server.request_timeout_s)",
                        code="stream_deadline_exceeded",
                    )
                )
                ex.usage = stream.state.usage
                finished = True
                await self._failed(ex, err)
                await write(error_event(err))
            finally:
                await stream.aclose()
                if not finished:  # client went away (cancelled) or a write failed
                    ex.usage = stream.state.usage
                    ex.status, ex.error_code = 499, "client_disconnected"
                    self._later(self._settle_and_commit(ex))

        return SSEResponse(pump, self._response_headers(ex))

    async def _finish(self, ex: Exchange) -> None:
        await self._settle_and_commit(ex)

    async def _failed(self, ex: Exchange, err: GatewayError) -> None:
        ex.status, ex.error_code = err.status, err.code
        if isinstance(err, StreamInterrupted):
            ex.status = 502
        err.headers.update(self._response_headers(ex))
        await self._settle_and_commit(ex)

    async def _settle_and_commit(self, ex: Exchange) -> None:
        if ex.ticket is not None:
            self.admission.settle(ex)
        await self.auditor.commit(ex)

    def _later(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:  # background bookkeeping must never kill the loop
                log.exception("pipeline.background_failed")

        task = asyncio.ensure_future(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

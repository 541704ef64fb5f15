"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's API on the pipeline.

The request goes through the same steps as chat completions (``Pipeline.chat_completions``
with a ``MessagesIngress``); only the two ends differ: the body is parsed from Anthropic's
shape, the reply (JSON or stream) rendered in it, and errors use Anthropic's
``{"type": "error", "error": {...}}`` with Anthropic's statuses. The Gatekeeper token
may come as ``x-api-key`` (what the Anthropic SDK sends) or ``Authorization: Bearer``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope

from gatekeeper.errors import GatewayError, internal_error
from gatekeeper.exchange import Exchange
from gatekeeper.http.inbound import Readable, read_json, request_id_for
from gatekeeper.http.responses import JSON, json_response
from gatekeeper.ingress.messages_stream import MessagesStream, error_event
from gatekeeper.ingress.messages_wire import count_tokens, error_body, from_chat, to_chat
from gatekeeper.pipeline import Pipeline

log = structlog.get_logger("gatekeeper.ingress")


class MessagesIngress:
    """One request's adapters (it remembers the model name the client used).

    Served by an Anthropic provider, the client's body goes upstream as it is
    (``native``: see ``providers.anthropic_native``) and the reply comes back as
    Anthropic sent it; served by any other, both ends are translated.
    """

    name = "messages"
    __slots__ = ("aliases", "model", "native")

    def __init__(self, aliases: Mapping[str, str]) -> None:
        self.aliases = aliases
        self.model = ""
        self.native: dict[str, Any] | None = None

    async def to_chat(self, body: dict[str, Any], ex: Exchange) -> dict[str, Any]:
        model = body.get("model")
        self.model = model if isinstance(model, str) else ""
        chat = to_chat(body, self.aliases)  # validates the body, whoever serves it
        self.native = body
        return chat

    def render(self, body: bytes, ex: Exchange) -> bytes:
        if ex.upstream_wire == "anthropic":  # already a Message: only the model name changes
            message = orjson.loads(body)
            return orjson.dumps({**message, "model": self.model})
        return from_chat(body, self.model, ex.request_id)

    def stream(self, ex: Exchange) -> MessagesStream | NativeEvents:
        if ex.upstream_wire == "anthropic":
            return NativeEvents()
        estimate = ex.route.prompt_tokens if ex.route is not None else 0
        return MessagesStream(self.model, ex.request_id, estimate)


class NativeEvents:
    """An Anthropic upstream's events, passed on as they are (they end with message_stop)."""

    __slots__ = ()

    def feed(self, sse: bytes) -> bytes:
        return sse

    def done(self, ex: Exchange) -> bytes:
        return b""

    def error(self, err: GatewayError) -> bytes:
        return error_event(err)


class KeyedRequest:
    """A request whose ``x-api-key`` is read as ``Authorization: Bearer`` (if none is set)."""

    __slots__ = ("headers", "receive", "scope")

    def __init__(self, request: Readable) -> None:
        headers = dict(request.headers.items())
        key = headers.get("x-api-key")
        if key and not headers.get("authorization"):
            headers["authorization"] = f"Bearer {key}"
        self.headers: Mapping[str, str] = headers
        self.scope: Scope = request.scope
        self.receive: Receive = request.receive


def anthropic_error(err: GatewayError, rid: str) -> Response:
    status, body = error_body(err)
    headers = {**err.headers, "x-request-id": rid, "request-id": rid}
    return Response(body, status_code=status, headers=headers, media_type=JSON)


Handler = Callable[[Readable, str, float], Awaitable[Response]]


def anthropic_endpoint(fn: Handler) -> Callable[[Readable], Awaitable[Response]]:
    """The outermost boundary, in Anthropic's error shape (``http.boundary``'s twin)."""

    @functools.wraps(fn)
    async def wrapped(request: Readable) -> Response:
        started = time.perf_counter()
        rid = request_id_for(request.headers.get("x-request-id"))
        structlog.contextvars.bind_contextvars(request_id=rid)
        try:
            return await fn(KeyedRequest(request), rid, started)
        except GatewayError as err:
            if err.status >= 500:
                log.warning("request.failed", request_id=rid, status=err.status, code=err.code)
            return anthropic_error(err, rid)
        except Exception:  # the one place a bug is caught: logged, answered, not leaked
            log.exception("request.bug", request_id=rid, path=request.scope["path"])
            return anthropic_error(internal_error(rid), rid)

    return wrapped


def messages_handlers(
    pipeline: Callable[[], Pipeline], aliases: Mapping[str, str]
) -> tuple[Callable[[Readable], Awaitable[Response]], Callable[[Readable], Awaitable[Response]]]:
    """``(messages, count_tokens)`` endpoint functions."""

    @anthropic_endpoint
    async def messages(request: Readable, rid: str, started: float) -> Response:
        return await pipeline().chat_completions(request, rid, started, MessagesIngress(aliases))

    @anthropic_endpoint
    async def tokens(request: Readable, rid: str, started: float) -> Response:
        """An estimate (``routing.router.estimate_tokens``): no upstream call, no budget."""
        p = pipeline()
        await p.authenticate(request)
        body = await read_json(request, p.config.server.max_body_bytes)
        return json_response(count_tokens(body, aliases), {"x-request-id": rid})

    return messages, tokens

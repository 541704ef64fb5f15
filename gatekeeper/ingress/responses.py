"""``/v1/responses``: the OpenAI Responses API on the pipeline, with conversation state.

``POST`` goes through ``Pipeline.chat_completions`` with a ``ResponsesIngress`` (same
steps as chat); errors are OpenAI's (the ordinary boundary). With ``store`` (default
true) the response, its input items and the conversation so far are kept per tenant
(``ingress.store``); ``previous_response_id`` continues from them on any node.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gatekeeper.errors import NotFound
from gatekeeper.exchange import Exchange
from gatekeeper.http.boundary import endpoint
from gatekeeper.http.inbound import Readable
from gatekeeper.http.responses import json_response
from gatekeeper.ingress.responses_stream import ResponsesStream
from gatekeeper.ingress.responses_wire import (
    Parsed,
    chat_history,
    output_items,
    parse_request,
    response_body,
    response_id,
    usage_object,
    with_history,
)
from gatekeeper.ingress.store import ResponsesStore
from gatekeeper.pipeline import Pipeline, Witness


def _not_found(rid: str, param: str = "response_id") -> NotFound:
    return NotFound(
        f"Response with id '{rid[:100]}' not found.",
        param=param,
        code="response_not_found" if param == "response_id" else "previous_response_not_found",
    )


class ResponsesIngress:
    """One request's adapters; remembers what the stored record needs."""

    name = "responses"
    native: dict[str, Any] | None = None  # no upstream is reached through the Responses API

    def __init__(self, aliases: Mapping[str, str], store: ResponsesStore) -> None:
        self.aliases, self.store = aliases, store
        self.token = os.urandom(12).hex()  # the response's id: resp_<token>
        self.created = int(time.time())
        self.parsed: Parsed | None = None
        self.history: list[dict[str, Any]] = []
        self.tenant = ""
        self.final: dict[str, Any] | None = None

    async def to_chat(self, body: dict[str, Any], ex: Exchange) -> dict[str, Any]:
        parsed = self.parsed = parse_request(body, self.aliases)
        self.tenant = ex.claims.tenant if ex.claims is not None else ""
        history: list[dict[str, Any]] = []
        if parsed.previous is not None:
            record = await self.store.get(self.tenant, parsed.previous)
            if record is None or not isinstance(record.get("history"), list):
                raise _not_found(parsed.previous, "previous_response_id")
            history = record["history"]
        with_history(parsed, history, body)
        self.history = [*history, *parsed.messages]
        return parsed.chat

    def render(self, body: bytes, ex: Exchange) -> bytes:
        assert self.parsed is not None
        chat = orjson.loads(body)
        output, incomplete = output_items(chat if isinstance(chat, dict) else {}, self.token)
        u = ex.usage
        usage = usage_object(u.prompt_tokens, u.completion_tokens) if u else usage_object(0, 0)
        self.final = response_body(
            self.token,
            self.parsed.model,
            self.created,
            self.parsed.echo,
            output=output,
            status="incomplete" if incomplete else "completed",
            usage=usage,
            incomplete=incomplete,
            store=self.parsed.store,
        )
        return orjson.dumps(self.final)

    def stream(self, ex: Exchange) -> ResponsesStream:
        assert self.parsed is not None
        p = self.parsed
        keep = self._keep_later if p.store else None
        return ResponsesStream(self.token, p.model, self.created, p.echo, p.store, keep)

    def record(self, response: dict[str, Any]) -> dict[str, Any]:
        assert self.parsed is not None
        items = [
            {"id": item.get("id") or f"item_{self.token}_{i}", **item}
            for i, item in enumerate(self.parsed.items)
        ]
        history = [*self.history, *chat_history(response["output"])]
        return {"response": response, "input_items": items, "history": history}

    def _keep_later(self, response: dict[str, Any]) -> None:
        self.store.put_later(self.tenant, response["id"], self.record(response))

    async def keep(self) -> None:
        """Store a JSON reply before it is answered (a stream's is stored at its end)."""
        if self.parsed is not None and self.parsed.store and self.final is not None:
            await self.store.put(self.tenant, self.final["id"], self.record(self.final))


Handler = Callable[[Readable], Awaitable[Response]]


async def create_response(
    pipeline: Pipeline,
    ingress: ResponsesIngress,
    request: Readable,
    rid: str,
    started: float,
    witness: Witness | None = None,
) -> Response:
    """``POST /v1/responses`` on the pipeline: a 200 is stored (``store``) before it is
    answered. The endpoint and a batch line (``batches.execute``) both go through here."""
    response = await pipeline.chat_completions(request, rid, started, ingress, witness)
    if response.status_code == 200:
        await ingress.keep()
    return response


def responses_handlers(
    pipeline: Callable[[], Pipeline], aliases: Mapping[str, str], store: ResponsesStore
) -> dict[str, Handler]:
    @endpoint
    async def create(request: Readable, rid: str, started: float) -> Response:
        return await create_response(
            pipeline(), ResponsesIngress(aliases, store), request, rid, started
        )

    async def owned(request: Request) -> tuple[dict[str, Any], str]:
        claims = await pipeline().authenticate(request)
        wanted = request.path_params["response_id"]
        record = await store.get(claims.tenant, wanted)
        if record is None:
            raise _not_found(wanted)
        return record, claims.tenant

    @endpoint
    async def get(request: Request, rid: str, started: float) -> Response:
        record, _ = await owned(request)
        return json_response(orjson.dumps(record["response"]), {"x-request-id": rid})

    @endpoint
    async def delete(request: Request, rid: str, started: float) -> Response:
        record, tenant = await owned(request)
        wanted = record["response"]["id"]
        await store.delete(tenant, wanted)
        body = {"id": wanted, "object": "response", "deleted": True}
        return json_response(orjson.dumps(body), {"x-request-id": rid})

    @endpoint
    async def input_items(request: Request, rid: str, started: float) -> Response:
        record, _ = await owned(request)
        items = list(record.get("input_items") or [])
        if request.query_params.get("order", "desc") == "desc":
            items.reverse()
        body = {
            "object": "list",
            "data": items,
            "has_more": False,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
        }
        return json_response(orjson.dumps(body), {"x-request-id": rid})

    return {"create": create, "get": get, "delete": delete, "input_items": input_items}


__all__ = ["ResponsesIngress", "create_response", "response_id", "responses_handlers"]

"""Adapter for any OpenAI-compatible API (OpenAI, Groq, DeepSeek, Together, vLLM, Ollama)."""

from __future__ import annotations

from typing import Any

import orjson

from gatekeeper.providers.base import Call, Reply, ReplyStream, StreamState, Usage
from gatekeeper.providers.http import (
    make_transport,
    map_error,
    mapped_errors,
    not_a_reply,
    open_stream,
    post,
)
from gatekeeper.providers.limits import DEFAULT_LIMITS, UpstreamLimits
from gatekeeper.providers.settings import ProviderConfig
from gatekeeper.providers.sse import OpenAIStreamFilter
from gatekeeper.providers.transport import Endpoint, Transport, UpstreamError, UpstreamResponse
from gatekeeper.scrub import Scrubber


def upstream_body(call: Call, *, stream: bool) -> bytes:
    """The client's body with the upstream model id; streams always ask for usage."""
    body = dict(call.body)
    body["model"] = call.model.upstream
    if stream:
        opts = dict(body.get("stream_options") or {})
        opts["include_usage"] = True
        body["stream_options"] = opts
    return orjson.dumps(body)


def read_openai_error(status: int, raw: bytes) -> tuple[str | None, str | None, str | None]:
    """``(message, code, param)`` of an OpenAI error object; message None if there is none."""
    try:
        err = orjson.loads(raw)["error"]
        message = err.get("message")
        code, param = err.get("code"), err.get("param")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None, None, None
    return (
        message if isinstance(message, str) and message else None,
        code if isinstance(code, str) else None,
        param if isinstance(param, str) else None,
    )


def parse_reply(provider: str, raw: bytes, shape: str) -> tuple[Usage | None, dict[str, Any]]:
    """A 2xx body that is an OpenAI ``shape`` (``choices`` or ``data`` list): its usage
    (None: the upstream reported none) and the parsed body, kept for the budget step's
    count; a ProviderError for anything else (not JSON, an error object, the wrong shape)."""
    try:
        obj: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise not_a_reply(provider, "not JSON") from None
    if not isinstance(obj, dict):
        raise not_a_reply(provider, "not a JSON object")
    if "error" in obj and shape not in obj:
        raise not_a_reply(provider, "an error object, not a result")
    if not isinstance(obj.get(shape), list):
        raise not_a_reply(provider, f"missing its {shape!r} list")
    return Usage.from_openai(obj.get("usage")), obj


class OpenAIProvider:
    kind = "openai"

    def __init__(
        self,
        cfg: ProviderConfig,
        transport: Transport | None = None,
        *,
        limits: UpstreamLimits = DEFAULT_LIMITS,
        scrub: Scrubber | None = None,
    ) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.limits = limits
        self.total_timeout_s = cfg.timeouts.total_s
        self.pool = transport or make_transport(cfg, limits)
        headers = {"content-type": "application/json", **dict(cfg.headers)}
        if cfg.api_key:
            headers["authorization"] = f"Bearer {cfg.api_key}"
        self.scrub = scrub or Scrubber([cfg.api_key])
        self._chat = self.pool.endpoint("/chat/completions", headers)
        self._emb = self.pool.endpoint("/embeddings", headers)

    async def _post(self, endpoint: Endpoint, payload: bytes, call: Call) -> UpstreamResponse:
        return await post(
            self.pool,
            endpoint,
            payload,
            {"x-request-id": call.request_id},
            provider=self.name,
            request_id=call.request_id,
            read_error=read_openai_error,
            scrub=self.scrub,
        )

    async def _unary(self, endpoint: Endpoint, call: Call, shape: str) -> Reply:
        try:  # bounded by total_timeout_s in the pool
            resp = await self._post(endpoint, upstream_body(call, stream=False), call)
            raw = await resp.read()
        except (UpstreamError, TimeoutError) as exc:
            raise map_error(self.name, exc) from exc
        usage, parsed = parse_reply(self.name, raw, shape)
        return Reply(raw, usage, parsed)

    async def chat(self, call: Call) -> Reply:
        return await self._unary(self._chat, call, "choices")

    async def embeddings(self, call: Call) -> Reply:
        return await self._unary(self._emb, call, "data")

    async def chat_stream(self, call: Call) -> ReplyStream:
        state = StreamState()
        filt = OpenAIStreamFilter(
            state, include_usage=call.include_usage, max_event=self.limits.max_sse_event_bytes
        )
        with mapped_errors(self.name, streaming=True):
            resp = await self._post(self._chat, upstream_body(call, stream=True), call)
            first, rest = await open_stream(
                resp,
                filt,
                provider=self.name,
                first_byte_s=self.cfg.timeouts.first_byte_s,
                scrub=self.scrub,
                stall_s=self.cfg.timeouts.stall_s,
            )

        async def close() -> None:
            resp.close()

        return ReplyStream(first, rest, state, close)

    async def aclose(self) -> None:
        await self.pool.aclose()

"""Adapter for Anthropic's Messages API: OpenAI requests in, OpenAI responses out.

The translation is pure (``anthropic_wire``, ``anthropic_stream``); this module does
the HTTP and keeps the stream's usage for the budget and audit steps.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gatekeeper.errors import ProviderRejected
from gatekeeper.providers.anthropic_native import NativeStream, native_payload, native_reply
from gatekeeper.providers.anthropic_stream import SSEParser, StreamTranslator
from gatekeeper.providers.anthropic_wire import (
    anthropic_headers,
    error_from_anthropic,
    from_anthropic_response,
    to_anthropic_request,
)
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
from gatekeeper.providers.transport import Transport, UpstreamError, UpstreamResponse
from gatekeeper.scrub import Scrubber

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; used when the client sets none


def read_anthropic_error(status: int, raw: bytes) -> tuple[str | None, str | None, str | None]:
    """``(message, error type, None)``; the message is None unless the body is an
    Anthropic error object that carries one."""
    _, kind = error_from_anthropic(status, raw)
    try:
        err = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None, kind, None
    message = err.get("message") if isinstance(err, dict) else None
    return (message if isinstance(message, str) and message else None), kind, None


def check_message(provider: str, raw: bytes) -> dict[str, Any]:
    """A 2xx body that is an Anthropic message; a ProviderError for anything else."""
    try:
        obj: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise not_a_reply(provider, "not JSON") from None
    if not isinstance(obj, dict):
        raise not_a_reply(provider, "not a JSON object")
    if obj.get("type") == "error" or "error" in obj:
        raise not_a_reply(provider, "an error object, not a message")
    if not isinstance(obj.get("content"), list):
        raise not_a_reply(provider, "missing its 'content' list")
    return obj


class _Translate:
    """Bytes of Anthropic SSE in, OpenAI chunk bytes out; records usage as it goes."""

    def __init__(self, tr: StreamTranslator, state: StreamState, max_event: int) -> None:
        self.parser = SSEParser(max_event)
        self.tr = tr
        self.state = state

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event, payload in self.parser.feed(data):
            out.extend(self.tr.feed(event, payload))
        self.state.chunks += len(out)
        for chunk in out:
            self.state.keep(chunk)
        if self.tr.finished:
            u = self.tr.usage
            self.state.usage = Usage(u.prompt_tokens, u.completion_tokens)
            self.state.completed = True
        return b"".join(out)

    @property
    def finished(self) -> bool:
        return self.tr.finished


class AnthropicProvider:
    kind = "anthropic"

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
        self.scrub = scrub or Scrubber([cfg.api_key])
        headers = {**anthropic_headers(cfg.api_key), **dict(cfg.headers)}
        self._endpoint = self.pool.endpoint("/v1/messages", headers)

    def _payload(self, call: Call, *, stream: bool) -> bytes:
        if call.native is not None:  # a Messages API client: its body as it is
            cap = call.body.get("max_tokens")  # the budget's explicit cap (budget.reserve)
            return native_payload(
                call.native,
                call.model.upstream,
                stream=stream,
                max_tokens=cap if isinstance(cap, int) else None,
            )
        body = to_anthropic_request(
            call.body,
            call.model.upstream,
            min(DEFAULT_MAX_TOKENS, call.model.max_output_tokens or DEFAULT_MAX_TOKENS),
        )
        body["stream"] = stream
        return orjson.dumps(body)

    async def _post(self, payload: bytes, call: Call) -> UpstreamResponse:
        return await post(
            self.pool,
            self._endpoint,
            payload,
            provider=self.name,
            request_id=call.request_id,
            read_error=read_anthropic_error,
            scrub=self.scrub,
        )

    async def chat(self, call: Call) -> Reply:
        payload = self._payload(call, stream=False)
        try:  # bounded by total_timeout_s in the pool
            resp = await self._post(payload, call)
            raw = await resp.read()
        except (UpstreamError, TimeoutError) as exc:
            raise map_error(self.name, exc) from exc
        message = check_message(self.name, raw)
        if call.native is not None:  # a Messages API client: the message as Anthropic sent it
            return native_reply(raw, message)
        out = from_anthropic_response(
            message, call.model.name, f"chatcmpl-{call.request_id}", int(time.time())
        )
        usage = Usage.from_openai(out.get("usage")) if "usage" in message else None
        return Reply(orjson.dumps(out), usage, out)

    async def chat_stream(self, call: Call) -> ReplyStream:
        payload = self._payload(call, stream=True)
        state = StreamState()
        tr: _Translate | NativeStream = _Translate(
            StreamTranslator(
                call.model.name, f"chatcmpl-{call.request_id}", int(time.time()), call.include_usage
            ),
            state,
            self.limits.max_sse_event_bytes,
        )
        if call.native is not None:
            tr = NativeStream(state, self.limits.max_sse_event_bytes)
        with mapped_errors(self.name, streaming=True):
            resp = await self._post(payload, call)
            first, rest = await open_stream(
                resp,
                tr,
                provider=self.name,
                first_byte_s=self.cfg.timeouts.first_byte_s,
                scrub=self.scrub,
                stall_s=self.cfg.timeouts.stall_s,
            )

        async def close() -> None:
            resp.close()

        return ReplyStream(first, rest, state, close)

    async def embeddings(self, call: Call) -> Reply:
        raise ProviderRejected(
            f"{self.name}: Anthropic has no embeddings API", provider=self.name, upstream_status=400
        )

    async def aclose(self) -> None:
        await self.pool.aclose()

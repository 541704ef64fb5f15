"""Adapter for Anthropic's Messages API: OpenAI requests in, OpenAI responses out.

The translation is pure (``anthropic_wire``, ``anthropic_stream``); this module does
the HTTP and keeps the stream's usage for the budget and audit steps.
"""

from __future__ import annotations

import time

import orjson

from gatekeeper.config import ProviderConfig
from gatekeeper.errors import ProviderError, ProviderRejected
from gatekeeper.providers import h1
from gatekeeper.providers.anthropic_stream import SSEParser, StreamTranslator
from gatekeeper.providers.anthropic_wire import (
    anthropic_headers,
    error_from_anthropic,
    from_anthropic_response,
    to_anthropic_request,
)
from gatekeeper.providers.base import Call, Reply, ReplyStream, StreamState, Usage
from gatekeeper.providers.http import make_pool, map_error, mapped_errors, open_stream, post

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; used when the client sets none


def read_anthropic_error(status: int, raw: bytes) -> tuple[str, str | None, str | None]:
    message, kind = error_from_anthropic(status, raw)
    return message, kind, None


class _Translate:
    """Bytes of Anthropic SSE in, OpenAI chunk bytes out; records usage as it goes."""

    def __init__(self, tr: StreamTranslator, state: StreamState) -> None:
        self.parser = SSEParser()
        self.tr = tr
        self.state = state

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event, payload in self.parser.feed(data):
            out.extend(self.tr.feed(event, payload))
        self.state.chunks += len(out)
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

    def __init__(self, cfg: ProviderConfig, pool: h1.Pool | None = None) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.total_timeout_s = cfg.timeouts.total_s
        self.pool = pool or make_pool(cfg)
        headers = {**anthropic_headers(cfg.api_key), **dict(cfg.headers)}
        self._prefix = self.pool.head_prefix("/v1/messages", headers)

    def _payload(self, call: Call, *, stream: bool) -> bytes:
        body = to_anthropic_request(
            call.body,
            call.model.upstream,
            min(DEFAULT_MAX_TOKENS, call.model.max_output_tokens or DEFAULT_MAX_TOKENS),
        )
        body["stream"] = stream
        return orjson.dumps(body)

    async def _post(self, payload: bytes) -> h1.Response:
        return await post(
            self.pool,
            self._prefix,
            payload,
            provider=self.name,
            read_error=read_anthropic_error,
        )

    async def chat(self, call: Call) -> Reply:
        payload = self._payload(call, stream=False)
        try:  # bounded by total_timeout_s in the pool
            resp = await self._post(payload)
            raw = await resp.read()
        except (h1.UpstreamError, TimeoutError) as exc:
            raise map_error(self.name, exc) from exc
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ProviderError(
                f"{self.name}: the upstream sent a body that is not JSON", provider=self.name
            ) from None
        out = from_anthropic_response(
            message, call.model.name, f"chatcmpl-{call.request_id}", int(time.time())
        )
        usage = Usage.from_openai(out.get("usage")) or Usage()
        return Reply(orjson.dumps(out), usage)

    async def chat_stream(self, call: Call) -> ReplyStream:
        payload = self._payload(call, stream=True)
        state = StreamState()
        tr = _Translate(
            StreamTranslator(
                call.model.name, f"chatcmpl-{call.request_id}", int(time.time()), call.include_usage
            ),
            state,
        )
        with mapped_errors(self.name, streaming=True):
            resp = await self._post(payload)
            first, rest = await open_stream(
                resp, tr, provider=self.name, first_byte_s=self.cfg.timeouts.first_byte_s
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

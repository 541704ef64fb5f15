"""Adapter for any OpenAI-compatible API (OpenAI, Groq, DeepSeek, Together, vLLM, Ollama)."""

from __future__ import annotations

import orjson

from gatekeeper.config import ProviderConfig
from gatekeeper.errors import ProviderError
from gatekeeper.providers import h1
from gatekeeper.providers.base import Call, Reply, ReplyStream, StreamState, Usage
from gatekeeper.providers.http import make_pool, map_error, mapped_errors, open_stream, post
from gatekeeper.providers.sse import OpenAIStreamFilter


def upstream_body(call: Call, *, stream: bool) -> bytes:
    """The client's body with the upstream model id; streams always ask for usage."""
    body = dict(call.body)
    body["model"] = call.model.upstream
    if stream:
        opts = dict(body.get("stream_options") or {})
        opts["include_usage"] = True
        body["stream_options"] = opts
    return orjson.dumps(body)


def read_openai_error(status: int, raw: bytes) -> tuple[str, str | None, str | None]:
    try:
        err = orjson.loads(raw)["error"]
        return str(err.get("message") or "error"), err.get("code"), err.get("param")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return (raw[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"), None, None


class OpenAIProvider:
    kind = "openai"

    def __init__(self, cfg: ProviderConfig, pool: h1.Pool | None = None) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.total_timeout_s = cfg.timeouts.total_s
        self.pool = pool or make_pool(cfg)
        headers = {"content-type": "application/json", **dict(cfg.headers)}
        if cfg.api_key:
            headers["authorization"] = f"Bearer {cfg.api_key}"
        self._chat = self.pool.head_prefix("/chat/completions", headers)
        self._emb = self.pool.head_prefix("/embeddings", headers)

    async def _post(self, prefix: bytes, payload: bytes, call: Call) -> h1.Response:
        return await post(
            self.pool,
            prefix,
            payload,
            b"x-request-id: %s\r\n" % call.request_id.encode("latin-1"),
            provider=self.name,
            read_error=read_openai_error,
        )

    async def _unary(self, prefix: bytes, call: Call) -> Reply:
        try:  # bounded by total_timeout_s in the pool
            resp = await self._post(prefix, upstream_body(call, stream=False), call)
            raw = await resp.read()
        except (h1.UpstreamError, TimeoutError) as exc:
            raise map_error(self.name, exc) from exc
        try:
            usage = Usage.from_openai(orjson.loads(raw).get("usage"))
        except (orjson.JSONDecodeError, AttributeError):
            raise ProviderError(
                f"{self.name}: the upstream sent a body that is not JSON", provider=self.name
            ) from None
        return Reply(raw, usage or Usage())

    async def chat(self, call: Call) -> Reply:
        return await self._unary(self._chat, call)

    async def embeddings(self, call: Call) -> Reply:
        return await self._unary(self._emb, call)

    async def chat_stream(self, call: Call) -> ReplyStream:
        state = StreamState()
        filt = OpenAIStreamFilter(state, include_usage=call.include_usage)
        with mapped_errors(self.name, streaming=True):
            resp = await self._post(self._chat, upstream_body(call, stream=True), call)
            first, rest = await open_stream(
                resp, filt, provider=self.name, first_byte_s=self.cfg.timeouts.first_byte_s
            )

        async def close() -> None:
            resp.close()

        return ReplyStream(first, rest, state, close)

    async def aclose(self) -> None:
        await self.pool.aclose()

"""Adapter for any OpenAI-compatible API (OpenAI, Groq, DeepSeek, Together, vLLM, Ollama)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gatekeeper.config import ProviderConfig
from gatekeeper.errors import ProviderError, StreamInterrupted
from gatekeeper.providers.base import Call, Reply, ReplyStream, StreamState, Usage
from gatekeeper.providers.http import make_session, mapped_errors, status_error
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


def _error_reason(raw: bytes) -> tuple[str, str | None, str | None]:
    try:
        err = orjson.loads(raw)["error"]
        return str(err.get("message") or "error"), err.get("code"), err.get("param")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return (raw[:200].decode("utf-8", "replace").strip() or "no body"), None, None


class OpenAIProvider:
    kind = "openai"

    def __init__(self, cfg: ProviderConfig, session: aiohttp.ClientSession | None = None) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.session = session or make_session(cfg)
        self._headers = {"content-type": "application/json", **dict(cfg.headers)}
        if cfg.api_key:
            self._headers["authorization"] = f"Bearer {cfg.api_key}"
        self._chat_url = f"{cfg.base_url}/chat/completions"
        self._emb_url = f"{cfg.base_url}/embeddings"

    async def _post(self, url: str, payload: bytes, call: Call) -> aiohttp.ClientResponse:
        headers = {**self._headers, "x-request-id": call.request_id}
        async with asyncio.timeout(self.cfg.timeouts.first_byte_s):
            resp = await self.session.post(url, data=payload, headers=headers)
        if resp.status >= 400:
            raw = await resp.read()
            resp.release()
            reason, code, param = _error_reason(raw)
            raise status_error(
                self.name,
                resp.status,
                reason,
                resp.headers.get("retry-after"),
                code=code,
                param=param,
            )
        return resp

    async def _unary(self, url: str, call: Call) -> Reply:
        with mapped_errors(self.name):
            async with asyncio.timeout(self.cfg.timeouts.total_s):
                resp = await self._post(url, upstream_body(call, stream=False), call)
                raw = await resp.read()
        try:
            usage = Usage.from_openai(orjson.loads(raw).get("usage"))
        except (orjson.JSONDecodeError, AttributeError):
            raise ProviderError(
                f"{self.name}: the upstream sent a body that is not JSON", provider=self.name
            ) from None
        return Reply(raw, usage or Usage())

    async def chat(self, call: Call) -> Reply:
        return await self._unary(self._chat_url, call)

    async def embeddings(self, call: Call) -> Reply:
        return await self._unary(self._emb_url, call)

    async def chat_stream(self, call: Call) -> ReplyStream:
        state = StreamState()
        filt = OpenAIStreamFilter(state, include_usage=call.include_usage)
        with mapped_errors(self.name, streaming=True):
            resp = await self._post(self._chat_url, upstream_body(call, stream=True), call)
            try:
                first = await self._first_bytes(resp, filt)
            except BaseException:
                resp.close()
                raise
        return ReplyStream(first, self._rest(resp, filt), state, _closer(resp))

    async def _first_bytes(self, resp: aiohttp.ClientResponse, filt: OpenAIStreamFilter) -> bytes:
        async with asyncio.timeout(self.cfg.timeouts.first_byte_s):
            while True:
                data = await resp.content.readany()
                if not data:
                    raise StreamInterrupted(
                        f"{self.name}: stream ended before any chunk", provider=self.name
                    )
                out = filt.feed(data)
                if out or filt.state.completed:
                    return out

    async def _rest(
        self, resp: aiohttp.ClientResponse, filt: OpenAIStreamFilter
    ) -> AsyncIterator[bytes]:
        try:
            with mapped_errors(self.name, streaming=True):
                while not filt.state.completed:
                    data = await resp.content.readany()
                    if not data:
                        break
                    out = filt.feed(data)
                    if out:
                        yield out
            if not filt.state.completed:
                raise StreamInterrupted(
                    f"{self.name}: the upstream ended the stream early", provider=self.name
                )
        finally:
            resp.close()

    async def aclose(self) -> None:
        await self.session.close()


def _closer(resp: aiohttp.ClientResponse) -> Any:
    async def close() -> None:
        resp.close()

    return close

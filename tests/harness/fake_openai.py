"""A fake OpenAI-compatible provider: a real HTTP server on 127.0.0.1, scriptable per test.

Speaks the real wire format: chat completions (JSON and SSE with ``data: [DONE]``,
usage chunk when ``stream_options.include_usage``), embeddings, OpenAI error bodies,
``Retry-After``, slow first bytes, paced chunks and connections cut mid-stream.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import orjson
from aiohttp import web

from tests.harness.behavior import Behavior, Script

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "requests",
    500: "server_error",
    503: "server_error",
}


def _error(b: Behavior) -> web.Response:
    body = {
        "error": {
            "message": b.error_message,
            "type": _ERROR_TYPES.get(b.status, "api_error"),
            "param": None,
            "code": "invalid_api_key" if b.status == 401 else None,
        }
    }
    headers = dict(b.extra_headers)
    if b.retry_after is not None:
        headers["retry-after"] = str(b.retry_after)
    return web.Response(
        status=b.status, body=orjson.dumps(body), headers=headers, content_type="application/json"
    )


def _completion(model: str, b: Behavior) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": b.text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": b.prompt_tokens,
            "completion_tokens": b.completion_tokens,
            "total_tokens": b.prompt_tokens + b.completion_tokens,
        },
    }


def _pieces(text: str, n: int) -> list[str]:
    n = max(1, n)
    step = max(1, -(-len(text) // n))
    return [text[i : i + step] for i in range(0, len(text), step)] or [""]


class FakeOpenAI:
    """Start with ``with FakeOpenAI() as fake:``; ``fake.url`` is the ``/v1`` base URL."""

    def __init__(self, default: Behavior | None = None, api_key: str = "sk-fake-upstream") -> None:
        self.script = Script(default)
        self.api_key = api_key
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -------------------------------------------------------------- handlers

    async def _read(self, request: web.Request) -> tuple[dict[str, Any], Behavior] | web.Response:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(Behavior(status=401, error_message="Incorrect API key provided"))
        body = orjson.loads(await request.read())
        b = self.script.next(body, dict(request.headers))
        if b.first_byte_delay:
            await asyncio.sleep(b.first_byte_delay)
        return body, b

    async def chat(self, request: web.Request) -> web.StreamResponse:
        got = await self._read(request)
        if isinstance(got, web.Response):
            return got
        body, b = got
        if b.status != 200:
            return _error(b)
        if not body.get("stream"):
            return web.Response(
                body=orjson.dumps(_completion(body["model"], b)),
                content_type="application/json",
                headers=b.extra_headers,
            )
        return await self._stream(request, body, b)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], b: Behavior
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", **b.extra_headers})
        await resp.prepare(request)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
        }

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            obj = {**base, "choices": choices, **({"usage": None} if usage else {}), **extra}
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        try:
            if b.cut_after_chunks == 0:  # headers sent, then nothing: cut before the first byte
                assert request.transport is not None
                request.transport.abort()
                return resp
            await resp.write(
                event(
                    [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ]
                )
            )
            for i, piece in enumerate(_pieces(b.text, b.chunks)):
                if b.cut_after_chunks is not None and i >= b.cut_after_chunks:
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                if b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
                await resp.write(
                    event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
                )
            await resp.write(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
            if usage:
                await resp.write(
                    event(
                        [],
                        usage={
                            "prompt_tokens": b.prompt_tokens,
                            "completion_tokens": b.completion_tokens,
                            "total_tokens": b.prompt_tokens + b.completion_tokens,
                        },
                    )
                )
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.script.disconnects += 1
            raise
        return resp

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        got = await self._read(request)
        if isinstance(got, web.Response):
            return got
        body, b = got
        if b.status != 200:
            return _error(b)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
            for i, _ in enumerate(inputs)
        ]
        return web.Response(
            body=orjson.dumps(
                {
                    "object": "list",
                    "data": data,
                    "model": body["model"],
                    "usage": {"prompt_tokens": b.prompt_tokens, "total_tokens": b.prompt_tokens},
                }
            ),
            content_type="application/json",
        )

    # -------------------------------------------------------------- lifecycle

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        self._runner = web.AppRunner(app, handle_signals=False)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        loop.run_until_complete(site.start())
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-openai")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

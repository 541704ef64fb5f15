"""A fake OpenAI-compatible provider: a real HTTP server on 127.0.0.1, scriptable per test.

Speaks the real wire format: chat completions (JSON and SSE with ``data: [DONE]``,
usage chunk when ``stream_options.include_usage``), embeddings, OpenAI error bodies,
``Retry-After``, slow first bytes, paced chunks, and streams that are cut, stall or
carry an error event after N pieces (``Behavior``); resumed requests (``resume_overlap``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import orjson
from aiohttp import web

from tests.harness.behavior import Behavior, Script, billed, reply_text

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


def _tool_call(body: dict[str, Any], text: str) -> tuple[str, str] | None:
    """``(name, arguments)`` when ``text`` reads ``TOOL:<name> <json>`` and tools were sent.

    The same convention as ``fake_anthropic``: the answer is then one tool call.
    """
    tools = body.get("tools")
    if not text.startswith("TOOL:") or not isinstance(tools, list) or not tools:
        return None
    name, _, arguments = text[5:].strip().partition(" ")
    first = tools[0].get("function", {}).get("name", "tool") if isinstance(tools[0], dict) else ""
    return name or str(first), arguments.strip() or "{}"


def _completion(model: str, b: Behavior, body: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = billed(b, body)
    tool = _tool_call(body, b.text)
    message: dict[str, Any] = {"role": "assistant", "content": reply_text(b, body)}
    if tool is not None:
        function = {"name": tool[0], "arguments": tool[1]}
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_fake1", "type": "function", "function": function}
        ]}  # fmt: skip
    reply: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "stop" if tool is None else "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    if b.omit_usage:
        del reply["usage"]
    return reply


def _vector(dims: int) -> list[float]:
    """A realistic-looking unit-scale vector (about 20 bytes of JSON per float)."""
    return [((j * 7919) % 20011) / 20011 - 0.5 for j in range(dims)]


def _pieces(text: str, n: int) -> list[str]:
    n = max(1, n)
    step = max(1, -(-len(text) // n))
    return [text[i : i + step] for i in range(0, len(text), step)] or [""]


async def _broken(request: web.Request, resp: web.StreamResponse, b: Behavior, sent: int) -> bool:
    """Before piece ``sent``: cut, stall or send an error event as ``b`` says (True: done)."""
    assert request.transport is not None
    if b.cut_after_chunks is not None and sent >= b.cut_after_chunks:
        request.transport.abort()
        return True
    if b.error_after_chunks is not None and sent >= b.error_after_chunks:
        err = {"error": {"message": "scripted overload", "type": "server_error", "code": None}}
        await resp.write(b"data: " + orjson.dumps(err) + b"\n\n")
        await resp.write_eof()
        return True
    if b.stall_after_chunks is not None and sent >= b.stall_after_chunks:
        await stall(request)
        return True
    return False


async def stall(request: web.Request, limit_s: float = 10.0) -> None:
    """Send nothing until the client closes the connection (at most ``limit_s``)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + limit_s
    while request.transport is not None and not request.transport.is_closing():
        if loop.time() > until:
            request.transport.abort()
            return
        await asyncio.sleep(0.02)


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
        # An upstream with room for only so many requests at once: past it, 429 with
        # ``retry-after`` (as OpenAI's per-key concurrency limits answer). None: no limit.
        self.max_concurrent: int | None = None
        self.in_flight = self.peak = self.over_limit = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -------------------------------------------------------------- handlers

    async def _read(self, request: web.Request) -> tuple[dict[str, Any], Behavior] | web.Response:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(Behavior(status=401, error_message="Incorrect API key provided"))
        body = orjson.loads(await request.read())
        b = self.script.next(body, dict(request.headers))
        while b.hold is not None and not b.hold.is_set():  # noqa: ASYNC110 (set by a thread)
            await asyncio.sleep(0.005)
        if b.first_byte_delay:
            await asyncio.sleep(b.first_byte_delay)
        return body, b

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if self.max_concurrent is not None and self.in_flight >= self.max_concurrent:
            self.over_limit += 1
            return _error(Behavior(429, "Too many concurrent requests", retry_after=1))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await self._chat(request)
        finally:
            self.in_flight -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        got = await self._read(request)
        if isinstance(got, web.Response):
            return got
        body, b = got
        if b.status != 200:
            return _error(b)
        if not body.get("stream"):
            return web.Response(
                body=orjson.dumps(_completion(body["model"], b, body)),
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
            tool = _tool_call(body, b.text)
            if tool is not None:  # one call: id and name first, then argument fragments
                await self._stream_tool(request, resp, event, tool, b)
                await resp.write(b"data: [DONE]\n\n")
                await resp.write_eof()
                return resp
            for i, piece in enumerate(_pieces(reply_text(b, body), b.chunks)):
                if await _broken(request, resp, b, i):
                    return resp
                if b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
                await resp.write(
                    event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
                )
            await resp.write(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
            if usage and not b.omit_usage:
                prompt, completion = billed(b, body)
                if b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
                await resp.write(
                    event(
                        [],
                        usage={
                            "prompt_tokens": prompt,
                            "completion_tokens": completion,
                            "total_tokens": prompt + completion,
                        },
                    )
                )
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.script.disconnects += 1
            raise
        return resp

    @staticmethod
    async def _stream_tool(
        request: web.Request,
        resp: web.StreamResponse,
        event: Any,
        tool: tuple[str, str],
        b: Behavior,
    ) -> None:
        head = {"index": 0, "id": "call_fake1", "type": "function"}
        opening = {**head, "function": {"name": tool[0], "arguments": ""}}
        await resp.write(event([{"index": 0, "delta": {"tool_calls": [opening]}}]))
        for i, piece in enumerate(_pieces(tool[1], b.chunks)):
            if await _broken(request, resp, b, i):
                return
            frag = {"index": 0, "function": {"arguments": piece}}
            await resp.write(event([{"index": 0, "delta": {"tool_calls": [frag]}}]))
        await resp.write(event([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]))
        usage = {"prompt_tokens": b.prompt_tokens, "completion_tokens": b.completion_tokens}
        await resp.write(event([], usage={**usage, "total_tokens": sum(usage.values())}))

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        got = await self._read(request)
        if isinstance(got, web.Response):
            return got
        body, b = got
        if b.status != 200:
            return _error(b)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = body.get("dimensions")  # honoured like the real API: big replies on demand
        # honoured up to 8,192 (the largest real model has 3,072)
        vector = _vector(dims) if isinstance(dims, int) and 0 < dims <= 8192 else [0.1, 0.2, 0.3]
        data = [
            {"object": "embedding", "index": i, "embedding": vector} for i, _ in enumerate(inputs)
        ]
        return web.Response(
            body=orjson.dumps(
                {
                    "object": "list",
                    "data": data,
                    "model": body["model"],
                    **(
                        {}
                        if b.omit_usage
                        else {
                            "usage": {
                                "prompt_tokens": b.prompt_tokens,
                                "total_tokens": b.prompt_tokens,
                            }
                        }
                    ),
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

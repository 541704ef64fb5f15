"""A real HTTP server on loopback that speaks Anthropic's Messages API, driven by a Script.

    with FakeAnthropic() as fake:
        fake.script.push(Behavior(status=529, retry_after=1))
        ... POST f"{fake.url}/v1/messages" ...

It runs aiohttp in a background thread with its own event loop, bound to a free port
on 127.0.0.1. ``POST /v1/messages`` answers as Anthropic does:

* no ``x-api-key`` (or the wrong one, when ``api_key`` is given) → 401
  ``authentication_error``; no ``anthropic-version`` → 400 ``invalid_request_error``
  (what the real API does); missing/invalid ``model``, ``max_tokens`` or ``messages``
  → 400 ``invalid_request_error``. These checks come before the script: such a
  request is neither recorded nor consumes a Behavior.
* otherwise the next Behavior decides: a status ≠ 200 gets Anthropic's error body
  ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with the error type
  for that status (and ``retry-after`` when ``retry_after`` is set, formatted ``%g``);
  200 gets a Messages JSON body, or with ``"stream": true`` the documented SSE event
  sequence, ``behavior.chunks`` ``text_delta`` pieces paced by ``chunk_delay``.
* tool use: when the request carries ``tools`` and ``behavior.text`` reads
  ``TOOL:<name> <json input>`` (name optional → the first tool; input optional → {}),
  the answer is one ``tool_use`` block with ``stop_reason: "tool_use"`` (streamed as
  ``input_json_delta`` fragments).
* ``cut_after_chunks=N`` closes the TCP connection mid-body: after N deltas of a
  stream (the chunked body is never terminated), or halfway through a JSON body;
  ``stall_after_chunks=N`` sends nothing after N deltas (until the client goes);
  ``error_after_chunks=N`` sends an ``overloaded_error`` event after N deltas.
* ``resume_overlap``: a request ending in an assistant turn (a prefill) gets the rest
  of ``text`` after it (``behavior.resumed_text``).
* a client that goes away before a stream (or a delayed answer) is complete is
  counted in ``script.disconnects``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import uuid
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from tests.harness.behavior import Behavior, Script, billed, resumed_text
from tests.harness.fake_openai import stall

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def _ident(prefix: str) -> str:
    return f"{prefix}_01{uuid.uuid4().hex[:22]}"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": error_type(status), "message": message},
        "request_id": _ident("req"),
    }
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _validate(headers: Any, body: object, api_key: str | None) -> web.Response | None:
    """The error response Anthropic gives before even looking at the request, if any."""
    key = headers.get("x-api-key")
    if not key:
        return _error(401, "x-api-key header is required")
    if api_key is not None and key != api_key:
        return _error(401, "invalid x-api-key")
    if not headers.get("anthropic-version"):
        return _error(400, "anthropic-version: header is required")
    if not isinstance(body, dict):
        return _error(400, "The request body is not valid JSON.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _error(400, "model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return _error(400, "max_tokens: Field required (a positive integer)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _error(400, "messages: at least one message is required")
    return None


def _tool_call(body: dict[str, Any], text: str) -> tuple[str, str] | None:
    """``(name, input JSON)`` when the behaviour scripts a tool call for a tool request."""
    tools = body.get("tools")
    if not text.startswith("TOOL:") or not isinstance(tools, list) or not tools:
        return None
    name, _, arguments = text[5:].strip().partition(" ")
    return name or str(tools[0].get("name", "tool")), arguments.strip() or "{}"


def _pieces(text: str, n: int) -> list[str]:
    """``text`` split into ``n`` (≥ 1) consecutive pieces of near-equal length."""
    n = max(1, n)
    size, extra = divmod(len(text), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(text[start:end])
        start = end
    return out


def _message(body: dict[str, Any], b: Behavior) -> dict[str, Any]:
    tool = _tool_call(body, b.text)
    if tool is None:
        content: list[dict[str, Any]] = [{"type": "text", "text": resumed_text(b, body)}]
    else:
        tool_input = orjson.loads(tool[1])
        content = [
            {"type": "tool_use", "id": _ident("toolu"), "name": tool[0], "input": tool_input}
        ]
    return {
        "id": _ident("msg"),
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": body["model"],
        "stop_reason": "end_turn" if tool is None else "tool_use",
        "stop_sequence": None,
        "usage": dict(zip(("input_tokens", "output_tokens"), billed(b, body), strict=True)),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _opening_block(
    message: dict[str, Any], b: Behavior
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The first block as content_block_start shows it, and the deltas that fill it."""
    block = dict(message["content"][0])
    if block["type"] == "tool_use":
        pieces = _pieces(orjson.dumps(block.pop("input")).decode(), b.chunks)
        block["input"] = {}
        return block, [{"type": "input_json_delta", "partial_json": p} for p in pieces]
    text, block["text"] = block["text"], ""
    return block, [{"type": "text_delta", "text": p} for p in _pieces(text, b.chunks)]


def event_sequence(
    body: dict[str, Any], b: Behavior
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(head, deltas, tail): Anthropic's documented stream, split where deltas are paced."""
    message = _message(body, b)
    block, deltas = _opening_block(message, b)
    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": b.prompt_tokens, "output_tokens": 1}
    head = [
        _event("message_start", {"type": "message_start", "message": start}),
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        ),
        _event("ping", {"type": "ping"}),
    ]
    middle = [
        _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
        for d in deltas
    ]
    stop = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    usage = {"output_tokens": billed(b, body)[1]}
    tail = [
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _event("message_delta", {"type": "message_delta", "delta": stop, "usage": usage}),
        _event("message_stop", {"type": "message_stop"}),
    ]
    return head, middle, tail


class FakeAnthropic:
    """The fake server. ``start()``/``stop()`` or use it as a context manager."""

    def __init__(self, script: Script | None = None, *, api_key: str | None = None) -> None:
        self.script = script or Script()
        self.api_key = api_key
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> FakeAnthropic:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-anthropic")
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._boot(sock), self._loop).result(10)
        except BaseException:
            self.stop()
            sock.close()
            raise
        return self

    async def _boot(self, sock: socket.socket) -> None:
        assert self._runner is not None
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def stop(self) -> None:
        if self._loop is None or self._thread is None or self._runner is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = self._runner = None

    # ------------------------------------------------------------ handler

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        rejected = _validate(request.headers, body, self.api_key)
        if rejected is not None:
            return rejected
        headers = {k.lower(): v for k, v in request.headers.items()}
        b = self.script.next(body, headers)
        while b.hold is not None and not b.hold.is_set():  # noqa: ASYNC110 (set by a thread)
            await asyncio.sleep(0.005)
        if b.first_byte_delay:
            await asyncio.sleep(b.first_byte_delay)
        if request.transport is None or request.transport.is_closing():
            self.script.disconnects += 1
            return web.Response(status=499)
        extra = {"request-id": _ident("req"), **b.extra_headers}
        if b.status != 200:
            if b.retry_after is not None:
                extra["retry-after"] = f"{b.retry_after:g}"
            return _error(b.status, b.error_message, extra)
        if body.get("stream") is True:
            return await self._stream(request, body, b, extra)
        payload = orjson.dumps(_message(body, b))
        if b.cut_after_chunks is None:
            return web.Response(body=payload, content_type="application/json", headers=extra)
        return await self._cut_json(request, payload, extra)

    async def _cut_json(
        self, request: web.Request, payload: bytes, extra: dict[str, str]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**extra, "content-type": "application/json"})
        resp.content_length = len(payload)
        await resp.prepare(request)
        await resp.write(payload[: len(payload) // 2])
        _cut(request)
        return resp

    async def _stream(
        self, request: web.Request, body: dict[str, Any], b: Behavior, extra: dict[str, str]
    ) -> web.StreamResponse:
        head, deltas, tail = event_sequence(body, b)
        resp = web.StreamResponse(
            headers={
                **extra,
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
            }
        )
        try:
            await resp.prepare(request)
            await resp.write(b"".join(head))
            for sent, delta in enumerate(deltas):
                if b.cut_after_chunks is not None and sent >= b.cut_after_chunks:
                    _cut(request)
                    return resp
                if b.error_after_chunks is not None and sent >= b.error_after_chunks:
                    err = {"type": "overloaded_error", "message": "Overloaded"}
                    await resp.write(_event("error", {"type": "error", "error": err}))
                    await resp.write_eof()
                    return resp
                if b.stall_after_chunks is not None and sent >= b.stall_after_chunks:
                    await stall(request)
                    return resp
                if sent and b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
                await resp.write(delta)
            for event in tail:
                await resp.write(event)
            await resp.write_eof()
        except ConnectionError:
            self.script.disconnects += 1
        return resp


def _cut(request: web.Request) -> None:
    """Drop the connection without finishing the body (buffered bytes are flushed)."""
    if request.transport is not None:
        request.transport.close()

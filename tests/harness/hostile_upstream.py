"""A hostile OpenAI-compatible upstream on loopback: one bad behaviour per model id.

Runs in its own thread (the gateway under test is another process). The model id in
the request body chooses the behaviour, so one provider entry serves them all:

    reflect-json   400 whose OpenAI error message echoes every request header
    reflect-text   500 text/plain body echoing every request header
    redirect       302 with a JSON body (and a Location)
    error-200      200 whose body is an error object that echoes the authorization
    not-json       200 text/html
    wrong-shape    200 JSON without "choices"
    big-event      200 text/event-stream: one 2 MB event without an end
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson
from aiohttp import web

from gatekeeper.bus.embedded import free_port

BEHAVIOURS = (
    "reflect-json",
    "reflect-text",
    "redirect",
    "error-200",
    "not-json",
    "wrong-shape",
    "big-event",
)


class HostileUpstream:
    def __init__(self, api_key: str = "sk-live-HOSTILE0123456789abcdef") -> None:
        self.api_key = api_key
        self.port = free_port()
        self.seen: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = orjson.loads(await request.read())
        mode = str(body.get("model"))
        self.seen.append(mode)
        echoed = " ".join(f"{k}={v}" for k, v in request.headers.items())
        if mode == "reflect-json":
            err = {"error": {"message": f"bad header set: {echoed}", "type": "invalid_request"}}
            return web.json_response(err, status=400)
        if mode == "reflect-text":
            return web.Response(text=f"upstream crashed; headers were {echoed}", status=500)
        if mode == "redirect":
            return web.json_response({"ok": True}, status=302, headers={"location": "/login"})
        if mode == "error-200":
            auth = request.headers.get("authorization", "")
            return web.json_response({"error": {"message": f"quota for {auth} exhausted"}})
        if mode == "not-json":
            return web.Response(text=f"<html>{echoed}</html>", content_type="text/html")
        if mode == "wrong-shape":
            return web.json_response({"object": "chat.completion", "note": echoed})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: " + b"x" * (2 * 1024 * 1024))
        return resp

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)

        async def main() -> None:
            self._stop = asyncio.Event()
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        loop.run_until_complete(main())
        loop.close()

    def __enter__(self) -> HostileUpstream:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

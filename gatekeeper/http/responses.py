"""Step 7 — responses in OpenAI wire format: JSON, errors and SSE streams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gatekeeper.errors import GatewayError, error_json

JSON = "application/json"


def json_response(body: bytes, headers: Mapping[str, str], status: int = 200) -> Response:
    return Response(body, status_code=status, headers=headers, media_type=JSON)


def error_response(
    err: GatewayError, request_id: str, extra: Mapping[str, str] | None = None
) -> Response:
    headers = {"x-request-id": request_id, **err.headers, **(extra or {})}
    return Response(error_json(err), status_code=err.status, headers=headers, media_type=JSON)


Pump = Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]]


class SSEResponse(Response):
    """An ASGI ``text/event-stream`` response driven by a pump coroutine.

    The pump is handed a ``write(bytes)`` function. If the client disconnects, the
    pump task is cancelled at once (so the upstream request is cancelled too) rather
    than noticed at the next write. If the pump never starts (the client was gone
    before the response head could be sent), ``abandoned`` is called instead, so
    whatever the pump would have finished (its audit record) is still done.
    """

    def __init__(
        self,
        pump: Pump,
        headers: Mapping[str, str],
        abandoned: Callable[[], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.pump = pump
        self.abandoned = abandoned
        self.on_close = on_close  # called once the stream is over, on every path
        self.status_code = 200
        self.background = None
        self.sse_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.sse_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._run(receive, send)
        finally:
            if self.on_close is not None:
                self.on_close()

    async def _run(self, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.sse_headers})
        except BaseException:
            if self.abandoned is not None:
                self.abandoned()
            raise

        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pump = asyncio.ensure_future(self.pump(write))
        watch = asyncio.ensure_future(until_disconnect())
        await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
        if pump.done():
            watch.cancel()
            pump.result()
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await pump

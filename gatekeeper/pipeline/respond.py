"""Step 7, the response: JSON (after the audit record is sealed and the reservation
settled), or an SSE stream in OpenAI's wire format whose end writes the record.

A stream's record is written however it ends: complete, cut by the upstream, past the
request deadline, or the client gone (a 499, in the background).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from starlette.responses import Response

from gatekeeper.continuation.stitch import StitchedStream, drain
from gatekeeper.errors import StreamInterrupted
from gatekeeper.exchange import Exchange
from gatekeeper.http.responses import SSEResponse, json_response
from gatekeeper.pipeline.audit import Recorder
from gatekeeper.pipeline.headers import overhead, reply_headers, response_headers
from gatekeeper.pipeline.ingress import IngressStream
from gatekeeper.providers.base import DONE_EVENT, ReplyStream
from gatekeeper.providers.sse import error_event

__all__ = ["reply", "stream_reply"]


async def reply(rec: Recorder, ex: Exchange, body: bytes) -> Response:
    """Audit, settle, answer. Settling and the headers happen while JetStream
    acknowledges the record (strict mode sends it before this awaits)."""
    admission = rec.admission
    if ex.ticket is not None:
        admission.charge(ex)  # the record carries the charge
    ex.audited = True
    sealed = rec.auditor.begin(ex)
    try:
        if ex.ticket is not None:
            admission.settle(ex)
        headers = reply_headers(ex, admission)
    finally:  # a sealed record is always seen through (the chain waits on it)
        await rec.auditor.end(ex, sealed)
    headers["x-gatekeeper-overhead-ms"] = overhead(ex)
    return json_response(body, headers)


def stream_reply(
    rec: Recorder,
    ex: Exchange,
    stream: ReplyStream | StitchedStream,
    out: IngressStream | None,  # None: the chat chunks as they are
    budget_s: float,
) -> Response:
    """The SSE response that pumps ``stream`` to the client, then writes the record."""
    t0 = ex.started

    async def pump(write: Callable[[bytes], Awaitable[None]]) -> None:
        finished = False
        try:
            await write(stream.first if out is None else out.feed(stream.first))
            # a stream may run for minutes: say how it was routed now, once the first
            # chunk is on its way (the routing event is not on the time to first token)
            asyncio.get_running_loop().call_soon(rec.auditor.routed, ex)
            async with asyncio.timeout(max(0.0, budget_s - (time.perf_counter() - t0))):
                await drain(stream, write if out is None else lambda part: write(out.feed(part)))
            ex.usage = stream.state.usage
            finished = True
            await rec.settle_and_commit(ex)
            await write(DONE_EVENT if out is None else out.done(ex))
        except (StreamInterrupted, TimeoutError) as exc:
            err = (
                exc
                if isinstance(exc, StreamInterrupted)
                else StreamInterrupted(
                    "The stream ran past the request deadline (server.request_timeout_s)",
                    code="stream_deadline_exceeded",
                )
            )
            ex.usage = stream.state.usage
            ex.ended = "cut" if isinstance(exc, StreamInterrupted) else "hangup"
            finished = True
            await rec.failed(ex, err)
            await write(error_event(err) if out is None else out.error(err))
        finally:
            try:
                await stream.aclose()
            finally:
                if not finished:  # client went away (cancelled) or a write failed
                    ex.usage = stream.state.usage
                    ex.ended = "hangup"
                    ex.status, ex.error_code = 499, "client_disconnected"
                    rec.later(rec.settle_and_commit(ex))

    slot, ex.slot = ex.slot, None  # held until the stream ends, however it ends

    def abandoned() -> None:  # the pump never ran: close upstream, record a 499
        async def close() -> None:
            try:
                await stream.aclose()
            finally:
                ex.status, ex.error_code = 499, "client_disconnected"
                await rec.settle_and_commit(ex)

        rec.later(close())

    response = SSEResponse(
        pump,
        response_headers(ex, rec.admission),
        abandoned,
        on_close=slot.release if slot else None,
    )
    ex.audited = True  # from here on the pump (or ``abandoned``) writes the record
    return response

"""Step 8, the audit record: exactly one per request however it ends (a reply, a refusal,
a bug, a client hanging up), with the reservation settled beside it.

The record itself is sealed and sent by ``gatekeeper.audit.publisher`` (strict mode:
acked before the response ends); ``node`` builds the ``Auditor`` that also sends the
routing event and the session update while the ack travels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

import structlog

from gatekeeper.audit.publisher import Sealed
from gatekeeper.errors import GatewayError, StreamInterrupted
from gatekeeper.exchange import Exchange
from gatekeeper.http.inbound import Readable
from gatekeeper.pipeline.admission import Admission
from gatekeeper.pipeline.headers import response_headers

__all__ = ["Auditor", "Recorder"]

log = structlog.get_logger("gatekeeper.pipeline")


class Auditor(Protocol):
    async def commit(self, ex: Exchange) -> None: ...

    def begin(self, ex: Exchange) -> Sealed:
        """Seal the record (and send it, in strict mode); ``end`` waits for its fate."""

    async def end(self, ex: Exchange, sealed: Sealed) -> None: ...

    def routed(self, ex: Exchange) -> None: ...


@dataclass(slots=True)
class Recorder:
    """Settles a request's reservation and commits its record, on every path."""

    admission: Admission
    auditor: Auditor
    background: set[asyncio.Task[None]]

    async def failed(
        self, ex: Exchange, err: GatewayError, request: Readable | None = None
    ) -> None:
        ex.status, ex.error_code = err.status, err.code
        if isinstance(err, StreamInterrupted):
            ex.status = 502
        if ex.claims is None and request is not None:
            ex.client = _client_address(request)
        err.headers.update(response_headers(ex, self.admission))
        await self.settle_and_commit(ex)

    async def unexpected(self, ex: Exchange, request: Readable) -> None:
        """The record of a request ended by a bug (500) or a cancellation (499).

        A cancelled task cannot count on its next ``await``: its record is written in
        the background. A bug's record is written before the boundary answers 500.
        """
        _mark_unexpected(ex)
        if ex.claims is None:
            ex.client = _client_address(request)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            self.later(self.settle_and_commit(ex))
        else:
            await self.settle_and_commit(ex)

    async def settle_and_commit(self, ex: Exchange) -> None:
        ex.audited = True
        try:
            if ex.ticket is not None:
                self.admission.settle(ex)
        finally:  # a failing settle must not cost the record
            await self.auditor.commit(ex)

    def later(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:  # background bookkeeping must never kill the loop
                log.exception("pipeline.background_failed")

        task = asyncio.ensure_future(run())
        self.background.add(task)
        task.add_done_callback(self.background.discard)


def _mark_unexpected(ex: Exchange) -> None:
    """What the record says of a request that ended without a reply of its own."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        ex.status, ex.error_code = 499, "client_disconnected"
    else:
        ex.status, ex.error_code = 500, "internal_error"


def _client_address(request: Readable) -> str:
    client = request.scope.get("client")
    return str(client[0])[:64] if client else ""

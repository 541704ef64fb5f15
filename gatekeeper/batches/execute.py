"""One batch line through the live pipeline, as its creator (thin I/O).

The line is handed to ``Pipeline.chat_completions`` / ``Pipeline.embeddings`` (a
``/v1/responses`` line: ``ingress.responses.create_response``, the path of a live
Responses request, chat completions with the Responses adapters) as a request whose
scope carries the creator's verified claims (``GRANTED_CLAIMS``: only
code can put them there, never a client), so it walks every step a live request
walks: fair share, rate limit, budget reservation and charge, routing, failover, and
one audit record whose ``request_id`` is ``<batch id>:<line index>``. The reply, or
the error the pipeline raised, becomes the line's ``LineResult``, with the identity of
that record (``AuditRef``: node, chain seq and hash, stream sequence) that the
finalizer reads back from BH_AUDIT (``batches.audited``).

With priority lanes on (``capacity.max_in_flight`` > 0) a line asks for the ``batch``
lane (the ``x-gatekeeper-priority`` header, which can only lower a key's lane): it
waits below every interactive request. A line shed at the gate (queue full, waited too
long, evicted by a higher lane) is tried again, up to ``MAX_SHED_RETRIES`` times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from starlette.responses import Response
from starlette.types import Message

from gatekeeper.auth.claims import Claims
from gatekeeper.batches.lines import Line
from gatekeeper.batches.results import LineResult, usage_of
from gatekeeper.capacity.gate import SHED_REASONS
from gatekeeper.capacity.lanes import HEADER as PRIORITY_HEADER
from gatekeeper.errors import BudgetExceeded, GatewayError, RateLimited, internal_error
from gatekeeper.exchange import AuditRef
from gatekeeper.ingress.responses import ResponsesIngress, create_response
from gatekeeper.pipeline import GRANTED_CLAIMS, Pipeline, Witness

log = structlog.get_logger("gatekeeper.batches")

MAX_RETRY_WAIT_S = 5.0
MAX_SHED_RETRIES = 120  # a line shed at the capacity gate is tried again this often
BATCH_LANE = "batch"


class LineRequest:
    """A ``Readable`` for one line: a JSON body, the creator's claims in the scope."""

    __slots__ = ("headers", "receive", "scope")

    def __init__(self, claims: Claims, body: bytes, path: str) -> None:
        self.headers = {
            "content-type": "application/json",
            "content-length": str(len(body)),
            PRIORITY_HEADER: BATCH_LANE,  # below interactive traffic (never above the key's)
        }
        self.scope: dict[str, Any] = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [],
            "client": None,
            GRANTED_CLAIMS: claims,
        }
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:  # no client to hang up: a line waiting in its lane waits on
                await asyncio.Event().wait()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        self.receive = receive


def too_large(r: LineResult, cap: int) -> LineResult:
    """``r``, or an error in its place when its body is over the recorded-result cap."""
    if len(orjson.dumps(r.body)) <= cap:
        return r
    err = GatewayError(
        f"The response is over the {cap}-byte limit of a batch line",
        code="batch_result_too_large",
    )
    return LineResult(
        r.index, r.custom_id, 500, r.request_id, err.body(), r.node, r.tokens, r.audit
    )


Responses = Callable[[], ResponsesIngress]  # a fresh adapter per request


class Told:
    """The ``Witness`` of one try of a line: where its audit record is, what it charged."""

    __slots__ = ("charged", "ref")

    def __init__(self) -> None:
        self.ref: AuditRef | None = None
        self.charged: tuple[int, int] | None = None

    def __call__(self, ref: AuditRef, charged: tuple[int, int]) -> None:
        self.ref, self.charged = ref, charged


async def serve(
    pipeline: Pipeline,
    endpoint: str,
    request: LineRequest,
    rid: str,
    responses: Responses,
    witness: Witness,
) -> Response:
    """One try of a line, on the path a live request to ``endpoint`` takes; ``witness``
    is told where its audit record is."""
    started = time.perf_counter()
    if endpoint == "/v1/embeddings":
        return await pipeline.embeddings(request, rid, started, witness)
    if endpoint == "/v1/responses":
        return await create_response(pipeline, responses(), request, rid, started, witness)
    return await pipeline.chat_completions(request, rid, started, None, witness)


async def run_line(
    pipeline: Pipeline,
    endpoint: str,
    batch_id: str,
    claims: Claims,
    line: Line,
    node: str,
    retries: int,
    responses: Responses,
) -> LineResult:
    """The line's result; a rate-limited line is tried ``retries`` more times, a shed one
    ``MAX_SHED_RETRIES`` times. It names the audit record of its last try."""
    rid = f"{batch_id}:{line.index}"
    limited = shed = 0
    usage: tuple[int, int] | None = None
    while True:
        request = LineRequest(claims, line.body, endpoint)
        told = Told()  # this try's audit record (none: it never authenticated)
        try:
            response = await serve(pipeline, endpoint, request, rid, responses, told)
            status, body = response.status_code, orjson.loads(bytes(response.body))
            if not isinstance(body, dict):  # kept as it is: verification fails the batch
                body = {"value": body}
            usage = usage_of(body)  # unless the record says what was charged (below)
        except BudgetExceeded as err:  # not a wait: the key has no money left
            status, body = err.status, err.body()
        except GatewayError as err:
            if err.code in SHED_REASONS and shed < MAX_SHED_RETRIES:
                shed += 1
            elif (
                isinstance(err, RateLimited) and err.code not in SHED_REASONS and limited < retries
            ):
                limited += 1
            else:
                status, body = err.status, err.body()
                break
            wait = err.retry_after if isinstance(err, RateLimited) else 1.0
            await asyncio.sleep(min(wait, MAX_RETRY_WAIT_S))
            continue
        except Exception:  # the worker's one boundary: the line fails, the batch goes on
            log.exception("batches.line_bug", request_id=rid)
            status, body = 500, internal_error(rid).body()
        break
    if told.charged is not None:  # what the record charged: the upstream's usage, or our
        usage = told.charged  # count where it sent none or none to believe
    return LineResult(line.index, line.custom_id, status, rid, body, node, usage, told.ref)

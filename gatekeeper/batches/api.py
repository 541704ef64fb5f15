"""The Files and Batch APIs (OpenAI's shapes), on the batch store (thin I/O).

    POST   /v1/files                      multipart: purpose=batch, file=<JSONL>
    GET    /v1/files  /v1/files/{id}  /v1/files/{id}/content
    DELETE /v1/files/{id}
    POST   /v1/batches                    every line checked; then sliced onto BH_JOBS
    GET    /v1/batches  /v1/batches/{id}
    GET    /v1/batches/{id}/events        progress as SSE until the batch ends
    POST   /v1/batches/{id}/cancel

Every call authenticates as the live endpoints do; a tenant only ever sees its own
files and batches (anything else is 404).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import orjson
from nats.aio.client import Client
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gatekeeper.auth.claims import Claims, model_allowed
from gatekeeper.batches.faults import crash_point
from gatekeeper.batches.jobs import Job, publish_job, queue_slices, slice_jobs
from gatekeeper.batches.lines import ENDPOINTS, check_file
from gatekeeper.batches.multipart import boundary_of, parse_form
from gatekeeper.batches.status import (
    BATCH_ID,
    TERMINAL,
    WINDOWS,
    can_cancel,
    live_counts,
    moved,
    new_batch,
    new_id,
    page,
    progress_event,
    with_errors,
)
from gatekeeper.batches.store import BatchStore
from gatekeeper.batchesconfig import BatchesConfig
from gatekeeper.budget.gossip import Gossip
from gatekeeper.errors import (
    Conflict,
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
)
from gatekeeper.http.boundary import endpoint
from gatekeeper.http.inbound import read_body, read_json
from gatekeeper.http.responses import SSEResponse
from gatekeeper.ingress.responses_wire import parse_request
from gatekeeper.pipeline import Pipeline
from gatekeeper.routing.router import AUTO

FILE_ID = re.compile(r"file-[0-9a-f]{24}")
_HIDDEN = ("tenant", "sha256")
MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries around the file's bytes
MAX_METADATA = 16
EVENTS_EVERY_S = 0.5  # how often GET /v1/batches/{id}/events looks for progress
EVENTS_KEEPALIVE_S = 15.0
EVENTS_MAX_S = 3600.0  # one events stream lasts at most this long (reconnect for more)


def _no_file(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id[:100]}", param="id", code="file_not_found")


def _no_batch(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id[:100]}'.", param="id", code="not_found")


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _HIDDEN}


def _json(body: Any, rid: str) -> Response:
    return Response(
        orjson.dumps(body), headers={"x-request-id": rid}, media_type="application/json"
    )


def _limit(request: Request, default: int, top: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= top:
        raise InvalidRequest(f"limit must be an integer from 1 to {top}", param="limit")
    return int(raw)


def _listing(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


def _metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA
        or not all(isinstance(k, str) and len(k) <= 64 for k in value)
        or not all(isinstance(v, str) and len(v) <= 512 for v in value.values())
    ):
        raise InvalidRequest(
            "metadata must map at most 16 keys (64 characters) to strings (512)", param="metadata"
        )
    return dict(value)


class Node(Protocol):
    """What the batch API uses of the running node (``gatekeeper.node.Node``)."""

    nc: Client
    pipeline: Pipeline
    gossip: Gossip


def responses_body_error(body: dict[str, Any], aliases: Mapping[str, str]) -> str | None:
    """Why a Responses line's body would be refused by ``POST /v1/responses``, or None."""
    try:
        parse_request(body, aliases)
    except GatewayError as err:
        return err.message
    return None


def batch_routes(
    cfg: BatchesConfig,
    max_body: int,
    node: Callable[[], Node | None],
    aliases: Mapping[str, str] | None = None,
) -> list[Route]:
    """The routes of both APIs (Starlette-routed: none of them is a hot path).

    ``aliases``: the client model names a Responses line may use (as ``/v1/responses``).
    """
    aliases = dict(aliases or {})

    def running() -> Node:
        n = node()
        if n is None:
            raise ServiceUnavailable("The gateway is still starting")
        return n

    def signer() -> Any:
        gossip = running().gossip
        return gossip.signing_key, gossip.verifier.registry

    store = BatchStore(lambda: running().nc, signer)

    async def claims_of(request: Request) -> Claims:
        if not cfg.enabled:
            raise NotFound(
                "The Batch API is not enabled here (batches.enabled)", code="unknown_url"
            )
        return await running().pipeline.authenticate(request)

    # ------------------------------------------------------------ files

    @endpoint
    async def upload(request: Request, rid: str, started: float) -> Response:
        claims = await claims_of(request)
        boundary = boundary_of(request.headers.get("content-type"))
        body = await read_body(request, cfg.max_file_bytes + MULTIPART_OVERHEAD)
        form = parse_form(body, boundary)
        purpose = form.get("purpose")
        if purpose is None or purpose.data.strip() != b"batch":
            raise InvalidRequest("purpose must be 'batch'", param="purpose")
        part = form.get("file")
        if part is None or part.filename is None:
            raise InvalidRequest("The form has no 'file' part", param="file")
        if len(part.data) > cfg.max_file_bytes:
            raise PayloadTooLarge(f"The file is over the {cfg.max_file_bytes}-byte limit")
        meta = {
            "id": new_id("file-"),
            "object": "file",
            "bytes": len(part.data),
            "created_at": int(time.time()),
            "filename": part.filename[:256],
            "purpose": "batch",
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }
        await store.put_file(claims.tenant, meta, part.data)
        return _json(meta, rid)

    async def owned_file(request: Request) -> tuple[Claims, dict[str, Any]]:
        claims = await claims_of(request)
        file_id = request.path_params["file_id"]
        record = (
            await store.file_record(claims.tenant, file_id) if FILE_ID.fullmatch(file_id) else None
        )
        if record is None:
            raise _no_file(file_id)
        return claims, record

    @endpoint
    async def list_files(request: Request, rid: str, started: float) -> Response:
        claims = await claims_of(request)
        files = [_public(f) for f in await store.list_files(claims.tenant)]
        purpose = request.query_params.get("purpose")
        if purpose:
            files = [f for f in files if f.get("purpose") == purpose]
        items, more = page(
            files, request.query_params.get("after"), _limit(request, 10_000, 10_000)
        )
        if request.query_params.get("order") == "asc":
            items.reverse()
        return _json(_listing(items, more), rid)

    @endpoint
    async def get_file(request: Request, rid: str, started: float) -> Response:
        _, record = await owned_file(request)
        return _json(_public(record), rid)

    @endpoint
    async def file_content(request: Request, rid: str, started: float) -> Response:
        claims, record = await owned_file(request)
        data = await store.file_content(claims.tenant, record)
        if data is None:
            raise _no_file(record["id"])
        return Response(data, headers={"x-request-id": rid}, media_type="application/octet-stream")

    @endpoint
    async def delete_file(request: Request, rid: str, started: float) -> Response:
        claims, record = await owned_file(request)
        for r in await store.list_batches(claims.tenant):
            b = r["batch"]
            if b["input_file_id"] == record["id"] and b["status"] not in TERMINAL:
                raise Conflict(
                    f"The file is the input of {b['id']}, which has not ended; cancel it first",
                    param="file_id",
                )
        await store.delete_file(claims.tenant, record["id"])
        return _json({"id": record["id"], "object": "file", "deleted": True}, rid)

    # ------------------------------------------------------------ batches

    @endpoint
    async def create(request: Request, rid: str, started: float) -> Response:
        claims = await claims_of(request)
        if claims.pass_key is not None:
            raise PermissionDenied("Batches need an API key, not a Privacy Pass")
        body = await read_json(request, max_body)
        endpoint_ = body.get("endpoint")
        if endpoint_ not in ENDPOINTS:
            raise InvalidRequest(
                f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint"
            )
        window = body.get("completion_window")
        if window not in WINDOWS:
            raise InvalidRequest("completion_window must be '24h'", param="completion_window")
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str):
            raise InvalidRequest("input_file_id must be a string", param="input_file_id")
        metadata = _metadata(body.get("metadata"))
        meta = (
            await store.file_record(claims.tenant, file_id) if FILE_ID.fullmatch(file_id) else None
        )
        if meta is None or meta.get("purpose") != "batch":
            raise _no_file(file_id)
        content = await store.file_content(claims.tenant, meta)
        if content is None:
            raise _no_file(file_id)
        embeddings = endpoint_ == "/v1/embeddings"
        responses = endpoint_ == "/v1/responses"

        def model_ok(model: str) -> bool:  # a Responses model is served by its alias
            if responses:
                model = aliases.get(model, model)
            return (not embeddings and model == AUTO) or model_allowed(claims, model)

        checked = check_file(
            content,
            endpoint_,
            model_ok,
            max_lines=cfg.max_lines,
            max_line_bytes=cfg.max_line_bytes,
            parse=(lambda b: responses_body_error(b, aliases)) if responses else None,
        )
        now = int(time.time())
        batch_id = new_id("batch_")
        batch = new_batch(batch_id, endpoint_, file_id, window, metadata, now)
        if cfg.test_completion_window_s > 0:  # test-only: an expiry a test can wait for
            batch["expires_at"] = math.ceil(time.time() + cfg.test_completion_window_s)
        total = len(checked.lines) + checked.error_count
        counts = {"total": total, "completed": 0, "failed": 0}
        if checked.errors:
            batch = moved(batch, "failed", now, errors=with_errors(checked.errors))
            batch["request_counts"] = counts
        else:
            batch = moved(batch, "in_progress", now, request_counts=counts)
        record = {
            "tenant": claims.tenant,
            "claims": claims.to_dict(),
            "batch": batch,
            "input_sha256": meta["sha256"],
            "slice_lines": cfg.slice_lines,
            "order": "size",  # slices by size class, interleaved (batches.dispatch)
        }
        record["slices"] = len(slice_jobs(record, checked.lines))
        if checked.errors:
            await store.put_batch(record)
            return _json(batch, rid)
        # marker, record, slices, no marker: a crash between any two is recovered by
        # every node's worker (BatchWorker.requeue), and a slice queued twice is dropped
        await store.mark_queueing(claims.tenant, batch_id, time.time())
        await store.put_batch(record)
        crash_point("batches.recorded")
        n = running()
        await queue_slices(n.nc, n.gossip.signing_key, record, checked.lines)
        await store.queued(batch_id)
        return _json(batch, rid)

    async def view(record: dict[str, Any]) -> dict[str, Any]:
        batch: dict[str, Any] = record["batch"]
        if batch["status"] not in TERMINAL and batch["status"] != "validating":
            progress = await store.progress(batch["id"])
            batch = {
                **batch,
                "request_counts": live_counts(batch["request_counts"]["total"], progress.values()),
            }
        return batch

    async def owned_batch(request: Request) -> tuple[Claims, dict[str, Any]]:
        claims = await claims_of(request)
        batch_id = request.path_params["batch_id"]
        got = await store.batch(claims.tenant, batch_id) if BATCH_ID.fullmatch(batch_id) else None
        if got is None:
            raise _no_batch(batch_id)
        return claims, got[0]

    @endpoint
    async def get_batch(request: Request, rid: str, started: float) -> Response:
        _, record = await owned_batch(request)
        return _json(await view(record), rid)

    @endpoint
    async def list_batches(request: Request, rid: str, started: float) -> Response:
        claims = await claims_of(request)
        records = {r["batch"]["id"]: r for r in await store.list_batches(claims.tenant)}
        items, more = page(
            [r["batch"] for r in records.values()],
            request.query_params.get("after"),
            _limit(request, 20, 100),
        )
        return _json(_listing([await view(records[b["id"]]) for b in items], more), rid)

    @endpoint
    async def events(request: Request, rid: str, started: float) -> Response:
        """Progress as SSE: an event whenever it changes, until the batch ends."""
        claims, record = await owned_batch(request)
        tenant, batch_id = claims.tenant, record["batch"]["id"]

        async def pump(write: Callable[[bytes], Awaitable[None]]) -> None:
            last: dict[str, Any] | None = None
            deadline = time.monotonic() + EVENTS_MAX_S
            quiet = 0.0
            while time.monotonic() < deadline:
                got = await store.batch(tenant, batch_id)
                if got is None:
                    return
                r = got[0]
                progress = await store.progress(batch_id)
                event = progress_event(r["batch"], progress, r["slices"], time.time())
                if event != last:
                    await write(b"event: progress\ndata: " + orjson.dumps(event) + b"\n\n")
                    last, quiet = event, 0.0
                elif quiet >= EVENTS_KEEPALIVE_S:
                    await write(b": keep-alive\n\n")
                    quiet = 0.0
                if r["batch"]["status"] in TERMINAL:
                    return
                await asyncio.sleep(EVENTS_EVERY_S)
                quiet += EVENTS_EVERY_S

        return SSEResponse(pump, {"x-request-id": rid})

    @endpoint
    async def cancel(request: Request, rid: str, started: float) -> Response:
        claims, record = await owned_batch(request)
        batch_id = record["batch"]["id"]
        now = int(time.time())

        def change(r: dict[str, Any]) -> dict[str, Any] | None:
            status = r["batch"]["status"]
            if status == "cancelling" or not can_cancel(status):
                return None
            return {**r, "batch": moved(r["batch"], "cancelling", now)}

        new = await store.update_batch(claims.tenant, batch_id, change)
        if new is None:
            raise _no_batch(batch_id)
        status = new["batch"]["status"]
        if status not in ("cancelling", "cancelled"):
            raise Conflict(f"Cannot cancel a batch with status '{status}'.", param="batch_id")
        if status == "cancelling":  # whoever finishes the last slice finalizes; in case
            n = running()  # every slice was done already, ask for it here too
            job = Job("finalize", claims.tenant, batch_id, n=1)  # n=1: dropped if early
            await publish_job(n.nc, n.gossip.signing_key, job)
        return _json(await view(new), rid)

    one_file, one_batch = "/v1/files/{file_id}", "/v1/batches/{batch_id}"
    return [
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route(one_file, get_file, methods=["GET"]),
        Route(one_file, delete_file, methods=["DELETE"]),
        Route(one_file + "/content", file_content, methods=["GET"]),
        Route("/v1/batches", create, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route(one_batch, get_batch, methods=["GET"]),
        Route(one_batch + "/cancel", cancel, methods=["POST"]),
        Route(one_batch + "/events", events, methods=["GET"]),
    ]

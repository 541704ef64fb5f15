"""Step 1 — the client request: request id, content type, size cap, JSON body."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping
from typing import Any, Protocol

import orjson
from starlette.types import Receive, Scope

from gatekeeper.errors import InvalidRequest, MalformedJSON, PayloadTooLarge, UnsupportedMediaType
from gatekeeper.validate import check_depth

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


_ID_PREFIX = "req_" + os.urandom(5).hex()  # per process; a counter makes each id unique
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(3), "big") << 32)


def request_id_for(inbound: str | None) -> str:
    """Echo a well-formed inbound ``x-request-id``, else make one (``req_`` + 24 hex)."""
    if inbound and _REQUEST_ID_RE.fullmatch(inbound):
        return inbound
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFF:014x}"


def check_content_type(value: str | None) -> None:
    media = (value or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        shown = media or "none"
        raise UnsupportedMediaType(
            f"Content-Type must be application/json (got {shown})", param="Content-Type"
        )


class Inbound:
    """What the pipeline reads of an ASGI request: headers and the body's messages.

    Lighter than Starlette's ``Request`` on the hot endpoints: the header list is
    decoded into a dict once (lower-case names, as uvicorn gives them; the first of
    repeated headers wins), and the body is read from ``receive`` directly.
    """

    __slots__ = ("headers", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        # reversed: a repeated header's first value is the one left in the dict
        headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in reversed(scope["headers"])}
        self.scope, self.receive, self.headers = scope, receive, headers


class Readable(Protocol):
    """An ``Inbound`` or a Starlette ``Request``."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def receive(self) -> Receive: ...

    @property
    def scope(self) -> Scope: ...


async def read_body(request: Readable, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("Content-Length is not a number", param="Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"Request body is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("The client closed the connection before sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is over the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise MalformedJSON("The request body is empty; expected a JSON object")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"The request body is not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise MalformedJSON("The request body must be a JSON object")
    return obj


async def read_json(request: Readable, limit: int, max_depth: int = 0) -> dict[str, Any]:
    """The body as a JSON object; with ``max_depth``, refused (400) when nested deeper."""
    check_content_type(request.headers.get("content-type"))
    raw = await read_body(request, limit)
    body = parse_json_object(raw)
    if max_depth and may_nest_deeper(raw, max_depth):
        check_depth(body, max_depth)
    return body


def may_nest_deeper(raw: bytes, limit: int) -> bool:
    """Whether a JSON text could nest more than ``limit`` levels: it cannot when it has
    no more brackets than that (C-speed counts; the common request has a handful)."""
    return raw.count(b"{") + raw.count(b"[") > limit

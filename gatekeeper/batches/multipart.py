"""A strict ``multipart/form-data`` parser for ``POST /v1/files`` (pure, bounded).

The body has been read under its size cap already; this only splits it. Anything
that is not a well-formed form (no boundary, a part without a name, more than a few
parts, no closing delimiter) is an ``InvalidRequest`` (400), never a 500.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gatekeeper.errors import InvalidRequest, UnsupportedMediaType

MAX_PARTS = 8
MAX_PART_HEADERS = 8 * 1024
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;,"]{1,70}))', re.IGNORECASE)
_PARAM = re.compile(r';\s*([A-Za-z*]+)="((?:[^"\\]|\\.)*)"|;\s*([A-Za-z*]+)=([^;\s]+)')


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytes


def boundary_of(content_type: str | None) -> bytes:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        raise UnsupportedMediaType(
            f"Content-Type must be multipart/form-data (got {media or 'none'})",
            param="Content-Type",
        )
    m = _BOUNDARY.search(content_type or "")
    if m is None:
        raise InvalidRequest("The multipart body has no boundary", param="Content-Type")
    return (m.group(1) or m.group(2)).encode("latin-1")


def _bad(why: str) -> InvalidRequest:
    return InvalidRequest(f"Malformed multipart body: {why}", code="invalid_multipart")


def parse_form(body: bytes, boundary: bytes) -> dict[str, Part]:
    """The form's parts by name (a name given twice is an error)."""
    delimiter = b"--" + boundary
    if not body.startswith(delimiter):
        raise _bad("it does not start with the boundary")
    chunks = body.split(b"\r\n" + delimiter)
    first = chunks[0][len(delimiter) :]
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise _bad("no closing boundary")
    raw_parts = [first, *chunks[1:-1]]
    if len(raw_parts) > MAX_PARTS:
        raise _bad(f"more than {MAX_PARTS} parts")
    parts: dict[str, Part] = {}
    for raw in raw_parts:
        if not raw.startswith(b"\r\n"):
            raise _bad("a boundary is not followed by CRLF")
        head, sep, data = raw[2:].partition(b"\r\n\r\n")
        if not sep or len(head) > MAX_PART_HEADERS:
            raise _bad("a part has no header block")
        part = _part(head, data)
        if part.name in parts:
            raise _bad(f"the field '{part.name[:40]}' is given twice")
        parts[part.name] = part
    return parts


def _part(head: bytes, data: bytes) -> Part:
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon:
            raise _bad("a part header has no colon")
        headers[name.strip().lower()] = value.strip()
    disposition = headers.get("content-disposition", "")
    if not disposition.lower().startswith("form-data"):
        raise _bad("a part is not form-data")
    params: dict[str, str] = {}
    for m in _PARAM.finditer(disposition):
        key = (m.group(1) or m.group(3)).lower()
        value = (m.group(2) if m.group(1) else m.group(4)) or ""
        params[key] = value.replace('\\"', '"')
    field = params.get("name")
    if not field:
        raise _bad("a part has no name")
    return Part(field, params.get("filename"), headers.get("content-type", "text/plain"), data)

"""Batch input files: every line parsed and checked at create time (pure).

A line is OpenAI's batch request: ``{"custom_id", "method": "POST", "url", "body"}``.
Checks: JSON object, ``custom_id`` a unique non-empty string, ``method`` POST, ``url``
equal to the batch's endpoint, ``body`` an object naming a model the key may use, no
``stream``, and (``parse``, for the endpoints that have one) a body the endpoint's own
parser accepts. Each failure is one ``LineError`` naming the 1-based line, as OpenAI
reports them in ``batch.errors``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

# The endpoint's own parse of a body: None if it is fine, else why not (a message).
BodyCheck = Callable[[dict[str, Any]], str | None]

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")
MAX_CUSTOM_ID = 512
MAX_ERRORS = 100  # errors reported for one file (the rest are counted)


@dataclass(frozen=True, slots=True)
class Line:
    """One checked request line: its position, id and the body to run."""

    index: int  # 0-based
    custom_id: str
    body: bytes  # the request body, JSON


@dataclass(frozen=True, slots=True)
class LineError:
    code: str
    message: str
    line: int | None = None  # 1-based; None for the whole file
    param: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True, slots=True)
class Checked:
    lines: tuple[Line, ...]
    errors: tuple[LineError, ...]
    error_count: int  # may exceed len(errors) (MAX_ERRORS)


def split_lines(content: bytes) -> list[bytes]:
    """The file's non-empty lines (a trailing newline or blank lines are no requests)."""
    return [raw for raw in content.split(b"\n") if raw.strip()]


def check_file(
    content: bytes,
    endpoint: str,
    model_ok: Callable[[str], bool],
    *,
    max_lines: int,
    max_line_bytes: int,
    parse: BodyCheck | None = None,
) -> Checked:
    """Every line of ``content`` checked against ``endpoint`` and the key's models."""
    raws = split_lines(content)
    errors: list[LineError] = []
    count = 0

    def fail(err: LineError) -> None:
        nonlocal count
        count += 1
        if len(errors) < MAX_ERRORS:
            errors.append(err)

    if not raws:
        fail(LineError("empty_file", "The input file has no request lines"))
    if len(raws) > max_lines:
        fail(LineError("too_many_lines", f"The input file has more than {max_lines} lines"))
        return Checked((), tuple(errors), count)
    seen: set[str] = set()
    lines: list[Line] = []
    for i, raw in enumerate(raws):
        got = _check_line(raw, i, endpoint, model_ok, max_line_bytes, seen, parse)
        if isinstance(got, LineError):
            fail(got)
        else:
            lines.append(got)
    return Checked(tuple(lines), tuple(errors), count)


def _check_line(
    raw: bytes,
    i: int,
    endpoint: str,
    model_ok: Callable[[str], bool],
    max_line_bytes: int,
    seen: set[str],
    parse: BodyCheck | None,
) -> Line | LineError:
    n = i + 1
    if len(raw) > max_line_bytes:
        return LineError("line_too_large", f"Line is over the {max_line_bytes}-byte limit", n)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return LineError("invalid_json_line", "Line is not valid JSON", n)
    if not isinstance(obj, dict):
        return LineError("invalid_json_line", "Line must be a JSON object", n)
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid or len(cid) > MAX_CUSTOM_ID:
        return LineError(
            "missing_custom_id", "custom_id must be a non-empty string", n, "custom_id"
        )
    if cid in seen:
        return LineError("duplicate_custom_id", f"custom_id '{cid[:100]}' is used twice", n)
    seen.add(cid)
    if obj.get("method") != "POST":
        return LineError("invalid_method", "method must be POST", n, "method")
    if obj.get("url") != endpoint:
        return LineError(
            "mismatched_url", f"url must equal the batch endpoint {endpoint}", n, "url"
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        return LineError("invalid_body", "body must be a JSON object", n, "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return LineError("missing_model", "body.model must be a non-empty string", n, "body.model")
    if not model_ok(model):
        return LineError(
            "model_not_allowed", f"This API key may not use the model '{model[:100]}'", n
        )
    if body.get("stream") is True:
        return LineError("stream_not_supported", "Batch requests cannot stream", n, "body.stream")
    problem = parse(body) if parse is not None else None
    if problem is not None:
        return LineError("invalid_body", problem[:500], n, "body")
    return Line(i, cid, orjson.dumps(body))


def parse_checked(content: bytes) -> list[Line]:
    """The lines of a file that ``check_file`` accepted before (a worker's re-read)."""
    out = []
    for i, raw in enumerate(split_lines(content)):
        obj = orjson.loads(raw)
        out.append(Line(i, obj["custom_id"], orjson.dumps(obj["body"])))
    return out


@dataclass(frozen=True, slots=True)
class Slice:
    n: int
    start: int  # first line index
    end: int  # one past the last


def plan_slices(total: int, size: int) -> tuple[Slice, ...]:
    """``total`` lines in slices of ``size`` (the last may be shorter)."""
    return tuple(
        Slice(n, start, min(start + size, total)) for n, start in enumerate(range(0, total, size))
    )

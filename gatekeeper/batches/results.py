"""Line results, their verification, and the output and error files (pure).

A worker records each line's outcome once (``LineResult``). When every slice is done
the aggregator checks, before anything is published, that every input line has at
most one result, that it names the line's ``custom_id``, and that a 200 body is a
well-formed response for the endpoint (and, in ``batches.audited``, that the audit
record each result names agrees); only a batch that passes is ``completed``.
Lines that never ran (cancelled, expired) go to the error file with OpenAI's codes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gatekeeper.batches.lines import Line, LineError
from gatekeeper.exchange import AuditRef


@dataclass(frozen=True, slots=True)
class LineResult:
    index: int
    custom_id: str
    status_code: int
    request_id: str
    body: dict[str, Any]
    node: str = ""
    usage: tuple[int, int] | None = None  # (input, output) tokens recorded; None: the body's
    audit: AuditRef | None = None  # the line's audit record; None: it has none of its own

    @property
    def tokens(self) -> tuple[int, int]:
        """The line's recorded usage (what the worker added to its slice's progress)."""
        return self.usage if self.usage is not None else usage_of(self.body)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "index": self.index,
            "custom_id": self.custom_id,
            "status_code": self.status_code,
            "request_id": self.request_id,
            "body": self.body,
            "node": self.node,
        }
        if self.usage is not None:
            d["usage"] = list(self.usage)
        if self.audit is not None:
            d["audit"] = self.audit.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LineResult | None:
        """A recorded result, or None if it is not one (a forged or broken value)."""
        index, cid, status = d.get("index"), d.get("custom_id"), d.get("status_code")
        rid, body, node = d.get("request_id"), d.get("body"), d.get("node", "")
        if type(index) is not int or type(status) is not int or not isinstance(cid, str):
            return None
        if not isinstance(rid, str) or not isinstance(body, dict) or not isinstance(node, str):
            return None
        usage, audit = d.get("usage"), None
        if d.get("audit") is not None:
            audit = AuditRef.from_dict(d["audit"])
            if audit is None:
                return None
        if usage is None:
            return cls(index, cid, status, rid, body, node, None, audit)
        if not isinstance(usage, list) or len(usage) != 2 or not all(_count(v) for v in usage):
            return None
        return cls(index, cid, status, rid, body, node, (usage[0], usage[1]), audit)

    @property
    def ok(self) -> bool:
        return self.status_code == 200


_CHAT = ("prompt_tokens", "completion_tokens")


def _count(v: object) -> bool:
    return type(v) is int and v >= 0


def usage_of(body: Mapping[str, Any]) -> tuple[int, int]:
    """(input, output) tokens of a response body's ``usage`` (0 where it names none):
    ``prompt_tokens`` / ``completion_tokens``, or a Responses API ``response``'s
    ``input_tokens`` / ``output_tokens``."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    names = ("input_tokens", "output_tokens") if body.get("object") == "response" else _CHAT
    tokens_in, tokens_out = usage.get(names[0]), usage.get(names[1])
    return (
        tokens_in if _count(tokens_in) else 0,  # type: ignore[return-value]
        tokens_out if _count(tokens_out) else 0,
    )


def well_formed(endpoint: str, result: LineResult) -> bool:
    """A 200 body is a response of the endpoint's kind; any other carries an error object."""
    body = result.body
    if not result.ok:
        return isinstance(body.get("error"), dict)
    if endpoint == "/v1/embeddings":
        return body.get("object") == "list" and isinstance(body.get("data"), list)
    if endpoint == "/v1/responses":
        return body.get("object") == "response" and isinstance(body.get("output"), list)
    return body.get("object") == "chat.completion" and isinstance(body.get("choices"), list)


def request_line_id(batch_id: str, index: int) -> str:
    """``batch_req_<hex>``: stable for a batch's line, so a re-aggregation is identical."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{index}".encode()).hexdigest()[:24]


def output_line(batch_id: str, r: LineResult) -> bytes:
    line = {
        "id": request_line_id(batch_id, r.index),
        "custom_id": r.custom_id,
        "response": {"status_code": r.status_code, "request_id": r.request_id, "body": r.body},
        "error": None,
    }
    return orjson.dumps(line)


NOT_RUN = {
    "cancelled": ("batch_cancelled", "The batch was cancelled before this request ran."),
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
}


def not_run_line(batch_id: str, line: Line, why: str) -> bytes:
    code, message = NOT_RUN[why]
    return orjson.dumps(
        {
            "id": request_line_id(batch_id, line.index),
            "custom_id": line.custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }
    )


@dataclass(frozen=True, slots=True)
class Aggregate:
    output: bytes  # JSONL of the 200 lines
    errors: bytes  # JSONL of every other line
    completed: int
    failed: int
    problems: tuple[LineError, ...]  # verification failures: the batch fails with these


def aggregate(
    batch_id: str,
    endpoint: str,
    lines: Sequence[Line],
    results: Mapping[int, LineResult],
    unrun: str | None,
) -> Aggregate:
    """The output and error files of a finished batch, after checking every result.

    ``unrun``: why lines without a result did not run (``cancelled`` / ``expired``);
    None means every line must have one.
    """
    out: list[bytes] = []
    err: list[bytes] = []
    problems: list[LineError] = []
    completed = failed = 0
    known = {line.index for line in lines}
    for extra in sorted(set(results) - known):
        problems.append(LineError("unexpected_result", f"A result names no input line ({extra})"))
    for line in lines:
        r = results.get(line.index)
        n = line.index + 1
        if r is None:
            if unrun is None:
                problems.append(LineError("missing_result", "The line has no result", n))
            else:
                err.append(not_run_line(batch_id, line, unrun))
                failed += 1
            continue
        if r.custom_id != line.custom_id or r.index != line.index:
            problems.append(LineError("mismatched_result", "A result names another custom_id", n))
        elif not well_formed(endpoint, r):
            problems.append(LineError("malformed_result", "The response is not well-formed", n))
        elif r.ok:
            out.append(output_line(batch_id, r))
            completed += 1
        else:
            err.append(output_line(batch_id, r))
            failed += 1
    return Aggregate(_jsonl(out), _jsonl(err), completed, failed, tuple(problems))


def _jsonl(rows: list[bytes]) -> bytes:
    return b"".join(row + b"\n" for row in rows)


def verify(
    lines: Sequence[Line],
    output: bytes,
    errors: bytes,
    results: Mapping[int, LineResult],
    usage: tuple[int, int] | None,
) -> tuple[LineError, ...]:
    """The last checks before a batch is published, on the files themselves.

    Every input ``custom_id`` appears exactly once across the output and error files
    (none missing, none twice, none unknown); each result's recorded usage is its
    body's; and, unless ``usage`` is None (a cancelled or expired batch, whose slices
    stopped part way), the batch's usage equals the sum of its lines' recorded usages.
    """
    problems: list[LineError] = []
    seen: dict[str, int] = {}
    for raw in (output + errors).split(b"\n"):
        if raw:
            row = orjson.loads(raw)
            cid = row.get("custom_id") if isinstance(row, dict) else None
            seen[str(cid)] = seen.get(str(cid), 0) + 1
    wanted = {line.custom_id: line.index + 1 for line in lines}
    for cid, n in wanted.items():
        times = seen.get(cid, 0)
        if times != 1:
            problems.append(
                LineError("custom_id_count", f"custom_id appears {times} times in the files", n)
            )
    for cid in sorted(set(seen) - set(wanted)):
        problems.append(LineError("unknown_custom_id", f"The files name custom_id {cid[:100]!r}"))
    total_in = total_out = 0
    for r in results.values():
        # a line with an audit record is checked against it (batches.audited): its charge
        # may be our own count where the body reports no usage, or none to believe
        if r.ok and r.audit is None and r.tokens != usage_of(r.body):
            problems.append(
                LineError("usage_mismatch", "The recorded usage is not the response's", r.index + 1)
            )
        total_in, total_out = total_in + r.tokens[0], total_out + r.tokens[1]
    if usage is not None and usage != (total_in, total_out):
        problems.append(
            LineError(
                "usage_mismatch",
                f"The batch's usage {usage} is not the sum of its lines' {(total_in, total_out)}",
            )
        )
    return tuple(problems)

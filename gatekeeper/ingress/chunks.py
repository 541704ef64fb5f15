"""The pipeline's OpenAI chunk stream, read back as values (pure; shared by the ingresses).

The pool hands on whole ``data: {...}`` events (``providers.sse`` and the Anthropic
translator never split one), so a part is split on blank lines and each payload parsed
once. What is not a JSON object (a comment, a stray line) is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson


def chunks(sse: bytes) -> Iterator[dict[str, Any]]:
    for event in sse.split(b"\n\n"):
        if not event.startswith(b"data:"):
            continue
        try:
            obj = orjson.loads(event[5:])
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One named SSE event (Anthropic's and the Responses API's framing)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@dataclass(slots=True)
class Delta:
    """One choice delta, flattened: text, tool-call pieces, a finish reason, usage."""

    text: str = ""
    calls: list[tuple[int, str | None, str | None, str]] = field(default_factory=list)
    finish: str | None = None
    usage: tuple[int, int] | None = None


def deltas(chunk: dict[str, Any]) -> Delta:
    """What one ``chat.completion.chunk`` says (index, id, name, argument fragment per call)."""
    out = Delta()
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        out.usage = (p if isinstance(p, int) else 0, c if isinstance(c, int) else 0)
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return out
    choice = choices[0]
    if isinstance(choice.get("finish_reason"), str):
        out.finish = choice["finish_reason"]
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return out
    if isinstance(delta.get("content"), str):
        out.text = delta["content"]
    for call in delta.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        raw_fn = call.get("function")
        fn: dict[str, Any] = raw_fn if isinstance(raw_fn, dict) else {}
        raw_index, raw_id = call.get("index"), call.get("id")
        raw_name, raw_args = fn.get("name"), fn.get("arguments")
        index = raw_index if isinstance(raw_index, int) else 0
        call_id = raw_id if isinstance(raw_id, str) else None
        name = raw_name if isinstance(raw_name, str) else None
        args = raw_args if isinstance(raw_args, str) else ""
        out.calls.append((index, call_id, name, args))
    return out

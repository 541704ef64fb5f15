"""Step 1 (cont.) — validate OpenAI request bodies; every error names its ``param``.

Only the fields the gateway interprets are checked; everything else passes through
to OpenAI-compatible upstreams unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gatekeeper.edgeconfig import EdgeLimits
from gatekeeper.errors import InvalidRequest

DEFAULT_LIMITS = EdgeLimits()

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(frozen=True, slots=True)
class ChatRequest:
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    uses_tools: bool
    uses_vision: bool
    wants_json: bool


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise _bad("you must provide a model parameter", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise _bad("model must be a non-empty string", "model", "invalid_type")
    return model


def _opt_int(body: dict[str, Any], key: str, lo: int = 1) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _bad(f"{key} must be an integer >= {lo}", key, "invalid_type")
    return v


def too_deep(value: object, budget: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``budget`` levels (early exit).

    Only containers are walked into; the work is bounded by the body's size, which
    the body cap bounds, and stops at the first branch past the limit.
    """
    if budget <= 0:
        return True
    kind = type(value)
    if kind is dict:
        items: Any = value.values()  # type: ignore[attr-defined]
    elif kind is list:
        items = value
    else:
        return False
    for item in items:
        t = type(item)
        if (t is dict or t is list) and too_deep(item, budget - 1):
            return True
    return False


def check_depth(body: dict[str, Any], limit: int, skip: str | None = None) -> None:
    """Refuse a body nested deeper than ``limit`` (orjson re-serialises at most 255)."""
    for key, value in body.items():
        if key != skip and too_deep(value, limit - 1):
            raise _bad(
                f"The request body nests objects and arrays more than {limit} levels deep",
                key,
                "nesting_too_deep",
            )


def _messages(body: dict[str, Any], limits: EdgeLimits) -> tuple[bool, bool]:
    """Checks ``messages``; returns (uses_vision, has_tool_messages).

    The count caps come first, so an oversized array is refused after O(messages)
    work, before any part is looked at.
    """
    messages = body.get("messages")
    if messages is None:
        raise _bad(
            "you must provide a messages parameter", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty array", "messages", "invalid_type")
    if len(messages) > limits.max_messages:
        raise _bad(
            f"messages has {len(messages)} entries; at most {limits.max_messages} are accepted",
            "messages",
            "too_many_messages",
        )
    parts = 0
    for msg in messages:
        content = msg.get("content") if type(msg) is dict else None
        if type(content) is list:
            parts += len(content)
    if parts > limits.max_content_parts:
        raise _bad(
            f"messages have {parts} content parts in all; "
            f"at most {limits.max_content_parts} are accepted",
            "messages",
            "too_many_content_parts",
        )
    vision = tools = False
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
        role = msg.get("role")
        if role not in ROLES:
            raise _bad(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}",
                f"messages[{i}].role",
            )
        content = msg.get("content")
        if isinstance(content, list):
            vision = vision or any(
                isinstance(p, dict) and p.get("type") == "image_url" for p in content
            )
        elif content is not None and not isinstance(content, str):
            raise _bad(
                f"messages[{i}].content must be a string or an array of parts",
                f"messages[{i}].content",
                "invalid_type",
            )
        elif content is None and role in ("user", "system", "developer"):
            raise _bad(
                f"messages[{i}].content is required",
                f"messages[{i}].content",
                "missing_required_parameter",
            )
        tools = tools or role == "tool" or bool(msg.get("tool_calls"))
    return vision, tools


def validate_chat(
    body: dict[str, Any], limits: EdgeLimits = DEFAULT_LIMITS, *, depth_checked: bool = False
) -> ChatRequest:
    """The chat request ``body`` means, or a 400. ``depth_checked``: the caller has
    already refused bodies nested past ``limits.max_json_depth`` (``read_json``)."""
    model = _model(body)
    vision, tool_msgs = _messages(body, limits)
    if not depth_checked:
        check_depth(body, limits.max_json_depth)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream", "invalid_type")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _bad("stream_options must be an object", "stream_options", "invalid_type")
    if opts is not None and not stream:
        raise _bad("stream_options is only allowed when stream is true", "stream_options")
    include_usage = bool(opts and opts.get("include_usage"))
    max_tokens = _opt_int(body, "max_completion_tokens") or _opt_int(body, "max_tokens")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _bad("tools must be an array", "tools", "invalid_type")
    fmt = body.get("response_format")
    wants_json = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
    return ChatRequest(
        body, model, stream, include_usage, max_tokens, bool(tools) or tool_msgs, vision, wants_json
    )


def validate_embeddings(body: dict[str, Any], limits: EdgeLimits = DEFAULT_LIMITS) -> str:
    model = _model(body)
    check_depth(body, limits.max_json_depth, skip="input")  # input's shape is checked below
    inp = body.get("input")
    if inp is None:
        raise _bad("you must provide an input parameter", "input", "missing_required_parameter")
    ok = (isinstance(inp, str) and inp != "") or (
        isinstance(inp, list)
        and inp
        and all(
            (isinstance(x, str) and x != "")
            or (isinstance(x, int) and not isinstance(x, bool))
            or (isinstance(x, list) and x and all(isinstance(t, int) for t in x))
            for x in inp
        )
    )
    if not ok:
        raise _bad(
            "input must be a non-empty string, array of strings, or array of token arrays",
            "input",
            "invalid_type",
        )
    return model

"""Anthropic Messages API ⇄ the pipeline's chat request, as pure functions (no I/O).

    to_chat          ``POST /v1/messages`` body     → OpenAI chat completions body
    from_chat        OpenAI ``chat.completion``     → Anthropic ``message``
    error_body       a ``GatewayError``             → (status, Anthropic error JSON)
    count_tokens     ``count_tokens`` body          → ``{"input_tokens": n}`` (estimate)

Every error is an ``InvalidRequest`` naming the field (``param``); the endpoint renders
it in Anthropic's shape. ``thinking``/``redacted_thinking`` blocks of earlier turns are
dropped on the way to chat completions (no OpenAI-compatible field carries them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gatekeeper.errors import (
    AuthError,
    BudgetExceeded,
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    ServiceUnavailable,
)
from gatekeeper.routing.router import estimate_tokens

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ROLES = ("user", "assistant")
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}
_MAX_TOKENS_CAP = 1_000_000


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


# ---------------------------------------------------------------- request


def to_chat(body: dict[str, Any], aliases: Mapping[str, str]) -> dict[str, Any]:
    """The chat completions body a Messages request means (model aliases applied)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: Field required (a non-empty string)", "model")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad("max_tokens: Field required (an integer >= 1)", "max_tokens")
    messages = _system(body.get("system"))
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("messages: Field required (a non-empty array)", "messages")
    for i, msg in enumerate(raw):
        messages.extend(_message(msg, f"messages.{i}"))
    out: dict[str, Any] = {
        "model": aliases.get(model, model),
        "messages": messages,
        "max_tokens": min(max_tokens, _MAX_TOKENS_CAP),
    }
    _sampling(body, out)
    _tools(body, out)
    meta = body.get("metadata")
    if meta is not None and not isinstance(meta, Mapping):
        raise _bad("metadata: must be an object", "metadata")
    if meta and isinstance(meta.get("user_id"), str) and meta["user_id"]:
        out["user"] = meta["user_id"][:256]
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream: must be a boolean", "stream")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # message_delta carries usage
    return out


def _system(system: object) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise _bad("system: must be a string or an array of text blocks", "system")
    texts = []
    for j, block in enumerate(system):
        if not isinstance(block, Mapping) or block.get("type") != "text":
            raise _bad(f"system.{j}: only text blocks are accepted", f"system.{j}")
        texts.append(_text(block, f"system.{j}"))
    return [{"role": "system", "content": "\n\n".join(t for t in texts if t)}] if texts else []


def _text(block: Mapping[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{where}.text: Field required (a string)", f"{where}.text")
    return text


def _message(msg: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(msg, Mapping):
        raise _bad(f"{where}: must be an object", where)
    role = msg.get("role")
    if role not in _ROLES:
        raise _bad(f"{where}.role: must be 'user' or 'assistant'", f"{where}.role")
    content = msg.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad(f"{where}.content: must be a string or an array of blocks", f"{where}.content")
    if role == "assistant":
        return [_assistant(content, where)]
    return _user(content, where)


def _user(content: list[Any], where: str) -> list[dict[str, Any]]:
    """Tool results become ``tool`` messages (first, as chat wants); the rest one user turn."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        here = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, here)})
        elif kind == "image":
            parts.append(_image(block.get("source"), here))
        elif kind == "tool_result":
            results.append(_tool_result(block, here))
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise _bad(f"{here}.type: block type {kind!r} is not supported here", f"{here}.type")
    out = results
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        text = "".join(p["text"] for p in parts) if only_text and len(parts) == 1 else None
        out.append({"role": "user", "content": text if text is not None else parts})
    return out


def _image(source: object, where: str) -> dict[str, Any]:
    if isinstance(source, Mapping):
        kind = source.get("type")
        if kind == "base64":
            media, data = source.get("media_type"), source.get("data")
            if isinstance(media, str) and isinstance(data, str) and media and data:
                return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
        elif kind == "url" and isinstance(source.get("url"), str):
            return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise _bad(f"{where}.source: an image needs a base64 or url source", f"{where}.source")


def _tool_result(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}.tool_use_id: Field required", f"{where}.tool_use_id")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        pieces = []
        for k, part in enumerate(content):
            if isinstance(part, Mapping) and part.get("type") == "text":
                pieces.append(_text(part, f"{where}.content.{k}"))
            elif not (isinstance(part, Mapping) and part.get("type") == "image"):
                raise _bad(f"{where}.content.{k}: text or image blocks only", f"{where}.content")
        text = "\n".join(pieces)
    else:
        raise _bad(f"{where}.content: must be a string or an array", f"{where}.content")
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _assistant(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        here = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(_text(block, here))
        elif kind == "tool_use":
            call_id, name, args = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not isinstance(name, str) or not call_id:
                raise _bad(f"{here}: a tool_use block needs an id and a name", here)
            if not isinstance(args, Mapping):
                raise _bad(f"{here}.input: must be an object", f"{here}.input")
            function = {"name": name, "arguments": orjson.dumps(args).decode()}
            calls.append({"id": call_id, "type": "function", "function": function})
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise _bad(f"{here}.type: block type {kind!r} is not supported here", f"{here}.type")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        msg["tool_calls"] = calls
    elif msg["content"] is None:
        msg["content"] = ""
    return msg


def _number(body: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _bad(f"{key}: must be a number between {lo:g} and {hi:g}", key)
    return float(value)


def _sampling(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    for key in ("temperature", "top_p"):
        value = _number(body, key, 0.0, 1.0)
        if value is not None:
            out[key] = value
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise _bad("top_k: must be an integer >= 0", "top_k")  # accepted; chat has no top_k
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise _bad("stop_sequences: must be an array of non-empty strings", "stop_sequences")
        if stop:
            out["stop"] = stop


def _tools(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools: must be an array", "tools")
        specs = []
        for i, tool in enumerate(tools):
            name = tool.get("name") if isinstance(tool, Mapping) else None
            if not isinstance(tool, Mapping) or not isinstance(name, str) or not name:
                raise _bad(f"tools.{i}.name: Field required", f"tools.{i}.name")
            if tool.get("type") not in (None, "custom"):
                raise _bad(f"tools.{i}.type: server tools are not supported", f"tools.{i}.type")
            schema = tool.get("input_schema")
            if not isinstance(schema, Mapping):
                raise _bad(f"tools.{i}.input_schema: Field required", f"tools.{i}.input_schema")
            fn: dict[str, Any] = {"name": name, "parameters": schema}
            if isinstance(tool.get("description"), str):
                fn["description"] = tool["description"]
            specs.append({"type": "function", "function": fn})
        if specs:
            out["tools"] = specs
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    if isinstance(kind, str) and kind in _TOOL_CHOICE:
        out["tool_choice"] = _TOOL_CHOICE[kind]
    elif kind == "tool" and isinstance(choice, Mapping) and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _bad("tool_choice: must be auto, any, none or tool (with a name)", "tool_choice")
    if isinstance(choice, Mapping) and choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


# ---------------------------------------------------------------- response


def message_id(request_id: str) -> str:
    """The Message id of a request: stable, and the same in JSON and in a stream."""
    return "msg_" + request_id.removeprefix("req_")


def usage_of(raw: object) -> tuple[int, int]:
    if not isinstance(raw, Mapping):
        return 0, 0
    p, c = raw.get("prompt_tokens"), raw.get("completion_tokens")
    return (p if isinstance(p, int) else 0), (c if isinstance(c, int) else 0)


def tool_input(arguments: object) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's ``input`` is (bad JSON: empty)."""
    if isinstance(arguments, str) and arguments:
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def from_chat(body: bytes, model: str, request_id: str) -> bytes:
    """The Anthropic ``message`` for an OpenAI ``chat.completion`` (bytes in, bytes out)."""
    chat = orjson.loads(body)
    choice = (chat.get("choices") or [{}])[0] if isinstance(chat, dict) else {}
    msg = choice.get("message") if isinstance(choice, dict) else None
    msg = msg if isinstance(msg, dict) else {}
    content: list[dict[str, Any]] = []
    if isinstance(msg.get("content"), str) and msg["content"]:
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            block = {"type": "tool_use", "id": call.get("id") or "", "name": fn.get("name") or ""}
            content.append({**block, "input": tool_input(fn.get("arguments"))})
    prompt, completion = usage_of(chat.get("usage") if isinstance(chat, dict) else None)
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    out = {
        "id": message_id(request_id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else None,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": completion},
    }
    return orjson.dumps(out)


# ---------------------------------------------------------------- errors


def error_type(err: GatewayError) -> tuple[int, str]:
    """Anthropic's (status, error type) for a gateway error."""
    if isinstance(err, AuthError):
        return 401, "authentication_error"
    if isinstance(err, PermissionDenied):
        return 403, "permission_error"
    if isinstance(err, RateLimited | BudgetExceeded):
        return 429, "rate_limit_error"
    if isinstance(err, PayloadTooLarge):
        return 413, "request_too_large"
    if isinstance(err, NotFound):
        return 404, "not_found_error"
    if isinstance(err, ProviderUnavailable | ServiceUnavailable):
        return 529, "overloaded_error"
    if isinstance(err, ProviderTimeout):
        return 504, "timeout_error"
    status = err.status
    if status < 500:
        return status, "invalid_request_error"
    return 500, "api_error"


def error_body(err: GatewayError) -> tuple[int, bytes]:
    status, kind = error_type(err)
    body = {"type": "error", "error": {"type": kind, "message": err.message}}
    return status, orjson.dumps(body)


def count_tokens(body: dict[str, Any], aliases: Mapping[str, str]) -> bytes:
    """``{"input_tokens": n}``: the router's estimate of the translated prompt plus tools."""
    chat = to_chat({**body, "max_tokens": 1, "stream": False}, aliases)
    tokens = estimate_tokens(chat["messages"])
    if "tools" in chat:
        tokens += (len(orjson.dumps(chat["tools"])) + 3) // 4
    return orjson.dumps({"input_tokens": tokens})

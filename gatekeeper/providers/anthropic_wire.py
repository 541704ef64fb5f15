"""OpenAI chat completions ⇄ Anthropic Messages, as pure functions (no I/O).

    to_anthropic_request     OpenAI request body        → Anthropic ``POST /v1/messages`` body
    from_anthropic_response  Anthropic message          → OpenAI ``chat.completion``
    (streaming events: see ``anthropic_stream``)
    error_from_anthropic     error status + body        → (message, Anthropic error type)

A client field Anthropic cannot honour (``n > 1``, logprobs, ``json_schema`` output,
audio, legacy ``functions``) raises ``InvalidRequest`` naming it; fields that do not
change the answer's meaning (``seed``, penalties, ``logit_bias``, ``store``…) are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gatekeeper.errors import InvalidRequest, ProviderError

ANTHROPIC_VERSION = "2023-06-01"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_STATUS_OF_TYPE = {kind: status for status, kind in _ERROR_TYPES.items()}
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any"}
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def anthropic_headers(api_key: str) -> dict[str, str]:
    """The headers every Anthropic API call carries."""
    return {
        "x-api-key": api_key,
        "anthropic-version": ANTHROPIC_VERSION,
        "content-type": "application/json",
    }


# ---------------------------------------------------------------- request


def to_anthropic_request(
    openai_body: Mapping[str, Any], upstream_model: str, default_max_tokens: int
) -> dict[str, Any]:
    """The Anthropic Messages body for an OpenAI chat request aimed at ``upstream_model``."""
    _reject_unsupported(openai_body)
    system, messages = _split_messages(openai_body.get("messages"))
    out: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": _max_tokens(openai_body, default_max_tokens),
        "messages": messages,
    }
    if system:
        out["system"] = system
    _copy_sampling(openai_body, out)
    tools = openai_body.get("tools")
    if tools:
        out["tools"] = _tools(tools)
        choice = _tool_choice(
            openai_body.get("tool_choice"), openai_body.get("parallel_tool_calls")
        )
        if choice is not None:
            out["tool_choice"] = choice
    user = openai_body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if openai_body.get("stream") is True:
        out["stream"] = True
    return out


def _reject_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise InvalidRequest("Anthropic models return one choice; n must be 1", param="n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise InvalidRequest("Anthropic models do not return logprobs", param="logprobs")
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        raise InvalidRequest(
            "response_format json_schema is not supported for Anthropic models",
            param="response_format",
        )
    if "audio" in (body.get("modalities") or ()):
        raise InvalidRequest("audio output is not supported for this model", param="modalities")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise InvalidRequest(f"{legacy} is deprecated; use tools", param=legacy)


def _max_tokens(body: Mapping[str, Any], default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidRequest(f"{key} must be a positive integer", param=key)
        return value
    return default


def _number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRequest(f"{key} must be a number", param=key)
    return float(value)


def _copy_sampling(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    temperature = _number(body, "temperature")
    if temperature is not None:
        out["temperature"] = min(temperature, 1.0)  # OpenAI allows 0–2, Anthropic 0–1
    top_p = _number(body, "top_p")
    if top_p is not None and top_p != 1.0:  # 1.0 is the default: sending it is a no-op
        out["top_p"] = top_p
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is None or stop == []:
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("stop must be a string or an array of strings", param="stop")
    out["stop_sequences"] = stop


def _split_messages(raw: object) -> tuple[str, list[dict[str, Any]]]:
    """System text hoisted out; the rest as alternating user/assistant turns."""
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages must be a non-empty array", param="messages")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise InvalidRequest("each message must be an object", param=where)
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(_texts(msg.get("content"), where))
        elif role == "user":
            _append(turns, "user", _user_blocks(msg.get("content"), where))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(msg, where))
        elif role == "tool":
            _append(turns, "user", [_tool_result(msg, where)])
        else:
            raise InvalidRequest(f"unsupported message role {role!r}", param=f"{where}.role")
    if not turns:
        raise InvalidRequest(
            "messages needs at least one user or assistant message", param="messages"
        )
    return "\n\n".join(system), turns


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Anthropic wants strict alternation: consecutive same-role messages merge."""
    if not blocks:
        return  # Anthropic rejects empty content
    if turns and turns[-1]["role"] == role:
        blocks = turns[-1]["content"] + blocks
        turns.pop()
    if role == "user":  # tool results must lead a user turn
        blocks = sorted(blocks, key=lambda b: b["type"] != "tool_result")
    turns.append({"role": role, "content": blocks})


def _part_text(part: object, where: str) -> str:
    if isinstance(part, Mapping):
        kind = part.get("type")
        text = part.get(kind) if kind in ("text", "refusal") else None
        if isinstance(text, str):
            return text
        raise InvalidRequest(f"content part type {kind!r} is not supported here", param=where)
    raise InvalidRequest("content parts must be objects", param=where)


def _texts(content: object, where: str) -> list[str]:
    """The non-empty texts of a string-or-parts ``content``."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    if not isinstance(content, list):
        raise InvalidRequest("content must be a string or an array", param=f"{where}.content")
    texts = (_part_text(part, f"{where}.content[{j}]") for j, part in enumerate(content))
    return [text for text in texts if text]


def _text_blocks(texts: list[str]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text} for text in texts]


def _user_blocks(content: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text_blocks(_texts(content, where))
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        if isinstance(part, Mapping) and part.get("type") == "image_url":
            blocks.append(_image(part.get("image_url"), here))
        elif text := _part_text(part, here):
            blocks.append({"type": "text", "text": text})
    return blocks


def _image(image_url: object, where: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    if isinstance(url, str) and url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, *params = header.split(";")
        if comma and media_type and "base64" in params and data:
            source = {"type": "base64", "media_type": media_type, "data": data}
            return {"type": "image", "source": source}
    raise InvalidRequest("image_url must be an http(s) URL or a base64 data: URL", param=where)


def _assistant_blocks(msg: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = _text_blocks(_texts(msg.get("content"), where))
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest("tool_calls must be an array", param=f"{where}.tool_calls")
    blocks += [_tool_use(call, f"{where}.tool_calls[{j}]") for j, call in enumerate(calls)]
    return blocks


def _tool_use(call: object, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(call, Mapping) or not isinstance(fn, Mapping):
        raise InvalidRequest("a tool call needs a function", param=where)
    call_id, name = call.get("id"), fn.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str):
        raise InvalidRequest("a tool call needs an id and a function name", param=where)
    try:
        arguments = orjson.loads(fn.get("arguments") or "{}")
    except (orjson.JSONDecodeError, TypeError):
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequest(
            "tool call arguments must be a JSON object", param=f"{where}.function.arguments"
        )
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def _tool_result(msg: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest("a tool message needs tool_call_id", param=f"{where}.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    content = msg.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif texts := _texts(content, where):
        block["content"] = _text_blocks(texts)
    return block


def _tools(raw: object) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise InvalidRequest("tools must be an array", param="tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if (
            not isinstance(tool, Mapping)
            or tool.get("type") != "function"
            or not (isinstance(fn, Mapping) and isinstance(fn.get("name"), str))
        ):
            raise InvalidRequest("only named function tools are supported", param=f"tools[{i}]")
        spec = {"name": fn["name"], "input_schema": fn.get("parameters") or _EMPTY_SCHEMA}
        if fn.get("description"):
            spec["description"] = fn["description"]
        out.append(spec)
    return out


def _tool_choice(choice: object, parallel: object) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = {"type": "auto"} if parallel is False else None
    elif isinstance(choice, str) and choice in _TOOL_CHOICES:
        out = {"type": _TOOL_CHOICES[choice]}
    elif (
        isinstance(choice, Mapping)
        and isinstance(fn := choice.get("function"), Mapping)
        and isinstance(fn.get("name"), str)
    ):
        out = {"type": "tool", "name": fn["name"]}
    else:
        raise InvalidRequest("tool_choice is not one Anthropic can honour", param="tool_choice")
    if out is not None and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


# ---------------------------------------------------------------- response


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens an Anthropic answer used; cache reads and writes count as prompt tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    def updated(self, raw: object) -> TokenUsage:
        """This usage with the counts an Anthropic ``usage`` object carries applied."""
        if not isinstance(raw, Mapping):
            return self

        def count(key: str) -> int | None:
            value = raw.get(key)
            return value if isinstance(value, int) else None

        fresh = count("input_tokens")
        written = count("cache_creation_input_tokens") or 0
        read = count("cache_read_input_tokens")
        output = count("output_tokens")
        return TokenUsage(
            self.prompt_tokens if fresh is None else fresh + written + (read or 0),
            self.completion_tokens if output is None else output,
            self.cached_tokens if read is None else read,
        )


def finish_reason(stop_reason: object) -> str:
    """OpenAI's ``finish_reason`` for an Anthropic ``stop_reason`` (unknown → "stop")."""
    return _FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def from_anthropic_response(
    body: Mapping[str, Any], public_model: str, request_id: str, created: int
) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` (id = ``request_id``, verbatim) for an Anthropic message."""
    content = body.get("content")
    if not isinstance(content, list):
        raise ProviderError("anthropic: the response has no content array", upstream_status=200)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(body.get("stop_reason")),
    }
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": public_model,
        "choices": [choice],
        "usage": TokenUsage().updated(body.get("usage")).to_openai(),
    }


def error_from_anthropic(status: int, body: bytes) -> tuple[str, str]:
    """``(message, error type)`` from an Anthropic error response; any body is tolerated."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    kind = err.get("type") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    if not isinstance(kind, str) or not kind:
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if not isinstance(message, str) or not message:
        message = body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
    return message, kind

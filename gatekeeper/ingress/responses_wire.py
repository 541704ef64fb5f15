"""OpenAI Responses API ⇄ the pipeline's chat request, as pure functions (no I/O).

    parse_request   ``POST /v1/responses`` body  → ``Parsed`` (chat body + what to echo)
    response_body   finished output items        → the ``response`` object
    output_items    OpenAI ``chat.completion``   → Responses output items (+ usage, status)

Input items: messages (string or ``input_text``/``input_image``/``output_text`` parts),
``function_call`` and ``function_call_output``; ``reasoning`` items are skipped. Only
``function`` tools are accepted (hosted tools need OpenAI's own servers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gatekeeper.errors import InvalidRequest

_ROLES = ("user", "assistant", "system", "developer")
_ECHO = (
    "instructions",
    "max_output_tokens",
    "metadata",
    "parallel_tool_calls",
    "temperature",
    "top_p",
    "tool_choice",
    "tools",
    "previous_response_id",
    "reasoning",
    "text",
    "user",
    "truncation",
)
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass(frozen=True, slots=True)
class Parsed:
    chat: dict[str, Any]  # the chat completions body (history not yet prepended)
    messages: list[dict[str, Any]]  # this request's input as chat messages (no instructions)
    items: list[dict[str, Any]]  # this request's input as Responses items (input_items)
    echo: dict[str, Any]  # request fields the response object repeats
    model: str
    store: bool
    previous: str | None


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def parse_request(body: dict[str, Any], aliases: Mapping[str, str]) -> Parsed:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    items = _items(body.get("input"))
    messages = _messages(items)
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise _bad("previous_response_id must be a non-empty string", "previous_response_id")
    store = body.get("store", True)
    if store is None:
        store = True
    if not isinstance(store, bool):
        raise _bad("store must be a boolean", "store")
    chat: dict[str, Any] = {"model": aliases.get(model, model), "messages": messages}
    _options(body, chat)
    echo = {k: body[k] for k in _ECHO if body.get(k) is not None}
    return Parsed(chat, messages, items, echo, model, store, previous)


def with_history(
    parsed: Parsed, history: Sequence[dict[str, Any]], body: Mapping[str, Any]
) -> None:
    """Put instructions first, then the stored conversation, then this input."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("instructions must be a string", "instructions")
        if instructions:
            messages.append({"role": "system", "content": instructions})
    messages += [*history, *parsed.messages]
    if not messages:
        raise _bad("input must not be empty", "input")
    parsed.chat["messages"] = messages


def _items(raw: object) -> list[dict[str, Any]]:
    if isinstance(raw, str):
        return [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}
        ]
    if raw is None:
        raise InvalidRequest(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    if not isinstance(raw, list):
        raise _bad("input must be a string or an array of items", "input")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _bad(f"input[{i}] must be an object", f"input[{i}]")
        kind = item.get("type", "message")
        if kind == "message" and isinstance(item.get("content"), str):
            part_type = "output_text" if item.get("role") == "assistant" else "input_text"
            item = {
                **item,
                "type": "message",
                "content": [{"type": part_type, "text": item["content"]}],
            }
        out.append({**item, "type": kind})
    return out


def _messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where, kind = f"input[{i}]", item["type"]
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            call_id, name, args = item.get("call_id"), item.get("name"), item.get("arguments")
            if not all(isinstance(v, str) for v in (call_id, name, args)) or not call_id:
                raise _bad(f"{where}: a function_call needs call_id, name and arguments", where)
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": args},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not call_id:
                raise _bad(f"{where}.call_id is required", f"{where}.call_id")
            text = output if isinstance(output, str) else orjson.dumps(output).decode()
            out.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "reasoning":
            continue
        else:
            raise _bad(f"{where}.type {kind!r} is not supported", f"{where}.type")
    return out


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise _bad(f"{where}.role must be one of {', '.join(_ROLES)}", f"{where}.role")
    content = item.get("content")
    if not isinstance(content, list):
        raise _bad(f"{where}.content must be a string or an array", f"{where}.content")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "refusal") and isinstance(part, dict):
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise _bad(f"{here}.text must be a string", f"{here}.text")
            parts.append({"type": "text", "text": text})
        elif kind == "input_image" and isinstance(part, dict):
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise _bad(f"{here}.image_url is required (file_id is not supported)", here)
            image: dict[str, Any] = {"url": url}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _bad(f"{here}.type {kind!r} is not supported", f"{here}.type")
    if all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    if role != "user":
        raise _bad(f"{where}: images are accepted in user messages only", f"{where}.content")
    return {"role": role, "content": parts}


def _options(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    for key, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise _bad(f"{key} must be a number between {lo:g} and {hi:g}", key)
        chat[key] = value
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise _bad("max_output_tokens must be an integer >= 1", "max_output_tokens")
        chat["max_tokens"] = limit
    if isinstance(body.get("parallel_tool_calls"), bool) and body.get("tools"):
        chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    _tools(body, chat)
    _format(body.get("text"), chat)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and reasoning.get("effort") in (
        "minimal",
        "low",
        "medium",
        "high",
    ):
        chat["reasoning_effort"] = reasoning["effort"]
    if isinstance(body.get("user"), str) and body["user"]:
        chat["user"] = body["user"]
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}


def _tools(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools must be an array", "tools")
        specs = []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                raise _bad(f"tools[{i}]: only function tools are supported", f"tools[{i}].type")
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise _bad(f"tools[{i}].name is required", f"tools[{i}].name")
            fn = {
                k: tool[k]
                for k in ("name", "description", "parameters", "strict")
                if tool.get(k) is not None
            }
            specs.append({"type": "function", "function": fn})
        if specs:
            chat["tools"] = specs
    choice = body.get("tool_choice")
    if choice is None:
        return
    if choice in ("auto", "none", "required"):
        chat["tool_choice"] = choice
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("name"), str)
    ):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _bad("tool_choice must be auto, none, required or a function", "tool_choice")


def _format(text: object, chat: dict[str, Any]) -> None:
    if text is None:
        return
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema" and isinstance(fmt, dict):
        if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
            raise _bad("text.format json_schema needs a name and a schema", "text.format")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif kind != "text":
        raise _bad("text.format.type must be text, json_object or json_schema", "text.format")


# ---------------------------------------------------------------- response


def response_id(request_id: str) -> str:
    return "resp_" + request_id.removeprefix("req_")


def usage_object(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def message_item(rid: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {
        "type": "message",
        "id": "msg_" + rid.removeprefix("req_"),
        "status": status,
        "role": "assistant",
        "content": [part] if status == "completed" else [],
    }


def call_item(rid: str, n: int, call_id: str, name: str, args: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{rid.removeprefix('req_')}_{n}",
        "call_id": call_id,
        "name": name,
        "arguments": args,
        "status": status,
    }


def response_body(
    rid: str,
    model: str,
    created: int,
    echo: Mapping[str, Any],
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
    store: bool = True,
) -> dict[str, Any]:
    return {
        "id": response_id(rid),
        "object": "response",
        "created_at": created,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": echo.get("parallel_tool_calls", True),
        "previous_response_id": echo.get("previous_response_id"),
        "reasoning": echo.get("reasoning", {"effort": None, "summary": None}),
        "store": store,
        "temperature": echo.get("temperature", 1.0),
        "text": echo.get("text", {"format": {"type": "text"}}),
        "tool_choice": echo.get("tool_choice", "auto"),
        "tools": echo.get("tools", []),
        "top_p": echo.get("top_p", 1.0),
        "truncation": echo.get("truncation", "disabled"),
        "usage": usage,
        "user": echo.get("user"),
        "metadata": echo.get("metadata", {}),
    }


def output_items(chat: Mapping[str, Any], rid: str) -> tuple[list[dict[str, Any]], str | None]:
    """The output items of a ``chat.completion`` and its incomplete reason (if any)."""
    choices = chat.get("choices")
    choice = (
        choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    )
    raw = choice.get("message")
    msg: dict[str, Any] = raw if isinstance(raw, dict) else {}
    out: list[dict[str, Any]] = []
    if isinstance(msg.get("content"), str) and (msg["content"] or not msg.get("tool_calls")):
        out.append(message_item(rid, msg["content"]))
    for n, call in enumerate(msg.get("tool_calls") or ()):
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            args = fn["arguments"] if isinstance(fn.get("arguments"), str) else "{}"
            out.append(
                call_item(
                    rid,
                    n,
                    str(call.get("id") or f"call_{n}"),
                    str(fn.get("name") or ""),
                    args,
                    "completed",
                )
            )
    finish = choice.get("finish_reason")
    return out, _INCOMPLETE.get(finish) if isinstance(finish, str) else None


def chat_history(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output as the chat messages a continuation replays."""
    text = "".join(
        part.get("text", "")
        for item in output
        if item["type"] == "message"
        for part in item.get("content", ())
    )
    calls = [
        {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        for item in output
        if item["type"] == "function_call"
    ]
    msg: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        msg["tool_calls"] = calls
    return [msg]

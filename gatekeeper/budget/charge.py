"""What an accepted request is charged (pure): the upstream's usage, or our own count.

    upstream   the upstream reported usage and it is believable            → its numbers
    counted    no usage (omitted, cut stream), or unbelievable usage        → counted here:
               prompt by the tokenizer, completion from the text actually received
               (never less than what the upstream reported)
    reserved   the gateway closed the upstream before its end (client hang-up, request
               deadline) and no usage had arrived                           → prompt counted,
               completion = max(received, the reservation's n × max_tokens)

Why ``reserved`` on a hang-up: once the connection is closed the gateway cannot learn
what the upstream generated (and billed) after the last byte it read, but it did send
an explicit cap, so ``n × max_tokens`` bounds it. Reading on after the client left
would tie up a connection per abandoned stream for up to the request deadline; the
cap costs nothing and cannot be gamed by hanging up just before the usage chunk.

Believable: the completion is at most ``MAX_CHARS_PER_TOKEN`` characters per reported
token, and the prompt is not reported as 0 tokens. The text is measured only as far as
needed: first the bytes received, then (streams) ``stream_text_bound`` without parsing,
then the exact count. A suspicious report is logged and
counted (``gatekeeper_usage_suspicious_total``) and charged as ``counted``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import orjson

from gatekeeper.providers.base import Usage

Source = Literal["upstream", "counted", "reserved"]
Ended = Literal["complete", "cut", "hangup"]

MAX_CHARS_PER_TOKEN = 24
"""No tokenizer in use averages more characters per token (English ≈ 4, long
whitespace runs ≈ 16); more than this means the reported count is too low."""

CAPTURE_LIMIT = 4 * 1024 * 1024
"""Stream bytes kept for counting; past it the rest is counted as bytes / 3."""


@dataclass(frozen=True, slots=True)
class Charge:
    prompt: int
    completion: int
    source: Source
    suspicious: bool = False

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def usage(self) -> Usage:
        return Usage(self.prompt, self.completion)


def believable(
    reported: Usage,
    chars_bound: int,
    chars: Callable[[], int],
    text_bound: Callable[[], int | None] | None = None,
) -> bool:
    """Whether ``reported`` fits a reply of at most ``chars_bound`` characters.

    ``text_bound`` (a tighter bound, or None when it cannot tell) and then ``chars``
    (the exact text length, costlier) are only asked for when the cheaper bound does
    not already settle it.
    """
    if reported.prompt_tokens <= 0:
        return False
    allowed = max(reported.completion_tokens, 0) * MAX_CHARS_PER_TOKEN
    if chars_bound <= allowed:
        return True
    if text_bound is not None:
        bound = text_bound()
        if bound is not None and bound <= allowed:
            return True
    return chars() <= allowed


def decide_charge(
    reported: Usage | None,
    ended: Ended,
    reserved_completion: int,
    *,
    chars_bound: int,
    chars: Callable[[], int],
    count_prompt: Callable[[], int],
    count_completion: Callable[[], int],
    text_bound: Callable[[], int | None] | None = None,
) -> Charge:
    """The charge for one started upstream call; counting happens only when needed."""
    if reported is not None:
        if believable(reported, chars_bound, chars, text_bound):
            return Charge(reported.prompt_tokens, reported.completion_tokens, "upstream")
        prompt = max(reported.prompt_tokens, count_prompt(), 1)
        completion = max(reported.completion_tokens, count_completion())
        return Charge(prompt, completion, "counted", suspicious=True)
    prompt = max(count_prompt(), 1)
    if ended == "hangup":
        return Charge(prompt, max(count_completion(), reserved_completion), "reserved")
    return Charge(prompt, count_completion(), "counted")


# ---------------------------------------------------------------------- reply text


def _choice_texts(choice: object, key: str, out: list[str]) -> None:
    if not isinstance(choice, dict):
        return
    part = choice.get(key)
    if not isinstance(part, dict):
        return
    for field in ("content", "reasoning_content", "refusal"):
        value = part.get(field)
        if isinstance(value, str) and value:
            out.append(value)
    calls = part.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                for field in ("name", "arguments"):
                    value = fn.get(field)
                    if isinstance(value, str) and value:
                        out.append(value)


def reply_texts(obj: object) -> list[str]:
    """The generated text of an OpenAI ``chat.completion`` object (all choices)."""
    out: list[str] = []
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if isinstance(choices, list):
        for choice in choices:
            _choice_texts(choice, "message", out)
    return out


def reply_chars(obj: object) -> int:
    """Characters of generated text in a ``chat.completion`` (``reply_texts``, faster for
    the common reply: one message with plain ``content``)."""
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list):
        return 0
    if len(choices) == 1:  # the common reply: one choice, a plain message
        choice = choices[0]
        message = choice.get("message") if type(choice) is dict else None
        if type(message) is dict and message.keys() <= _PLAIN:
            content, refusal = message.get("content"), message.get("refusal")
            return (len(content) if type(content) is str else 0) + (
                len(refusal) if type(refusal) is str else 0
            )
    total = 0
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        if message.keys() <= _PLAIN:
            for field in ("content", "refusal"):
                text = message.get(field)
                total += len(text) if isinstance(text, str) else 0
        else:
            out: list[str] = []
            _choice_texts(choice, "message", out)
            total += text_chars(out)
    return total


_PLAIN = frozenset({"role", "content", "refusal", "annotations"})


def _chunks(payloads: Sequence[bytes]) -> list[object]:
    """Parse every payload (``data:`` stripped) at once when possible, else one by one."""
    raw = [p[5:].strip() if p.startswith(b"data:") else p for p in payloads]
    try:
        parsed = orjson.loads(b"[" + b",".join(raw) + b"]")
        if isinstance(parsed, list) and len(parsed) == len(raw):
            return parsed
    except orjson.JSONDecodeError:
        pass
    out: list[object] = []
    for item in raw:
        try:
            out.append(orjson.loads(item))
        except orjson.JSONDecodeError:
            continue
    return out


def stream_texts(payloads: Sequence[bytes]) -> list[str]:
    """The generated text of OpenAI ``chat.completion.chunk`` payloads."""
    out: list[str] = []
    for obj in _chunks(payloads):
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if isinstance(choices, list):
            for choice in choices:
                _choice_texts(choice, "delta", out)
    return out


_PLAIN_DELTA = frozenset({"role", "content", "refusal"})


# A chunk's ``delta`` holding at most a role and plain content: no escapes (the caller
# checks), so every key is its literal bytes and the content's bytes bound its characters.
_PLAIN_DELTA_BYTES = re.compile(rb'"delta":\{(?:"role":"assistant",?)?(?:"content":"([^"\\]*)")?\}')


def stream_text_bound(payloads: Sequence[bytes]) -> int | None:
    """An upper bound of ``stream_chars(payloads)`` found without parsing, or None.

    It applies when no payload has a backslash and every ``"delta"`` in them opens a
    plain delta (``_PLAIN_DELTA_BYTES``). Then every ``delta`` key a JSON parser would
    see is one of those bytes (a key without escapes is its literal bytes; a string
    without escapes holds no quote), each delta's only text is its ``content``, and a
    UTF-8 string has at least as many bytes as characters. Anything else (escapes, tool
    calls, refusals, reasoning, whitespace) gives None: count exactly.
    """
    blob = b'"'.join(payloads)  # a quote ends any string at a payload's edge
    if b"\\" in blob:
        return None
    found = _PLAIN_DELTA_BYTES.findall(blob)
    if len(found) != blob.count(b'"delta"'):
        return None
    return sum(map(len, found))


def stream_chars(payloads: Sequence[bytes]) -> int:
    """Characters of generated text in chunk payloads (``stream_texts``, without building
    the texts; the common chunk, one choice with a plain delta, on a fast path)."""
    total = 0
    for obj in _chunks(payloads):
        choices = obj.get("choices") if type(obj) is dict else None
        if type(choices) is not list:
            continue
        if len(choices) == 1:
            choice = choices[0]
            delta = choice.get("delta") if type(choice) is dict else None
            if type(delta) is dict and delta.keys() <= _PLAIN_DELTA:
                content, refusal = delta.get("content"), delta.get("refusal")
                total += (len(content) if type(content) is str else 0) + (
                    len(refusal) if type(refusal) is str else 0
                )
                continue
        out: list[str] = []
        for choice in choices:
            _choice_texts(choice, "delta", out)
        total += text_chars(out)
    return total


def text_chars(texts: Sequence[str]) -> int:
    return sum(len(t) for t in texts)

"""Counting tokens offline, when the upstream does not say how many it billed.

The count is used only off the hot path: at settle time, for a request whose upstream
reported no (or no believable) usage. Which encoding is used depends on the model family:

    family      models (upstream id prefix)                 count
    o200k       gpt-4o, gpt-4.1, gpt-5, o1/o3/o4, gpt-oss    exact (o200k_base)
    cl100k      gpt-4, gpt-3.5, text-embedding-*            exact (cl100k_base)
    approx      claude, llama, mistral, qwen, gemini, ...   o200k_base × 1.25, rounded up
    unknown     anything else                              ceil(UTF-8 bytes / 3)

The encodings ship inside the ``toktok-rs`` wheel (a Rust BPE counter, ids identical to
tiktoken's); nothing is fetched at run time. ``approx`` families have their own
tokenizers, which run at most ~20 % over o200k on English and code, hence the 1.25
factor. ``unknown`` is the documented fallback: BPE vocabularies average 3.5–4.5 bytes
per token on English, so bytes / 3 over-counts English by ~15–50 % and is exact-or-over
for most scripts; see docs/budget.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import toktok  # type: ignore[import-untyped]

from gatekeeper.routing.scorer import content_text

Family = Literal["o200k", "cl100k", "approx", "unknown"]

MESSAGE_OVERHEAD = 3  # OpenAI's per-message framing (role, separators)
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
IMAGE_TOKENS = 765  # a 1024x1024 image at high detail, OpenAI's accounting
APPROX_FACTOR = 1.25
UNKNOWN_BYTES_PER_TOKEN = 3

_ENCODING = {"o200k": "o200k_base", "cl100k": "cl100k_base", "approx": "o200k_base"}
_O200K = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")
_CL100K = ("gpt-4", "gpt-3.5", "text-embedding-", "text-davinci")
_APPROX = (
    "claude",
    "llama",
    "meta-llama",
    "mistral",
    "mixtral",
    "codestral",
    "qwen",
    "gemini",
    "gemma",
    "deepseek",
    "phi",
    "command",
    "grok",
)


def family_of(model: str) -> Family:
    """The tokenizer family of an upstream model id (``org/`` prefixes ignored)."""
    name = model.rsplit("/", 1)[-1].lower()
    if name.startswith(_O200K):
        return "o200k"
    if name.startswith(_CL100K):
        return "cl100k"
    if name.startswith(_APPROX) or model.lower().startswith(_APPROX):
        return "approx"
    return "unknown"


def count_text(texts: Iterable[str], family: Family) -> int:
    """Tokens in ``texts`` (summed) by ``family``'s rule."""
    items = [t for t in texts if t]
    if not items:
        return 0
    if family == "unknown":
        return sum(-(-len(t.encode("utf-8", "replace")) // UNKNOWN_BYTES_PER_TOKEN) for t in items)
    counted: int = sum(toktok.batch_count(items, _ENCODING[family], threads=1))
    if family == "approx":
        return math.ceil(counted * APPROX_FACTOR)
    return counted


def message_texts(messages: Sequence[Mapping[str, object]]) -> tuple[list[str], int]:
    """The countable text of chat messages, and how many images they carry."""
    texts: list[str] = []
    images = 0
    for message in messages:
        content = message.get("content")
        texts.append(content_text(content))
        if isinstance(content, list):
            images += sum(
                1
                for part in content
                if isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image")
            )
        for key in ("tool_calls", "name", "tool_call_id"):
            value = message.get(key)
            if value:
                texts.append(str(value))
    return texts, images


def count_prompt(body: Mapping[str, object], family: Family) -> int:
    """The prompt tokens of a chat body: messages, tool definitions, framing."""
    raw = body.get("messages")
    messages = [m for m in raw if isinstance(m, Mapping)] if isinstance(raw, list) else []
    texts, images = message_texts(messages)
    tools = body.get("tools")
    if tools:
        texts.append(str(tools))
    framing = REPLY_PRIMING + MESSAGE_OVERHEAD * len(messages)
    return framing + count_text(texts, family) + IMAGE_TOKENS * images


def count_input(value: object, family: Family) -> int:
    """The tokens of an embeddings ``input``: strings counted, token arrays as given."""
    items = value if isinstance(value, list) else [value]
    if items and all(isinstance(i, int) for i in items):
        return len(items)  # one array of token ids
    texts: list[str] = []
    ids = 0
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list):
            ids += len(item)
    return ids + count_text(texts, family)

"""The built-in demo provider: answers locally so the quick start works with no API key.

It is not a language model. Every answer says so, and its model is listed as
``gatekeeper-demo`` with ``owned_by: "gatekeeper-demo (not a real LLM)"``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gatekeeper.providers.base import Call, Reply, ReplyStream, StreamState, Usage
from gatekeeper.routing.matrix import ModelSpec

DEMO_PROVIDER = "demo"
DEMO_MODEL = "gatekeeper-demo"
DEMO_LABEL = "gatekeeper-demo (built-in demo provider, not a real LLM)"


def demo_models() -> tuple[ModelSpec, ...]:
    """The models the demo provider serves when it is enabled."""
    from gatekeeper.routing.matrix import parse_models

    return parse_models(
        [
            {
                "name": DEMO_MODEL,
                "provider": DEMO_PROVIDER,
                "upstream": DEMO_MODEL,
                "kind": "chat",
                "input_per_1k": 0,
                "output_per_1k": 0,
                "context_window": 32768,
                "max_output_tokens": 4096,
                "capabilities": ["streaming", "json", "tools"],
                "quality": {"simple": 0.1, "general": 0.1},
            },
            {
                "name": "gatekeeper-demo-embedding",
                "provider": DEMO_PROVIDER,
                "upstream": "gatekeeper-demo-embedding",
                "kind": "embedding",
                "input_per_1k": 0,
                "output_per_1k": 0,
                "context_window": 8192,
                "max_output_tokens": 0,
                "capabilities": [],
                "quality": {},
            },
        ],
        "demo",
    )


def _last_user_text(body: dict[str, Any]) -> str:
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def answer_text(body: dict[str, Any]) -> str:
    said = _last_user_text(body).strip().replace("\n", " ")
    if len(said) > 200:
        said = said[:200] + "…"
    return (
        f"This is Gatekeeper's demo provider (no real model was called). "
        f'You said: "{said}". Set OPENAI_API_KEY (or another provider key) '
        f"to route to a real model."
    )


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class DemoProvider:
    kind = "demo"
    total_timeout_s = float("inf")

    def __init__(self, name: str = DEMO_PROVIDER, chunk_delay_s: float = 0.02) -> None:
        self.name = name
        self.chunk_delay_s = chunk_delay_s

    def _usage(self, call: Call, text: str) -> Usage:
        prompt = _tokens(orjson.dumps(call.body.get("messages") or []).decode())
        return Usage(prompt, _tokens(text))

    async def chat(self, call: Call) -> Reply:
        text = answer_text(call.body)
        usage = self._usage(call, text)
        body = {
            "id": f"chatcmpl-{call.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": DEMO_LABEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        }
        return Reply(orjson.dumps(body), usage)

    async def chat_stream(self, call: Call) -> ReplyStream:
        text = answer_text(call.body)
        usage = self._usage(call, text)
        state = StreamState()
        base = {
            "id": f"chatcmpl-{call.request_id}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": DEMO_LABEL,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            obj = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        async def rest() -> AsyncIterator[bytes]:
            words = text.split(" ")
            for i, word in enumerate(words):
                await asyncio.sleep(self.chunk_delay_s)
                state.chunks += 1
                yield chunk({"content": word if i == 0 else " " + word})
            yield chunk({}, "stop")
            state.usage = usage
            if call.include_usage:
                yield (
                    b"data: "
                    + orjson.dumps(
                        {
                            **base,
                            "choices": [],
                            "usage": {
                                "prompt_tokens": usage.prompt_tokens,
                                "completion_tokens": usage.completion_tokens,
                                "total_tokens": usage.total_tokens,
                            },
                        }
                    )
                    + b"\n\n"
                )
            state.completed = True

        async def close() -> None:
            return None

        return ReplyStream(chunk({"role": "assistant", "content": ""}), rest(), state, close)

    async def embeddings(self, call: Call) -> Reply:
        inputs = call.body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for i, item in enumerate(items):
            digest = hashlib.sha256(str(item).encode()).digest()
            vec = [round((b - 127.5) / 127.5, 6) for b in digest[:16]]
            data.append({"object": "embedding", "index": i, "embedding": vec})
        prompt = sum(_tokens(str(x)) for x in items)
        body = {
            "object": "list",
            "data": data,
            "model": DEMO_LABEL,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return Reply(orjson.dumps(body), Usage(prompt, 0))

    async def aclose(self) -> None:
        return None

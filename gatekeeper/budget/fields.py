"""Which request fields a key with a budget may send: those whose cost the reservation bounds.

The reservation is ``prompt + n × max_tokens`` (see :mod:`gatekeeper.budget.reserve`).
A field is allowed when what it changes is either counted in that prompt estimate
(messages, tools), capped by the explicit completion cap the gateway sends (``n``,
reasoning effort: OpenAI counts reasoning tokens in ``completion_tokens`` and caps them
by ``max_completion_tokens``), or free. Anything else — a priced tier, audio, web search,
predicted outputs, or a field the gateway does not know — is refused with 400
``unsupported_parameter`` for keys with a budget; keys without one pass everything.
The table is in docs/budget.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gatekeeper.errors import InvalidRequest

CHAT_ALLOWED: frozenset[str] = frozenset(
    {
        # what the request is
        "model",
        "messages",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        # capped by the explicit completion cap (n × max_tokens)
        "max_tokens",
        "max_completion_tokens",
        "n",
        "reasoning_effort",
        "verbosity",
        # sampling: no effect on price
        "temperature",
        "top_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        # tools: definitions count in the prompt estimate, calls in the completion
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "functions",
        "function_call",
    }
)
EMBEDDINGS_ALLOWED: frozenset[str] = frozenset(
    {"model", "input", "encoding_format", "dimensions", "user"}
)

# Accepted when they carry the value that costs nothing extra.
_FREE_VALUES: Mapping[str, tuple[object, ...]] = {
    "service_tier": ("auto", "default", None),
    "modalities": (["text"], None),
    "prediction": (None,),
    "web_search_options": (None,),
    "audio": (None,),
}
MAX_N = 128


def check_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """Refuse a field whose cost the reservation cannot bound (InvalidRequest, 400)."""
    if body.keys() <= allowed:  # the common body: one C-level subset test
        return
    for name, value in body.items():
        if name in allowed:
            continue
        if name in _FREE_VALUES and value in _FREE_VALUES[name]:
            continue
        raise InvalidRequest(
            f"'{name}' is not supported for API keys with a budget: the gateway cannot "
            "bound its cost (see docs/budget.md, allowed fields)",
            param=name,
            code="unsupported_parameter",
        )


def check_n(body: Mapping[str, Any]) -> None:
    """``n`` must be an int in 1..MAX_N (it multiplies the reservation)."""
    n = body.get("n")
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise InvalidRequest(f"n must be an integer in 1..{MAX_N}", param="n", code="invalid_type")

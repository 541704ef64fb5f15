"""From a finished exchange to its charge: what the upstream said, what arrived, what to count.

Thin glue around :func:`gatekeeper.budget.charge.decide_charge`: it builds the lazy
counting callables from the unary reply or the stream's captured payloads, so the
tokenizer runs only when the upstream's usage is missing or not believable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gatekeeper.budget.charge import (
    MAX_CHARS_PER_TOKEN,
    Charge,
    Ended,
    decide_charge,
    reply_chars,
    reply_texts,
    stream_chars,
    stream_text_bound,
    stream_texts,
    text_chars,
)
from gatekeeper.budget.tokens import count_input, count_prompt, count_text, family_of
from gatekeeper.providers.base import Reply, StreamState, Usage
from gatekeeper.routing.matrix import ModelSpec

OVERFLOW_BYTES_PER_TOKEN = 3


def _memo(make: Callable[[], list[str]]) -> Callable[[], list[str]]:
    cache: list[list[str]] = []

    def get() -> list[str]:
        if not cache:
            cache.append(make())
        return cache[0]

    return get


def charge_reply(
    served: ModelSpec, endpoint: str, body: dict[str, Any], reply: Reply, reserved_completion: int
) -> Charge:
    """The charge of a unary chat or embeddings reply."""
    usage = reply.usage
    if usage is not None and usage.prompt_tokens > 0:  # the hot path: no count
        allowed = usage.completion_tokens * MAX_CHARS_PER_TOKEN
        if (
            endpoint == "embeddings"
            or len(reply.body) <= allowed
            or reply_chars(reply.parsed) <= allowed
        ):
            return Charge(usage.prompt_tokens, usage.completion_tokens, "upstream")
    family = family_of(served.upstream)
    if endpoint == "embeddings":
        return decide_charge(
            reply.usage,
            "complete",
            0,
            chars_bound=0,
            chars=lambda: 0,
            count_prompt=lambda: count_input(body.get("input"), family),
            count_completion=lambda: 0,
        )
    texts = _memo(lambda: reply_texts(reply.parsed))
    return decide_charge(
        reply.usage,
        "complete",
        reserved_completion,
        chars_bound=len(reply.body),
        chars=lambda: text_chars(texts()),
        count_prompt=lambda: count_prompt(body, family),
        count_completion=lambda: count_text(texts(), family),
    )


def charge_stream(
    served: ModelSpec,
    body: dict[str, Any],
    state: StreamState,
    ended: Ended,
    reserved_completion: int,
) -> Charge:
    """The charge of a stream that ended (``complete``), was cut, or that we closed."""
    family = family_of(served.upstream)
    # deltas joined: counting them one by one would add a token at every piece boundary
    texts = _memo(lambda: ["".join(stream_texts(state.payloads))])
    overflow = math.ceil(state.overflow / OVERFLOW_BYTES_PER_TOKEN)
    usage: Usage | None = state.usage
    return decide_charge(
        usage,
        ended,
        reserved_completion,
        chars_bound=state.captured + state.overflow,
        chars=lambda: stream_chars(state.payloads) + state.overflow,
        count_prompt=lambda: count_prompt(body, family),
        count_completion=lambda: count_text(texts(), family) + overflow,
        text_bound=lambda: _plus(stream_text_bound(state.payloads), state.overflow),
    )


def _plus(bound: int | None, extra: int) -> int | None:
    return None if bound is None else bound + extra


def charge_exchange(
    served: ModelSpec,
    endpoint: str,
    body: dict[str, Any],
    reply: Reply | None,
    state: StreamState | None,
    ended: str,
    reserved_completion: int,
) -> Charge | None:
    """The charge of a finished exchange that reached an upstream (None: nothing came back)."""
    if reply is not None:
        return charge_reply(served, endpoint, body, reply, reserved_completion)
    if state is None:
        return None
    how: Ended = "complete" if ended == "complete" else "cut" if ended == "cut" else "hangup"
    return charge_stream(served, body, state, how, reserved_completion)

"""How much one request may cost, decided before it is sent (pure).

The reservation is an upper bound on what the upstream can bill, because the gateway
always sends an explicit completion cap::

    reserved = prompt + n × max_tokens

``max_tokens`` is the request's (``max_completion_tokens`` or ``max_tokens``), else the
configured default, then clamped to the model's ``max_output_tokens`` and to what the
key's budget still allows: ``(remaining − prompt) // n`` tokens, and for a USD budget
``(remaining_usd − prompt cost) // (n × output price)``. When not even
``MIN_COMPLETION`` tokens per choice fit, the request is refused with 429
``insufficient_quota`` instead of being sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MIN_COMPLETION = 1
"""The smallest completion cap worth sending (per choice)."""


@dataclass(frozen=True, slots=True)
class Reserve:
    """One request's reservation: its parts, and the cap sent upstream."""

    prompt: int
    n: int
    max_tokens: int  # per choice; sent upstream as the completion cap

    @property
    def completion(self) -> int:
        return self.n * self.max_tokens

    @property
    def total(self) -> int:
        return self.prompt + self.completion


class QuotaTooSmall(ValueError):
    """Not even a minimal completion fits in what the key has left."""

    def __init__(self, prompt: int, room: int) -> None:
        super().__init__(f"prompt {prompt} tokens, room for {room} more")
        self.prompt, self.room = prompt, room


def completion_cap(
    requested: int | None,
    default: int,
    model_max: int,
) -> int:
    """The per-choice cap before the budget is considered: request, default, model."""
    cap = requested if requested is not None else default
    if model_max > 0:
        cap = min(cap, model_max)
    return max(MIN_COMPLETION, cap)


def plan_reserve(
    prompt: int,
    n: int,
    cap: int,
    *,
    room_tokens: int | None = None,
    room_micro_usd: int | None = None,
    input_micro_per_token: float = 0.0,
    output_micro_per_token: float = 0.0,
) -> Reserve:
    """The reservation for ``prompt`` tokens and ``n`` choices of at most ``cap`` tokens.

    ``room_*`` is what the key's budgets still allow (None: unlimited). The cap is
    lowered to fit; QuotaTooSmall if fewer than ``MIN_COMPLETION`` per choice fit.
    """
    if n < 1 or prompt < 0 or cap < MIN_COMPLETION:
        raise ValueError(f"bad reservation input prompt={prompt} n={n} cap={cap}")
    if room_tokens is not None:
        cap = min(cap, (room_tokens - prompt) // n)
        if cap < MIN_COMPLETION:
            raise QuotaTooSmall(prompt, max(0, room_tokens - prompt))
    if room_micro_usd is not None and output_micro_per_token > 0:
        left = room_micro_usd - math.ceil(prompt * input_micro_per_token)
        cap = min(cap, math.floor(left / (n * output_micro_per_token)))
        if cap < MIN_COMPLETION:
            raise QuotaTooSmall(prompt, max(0, left))
    elif room_micro_usd is not None and math.ceil(prompt * input_micro_per_token) > room_micro_usd:
        raise QuotaTooSmall(prompt, room_micro_usd)
    return Reserve(prompt, n, cap)


def choices(body: dict[str, Any]) -> int:
    """The request's ``n`` (1 when absent); validated as an int in 1..128."""
    n = body.get("n")
    return 1 if n is None else int(n)


def with_cap(body: dict[str, Any], cap: int) -> dict[str, Any]:
    """The body to send upstream: the client's, with the completion cap made explicit.

    The field the client used is kept (``max_completion_tokens`` for o-series clients,
    else ``max_tokens``); when both are present both carry the cap.
    """
    out = dict(body)
    if "max_completion_tokens" in out and out["max_completion_tokens"] is not None:
        out["max_completion_tokens"] = cap
        if out.get("max_tokens") is not None:
            out["max_tokens"] = cap
    else:
        out["max_tokens"] = cap
    return out

"""The dispatcher: a batch's lines by size class, sliced and interleaved (pure).

Each line is classed by its estimated tokens (prompt, from ``routing.estimate_tokens``
for chat and Responses or the input's characters for embeddings, plus the output it
asks for):

    small   < SMALL_TOKENS          slices of ``slice_lines`` lines
    medium  < LARGE_TOKENS          slices of ``slice_lines / 2`` lines
    large   the rest                slices of ``slice_lines / 4`` lines

A slice holds lines of one class only, and the slices are queued round robin over
the classes (small, medium, large, small, …), so a run of large lines neither holds
a worker for long nor stands in front of the small ones in the work queue.

A slice job names positions ``[start, end)`` in the batch's *dispatch order*: the
line indices grouped by class, each class in file order. The order is a function of
the input alone, so every node computes the same one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

from gatekeeper.batches.lines import Line, Slice, plan_slices
from gatekeeper.errors import GatewayError
from gatekeeper.ingress.responses_wire import parse_request
from gatekeeper.routing.router import estimate_tokens

RESPONSES = "/v1/responses"

CLASSES = ("small", "medium", "large")
SMALL_TOKENS = 1_000
LARGE_TOKENS = 8_000
_SHARE = (1, 2, 4)  # a class's slices hold slice_lines / this many lines


def line_tokens(body: Mapping[str, object], endpoint: str = "") -> int:
    """The tokens a request line will cost, estimated: its prompt and its output cap.

    A Responses line is estimated as the chat request it means (its ``input`` and
    ``max_output_tokens``, as ``ingress.responses_wire`` translates them)."""
    if endpoint == RESPONSES and isinstance(body, dict):
        with contextlib.suppress(GatewayError):  # checked at create time; else as it is
            body = parse_request(body, {}).chat
    messages = body.get("messages")
    if isinstance(messages, list):
        prompt = estimate_tokens([m for m in messages if isinstance(m, Mapping)])
    else:  # embeddings: characters / 4 (a list of token ids counts each id)
        data = body.get("input")
        items = data if isinstance(data, list) else [data]
        prompt = sum(len(x) if isinstance(x, list) else len(str(x)) // 4 for x in items)
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    return prompt + (cap if type(cap) is int and cap > 0 else 0)


def size_class(tokens: int) -> int:
    """0 small, 1 medium, 2 large."""
    return 0 if tokens < SMALL_TOKENS else 1 if tokens < LARGE_TOKENS else 2


@dataclass(frozen=True, slots=True)
class Plan:
    order: tuple[int, ...]  # line indices in dispatch order
    slices: tuple[Slice, ...]  # numbered in queue order; ranges over ``order``
    classes: tuple[int, ...]  # each slice's size class


def plan(lines: Sequence[Line], slice_lines: int, endpoint: str = "") -> Plan:
    """Classes, slices and their interleaved queue order for a batch's lines."""
    by_class: list[list[int]] = [[], [], []]
    for line in lines:
        body = orjson.loads(line.body)
        tokens = line_tokens(body if isinstance(body, dict) else {}, endpoint)
        by_class[size_class(tokens)].append(line.index)
    order = tuple(i for group in by_class for i in group)
    ranges: list[list[tuple[int, int]]] = []
    at = 0
    for c, group in enumerate(by_class):
        size = max(1, slice_lines // _SHARE[c])
        ranges.append(
            [(s, min(s + size, at + len(group))) for s in range(at, at + len(group), size)]
        )
        at += len(group)
    slices: list[Slice] = []
    classes: list[int] = []
    for k in range(max(len(r) for r in ranges)):
        for c, r in enumerate(ranges):
            if k < len(r):
                slices.append(Slice(len(slices), *r[k]))
                classes.append(c)
    return Plan(order, tuple(slices), tuple(classes))


def identity(lines: Sequence[Line], slice_lines: int) -> Plan:
    """The plan of a batch recorded before size classes: file order, equal slices."""
    slices = plan_slices(len(lines), slice_lines)
    return Plan(tuple(line.index for line in lines), slices, (0,) * len(slices))


def plan_of(record: Mapping[str, object], lines: Sequence[Line]) -> Plan:
    """The dispatch plan a batch record was queued with (``order: size`` or file order)."""
    size = record.get("slice_lines")
    size = size if type(size) is int and size > 0 else 1  # none: recorded before re-queueing
    if record.get("order") != "size":
        return identity(lines, size)
    batch = record.get("batch")
    endpoint = batch.get("endpoint") if isinstance(batch, Mapping) else None
    return plan(lines, size, endpoint if isinstance(endpoint, str) else "")

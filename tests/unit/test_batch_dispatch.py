"""The dispatcher's size classes, slices and queue order (pure)."""

from __future__ import annotations

import orjson

from gatekeeper.batches.dispatch import (
    LARGE_TOKENS,
    SMALL_TOKENS,
    line_tokens,
    plan,
    plan_of,
    size_class,
)
from gatekeeper.batches.lines import Line


def chat(i: int, chars: int, **extra: object) -> Line:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * chars}], **extra}
    return Line(i, f"c{i}", orjson.dumps(body))


def test_lines_are_classed_by_estimated_tokens() -> None:
    small = {"messages": [{"role": "user", "content": "hi"}]}
    assert size_class(line_tokens(small)) == 0
    # the output cap counts: a short prompt asking for a long answer is large
    assert size_class(line_tokens({**small, "max_tokens": LARGE_TOKENS})) == 2
    assert size_class(line_tokens({**small, "max_completion_tokens": SMALL_TOKENS})) == 1
    assert size_class(line_tokens({**small, "max_tokens": "lots"})) == 0
    assert line_tokens({"input": "x" * 4000}) == 1000  # embeddings: characters / 4
    assert line_tokens({"input": [[1, 2, 3], "abcd"]}) == 4  # token ids count one each
    assert size_class(line_tokens({})) == 0


def test_each_slice_holds_one_class_and_the_classes_are_interleaved() -> None:
    # 8 small, 4 medium, 3 large lines, mixed through the file
    sizes = [10] * 8 + [8_000] * 4 + [40_000] * 3
    order = [0, 8, 12, 1, 2, 9, 13, 3, 4, 10, 14, 5, 6, 11, 7]
    lines = [chat(i, sizes[k]) for i, k in enumerate(order)]
    p = plan(lines, 4)
    classes = {line.index: size_class(line_tokens(orjson.loads(line.body))) for line in lines}
    # every line in exactly one slice
    covered = [p.order[i] for s in p.slices for i in range(s.start, s.end)]
    assert sorted(covered) == list(range(len(lines)))
    assert [s.n for s in p.slices] == list(range(len(p.slices)))
    for s, c in zip(p.slices, p.classes, strict=True):
        assert {classes[p.order[i]] for i in range(s.start, s.end)} == {c}
        assert s.end - s.start <= (4, 2, 1)[c]  # large lines in smaller slices
    # queued round robin: small, medium, large, small, medium, large, …
    assert list(p.classes) == [0, 1, 2, 0, 1, 2, 2]
    # within a class, file order
    smalls = [i for i in p.order if classes[i] == 0]
    assert smalls == sorted(smalls)


def test_the_plan_is_the_same_on_every_node_and_old_records_keep_file_order() -> None:
    lines = [chat(i, 10 if i % 2 else 40_000) for i in range(6)]
    record = {"slice_lines": 2, "order": "size"}
    assert plan_of(record, lines) == plan_of(dict(record), list(lines))
    old = plan_of({}, lines)  # a batch queued before size classes: [start, end) in file order
    assert old.order == tuple(range(6)) and len(old.slices) == 6
    assert plan([], 4).slices == ()


def test_a_responses_line_is_classed_as_the_chat_request_it_means() -> None:
    """Its ``input`` is the prompt and ``max_output_tokens`` the output cap; an
    embeddings line with the same ``input`` is only its characters / 4."""
    body = {"model": "m", "input": "x" * 4000, "max_output_tokens": LARGE_TOKENS}
    assert line_tokens(body) == 1000  # read as embeddings
    assert line_tokens(body, "/v1/responses") > 1000 + LARGE_TOKENS - 1
    items = {"model": "m", "input": [{"role": "user", "content": "hi"}]}
    assert size_class(line_tokens(items, "/v1/responses")) == 0
    odd = {"model": "m", "input": 5}  # refused at create time; classed without a crash
    assert size_class(line_tokens(odd, "/v1/responses")) == 0
    lines = [Line(0, "a", orjson.dumps(body)), Line(1, "b", orjson.dumps(items))]
    record = {"slice_lines": 4, "order": "size", "batch": {"endpoint": "/v1/responses"}}
    got = plan_of(record, lines)
    assert got.order == (1, 0) and got.classes == (0, 2)

"""The pure parts of honest budgets: reservation arithmetic, charges, allowed fields."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.budget.charge import (
    MAX_CHARS_PER_TOKEN,
    Charge,
    decide_charge,
    reply_chars,
    reply_texts,
    stream_chars,
    stream_text_bound,
    stream_texts,
)
from gatekeeper.budget.fields import CHAT_ALLOWED, check_fields, check_n
from gatekeeper.budget.reserve import (
    MIN_COMPLETION,
    QuotaTooSmall,
    completion_cap,
    plan_reserve,
    with_cap,
)
from gatekeeper.budget.tokens import count_prompt, count_text, family_of
from gatekeeper.errors import InvalidRequest
from gatekeeper.providers.base import Usage


class TestReservation:
    @given(
        prompt=st.integers(0, 10_000),
        n=st.integers(1, 128),
        cap=st.integers(1, 100_000),
        room=st.none() | st.integers(0, 200_000),
    )
    def test_the_reservation_fits_the_room_or_is_refused(
        self, prompt: int, n: int, cap: int, room: int | None
    ) -> None:
        """Admitted: prompt + n × max_tokens ≤ room and the cap only ever shrinks.
        Refused: not even MIN_COMPLETION per choice fits."""
        try:
            r = plan_reserve(prompt, n, cap, room_tokens=room)
        except QuotaTooSmall:
            assert room is not None and prompt + n * MIN_COMPLETION > room
            return
        assert r.total == prompt + n * r.max_tokens
        assert MIN_COMPLETION <= r.max_tokens <= cap
        if room is not None:
            assert r.total <= room
            assert r.max_tokens == cap or r.total + n > room  # clamped only as far as needed

    @given(
        prompt=st.integers(0, 5_000),
        n=st.integers(1, 16),
        cap=st.integers(1, 50_000),
        room=st.integers(0, 10_000_000),
        price_in=st.floats(0.0, 50.0),
        price_out=st.floats(0.01, 100.0),
    )
    def test_a_usd_reservation_costs_at_most_the_room(
        self, prompt: int, n: int, cap: int, room: int, price_in: float, price_out: float
    ) -> None:
        """The worst-case cost of the clamped request fits the micro-USD room."""
        try:
            r = plan_reserve(
                prompt,
                n,
                cap,
                room_micro_usd=room,
                input_micro_per_token=price_in,
                output_micro_per_token=price_out,
            )
        except QuotaTooSmall:
            return
        worst = -(-prompt * price_in // 1) + r.completion * price_out
        assert worst <= room + 1e-6 * max(1.0, room)

    def test_the_cap_is_the_request_s_else_the_default_within_the_model(self) -> None:
        assert completion_cap(None, 1024, 4096) == 1024
        assert completion_cap(9000, 1024, 4096) == 4096
        assert completion_cap(50, 1024, 0) == 50  # 0: the model sets no output limit

    def test_the_cap_goes_in_the_field_the_client_used(self) -> None:
        assert with_cap({"model": "m"}, 7) == {"model": "m", "max_tokens": 7}
        assert with_cap({"max_completion_tokens": 99}, 7) == {"max_completion_tokens": 7}
        both = with_cap({"max_completion_tokens": 99, "max_tokens": 98}, 7)
        assert both == {"max_completion_tokens": 7, "max_tokens": 7}


def charge(reported: Usage | None, ended: str = "complete", text: str = "x" * 40) -> Charge:
    return decide_charge(
        reported,
        ended,  # type: ignore[arg-type]
        500,
        chars_bound=len(text) + 200,
        chars=lambda: len(text),
        count_prompt=lambda: 8,
        count_completion=lambda: 10,
    )


class TestCharge:
    def test_believable_upstream_usage_is_used_as_is(self) -> None:
        assert charge(Usage(9, 12)) == decide_charge(
            Usage(9, 12),
            "complete",
            0,
            chars_bound=0,
            chars=lambda: 0,
            count_prompt=lambda: 0,
            count_completion=lambda: 0,
        )
        c = charge(Usage(9, 12))
        assert (c.prompt, c.completion, c.source) == (9, 12, "upstream")

    def test_zero_usage_with_content_is_counted(self) -> None:
        c = charge(Usage(0, 0))
        assert (c.prompt, c.completion, c.source, c.suspicious) == (8, 10, "counted", True)

    def test_too_few_tokens_for_the_text_is_suspicious(self) -> None:
        """3,000 characters reported as 2 tokens: counted, never below the report."""
        c = charge(Usage(9, 2), text="y" * 3000)
        assert c.source == "counted" and c.suspicious
        assert c.prompt == 9 and c.completion == 10
        assert 2 * MAX_CHARS_PER_TOKEN < 3000

    def test_missing_usage_is_counted(self) -> None:
        c = charge(None, "cut")
        assert (c.prompt, c.completion, c.source) == (8, 10, "counted")

    def test_a_hang_up_without_usage_pays_the_reserved_completion(self) -> None:
        c = charge(None, "hangup")
        assert (c.prompt, c.completion, c.source) == (8, 500, "reserved")

    def test_usage_that_arrived_before_the_hang_up_is_used(self) -> None:
        c = charge(Usage(9, 12), "hangup")
        assert c.source == "upstream"

    @given(
        reported=st.none() | st.builds(Usage, st.integers(0, 10_000), st.integers(0, 10_000)),
        ended=st.sampled_from(["complete", "cut", "hangup"]),
        counted=st.integers(0, 10_000),
    )
    def test_a_started_call_is_never_charged_zero(
        self, reported: Usage | None, ended: str, counted: int
    ) -> None:
        c = decide_charge(
            reported,
            ended,  # type: ignore[arg-type]
            100,
            chars_bound=counted * 4,
            chars=lambda: counted * 4,
            count_prompt=lambda: 0,
            count_completion=lambda: counted,
        )
        assert c.total >= 1
        if reported is not None:
            assert c.prompt >= reported.prompt_tokens
            assert c.completion >= reported.completion_tokens

    def test_reply_chars_agrees_with_reply_texts(self) -> None:
        """The hot-path length and the full walk agree, plain reply or not."""
        call = {"function": {"name": "f", "arguments": '{"a":1}'}}
        plain = {"role": "assistant", "content": "hi!", "refusal": None, "annotations": []}
        replies = [
            {"choices": [{"message": plain}]},
            {"choices": [{"message": {**plain, "tool_calls": [call]}}, {"message": plain}]},
            {"choices": [{"message": {"role": "assistant", "content": None, "refusal": "no"}}]},
            {"choices": "broken"},
            {"choices": [{"message": {"role": "assistant", "tool_calls": [call]}}]},  # 2 keys
            {"choices": [{"message": {**plain, "reasoning_content": "think"}}]},
        ]
        for reply in replies:
            assert reply_chars(reply) == sum(len(t) for t in reply_texts(reply))

    def test_reply_and_stream_texts_cover_content_and_tool_calls(self) -> None:
        call = {"function": {"name": "f", "arguments": '{"a":1}'}}
        reply = {"choices": [{"message": {"content": "hi", "tool_calls": [call]}}]}
        assert reply_texts(reply) == ["hi", "f", '{"a":1}']
        chunks = [
            b'{"choices":[{"delta":{"content":"he"}}]}',
            b'data: {"choices":[{"delta":{"content":"llo"}}]}',
            b"not json",
        ]
        assert stream_texts(chunks) == ["he", "llo"]


class TestTokens:
    def test_families(self) -> None:
        assert family_of("gpt-4o-mini") == "o200k"
        assert family_of("openai/gpt-5") == "o200k"
        assert family_of("gpt-4-turbo") == "cl100k"
        assert family_of("claude-3-5-sonnet-latest") == "approx"
        assert family_of("my-private-model") == "unknown"

    def test_counts_are_exact_for_openai_and_bounded_otherwise(self) -> None:
        assert count_text(["hello there"], "o200k") == 2
        assert count_text(["hello there"], "approx") == 3  # ceil(2 × 1.25)
        assert count_text(["hello there"], "unknown") == 4  # ceil(11 bytes / 3)
        assert count_text([], "o200k") == 0

    def test_a_prompt_counts_framing_text_and_images(self) -> None:
        body = {"messages": [{"role": "user", "content": "hello there"}]}
        assert count_prompt(body, "o200k") == 3 + 3 + 2
        image = {"type": "image_url", "image_url": {"url": "data:,"}}
        with_image = {"messages": [{"role": "user", "content": [image]}]}
        assert count_prompt(with_image, "o200k") == 6 + 765


class TestFields:
    def test_bounded_fields_pass(self) -> None:
        check_fields({"model": "m", "messages": [], "n": 2, "seed": 1}, CHAT_ALLOWED)
        check_fields({"service_tier": "auto", "modalities": ["text"]}, CHAT_ALLOWED)

    @pytest.mark.parametrize(
        "field,value",
        [
            ("service_tier", "priority"),
            ("modalities", ["text", "audio"]),
            ("audio", {"voice": "alloy"}),
            ("web_search_options", {}),
            ("prediction", {"type": "content", "content": "x"}),
            ("some_new_field", 1),
        ],
    )
    def test_unbounded_fields_are_refused(self, field: str, value: object) -> None:
        with pytest.raises(InvalidRequest) as err:
            check_fields({"model": "m", field: value}, CHAT_ALLOWED)
        assert err.value.code == "unsupported_parameter" and err.value.param == field

    @pytest.mark.parametrize("n", [0, 129, True, 1.5, "2"])
    def test_n_must_be_a_small_positive_int(self, n: object) -> None:
        with pytest.raises(InvalidRequest):
            check_n({"n": n})


def test_stream_chars_agrees_with_stream_texts() -> None:
    """The hot-path count and the full walk agree on every chunk shape."""
    call = {"index": 0, "function": {"name": "f", "arguments": '{"a":'}}
    chunks = [
        b'{"choices":[{"delta":{"role":"assistant","content":""}}]}',
        b'{"choices":[{"delta":{"content":"h\\u00e9llo"}}]}',
        b'{"choices":[{"delta":{"tool_calls":[' + orjson.dumps(call) + b"]}}]}",
        b'{"choices":[{"delta":{"reasoning_content":"hm"}}]}',
        b'{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"bc"}}]}',
        b'{"choices":[{"delta":{"refusal":"no"}}]}',
        b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}',
        b"not json",
        b'{"choices":"broken"}',
    ]
    assert stream_chars(chunks) == sum(len(t) for t in stream_texts(chunks)) == 18


TEXT = st.text(max_size=8)
DELTAS = st.one_of(  # mostly the plain shape (where the bound applies), some anything
    st.builds(lambda c: {"content": c}, TEXT),
    st.builds(lambda c: {"role": "assistant", "content": c}, TEXT),
    st.just({}),
    st.dictionaries(
        st.sampled_from(["role", "content", "refusal", "reasoning_content", "x"]),
        st.one_of(st.just("assistant"), TEXT, st.none(), st.integers(-9, 9)),
        max_size=3,
    ),
)


class TestStreamTextBound:
    """The parse-free bound that lets a stream's believable usage skip the exact count."""

    def test_plain_chunks_are_bounded_by_their_content_bytes(self) -> None:
        chunks = [
            b'{"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
            b'{"id":"c","choices":[{"index":0,"delta":{"content":"caf\xc3\xa9 "}}]}',
            b'{"id":"c","choices":[{"index":0,"delta":{"content":"ok"},"logprobs":null}]}',
            b'{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
            b'{"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}',
        ]
        assert stream_chars(chunks) == 7  # "café " and "ok"
        assert stream_text_bound(chunks) == 8  # é is two bytes

    @pytest.mark.parametrize(
        "chunk",
        [
            b'{"choices":[{"delta":{"content":"line\\n"}}]}',  # an escape
            b'{"choices":[{"d\\u0065lta":{"content":"hidden"}}]}',  # an escaped key
            b'{"choices":[{"delta": {"content":"spaced"}}]}',
            b'{"choices":[{"delta":{"refusal":"no"}}]}',
            b'{"choices":[{"delta":{"reasoning_content":"hm"}}]}',
            b'{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}"}}]}}]}',
            b'{"choices":[{"delta":{"content":"a","content":"longer"}}]}',
        ],
        ids=["escape", "escaped-key", "whitespace", "refusal", "reasoning", "tools", "dup"],
    )
    def test_anything_but_plain_deltas_is_counted_exactly(self, chunk: bytes) -> None:
        assert stream_text_bound([b'{"choices":[{"delta":{"content":"x"}}]}', chunk]) is None

    @given(
        st.lists(
            st.fixed_dictionaries(
                {"choices": st.lists(st.fixed_dictionaries({"delta": DELTAS}), max_size=2)}
            ),
            max_size=6,
        ),
        st.lists(st.integers(0, 40), max_size=3),
    )
    def test_the_bound_is_never_below_the_exact_count(
        self, objs: list[dict[str, object]], cuts: list[int]
    ) -> None:
        chunks = [orjson.dumps(o) for o in objs]
        for at in cuts:  # a truncated payload, as a cut or hostile upstream might leave
            if chunks:
                chunks[0] = chunks[0][:at]
        bound = stream_text_bound(chunks)
        assert bound is None or bound >= stream_chars(chunks)

    def test_a_stream_believed_from_the_bound_is_not_counted(self) -> None:
        counted: list[str] = []

        def chars() -> int:
            counted.append("exact")
            return 0

        c = decide_charge(
            Usage(5, 1),
            "complete",
            100,
            chars_bound=10_000,  # the bytes received say nothing
            chars=chars,
            count_prompt=lambda: 5,
            count_completion=lambda: 1,
            text_bound=lambda: MAX_CHARS_PER_TOKEN,
        )
        assert c == Charge(5, 1, "upstream") and counted == []
        c = decide_charge(
            Usage(5, 1),
            "complete",
            100,
            chars_bound=10_000,
            chars=lambda: 10 * MAX_CHARS_PER_TOKEN,
            count_prompt=lambda: 5,
            count_completion=lambda: 10,
            text_bound=lambda: None,  # cannot tell: the exact count decides
        )
        assert c.source == "counted" and c.completion == 10

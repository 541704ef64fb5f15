"""The route choice: product promises, the three modes, filters, breakers, modes from headers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from gatekeeper.errors import InvalidRequest, ModelNotFound
from gatekeeper.routing.matrix import Matrix, ModelSpec, load_matrix
from gatekeeper.routing.router import (
    AUTO,
    DEFAULT_QUALITY_THRESHOLD,
    IMAGE_TOKENS,
    Requirements,
    Route,
    RoutingMode,
    choose,
    estimate_tokens,
    parse_mode,
    required_quality,
)
from gatekeeper.routing.scorer import Complexity, score

MATRIX = load_matrix(Path(__file__).resolve().parents[2] / "config" / "gatekeeper.yaml")
SIMPLE = Complexity("simple", 0.0, "small")


def user(text: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": text}]


def route(
    prompt: str,
    mode: RoutingMode = "cost",
    *,
    matrix: Matrix = MATRIX,
    threshold: float = DEFAULT_QUALITY_THRESHOLD,
    needs: Requirements | None = None,
    health: Mapping[str, float] | None = None,
    open_breakers: frozenset[str] = frozenset(),
    model: str = AUTO,
) -> Route:
    """Score ``prompt`` and route it, as the pipeline does."""
    return choose(
        matrix,
        requested_model=model,
        mode=mode,
        complexity=score(user(prompt)),
        quality_threshold=threshold,
        needs=needs if needs is not None else Requirements.of_chat(user(prompt)),
        health=health or {},
        open_breakers=open_breakers,
    )


def spec(name: str, price: float, quality: float, provider: str = "p") -> ModelSpec:
    """A chat model whose quality is the same for every task class."""
    classes = ("simple", "general", "creative", "code", "math", "reasoning", "legal")
    return ModelSpec(
        name=name,
        provider=provider,
        upstream=name,
        kind="chat",
        input_per_1k=price,
        output_per_1k=0.0,
        context_window=100_000,
        max_output_tokens=4096,
        capabilities=frozenset({"streaming"}),
        quality=tuple((task, quality) for task in classes),
    )


class TestProductPromises:
    """The three examples on the product page, with the shipped matrix and defaults."""

    def test_arithmetic_goes_to_llama_on_groq(self) -> None:
        """'What is 2+2?' -> llama-3.1-8b on Groq ($0.00008/1K output)."""
        chosen = route("What is 2+2?").model
        assert (chosen.name, chosen.provider, chosen.output_per_1k) == (
            "llama-3.1-8b",
            "groq",
            0.00008,
        )

    def test_a_legal_contract_goes_to_claude_sonnet(self) -> None:
        """'Write a legal contract' -> claude-3-5-sonnet ($0.003/1K input)."""
        chosen = route("Write a legal contract").model
        assert (chosen.name, chosen.input_per_1k) == ("claude-3-5-sonnet", 0.003)

    def test_unit_tests_go_to_deepseek_r1(self) -> None:
        """'Generate unit tests' -> deepseek-r1 (about $0.0005/1K input)."""
        chosen = route("Generate unit tests").model
        assert (chosen.name, chosen.upstream) == ("deepseek-r1", "deepseek-reasoner")

    def test_default_threshold(self) -> None:
        """The promises hold at the documented default threshold."""
        assert DEFAULT_QUALITY_THRESHOLD == 0.6


class TestCostMode:
    @pytest.mark.parametrize(
        ("prompt", "task", "model"),
        [
            ("Hi there!", "simple", "llama-3.1-8b"),
            ("Why is the sky blue?", "simple", "llama-3.1-8b"),
            ("Translate 'Where is the train station?' into Spanish", "general", "llama-3.1-8b"),
            ("Summarize this paragraph in one sentence: we met.", "general", "llama-3.1-8b"),
            ("Write a cover letter for a barista job", "general", "llama-3.1-8b"),
            ("Write a poem about the ocean", "creative", "gpt-4o-mini"),
            ("Write a limerick about a cat", "creative", "gpt-4o-mini"),
            ("Solve for x: 3x + 5 = 20", "math", "deepseek-chat"),
            ("What is the probability of rolling two sixes?", "math", "deepseek-chat"),
            ("Prove that there are infinitely many primes.", "math", "deepseek-r1"),
            ("What does the yield keyword do in Python?", "code", "deepseek-chat"),
            (
                "Review this Python function for bugs:\n```python\ndef add(a, b):\n"
                "    return a - b\n```",
                "code",
                "deepseek-chat",
            ),
            (
                "Write a SQL query that returns the top 5 customers by revenue",
                "code",
                "deepseek-r1",
            ),
            ("Write a Python function that reverses a linked list", "code", "deepseek-r1"),
            (
                "Compare the pros and cons of microservices versus a monolith",
                "reasoning",
                "deepseek-chat",
            ),
            (
                "Plan a product launch step by step:\n1. research the market\n"
                "2. build a landing page\n3. pick pricing\n4. announce it",
                "reasoning",
                "deepseek-r1",
            ),
            ("Explain what an indemnification clause means", "legal", "claude-3-5-haiku"),
            ("Is this non-compete enforceable in California?", "legal", "claude-3-5-haiku"),
            ("Draft a mutual NDA between two startups", "legal", "claude-3-5-sonnet"),
            ("Write an indemnification clause for a SaaS agreement", "legal", "claude-3-5-sonnet"),
        ],
    )
    def test_cheapest_model_good_enough_for_the_task(
        self, prompt: str, task: str, model: str
    ) -> None:
        """Harder tasks raise the bar; the cheapest model over it wins."""
        chosen = route(prompt)
        assert (chosen.complexity.task, chosen.model.name) == (task, model)
        assert not chosen.below_threshold

    def test_reason_names_the_rule_and_the_bar(self) -> None:
        """The reason is short ASCII that says why."""
        assert route("Write a legal contract").reason == (
            "cost: cheapest with legal quality >= 0.88 (legal large 0.70)"
        )

    def test_a_higher_threshold_buys_a_better_model(self) -> None:
        """A key with threshold 0.9 gets gpt-4o-mini, not llama, for small talk."""
        assert route("What is 2+2?", threshold=0.9).model.name == "gpt-4o-mini"

    def test_a_lower_threshold_saves_money(self) -> None:
        """A key with threshold 0.0 gets gpt-4o-mini for the contract (bar 0.70)."""
        assert route("Write a legal contract", threshold=0.0).model.name == "gpt-4o-mini"

    def test_fallbacks_follow_the_same_order(self) -> None:
        """After the models over the bar come the others, best quality first."""
        chosen = route("Write a legal contract")
        assert chosen.candidates[:3] == ("claude-3-5-sonnet", "gpt-4o", "claude-3-5-haiku")
        assert tuple(m.name for m in chosen.fallbacks) == chosen.candidates[1:]
        assert chosen.candidates[0] == chosen.model.name

    def test_embeddings_never_compete_with_chat(self) -> None:
        """Only chat models are candidates for a chat request."""
        assert "text-embedding-3-small" not in route("Hi").candidates

    def test_ties_on_price_go_by_name(self) -> None:
        """Equal price and quality: the order is still deterministic."""
        matrix = Matrix.of([spec("b", 0.001, 0.9), spec("a", 0.001, 0.9)])
        assert route("Hi", matrix=matrix).candidates == ("a", "b")


class TestRequiredQuality:
    def test_threshold_is_the_bar_for_the_simplest_request(self) -> None:
        """Complexity 0 asks for exactly the threshold."""
        assert required_quality(0.6, SIMPLE) == 0.6

    def test_complexity_raises_the_bar_towards_one(self) -> None:
        """threshold + (1 - threshold) * score."""
        assert required_quality(0.6, Complexity("legal", 0.7, "large")) == 0.88
        assert required_quality(0.6, Complexity("legal", 1.0, "large")) == 1.0


class TestFallBackToBestQuality:
    def test_nothing_over_the_bar_uses_the_best_and_says_so(self) -> None:
        """A contract that must be JSON rules out Claude; gpt-4o (0.87 < 0.88) is best left."""
        needs = Requirements(needs_json=True)
        chosen = route("Write a legal contract", needs=needs)
        assert chosen.model.name == "gpt-4o"
        assert chosen.below_threshold
        assert chosen.reason.startswith("cost: no model reaches legal quality 0.88; best is 0.87")

    def test_in_latency_mode_too(self) -> None:
        """Speed never beats quality when nothing meets the bar."""
        needs = Requirements(needs_json=True)
        chosen = route(
            "Write a legal contract", "latency", needs=needs, health={"llama-3.1-8b": 0.1}
        )
        assert chosen.model.name == "gpt-4o"
        assert chosen.reason.startswith("latency: no model reaches")


class TestLatencyMode:
    def test_lowest_p99_among_good_enough_models(self) -> None:
        """Every model is good enough for 2+2, so the fastest wins."""
        chosen = route("What is 2+2?", "latency", health={"llama-3.1-8b": 0.3, "gpt-4o-mini": 0.2})
        assert chosen.model.name == "gpt-4o-mini"
        assert chosen.reason.startswith("latency: fastest p99 TTFT 0.200s")

    def test_unknown_health_ranks_after_known(self) -> None:
        """A slow measured model beats an unmeasured one; unmeasured ones go by price."""
        chosen = route("What is 2+2?", "latency", health={"claude-3-5-sonnet": 2.0})
        assert chosen.candidates[:3] == ("claude-3-5-sonnet", "llama-3.1-8b", "gpt-4o-mini")

    def test_no_health_at_all_means_cheapest(self) -> None:
        """Without measurements latency mode behaves like cost mode and says so."""
        chosen = route("What is 2+2?", "latency")
        assert chosen.model.name == "llama-3.1-8b"
        assert "no p99 data" in chosen.reason

    def test_ties_go_to_the_cheaper_model(self) -> None:
        """Equal p99: the cheaper one first."""
        matrix = Matrix.of([spec("dear", 0.01, 0.9), spec("cheap", 0.001, 0.9)])
        chosen = route("Hi", "latency", matrix=matrix, health={"dear": 0.5, "cheap": 0.5})
        assert chosen.candidates == ("cheap", "dear")

    def test_a_fast_model_under_the_bar_is_not_chosen(self) -> None:
        """Llama 8B answers first, but not well enough for a contract."""
        chosen = route("Write a legal contract", "latency", health={"llama-3.1-8b": 0.05})
        assert chosen.model.name == "claude-3-5-sonnet"
        assert chosen.candidates[-1] == "llama-3.1-8b"

    def test_nan_health_counts_as_unknown(self) -> None:
        """A broken reading does not jump the queue."""
        matrix = Matrix.of([spec("a", 0.01, 0.9), spec("b", 0.001, 0.9)])
        chosen = route("Hi", "latency", matrix=matrix, health={"a": float("nan"), "b": 1.0})
        assert chosen.candidates == ("b", "a")


class TestCapabilityMode:
    @pytest.mark.parametrize(
        ("prompt", "model"),
        [
            ("Write a legal contract", "claude-3-5-sonnet"),
            ("Generate unit tests", "claude-3-5-sonnet"),
            ("Prove that there are infinitely many primes.", "deepseek-r1"),
            ("What is 2+2?", "gpt-4o"),  # ties with Sonnet at 0.95; gpt-4o is cheaper
        ],
    )
    def test_highest_quality_for_the_task(self, prompt: str, model: str) -> None:
        """Price only breaks ties."""
        chosen = route(prompt, "capability")
        assert chosen.model.name == model
        assert chosen.reason.startswith("capability: highest")


class TestRequirements:
    def test_tools_rule_out_models_without_function_calling(self) -> None:
        """DeepSeek-R1 cannot call tools, so tests with tools go elsewhere."""
        messages = user("Generate unit tests")
        chosen = choose(
            MATRIX,
            requested_model=AUTO,
            mode="cost",
            complexity=score(messages, tools=True),
            needs=Requirements.of_chat(messages, tools=True),
        )
        assert "deepseek-r1" not in chosen.candidates
        assert all(m.supports("tools") for m in (chosen.model, *chosen.fallbacks))

    def test_images_need_vision(self) -> None:
        """An image in the message rules out text-only models."""
        parts = [{"type": "text", "text": "What is 2+2?"}, {"type": "image_url", "image_url": {}}]
        messages: list[dict[str, object]] = [{"role": "user", "content": parts}]
        needs = Requirements.of_chat(messages)
        chosen = choose(
            MATRIX, requested_model=AUTO, mode="cost", complexity=score(messages), needs=needs
        )
        assert needs.needs_vision
        assert chosen.model.name == "gpt-4o-mini"
        assert set(chosen.candidates) == {"gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet"}

    def test_json_rules_out_anthropic_and_r1(self) -> None:
        """JSON mode needs native response_format support."""
        chosen = route("What is 2+2?", needs=Requirements(needs_json=True))
        assert not {"claude-3-5-haiku", "claude-3-5-sonnet", "deepseek-r1"} & set(chosen.candidates)

    def test_a_long_prompt_needs_a_long_context(self) -> None:
        """150K tokens only fit Claude's 200K window; Haiku is the cheaper one."""
        chosen = route("What is 2+2?", needs=Requirements(prompt_tokens=150_000))
        assert chosen.candidates == ("claude-3-5-haiku", "claude-3-5-sonnet")

    def test_max_tokens_counts_against_the_window_and_the_output_limit(self) -> None:
        """20K completion tokens: only Llama 3.3 70B (32K output) can produce them."""
        chosen = route("What is 2+2?", needs=Requirements(prompt_tokens=10, max_tokens=20_000))
        assert chosen.candidates == ("llama-3.3-70b",)

    def test_too_long_for_every_model(self) -> None:
        """Nothing fits: the client hears context_length_exceeded on messages."""
        with pytest.raises(InvalidRequest) as caught:
            route("What is 2+2?", needs=Requirements(prompt_tokens=300_000))
        assert (caught.value.code, caught.value.param, caught.value.status) == (
            "context_length_exceeded",
            "messages",
            400,
        )

    def test_no_model_has_every_capability(self) -> None:
        """Vision and JSON at 150K tokens: Claude fits but lacks JSON."""
        needs = Requirements(prompt_tokens=150_000, needs_vision=True, needs_json=True)
        with pytest.raises(InvalidRequest) as caught:
            route("What is 2+2?", needs=needs)
        assert caught.value.code == "no_eligible_model"
        assert "json, vision" in caught.value.message

    def test_embedding_requests_route_among_embedding_models(self) -> None:
        """kind='embedding' picks from the embedding models only."""
        chosen = route("hello", needs=Requirements(kind="embedding"))
        assert chosen.candidates == ("text-embedding-3-small",)


class TestOpenBreakers:
    def test_skips_a_provider_whose_breaker_is_open(self) -> None:
        """Groq is down: small talk goes to the next cheapest, gpt-4o-mini."""
        chosen = route("What is 2+2?", open_breakers=frozenset({"groq"}))
        assert chosen.model.name == "gpt-4o-mini"
        assert not any(m.provider == "groq" for m in chosen.fallbacks)
        assert chosen.reason.endswith("; breaker skipped: groq")

    def test_next_cheapest_good_enough_model(self) -> None:
        """DeepSeek is down: the equation goes to Llama 3.3 70B (math 0.74 = bar)."""
        chosen = route("Solve for x: 3x + 5 = 20", open_breakers=frozenset({"deepseek"}))
        assert chosen.model.name == "llama-3.3-70b"

    def test_all_open_routes_anyway(self) -> None:
        """With no alternative the breakers are ignored rather than failing the request."""
        every = frozenset({"openai", "anthropic", "groq", "deepseek"})
        chosen = route("What is 2+2?", open_breakers=every)
        assert chosen.model.name == "llama-3.1-8b"
        assert "breaker all open" in chosen.reason

    def test_unrelated_breakers_change_nothing(self) -> None:
        """A breaker for a provider with no candidate is not mentioned."""
        chosen = route("What is 2+2?", open_breakers=frozenset({"mistral"}))
        assert chosen.reason == "cost: cheapest with simple quality >= 0.60 (simple small 0.00)"


class TestRequestedModel:
    def test_a_named_model_is_used_as_is(self) -> None:
        """A concrete name bypasses scoring rules; the pipeline plans its failover."""
        chosen = route("What is 2+2?", model="gpt-4o")
        assert (chosen.model.name, chosen.candidates, chosen.fallbacks) == (
            "gpt-4o",
            ("gpt-4o",),
            (),
        )
        assert chosen.reason == "requested model gpt-4o"

    def test_unknown_model(self) -> None:
        """OpenAI's 404 model_not_found on param 'model'."""
        with pytest.raises(ModelNotFound) as caught:
            route("Hi", model="gpt-9")
        assert (caught.value.status, caught.value.code, caught.value.param) == (
            404,
            "model_not_found",
            "model",
        )

    def test_a_named_model_without_a_needed_capability(self) -> None:
        """Tools sent to deepseek-r1 are refused up front, naming the parameter."""
        with pytest.raises(InvalidRequest) as caught:
            route("Hi", model="deepseek-r1", needs=Requirements(needs_tools=True))
        assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "tools")

    def test_an_embedding_model_cannot_chat(self) -> None:
        """The kind must match the endpoint."""
        with pytest.raises(InvalidRequest) as caught:
            route("Hi", model="text-embedding-3-small")
        assert (caught.value.code, caught.value.param) == ("model_not_supported", "model")


class TestChooseArguments:
    def test_rejects_an_unknown_mode(self) -> None:
        """Modes are parsed at the edge; a bad one here is a programming error."""
        with pytest.raises(ValueError, match="routing mode"):
            choose(MATRIX, requested_model=AUTO, mode="fast", complexity=SIMPLE)  # type: ignore[arg-type]

    def test_rejects_a_threshold_outside_zero_to_one(self) -> None:
        """Thresholds are qualities."""
        with pytest.raises(ValueError, match="quality_threshold"):
            choose(
                MATRIX, requested_model=AUTO, mode="cost", complexity=SIMPLE, quality_threshold=1.5
            )

    def test_reason_is_header_safe(self) -> None:
        """Non-ASCII in configured names never reaches a header."""
        matrix = Matrix.of([spec("modèle", 0.001, 0.9)])
        chosen = choose(matrix, requested_model="modèle", mode="cost", complexity=SIMPLE)
        assert chosen.reason == "requested model mod?le"


class TestParseMode:
    def test_header_wins(self) -> None:
        """X-Routing-Mode overrides the key's claim and the default."""
        assert parse_mode("latency", "capability", "cost") == "latency"

    def test_claim_then_default(self) -> None:
        """Without a header the claim decides; without either, the default."""
        assert parse_mode(None, "capability", "cost") == "capability"
        assert parse_mode("  ", None, "cost") == "cost"

    def test_case_and_spaces_do_not_matter(self) -> None:
        """Header values are normalised."""
        assert parse_mode(" Capability ", None, "cost") == "capability"

    def test_bad_header(self) -> None:
        """400 invalid_routing_mode naming the header."""
        with pytest.raises(InvalidRequest) as caught:
            parse_mode("fastest", None, "cost")
        error = caught.value
        assert (error.status, error.code, error.param) == (
            400,
            "invalid_routing_mode",
            "X-Routing-Mode",
        )
        assert "cost, latency, capability" in error.message

    def test_bad_claim(self) -> None:
        """A key minted with a bad mode is refused with the same code."""
        with pytest.raises(InvalidRequest) as caught:
            parse_mode(None, "cheap", "cost")
        assert (caught.value.code, caught.value.param) == ("invalid_routing_mode", None)

    def test_bad_default(self) -> None:
        """A bad configured default is a configuration bug, not a client error."""
        with pytest.raises(ValueError, match="default routing mode"):
            parse_mode(None, None, "fast")


class TestEstimateTokens:
    def test_chars_over_four_plus_overhead(self) -> None:
        """400 characters in one message: 3 priming + 4 per message + 100."""
        assert estimate_tokens(user("abcd" * 100)) == 107

    def test_empty(self) -> None:
        """Only the reply priming."""
        assert estimate_tokens([]) == 3

    def test_images_and_tool_calls_count(self) -> None:
        """Each image costs a fixed amount; tool call arguments count as text."""
        parts = [{"type": "text", "text": "abcd"}, {"type": "image_url", "image_url": {}}]
        with_image = estimate_tokens([{"role": "user", "content": parts}])
        assert with_image == 3 + 4 + 1 + IMAGE_TOKENS
        call = {"role": "assistant", "content": None, "tool_calls": [{"id": "x" * 400}]}
        assert estimate_tokens([call]) > 100

    def test_requirements_of_a_chat_request(self) -> None:
        """of_chat fills in the estimate, images, tools, JSON and max_tokens."""
        needs = Requirements.of_chat(user("abcd" * 100), max_tokens=50, tools=True, json=True)
        assert needs == Requirements(
            prompt_tokens=107, max_tokens=50, needs_tools=True, needs_json=True
        )

"""The capability matrix: ModelSpec values, parsing with path-naming errors, the shipped YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gatekeeper.errors import ConfigError
from gatekeeper.routing.matrix import Matrix, ModelSpec, load_matrix, parse_matrix, parse_models
from gatekeeper.routing.scorer import TASK_CLASSES

MODELS_YAML = Path(__file__).resolve().parents[2] / "config" / "gatekeeper.yaml"


def entry(**overrides: Any) -> dict[str, Any]:
    """A valid model mapping, as it would come out of YAML."""
    base: dict[str, Any] = {
        "name": "m",
        "provider": "p",
        "input_per_1k": 0.001,
        "output_per_1k": 0.002,
        "context_window": 8000,
        "max_output_tokens": 1000,
    }
    base.update(overrides)
    return base


def spec(name: str = "m", provider: str = "p", **overrides: Any) -> ModelSpec:
    return parse_models([entry(name=name, provider=provider, **overrides)])[0]


class TestModelSpec:
    def test_cost_is_per_thousand_tokens_for_each_side(self) -> None:
        """1,000 prompt tokens at $0.001 plus 500 completion tokens at $0.002 is $0.002."""
        assert spec().cost_usd(1000, 500) == pytest.approx(0.002)

    def test_blended_price_adds_input_and_output(self) -> None:
        """The cost mode ranks by input + output price per 1K tokens."""
        assert spec().blended_per_1k == pytest.approx(0.003)

    def test_quality_of_an_unlisted_class_is_zero(self) -> None:
        """A class missing from ``quality`` never meets a threshold above zero."""
        model = spec(quality={"code": 0.9})
        assert model.quality_for("code") == 0.9
        assert model.quality_for("legal") == 0.0

    def test_capabilities(self) -> None:
        """``supports`` answers from the capability set."""
        model = spec(capabilities=["tools", "streaming"])
        assert model.supports("tools")
        assert not model.supports("vision")

    def test_is_hashable_and_compares_by_value(self) -> None:
        """Specs are frozen values: usable in sets, equal when parsed from equal data."""
        assert spec(quality={"code": 0.5}) == spec(quality={"code": 0.5})
        assert len({spec(), spec(), spec(name="other")}) == 2


class TestParseModels:
    def test_defaults(self) -> None:
        """``upstream`` defaults to the name, ``kind`` to chat, lists and maps to empty."""
        model = spec()
        assert (model.upstream, model.kind, model.capabilities, model.quality) == (
            "m",
            "chat",
            frozenset(),
            (),
        )

    def test_quality_is_stored_as_sorted_pairs(self) -> None:
        """Quality becomes a hashable tuple of (class, score) pairs in class order."""
        assert spec(quality={"math": 1, "code": 0.5}).quality == (("code", 0.5), ("math", 1.0))

    def test_error_names_the_index_and_the_field(self) -> None:
        """A negative price in the fourth entry reports ``models[3].input_per_1k``."""
        data = [entry(name=f"m{i}") for i in range(3)] + [entry(name="m3", input_per_1k=-1)]
        with pytest.raises(
            ConfigError, match=r"^models\[3\]\.input_per_1k: must be a number >= 0$"
        ):
            parse_models(data)

    def test_error_uses_the_given_path(self) -> None:
        """Callers embedding models elsewhere pass their own path prefix."""
        with pytest.raises(ConfigError, match=r"^providers\.extra\[0\]\.provider: "):
            parse_models([entry(provider="")], "providers.extra")

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"name": None}, r"models\[0\]\.name: must be a non-empty string"),
            ({"name": "auto"}, r"models\[0\]\.name: 'auto' is reserved"),
            ({"kind": "image"}, r"models\[0\]\.kind: must be one of chat, embedding"),
            ({"output_per_1k": "cheap"}, r"models\[0\]\.output_per_1k: must be a number >= 0"),
            ({"input_per_1k": True}, r"models\[0\]\.input_per_1k: must be a number >= 0"),
            ({"context_window": 0}, r"models\[0\]\.context_window: must be an integer >= 1"),
            ({"max_output_tokens": 1.5}, r"models\[0\]\.max_output_tokens: must be an integer"),
            ({"capabilities": "tools"}, r"models\[0\]\.capabilities: must be a list"),
            (
                {"capabilities": ["tools", "telepathy"]},
                r"models\[0\]\.capabilities\[1\]: unknown capability",
            ),
            ({"quality": [0.5]}, r"models\[0\]\.quality: must be a mapping"),
            ({"quality": {"poetry": 0.5}}, r"models\[0\]\.quality\.poetry: unknown task class"),
            ({"quality": {"code": 1.5}}, r"models\[0\]\.quality\.code: must be a number between"),
            ({"price": 1}, r"models\[0\]\.price: unknown field"),
        ],
    )
    def test_rejects_bad_fields(self, overrides: dict[str, Any], message: str) -> None:
        """Every field is checked, and the error says where and why."""
        with pytest.raises(ConfigError, match=message):
            parse_models([entry(**overrides)])

    def test_rejects_a_missing_required_field(self) -> None:
        """A model without a context window cannot be routed to."""
        data = entry()
        del data["context_window"]
        with pytest.raises(ConfigError, match=r"models\[0\]\.context_window: "):
            parse_models([data])

    def test_rejects_a_non_list(self) -> None:
        """The models section must be a list."""
        with pytest.raises(ConfigError, match=r"^models: must be a list"):
            parse_models({"name": "m"})

    def test_rejects_a_non_mapping_entry(self) -> None:
        """Each entry must be a mapping."""
        with pytest.raises(ConfigError, match=r"^models\[1\]: must be a mapping"):
            parse_models([entry(), "gpt-4o"])

    def test_rejects_duplicate_names(self) -> None:
        """Public names are unique; the second occurrence is reported."""
        with pytest.raises(ConfigError, match=r"^models\[1\]\.name: duplicate model name 'm'"):
            parse_models([entry(), entry()])

    def test_config_error_is_a_value_error(self) -> None:
        """Callers that only know ValueError still catch it."""
        assert issubclass(ConfigError, ValueError)


class TestMatrix:
    def test_lookup_iteration_and_kinds(self) -> None:
        """Models are found by public name and iterate in configuration order."""
        chat, embed = spec("a"), spec("b", kind="embedding")
        matrix = Matrix.of([chat, embed])
        assert matrix.get("a") is chat
        assert matrix["b"] is embed
        assert matrix.get("zzz") is None
        assert "a" in matrix and "zzz" not in matrix
        assert list(matrix) == [chat, embed] and len(matrix) == 2
        assert matrix.names() == ("a", "b")
        assert matrix.of_kind("chat") == (chat,)
        assert matrix.of_kind("embedding") == (embed,)

    def test_unknown_name_raises_key_error_on_indexing(self) -> None:
        """``matrix[name]`` is strict; ``get`` is the lenient lookup."""
        with pytest.raises(KeyError):
            Matrix.of([])["gpt-4o"]

    def test_rejects_duplicate_names(self) -> None:
        """A matrix built in code is checked too."""
        with pytest.raises(ConfigError, match="duplicate model name 'a'"):
            Matrix.of([spec("a"), spec("a")])

    def test_parse_matrix_needs_a_models_key(self) -> None:
        """A document without ``models:`` says so."""
        with pytest.raises(ConfigError, match=r"^models: missing"):
            parse_matrix({"model": []})


class TestShippedMatrix:
    matrix = load_matrix(MODELS_YAML)

    @pytest.mark.parametrize(
        ("name", "provider", "upstream"),
        [
            ("gpt-4o", "openai", "gpt-4o"),
            ("gpt-4o-mini", "openai", "gpt-4o-mini"),
            ("text-embedding-3-small", "openai", "text-embedding-3-small"),
            ("claude-3-5-sonnet", "anthropic", "claude-3-5-sonnet-20241022"),
            ("claude-3-5-haiku", "anthropic", "claude-3-5-haiku-20241022"),
            ("llama-3.1-8b", "groq", "llama-3.1-8b-instant"),
            ("llama-3.3-70b", "groq", "llama-3.3-70b-versatile"),
            ("deepseek-chat", "deepseek", "deepseek-chat"),
            ("deepseek-r1", "deepseek", "deepseek-reasoner"),
        ],
    )
    def test_ships_the_real_models(self, name: str, provider: str, upstream: str) -> None:
        """Each public name maps to its provider and the provider's own model id."""
        model = self.matrix[name]
        assert (model.provider, model.upstream) == (provider, upstream)

    @pytest.mark.parametrize(
        ("name", "input_per_1k", "output_per_1k"),
        [
            ("llama-3.1-8b", 0.00005, 0.00008),
            ("gpt-4o", 0.0025, 0.01),
            ("gpt-4o-mini", 0.00015, 0.0006),
            ("claude-3-5-sonnet", 0.003, 0.015),
            ("claude-3-5-haiku", 0.0008, 0.004),
            ("deepseek-r1", 0.00055, 0.00219),
            ("text-embedding-3-small", 0.00002, 0.0),
        ],
    )
    def test_published_prices(self, name: str, input_per_1k: float, output_per_1k: float) -> None:
        """Prices are the list prices per 1K tokens (per-1M price / 1000)."""
        model = self.matrix[name]
        assert (model.input_per_1k, model.output_per_1k) == (input_per_1k, output_per_1k)

    def test_every_chat_model_rates_every_task_class(self) -> None:
        """No chat model silently scores 0.0 on a class because it was left out."""
        for model in self.matrix.of_kind("chat"):
            assert {task for task, _ in model.quality} == set(TASK_CLASSES), model.name

    def test_the_embedding_model(self) -> None:
        """The embedding model is never a chat candidate."""
        assert [m.name for m in self.matrix.of_kind("embedding")] == ["text-embedding-3-small"]

    def test_providers(self) -> None:
        """Four providers back the default matrix."""
        assert {m.provider for m in self.matrix} == {"openai", "anthropic", "groq", "deepseek"}

"""The router the pipeline calls: allow-lists, failover plans, mode precedence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gatekeeper.auth.claims import Claims, Routing
from gatekeeper.errors import InvalidRequest
from gatekeeper.routing.live import LiveRouter
from gatekeeper.routing.matrix import Matrix, parse_models
from gatekeeper.validate import validate_chat

QUALITY = {
    "simple": 0.9,
    "general": 0.9,
    "code": 0.9,
    "math": 0.9,
    "reasoning": 0.9,
    "legal": 0.9,
    "creative": 0.9,
}


def model(name: str, provider: str, price: float, quality: float = 0.9) -> dict[str, object]:
    return {
        "name": name,
        "provider": provider,
        "input_per_1k": price,
        "output_per_1k": price,
        "context_window": 100_000,
        "max_output_tokens": 4096,
        "capabilities": ["streaming"],
        "quality": {k: quality for k in QUALITY},
    }


MATRIX = Matrix(
    parse_models(
        [
            model("cheap", "p1", 0.001),
            model("mid", "p2", 0.002),
            model("dear", "p3", 0.01, quality=0.95),
        ]
    )
)
ROUTER = LiveRouter(MATRIX, ("p1", "p2", "p3"), default_mode="cost", quality_threshold=0.5)


def claims(models: tuple[str, ...] | None = None, mode: str | None = None) -> Claims:
    now = datetime.now(UTC)
    return Claims(
        iss="t",
        sub="key_1",
        jti="j",
        iat=now,
        nbf=now,
        exp=now + timedelta(days=1),
        tenant="acme",
        models=models,
        routing=Routing(mode, None) if mode else None,
    )


def chat(model_name: str) -> object:
    return validate_chat({"model": model_name, "messages": [{"role": "user", "content": "hi"}]})


class TestAllowList:
    def test_auto_resolves_only_among_allowed_models(self) -> None:
        """A key limited to "mid" gets "mid" for auto, although "cheap" is cheaper."""
        decision = ROUTER.route(chat("auto"), claims(("mid",)), None, frozenset())  # type: ignore[arg-type]
        assert decision.model.name == "mid"

    def test_failover_plan_never_leaves_the_allow_list(self) -> None:
        """A named model's fallbacks are drawn from the key's allowed models only."""
        decision = ROUTER.route(chat("cheap"), claims(("cheap", "mid")), None, frozenset())  # type: ignore[arg-type]
        assert [m.name for m in decision.plan] == ["cheap", "mid"]

    def test_unrestricted_key_fails_over_across_providers(self) -> None:
        """Without an allow-list: one fallback per other provider, in failover-chain order."""
        decision = ROUTER.route(chat("cheap"), claims(), None, frozenset())  # type: ignore[arg-type]
        assert [m.provider for m in decision.plan] == ["p1", "p2", "p3"]


class TestModes:
    def test_header_beats_claim_beats_default(self) -> None:
        """X-Routing-Mode wins over the key's routing claim, which wins over the config."""
        keyed = claims(mode="capability")
        assert ROUTER.route(chat("auto"), keyed, None, frozenset()).mode == "capability"  # type: ignore[arg-type]
        assert ROUTER.route(chat("auto"), keyed, "cost", frozenset()).mode == "cost"  # type: ignore[arg-type]
        assert ROUTER.route(chat("auto"), claims(), None, frozenset()).mode == "cost"  # type: ignore[arg-type]

    def test_unknown_mode_header_is_a_400_naming_the_header(self) -> None:
        """An unknown X-Routing-Mode is the client's error."""
        with pytest.raises(InvalidRequest) as info:
            ROUTER.route(chat("auto"), claims(), "fastest", frozenset())  # type: ignore[arg-type]
        assert info.value.param == "X-Routing-Mode"


class TestLatencyView:
    def test_a_failing_model_never_looks_fast(self) -> None:
        """Health reports: a model over the error-rate limit is dropped from the view."""
        from gatekeeper.health import latency_view

        reports = [
            {
                "fast-but-failing": {"count": 10, "errors": 6, "p99_ms": 5.0},
                "steady": {"count": 10, "errors": 0, "p99_ms": 80.0},
            },
            {"steady": {"count": 4, "errors": 0, "p99_ms": 120.0}},
        ]
        view = latency_view(reports, max_error_rate=0.25)
        assert view == {"steady": 0.12}


class TestSameProviderRetries:
    """``failover.same_provider_retries``: how often a request with nowhere else to go
    tries its one provider again (the config reaches the plan)."""

    @pytest.mark.parametrize("retries", [0, 1, 3])
    def test_a_key_allowed_one_model_gets_that_many_retries(self, retries: int) -> None:
        router = LiveRouter(
            MATRIX,
            ("p1", "p2", "p3"),
            default_mode="cost",
            quality_threshold=0.5,
            same_provider_retries=retries,
        )
        decision = router.route(chat("mid"), claims(("mid",)), None, frozenset())  # type: ignore[arg-type]
        assert [m.name for m in decision.plan] == ["mid"] * (1 + retries)

    def test_with_another_provider_there_is_no_retry_of_the_first(self) -> None:
        router = LiveRouter(
            MATRIX, ("p1", "p2", "p3"), default_mode="cost", quality_threshold=0.5,
            same_provider_retries=3,
        )  # fmt: skip
        decision = router.route(chat("cheap"), claims(("cheap", "mid")), None, frozenset())  # type: ignore[arg-type]
        assert [m.name for m in decision.plan] == ["cheap", "mid"]

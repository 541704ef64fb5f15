"""The route choice: which model serves a request, and which ones to fail over to.

``choose()`` is pure: it takes the matrix, the request's complexity and needs, the
recent p99 time-to-first-token per model and the providers whose circuit breakers
are open, and returns a ``Route``. No I/O, no clock, no randomness.

For ``model: "auto"`` the request asks for a quality of at least::

    required = threshold + (1 - threshold) * complexity.score

so the threshold (per API key, default ``DEFAULT_QUALITY_THRESHOLD``) is the bar for
the simplest request and harder requests raise it towards 1.0. Then, among the
models that fit the context window and offer the needed capabilities:

- cost        the cheapest (input + output price per 1K) model meeting the bar
- latency     the model meeting the bar with the lowest p99 TTFT (unknown health
              ranks after known; ties go to the cheaper model)
- capability  the highest quality for the task class (ties go to the cheaper model)

If no model meets the bar, the highest-quality eligible model is used and the reason
says so. Models on a provider whose breaker is open are skipped while any other
eligible model remains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from gatekeeper.errors import InvalidRequest, ModelNotFound, PermissionDenied
from gatekeeper.routing.matrix import Matrix, ModelKind, ModelSpec
from gatekeeper.routing.scorer import Complexity, content_text

RoutingMode = Literal["cost", "latency", "capability"]
ROUTING_MODES: tuple[RoutingMode, ...] = ("cost", "latency", "capability")
_MODES: Mapping[str, RoutingMode] = {mode: mode for mode in ROUTING_MODES}
AUTO = "auto"
ROUTING_MODE_HEADER = "X-Routing-Mode"

# The quality a model must reach on the simplest request (complexity 0). 0.6 keeps
# greetings and small lookups on Llama 3.1 8B (quality 0.85 for "simple") while a
# drafting task such as "Write a legal contract" (complexity 0.70) asks for 0.88,
# which only Claude 3.5 Sonnet reaches in the default matrix. Configurable per key.
DEFAULT_QUALITY_THRESHOLD = 0.6

MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per message
REPLY_PRIMING_TOKENS = 3  # the assistant turn every reply starts with
IMAGE_TOKENS = 765  # a 1024x1024 image at high detail, OpenAI's accounting

_NO_HEALTH: Mapping[str, float] = MappingProxyType({})
_UNKNOWN = float("inf")  # p99 of a model with no health data: ranks after every known one
_NEEDS = ("tools", "vision", "json")
_CAPABILITY_PARAM = {"tools": "tools", "vision": "messages", "json": "response_format"}


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a request needs from a model. ``max_tokens`` 0 means not given."""

    prompt_tokens: int = 0
    max_tokens: int = 0
    needs_tools: bool = False
    needs_vision: bool = False
    needs_json: bool = False
    kind: ModelKind = "chat"

    @classmethod
    def of_chat(
        cls,
        messages: Sequence[Mapping[str, object]],
        *,
        max_tokens: int | None = None,
        tools: bool = False,
        json: bool = False,
    ) -> Requirements:
        """Requirements of a chat request: estimated prompt size, images, tools, JSON."""
        return cls(
            prompt_tokens=estimate_tokens(messages),
            max_tokens=max_tokens or 0,
            needs_tools=tools,
            needs_vision=has_images(messages),
            needs_json=json,
        )

    def capabilities(self) -> frozenset[str]:
        """The capabilities a model must offer."""
        return _WANTED[self.needs_tools, self.needs_vision, self.needs_json]

    def fits(self, spec: ModelSpec) -> bool:
        """Whether ``spec`` holds the prompt plus the requested completion."""
        if self.max_tokens > spec.max_output_tokens > 0:
            return False
        return self.prompt_tokens + self.max_tokens <= spec.context_window


NO_REQUIREMENTS = Requirements()
_WANTED: dict[tuple[bool, bool, bool], frozenset[str]] = {
    (t, v, j): frozenset(name for name, on in zip(_NEEDS, (t, v, j), strict=True) if on)
    for t in (False, True)
    for v in (False, True)
    for j in (False, True)
}


@dataclass(frozen=True, slots=True)
class Route:
    """A routing decision: the model, the failover order, and why."""

    model: ModelSpec
    mode: RoutingMode
    complexity: Complexity
    candidates: tuple[str, ...]  # every model considered, best first
    fallbacks: tuple[ModelSpec, ...]  # the others in ``candidates``, for failover
    reason: str  # short ASCII, fit for a response header
    required_quality: float = 0.0
    below_threshold: bool = False  # no eligible model reached ``required_quality``


def choose(
    matrix: Matrix,
    *,
    requested_model: str,
    mode: RoutingMode,
    complexity: Complexity,
    quality_threshold: float = DEFAULT_QUALITY_THRESHOLD,
    needs: Requirements = NO_REQUIREMENTS,
    health: Mapping[str, float] = _NO_HEALTH,
    open_breakers: frozenset[str] = frozenset(),
) -> Route:
    """Pick the model for a request; see the module docstring for the rules."""
    if mode not in _MODES:
        raise ValueError(f"unknown routing mode {mode!r}")
    if not 0.0 <= quality_threshold <= 1.0:
        raise ValueError("quality_threshold must be between 0 and 1")
    if requested_model != AUTO:
        return _requested(matrix, requested_model, mode, complexity, needs)
    eligible = _eligible(matrix, needs)
    usable, skipped = eligible, tuple[str, ...]()
    if open_breakers:
        usable = [spec for spec in eligible if spec.provider not in open_breakers]
        skipped = tuple(sorted({spec.provider for spec in eligible} & open_breakers))
        usable = usable or eligible
    bar = required_quality(quality_threshold, complexity)
    ranked, met = _rank(usable, mode, complexity.task, bar, health)
    reason = _reason(ranked[0], mode, complexity, bar, met, health)
    if skipped:
        opened = "all open" if usable is eligible else "skipped"
        reason += f"; breaker {opened}: {','.join(skipped)}"
    return Route(
        model=ranked[0],
        mode=mode,
        complexity=complexity,
        candidates=tuple(spec.name for spec in ranked),
        fallbacks=tuple(ranked[1:]),
        reason=_ascii(reason),
        required_quality=bar,
        below_threshold=not met,
    )


def required_quality(threshold: float, complexity: Complexity) -> float:
    """The quality bar for a request: the threshold raised by its complexity."""
    return round(threshold + (1.0 - threshold) * complexity.score, 3)


def parse_mode(
    header_value: str | None,
    claim_mode: str | None,
    default: str,
    allow_header: bool = True,
) -> RoutingMode:
    """The routing mode: the X-Routing-Mode header, else the key's claim, else default.

    With ``allow_header=False`` (the key's ``routing.allow_override: false``) a header
    asking for any other mode than the key's is refused (403).
    """
    if not allow_header and header_value is not None and header_value.strip():
        fixed = parse_mode(None, claim_mode, default)
        if parse_mode(header_value, None, default) != fixed:
            raise PermissionDenied(
                f"This API key may not override its routing mode ({fixed}) "
                f"with the {ROUTING_MODE_HEADER} header",
                param=ROUTING_MODE_HEADER,
                code="routing_override_forbidden",
            )
        return fixed
    for value, param in ((header_value, ROUTING_MODE_HEADER), (claim_mode, None)):
        if value is None or not value.strip():
            continue
        mode = _MODES.get(value.strip().lower())
        if mode is None:
            source = f"{ROUTING_MODE_HEADER} header" if param else "API key's routing mode"
            raise InvalidRequest(
                f"Invalid {source} {value.strip()[:40]!r}; expected one of "
                f"{', '.join(ROUTING_MODES)}.",
                param=param,
                code="invalid_routing_mode",
            )
        return mode
    mode = _MODES.get(default.strip().lower())
    if mode is None:
        raise ValueError(f"unknown default routing mode {default!r}")
    return mode


def estimate_tokens(messages: Sequence[Mapping[str, object]]) -> int:
    """A cheap prompt-size estimate: characters / 4 plus per-message overhead."""
    chars = 0
    images = 0
    for message in messages:
        content = message.get("content")
        chars += len(content_text(content))
        if isinstance(content, list):
            images += sum(1 for part in content if _is_image(part))
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            chars += sum(len(str(call)) for call in calls)
    overhead = REPLY_PRIMING_TOKENS + MESSAGE_OVERHEAD_TOKENS * len(messages)
    return overhead + (chars + 3) // 4 + IMAGE_TOKENS * images


def has_images(messages: Sequence[Mapping[str, object]]) -> bool:
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(_is_image(part) for part in content):
            return True
    return False


def _is_image(part: object) -> bool:
    return isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image")


def _requested(
    matrix: Matrix, name: str, mode: RoutingMode, complexity: Complexity, needs: Requirements
) -> Route:
    spec = matrix.get(name)
    if spec is None:
        raise ModelNotFound(
            f"The model '{_ascii(name[:100])}' does not exist or you do not have access to it.",
            param="model",
        )
    if spec.kind != needs.kind:
        raise InvalidRequest(
            f"The model '{name}' serves {spec.kind} requests, not {needs.kind} requests.",
            param="model",
            code="model_not_supported",
        )
    for capability in _NEEDS:
        if capability in needs.capabilities() and not spec.supports(capability):
            raise InvalidRequest(
                f"The model '{name}' does not support {capability}.",
                param=_CAPABILITY_PARAM[capability],
                code="unsupported_parameter",
            )
    return Route(spec, mode, complexity, (spec.name,), (), _ascii(f"requested model {name}"))


def peers(
    matrix: Matrix, task: str, needs: Requirements, open_breakers: frozenset[str]
) -> tuple[ModelSpec, ...]:
    """The failover order for a named model: what ``choose(mode="capability")`` ranks
    (highest ``task`` quality first, ties cheaper; open breakers last resort), without
    building its reason. Empty if no model fits."""
    eligible = _fitting(matrix.of_kind(needs.kind), needs)
    if open_breakers:
        eligible = [s for s in eligible if s.provider not in open_breakers] or eligible
    if not eligible:
        return ()
    return tuple(_rank(eligible, "capability", task, 0.0, _NO_HEALTH)[0])


def _fitting(specs: Sequence[ModelSpec], needs: Requirements) -> list[ModelSpec]:
    """The models that offer every needed capability and hold the prompt plus completion."""
    wanted = needs.capabilities()
    return [spec for spec in specs if wanted <= spec.capabilities and needs.fits(spec)]


def _eligible(matrix: Matrix, needs: Requirements) -> list[ModelSpec]:
    of_kind = matrix.of_kind(needs.kind)
    wanted = needs.capabilities()
    eligible = _fitting(of_kind, needs)
    if eligible:
        return eligible
    if of_kind and not any(needs.fits(spec) for spec in of_kind):
        raise InvalidRequest(
            f"The request (about {needs.prompt_tokens} prompt tokens plus max_tokens "
            f"{needs.max_tokens}) does not fit any available model's context window.",
            param="messages",
            code="context_length_exceeded",
        )
    listed = ", ".join(sorted(wanted)) or needs.kind
    raise InvalidRequest(
        f"No available model supports everything this request needs ({listed}).",
        param="model",
        code="no_eligible_model",
    )


def _rank(
    models: list[ModelSpec], mode: RoutingMode, task: str, bar: float, health: Mapping[str, float]
) -> tuple[list[ModelSpec], bool]:
    """Models best first, and whether the first meets the bar.

    Models under the bar always rank after those meeting it, best quality first.
    """

    def key(m: ModelSpec) -> tuple[float, float, float, str]:
        quality = m.quality_for(task)
        if mode == "capability" or quality < bar:
            return (1.0, -quality, m.blended_per_1k, m.name)
        if mode == "cost":
            return (0.0, m.blended_per_1k, 0.0, m.name)
        p99 = health.get(m.name, _UNKNOWN)
        if not p99 >= 0:  # NaN and negative readings count as unknown
            p99 = _UNKNOWN
        return (0.0, p99, m.blended_per_1k, m.name)

    ranked = sorted(models, key=key)
    return ranked, mode == "capability" or ranked[0].quality_for(task) >= bar


def _reason(
    spec: ModelSpec,
    mode: RoutingMode,
    complexity: Complexity,
    bar: float,
    met: bool,
    health: Mapping[str, float],
) -> str:
    task = complexity.task
    quality = spec.quality_for(task)
    scored = f"{task} {complexity.level} {complexity.score:.2f}"
    if mode == "capability":
        return f"capability: highest {task} quality {quality:.2f} ({scored})"
    if not met:
        return (
            f"{mode}: no model reaches {task} quality {bar:.2f}; best is {quality:.2f} ({scored})"
        )
    if mode == "cost":
        return f"cost: cheapest with {task} quality >= {bar:.2f} ({scored})"
    p99 = health.get(spec.name, _UNKNOWN)
    known = 0 <= p99 < _UNKNOWN
    fastest = f"fastest p99 TTFT {p99:.3f}s" if known else "no p99 data, cheapest"
    return f"latency: {fastest} with {task} quality >= {bar:.2f} ({scored})"


def _ascii(text: str) -> str:
    """Printable ASCII only, so the reason is safe in a response header."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)

"""The capability matrix: which models exist, what they cost, what they can do.

The ``models:`` list of ``config/gatekeeper.yaml`` holds one entry per public model
name. It is parsed once into frozen ``ModelSpec`` values held by a ``Matrix``; every
error names the YAML path and the reason, e.g. ``models[3].input_per_1k: must be a number >= 0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from gatekeeper.errors import ConfigError
from gatekeeper.routing.scorer import TASK_CLASSES

ModelKind = Literal["chat", "embedding"]
MODEL_KINDS: tuple[ModelKind, ...] = ("chat", "embedding")
CAPABILITIES = frozenset({"tools", "vision", "json", "streaming"})
RESERVED_NAMES = frozenset({"auto"})

_FIELDS = frozenset(
    {
        "name",
        "provider",
        "upstream",
        "kind",
        "input_per_1k",
        "output_per_1k",
        "context_window",
        "max_output_tokens",
        "capabilities",
        "quality",
    }
)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One routable model. Prices are USD per 1K tokens."""

    name: str
    provider: str
    upstream: str
    kind: ModelKind
    input_per_1k: float
    output_per_1k: float
    context_window: int
    max_output_tokens: int
    capabilities: frozenset[str] = frozenset()
    # (task class, 0..1) pairs sorted by class; a class not listed scores 0.0.
    quality: tuple[tuple[str, float], ...] = ()
    _quality_index: Mapping[str, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_quality_index", dict(self.quality))

    @property
    def blended_per_1k(self) -> float:
        """Input plus output price per 1K tokens: the cost mode's ranking key."""
        return self.input_per_1k + self.output_per_1k

    def quality_for(self, task: str) -> float:
        return self._quality_index.get(task, 0.0)

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1k + completion_tokens * self.output_per_1k) / 1000


@dataclass(frozen=True, slots=True)
class Matrix:
    """The models by public name, in configuration order."""

    models: tuple[ModelSpec, ...]
    _by_name: Mapping[str, ModelSpec] = field(init=False, repr=False, compare=False)
    _by_kind: Mapping[str, tuple[ModelSpec, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, ModelSpec] = {}
        for spec in self.models:
            if spec.name in by_name:
                raise ConfigError(f"models: duplicate model name {spec.name!r}")
            by_name[spec.name] = spec
        by_kind = {kind: tuple(m for m in self.models if m.kind == kind) for kind in MODEL_KINDS}
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_kind", by_kind)

    @classmethod
    def of(cls, models: Iterable[ModelSpec]) -> Matrix:
        return cls(tuple(models))

    def get(self, name: str) -> ModelSpec | None:
        return self._by_name.get(name)

    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.models)

    def of_kind(self, kind: str) -> tuple[ModelSpec, ...]:
        return self._by_kind.get(kind, ())

    def __getitem__(self, name: str) -> ModelSpec:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)


def load_matrix(path: str | Path) -> Matrix:
    """Read a models YAML file (a top-level ``models:`` list) into a ``Matrix``."""
    with open(path, encoding="utf-8") as fh:
        return parse_matrix(yaml.safe_load(fh))


def parse_matrix(document: object) -> Matrix:
    """A ``Matrix`` from a parsed YAML document with a top-level ``models:`` list."""
    if not isinstance(document, Mapping) or "models" not in document:
        raise ConfigError("models: missing (expected a top-level 'models:' list)")
    return Matrix(parse_models(document["models"], "models"))


def parse_models(data: object, path: str = "models") -> tuple[ModelSpec, ...]:
    """Validate a list of model mappings; errors name the path and the reason."""
    if not isinstance(data, list):
        raise ConfigError(f"{path}: must be a list of models")
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for index, item in enumerate(data):
        spec = _parse_model(item, f"{path}[{index}]")
        if spec.name in seen:
            raise ConfigError(f"{path}[{index}].name: duplicate model name {spec.name!r}")
        seen.add(spec.name)
        specs.append(spec)
    return tuple(specs)


def _parse_model(item: object, path: str) -> ModelSpec:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{path}: must be a mapping")
    unknown = sorted(str(key) for key in item if key not in _FIELDS)
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown field")
    name = _text(item, "name", path)
    if name in RESERVED_NAMES:
        raise ConfigError(f"{path}.name: {name!r} is reserved for automatic routing")
    kind = item.get("kind", "chat")
    if kind not in MODEL_KINDS:
        raise ConfigError(f"{path}.kind: must be one of {', '.join(MODEL_KINDS)}")
    return ModelSpec(
        name=name,
        provider=_text(item, "provider", path),
        upstream=_text(item, "upstream", path) if "upstream" in item else name,
        kind=kind,
        input_per_1k=_price(item, "input_per_1k", path),
        output_per_1k=_price(item, "output_per_1k", path),
        context_window=_count(item, "context_window", path, minimum=1),
        max_output_tokens=_count(item, "max_output_tokens", path, minimum=0),
        capabilities=_capabilities(item.get("capabilities", []), f"{path}.capabilities"),
        quality=_quality(item.get("quality", {}), f"{path}.quality"),
    )


def _text(item: Mapping[object, object], key: str, path: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}.{key}: must be a non-empty string")
    return value.strip()


def _price(item: Mapping[object, object], key: str, path: str) -> float:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{path}.{key}: must be a number >= 0")
    return float(value)


def _count(item: Mapping[object, object], key: str, path: str, *, minimum: int) -> int:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{path}.{key}: must be an integer >= {minimum}")
    return value


def _capabilities(value: object, path: str) -> frozenset[str]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: must be a list")
    for index, capability in enumerate(value):
        if capability not in CAPABILITIES:
            expected = ", ".join(sorted(CAPABILITIES))
            raise ConfigError(f"{path}[{index}]: unknown capability (expected one of {expected})")
    return frozenset(value)


def _quality(value: object, path: str) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: must be a mapping of task class to 0..1")
    pairs: list[tuple[str, float]] = []
    for task, score in value.items():
        if task not in TASK_CLASSES:
            expected = ", ".join(TASK_CLASSES)
            raise ConfigError(f"{path}.{task}: unknown task class (expected one of {expected})")
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
            raise ConfigError(f"{path}.{task}: must be a number between 0 and 1")
        pairs.append((task, float(score)))
    return tuple(sorted(pairs))


def model_dict(spec: ModelSpec) -> dict[str, object]:
    """The YAML/JSON form of a model (what ``parse_models`` reads back)."""
    return {
        "name": spec.name,
        "provider": spec.provider,
        "upstream": spec.upstream,
        "kind": spec.kind,
        "input_per_1k": spec.input_per_1k,
        "output_per_1k": spec.output_per_1k,
        "context_window": spec.context_window,
        "max_output_tokens": spec.max_output_tokens,
        "capabilities": sorted(spec.capabilities),
        "quality": dict(spec.quality),
    }

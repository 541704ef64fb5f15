"""Config for the extra ingresses: model aliases and the Responses store (pure parsing)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gatekeeper.errors import ConfigError
from gatekeeper.yamlread import Section


@dataclass(frozen=True, slots=True)
class ResponsesConfig:
    """``responses:``: how long a stored response (``store: true``) is kept, and its cap."""

    store_ttl_s: float = 30 * 24 * 3600.0
    max_stored_bytes: int = 1024 * 1024  # a bigger response is answered but not stored


_DEFAULT = ResponsesConfig()


def parse_aliases(data: object, path: str = "aliases") -> tuple[tuple[str, str], ...]:
    """``aliases: {client-name: matrix-model}`` as sorted pairs; both sides non-empty text."""
    if data is None:
        return ()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: must be a mapping of model name to model name")
    out: list[tuple[str, str]] = []
    for key, value in data.items():
        if not isinstance(key, str) or not key or not isinstance(value, str) or not value:
            raise ConfigError(f"{path}.{key}: alias and target must be non-empty strings")
        out.append((key, value))
    return tuple(sorted(out))


def parse_responses(data: object) -> ResponsesConfig:
    s = Section(data, "responses")
    s.unknown({"store_ttl_s", "max_stored_bytes"})
    return ResponsesConfig(
        store_ttl_s=s.number("store_ttl_s", _DEFAULT.store_ttl_s),
        max_stored_bytes=s.integer("max_stored_bytes", _DEFAULT.max_stored_bytes, minimum=1024),
    )

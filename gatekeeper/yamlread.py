"""Reading a YAML tree into typed values, naming the YAML path in every error (pure).

``${VAR}`` and ``${VAR:-default}`` inside strings are replaced from the environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from gatekeeper.errors import ConfigError

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree."""
    if isinstance(value, str):
        # Like the shell's ${VAR:-default}: the default also applies to an empty VAR.
        return _ENV_RE.sub(lambda m: env.get(m.group(1)) or m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def _numeric(value: Any, kind: type[int] | type[float]) -> Any:
    """``${PORT:-8080}`` interpolates to a string: accept numeric strings."""
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            return value
    return value


class Section:
    """Reads typed fields from one mapping, naming the YAML path in every error."""

    def __init__(self, data: object, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a mapping")
        self.data: dict[str, Any] = data
        self.path = path

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def unknown(self, known: set[str]) -> None:
        extra = sorted(set(self.data) - known)
        if extra:
            raise ConfigError(f"{self._where(extra[0])}: unknown key")

    def text(self, key: str, default: str, *, required: bool = False) -> str:
        v = self.data.get(key, None)
        if v is None:
            if required:
                raise ConfigError(f"{self._where(key)}: required")
            return default
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            raise ConfigError(f"{self._where(key)}: must be a string")
        return str(v)

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        v = _numeric(self.data.get(key, default), int)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{self._where(key)}: must be an integer >= {minimum}")
        return v

    def number(self, key: str, default: float, *, positive: bool = True) -> float:
        v = _numeric(self.data.get(key, default), float)
        if isinstance(v, bool) or not isinstance(v, int | float) or (positive and v <= 0):
            raise ConfigError(f"{self._where(key)}: must be a number > 0")
        return float(v)

    def flag(self, key: str, default: bool) -> bool:
        v = self.data.get(key, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{self._where(key)}: must be true or false")
        return v

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        v = self.text(key, default)
        if v not in choices:
            raise ConfigError(f"{self._where(key)}: must be one of {', '.join(choices)}")
        return v


def check_url(value: str, path: str, schemes: tuple[str, ...]) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in schemes or not parsed.netloc:
        raise ConfigError(f"{path}: not a URL ({'/'.join(schemes)}://host[:port]/...)")
    return value.rstrip("/")


def as_list(data: object, path: str) -> list[Any]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(f"{path}: must be a list")
    return data

"""``capacity:`` in the config: the node's upstream concurrency, its lanes, tenant reservations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gatekeeper.auth.claims import PRIORITIES
from gatekeeper.errors import ConfigError
from gatekeeper.yamlread import Section

__all__ = ["LANES", "CapacityConfig", "LaneConfig", "LearnConfig", "parse_capacity"]

LANES = PRIORITIES  # highest first: critical, standard, batch


@dataclass(frozen=True, slots=True)
class LaneConfig:
    queue: int = 256  # waiters this lane may hold; one more is shed (429)
    max_wait_s: float = 30.0  # longest wait in the queue (also bounded by the request timeout)


@dataclass(frozen=True, slots=True)
class LearnConfig:
    """``capacity.learn``: the provider limits learned from 429s and latency (AIMD)."""

    enabled: bool = False  # each ``providers`` limit is then a ceiling, learned below it
    min_in_flight: int = 1  # the lowest a learned limit goes
    backoff: float = 0.5  # the factor an overload signal multiplies the limit by
    latency_s: float = 0.0  # > 0: an answer slower than this to its first byte is a signal too


@dataclass(frozen=True, slots=True)
class CapacityConfig:
    max_in_flight: int = 0  # upstream calls this node runs at once; 0: lanes off (no work at all)
    default_priority: str = "standard"  # for keys without a ``priority`` claim
    lanes: Mapping[str, LaneConfig] = field(
        default_factory=lambda: {n: LaneConfig() for n in LANES}
    )
    max_queued: int = 512  # waiters over all lanes; past it a higher lane evicts the lowest
    reserved: Mapping[str, int] = field(default_factory=dict)  # tenant -> slots only it may use
    max_skips: int = 8  # anti-starvation: a lane below critical passed over this often goes next
    retry_after_s: float = 1.0  # the retry-after of a shed request
    providers: Mapping[str, int] = field(default_factory=dict)  # provider -> its max_in_flight
    models: Mapping[str, int] = field(default_factory=dict)  # routed model -> its max_in_flight
    learn: LearnConfig = field(default_factory=LearnConfig)  # learned provider limits
    # provider -> {tenant -> slots of that provider's limit only that tenant may use}
    provider_reserved: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.max_in_flight > 0


_DEFAULT = CapacityConfig()
_LANE = LaneConfig()
_LEARN = LearnConfig()


def _learn(data: object, providers: Mapping[str, int]) -> LearnConfig:
    s = Section(data, "capacity.learn")
    s.unknown({"enabled", "min_in_flight", "backoff", "latency_s"})
    learn = LearnConfig(
        enabled=s.flag("enabled", _LEARN.enabled),
        min_in_flight=s.integer("min_in_flight", _LEARN.min_in_flight, minimum=1),
        backoff=s.number("backoff", _LEARN.backoff),
        latency_s=s.number("latency_s", _LEARN.latency_s, positive=False),
    )
    if learn.latency_s < 0:
        raise ConfigError("capacity.learn.latency_s: must be a number >= 0 (0: off)")
    if not 0 < learn.backoff < 1:
        raise ConfigError("capacity.learn.backoff: a factor between 0 and 1 (exclusive)")
    if learn.enabled and not providers:
        raise ConfigError(
            "capacity.learn: needs capacity.providers (each provider's ceiling to learn below)"
        )
    low = sorted(name for name, n in providers.items() if n < learn.min_in_flight)
    if learn.enabled and low:
        raise ConfigError(
            f"capacity.learn.min_in_flight ({learn.min_in_flight}) is above the limit of "
            f"capacity.providers {', '.join(low)}"
        )
    return learn


def _lane(data: object, path: str) -> LaneConfig:
    s = Section(data, path)
    s.unknown({"queue", "max_wait_s"})
    return LaneConfig(
        queue=s.integer("queue", _LANE.queue),
        max_wait_s=s.number("max_wait_s", _LANE.max_wait_s),
    )


def _limits(data: object, key: str, what: str, node_limit: int) -> dict[str, int]:
    """``capacity.providers`` / ``capacity.models``: name -> its own max_in_flight."""
    if data is None or data == {}:
        return {}
    if not isinstance(data, dict) or not all(
        isinstance(name, str) and name and type(n) is int and n > 0 for name, n in data.items()
    ):
        raise ConfigError(f"capacity.{key}: a mapping of {what} name to max_in_flight >= 1")
    if node_limit <= 0:
        raise ConfigError(f"capacity.{key}: needs capacity.max_in_flight (the node's limit)")
    return dict(data)


def _reserved(data: object, path: str, limit: int, limit_name: str) -> dict[str, int]:
    """``{tenant: slots}``, each >= 1, all of them together within ``limit``."""
    data = data or {}
    if not isinstance(data, dict) or not all(
        isinstance(t, str) and t and type(n) is int and n > 0 for t, n in data.items()
    ):
        raise ConfigError(f"{path}: a mapping of tenant name to a slot count >= 1")
    if sum(data.values()) > limit:
        raise ConfigError(
            f"{path}: {sum(data.values())} slots reserved, more than {limit_name} ({limit})"
        )
    return dict(data)


def _provider_reserved(
    data: object, providers: Mapping[str, int], learn: LearnConfig
) -> dict[str, dict[str, int]]:
    """``capacity.provider_reserved``: per provider with a limit, tenant -> its slots.

    With learned limits a provider's limit may fall to ``learn.min_in_flight``, so the
    reservations must fit under that floor for the guarantee to hold at any limit."""
    if data is None or data == {}:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("capacity.provider_reserved: a mapping of provider name to reservations")
    out: dict[str, dict[str, int]] = {}
    for name, tenants in data.items():
        path = f"capacity.provider_reserved.{name}"
        if name not in providers:
            raise ConfigError(f"{path}: the provider has no limit in capacity.providers")
        limit, what = providers[name], f"capacity.providers.{name}"
        if learn.enabled:
            limit, what = min(limit, learn.min_in_flight), "capacity.learn.min_in_flight"
        out[name] = _reserved(tenants, path, limit, what)
    return out


def parse_capacity(data: object) -> CapacityConfig:
    s = Section(data, "capacity")
    s.unknown(
        {
            "max_in_flight",
            "default_priority",
            "lanes",
            "max_queued",
            "reserved",
            "max_skips",
            "retry_after_s",
            "providers",
            "models",
            "learn",
            "provider_reserved",
        }
    )
    lanes_data = s.data.get("lanes") or {}
    if not isinstance(lanes_data, dict) or not set(lanes_data) <= set(LANES):
        raise ConfigError(f"capacity.lanes: a mapping with keys among {', '.join(LANES)}")
    lanes = {n: _lane(lanes_data.get(n), f"capacity.lanes.{n}") for n in LANES}
    limit = s.integer("max_in_flight", 0)
    reserved_data = _reserved(
        s.data.get("reserved"), "capacity.reserved", limit, "capacity.max_in_flight"
    )
    providers = _limits(s.data.get("providers"), "providers", "provider", limit)
    models = _limits(s.data.get("models"), "models", "model", limit)
    learn = _learn(s.data.get("learn"), providers)
    return CapacityConfig(
        max_in_flight=limit,
        providers=providers,
        models=models,
        learn=learn,
        provider_reserved=_provider_reserved(s.data.get("provider_reserved"), providers, learn),
        default_priority=s.choice("default_priority", "standard", LANES),
        lanes=lanes,
        max_queued=s.integer("max_queued", _DEFAULT.max_queued, minimum=1),
        reserved=reserved_data,
        max_skips=s.integer("max_skips", _DEFAULT.max_skips, minimum=1),
        retry_after_s=s.number("retry_after_s", _DEFAULT.retry_after_s),
    )

"""``capacity:`` in the config: the node's upstream concurrency, its lanes, tenant reservations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gatekeeper.auth.claims import PRIORITIES
from gatekeeper.errors import ConfigError
from gatekeeper.yamlread import Section

__all__ = ["LANES", "CapacityConfig", "LaneConfig", "parse_capacity"]

LANES = PRIORITIES  # highest first: critical, standard, batch


@dataclass(frozen=True, slots=True)
class LaneConfig:
    queue: int = 256  # waiters this lane may hold; one more is shed (429)
    max_wait_s: float = 30.0  # longest wait in the queue (also bounded by the request timeout)


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

    @property
    def enabled(self) -> bool:
        return self.max_in_flight > 0


_DEFAULT = CapacityConfig()
_LANE = LaneConfig()


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
        }
    )
    lanes_data = s.data.get("lanes") or {}
    if not isinstance(lanes_data, dict) or not set(lanes_data) <= set(LANES):
        raise ConfigError(f"capacity.lanes: a mapping with keys among {', '.join(LANES)}")
    lanes = {n: _lane(lanes_data.get(n), f"capacity.lanes.{n}") for n in LANES}
    limit = s.integer("max_in_flight", 0)
    reserved_data = s.data.get("reserved") or {}
    if not isinstance(reserved_data, dict) or not all(
        isinstance(t, str) and t and type(n) is int and n > 0 for t, n in reserved_data.items()
    ):
        raise ConfigError("capacity.reserved: a mapping of tenant name to a slot count >= 1")
    if sum(reserved_data.values()) > limit:
        raise ConfigError(
            f"capacity.reserved: {sum(reserved_data.values())} slots reserved, more than "
            f"capacity.max_in_flight ({limit})"
        )
    providers = _limits(s.data.get("providers"), "providers", "provider", limit)
    models = _limits(s.data.get("models"), "models", "model", limit)
    return CapacityConfig(
        max_in_flight=limit,
        providers=providers,
        models=models,
        default_priority=s.choice("default_priority", "standard", LANES),
        lanes=lanes,
        max_queued=s.integer("max_queued", _DEFAULT.max_queued, minimum=1),
        reserved=dict(reserved_data),
        max_skips=s.integer("max_skips", _DEFAULT.max_skips, minimum=1),
        retry_after_s=s.number("retry_after_s", _DEFAULT.retry_after_s),
    )

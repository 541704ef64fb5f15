"""One upstream provider's typed settings (``providers:`` in the YAML; parsed by
``gatekeeper.config``), kept beside the adapters that use them."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ProviderConfig", "Timeouts"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 5.0
    first_byte_s: float = 60.0
    total_s: float = 600.0
    stall_s: float = 30.0  # the longest silence inside a stream, after its first chunk


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: str
    base_url: str = ""
    api_key: str = ""
    api_key_required: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    pool_size: int = 256
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def enabled(self) -> bool:
        """A provider is usable when it is the demo, or its key is set (or not needed)."""
        return self.kind == "demo" or bool(self.api_key) or not self.api_key_required

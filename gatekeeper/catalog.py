"""Which public models this node serves, and through which providers (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from gatekeeper.config import Config
from gatekeeper.providers.demo import DEMO_LABEL, DEMO_PROVIDER, demo_models
from gatekeeper.routing.matrix import ModelSpec


def demo_enabled(config: Config) -> bool:
    """The demo provider runs when asked to, or (``auto``) when no real provider is usable."""
    if config.demo == "on":
        return True
    if config.demo == "off":
        return False
    return not any(p.kind != "demo" and p.enabled for p in config.providers)


@dataclass(frozen=True, slots=True)
class Catalog:
    models: tuple[ModelSpec, ...]  # served (provider enabled)
    unavailable: tuple[tuple[str, str], ...]  # (model, why) for configured-but-disabled
    chain: tuple[str, ...]  # provider names in failover order
    demo: bool

    @staticmethod
    def build(config: Config) -> Catalog:
        enabled = {p.name for p in config.enabled_providers}
        demo = demo_enabled(config)
        served = [m for m in config.models if m.provider in enabled]
        missing = []
        for m in config.models:
            if m.provider not in enabled:
                p = config.provider(m.provider)
                hint = f"provider {m.provider!r} has no API key configured" if p else "no provider"
                missing.append((m.name, hint))
        if demo:
            served.extend(demo_models())
        chain = [s.provider for s in config.failover_chain]
        chain += [p.name for p in config.providers if p.name not in chain]
        if demo and DEMO_PROVIDER not in chain:
            chain.append(DEMO_PROVIDER)
        return Catalog(tuple(served), tuple(missing), tuple(chain), demo)


def model_entry(m: ModelSpec, created: int) -> dict[str, object]:
    owner = DEMO_LABEL if m.provider == DEMO_PROVIDER else m.provider
    return {"id": m.name, "object": "model", "created": created, "owned_by": owner}

"""The node keys an auditor checks records with: the pinned registry in BH_CONFIG.

Node keys are registered once per key in ``nodes.<node>.key.<n>`` (``kv.create``,
operator-signed; a rotation signed by the old key; see
``gatekeeper.control.registry``). ``RegistryKeys.key_at(node, t)`` is the key the
node had at ``t``, so a legitimate key change keeps the genuine trail valid and a
key written later cannot vouch for older records.

A deployment without a registry entry for a node falls back to the unpinned
``nodes.<node>.audit_key`` (what older nodes published) only when no operator key
is trusted at all; ``unpinned`` names those nodes so the CLI can warn.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nacl.signing import VerifyKey
from nats.errors import Error as NatsError

from gatekeeper.auth.paserk import KeyFormatError, decode_public, pid
from gatekeeper.bus.kv_snapshot import kv_snapshot
from gatekeeper.control.envelope import ControlValueRejected
from gatekeeper.control.registry import NodeKeyRegistry

__all__ = ["RegistryKeys", "dev_operator_public", "load_registry_keys", "operator_keys"]

DEV_OPERATOR_FILE = Path("keys") / "operator.key"


class RegistryKeys:
    """``key_at`` from the registry; legacy unpinned keys only for nodes it lacks."""

    def __init__(self, registry: NodeKeyRegistry, legacy: Mapping[str, bytes]) -> None:
        self.registry = registry
        self.legacy = {node: VerifyKey(key) for node, key in legacy.items()}
        self.rejected: list[tuple[str, ControlValueRejected]] = []

    def key_at(self, node: str, t: float) -> VerifyKey | None:
        if node in self.registry.nodes():
            return self.registry.key_at(node, t)
        return self.legacy.get(node)

    @property
    def unpinned(self) -> frozenset[str]:
        return frozenset(self.legacy) - self.registry.nodes()


def operator_keys(texts: Iterable[str]) -> dict[str, VerifyKey]:
    """``k4.pid`` -> key of each trusted operator public key (``k4.public`` text)."""
    out = {}
    for text in texts:
        raw = decode_public(text)
        out[pid(raw)] = VerifyKey(raw)
    return out


def dev_operator_public(state_dir: str) -> str | None:
    """The public half of a dev operator key (``<state_dir>/keys/operator.key``), if any."""
    from gatekeeper.auth.node_key import NodeKeyError, load_or_create_node_key, node_public_key_text

    path = Path(state_dir) / DEV_OPERATOR_FILE
    if not path.exists():
        return None
    try:
        return node_public_key_text(load_or_create_node_key(path))
    except (NodeKeyError, OSError):
        return None


async def _entries(kv: Any, pattern: str) -> list[tuple[str, bytes]]:
    return [(item.key, item.value) for item in await kv_snapshot(kv, pattern)]


async def load_registry_keys(
    kv: Any, operators: Mapping[str, VerifyKey], nodes: Iterable[str]
) -> RegistryKeys:
    """The registry from BH_CONFIG (every entry checked), plus legacy keys if allowed."""
    registry = NodeKeyRegistry(operators)
    rejected = registry.add_all(await _entries(kv, "nodes.*.key.*")) if operators else []
    legacy: dict[str, bytes] = {}
    if not operators:
        for node in sorted(set(nodes)):
            with contextlib.suppress(NatsError, KeyFormatError, UnicodeDecodeError):
                entry = await kv.get(f"nodes.{node}.audit_key")
                legacy[node] = decode_public((entry.value or b"").decode())
    keys = RegistryKeys(registry, legacy)
    keys.rejected = rejected
    return keys

"""The node key registry in BH_CONFIG: load it, register this node, follow rotations.

At start a node reads every ``nodes.*.key.*`` entry (history included: a bare
delete hides nothing) into a ``NodeKeyRegistry``. If its own key is not the
node's current entry, it registers itself (next ``n``, ``kv.create``) when an
operator secret key is available locally, and otherwise refuses to start with a
message naming ``gatekeeper nodes register``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from nacl.signing import SigningKey, VerifyKey
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from gatekeeper.auth.keyfiles import KeyFileError
from gatekeeper.auth.paserk import encode_public, pid
from gatekeeper.bus.kv_snapshot import kv_snapshot
from gatekeeper.config import ControlConfig
from gatekeeper.control.envelope import ControlValueRejected, seal
from gatekeeper.control.operator import load_operator_key, trusted_operators
from gatekeeper.control.registry import (
    NodeKeyEntry,
    NodeKeyRegistry,
    node_key_kv_key,
    registration_body,
)
from gatekeeper.errors import ConfigError

__all__ = [
    "ControlPlane",
    "NodeNotRegistered",
    "bootstrap",
    "ensure_registered",
    "load_registry",
    "registration_value",
]

log = structlog.get_logger("gatekeeper.node_keys")

REGISTRATION_REREADS = 10
REGISTRATION_REREAD_S = 0.3


class NodeNotRegistered(ConfigError):
    """This node's key is not in the registry and no operator key is here to add it."""


async def load_registry(kv: KeyValue, operators: Mapping[str, VerifyKey]) -> NodeKeyRegistry:
    """Every registration in BH_CONFIG, checked; refused entries are logged."""
    registry = NodeKeyRegistry(operators)
    await _read_into(kv, registry)
    return registry


async def _read_into(kv: KeyValue, registry: NodeKeyRegistry) -> None:
    snapshot = await kv_snapshot(kv, "nodes.*.key.*", history=True)
    items = [(item.key, item.value) for item in snapshot if item.value]
    for key, exc in registry.add_all(items):  # in stream order: the first genuine one wins
        log.warning("node_keys.rejected", key=key, reason=exc.reason)


def registration_value(
    signer: SigningKey, registry: NodeKeyRegistry, node: str, public: VerifyKey, now: float
) -> tuple[str, bytes]:
    """The next entry for ``node`` with ``public``, signed by ``signer`` (pure)."""
    last = registry.current_entry(node)
    n = 1 if last is None else last.n + 1
    valid_from = now if last is None else max(now, last.valid_from + 0.001)
    key = node_key_kv_key(node, n)
    body = registration_body(node, n, encode_public(bytes(public)), valid_from)
    return key, seal(signer, key, body, now)


async def ensure_registered(
    kv: KeyValue,
    registry: NodeKeyRegistry,
    node: str,
    node_key: SigningKey,
    operator: SigningKey | None,
) -> NodeKeyEntry:
    """This node's current registry entry, registering it first if need be."""
    kid = pid(bytes(node_key.verify_key))
    rereads = REGISTRATION_REREADS
    for _ in range(5 + rereads):
        entry = registry.current_entry(node)
        if entry is not None and entry.kid == kid:
            return entry
        if operator is None and rereads > 0:
            # A registration written a moment ago may not have reached the replica that
            # served the watch yet (R3 streams): read again before giving up.
            rereads -= 1
            await asyncio.sleep(REGISTRATION_REREAD_S)
            await _read_into(kv, registry)
            continue
        if operator is None:
            public = encode_public(bytes(node_key.verify_key))
            raise NodeNotRegistered(
                f"node {node}: its key is not registered in BH_CONFIG and no "
                "control.operator_key_file is configured here; on an operator machine run "
                f"`gatekeeper nodes register --operator-key FILE --node {node} --pub {public}`"
            )
        key, value = registration_value(operator, registry, node, node_key.verify_key, time.time())
        try:
            await kv.create(key, value)
        except (KeyWrongLastSequenceError, BadRequestError):  # taken meanwhile: read again
            await _read_into(kv, registry)
            continue
        try:
            entry = registry.add(key, value)
        except ControlValueRejected as exc:  # cannot happen with a valid operator key
            raise NodeNotRegistered(f"node {node}: own registration refused: {exc}") from None
        log.info("node_keys.registered", node=node, n=entry.n, kid=entry.kid)
        return entry
    raise NodeNotRegistered(f"node {node}: could not register its key (kept racing)")


@dataclass(frozen=True, slots=True)
class ControlPlane:
    """What a node trusts: operator keys, the node key registry, and (maybe) the operator key."""

    operators: Mapping[str, VerifyKey]
    registry: NodeKeyRegistry
    operator_key: SigningKey | None


async def bootstrap(
    kv: KeyValue, cfg: ControlConfig, node: str, node_key: SigningKey
) -> ControlPlane:
    """Operator keys from the config, the registry from BH_CONFIG, this node registered."""
    if not cfg.operator_keys:
        raise ConfigError(
            "control.operator_keys: no operator key is trusted; create one with "
            "`gatekeeper keys init --dir DIR` and list its k4.public key here"
        )
    operators = trusted_operators(cfg.operator_keys)
    operator_key = None
    if cfg.operator_key_file:
        try:
            operator_key = load_operator_key(cfg.operator_key_file)
        except KeyFileError as exc:
            raise ConfigError(f"control.operator_key_file: {exc}") from None
        if pid(bytes(operator_key.verify_key)) not in operators:
            raise ConfigError("control.operator_key_file: its key is not in control.operator_keys")
    registry = await load_registry(kv, operators)
    await ensure_registered(kv, registry, node, node_key, operator_key)
    return ControlPlane(operators, registry, operator_key)

"""Which key checks a node's record: a fixed key per node, or the key it had at a time.

A ``KeyHistory`` (``gatekeeper.control.registry.NodeKeyRegistry`` is one) answers
``key_at(node, t)``; a plain mapping node -> 32-byte key is wrapped as ``StaticKeys``.
``signature_problem`` checks one record's signature (the 32 raw hash bytes).
"""

from __future__ import annotations

import binascii
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from gatekeeper.auth.paserk import pid
from gatekeeper.auth.paseto import MalformedToken, b64decode

__all__ = [
    "KeyHistory",
    "NodeKey",
    "StaticKeys",
    "node_key",
    "record_epoch",
    "signature_problem",
]


class KeyHistory(Protocol):
    """Which public key a node had at a time (``NodeKeyRegistry`` is one)."""

    def key_at(self, node: str, t: float) -> VerifyKey | None: ...


@dataclass(frozen=True, slots=True)
class NodeKey:
    kid: str
    verify_key: VerifyKey


@functools.lru_cache(maxsize=256)
def node_key(public_key: bytes) -> NodeKey:
    """A public key with its PASERK id (cached: verifying a trail asks again and again)."""
    return NodeKey(pid(public_key), VerifyKey(public_key))


@functools.lru_cache(maxsize=4096)
def record_epoch(ts: object) -> float | None:
    """A record's ``ts`` (RFC 3339) as Unix time; None if it is not one."""
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class StaticKeys:
    """One key per node, whatever the time (a caller's own mapping)."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        for node, key in keys.items():
            if len(key) != 32:
                raise ValueError(f"public key of node {node!r} must be 32 raw bytes")
        self.keys = {node: VerifyKey(key) for node, key in keys.items()}

    def key_at(self, node: str, t: float) -> VerifyKey | None:
        return self.keys.get(node)


def signature_problem(digest: str, sig: str, sig_kid: str, key: NodeKey) -> str | None:
    """Why ``sig`` is not ``key``'s signature of the hex ``digest`` (None: it is)."""
    if sig_kid != key.kid:
        return f"signed with key {sig_kid}, but the node's key is {key.kid}"
    try:
        key.verify_key.verify(bytes.fromhex(digest), b64decode(sig))
    except (BadSignatureError, MalformedToken, ValueError, binascii.Error):
        return "signature does not verify with the node's key"
    return None

"""The node key registry: which Ed25519 key speaks for which node, and since when.

BH_CONFIG holds one entry per registration, written with ``kv.create`` only::

    nodes.<node>.key.<n>   envelope, body {"node", "n", "pub": "k4.public.…", "valid_from"}

Entry 1 must be signed by an operator key; entry ``n > 1`` by an operator key or by
the key of entry ``n - 1`` (a rotation signed by the old key). ``valid_from``
strictly increases with ``n``. ``NodeKeyRegistry`` checks all of that, keeps the
history, and answers "which key did node X use at time t" (audit) and "which node
does this key id belong to" (gossip and events). It is pure: no I/O.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nacl.signing import VerifyKey

from gatekeeper.auth.paserk import KeyFormatError, decode_public, encode_public, pid
from gatekeeper.config import NODE_ID
from gatekeeper.control.envelope import ControlValueRejected, open_envelope

__all__ = [
    "NODE_ID",
    "NodeKeyEntry",
    "NodeKeyRegistry",
    "node_key_kv_key",
    "parse_node_key_kv_key",
    "registration_body",
]

_KV_KEY = re.compile(r"nodes\.([A-Za-z0-9_-]{1,64})\.key\.([1-9][0-9]{0,8})")


def node_key_kv_key(node: str, n: int) -> str:
    """``nodes.<node>.key.<n>``."""
    return f"nodes.{node}.key.{n}"


def parse_node_key_kv_key(kv_key: str) -> tuple[str, int] | None:
    """``(node, n)`` of a registry KV key, or None if it is not one (pure)."""
    match = _KV_KEY.fullmatch(kv_key)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


@dataclass(frozen=True, slots=True)
class NodeKeyEntry:
    """One registration: ``node``'s key number ``n``, in force from ``valid_from``."""

    node: str
    n: int
    public_key: bytes
    valid_from: float
    kid: str
    signer_kid: str
    value: bytes
    verify_key: VerifyKey

    @property
    def pub(self) -> str:
        return encode_public(self.public_key)


def registration_body(node: str, n: int, pub: str, valid_from: float) -> dict[str, object]:
    """The envelope body of ``nodes.<node>.key.<n>``."""
    return {"node": node, "n": n, "pub": pub, "valid_from": float(valid_from)}


class NodeKeyRegistry:
    """Registered node keys with their history, checked against the operator keys."""

    def __init__(self, operator_keys: Mapping[str, VerifyKey]) -> None:
        self._operators = dict(operator_keys)
        self._history: dict[str, list[NodeKeyEntry]] = {}
        self._starts: dict[str, list[float]] = {}
        self._by_kid: dict[str, tuple[str, VerifyKey]] = {}

    # ------------------------------------------------------------------ write

    def add(self, kv_key: str, value: bytes) -> NodeKeyEntry:
        """Validate and record one registry entry; raises ``ControlValueRejected``.

        Adding the very value already held is a no-op (a watch echo) and returns it.
        """
        parsed = parse_node_key_kv_key(kv_key)
        if parsed is None:
            raise ControlValueRejected("bad_key", "expected nodes.<node>.key.<n>")
        node, n = parsed
        entries = self._history.get(node, [])
        if n <= len(entries):
            held = entries[n - 1]
            if held.value == value:
                return held
            raise ControlValueRejected("conflict", f"{kv_key} is already registered")
        if n != len(entries) + 1:
            raise ControlValueRejected("gap", f"{kv_key} before key {len(entries) + 1}")
        trusted = dict(self._operators)
        if entries:
            trusted[entries[-1].kid] = entries[-1].verify_key
        envelope = open_envelope(value, kv_key, trusted)
        public_key, valid_from = _check_body(envelope.body, node, n)
        if entries and valid_from <= entries[-1].valid_from:
            raise ControlValueRejected("bad_body", "valid_from must increase with n")
        kid = pid(public_key)
        owner = self._by_kid.get(kid)
        if owner is not None and owner[0] != node:
            raise ControlValueRejected("conflict", "that key is registered for another node")
        entry = NodeKeyEntry(
            node, n, public_key, valid_from, kid, envelope.kid, value, VerifyKey(public_key)
        )
        self._history.setdefault(node, []).append(entry)
        self._starts.setdefault(node, []).append(valid_from)
        self._by_kid[kid] = (node, entry.verify_key)
        return entry

    def add_all(self, items: Iterable[tuple[str, bytes]]) -> list[tuple[str, ControlValueRejected]]:
        """Add many entries in registry order (node, then n); returns the rejected ones."""
        ordered = []
        for kv_key, value in items:
            parsed = parse_node_key_kv_key(kv_key)
            ordered.append(((parsed or ("", 0)), kv_key, value))
        ordered.sort(key=lambda item: item[0])
        rejected = []
        for _, kv_key, value in ordered:
            try:
                self.add(kv_key, value)
            except ControlValueRejected as exc:
                rejected.append((kv_key, exc))
        return rejected

    # ------------------------------------------------------------------ read

    @property
    def operators(self) -> Mapping[str, VerifyKey]:
        return dict(self._operators)

    def key_at(self, node: str, t: float) -> VerifyKey | None:
        """The key of the entry with the greatest ``valid_from <= t``."""
        starts = self._starts.get(node)
        if not starts:
            return None
        at = bisect.bisect_right(starts, t)
        return None if at == 0 else self._history[node][at - 1].verify_key

    def current(self, node: str) -> VerifyKey | None:
        entries = self._history.get(node)
        return entries[-1].verify_key if entries else None

    def current_entry(self, node: str) -> NodeKeyEntry | None:
        entries = self._history.get(node)
        return entries[-1] if entries else None

    def nodes(self) -> frozenset[str]:
        return frozenset(self._history)

    def history(self, node: str) -> tuple[NodeKeyEntry, ...]:
        return tuple(self._history.get(node, ()))

    def owner_of(self, kid: str) -> tuple[str, VerifyKey] | None:
        """``(node, key)`` of a registered key id (any entry of the history)."""
        return self._by_kid.get(kid)

    def is_current(self, node: str, kid: str) -> bool:
        """True if ``kid`` is ``node``'s newest registered key."""
        entries = self._history.get(node)
        return entries is not None and entries[-1].kid == kid


def _check_body(body: object, node: str, n: int) -> tuple[bytes, float]:
    if not isinstance(body, dict) or set(body) != {"node", "n", "pub", "valid_from"}:
        raise ControlValueRejected("bad_body", "expected node, n, pub, valid_from")
    if body["node"] != node or body["n"] != n or type(body["n"]) is not int:
        raise ControlValueRejected("bad_body", "node or n differs from the KV key")
    valid_from = body["valid_from"]
    if type(valid_from) not in (int, float) or not math.isfinite(valid_from):
        raise ControlValueRejected("bad_body", "valid_from must be a unix time")
    pub = body["pub"]
    try:
        public_key = decode_public(pub) if isinstance(pub, str) else b""
    except KeyFormatError:
        public_key = b""
    if not public_key:
        raise ControlValueRejected("bad_body", "pub must be a k4.public key")
    return public_key, float(valid_from)

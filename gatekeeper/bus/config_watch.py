"""Live configuration from the BH_CONFIG KV bucket, watched by every node.

    key                         value (an envelope, gatekeeper.control)   effect
    issuers.<kid>               operator-signed {"pub"}                    trust an issuer key
    revoked.<key-token>         operator-signed {"sub", "at", "reason"}    reject that API key
    routing.matrix              operator-signed {"models": [...]}          swap the matrix
    any of these                operator-signed {"deleted": true}          undo it (tombstone)
    nodes.<node>.key.<n>        registry entry (gatekeeper.control.registry) node keys

Only a value signed by an operator key (``control.operator_keys``) for exactly that
key is applied; a value older than (or as old as) the one in force is a replay.
Anything else (unsigned, wrongly signed, malformed, oversized, replayed) is
refused whole, counted, logged and reported on BH_EVENTS, and the node keeps what
it had. A bare KV delete or purge proves nothing: it is ignored (the revocation or
trust stays in force) and the node puts the signed value back, so a node that
starts later still reads it. If NATS is unreachable, a node keeps enforcing its
last known lists.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from nacl.signing import VerifyKey
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.kv import KeyValue

from gatekeeper.auth.paserk import KeyFormatError
from gatekeeper.auth.verifier import Keyring, RevocationList
from gatekeeper.bus.kv_snapshot import kv_snapshot
from gatekeeper.bus.putback import PutBack
from gatekeeper.control.envelope import ControlValueRejected, open_envelope
from gatekeeper.control.registry import NodeKeyRegistry, parse_node_key_kv_key
from gatekeeper.control.reporting import Rejections
from gatekeeper.control.values import (
    MATRIX_KEY,
    is_tombstone,
    issuer_key,
    issuer_public,
    kind_of,
    revocation_key,
    revocation_sub,
)
from gatekeeper.errors import ConfigError
from gatekeeper.routing.matrix import Matrix, ModelSpec, parse_models

__all__ = [
    "MATRIX_KEY",
    "ConfigWatcher",
    "LiveConfig",
    "issuer_key",
    "parse_matrix_body",
    "parse_matrix_value",
    "revocation_key",
]

log = structlog.get_logger("gatekeeper.config_watch")


def parse_matrix_body(doc: Any, extra: tuple[ModelSpec, ...] = ()) -> Matrix:
    """Validate a ``routing.matrix`` body (pure): raises ConfigError naming the path."""
    if not isinstance(doc, dict) or "models" not in doc:
        raise ConfigError("routing.matrix: expected an object with a 'models' list")
    return Matrix((*parse_models(doc["models"], "routing.matrix.models"), *extra))


def parse_matrix_value(value: bytes, extra: tuple[ModelSpec, ...] = ()) -> Matrix:
    """Validate unsigned ``{"models": [...]}`` JSON (what ``config push`` signs)."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"routing.matrix: not JSON ({exc.msg})") from None
    return parse_matrix_body(doc, extra)


@dataclass(slots=True)
class LiveConfig:
    """Applies verified BH_CONFIG entries to the keyring, revocations, router, registry."""

    keyring: Keyring
    revocations: RevocationList
    on_matrix: Callable[[Matrix], None]
    served_providers: frozenset[str]
    operators: Mapping[str, VerifyKey] = field(default_factory=dict)
    registry: NodeKeyRegistry | None = None
    extra_models: tuple[ModelSpec, ...] = ()
    static_kids: frozenset[str] = frozenset()
    rejections: Rejections = field(default_factory=Rejections)
    on_node_key: Callable[[str], None] = field(default=lambda node: None)
    restore: Callable[[str, bytes], None] = field(default=lambda key, value: None)
    _accepted: dict[str, tuple[float, bytes]] = field(default_factory=dict)
    _dynamic_kids: dict[str, str] = field(default_factory=dict)
    _revoked: dict[str, str] = field(default_factory=dict)

    def apply(self, key: str, value: bytes | None) -> None:
        kind = kind_of(key)
        if kind is None:
            return  # not a control value (e.g. an old nodes.<id>.audit_key)
        if value is None:
            self._bare_delete(kind, key)
            return
        try:
            if kind == "node_key":
                self._node_key(key, value)
            else:
                self._signed(kind, key, value)
        except ControlValueRejected as exc:
            self._reject(kind, key, exc.reason, exc.detail)
            self._put_back(key)
        except (ConfigError, KeyFormatError, ValueError) as exc:
            self._reject(kind, key, "bad_body", str(exc))
            self._put_back(key)

    def held(self, key: str) -> bytes | None:
        """The signed value in force for ``key`` (None: none)."""
        held = self._accepted.get(key)
        if held is None and kind_of(key) == "node_key":
            held = self._registered(key)
        return None if held is None else held[1]

    def _put_back(self, key: str) -> None:
        """A refused value now sits in the bucket over the one in force: restore that one,
        so that a node starting later reads it (bucket history is only 5 deep)."""
        held = self._accepted.get(key)
        if held is None and kind_of(key) == "node_key":
            held = self._registered(key)
        if held is not None:
            self.restore(key, held[1])

    def _reject(self, kind: str, key: str, reason: str, detail: str) -> None:
        self.rejections.reject(kind, key, reason, detail)

    def _bare_delete(self, kind: str, key: str) -> None:
        """A delete/purge is not signed: keep what is in force and put it back."""
        held = self._accepted.get(key)
        if held is None and kind == "node_key":
            held = self._registered(key)
        if held is None:
            return  # nothing of ours was there
        self._reject(kind, key, "unsigned_delete", "a bare delete is ignored")
        self.restore(key, held[1])

    def _registered(self, key: str) -> tuple[float, bytes] | None:
        parsed = parse_node_key_kv_key(key)
        if parsed is None or self.registry is None:
            return None
        for entry in self.registry.history(parsed[0]):
            if entry.n == parsed[1]:
                return entry.valid_from, entry.value
        return None

    def _node_key(self, key: str, value: bytes) -> None:
        if self.registry is None:
            return
        entry = self.registry.add(key, value)
        if key not in self._accepted:
            self._accepted[key] = (entry.valid_from, value)
            log.info("config.node_key", node=entry.node, n=entry.n, kid=entry.kid)
            self.on_node_key(entry.node)

    def _signed(self, kind: str, key: str, value: bytes) -> None:
        envelope = open_envelope(value, key, self.operators)
        held = self._accepted.get(key)
        if held is not None and held[1] == value:
            return  # the value in force, seen again (watch restart, restore)
        if held is not None and envelope.iat <= held[0]:
            raise ControlValueRejected("replayed", "not newer than the value in force")
        body = envelope.body
        if kind == "issuer":
            self._issuer(key, body)
        elif kind == "revocation":
            self._revocation(key, body)
        else:
            self._matrix(body)
        self._accepted[key] = (envelope.iat, value)

    def _issuer(self, key: str, body: Any) -> None:
        if not is_tombstone(body):
            kid = self.keyring.add(issuer_public(key, body))
            self._dynamic_kids[key] = kid
            log.info("config.issuer_trusted", kid=kid)
            return
        kid = self._dynamic_kids.pop(key, key.removeprefix("issuers."))
        if kid not in self.static_kids:
            self.keyring.remove(kid)
            log.info("config.issuer_removed", kid=kid)

    def _revocation(self, key: str, body: Any) -> None:
        if not is_tombstone(body):
            sub = revocation_sub(key, body)
            self._revoked[key] = sub
            self.revocations.revoke(sub)
            log.info("config.key_revoked", key_id=sub)
        elif key in self._revoked:
            self.revocations.unrevoke(self._revoked.pop(key))
            log.info("config.key_unrevoked", key=key)

    def _matrix(self, body: Any) -> None:
        matrix = parse_matrix_body(body, self.extra_models)
        unknown = {m.provider for m in matrix} - self.served_providers
        served = Matrix(tuple(m for m in matrix if m.provider in self.served_providers))
        if not served.of_kind("chat"):
            raise ConfigError("routing.matrix: no chat model is served by a configured provider")
        self.on_matrix(served)
        log.info("config.matrix_replaced", models=len(served), skipped_providers=sorted(unknown))


class ConfigWatcher:
    """Loads BH_CONFIG before traffic, then follows it.

    After a reconnect the watch is replaced at once (as gossip does): a restarted
    server has lost the watch's consumer, which nats-py notices only after two missed
    heartbeats, so revocations would otherwise wait 10-20 s after an outage.
    """

    check_s = 0.25  # how often the reconnect count is looked at

    def __init__(self, kv: KeyValue, live: LiveConfig, nc: Client | None = None) -> None:
        self.kv = kv
        self.live = live
        self.nc: Client = nc if nc is not None else kv._js._nc
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher: KeyValue.KeyWatcher | None = None
        self._watch_reconnects = 0  # the client's reconnect count when it was created
        self._restoring: set[asyncio.Future[None]] = set()
        self._putback = PutBack(self._put_held)
        live.restore = self.restore

    async def load(self) -> int:
        """Apply every retained revision, oldest first (a delete marker hides nothing)."""
        entries = await kv_snapshot(self.kv, history=True, ignore_deletes=False)
        for entry in entries:
            self.live.apply(entry.key, None if entry.deleted else entry.value)
        return len(entries)

    def restore(self, key: str, value: bytes) -> None:
        """Put the signed value in force back (refused without write permission)."""
        self._putback(key)

    def _put_held(self, key: str) -> None:
        held = self.live.held(key)
        if held is not None:
            task = asyncio.ensure_future(self._restore(key, held))
            self._restoring.add(task)
            task.add_done_callback(self._restoring.discard)

    async def _restore(self, key: str, value: bytes) -> None:
        with contextlib.suppress(NatsError, TimeoutError, OSError):
            await self.kv.put(key, value)
            log.info("config.restored", key=key)

    def start(self) -> None:
        self._tasks = [
            asyncio.ensure_future(self._follow()),
            asyncio.ensure_future(self._rewatch_after_reconnects()),
        ]

    async def _follow(self) -> None:
        while True:
            try:
                self._watch_reconnects = self.nc.stats["reconnects"]
                watcher = self._watcher = await self.kv.watchall(include_history=False)
                async for entry in watcher:  # ends when a reconnect stops it
                    if entry is not None:
                        self.live.apply(entry.key, entry.value if entry.operation is None else None)
            except (NatsError, TimeoutError, OSError) as exc:
                log.debug("config.watch_restart", error=type(exc).__name__)
                await asyncio.sleep(0.5)

    async def _rewatch_after_reconnects(self) -> None:
        """Stop a watcher older than the last reconnect; ``_follow`` starts a new one.

        The new one delivers the latest value of every key, deletes included.
        """
        while True:
            await asyncio.sleep(self.check_s)
            watcher = self._watcher
            if (
                watcher is None
                or not self.nc.is_connected
                or self.nc.stats["reconnects"] == self._watch_reconnects
            ):
                continue
            self._watcher = None
            log.info("config.rewatch", reconnects=self.nc.stats["reconnects"])
            with contextlib.suppress(NatsError, TimeoutError, OSError):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

"""Live configuration from the BH_CONFIG KV bucket, watched by every node.

    key                         value                                effect
    issuers.<kid>               k4.public.… text                     trust an issuer key
    revoked.<key-token>         {"sub", "at", "reason"} JSON          reject that API key
    routing.matrix              {"models": [...]} JSON                swap the capability matrix
    nodes.<node>.audit_key      k4.public.… text                     audit verification key

A deleted ``issuers.*`` / ``revoked.*`` key undoes its effect. A bad value is
rejected (logged, published to BH_EVENTS) and the node keeps what it had. If NATS
is unreachable, a node keeps enforcing its last known lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import structlog
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.kv import KeyValue

from gatekeeper.auth.paserk import KeyFormatError, decode_public, pid
from gatekeeper.auth.verifier import Keyring, RevocationList
from gatekeeper.routing.matrix import ConfigError, Matrix, ModelSpec, parse_models

log = structlog.get_logger("gatekeeper.config_watch")

MATRIX_KEY = "routing.matrix"
_SAFE = re.compile(r"[A-Za-z0-9_=-]{1,128}")


def revocation_key(sub: str) -> str:
    """The KV key for a revoked API key id (hashed when not key-safe)."""
    if _SAFE.fullmatch(sub):
        return f"revoked.{sub}"
    return "revoked.h" + hashlib.blake2b(sub.encode(), digest_size=12).hexdigest()


def issuer_key(public_text: str) -> str:
    return f"issuers.{pid(decode_public(public_text))}"


def parse_matrix_value(value: bytes, extra: tuple[ModelSpec, ...] = ()) -> Matrix:
    """Validate a ``routing.matrix`` value (pure): raises ConfigError naming the path."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"routing.matrix: not JSON ({exc.msg})") from None
    if not isinstance(doc, dict) or "models" not in doc:
        raise ConfigError("routing.matrix: expected an object with a 'models' list")
    return Matrix((*parse_models(doc["models"], "routing.matrix.models"), *extra))


@dataclass(slots=True)
class LiveConfig:
    """Applies BH_CONFIG entries to the node's keyring, revocations and router."""

    keyring: Keyring
    revocations: RevocationList
    on_matrix: Callable[[Matrix], None]
    served_providers: frozenset[str]
    extra_models: tuple[ModelSpec, ...] = ()
    static_kids: frozenset[str] = frozenset()
    on_reject: Callable[[str, str], None] = field(default=lambda key, error: None)
    rejected: list[str] = field(default_factory=list)
    _dynamic_kids: dict[str, str] = field(default_factory=dict)
    _revoked: dict[str, str] = field(default_factory=dict)

    def apply(self, key: str, value: bytes | None) -> None:
        try:
            if key.startswith("issuers."):
                self._issuer(key, value)
            elif key.startswith("revoked."):
                self._revocation(key, value)
            elif key == MATRIX_KEY and value:
                self._matrix(value)
        except (ConfigError, KeyFormatError, ValueError) as exc:
            self.rejected.append(f"{key}: {exc}")
            log.error("config.rejected", key=key, error=str(exc))
            self.on_reject(key, str(exc))

    def _issuer(self, key: str, value: bytes | None) -> None:
        if value:
            kid = self.keyring.add(decode_public(value.decode().strip()))
            self._dynamic_kids[key] = kid
            log.info("config.issuer_trusted", kid=kid)
            return
        kid = self._dynamic_kids.pop(key, key.removeprefix("issuers."))
        if kid not in self.static_kids:
            self.keyring.remove(kid)
            log.info("config.issuer_removed", kid=kid)

    def _revocation(self, key: str, value: bytes | None) -> None:
        if value:
            record = orjson.loads(value)
            sub = record.get("sub") if isinstance(record, dict) else None
            if not isinstance(sub, str) or not sub:
                raise ValueError("revocation needs a 'sub'")
            self._revoked[key] = sub
            self.revocations.revoke(sub)
            log.info("config.key_revoked", key_id=sub)
        elif key in self._revoked:
            self.revocations.unrevoke(self._revoked.pop(key))

    def _matrix(self, value: bytes) -> None:
        matrix = parse_matrix_value(value, self.extra_models)
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

    async def load(self) -> int:
        count = 0
        watcher = await self.kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    break
                self.live.apply(entry.key, entry.value if entry.operation is None else None)
                count += 1
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return count

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


def revocation_value(sub: str, reason: str, at: str) -> bytes:
    return orjson.dumps({"sub": sub, "reason": reason, "at": at})

"""Cached answers on JetStream: KV ``BH_CACHE``, big payloads in Object Store ``BH_CACHE_OBJ``.

Thin I/O around ``entry``: ``get`` returns a verified answer or ``None`` (absent,
expired, forged, garbled, or NATS unavailable: every failure is a miss, never an
error for the client); ``put`` never raises either (a cache that cannot store just
does not). With a ``memory`` (and a trusted key index), an answer this node stored or
verified is served again without a read while the index says it is the key's latest
(``cache/memory.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog
from nacl.signing import SigningKey, VerifyKey
from nats.errors import Error as NatsError
from nats.js.errors import Error as JsError
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from gatekeeper.cache.entry import CachedAnswer, EntryRejected, open_entry, seal_entry, split_value
from gatekeeper.cache.index import KeyIndex
from gatekeeper.cache.memory import AnswerMemory

log = structlog.get_logger("gatekeeper.cache")

__all__ = ["CacheStore"]

NATS_ERRORS = (NatsError, JsError, asyncio.TimeoutError, OSError)


class Acks(Protocol):
    """Acknowledged JetStream publishing (``bus.acks.AckedPublisher``): the stream sequence."""

    def send(
        self, subject: str, data: bytes, msg_id: str | None, timeout_s: float
    ) -> asyncio.Future[int]: ...


class CacheStore:
    """Reads and writes signed entries; ``inline_max`` bytes and below stay in the KV value."""

    def __init__(
        self,
        kv: KeyValue,
        objects: ObjectStore | None,
        node_id: str,
        signing_key: SigningKey,
        keys_of: Callable[[str], Sequence[VerifyKey]],
        *,
        inline_max: int = 256 * 1024,
        timeout_s: float = 0.5,
        clock: Callable[[], float] = time.time,
        on_rejected: Callable[[str], None] = lambda reason: None,
        index: KeyIndex | None = None,
        memory: AnswerMemory | None = None,
        acks: Acks | None = None,
        subject: str = "",  # the bucket's subject prefix, ``$KV.<bucket>.``, with ``acks``
    ) -> None:
        self.kv, self.objects, self.node_id = kv, objects, node_id
        self.signing_key, self.keys_of = signing_key, keys_of
        self.inline_max, self.timeout_s, self.clock = inline_max, timeout_s, clock
        self.on_rejected = on_rejected
        self.index = index  # the bucket's keys known here (None: every lookup reads)
        self.memory = memory if index is not None else None  # it needs the index's revisions
        # a put is a plain publish to the key's subject, acked like an audit record
        # (bus/acks.py: no request/reply round of nats-py's per message); None: kv.put
        self.acks = acks
        self._subject = subject

    def _keys(self, node: str) -> tuple[bytes, ...]:
        return tuple(bytes(k) for k in self.keys_of(node))

    async def get(self, kv_key: str, tenant: str) -> CachedAnswer | None:
        index = self.index
        if index is not None and not index.may_hold(kv_key):
            return None  # known not to be there: a miss without a round trip
        memory = self.memory
        if memory is not None:
            assert index is not None
            revision = index.revision(kv_key)
            if revision:
                kept = memory.get(kv_key, tenant, revision, self.clock(), self._keys)
                if kept is not None:
                    return kept
        try:
            async with asyncio.timeout(self.timeout_s):
                entry = await self.kv.get(kv_key)
                value = entry.value or b""
                header, payload = split_value(value)
                if not payload and header.get("size"):
                    payload = await self._object(kv_key)
            answer = open_entry(header, payload, kv_key, tenant, self.clock(), self.keys_of)
            if memory is not None:
                node, exp, revision = header["node"], header["exp"], entry.revision or 0
                keys = self._keys(node)
                memory.keep(kv_key, tenant, answer, revision, exp, node, keys, self.clock())
            return answer
        except EntryRejected as exc:
            log.warning("cache.entry_rejected", key=kv_key[:80], reason=exc.reason)
            self.on_rejected(exc.reason)
            return None
        except (KeyNotFoundError, KeyDeletedError):  # gone (deleted, expired, evicted): a miss
            if index is not None:
                index.gone(kv_key)
            return None
        except NATS_ERRORS:  # NATS away or slow: a miss
            return None

    async def _put(self, kv_key: str, value: bytes) -> int:
        """The KV put; its revision."""
        if self.acks is None or not self._subject:
            return await self.kv.put(kv_key, value)
        return await self.acks.send(self._subject + kv_key, value, None, self.timeout_s * 4)

    async def _object(self, kv_key: str) -> bytes:
        if self.objects is None:
            raise EntryRejected("no_object_store")
        result = await self.objects.get(kv_key)
        return result.data or b""

    def put_soon(
        self, kv_key: str, tenant: str, answer: CachedAnswer, ttl_s: float
    ) -> asyncio.Future[int] | None:
        """``put`` without a task: sealed and published now, the index and the memory told
        when the ack comes. Only for an inline answer with ``acks``; None: use ``put``."""
        acks = self.acks
        if acks is None or not self._subject:
            return None
        sealed = self._seal(kv_key, tenant, answer, ttl_s)
        if sealed is None or len(sealed[2]) > self.inline_max:
            return None
        exp, header, payload = sealed
        value = header + b"\n" + payload
        ack = acks.send(self._subject + kv_key, value, None, self.timeout_s * 4)

        def acked(fut: asyncio.Future[int]) -> None:
            error = None if fut.cancelled() else fut.exception()
            if fut.cancelled() or error is not None:
                failed = "cancelled" if error is None else type(error).__name__
                log.info("cache.store_failed", key=kv_key[:80], error=failed)
                return
            self._stored(kv_key, tenant, answer, fut.result(), exp)

        ack.add_done_callback(acked)
        return ack

    def _stored(
        self, kv_key: str, tenant: str, answer: CachedAnswer, revision: int, exp: float
    ) -> None:
        if self.index is not None:
            self.index.stored(kv_key)
        if self.memory is not None:
            node = self.node_id
            keys = self._keys(node)
            self.memory.keep(kv_key, tenant, answer, revision, exp, node, keys, self.clock())

    def _seal(
        self, kv_key: str, tenant: str, answer: CachedAnswer, ttl_s: float
    ) -> tuple[float, bytes, bytes] | None:
        """``(exp, header line, payload)``; None for a stream that is not UTF-8."""
        exp = self.clock() + ttl_s
        try:
            header, payload = seal_entry(
                self.signing_key, self.node_id, kv_key, tenant, answer, exp
            )
        except UnicodeDecodeError:
            return None
        return exp, header, payload

    async def put(self, kv_key: str, tenant: str, answer: CachedAnswer, ttl_s: float) -> bool:
        sealed = self._seal(kv_key, tenant, answer, ttl_s)
        if sealed is None:
            return False
        exp, header, payload = sealed
        try:
            async with asyncio.timeout(self.timeout_s * 4):
                if len(payload) <= self.inline_max:
                    revision = await self._put(kv_key, header + b"\n" + payload)
                elif self.objects is not None:
                    await self.objects.put(kv_key, payload)
                    revision = await self._put(kv_key, header + b"\n")
                else:
                    return False
            self._stored(kv_key, tenant, answer, revision, exp)
            return True
        except NATS_ERRORS as exc:
            log.info("cache.store_failed", key=kv_key[:80], error=type(exc).__name__)
            return False

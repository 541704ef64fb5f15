"""Cluster-wide double-spend refusal: one NATS KV ``create`` per redeemed token.

Each epoch has its own bucket ``BH_PASSES_<epoch>`` whose entries expire (``ttl``)
once the epoch's key is no longer accepted anyway. The key is
``<first 8 bytes of the token key id>.<nonce>`` (hex); the value says nothing (``1``).
``create`` succeeds for exactly one writer across the cluster, so of two gateways
that see the same token at once, one serves it and the other refuses it.

A hostile writer on the bus can at worst *mark* nonces as spent (a denial of
service on tokens it has seen); it cannot make a spent token redeemable again
without deleting the entry, which needs the same bus rights as deleting BH_AUDIT.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import nats.errors
import structlog
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)

from gatekeeper.errors import ServiceUnavailable

__all__ = ["KvSpentStore", "SpentStore", "bucket_name", "spent_key"]

log = structlog.get_logger("gatekeeper.passes")


class SpentStore(Protocol):
    async def spend(self, epoch: str, key_id: bytes, nonce: bytes) -> bool:
        """Mark the token spent; False if it already was (anywhere in the cluster)."""

    async def forget(self, epoch: str) -> None:
        """Drop the bucket of an epoch no longer accepted."""

    async def open(self, epoch: str) -> None:
        """Create or bind the epoch's bucket ahead of its first redemption."""


def bucket_name(epoch: str) -> str:
    return f"BH_PASSES_{epoch}"


def spent_key(key_id: bytes, nonce: bytes) -> str:
    return f"{key_id[:8].hex()}.{nonce.hex()}"


class KvSpentStore:
    """``SpentStore`` on JetStream KV, one bucket per epoch, created on first use."""

    def __init__(self, js: Any, *, ttl_s: float, replicas: int = 1) -> None:
        self.js = js
        self.ttl_s = ttl_s
        self.replicas = replicas
        self._buckets: dict[str, Any] = {}

    async def _bucket(self, epoch: str) -> Any:
        kv = self._buckets.get(epoch)
        if kv is None:
            config = KeyValueConfig(
                bucket=bucket_name(epoch),
                history=1,
                ttl=self.ttl_s,
                replicas=self.replicas,
                storage=StorageType.FILE,
            )
            try:
                kv = await self.js.create_key_value(config)
            except BadRequestError:  # exists with other settings (a peer's config): use it
                kv = await self.js.key_value(bucket_name(epoch))
            self._buckets[epoch] = kv
        return kv

    async def spend(self, epoch: str, key_id: bytes, nonce: bytes) -> bool:
        try:
            kv = await self._bucket(epoch)
            await kv.create(spent_key(key_id, nonce), b"1")
        except KeyWrongLastSequenceError:
            return False
        except (nats.errors.Error, TimeoutError) as exc:
            self._buckets.pop(epoch, None)
            log.warning("passes.spend_unavailable", error=type(exc).__name__)
            raise ServiceUnavailable(
                "The double-spend check is unavailable; try again shortly",
                code="private_token_check_unavailable",
            ) from None
        return True

    async def open(self, epoch: str) -> None:
        if epoch not in self._buckets:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._bucket(epoch)

    async def forget(self, epoch: str) -> None:
        self._buckets.pop(epoch, None)
        with contextlib.suppress(BucketNotFoundError, NotFoundError, nats.errors.Error):
            await self.js.delete_key_value(bucket_name(epoch))

"""Stored responses (``store: true``) in the JetStream KV bucket ``BH_RESPONSES``.

A key is ``<tenant digest>.<response id>``: a tenant can only ever name its own
responses (another tenant's id is simply absent: 404). Values expire after
the bucket's TTL. ``bus.streams.ensure_streams`` provisions the bucket (30 days); a node
that finds it missing creates it with ``responses.store_ttl_s``.

A stored value replays into the next prompt, so a writer on NATS must not be able to
plant one: each value is signed by the node that stored it (its registered node key,
``control.registry``) over the KV key and the data, as ``<data>\n<kid> <signature>``;
a value whose signer is not a registered node key, or whose signature fails, is absent.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from gatekeeper.auth.paserk import pid
from gatekeeper.auth.paseto import MalformedToken, b64decode, b64encode
from gatekeeper.bus.streams import RESPONSES_BUCKET
from gatekeeper.control.registry import NodeKeyRegistry
from gatekeeper.errors import ServiceUnavailable
from gatekeeper.ingressconfig import ResponsesConfig

log = structlog.get_logger("gatekeeper.ingress")

BUCKET = RESPONSES_BUCKET
DOMAIN = b"gatekeeper.response.v1\n"
_ID = re.compile(r"resp_[0-9a-f]{24}")


def sign_value(key: SigningKey, kv_key: str, data: bytes) -> bytes:
    kid = pid(bytes(key.verify_key))
    signature = key.sign(DOMAIN + kv_key.encode() + b"\n" + data).signature
    return b"%s\n%s %s" % (data, kid.encode(), b64encode(signature).encode())


def open_value(value: bytes, kv_key: str, registry: NodeKeyRegistry) -> bytes | None:
    """The data of a value signed by a registered node key for ``kv_key``, else None."""
    data, newline, trailer = value.rpartition(b"\n")
    kid, space, sig = trailer.partition(b" ")
    if not newline or not space:
        return None
    owner = registry.owner_of(kid.decode("ascii", "replace"))
    if owner is None:
        return None
    try:
        owner[1].verify(DOMAIN + kv_key.encode() + b"\n" + data, b64decode(sig.decode("ascii")))
    except (CryptoError, MalformedToken, ValueError):
        return None
    return data


Signer = Callable[[], tuple[SigningKey, NodeKeyRegistry]]


def store_key(tenant: str, response_id: str) -> str | None:
    """The KV key of a tenant's response, or None for an id the gateway never makes."""
    if not _ID.fullmatch(response_id):
        return None
    return hashlib.sha256(tenant.encode()).hexdigest()[:32] + "." + response_id


class ResponsesStore:
    def __init__(
        self, nc: Callable[[], Client], signer: Signer, cfg: ResponsesConfig, replicas: int
    ) -> None:
        self._nc, self._signer, self.cfg, self._replicas = nc, signer, cfg, replicas
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()
        self.background: set[asyncio.Task[bool]] = set()

    async def kv(self) -> KeyValue:
        if self._kv is not None:
            return self._kv
        async with self._lock:
            if self._kv is None:
                js = self._nc().jetstream(timeout=2.0)
                try:
                    self._kv = await js.key_value(BUCKET)
                except (NotFoundError, BadRequestError):
                    config = api.KeyValueConfig(
                        bucket=BUCKET,
                        history=1,
                        ttl=self.cfg.store_ttl_s,
                        storage=api.StorageType.FILE,
                        replicas=self._replicas,
                    )
                    self._kv = await js.create_key_value(config)
        return self._kv

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        key = store_key(tenant, response_id)
        if key is None:
            return None
        try:
            entry = await (await self.kv()).get(key)
        except KeyNotFoundError:
            return None
        except (NatsError, TimeoutError) as exc:
            raise ServiceUnavailable("The response store is not reachable") from exc
        data = open_value(entry.value or b"", key, self._signer()[1])
        if data is None:
            log.warning("responses.unsigned_value", key=key)
            return None
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(value, dict) or value.get("tenant") != tenant:
            return None  # a forged or foreign value is not this tenant's response
        return value

    async def put(self, tenant: str, response_id: str, record: dict[str, Any]) -> bool:
        key = store_key(tenant, response_id)
        data = orjson.dumps({**record, "tenant": tenant})
        if key is None or len(data) > self.cfg.max_stored_bytes:
            log.info("responses.not_stored", response_id=response_id, bytes=len(data))
            return False
        try:
            await (await self.kv()).put(key, sign_value(self._signer()[0], key, data))
        except (NatsError, TimeoutError):
            log.warning("responses.store_failed", response_id=response_id)
            return False
        return True

    def put_later(self, tenant: str, response_id: str, record: dict[str, Any]) -> None:
        task = asyncio.ensure_future(self.put(tenant, response_id, record))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def delete(self, tenant: str, response_id: str) -> bool:
        if await self.get(tenant, response_id) is None:
            return False
        key = store_key(tenant, response_id)
        assert key is not None
        try:
            await (await self.kv()).purge(key)
        except (NatsError, TimeoutError) as exc:
            raise ServiceUnavailable("The response store is not reachable") from exc
        return True

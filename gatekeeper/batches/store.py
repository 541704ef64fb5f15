"""Batch state on JetStream: KV ``BH_BATCHES`` and the object store ``BH_FILES``.

    file.<tenant digest>.<file id>     signed file object (+ sha256 of its content)
    batch.<tenant digest>.<batch id>   signed batch record (compare-and-set updates)
    slice.<batch id>.<n>               signed progress of one slice
    line.<batch id>.<index>            signed result of one line, written once (KV create)
    queueing.<batch id>                signed marker: the batch's slices are not all queued yet
    OBJ BH_FILES <tenant digest>.<file id>   the file's bytes

A tenant can only name its own files and batches (another tenant's id is absent:
404). Every value is signed by the node that wrote it (``batches.signing``) and is
absent if it is not; a file's bytes are checked against the sha256 in its signed
record before anything is read from them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import structlog
from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from gatekeeper.batches.results import LineResult
from gatekeeper.batches.signing import KeyOwners, open_value, seal_value
from gatekeeper.batches.status import Progress
from gatekeeper.bus.kv_snapshot import kv_snapshot
from gatekeeper.bus.streams import BATCHES_BUCKET, FILES_BUCKET
from gatekeeper.errors import ServiceUnavailable

log = structlog.get_logger("gatekeeper.batches")

Signer = Callable[[], tuple[SigningKey, KeyOwners]]


def tenant_digest(tenant: str) -> str:
    return hashlib.sha256(tenant.encode()).hexdigest()[:32]


class Conflict(Exception):
    """A compare-and-set lost to another writer too often."""


class BatchStore:
    def __init__(self, nc: Callable[[], Client], signer: Signer) -> None:
        self._nc, self._signer = nc, signer
        self._kv: KeyValue | None = None
        self._obj: ObjectStore | None = None
        self._lock = asyncio.Lock()

    async def kv(self) -> KeyValue:
        if self._kv is None:
            async with self._lock:
                if self._kv is None:
                    self._kv = await self._nc().jetstream(timeout=5.0).key_value(BATCHES_BUCKET)
        return self._kv

    async def obj(self) -> ObjectStore:
        if self._obj is None:
            async with self._lock:
                if self._obj is None:
                    js = self._nc().jetstream(timeout=10.0)
                    self._obj = await js.object_store(FILES_BUCKET)
        return self._obj

    # ------------------------------------------------------------ signed values

    def _seal(self, name: str, body: Any) -> bytes:
        return seal_value(self._signer()[0], name, body)

    def _open(self, name: str, data: bytes | None) -> Any | None:
        body = open_value(data or b"", name, self._signer()[1])
        if body is None:
            log.warning("batches.unsigned_value", key=name)
        return body

    async def _get(self, name: str) -> tuple[Any, int] | None:
        try:
            entry = await (await self.kv()).get(name)
        except KeyNotFoundError:
            return None
        except (NatsError, TimeoutError) as exc:
            raise ServiceUnavailable("The batch store is not reachable") from exc
        body = self._open(name, entry.value)
        if body is None or entry.revision is None:
            return None
        return body, entry.revision

    async def _put(self, name: str, body: Any) -> None:
        try:
            await (await self.kv()).put(name, self._seal(name, body))
        except (NatsError, TimeoutError) as exc:
            raise ServiceUnavailable("The batch store is not reachable") from exc

    async def _scan(self, pattern: str) -> list[tuple[str, Any]]:
        """Every signed value whose key matches ``pattern`` (``*`` for one token)."""
        out: list[tuple[str, Any]] = []
        try:
            for entry in await kv_snapshot(await self.kv(), pattern):
                body = self._open(entry.key, entry.value)
                if body is not None:
                    out.append((entry.key, body))
        except (NatsError, TimeoutError) as exc:
            raise ServiceUnavailable("The batch store is not reachable") from exc
        return out

    # ------------------------------------------------------------ files

    async def put_file(self, tenant: str, meta: dict[str, Any], data: bytes) -> None:
        td = tenant_digest(tenant)
        name = f"{td}.{meta['id']}"
        try:
            await (await self.obj()).put(name, data)
        except (NatsError, TimeoutError) as exc:
            raise ServiceUnavailable("The file store is not reachable") from exc
        record = {**meta, "tenant": tenant, "sha256": hashlib.sha256(data).hexdigest()}
        await self._put(f"file.{td}.{meta['id']}", record)

    async def file_record(self, tenant: str, file_id: str) -> dict[str, Any] | None:
        got = await self._get(f"file.{tenant_digest(tenant)}.{file_id}")
        if got is None or not isinstance(got[0], dict) or got[0].get("tenant") != tenant:
            return None
        return got[0]

    async def file_content(self, tenant: str, record: dict[str, Any]) -> bytes | None:
        """The file's bytes, if they are the ones its signed record names."""
        name = f"{tenant_digest(tenant)}.{record['id']}"
        try:
            result = await (await self.obj()).get(name)
        except NotFoundError:
            return None
        except (NatsError, TimeoutError) as exc:
            raise ServiceUnavailable("The file store is not reachable") from exc
        data = bytes(result.data or b"")
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            log.error("batches.file_tampered", file_id=record.get("id"))
            return None
        return data

    async def list_files(self, tenant: str) -> list[dict[str, Any]]:
        rows = await self._scan(f"file.{tenant_digest(tenant)}.*")
        return [r for _, r in rows if isinstance(r, dict) and r.get("tenant") == tenant]

    async def delete_file(self, tenant: str, file_id: str) -> None:
        td = tenant_digest(tenant)
        try:
            await (await self.kv()).delete(f"file.{td}.{file_id}")
        except (NatsError, TimeoutError) as exc:
            raise ServiceUnavailable("The batch store is not reachable") from exc
        try:  # the bytes too (the record is gone already: the file is absent everywhere)
            await (await self.obj()).delete(f"{td}.{file_id}")
        except (NatsError, TimeoutError):
            log.warning("batches.file_bytes_kept", file_id=file_id)

    # ------------------------------------------------------------ batches

    async def batch(self, tenant: str, batch_id: str) -> tuple[dict[str, Any], int] | None:
        got = await self._get(f"batch.{tenant_digest(tenant)}.{batch_id}")
        if got is None or not isinstance(got[0], dict) or got[0].get("tenant") != tenant:
            return None
        return got[0], got[1]

    async def put_batch(self, record: dict[str, Any]) -> None:
        td = tenant_digest(record["tenant"])
        await self._put(f"batch.{td}.{record['batch']['id']}", record)

    async def update_batch(
        self,
        tenant: str,
        batch_id: str,
        change: Callable[[dict[str, Any]], dict[str, Any] | None],
        tries: int = 20,
    ) -> dict[str, Any] | None:
        """Compare-and-set: ``change(record)`` (None: leave it) until no one raced us."""
        name = f"batch.{tenant_digest(tenant)}.{batch_id}"
        for _ in range(tries):
            got = await self.batch(tenant, batch_id)
            if got is None:
                return None
            new = change(got[0])
            if new is None:
                return got[0]
            try:
                await (await self.kv()).update(name, self._seal(name, new), last=got[1])
            except KeyWrongLastSequenceError:
                continue
            except (NatsError, TimeoutError) as exc:
                raise ServiceUnavailable("The batch store is not reachable") from exc
            return new
        raise Conflict(name)

    async def list_batches(self, tenant: str) -> list[dict[str, Any]]:
        rows = await self._scan(f"batch.{tenant_digest(tenant)}.*")
        return [r for _, r in rows if isinstance(r, dict) and r.get("tenant") == tenant]

    # ------------------------------------------------------------ queueing markers

    async def mark_queueing(self, tenant: str, batch_id: str, at: float) -> None:
        """Written before the batch record; deleted once every slice is queued."""
        await self._put(f"queueing.{batch_id}", {"tenant": tenant, "batch": batch_id, "at": at})

    async def queueing(self) -> list[tuple[str, str, float]]:
        """(tenant, batch id, marked at) of every batch whose queueing did not finish."""
        out = []
        for key, body in await self._scan("queueing.*"):
            if not isinstance(body, dict) or key != f"queueing.{body.get('batch')}":
                continue
            tenant, at = body.get("tenant"), body.get("at")
            if isinstance(tenant, str) and isinstance(at, int | float):
                out.append((tenant, str(body["batch"]), float(at)))
        return out

    async def queued(self, batch_id: str) -> None:
        try:
            await (await self.kv()).delete(f"queueing.{batch_id}")
        except (NatsError, TimeoutError) as exc:
            raise ServiceUnavailable("The batch store is not reachable") from exc

    # ------------------------------------------------------------ slices, lines

    async def put_progress(self, batch_id: str, n: int, p: Progress) -> None:
        await self._put(f"slice.{batch_id}.{n}", p.to_dict())

    async def progress(self, batch_id: str) -> dict[int, Progress]:
        out = {}
        for key, body in await self._scan(f"slice.{batch_id}.*"):
            if isinstance(body, dict):
                out[int(key.rsplit(".", 1)[1])] = Progress.from_dict(body)
        return out

    async def line_result(self, batch_id: str, index: int) -> LineResult | None:
        got = await self._get(f"line.{batch_id}.{index}")
        if got is None or not isinstance(got[0], dict):
            return None
        r = LineResult.from_dict(got[0])
        return r if r is not None and r.index == index else None

    async def record_line(self, batch_id: str, r: LineResult) -> bool:
        """Record a line's result once; False if one was recorded already (kept)."""
        name = f"line.{batch_id}.{r.index}"
        try:
            await (await self.kv()).create(name, self._seal(name, r.to_dict()))
        except KeyWrongLastSequenceError:
            return False
        except (NatsError, TimeoutError) as exc:
            raise ServiceUnavailable("The batch store is not reachable") from exc
        return True

    async def line_results(self, batch_id: str) -> dict[int, LineResult]:
        out: dict[int, LineResult] = {}
        for key, body in await self._scan(f"line.{batch_id}.*"):
            r = LineResult.from_dict(body) if isinstance(body, dict) else None
            if r is not None and key == f"line.{batch_id}.{r.index}":
                out[r.index] = r
        return out

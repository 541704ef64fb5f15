"""BH_SESSIONS: the latest session state of every API key (one message per key kept).

    bh.sessions.<key>  {"key_id", "tenant", "first_seen", "last_seen", "last_model",
                        "window", "requests", "tokens", "node_id"}

``requests``/``tokens`` are the cluster-wide counts for the key's current period
(its budget period, else the UTC day), read from the CRDT ledger. A node publishes
the keys it served at most once a second; ``first_seen`` is read once per key from
the stream's last message, so it survives restarts and is shared by all nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from nats.aio.client import Client
from nats.errors import Error as NatsError

from gatekeeper.budget.ledger import BudgetLedger
from gatekeeper.bus.streams import SESSIONS
from gatekeeper.exchange import Exchange
from gatekeeper.subjects import subject_token

log = structlog.get_logger("gatekeeper.sessions")


@dataclass(slots=True)
class _Seen:
    tenant: str
    last_seen: float  # epoch seconds; formatted when published
    last_model: str
    tok: str  # counter ids of the period
    req: str
    window: str


class SessionTracker:
    def __init__(
        self, nc: Client, ledger: BudgetLedger, node_id: str, interval_s: float = 1.0
    ) -> None:
        self.nc, self.ledger, self.node_id, self.interval_s = nc, ledger, node_id, interval_s
        self.dirty: dict[str, _Seen] = {}
        self.first_seen: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def seen(self, ex: Exchange) -> None:
        ids = getattr(ex.ticket, "ids", None)
        if ex.claims is None or not ids or "tok" not in ids:
            return
        model = ex.served.name if ex.served else ex.requested_model
        s = self.dirty.get(ex.claims.sub)
        if s is not None and s.tok == ids["tok"]:  # the same key again within the second
            s.last_seen, s.last_model = time.time(), model
            return
        self.dirty[ex.claims.sub] = _Seen(
            ex.claims.tenant,
            time.time(),
            model,
            ids["tok"],
            ids["preq"],
            ids["tok"].rsplit(".", 1)[1],
        )

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._forever())

    async def _first_seen(self, key: str, subject: str, now: str) -> str:
        if key not in self.first_seen:
            first = now
            with contextlib.suppress(NatsError, TimeoutError, orjson.JSONDecodeError):
                msg = await self.nc.jetstream().get_last_msg(SESSIONS, subject)
                first = orjson.loads(msg.data or b"{}").get("first_seen", now)
            self.first_seen[key] = first
        return self.first_seen[key]

    async def flush(self) -> None:
        batch, self.dirty = self.dirty, {}
        for key, s in batch.items():
            subject = f"bh.sessions.{subject_token(key)}"
            last_seen = datetime.fromtimestamp(s.last_seen, UTC).isoformat(timespec="milliseconds")
            state: dict[str, Any] = {
                "key_id": key,
                "tenant": s.tenant,
                "node_id": self.node_id,
                "first_seen": await self._first_seen(key, subject, last_seen),
                "last_seen": last_seen,
                "last_model": s.last_model,
                "window": s.window,
                "requests": self.ledger.value(s.req),
                "tokens": self.ledger.value(s.tok),
            }
            await self.nc.publish(subject, orjson.dumps(state))

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.dirty or not self.nc.is_connected:
                continue
            try:
                await self.flush()
            except (NatsError, OSError) as exc:
                log.debug("sessions.flush_failed", error=type(exc).__name__)

    async def stop(self) -> None:
        with contextlib.suppress(NatsError, OSError):
            if self.dirty and self.nc.is_connected:
                await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

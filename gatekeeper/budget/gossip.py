"""CRDT gossip over the BH_BUDGET KV bucket: each node owns its slots, all nodes watch.

    node A ledger ──own slot──▶ KV  tok.key_1.d20261122.A  ──watch──▶ node B, C ledgers
    node B ledger ──own slot──▶ KV  tok.key_1.d20261122.B  ──watch──▶ node A, C ledgers

* Key ``{counter_id}.{node_id}``, value ``PNSlot`` bytes; only the owner writes it.
* After a reserve or settle the changed own slots are published within
  ``FAST_FLUSH_S`` (core publish to the bucket's subject, no round trip; changes in
  that window are coalesced, one message per changed slot). Every ``interval`` the
  slots not yet acknowledged are put again with an acked ``put`` (this is what
  survives outages).
* At start a node loads its own slots before it admits traffic (no budget
  resurrection after SIGKILL), and the watcher merges every other node's slots.
* NATS unreachable: the ledger keeps enforcing with its last merged view plus its
  own increments; unacked slots are re-put when NATS returns and peers converge.
  After a reconnect the watcher is replaced at once: a restarted server has lost
  its consumer, which nats-py would otherwise only notice after two missed
  heartbeats (10 s and more).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.kv import KeyValue

from gatekeeper.budget.ledger import BudgetLedger
from gatekeeper.bus.outbox import Outbox
from gatekeeper.bus.streams import BUDGET_BUCKET
from internal.crdt import PNSlot

log = structlog.get_logger("gatekeeper.gossip")

GC_EVERY_S = 60.0
FAST_FLUSH_S = 0.02  # adds at most this to the gossip delay d; coalesces busy slots


def split_key(key: str) -> tuple[str, str] | None:
    """``kind.key.window.node`` → (counter id, node id); None if malformed (pure)."""
    parts = key.split(".", 3)
    if len(parts) != 4:
        return None
    return ".".join(parts[:3]), parts[3]


class Gossip:
    def __init__(
        self,
        nc: Client,
        outbox: Outbox,
        kv: KeyValue,
        ledger: BudgetLedger,
        *,
        interval_s: float = 0.2,
    ) -> None:
        self.nc, self.kv, self.ledger, self.outbox = nc, kv, ledger, outbox
        self.node_id = ledger.node_id
        self.interval_s = interval_s
        self.unacked: dict[str, PNSlot] = {}
        self.on_dropped: Callable[[list[str]], None] = lambda _: None
        self._flush_scheduled = False
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher: KeyValue.KeyWatcher | None = None
        self._watch_reconnects = 0  # the client's reconnect count when it was created

    # ------------------------------------------------------------------ start

    async def load_own(self) -> int:
        """Load this node's slots from the bucket; returns how many."""
        loaded = 0
        watcher = await self.kv.watch(f"*.*.*.{self.node_id}", ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:
                    break
                parsed = split_key(entry.key)
                if parsed and entry.value:
                    self.ledger.load_own(parsed[0], PNSlot.from_bytes(entry.value))
                    loaded += 1
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return loaded

    async def start(self) -> None:
        loaded = await self.load_own()
        self.ledger.own_dirty()  # what we just loaded is already in the bucket
        log.info("gossip.loaded_own", slots=loaded, node_id=self.node_id)
        self._tasks = [
            asyncio.ensure_future(self._watch_forever()),
            asyncio.ensure_future(self._put_forever()),
        ]

    async def stop(self) -> None:
        with contextlib.suppress(NatsError, TimeoutError, OSError):
            self._collect()
            await self._put_unacked()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ out

    def _collect(self) -> list[tuple[str, PNSlot]]:
        fresh = self.ledger.own_dirty()
        for cid, slot in fresh:
            self.unacked[cid] = slot
        return fresh

    def changed(self) -> None:
        """Called after own slots changed: publish them within ``FAST_FLUSH_S``."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(FAST_FLUSH_S, self._fast_flush)

    def _fast_flush(self) -> None:
        self._flush_scheduled = False
        for cid, slot in self._collect():
            self.outbox.put(f"$KV.{BUDGET_BUCKET}.{cid}.{self.node_id}", slot.to_bytes())

    async def _put_unacked(self) -> None:
        for cid, slot in list(self.unacked.items()):
            await self.kv.put(f"{cid}.{self.node_id}", slot.to_bytes())
            if self.unacked.get(cid) == slot:
                del self.unacked[cid]

    async def _put_forever(self) -> None:
        next_gc = time.monotonic() + GC_EVERY_S
        while True:
            await asyncio.sleep(self.interval_s)
            await self._rewatch_after_reconnect()
            if time.monotonic() >= next_gc:
                next_gc = time.monotonic() + GC_EVERY_S
                await self._gc()
            self._collect()
            if not self.unacked or not self.nc.is_connected:
                continue
            try:
                await self._put_unacked()
            except (NatsError, TimeoutError, OSError) as exc:
                log.debug("gossip.put_failed", error=type(exc).__name__)

    async def _gc(self) -> None:
        """Drop counters whose window ended (past a grace period), here and in the bucket."""
        dropped = self.ledger.gc(datetime.now(UTC))
        for cid in dropped:
            self.unacked.pop(cid, None)
            if self.nc.is_connected:
                with contextlib.suppress(NatsError, TimeoutError, OSError):
                    await self.kv.delete(f"{cid}.{self.node_id}")
        if dropped:
            self.on_dropped(dropped)
            log.debug("gossip.gc", dropped=len(dropped))

    # ------------------------------------------------------------------ in

    async def _watch_forever(self) -> None:
        while True:
            try:
                self._watch_reconnects = self.nc.stats["reconnects"]
                watcher = self._watcher = await self.kv.watchall(ignore_deletes=True)
                async for entry in watcher:  # ends when _rewatch_after_reconnect stops it
                    if entry is not None and entry.value:
                        self._merge(entry.key, entry.value)
            except (NatsError, TimeoutError, OSError) as exc:
                log.debug("gossip.watch_restart", error=type(exc).__name__)
                await asyncio.sleep(0.5)

    async def _rewatch_after_reconnect(self) -> None:
        """Stop a watcher older than the last reconnect; the watch loop starts a new one."""
        watcher = self._watcher
        if (
            watcher is None
            or not self.nc.is_connected
            or self.nc.stats["reconnects"] == self._watch_reconnects
        ):
            return
        self._watcher = None
        log.info("gossip.rewatch", reconnects=self.nc.stats["reconnects"])
        with contextlib.suppress(NatsError, TimeoutError, OSError):
            await watcher.stop()  # type: ignore[no-untyped-call]

    def _merge(self, key: str, value: bytes) -> None:
        parsed = split_key(key)
        if parsed is None:
            return
        cid, node = parsed
        try:
            slot = PNSlot.from_bytes(value)
        except ValueError:
            return
        if node == self.node_id:
            self.ledger.load_own(cid, slot)
        else:
            self.ledger.merge_remote(cid, node, slot)

"""CRDT gossip over the BH_BUDGET KV bucket: each node owns its slots, all nodes watch.

    node A ledger ──own slot──▶ KV  tok.key_1.d20261122.A  ──watch──▶ node B, C ledgers
    node B ledger ──own slot──▶ KV  tok.key_1.d20261122.B  ──watch──▶ node A, C ledgers

* Key ``{counter_id}.{node_id}``, value ``PNSlot`` bytes signed by the owner's node
  key (``gatekeeper.control.slots``); only the owner writes it. A slot from an
  unregistered node, for another node's id, badly signed, with ``n > p`` or absurd,
  or going back on an accepted one is refused, counted and reported (rate-limited).
  One from a node not registered *yet* waits (bounded) until its registration arrives.
* After a reserve or settle the changed own slots are published within
  ``FAST_FLUSH_S`` (changes in that window are coalesced, one message per changed
  slot, all of them under one signature: ``control.slots.sign_slots``) by a core
  publish to the bucket's subject (no round trip). The node's own watch delivers
  each stored value back: that echo is its acknowledgement, and the slot leaves
  ``unacked``. Every ``interval`` the slots not echoed yet are put again with an
  acked ``put`` (this is what survives outages).
* At start a node loads its own slots before it admits traffic (no budget
  resurrection after SIGKILL), verified like any other (a forged own slot is not
  loaded), and the watcher merges every other node's slots.
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
from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.kv import KeyValue

from gatekeeper.budget.ledger import BudgetLedger
from gatekeeper.bus.kv_snapshot import kv_snapshot
from gatekeeper.bus.outbox import Outbox
from gatekeeper.bus.putback import PutBack
from gatekeeper.bus.streams import BUDGET_BUCKET
from gatekeeper.control.envelope import ControlValueRejected
from gatekeeper.control.reporting import Rejections
from gatekeeper.control.slots import SlotVerifier, sign_slots
from gatekeeper.internal.crdt import PNSlot

log = structlog.get_logger("gatekeeper.gossip")

GC_EVERY_S = 60.0
FAST_FLUSH_S = 0.02  # adds at most this to the gossip delay d; coalesces busy slots
MAX_PENDING = 10_000  # slots of not-yet-registered nodes kept for their registration


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
        signing_key: SigningKey,
        verifier: SlotVerifier,
        rejections: Rejections | None = None,
        interval_s: float = 0.2,
    ) -> None:
        self.nc, self.kv, self.ledger, self.outbox = nc, kv, ledger, outbox
        self.node_id = ledger.node_id
        self.signing_key = signing_key
        self.verifier = verifier
        self.rejections = rejections or Rejections()
        self.pending: dict[str, bytes] = {}  # kv key → value from a node not registered yet
        self.good: dict[str, bytes] = {}  # kv key → the latest value accepted under it
        self._putback = PutBack(self._put_good)
        self._signed: dict[str, tuple[PNSlot, bytes]] = {}  # cid → latest own signed value
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
        for entry in await kv_snapshot(self.kv, f"*.*.*.{self.node_id}"):
            parsed = split_key(entry.key)
            if parsed and entry.value:
                slot = self._accept(entry.key, parsed[0], parsed[1], entry.value, own=True)
                if slot is not None:
                    self.ledger.load_own(parsed[0], slot)
                    loaded += 1
                    if self.signed(parsed[0], slot) != entry.value:  # an older node key's
                        self.unacked[parsed[0]] = slot  # re-signed with the current one
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

    def signed(self, cid: str, slot: PNSlot) -> bytes:
        """This node's signed value for ``slot`` (signed once per distinct slot)."""
        return self.values([(cid, slot)])[0]

    def values(self, slots: list[tuple[str, PNSlot]]) -> list[bytes]:
        """This node's signed values for ``slots``: those not signed yet, under one
        signature (per ``MAX_BATCH``); a slot signed before keeps its value."""
        held = self._signed
        fresh = [(cid, slot) for cid, slot in slots if held.get(cid, (None,))[0] != slot]
        if fresh:
            node = self.node_id
            keys = [f"{cid}.{node}" for cid, _ in fresh]
            signed = sign_slots(
                self.signing_key, list(zip(keys, (s for _, s in fresh), strict=True))
            )
            for (cid, slot), kv_key, value in zip(fresh, keys, signed, strict=True):
                held[cid] = (slot, value)
                self.verifier.remember(kv_key, value, slot)  # its echo is not verified again
        return [held[cid][1] for cid, _ in slots]

    def _fast_flush(self) -> None:
        self._flush_scheduled = False
        slots = self._collect()
        if not slots:
            return
        prefix = f"$KV.{BUDGET_BUCKET}."
        node = self.node_id
        for (cid, _), value in zip(slots, self.values(slots), strict=True):
            self.outbox.put(f"{prefix}{cid}.{node}", value)

    async def _put_unacked(self) -> None:
        slots = list(self.unacked.items())
        for (cid, slot), value in zip(slots, self.values(slots), strict=True):
            await self.kv.put(f"{cid}.{self.node_id}", value)
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
            self._signed.pop(cid, None)
            self.verifier.forget(cid)
        if dropped:
            gone = set(dropped)
            keys = [k for k in self.good if k.rpartition(".")[0] in gone]
            for key in keys:
                del self.good[key]
            self._putback.forget(keys)
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
            self.rejections.reject("slot", key, "bad_key")
            return
        cid, node = parsed
        if node == self.node_id:
            held = self._signed.get(cid)
            if held is not None and held[1] == value:  # our latest, back from the bucket:
                self.good[key] = value  # stored (its acknowledgement), nothing to merge
                if self.unacked.get(cid) == held[0]:
                    del self.unacked[cid]
                return
        slot = self._accept(key, cid, node, value)
        if slot is None:
            return
        if node == self.node_id:
            self.ledger.load_own(cid, slot)
        else:
            self.ledger.merge_remote(cid, node, slot)

    def _accept(
        self, key: str, cid: str, node: str, value: bytes, *, own: bool = False
    ) -> PNSlot | None:
        """The verified slot, or None (refused and reported, or parked until registered)."""
        try:
            slot = self.verifier.check(key, cid, node, value, any_key=own)
        except ControlValueRejected as exc:
            self._put_back(key)
            if exc.reason == "regression":  # an older genuine value (re-put, replay): no effect
                log.debug("gossip.slot_regression", key=key)
                self.rejections.count("slot", exc.reason)
                return None
            if exc.reason == "unknown_node" and len(self.pending) < MAX_PENDING:
                self.pending[key] = value  # its registration may still be on its way
            self.rejections.reject("slot", key, exc.reason, exc.detail)
            return None
        self.good[key] = value
        return slot

    def _put_back(self, key: str) -> None:
        """A refused value now sits in the bucket (history 1) over a genuine one: publish
        the genuine one again, so a node starting later reads it (rate-limited per key)."""
        if key in self.good:
            self._putback(key)

    def _put_good(self, key: str) -> None:
        value = self.good.get(key)
        if value is not None:
            self.outbox.put(f"$KV.{BUDGET_BUCKET}.{key}", value)

    def node_registered(self, node: str) -> None:
        """A node's key was registered or rotated: retry what it sent before."""
        self.verifier.forget_keys()
        suffix = f".{node}"
        for key in [k for k in self.pending if k.endswith(suffix)]:
            value = self.pending.pop(key)
            self._merge(key, value)

"""Strict budgets over NATS: owners, on-demand share transfers, signed and persisted.

    owner.<counter>         KV BH_ESCROW, created once (first node wins)  {total, owner}
    state.<counter>.<node>  KV BH_ESCROW, only <node> writes it           its escrow replica
    bh.escrow.want          core NATS, every node listens          "I need n of <counter>"
    bh.escrow.xfer.<node>   core NATS, only <node> listens         "src gave you n in all"

Every value and message is signed with the sender's node key (its Ed25519 audit key,
registered in BH_CONFIG's node key registry): ``signature (64 bytes) ‖ JSON``.
A transfer is accepted only if its signature verifies against ``src``'s key and it is
addressed to this node; it carries the *cumulative* total src→dst, so a replay or a
reordering changes nothing. A donor persists its replica (acked KV put) before it
sends a transfer, so a crash cannot make it forget rights it gave away.

A request short of rights asks (``want``) and waits at most ``strict_wait_ms``; a
partitioned node gets no answer and refuses once its own share is spent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from gatekeeper.auth.claims import Claims
from gatekeeper.budget.strict import Grant, StrictBook
from gatekeeper.bus.kv_snapshot import kv_snapshot
from gatekeeper.internal.crdt import EscrowCounter
from gatekeeper.subjects import subject_token

log = structlog.get_logger("gatekeeper.escrow")

WANT_SUBJECT = "bh.escrow.want"
REASK_S = 0.05  # a waiting request asks again this often (answers may have been partial)


def xfer_subject(node: str) -> str:
    return f"bh.escrow.xfer.{subject_token(node)}"


def sign(key: SigningKey, body: dict[str, Any]) -> bytes:
    return bytes(key.sign(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)))


def opened(verify: VerifyKey, data: bytes) -> dict[str, Any] | None:
    """The JSON body of a signed value, or None if the signature does not verify."""
    try:
        body = orjson.loads(verify.verify(data))
    except (BadSignatureError, ValueError, orjson.JSONDecodeError):
        return None
    return body if isinstance(body, dict) else None


def signer_of(data: bytes) -> str | None:
    """The node a signed value claims to come from (to pick the key to check it with)."""
    try:
        body = orjson.loads(data[64:])
    except orjson.JSONDecodeError:
        return None
    src = body.get("src") if isinstance(body, dict) else None
    return src if isinstance(src, str) else None


class NodeKeys:
    """Nodes' public keys: this node's own, the others' current key in the node key
    registry (BH_CONFIG ``nodes.<node>.key.<n>``, operator-signed; gatekeeper.control)."""

    def __init__(
        self, current: Callable[[str], VerifyKey | None], own_node: str, own: VerifyKey
    ) -> None:
        self.current = current
        self.own_node, self.own = own_node, own

    def get(self, node: str) -> VerifyKey | None:
        return self.own if node == self.own_node else self.current(node)


class EscrowBus:
    """The I/O around a :class:`StrictBook`; also the admission step's ``StrictHolds``."""

    def __init__(
        self,
        nc: Client,
        kv: KeyValue,
        keys: NodeKeys,
        book: StrictBook,
        key: SigningKey,
        *,
        default_mode: str = "gossip",
        wait_s: float = 0.25,
        interval_s: float = 0.2,
    ) -> None:
        self.nc, self.kv, self.keys, self.book, self.key = nc, kv, keys, book, key
        self.node = book.node
        self.default_mode = default_mode
        self.wait_s, self.interval_s = wait_s, interval_s
        self._arrived: dict[str, asyncio.Event] = {}
        self._unsent: set[tuple[str, str]] = set()  # grants to re-send: (counter, dst)
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[Any] = []
        self._asking: set[str] = set()
        self._pending: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self._load_own()
        self._subs = [
            await self.nc.subscribe(WANT_SUBJECT, cb=self._on_want),
            await self.nc.subscribe(xfer_subject(self.node), cb=self._on_xfer),
        ]
        self._tasks = [asyncio.ensure_future(self._flush_forever())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(NatsError, TimeoutError, OSError):
            await self._flush()
            for sub in self._subs:
                await sub.unsubscribe()

    async def _load_own(self) -> None:
        """Our replicas from before a restart (verified with our own key)."""
        own = self.key.verify_key
        for entry in await kv_snapshot(self.kv, f"state.*.*.*.{self.node}"):
            body = opened(own, entry.value)
            if body is None or not isinstance(body.get("state"), str):
                continue
            with contextlib.suppress(ValueError):
                cid = entry.key.removeprefix("state.").rsplit(".", 1)[0]
                self.book.load(cid, EscrowCounter.from_bytes(body["state"].encode()))

    # ------------------------------------------------------------------ StrictHolds

    def is_strict(self, claims: Claims) -> bool:
        budget = claims.budget
        return budget is not None and (budget.mode or self.default_mode) == "strict"

    def room(self, cid: str) -> int | None:
        return self.book.available(cid)

    def hold(self, cid: str, limit: int, amount: int) -> bool:
        ok = self.book.hold(cid, amount)
        free = self.book.available(cid) or 0
        if ok and free < amount and cid not in self._asking:
            self._ask(cid, amount)  # running low: ask ahead, the next request may need it
        return ok

    def settle(self, cid: str, held: int, actual: int) -> None:
        missing = self.book.settle(cid, held, actual)
        if missing:
            log.warning("budget.strict_shortfall", counter=cid, tokens=missing)

    async def acquire(self, cid: str, limit: int, need: int) -> bool:
        """Wait (at most ``wait_s``) until this node holds ``need`` free rights."""
        try:
            async with asyncio.timeout(self.wait_s):
                if not self.book.known(cid):
                    await self._open(cid, limit)
                while (self.book.available(cid) or 0) < need:
                    self._ask(cid, need - (self.book.available(cid) or 0))
                    event = self._arrived.setdefault(cid, asyncio.Event())
                    event.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(REASK_S):
                            await event.wait()
        except (TimeoutError, NatsError, OSError):
            return False
        return True

    # ------------------------------------------------------------------ out

    async def _open(self, cid: str, limit: int) -> None:
        """Learn the counter's owner; become it if nobody is yet (KV create)."""
        record = sign(self.key, {"cid": cid, "total": limit, "owner": self.node, "src": self.node})
        try:
            await self.kv.create(f"owner.{cid}", record)
            self.book.open(cid, limit, self.node)
            self.book.dirty.add(cid)
            log.info("budget.strict_owner", counter=cid, total=limit)
            return
        except KeyWrongLastSequenceError:
            pass
        entry = await self.kv.get(f"owner.{cid}")
        data = entry.value or b""
        owner = signer_of(data)
        verify = self.keys.get(owner) if owner else None
        body = opened(verify, data) if verify else None
        if owner is None or body is None or body.get("cid") != cid or body.get("owner") != owner:
            raise OSError(f"escrow owner record of {cid} does not verify")
        total = body.get("total")
        if type(total) is not int or total < 0:
            raise OSError(f"escrow owner record of {cid} has no total")
        self.book.open(cid, total, owner)

    def _ask(self, cid: str, need: int) -> None:
        esc = self.book.counter(cid)
        if esc is None or not self.nc.is_connected:
            return
        body = {"t": "want", "cid": cid, "need": need, "src": self.node}
        self._asking.add(cid)
        asyncio.get_running_loop().call_later(REASK_S, self._asking.discard, cid)
        with contextlib.suppress(NatsError, OSError):
            self._publish(WANT_SUBJECT, sign(self.key, body))

    def _publish(self, subject: str, data: bytes) -> None:
        task = asyncio.ensure_future(self._publish_now(subject, data))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish_now(self, subject: str, data: bytes) -> None:
        with contextlib.suppress(NatsError, TimeoutError, OSError):
            await self.nc.publish(subject, data)

    async def _send(self, grant: Grant) -> None:
        """Persist our replica first, then tell ``dst`` (or keep it to re-send)."""
        try:
            await self._persist(grant.cid)
        except (NatsError, TimeoutError, OSError):
            self._unsent.add((grant.cid, grant.dst))
            return
        body = {
            "t": "xfer",
            "cid": grant.cid,
            "total": grant.total,
            "owner": grant.owner,
            "src": grant.src,
            "dst": grant.dst,
            "sent": grant.cumulative,
        }
        await self.nc.publish(xfer_subject(grant.dst), sign(self.key, body))

    async def _persist(self, cid: str) -> None:
        esc = self.book.counter(cid)
        if esc is None:
            return
        self.book.dirty.discard(cid)
        state = {"src": self.node, "cid": cid, "state": esc.to_bytes().decode()}
        try:
            await self.kv.put(f"state.{cid}.{self.node}", sign(self.key, state))
        except BaseException:
            self.book.dirty.add(cid)
            raise

    async def _flush(self) -> None:
        for cid in list(self.book.dirty):
            await self._persist(cid)
        for cid, dst in list(self._unsent):
            grant = self.book.grant_for(cid, dst)
            self._unsent.discard((cid, dst))
            if grant is not None:
                await self._send(grant)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self.nc.is_connected:
                continue
            try:
                await self._flush()
            except (NatsError, TimeoutError, OSError) as exc:
                log.debug("budget.strict_flush_failed", error=type(exc).__name__)

    # ------------------------------------------------------------------ in

    async def _verified(self, msg: Msg) -> dict[str, Any] | None:
        src = signer_of(msg.data)
        if src is None or src == self.node:
            return None
        verify = self.keys.get(src)
        body = opened(verify, msg.data) if verify is not None else None
        if body is None or body.get("src") != src:
            log.warning("budget.strict_bad_signature", subject=msg.subject, src=src)
            return None
        return body

    async def _on_want(self, msg: Msg) -> None:
        body = await self._verified(msg)
        if body is None or body.get("t") != "want":
            return
        cid, need, dst = body.get("cid"), body.get("need"), body["src"]
        if not isinstance(cid, str) or type(need) is not int or need <= 0:
            return
        grant = self.book.give(cid, dst, self.book.share_for(cid, need))
        if grant is not None:
            log.debug("budget.strict_give", counter=cid, to=dst, cumulative=grant.cumulative)
            with contextlib.suppress(NatsError, TimeoutError, OSError):
                await self._send(grant)

    async def _on_xfer(self, msg: Msg) -> None:
        body = await self._verified(msg)
        if body is None or body.get("t") != "xfer" or body.get("dst") != self.node:
            return
        cid, total, owner, sent = (body.get(k) for k in ("cid", "total", "owner", "sent"))
        if not (isinstance(cid, str) and isinstance(owner, str)):
            return
        if type(total) is not int or type(sent) is not int or sent < 0:
            return
        if self.book.accept(cid, total, owner, body["src"], sent):
            event = self._arrived.get(cid)
            if event is not None:
                event.set()

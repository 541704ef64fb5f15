"""Every entry of a KV bucket that matches a pattern, read once and completely.

nats-py's ``KeyValue.watch`` marks "initial values done" with a ``None`` that can
come *before* the values: it asks the server for the consumer's pending count, and
when the server has already pushed every message (so zero are pending) but the
client has not yet run its callback for them, it concludes the bucket is empty.
A reader that stops at that marker then sees nothing. That is how ``audit verify``
once reported a node's key as missing, and how a starting node could miss its own
budget slots, a revocation or a node key.

A snapshot here asks the same question without the race: right after creating its
consumer it reads the consumer's state, where *delivered* plus *pending* is the
number of matching messages at that instant, whatever the client has processed.
Zero means empty; otherwise it reads until a message says none are left after it.
It needs only what a KV watch needs (create and inspect an ephemeral consumer),
so a node's NATS permissions stay as they are.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js import api
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

__all__ = ["KvItem", "kv_snapshot"]

FETCH_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class KvItem:
    key: str
    value: bytes  # empty with ``meta_only`` or for a delete marker
    revision: int  # the stream sequence
    deleted: bool  # a delete or purge marker (only returned when deletes are kept)


async def kv_snapshot(
    kv: KeyValue,
    pattern: str = ">",
    *,
    history: bool = False,
    ignore_deletes: bool = True,
    meta_only: bool = False,
) -> list[KvItem]:
    """The entries under ``pattern`` in stream order: the latest per key, or all revisions.

    Raises nats-py's errors (``NatsError``, ``TimeoutError``) when the bucket cannot be
    read; callers keep their own handling of an unreachable NATS.
    """
    js = kv._js  # the JetStream context behind the handle (docs/design.md, internals)
    prefix = f"$KV.{kv._name}."
    sub = await js.subscribe(
        prefix + pattern,
        stream=f"KV_{kv._name}",
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL if history else api.DeliverPolicy.LAST_PER_SUBJECT,
        headers_only=meta_only or None,
        inactive_threshold=30.0,
    )
    out: list[KvItem] = []
    try:
        info = await sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered else None
        left = (info.num_pending or 0) + (delivered or 0)
        while left > 0:
            msg = await sub.next_msg(timeout=FETCH_TIMEOUT_S)
            left = msg.metadata.num_pending or 0
            op = msg.header.get(KV_OP) if msg.header else None
            deleted = op in (KV_DEL, KV_PURGE)
            if deleted and ignore_deletes:
                continue
            out.append(
                KvItem(
                    key=msg.subject[len(prefix) :],
                    value=b"" if meta_only or deleted else (msg.data or b""),
                    revision=msg.metadata.sequence.stream,
                    deleted=deleted,
                )
            )
    finally:
        with contextlib.suppress(NatsError, TimeoutError, OSError):
            await sub.unsubscribe()
    return out

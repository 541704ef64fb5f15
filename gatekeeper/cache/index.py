"""Which keys ``BH_CACHE`` holds, known locally: a miss without a round trip.

Every node watches the bucket's keys (a meta-only watch: subjects and headers, never
the answers) and keeps the set. A lookup whose key is not in the set is a miss at once;
one whose key is in it reads the entry as before. The set is only trusted
(``ready``) once the watch has delivered the bucket's current keys, and it stops being
trusted when the watch breaks or NATS reconnects (until a new watch has caught up) or
when it would grow past ``max_keys``; untrusted, every lookup reads the bucket.

It can be wrong in two harmless directions:

* a key it holds that the bucket dropped (the bucket's TTL and size limit remove entries
  without telling watchers): the read finds nothing, and the key is dropped here too;
* a key another node stored a moment ago that the watch has not delivered yet: a miss
  where a hit was possible (one more upstream call, as if the request had come earlier).

It never makes an answer by itself. It also keeps, for each key, the bucket revision the
watch last delivered: a verified answer kept in memory (``cache.memory_bytes``) is served again
only while that revision is still the key's latest, so a delete, a purge, an overwrite
(a forged one too) or a watch that is not trusted sends the lookup back to the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from nats.errors import Error as NatsError
from nats.js.errors import Error as JsError
from nats.js.kv import KeyValue

__all__ = ["KeyIndex", "watch_index"]

log = structlog.get_logger("gatekeeper.cache")

DELETES = ("DEL", "PURGE")


class KeyIndex:
    """The keys the bucket holds, each with the latest revision the watch delivered
    (0: put by this node, not yet seen on the watch). Pure: the watch loop feeds it."""

    __slots__ = ("_full", "_keys", "max_keys", "ready", "restarts")

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._keys: dict[str, int] = {}
        self._full = False  # a key was not kept for want of room
        self.ready = False  # trusted: a key not in the set is not in the bucket
        self.restarts = 0  # watches begun (each starts from nothing)

    def __len__(self) -> int:
        return len(self._keys)

    def may_hold(self, key: str) -> bool:
        """False only when the bucket is known not to hold ``key``."""
        return not self.ready or key in self._keys

    def revision(self, key: str) -> int:
        """The key's latest revision seen on the watch; 0 when unknown or untrusted."""
        return self._keys.get(key, 0) if self.ready else 0

    def stored(self, key: str, revision: int = 0) -> None:
        """``key`` was put: by this node (``revision`` 0), or at ``revision`` on the watch."""
        held = self._keys.get(key)
        if held is not None:
            if revision > held:  # the watch delivers in order; an own put never lowers it
                self._keys[key] = revision
            return
        if len(self._keys) >= self.max_keys:  # too many to know: ask the bucket
            self._full, self.ready = True, False
            return
        self._keys[key] = revision

    def gone(self, key: str) -> None:
        """``key`` was deleted, purged, or not found when read."""
        self._keys.pop(key, None)

    def restart(self) -> None:
        """A new watch begins: untrusted until it has delivered the current keys."""
        self.ready = self._full = False
        self._keys.clear()
        self.restarts += 1

    def caught_up(self) -> None:
        self.ready = not self._full


async def watch_index(
    kv: KeyValue,
    index: KeyIndex,
    reconnects: Callable[[], int],
    *,
    check_every_s: float = 1.0,
) -> None:
    """Feed ``index`` from a meta-only watch of every key, forever; a new watch after an
    error or a reconnect (``reconnects()`` changed: a restarted server lost the consumer)."""
    while True:
        index.restart()
        seen = reconnects()
        watcher = None
        try:
            watcher = await kv.watchall(meta_only=True)
            feed = asyncio.ensure_future(_feed(kv, watcher, index))
            try:
                while not feed.done() and reconnects() == seen:
                    await asyncio.wait({feed}, timeout=check_every_s)
            finally:
                feed.cancel()
                with contextlib.suppress(asyncio.CancelledError, NatsError, JsError, OSError):
                    await feed
        except (NatsError, JsError, TimeoutError, OSError) as exc:
            log.debug("cache.index_watch_restart", error=type(exc).__name__)
            await asyncio.sleep(check_every_s)
        finally:  # however the watch ended (a bug, cancelled): the set is not trusted now
            index.restart()
            if watcher is not None:
                with contextlib.suppress(NatsError, JsError, TimeoutError, OSError):
                    await watcher.stop()  # type: ignore[no-untyped-call]


async def _feed(kv: KeyValue, watcher: KeyValue.KeyWatcher, index: KeyIndex) -> None:
    """Caught up at the entry that says none are pending after it. nats-py's own marker
    (``None``) can come before the values (gatekeeper/bus/kv_snapshot.py): believed only
    when it ends what came, or when the bucket holds nothing at all."""
    seen = False
    async for entry in watcher:
        if entry is None:
            if seen or (await kv.status()).values == 0:
                index.caught_up()
            continue
        seen = True
        if entry.operation in DELETES:
            index.gone(entry.key)
        else:
            index.stored(entry.key, entry.revision or 0)
        if entry.delta == 0:
            index.caught_up()

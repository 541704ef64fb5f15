"""The cache key index on a real nats-server: loaded, followed, and distrusted on reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import nats
from nacl.signing import SigningKey
from nats.js.kv import KeyValue

from gatekeeper.bus.acks import AckedPublisher
from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.bus.streams import CACHE_BUCKET, ensure_streams
from gatekeeper.cache.entry import CachedAnswer
from gatekeeper.cache.index import KeyIndex, watch_index
from gatekeeper.cache.memory import AnswerMemory
from gatekeeper.cache.store import CacheStore
from gatekeeper.cli import main
from gatekeeper.providers.base import Usage
from gatekeeper.subjects import subject_token, tenant_token


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def bucket(url: str) -> AsyncIterator[KeyValue]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        yield await js.key_value(CACHE_BUCKET)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def watching(kv: KeyValue, index: KeyIndex, reconnects: list[int]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(watch_index(kv, index, lambda: reconnects[0], check_every_s=0.05))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_index_loads_follows_and_restarts(nats_server: EmbeddedNats) -> None:
    """Keys already there are loaded before it is trusted; another writer's put and delete
    are followed; a reconnect makes it reload (untrusted meanwhile)."""
    async with bucket(nats_server.url) as kv, bucket(nats_server.url) as other:
        await kv.put("acme.m.old", b"{}\nx")
        index = KeyIndex(100)
        reconnects = [0]
        async with watching(kv, index, reconnects):
            await until(lambda: index.ready)
            assert index.may_hold("acme.m.old") and not index.may_hold("acme.m.new")
            await other.put("acme.m.new", b"{}\ny")  # another node stores an answer
            await until(lambda: index.may_hold("acme.m.new"))
            await other.delete("acme.m.old")
            await until(lambda: not index.may_hold("acme.m.old"))
            await other.purge("acme.m.new")
            await until(lambda: not index.may_hold("acme.m.new"))
            await other.put("acme.m.back", b"{}\nz")
            await until(lambda: index.may_hold("acme.m.back"))
            before = index.restarts
            reconnects[0] = 1  # the client reconnected: the server may have lost the watch
            await until(lambda: index.restarts > before and index.ready)  # a new watch, loaded
            assert index.may_hold("acme.m.back") and not index.may_hold("acme.m.old")


async def test_a_store_reads_only_what_may_be_there(nats_server: EmbeddedNats) -> None:
    """With the index trusted, a key it lacks is a miss without a read (here: a value
    planted behind the index's back is not even read); a key the bucket dropped without
    telling watchers is read once, found missing, and then known to be gone; what this
    store puts is known at once."""
    key = SigningKey.generate()
    async with bucket(nats_server.url) as kv:
        index = KeyIndex(100)
        store = CacheStore(kv, None, "n1", key, lambda node: (key.verify_key,), index=index)
        index.caught_up()  # trusted and empty, no watch: only the store feeds it
        answer = CachedAnswer("m", Usage(3, 2), body=b'{"ok": true}')
        await kv.put("acme.m.planted", b"{}\ngarbage")  # unknown to the index
        assert await store.get("acme.m.planted", "acme") is None
        assert not index.may_hold("acme.m.planted")
        assert await store.put("acme.m.k", "acme", answer, 60)
        assert index.may_hold("acme.m.k")
        got = await store.get("acme.m.k", "acme")
        assert got is not None and got.body == answer.body
        index.stored("acme.m.dropped")  # e.g. evicted by the bucket's size limit since
        assert await store.get("acme.m.dropped", "acme") is None
        assert not index.may_hold("acme.m.dropped")


async def test_past_max_keys_the_index_is_not_trusted(nats_server: EmbeddedNats) -> None:
    """Three keys, room for two: it never says a key is missing; one with room does."""
    async with bucket(nats_server.url) as kv:
        for n in range(3):
            await kv.put(f"acme.m.{n}", b"{}\nx")
        small, roomy = KeyIndex(2), KeyIndex(10)
        async with watching(kv, small, [0]), watching(kv, roomy, [0]):
            await until(lambda: roomy.ready and len(small) == 2)
            await asyncio.sleep(0.2)  # the small one's watch is past its third key too
            assert not small.ready and small.may_hold("acme.m.unknown")
            assert not roomy.may_hold("acme.m.unknown")


class Watched(KeyIndex):
    """A KeyIndex that notes, each time it becomes trusted, whether it held ``key``."""

    def __init__(self, key: str) -> None:
        super().__init__(100)
        self.key = key
        self.trusted_with: list[bool] = []

    def caught_up(self) -> None:
        super().caught_up()
        if self.ready:
            self.trusted_with.append(self.may_hold(self.key))


async def test_it_is_never_trusted_before_the_keys_are_in(nats_server: EmbeddedNats) -> None:
    """nats-py's "caught up" marker can come before the values (bus/kv_snapshot.py): an
    index that believed it would call a stored key absent. Many fresh watches of a
    one-key bucket: each time one becomes trusted, it already holds the key."""
    async with bucket(nats_server.url) as kv:
        await kv.put("acme.m.only", b"{}\nx")
        seen: list[bool] = []
        for _ in range(200):
            index = Watched("acme.m.only")
            async with watching(kv, index, [0]):
                await until(lambda index=index: index.ready)
            seen += index.trusted_with
    assert seen and all(seen), f"trusted without the key {seen.count(False)} times"


class CountingKV:
    """The bucket as the store sees it, counting the reads."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv, self.reads = kv, 0

    async def get(self, key: str) -> KeyValue.Entry:
        self.reads += 1
        return await self.kv.get(key)

    async def put(self, key: str, value: bytes) -> int:
        return await self.kv.put(key, value)


async def test_a_kept_answer_is_served_without_a_read_only_while_it_is_the_latest(
    nats_server: EmbeddedNats,
) -> None:
    """Stored here: once the watch has delivered the store's revision, hits read nothing.
    An overwrite (here a forgery), a delete, `gatekeeper cache purge` and a watch restart
    each send the next lookup back to the bucket, and a forgery is never served."""
    key = SigningKey.generate()
    name = f"{tenant_token('acme')}.{subject_token('m')}.{1:064x}"
    answer = CachedAnswer("m", Usage(3, 2), body=b'{"ok": true}')
    nc = await nats.connect(nats_server.url)
    acks = AckedPublisher(nc)  # stores acked as the gateway's are: the ack names the revision
    await acks.start()
    async with bucket(nats_server.url) as kv:
        counting = CountingKV(kv)
        index, reconnects = KeyIndex(100), [0]
        store = CacheStore(
            counting,  # type: ignore[arg-type]
            None,
            "n1",
            key,
            lambda node: (key.verify_key,),
            index=index,
            memory=AnswerMemory(1 << 20, recheck_s=600),
            acks=acks,
            subject=f"$KV.{CACHE_BUCKET}.",
        )

        async def store_and_wait() -> None:
            seen = index.revision(name)
            assert await store.put(name, "acme", answer, 60)
            await until(lambda: index.revision(name) > seen)  # the watch has seen the store

        async with watching(kv, index, reconnects):
            await until(lambda: index.ready)
            await store_and_wait()
            for _ in range(3):
                got = await store.get(name, "acme")
                assert got is not None and got.body == answer.body
            assert counting.reads == 0
            assert await store.get(name, "globex") is None  # another tenant: read, refused
            assert counting.reads == 1

            await store_and_wait()
            before = index.revision(name)
            await kv.put(name, b'{"v": 1}\nforged')  # a NATS writer overwrites it
            await until(lambda: index.revision(name) > before)
            assert await store.get(name, "acme") is None  # read, rejected, not served
            assert counting.reads == 2

            await store_and_wait()
            await kv.delete(name)
            await until(lambda: not index.may_hold(name))
            assert await store.get(name, "acme") is None

            await store_and_wait()
            cli = ["cache", "purge", "--nats-url", nats_server.url, "--tenant", "acme"]
            assert await asyncio.to_thread(main, cli) == 0  # the CLI runs its own loop
            await until(lambda: not index.may_hold(name))
            assert await store.get(name, "acme") is None

            await store_and_wait()
            reads = counting.reads
            index.restart()  # as a broken watch or a reconnect does: untrusted, read the bucket
            assert (await store.get(name, "acme")) is not None and counting.reads == reads + 1
            reconnects[0] = 1  # a new watch, caught up again
            await until(lambda: index.revision(name) != 0)
            assert (await store.get(name, "acme")) is not None and counting.reads == reads + 1

            other = AnswerMemory(
                1 << 20, recheck_s=600
            )  # the gateway's way: sealed, published, no task
            store.memory = other
            ack = store.put_soon(name, "acme", answer, 60)
            assert ack is not None and await ack > index.revision(name) > 0
            await until(lambda: index.revision(name) == ack.result())
            assert len(other) == 1  # kept when the ack came
            got = await store.get(name, "acme")
            assert got is not None and got.body == answer.body
            assert counting.reads == reads + 1
    await acks.stop()
    await nc.close()


async def test_a_stalled_watch_keeps_a_deleted_answer_for_at_most_recheck_s(
    nats_server: EmbeddedNats,
) -> None:
    """An index that hears nothing more (here: fed by hand, never told of the delete) lets
    the memory serve the deleted answer only until ``recheck_s`` has passed since it was
    stored; the next hit reads the bucket, finds nothing, and the key is known gone."""
    key = SigningKey.generate()
    name = f"{tenant_token('acme')}.{subject_token('m')}.{2:064x}"
    answer = CachedAnswer("m", Usage(3, 2), body=b'{"ok": true}')
    now = [1_000_000.0]
    nc = await nats.connect(nats_server.url)
    acks = AckedPublisher(nc)
    await acks.start()
    try:
        async with bucket(nats_server.url) as kv:
            index = KeyIndex(100)
            index.caught_up()
            store = CacheStore(
                kv,
                None,
                "n1",
                key,
                lambda node: (key.verify_key,),
                clock=lambda: now[0],
                index=index,
                memory=AnswerMemory(1 << 20, recheck_s=1.0),
                acks=acks,
                subject=f"$KV.{CACHE_BUCKET}.",
            )
            ack = store.put_soon(name, "acme", answer, 60)
            assert ack is not None
            index.stored(name, await ack)  # what the watch would have said, once
            await kv.delete(name)  # the watch that would tell it is stalled
            now[0] += 0.5
            assert await store.get(name, "acme") is not None  # within recheck_s: kept
            now[0] += 0.5
            assert await store.get(name, "acme") is None  # read again: deleted
            assert not index.may_hold(name)
    finally:
        await acks.stop()
        await nc.close()

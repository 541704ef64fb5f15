"""A KV snapshot on a real nats-server is complete, ordered and never ends early."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import nats
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.bus.kv_snapshot import kv_snapshot


@contextlib.asynccontextmanager
async def bucket(url: str, history: int = 5) -> AsyncIterator[KeyValue]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        yield await js.create_key_value(KeyValueConfig(bucket="SNAP", history=history))
    finally:
        await nc.close()


async def watch_snapshot(kv: KeyValue) -> list[str]:
    """What nats-py's own watch yields up to its "initial values done" marker."""
    keys = []
    watcher = await kv.watch(">", ignore_deletes=True)
    try:
        async for entry in watcher:
            if entry is None:
                break
            keys.append(entry.key)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return keys


async def test_an_empty_bucket_gives_nothing(nats_server: EmbeddedNats) -> None:
    async with bucket(nats_server.url) as kv:
        assert await kv_snapshot(kv) == []


async def test_a_single_key_is_found_every_time(nats_server: EmbeddedNats) -> None:
    """The case nats-py's watch marker can get wrong: one message, delivered before the
    client asks how many are pending. Every one of many snapshots must see it."""
    async with bucket(nats_server.url) as kv:
        await kv.put("nodes.n1.key.1", b"registration")
        found = [len(await kv_snapshot(kv, "nodes.*.key.*")) for _ in range(200)]
        watched = [len(await watch_snapshot(kv)) for _ in range(200)]
    assert found == [1] * 200
    print(f"\nnats-py watch came back empty {watched.count(0)} times in 200")


async def test_latest_per_key_or_every_revision_in_stream_order(
    nats_server: EmbeddedNats,
) -> None:
    async with bucket(nats_server.url) as kv:
        await kv.put("a", b"1")
        await kv.put("b", b"1")
        await kv.put("a", b"2")
        latest = await kv_snapshot(kv)
        every = await kv_snapshot(kv, history=True)
    assert [(i.key, i.value) for i in latest] == [("b", b"1"), ("a", b"2")]
    assert [(i.key, i.value) for i in every] == [("a", b"1"), ("b", b"1"), ("a", b"2")]
    assert [i.revision for i in every] == sorted(i.revision for i in every)


async def test_deletes_are_left_out_unless_asked_for(nats_server: EmbeddedNats) -> None:
    async with bucket(nats_server.url) as kv:
        await kv.put("kept", b"v")
        await kv.put("gone", b"v")
        await kv.delete("gone")
        await kv.put("purged", b"v")
        await kv.purge("purged")
        plain = await kv_snapshot(kv)
        marked = await kv_snapshot(kv, ignore_deletes=False)
    assert [i.key for i in plain] == ["kept"]
    assert [(i.key, i.deleted, i.value) for i in marked] == [
        ("kept", False, b"v"),
        ("gone", True, b""),
        ("purged", True, b""),
    ]


async def test_a_pattern_selects_and_meta_only_drops_values(nats_server: EmbeddedNats) -> None:
    async with bucket(nats_server.url) as kv:
        await kv.put("t1.m.x", b"big value")
        await kv.put("t1.n.y", b"v")
        await kv.put("t2.m.z", b"v")
        keys = await kv_snapshot(kv, "t1.*.*", meta_only=True)
    assert [(i.key, i.value) for i in keys] == [("t1.m.x", b""), ("t1.n.y", b"")]


async def test_thousands_of_keys_all_arrive(nats_server: EmbeddedNats) -> None:
    async with bucket(nats_server.url, history=1) as kv:
        for n in range(3000):
            await kv.put(f"k.{n}", str(n).encode())
        items = await kv_snapshot(kv, "k.*")
    assert sorted(int(i.value) for i in items) == list(range(3000))

"""BH_CACHE on a real nats-server: `gatekeeper cache purge`, bounded size, oldest evicted first."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js import api

from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.bus.kv_snapshot import kv_snapshot
from gatekeeper.bus.streams import CACHE_BUCKET, CACHE_OBJECTS, CacheBuckets, ensure_streams
from gatekeeper.cache.policy import tenant_prefix
from gatekeeper.cli import main
from gatekeeper.subjects import subject_token, tenant_token

MIB = 1024 * 1024


def key(tenant: str, model: str, n: int) -> str:
    return f"{tenant_token(tenant)}.{subject_token(model)}.{n:064x}"


async def seed(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        kv = await js.key_value(CACHE_BUCKET)
        for tenant, model, n in [("acme", "m1", 1), ("acme", "m1", 2), ("acme", "m2", 3)]:
            await kv.put(key(tenant, model, n), b"{}\nanswer")
        await kv.put(key("globex", "m1", 4), b"{}\nanswer")
        await kv.put(key("acme", "m2", 5), b"{}\n")  # its payload is in the object store
        objects = await js.object_store(CACHE_OBJECTS)
        await objects.put(key("acme", "m2", 5), b"x" * 1000)
        await objects.put(key("globex", "m1", 6), b"y" * 1000)
    finally:
        await nc.close()


async def remaining(url: str) -> tuple[set[str], set[str]]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        keys = {i.key for i in await kv_snapshot(await js.key_value(CACHE_BUCKET))}
        listed = await (await js.object_store(CACHE_OBJECTS)).list(ignore_deletes=True)
        return keys, {o.name for o in listed}
    finally:
        await nc.close()


def test_purge_by_tenant_and_model(
    nats_server: EmbeddedNats, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the named tenant's (model's) entries and payloads go; the count is printed."""
    url = nats_server.url
    asyncio.run(seed(url))
    cli = ["cache", "purge", "--nats-url", url, "--tenant", "acme"]
    assert main([*cli, "--model", "m1"]) == 0
    assert "purged 2 cached answers of tenant 'acme', model 'm1'" in capsys.readouterr().out
    keys, objects = asyncio.run(remaining(url))
    assert keys == {key("acme", "m2", 3), key("acme", "m2", 5), key("globex", "m1", 4)}
    assert len(objects) == 2
    assert main(cli) == 0
    assert "purged 2 cached answers of tenant 'acme' (1 large payloads)" in capsys.readouterr().out
    assert asyncio.run(remaining(url)) == ({key("globex", "m1", 4)}, {key("globex", "m1", 6)})
    assert main(cli) == 0  # nothing left: still fine
    assert "purged 0 cached answers" in capsys.readouterr().out
    assert tenant_prefix("acme", "m1") == "acme.m1.*"


def test_bucket_is_bounded_and_evicts_the_oldest(nats_server: EmbeddedNats) -> None:
    """max_bytes is set on KV_BH_CACHE with discard-old: past it the oldest answers go first."""

    async def run() -> tuple[api.StreamConfig, list[str], int]:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            await ensure_streams(js, cache=CacheBuckets(ttl_s=60, max_bytes=MIB))
            kv = await js.key_value(CACHE_BUCKET)
            for n in range(40):  # 40 × 64 KiB: 2.5 MiB into a 1 MiB bucket
                await kv.put(key("acme", "m", n), b"z" * 64 * 1024)
            info = await js.stream_info(f"KV_{CACHE_BUCKET}")
            return info.config, [i.key for i in await kv_snapshot(kv)], info.state.bytes
        finally:
            await nc.close()

    config, keys, size = asyncio.run(run())
    assert config.max_bytes == MIB and config.discard == api.DiscardPolicy.OLD
    assert config.max_age == 60
    kept = sorted(int(k.rsplit(".", 1)[1], 16) for k in keys)
    assert kept == list(range(40 - len(kept), 40)) and 0 < len(kept) < 40  # newest, contiguous
    assert size <= MIB

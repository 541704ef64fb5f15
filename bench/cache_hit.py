"""Micro-bench: the result cache's hit path against a real nats-server.

Measures, per request, what the cache adds: the key (canonical JSON + SHA-256), the
KV get, and opening the signed entry (Ed25519 verify + payload digest). Run:

    nice -n 10 .venv/bin/python bench/cache_hit.py
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from nacl.signing import SigningKey

from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.bus.streams import CACHE_BUCKET, CACHE_OBJECTS, ensure_streams
from gatekeeper.cache.entry import CachedAnswer
from gatekeeper.cache.policy import cache_key
from gatekeeper.cache.store import CacheStore
from gatekeeper.providers.base import Usage

SECRET = b"bench-secret-of-32-bytes........."
BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "What is the capital of France? " * 20}],
    "temperature": 0,
    "max_tokens": 256,
}
REPLY = b'{"id":"chatcmpl-x","choices":[{"message":{"content":"' + b"Paris. " * 100 + b'"}}]}'
N = 2000


async def main(directory: Path) -> None:
    import nats

    server = EmbeddedNats(directory, name="bench-cache")
    server.start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_streams(js)
        key = SigningKey.generate()
        store = CacheStore(
            await js.key_value(CACHE_BUCKET),
            await js.object_store(CACHE_OBJECTS),
            "bench",
            key,
            lambda node: (key.verify_key,),
        )
        kv_key = cache_key(SECRET, "acme", "chat", "gpt-4o-mini", False, BODY)
        await store.put(kv_key, "acme", CachedAnswer("gpt-4o-mini", Usage(7, 5), REPLY), 600)
        for label, get in (
            ("hit (key + KV get + verify)", True),
            ("miss (key + KV get)", False),
        ):
            times = []
            for _ in range(N):
                t0 = time.perf_counter()
                k = cache_key(SECRET, "acme", "chat", "gpt-4o-mini", False, BODY)
                answer = await store.get(k if get else k + "0", "acme")
                times.append(time.perf_counter() - t0)
                assert (answer is not None) is get
            times.sort()
            p50, p99 = statistics.median(times), times[int(N * 0.99)]
            print(f"{label:30s} p50 {p50 * 1e6:7.0f} µs   p99 {p99 * 1e6:7.0f} µs   (n={N})")
        t0 = time.perf_counter()
        for _ in range(N):
            cache_key(SECRET, "acme", "chat", "gpt-4o-mini", False, BODY)
        print(f"{'key alone':30s} mean {(time.perf_counter() - t0) / N * 1e6:6.1f} µs")
        await nc.close()
    finally:
        server.stop()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))

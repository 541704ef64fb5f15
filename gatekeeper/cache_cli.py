"""``gatekeeper cache purge --tenant T [--model M]``: drop a tenant's cached answers.

Run with operator credentials (a node user may not purge a stream): one
``STREAM.PURGE`` of ``KV_BH_CACHE`` filtered by the key prefix
``<tenant token>.<model token | *>.*`` (docs/capacity.md), then the matching payloads
in ``BH_CACHE_OBJ``. A stream purge tells no watcher, so a KV purge marker then follows
for each key that was listed: the nodes' key indexes drop those keys, and no gateway
serves them again from the answers it keeps in memory (``cache/memory.py``). Prints how
many entries went. Entries other nodes are writing at the same moment may land after the
purge; they are the tenant's new answers.
"""

from __future__ import annotations

import argparse
from typing import Any

from nats.aio.client import Client
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from gatekeeper.bus.kv_snapshot import kv_snapshot
from gatekeeper.bus.streams import CACHE_BUCKET, CACHE_OBJECTS
from gatekeeper.cache.policy import tenant_prefix

__all__ = ["add_cache_parser", "purge"]


def _covered(name: str, tenant_tok: str, model_tok: str) -> bool:
    """Whether an object named by a KV key lies under the purged prefix (pure)."""
    parts = name.split(".")
    return len(parts) == 3 and parts[0] == tenant_tok and model_tok in ("*", parts[1])


async def _keys(kv: KeyValue, prefix: str) -> list[str]:
    """The live keys under a subject filter (nats-py's ``keys(filters=)`` matches substrings)."""
    return [item.key for item in await kv_snapshot(kv, prefix, meta_only=True)]


async def purge(nc: Client, args: argparse.Namespace) -> int:
    js = nc.jetstream()
    prefix = tenant_prefix(args.tenant, args.model or None)
    tenant_tok, model_tok, _ = prefix.split(".")
    kv = await js.key_value(CACHE_BUCKET)
    keys = await _keys(kv, prefix)
    await js.purge_stream(f"KV_{CACHE_BUCKET}", subject=f"$KV.{CACHE_BUCKET}.{prefix}")
    for name in keys:  # after the stream purge, which would drop the markers too
        await kv.purge(name)
    objects = 0
    try:
        store = await js.object_store(CACHE_OBJECTS)
        listed = await store.list(ignore_deletes=True)
    except NotFoundError:  # no objects (or no object store): nothing to drop
        listed = []
    for info in listed:
        if _covered(info.name, tenant_tok, model_tok):
            await store.delete(info.name)
            objects += 1
    what = f"tenant {args.tenant!r}" + (f", model {args.model!r}" if args.model else "")
    print(f"purged {len(keys)} cached answers of {what} ({objects} large payloads)")
    return 0


def add_cache_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], with_nats: Any, run: Any
) -> None:
    cache = sub.add_parser("cache", help="the result cache in BH_CACHE (operator)")
    csub = cache.add_subparsers(dest="cache_command", required=True)
    p = with_nats(csub.add_parser("purge", help="delete a tenant's (or model's) cached answers"))
    p.add_argument("--tenant", required=True)
    p.add_argument("--model", default="", help="only this routed model's answers")
    p.set_defaults(func=run(purge))

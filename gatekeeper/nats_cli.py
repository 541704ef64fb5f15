"""``gatekeeper nats …``: provision JetStream as the operator, make nkey pairs.

    gatekeeper nats provision [--replicas 3]   create the streams and KV buckets
    gatekeeper nats check                      what a node user may do: verify only
    gatekeeper nats nkey --out FILE            a user nkey pair: seed to FILE (0600)

Gateways that connect as a *node* user (deploy/nats/accounts.conf) run with
``nats.provision: false`` and only check that the streams exist; the operator
runs ``provision`` once (and after an upgrade that adds a stream).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import nkeys
from nats.aio.client import Client

from gatekeeper.bus.streams import ensure_streams


def create_user_nkey(path: Path) -> str:
    """Write a new user nkey seed to ``path`` (0600, never overwritten); return the public key."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed + b"\n")
    return public_nkey(seed)


def public_nkey(seed: bytes) -> str:
    kp = nkeys.from_seed(bytearray(seed.strip()))
    try:
        return bytes(kp.public_key).decode()
    finally:
        kp.wipe()


async def provision(nc: Client, args: argparse.Namespace) -> int:
    """Create what is missing (streams, buckets); fail, naming them, on incompatible ones.

    The routing matrix is not seeded here: nodes serve their YAML models until the
    operator publishes one with ``gatekeeper config push``."""
    for line in await ensure_streams(nc.jetstream(), args.replicas):
        print(line)
    return 0


async def check(nc: Client, args: argparse.Namespace) -> int:
    for line in await ensure_streams(nc.jetstream(), args.replicas, create=False):
        print(line)
    return 0


def nkey(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        public = create_user_nkey(out)
    except FileExistsError:
        print(f"error: {out} exists (never overwritten)")
        return 1
    print(public)
    return 0


def add_nats_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], with_nats: Any, run: Any
) -> None:
    nats = sub.add_parser("nats", help="provision JetStream (operator), make nkeys")
    nsub = nats.add_subparsers(dest="nats_command", required=True)
    p = with_nats(nsub.add_parser("provision", help="create the streams and KV buckets"))
    p.add_argument("--replicas", type=int, default=1)
    p.set_defaults(func=run(provision))
    p = with_nats(nsub.add_parser("check", help="verify the streams exist (any user)"))
    p.add_argument("--replicas", type=int, default=1)
    p.set_defaults(func=run(check))
    p = nsub.add_parser("nkey", help="create a user nkey pair: seed to --out, print public")
    p.add_argument("--out", required=True, help="seed file to create (mode 0600)")
    p.set_defaults(func=nkey)

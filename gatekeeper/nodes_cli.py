"""``gatekeeper nodes …``: the node key registry in BH_CONFIG.

nodes register --node N --pub k4.public.… [--operator-key FILE]
    Register (or re-key) node N with public key P, signed by the operator key.
nodes rotate --node N [--key-file PATH]
    Give node N a new node key, registered with a rotation signed by its old key;
    the old key file is kept as ``node.key.<n>``. Run it while the node is stopped.
nodes list
    Every registered node with its key history.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from nacl.signing import VerifyKey
from nats.aio.client import Client

from gatekeeper.admin_cli import _kv, _run, _signing, _with_nats, operator_key
from gatekeeper.auth.node_key import load_or_create_node_key
from gatekeeper.auth.paserk import decode_public, pid
from gatekeeper.bus.node_keys import load_registry, registration_value
from gatekeeper.config import NODE_ID, load_config
from gatekeeper.control.envelope import ControlValueRejected
from gatekeeper.control.operator import load_operator_key, trusted_operators
from gatekeeper.control.registry import NodeKeyRegistry
from gatekeeper.errors import ConfigError

__all__ = ["add_nodes_parser"]


async def _registry(
    nc: Client, args: argparse.Namespace, signer: VerifyKey | None
) -> NodeKeyRegistry:
    config = load_config(getattr(args, "config", None))
    operators = trusted_operators(config.control.operator_keys)
    if signer is None and not operators:  # no config here: the operator key this machine holds
        signer = operator_key(args).verify_key
    if signer is not None:
        operators.setdefault(pid(bytes(signer)), signer)
    return await load_registry(await _kv(nc), operators)


def _node(text: str) -> str:
    if not NODE_ID.fullmatch(text):
        raise argparse.ArgumentTypeError("node ids are [A-Za-z0-9_-]{1,64}")
    return text


async def _write(nc: Client, registry: NodeKeyRegistry, key: str, value: bytes) -> None:
    try:
        registry.add(key, value)  # the check every node applies
    except ControlValueRejected as exc:
        raise ConfigError(f"{key}: refused: {exc}") from None
    kv = await _kv(nc)
    await kv.create(key, value)


async def register(nc: Client, args: argparse.Namespace) -> int:
    signer = operator_key(args)
    public = VerifyKey(decode_public(args.pub))
    registry = await _registry(nc, args, signer.verify_key)
    current = registry.current_entry(args.node)
    if current is not None and current.public_key == bytes(public):
        print(f"node {args.node} already has this key (entry {current.n})")
        return 0
    key, value = registration_value(signer, registry, args.node, public, time.time())
    await _write(nc, registry, key, value)
    print(f"registered {key} ({pid(bytes(public))})")
    return 0


async def rotate(nc: Client, args: argparse.Namespace) -> int:
    config = load_config(getattr(args, "config", None))
    path = Path(args.key_file or Path(config.state_dir) / "nodes" / args.node / "node.key")
    old = load_operator_key(path)  # the same k4.secret file format; never created here
    registry = await _registry(nc, args, None)
    current = registry.current_entry(args.node)
    if current is None or current.kid != pid(bytes(old.verify_key)):
        raise ConfigError(f"node {args.node}: {path} is not its current registered key")
    staged = path.with_name(f".{path.name}.next")
    new = load_or_create_node_key(staged)  # on disk (0600) before it is registered
    key, value = registration_value(old, registry, args.node, new.verify_key, time.time())
    await _write(nc, registry, key, value)
    backup = path.with_name(f"{path.name}.{current.n}")
    os.replace(path, backup)
    os.replace(staged, path)
    print(f"rotated {args.node}: {key} ({pid(bytes(new.verify_key))}); old key kept in {backup}")
    return 0


async def list_nodes(nc: Client, args: argparse.Namespace) -> int:
    registry = await _registry(nc, args, None)
    for node in sorted(registry.nodes()):
        for entry in registry.history(node):
            print(f"{node}\t{entry.n}\t{entry.valid_from:.3f}\t{entry.kid}")
    return 0


def add_nodes_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    nodes = sub.add_parser("nodes", help="the node key registry in BH_CONFIG")
    nsub = nodes.add_subparsers(dest="nodes_command", required=True)
    p = _signing(nsub.add_parser("register", help="register a node's public key (operator)"))
    p.add_argument("--node", required=True, type=_node)
    p.add_argument("--pub", required=True, metavar="k4.public.…")
    p.set_defaults(func=_run(register))
    p = _with_nats(nsub.add_parser("rotate", help="new node key, signed by the old one"))
    p.add_argument("--node", required=True, type=_node)
    p.add_argument("--key-file", metavar="PATH", help="default: <state_dir>/nodes/N/node.key")
    p.set_defaults(func=_run(rotate))
    _with_nats(nsub.add_parser("list", help="registered nodes and key history")).set_defaults(
        func=_run(list_nodes)
    )

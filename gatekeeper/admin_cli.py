"""Operator commands that talk to NATS: keys revoke/trust, config, streams, audit.

The NATS URL comes from ``--nats-url``, else ``$GATEKEEPER_NATS_URL``, else the URL
a running embedded server wrote to ``<state_dir>/nats.url``, else the config's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import KeyDeletedError, KeyNotFoundError

from gatekeeper.audit.verify import read_jsonl, verify_records
from gatekeeper.auth.paserk import KeyFormatError, decode_public
from gatekeeper.bus.config_watch import (
    MATRIX_KEY,
    issuer_key,
    parse_matrix_value,
    revocation_key,
    revocation_value,
)
from gatekeeper.bus.connect import NatsUnavailable, connect
from gatekeeper.bus.streams import (
    AUDIT,
    CONFIG_BUCKET,
    StreamMismatch,
    ensure_streams,
    subject_token,
)
from gatekeeper.config import ConfigError, load_config
from gatekeeper.routing.matrix import model_dict

EMBEDDED_URL_FILE = "nats.url"
CONNECT_TIMEOUT_S = 5.0  # the whole connect, retries included

Command = Callable[[Client, argparse.Namespace], Awaitable[int]]


def resolve_nats_url(args: argparse.Namespace) -> str:
    if getattr(args, "nats_url", None):
        return str(args.nats_url)
    if os.environ.get("GATEKEEPER_NATS_URL"):
        return os.environ["GATEKEEPER_NATS_URL"]
    config = load_config(getattr(args, "config", None))
    written = Path(config.state_dir) / EMBEDDED_URL_FILE
    if config.nats.embedded and written.exists():
        return written.read_text().strip()
    if config.nats.embedded:
        raise NatsUnavailable("no NATS URL: start the gateway (make run) or pass --nats-url")
    return config.nats.url


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def main() -> int:
            url = resolve_nats_url(args)
            try:  # connect() retries an unreachable server forever; a command must not hang
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    nc = await connect(url, name="gatekeeper-cli")
            except TimeoutError:
                raise NatsUnavailable(
                    f"cannot connect to NATS at {url}: no answer in {CONNECT_TIMEOUT_S:g}s"
                ) from None
            try:
                return await command(nc, args)
            finally:
                await nc.close()

        try:
            return asyncio.run(main())
        except (NatsUnavailable, ConfigError, StreamMismatch, KeyFormatError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


async def _kv(nc: Client) -> Any:
    js = nc.jetstream()
    await ensure_streams(js)
    return await js.key_value(CONFIG_BUCKET)


# ---------------------------------------------------------------- keys


async def revoke(nc: Client, args: argparse.Namespace) -> int:
    kv = await _kv(nc)
    at = datetime.now(UTC).isoformat(timespec="seconds")
    await kv.put(revocation_key(args.key_id), revocation_value(args.key_id, args.reason, at))
    print(f"revoked {args.key_id}")
    return 0


async def unrevoke(nc: Client, args: argparse.Namespace) -> int:
    kv = await _kv(nc)
    await kv.delete(revocation_key(args.key_id))
    print(f"unrevoked {args.key_id}")
    return 0


async def revoked(nc: Client, args: argparse.Namespace) -> int:
    kv = await _kv(nc)
    watcher = await kv.watch("revoked.>", ignore_deletes=True)
    try:
        async for entry in watcher:
            if entry is None:
                break
            rec = orjson.loads(entry.value or b"{}")
            print(f"{rec.get('sub')}\t{rec.get('at', '')}\t{rec.get('reason', '')}")
    finally:
        await watcher.stop()
    return 0


async def trust(nc: Client, args: argparse.Namespace) -> int:
    decode_public(args.public_key)
    kv = await _kv(nc)
    await kv.put(issuer_key(args.public_key), args.public_key.encode())
    print(f"trusted {issuer_key(args.public_key).removeprefix('issuers.')}")
    return 0


async def untrust(nc: Client, args: argparse.Namespace) -> int:
    kv = await _kv(nc)
    await kv.delete(f"issuers.{args.kid}")
    print(f"untrusted {args.kid}")
    return 0


# ---------------------------------------------------------------- config


async def config_show(nc: Client, args: argparse.Namespace) -> int:
    kv = await _kv(nc)
    try:
        entry = await kv.get(MATRIX_KEY)
    except (KeyNotFoundError, KeyDeletedError):
        print(f"error: no {MATRIX_KEY} in {CONFIG_BUCKET} yet", file=sys.stderr)
        return 1
    try:
        doc = orjson.loads(entry.value or b"{}")
    except orjson.JSONDecodeError:
        print(
            f"error: {MATRIX_KEY} (revision {entry.revision}) is not JSON; nodes reject it "
            "and keep their matrix: replace it with 'gatekeeper config push FILE'",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


async def config_push(nc: Client, args: argparse.Namespace) -> int:
    """Validate a config file's models and write them to BH_CONFIG."""
    config = load_config(args.file)
    value = orjson.dumps({"models": [model_dict(m) for m in config.models]})
    parse_matrix_value(value)  # the same check every node applies
    kv = await _kv(nc)
    rev = await kv.put(MATRIX_KEY, value)
    print(f"routing.matrix updated ({len(config.models)} models, revision {rev})")
    return 0


# ---------------------------------------------------------------- streams, audit


async def streams(nc: Client, args: argparse.Namespace) -> int:
    js = nc.jetstream()
    for line in await ensure_streams(js, args.replicas):
        print(line)
    for name in ("BH_AUDIT", "BH_EVENTS", "BH_HEALTH", "BH_ALERTS", "BH_SESSIONS"):
        info = await js.stream_info(name)
        print(
            f"{name}: {info.state.messages} messages, {info.state.bytes} bytes, "
            f"subjects {info.config.subjects}"
        )
    return 0


async def _audit_records(nc: Client, subject: str, follow: bool) -> Any:
    js = nc.jetstream()
    sub = await js.subscribe(subject, stream=AUDIT, ordered_consumer=True)
    while True:
        try:
            msg = await sub.next_msg(timeout=1.0 if not follow else 3600)
        except TimeoutError:
            break
        yield orjson.loads(msg.data)
        if not follow and msg.metadata.num_pending == 0:
            break
    await sub.unsubscribe()


async def _node_keys(nc: Client, node_ids: set[str]) -> dict[str, bytes]:
    """The audit public keys of the given nodes, read one by one from BH_CONFIG."""
    kv = await _kv(nc)
    keys: dict[str, bytes] = {}
    for node in sorted(node_ids):
        with contextlib.suppress(NatsError):
            entry = await kv.get(f"nodes.{subject_token(node)}.audit_key")
            keys[node] = decode_public((entry.value or b"").decode())
    return keys


async def audit_verify(nc: Client, args: argparse.Namespace) -> int:
    if args.file:
        records: list[Any] = list(read_jsonl(args.file))
    else:
        records = [r async for r in _audit_records(nc, "bh.audit.>", follow=False)]
    nodes = {
        r["node_id"] for r in records if isinstance(r, dict) and isinstance(r.get("node_id"), str)
    }
    report = verify_records(records, await _node_keys(nc, nodes))
    print(report.render())
    return 0 if report.ok else 1


async def audit_export(nc: Client, args: argparse.Namespace) -> int:
    out = open(args.out, "wb") if args.out != "-" else sys.stdout.buffer  # noqa: SIM115, ASYNC230
    count = 0
    async for rec in _audit_records(nc, "bh.audit.>", follow=False):
        out.write(orjson.dumps(rec) + b"\n")
        count += 1
    if out is not sys.stdout.buffer:
        out.close()
    print(f"exported {count} records", file=sys.stderr)
    return 0


async def audit_tail(nc: Client, args: argparse.Namespace) -> int:
    subject = f"bh.audit.{args.tenant}.>" if args.tenant else "bh.audit.>"
    async for r in _audit_records(nc, subject, follow=args.follow):
        print(
            f"{r['ts']} {r['node_id']} {r['tenant']}/{r['key_id']} {r['status']} "
            f"{r['requested_model']}->{r['served_model'] or '-'} ({r['provider'] or '-'}) "
            f"tokens={r['total_tokens']} cost=${r['cost_usd']:.6f} {r['latency_ms']:.1f}ms "
            f"{r['error_code'] or ''}".rstrip()
        )
    return 0


# ---------------------------------------------------------------- parsers


def _with_nats(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--nats-url")
    p.add_argument("--config")
    return p


def add_admin_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    keys: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    p = _with_nats(keys.add_parser("revoke", help="revoke an API key (its sub) cluster-wide"))
    p.add_argument("key_id")
    p.add_argument("--reason", default="")
    p.set_defaults(func=_run(revoke))
    p = _with_nats(keys.add_parser("unrevoke", help="undo a revocation"))
    p.add_argument("key_id")
    p.set_defaults(func=_run(unrevoke))
    _with_nats(keys.add_parser("revoked", help="list revoked keys")).set_defaults(
        func=_run(revoked)
    )
    p = _with_nats(keys.add_parser("trust", help="trust an issuer public key at run time"))
    p.add_argument("public_key")
    p.set_defaults(func=_run(trust))
    p = _with_nats(keys.add_parser("untrust", help="stop trusting an issuer key (by kid)"))
    p.add_argument("kid")
    p.set_defaults(func=_run(untrust))

    cfg = sub.add_parser("config", help="the routing matrix in BH_CONFIG")
    csub = cfg.add_subparsers(dest="config_command", required=True)
    _with_nats(csub.add_parser("show")).set_defaults(func=_run(config_show))
    p = _with_nats(csub.add_parser("push", help="validate FILE's models and publish them"))
    p.add_argument("file")
    p.set_defaults(func=_run(config_push))

    p = _with_nats(sub.add_parser("streams", help="show/create the BH_* streams"))
    p.add_argument("--replicas", type=int, default=1)
    p.set_defaults(func=_run(streams))

    audit = sub.add_parser("audit", help="read and verify BH_AUDIT")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    p = _with_nats(asub.add_parser("verify", help="check chains and signatures"))
    p.add_argument("--file", help="verify an exported JSONL file instead of the stream")
    p.set_defaults(func=_run(audit_verify))
    p = _with_nats(asub.add_parser("export", help="write BH_AUDIT as JSONL"))
    p.add_argument("--out", default="-")
    p.set_defaults(func=_run(audit_export))
    p = _with_nats(asub.add_parser("tail", help="print records for a human"))
    p.add_argument("--tenant")
    p.add_argument("--follow", action="store_true")
    p.set_defaults(func=_run(audit_tail))

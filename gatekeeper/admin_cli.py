"""Operator commands that talk to NATS: keys revoke/trust, config, streams, audit, nats.

The NATS URL comes from ``--nats-url``, else ``$GATEKEEPER_NATS_URL``, else the URL
a running embedded server wrote to ``<state_dir>/nats.url``, else the config's.
Credentials: ``--nats-creds`` / ``--nats-nkey``, else the URL's ``user:password@``,
else ``$GATEKEEPER_NATS_USER``/``_PASSWORD``, else the config's ``nats.*``, else (embedded)
the ones the embedded server wrote to ``<state_dir>/nats-credentials.json``.

Every value these commands write to BH_CONFIG is signed with the operator key:
``--operator-key FILE``, else ``$GATEKEEPER_OPERATOR_KEY``, else the config's
``control.operator_key_file``, else the dev key ``<state_dir>/keys/operator.key``.
Undoing a revocation or a trust writes a signed tombstone; nodes ignore bare deletes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.errors import KeyDeletedError, KeyNotFoundError

from gatekeeper.audit.checkpoint import Checkpoint, parse_checkpoint, read_checkpoints
from gatekeeper.audit.key_source import (
    RegistryKeys,
    dev_operator_public,
    load_registry_keys,
    operator_keys,
)
from gatekeeper.audit.trail import StreamFacts
from gatekeeper.audit.verify import read_jsonl, verify_records
from gatekeeper.auth.keyfiles import KeyFileError
from gatekeeper.auth.paserk import KeyFormatError, decode_public, encode_public, pid
from gatekeeper.bus import natsauth
from gatekeeper.bus.config_watch import MATRIX_KEY, parse_matrix_value
from gatekeeper.bus.connect import NatsUnavailable, connect
from gatekeeper.bus.embedded import read_credentials
from gatekeeper.bus.kv_snapshot import kv_snapshot
from gatekeeper.bus.streams import (
    AUDIT,
    CHECKPOINTS,
    CONFIG_BUCKET,
    StreamMismatch,
    desired_streams,
    differences,
    ensure_streams,
)
from gatekeeper.config import DEFAULT_CONFIG_PATH, Config, NatsConfig, load_config
from gatekeeper.control.operator import DEV_OPERATOR_FILE, load_operator_key
from gatekeeper.control.values import (
    issuer_key,
    revocation_key,
    signed_issuer,
    signed_matrix,
    signed_revocation,
    signed_tombstone,
)
from gatekeeper.errors import ConfigError
from gatekeeper.routing.matrix import model_dict
from gatekeeper.subjects import tenant_token

EMBEDDED_URL_FILE = "nats.url"
EMBEDDED_CREDENTIALS_FILE = "nats-credentials.json"
OPERATOR_KEY_ENV = "GATEKEEPER_OPERATOR_KEY"
CONNECT_TIMEOUT_S = 5.0  # the whole connect, retries included

Command = Callable[[Client, argparse.Namespace], Awaitable[int]]


def _config(args: argparse.Namespace) -> Config:
    """The config named by --config / $GATEKEEPER_CONFIG, else the default file if any."""
    path = getattr(args, "config", None)
    if path or os.environ.get("GATEKEEPER_CONFIG") or DEFAULT_CONFIG_PATH.exists():
        return load_config(path)
    return Config()


def resolve_nats(args: argparse.Namespace) -> tuple[str, NatsConfig]:
    """The URL (without credentials) and the ``nats.*`` settings to connect with."""
    config = _config(args)
    url = getattr(args, "nats_url", None) or os.environ.get("GATEKEEPER_NATS_URL")
    written = Path(config.state_dir) / EMBEDDED_URL_FILE
    if not url and config.nats.embedded:
        if not written.exists():
            raise NatsUnavailable("no NATS URL: start the gateway (make run) or pass --nats-url")
        url = written.read_text().strip()
    nats, url = natsauth.with_credentials(config.nats, url or config.nats.url, os.environ)
    if getattr(args, "nats_creds", None):
        nats = dataclasses.replace(nats, creds_file=args.nats_creds, user="", password="")
    elif getattr(args, "nats_nkey", None):
        nats = dataclasses.replace(nats, nkey_seed_file=args.nats_nkey, user="", password="")
    found = read_credentials(Path(config.state_dir) / EMBEDDED_CREDENTIALS_FILE)
    if config.nats.embedded and natsauth.auth_kind(nats) == "none" and found is not None:
        nats = dataclasses.replace(nats, user=found[0], password=found[1])
    return url, nats


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def main() -> int:
            url, auth = resolve_nats(args)
            try:  # connect() retries an unreachable server forever; a command must not hang
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    nc = await connect(url, name="gatekeeper-cli", auth=auth)
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
        except (
            NatsUnavailable,
            ConfigError,
            StreamMismatch,
            KeyFormatError,
            KeyFileError,
            natsauth.NatsAuthError,
        ) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


async def _kv(nc: Client) -> Any:
    js = nc.jetstream()
    await ensure_streams(js)
    return await js.key_value(CONFIG_BUCKET)


def _operator_entry(args: argparse.Namespace) -> tuple[str, SigningKey]:
    key = operator_key(args)
    return pid(bytes(key.verify_key)), key


def operator_key(args: argparse.Namespace) -> SigningKey:
    """The operator secret key that signs what this command writes."""
    path = getattr(args, "operator_key", None) or os.environ.get(OPERATOR_KEY_ENV)
    if not path:
        config = load_config(getattr(args, "config", None))
        dev = Path(config.state_dir) / DEV_OPERATOR_FILE
        path = config.control.operator_key_file or (str(dev) if dev.exists() else "")
    if not path:
        raise ConfigError(
            f"no operator key: pass --operator-key FILE (k4.secret) or set {OPERATOR_KEY_ENV}"
        )
    return load_operator_key(path)


# ---------------------------------------------------------------- keys


async def revoke(nc: Client, args: argparse.Namespace) -> int:
    signer = operator_key(args)
    kv = await _kv(nc)
    at = datetime.now(UTC).isoformat(timespec="seconds")
    value = signed_revocation(signer, args.key_id, args.reason, at)
    await kv.put(revocation_key(args.key_id), value)
    print(f"revoked {args.key_id}")
    return 0


async def unrevoke(nc: Client, args: argparse.Namespace) -> int:
    signer = operator_key(args)
    kv = await _kv(nc)
    key = revocation_key(args.key_id)
    await kv.put(key, signed_tombstone(signer, key))
    print(f"unrevoked {args.key_id}")
    return 0


async def revoked(nc: Client, args: argparse.Namespace) -> int:
    kv = await _kv(nc)
    for entry in await kv_snapshot(kv, "revoked.>"):
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            rec = orjson.loads(entry.value or b"{}").get("body")
            if isinstance(rec, dict) and "sub" in rec:  # tombstones are not listed
                print(f"{rec.get('sub')}\t{rec.get('at', '')}\t{rec.get('reason', '')}")
    return 0


async def trust(nc: Client, args: argparse.Namespace) -> int:
    decode_public(args.public_key)
    signer = operator_key(args)
    kv = await _kv(nc)
    await kv.put(issuer_key(args.public_key), signed_issuer(signer, args.public_key))
    print(f"trusted {issuer_key(args.public_key).removeprefix('issuers.')}")
    return 0


async def untrust(nc: Client, args: argparse.Namespace) -> int:
    signer = operator_key(args)
    kv = await _kv(nc)
    key = f"issuers.{args.kid}"
    await kv.put(key, signed_tombstone(signer, key))
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
        if isinstance(doc, dict) and "body" in doc and "sig" in doc:
            doc = doc["body"]  # a signed envelope: show what it carries
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
    models = [model_dict(m) for m in config.models]
    parse_matrix_value(orjson.dumps({"models": models}))  # the same check every node applies
    signer = operator_key(args)
    kv = await _kv(nc)
    rev = await kv.put(MATRIX_KEY, signed_matrix(signer, models))
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


async def _audit_records(nc: Client, subject: str, follow: bool, stream: str = AUDIT) -> Any:
    js = nc.jetstream()
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    while True:
        try:
            msg = await sub.next_msg(timeout=1.0 if not follow else 3600)
        except TimeoutError:
            break
        yield orjson.loads(msg.data)
        if not follow and msg.metadata.num_pending == 0:
            break
    await sub.unsubscribe()


async def _node_keys(nc: Client, args: argparse.Namespace, nodes: set[str]) -> RegistryKeys:
    """The nodes' pinned keys with history (``nodes.<id>.key.<n>`` in BH_CONFIG).

    Trusted operator keys: ``--operator-key``, the config's ``control.operator_keys``,
    and in dev the public half of ``<state_dir>/keys/operator.key``.
    """
    texts = list(args.operator_key or [])
    with contextlib.suppress(ConfigError):
        config = load_config(getattr(args, "config", None))
        texts.extend(getattr(getattr(config, "control", None), "operator_keys", ()) or ())
        dev = dev_operator_public(config.state_dir)
        if dev is not None:
            texts.append(dev)
    env_key = os.environ.get(OPERATOR_KEY_ENV)
    if env_key:  # the operator secret this machine signs with: its public half is trusted
        texts.append(encode_public(bytes(load_operator_key(env_key).verify_key)))
    kv = await nc.jetstream().key_value(CONFIG_BUCKET)  # no ensure_streams: verify reports
    keys = await load_registry_keys(kv, operator_keys(texts), nodes)
    for kv_key, why in keys.rejected:
        print(f"warning: registry entry {kv_key} rejected: {why}", file=sys.stderr)
    for node in sorted(keys.unpinned):
        print(
            f"warning: node {node}: unpinned key (nodes.{node}.audit_key); "
            "trust an operator key (control.operator_keys) and register node keys",
            file=sys.stderr,
        )
    return keys


async def _stream_facts(nc: Client) -> list[StreamFacts]:
    """BH_AUDIT's and BH_CHECKPOINTS' state, and how their config differs from Gatekeeper's."""
    js = nc.jetstream()
    wanted = {cfg.name: cfg for cfg in desired_streams(1)}
    facts = []
    for name in (AUDIT, CHECKPOINTS):
        info = await js.stream_info(name)
        state = info.state
        facts.append(
            StreamFacts(
                name,
                state.first_seq,
                state.last_seq,
                state.messages,
                tuple(differences(info.config, wanted[name])),
            )
        )
    return facts


async def _checkpoints(nc: Client, files: list[str]) -> list[Checkpoint | str]:
    """Checkpoints from BH_CHECKPOINTS and from the given local/shipped files."""
    found: list[Checkpoint | str] = []
    for path in files:
        found.extend(read_checkpoints(path))
    with contextlib.suppress(NatsError):
        await nc.jetstream().stream_info(CHECKPOINTS)
        async for raw in _audit_records(nc, "bh.checkpoints.>", False, CHECKPOINTS):
            try:
                found.append(parse_checkpoint(raw))
            except ValueError as exc:
                found.append(f"{CHECKPOINTS}: {exc}")
    return found


async def audit_verify(nc: Client, args: argparse.Namespace) -> int:
    """Exit 0: the trail is intact; 1: an issue was found (each named) or NATS failed."""
    streams: list[StreamFacts] = []
    if args.file:
        records: list[Any] = list(read_jsonl(args.file))
    else:
        streams = await _stream_facts(nc)
        records = [r async for r in _audit_records(nc, "bh.audit.>", follow=False)]
    nodes = {
        r["node_id"] for r in records if isinstance(r, dict) and isinstance(r.get("node_id"), str)
    }
    checkpoints = await _checkpoints(nc, args.checkpoints or [])
    nodes |= {cp.node for cp in checkpoints if not isinstance(cp, str)}
    report = verify_records(
        records,
        await _node_keys(nc, args, nodes),
        require_genesis=True,
        checkpoints=checkpoints,
        from_checkpoint=args.from_checkpoint,
        streams=streams,
    )
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
    subject = f"bh.audit.{tenant_token(args.tenant)}.>" if args.tenant else "bh.audit.>"
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
    p.add_argument("--nats-creds", help="a NATS .creds file (JWT + nkey seed)")
    p.add_argument("--nats-nkey", help="a NATS nkey seed file (e.g. the operator's)")
    return p


def _signing(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--operator-key", metavar="FILE", help=f"operator k4.secret file (${OPERATOR_KEY_ENV})"
    )
    return _with_nats(p)


def add_admin_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    keys: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    p = _signing(keys.add_parser("revoke", help="revoke an API key (its sub) cluster-wide"))
    p.add_argument("key_id")
    p.add_argument("--reason", default="")
    p.set_defaults(func=_run(revoke))
    p = _signing(keys.add_parser("unrevoke", help="undo a revocation"))
    p.add_argument("key_id")
    p.set_defaults(func=_run(unrevoke))
    _with_nats(keys.add_parser("revoked", help="list revoked keys")).set_defaults(
        func=_run(revoked)
    )
    p = _signing(keys.add_parser("trust", help="trust an issuer public key at run time"))
    p.add_argument("public_key")
    p.set_defaults(func=_run(trust))
    p = _signing(keys.add_parser("untrust", help="stop trusting an issuer key (by kid)"))
    p.add_argument("kid")
    p.set_defaults(func=_run(untrust))

    cfg = sub.add_parser("config", help="the routing matrix in BH_CONFIG")
    csub = cfg.add_subparsers(dest="config_command", required=True)
    _with_nats(csub.add_parser("show")).set_defaults(func=_run(config_show))
    p = _signing(csub.add_parser("push", help="validate FILE's models and publish them"))
    p.add_argument("file")
    p.set_defaults(func=_run(config_push))

    p = _with_nats(sub.add_parser("streams", help="show/create the BH_* streams"))
    p.add_argument("--replicas", type=int, default=1)
    p.set_defaults(func=_run(streams))

    from gatekeeper.nats_cli import add_nats_parser

    add_nats_parser(sub, _with_nats, _run)
    from gatekeeper.cache_cli import add_cache_parser

    add_cache_parser(sub, _with_nats, _run)

    audit = sub.add_parser("audit", help="read and verify BH_AUDIT")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    p = _with_nats(
        asub.add_parser(
            "verify", help="check chains, signatures, genesis, checkpoints and the streams"
        )
    )
    p.add_argument("--file", help="verify an exported JSONL file instead of the stream")
    p.add_argument(
        "--checkpoints",
        action="append",
        metavar="FILE",
        help="also check against this checkpoint file (a node's checkpoints.jsonl); repeatable",
    )
    p.add_argument(
        "--operator-key",
        action="append",
        metavar="K4_PUBLIC",
        help="trust this operator public key for the node key registry; repeatable",
    )
    p.add_argument(
        "--from-checkpoint",
        action="store_true",
        help="a node's records may start after a signed checkpoint instead of at seq 1",
    )
    p.set_defaults(func=_run(audit_verify))
    p = _with_nats(asub.add_parser("export", help="write BH_AUDIT as JSONL"))
    p.add_argument("--out", default="-")
    p.set_defaults(func=_run(audit_export))
    p = _with_nats(asub.add_parser("tail", help="print records for a human"))
    p.add_argument("--tenant")
    p.add_argument("--follow", action="store_true")
    p.set_defaults(func=_run(audit_tail))

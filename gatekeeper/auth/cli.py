"""``gatekeeper keys …``: create an issuer key pair, mint API tokens, inspect them.

    keys init --dir DIR
        Write DIR/issuer.key (k4.secret, mode 0600) and DIR/issuer.pub (k4.public);
        print the key id and the public key.
    keys mint --issuer-key PATH --tenant T [--budget-tokens N] [--budget-usd X]
              [--budget-period day|month|total] [--budget-mode gossip|strict]
              [--rpm N] [--tpm N]
              [--routing-mode cost|latency|capability] [--quality-threshold Q]
              [--models a,b*] [--ttl 30d] [--no-routing-override]
              [--max-concurrent N] [--max-streams N]
              [--tenant-max-concurrent N] [--tenant-max-streams N]
        Print ONLY the new token on stdout (so ``$(gatekeeper keys mint …)`` works).
    keys inspect TOKEN [--public-key k4.public.… | --issuer-pub PATH]
        Verify TOKEN exactly as a gateway would (signature, implicit assertion,
        time window with the default leeway) and print its claims as JSON; if it is
        invalid, print the reason on stderr and exit 1. The public key is taken from
        --public-key, else the k4.public file --issuer-pub, else the k4.public file
        named by the environment variable GATEKEEPER_ISSUER_PUB.

Exit codes: 0 success, 1 invalid token or failed operation, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from typing import Literal, cast

import orjson

from gatekeeper.auth.claims import PERIODS, ROUTING_MODES, Concurrency, Passes
from gatekeeper.auth.keyfiles import (
    PUBLIC_KEY_FILE,
    SECRET_KEY_FILE,
    init_keys,
    load_public_key,
    load_secret_key,
    mint,
    parse_ttl,
)
from gatekeeper.auth.paserk import decode_public
from gatekeeper.auth.verifier import Keyring, TokenVerifier
from gatekeeper.errors import AuthError

__all__ = ["ISSUER_PUB_ENV", "add_keys_parser"]

ISSUER_PUB_ENV = "GATEKEEPER_ISSUER_PUB"


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _ttl_arg(text: str) -> timedelta:
    try:
        return parse_ttl(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _models_arg(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _cmd_init(args: argparse.Namespace) -> int:
    try:
        kid, public_text = init_keys(args.dir)
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    print(f"wrote {os.path.join(args.dir, SECRET_KEY_FILE)} (secret, mode 0600)")
    print(f"wrote {os.path.join(args.dir, PUBLIC_KEY_FILE)}")
    print(f"kid: {kid}")
    print(f"public key: {public_text}")
    return 0


def _cmd_mint(args: argparse.Namespace) -> int:
    try:
        token = mint(
            load_secret_key(args.issuer_key),
            args.tenant,
            budget_tokens=args.budget_tokens,
            budget_usd=args.budget_usd,
            budget_period=args.budget_period,
            budget_mode=args.budget_mode,
            rpm=args.rpm,
            tpm=args.tpm,
            routing_mode=args.routing_mode,
            quality_threshold=args.quality_threshold,
            models=args.models,
            ttl=args.ttl,
            allow_routing_override=not args.no_routing_override,
            concurrency=Concurrency(
                args.max_concurrent,
                args.max_streams,
                args.tenant_max_concurrent,
                args.tenant_max_streams,
            ),
            passes=args.passes,
        )
    except ValueError as exc:
        return _fail(str(exc))
    print(token)
    return 0


def _inspect_key(args: argparse.Namespace) -> bytes:
    if args.public_key:
        return decode_public(args.public_key)
    path = args.issuer_pub or os.environ.get(ISSUER_PUB_ENV)
    if not path:
        raise LookupError(
            f"no public key: pass --public-key or --issuer-pub, or set {ISSUER_PUB_ENV}"
        )
    return load_public_key(path)


def _cmd_inspect(args: argparse.Namespace) -> int:
    try:
        public_key = _inspect_key(args)
    except LookupError as exc:
        return _fail(str(exc), code=2)
    except ValueError as exc:
        return _fail(str(exc))
    verifier = TokenVerifier(Keyring([public_key]), cache_size=0)
    try:
        claims = verifier.verify_token(args.token.strip())
    except AuthError as exc:
        print(f"invalid token: {exc.message}", file=sys.stderr)
        return 1
    print(orjson.dumps(claims.to_dict(), option=orjson.OPT_INDENT_2).decode())
    return 0


def _add_mint(keys: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = keys.add_parser("mint", help="mint an API token (prints only the token)")
    p.add_argument("--issuer-key", required=True, metavar="PATH", help="k4.secret file")
    p.add_argument("--tenant", required=True)
    p.add_argument("--budget-tokens", type=int, metavar="N")
    p.add_argument("--budget-usd", type=float, metavar="X")
    p.add_argument("--budget-period", choices=PERIODS, default="month")
    p.add_argument(
        "--budget-mode",
        choices=("gossip", "strict"),
        help="strict: never overspend across nodes (escrowed shares; docs/budget.md)",
    )
    p.add_argument("--rpm", type=int, metavar="N", help="requests per minute")
    p.add_argument("--tpm", type=int, metavar="N", help="tokens per minute")
    p.add_argument("--routing-mode", choices=ROUTING_MODES)
    p.add_argument("--quality-threshold", type=float, metavar="Q", help="0..1")
    p.add_argument("--models", type=_models_arg, metavar="a,b*", help="allowed models")
    p.add_argument("--ttl", type=_ttl_arg, default=parse_ttl("30d"), help="e.g. 30d, 12h")
    p.add_argument(
        "--no-routing-override",
        action="store_true",
        help="refuse an X-Routing-Mode header that asks for another mode",
    )
    p.add_argument("--max-concurrent", type=int, metavar="N", help="requests in flight")
    p.add_argument("--max-streams", type=int, metavar="N", help="streams in flight")
    p.add_argument("--tenant-max-concurrent", type=int, metavar="N")
    p.add_argument("--tenant-max-streams", type=int, metavar="N")
    p.add_argument(
        "--passes", type=_passes_arg, metavar="N/hour", help="Privacy Passes per minute|hour|day"
    )
    p.set_defaults(func=_cmd_mint)


def _passes_arg(text: str) -> Passes:
    count, _, per = text.partition("/")
    if not count.isdigit() or (per or "hour") not in ("minute", "hour", "day"):
        raise argparse.ArgumentTypeError("use N/minute, N/hour or N/day, e.g. 600/hour")
    return Passes(cast(Literal["minute", "hour", "day"], per or "hour"), int(count))


def add_keys_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add ``keys init|mint|inspect``; each sets ``func(args) -> exit code``.

    Returns the ``keys`` sub-command group so NATS-backed commands can join it.
    """
    parser = subparsers.add_parser("keys", help="issuer keys and API tokens")
    keys = parser.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    init = keys.add_parser("init", help="create an issuer key pair")
    init.add_argument("--dir", required=True, metavar="DIR")
    init.set_defaults(func=_cmd_init)

    _add_mint(keys)

    inspect = keys.add_parser("inspect", help="verify a token and print its claims")
    inspect.add_argument("token", metavar="TOKEN")
    source = inspect.add_mutually_exclusive_group()
    source.add_argument("--public-key", metavar="k4.public.…")
    source.add_argument("--issuer-pub", metavar="PATH", help=f"default: ${ISSUER_PUB_ENV}")
    inspect.set_defaults(func=_cmd_inspect)
    return keys

"""``gatekeeper passes fetch|secret``: a wallet file of Privacy Passes; the operator secret."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

import httpx

from gatekeeper.passes.wallet import Wallet, fetch_passes

API_KEY_ENV = "GATEKEEPER_API_KEY"


def _cmd_fetch(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get(API_KEY_ENV, "")
    if not api_key:
        print(f"error: pass --api-key or set {API_KEY_ENV}", file=sys.stderr)
        return 2
    out = Path(args.out)
    wallet = Wallet.load(out) if out.exists() else Wallet()
    try:
        with httpx.Client(base_url=args.url, timeout=args.timeout) as client:
            wallet.add(fetch_passes(client, api_key, args.count, batch=not args.no_batch))
    except httpx.HTTPStatusError as exc:
        detail = exc.response.text[:300]
        print(f"error: the gateway answered {exc.response.status_code}: {detail}", file=sys.stderr)
        return 1
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    wallet.save(out)
    print(f"{len(wallet)} passes in {out}")
    return 0


def _cmd_secret(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        print(f"error: {out} exists; a new secret would invalidate every pass", file=sys.stderr)
        return 1
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    print(f"wrote a 32-byte secret to {out}: copy the same file to every gateway node")
    return 0


def add_passes_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("passes", help="Privacy Passes (docs/privacy.md)")
    cmds = p.add_subparsers(dest="passes_command", required=True)
    f = cmds.add_parser("fetch", help="fetch passes with an API key into a wallet file")
    f.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's base URL")
    f.add_argument("--api-key", default="", help=f"API token (default: ${API_KEY_ENV})")
    f.add_argument("--count", type=int, default=100)
    f.add_argument("--out", default="passes.json", help="wallet file (appended to)")
    f.add_argument("--no-batch", action="store_true", help="one request per pass")
    f.add_argument("--timeout", type=float, default=30.0)
    f.set_defaults(func=_cmd_fetch)
    s = cmds.add_parser("secret", help="write a new operator secret (passes.secret_file)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_secret)

"""The ``gatekeeper`` command: serve, keys, streams, audit, config."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from gatekeeper.admin_cli import EMBEDDED_CREDENTIALS_FILE, EMBEDDED_URL_FILE, add_admin_parsers
from gatekeeper.auth.cli import add_keys_parser
from gatekeeper.bus import natsauth
from gatekeeper.bus.embedded import start_embedded, write_private
from gatekeeper.cache.secret import DEV_CACHE_SECRET_FILE, create_cache_secret, load_cache_secret
from gatekeeper.config import Config, load_config
from gatekeeper.control.operator import DEV_OPERATOR_ENV, ensure_dev_operator
from gatekeeper.errors import ConfigError
from gatekeeper.nodes_cli import add_nodes_parser
from gatekeeper.passes.cli import add_passes_parser


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument(
        "--config", help="YAML config (default: $GATEKEEPER_CONFIG or config/gatekeeper.yaml)"
    )
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--nats-url",
        help="NATS URL(s); default $GATEKEEPER_NATS_URL, else the "
        "config's nats.url ('embedded' starts a local nats-server)",
    )
    p.add_argument("--workers", type=int, help="worker processes sharing the port")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from gatekeeper import server
    from gatekeeper.catalog import demo_enabled
    from gatekeeper.config import config_secrets
    from gatekeeper.logs import configure_logging, log_format, set_secrets
    from gatekeeper.scrub import url_secrets

    configure_logging()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"gatekeeper: invalid config: {exc}", file=sys.stderr)
        return 2
    srv = dataclasses.replace(
        config.server,
        **{
            k: v
            for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers))
            if v is not None
        },
    )
    config = dataclasses.replace(config, server=srv)
    nats_url = args.nats_url or os.environ.get("GATEKEEPER_NATS_URL") or config.nats.url
    url_secret_values = url_secrets(nats_url)  # before the credentials leave the URL
    try:
        nats_cfg, nats_url = natsauth.with_credentials(config.nats, nats_url, os.environ)
    except natsauth.NatsAuthError as exc:
        print(f"gatekeeper: invalid config: {exc}", file=sys.stderr)
        return 2
    config = dataclasses.replace(config, nats=nats_cfg)
    set_secrets((*config_secrets(config), *url_secret_values, config.nats.password))
    dev_secret = None
    if nats_url == "embedded" or os.environ.get(server.DEV_ISSUER_ENV):
        # Dev mode (embedded NATS): trust a local dev issuer when none is configured.
        config, dev_secret = server.ensure_dev_issuer(config)
    elif not config.auth.issuers:
        print(
            "gatekeeper: warning: no trusted issuer keys configured (auth.issuers); "
            "tokens are rejected until one is added with `gatekeeper keys trust`",
            file=sys.stderr,
        )
    dev_operator = nats_url == "embedded" or bool(os.environ.get(DEV_OPERATOR_ENV))
    if dev_operator:  # a dev operator key signs this cluster's control values
        config = ensure_dev_operator(config)
        config = ensure_dev_cache_secret(config)
    if config.cache.enabled:
        try:  # fail at start, not in each worker (the node loads it again, never logs it)
            load_cache_secret(config.cache.key_secret_file)
        except ConfigError as exc:
            print(f"gatekeeper: invalid config: {exc}", file=sys.stderr)
            return 2
    if args.worker_index is not None:  # a supervised worker: everything is set up already
        server.run_worker(config, nats_url, args.worker_index, reuse_port=True)
        return 0
    embedded = None
    anonymous_ok = None
    if nats_url == "embedded":
        config, embedded = _start_embedded(config)
        nats_url = embedded.public_url
    else:
        from gatekeeper.bus.connect import probe_anonymous

        anonymous_ok = probe_anonymous(nats_url)
    try:
        token = server.dev_token(dev_secret)
        token_file = server.hide_token(config, token) if log_format() == "json" else None
        print(
            server.banner(config, token, nats_url, demo_enabled(config), token_file, anonymous_ok),
            file=sys.stderr,
            flush=True,
        )
        if config.server.workers == 1:
            server.run_worker(config, nats_url, 0, reuse_port=False)
            return 0
        from gatekeeper.observability.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

        metrics_dir = prepare_multiprocess_dir(
            config.state_dir, config.server.host, config.server.port
        )
        env = dict(
            os.environ,
            GATEKEEPER_NATS_URL=nats_url,
            **server.credentials_env(config.nats),  # by env, never on a worker's argv
            **{MULTIPROC_ENV: metrics_dir},  # workers' metrics: prometheus_client multiprocess
            **({server.DEV_ISSUER_ENV: config.auth.issuers[0]} if dev_secret else {}),
            **({DEV_OPERATOR_ENV: "1"} if dev_operator else {}),
        )
        argv = [
            sys.executable,
            "-m",
            "gatekeeper",
            "serve",
            "--nats-url",
            nats_url,
            "--host",
            config.server.host,
            "--port",
            str(config.server.port),
        ]
        if args.config:
            argv += ["--config", args.config]
        return server.supervise(argv, config.server.workers, env)
    finally:
        if embedded is not None:
            embedded.stop()


def _start_embedded(config: Config) -> tuple[Config, Any]:
    """Start the local nats-server; write its URL and credentials (0600) to the state dir."""
    state = Path(config.state_dir)
    embedded = start_embedded(config.nats.store_dir, state / EMBEDDED_CREDENTIALS_FILE)
    write_private(state / EMBEDDED_URL_FILE, embedded.public_url + "\n")
    nats = dataclasses.replace(config.nats, user=embedded.user, password=embedded.password)
    return dataclasses.replace(config, nats=nats), embedded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatekeeper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    add_admin_parsers(sub, add_keys_parser(sub))
    add_nodes_parser(sub)
    add_passes_parser(sub)
    return parser


def ensure_dev_cache_secret(config: Config) -> Config:
    """Dev mode: with the cache on and no secret file configured, create one in the state dir."""
    if not config.cache.enabled or config.cache.key_secret_file:
        return config
    path = create_cache_secret(Path(config.state_dir) / DEV_CACHE_SECRET_FILE)
    return dataclasses.replace(
        config, cache=dataclasses.replace(config.cache, key_secret_file=str(path))
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

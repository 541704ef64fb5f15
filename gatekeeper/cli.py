"""The ``gatekeeper`` command: serve, keys, streams, audit, config."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from gatekeeper.admin_cli import EMBEDDED_URL_FILE, add_admin_parsers
from gatekeeper.auth.cli import add_keys_parser
from gatekeeper.bus.embedded import start_embedded
from gatekeeper.config import ConfigError, load_config


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
    from gatekeeper.logs import configure_logging

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
    if args.worker_index is not None:  # a supervised worker: everything is set up already
        server.run_worker(config, nats_url, args.worker_index, reuse_port=True)
        return 0
    embedded = None
    if nats_url == "embedded":
        embedded = start_embedded(config.nats.store_dir)
        nats_url = embedded.url
        url_file = Path(config.state_dir) / EMBEDDED_URL_FILE
        url_file.parent.mkdir(parents=True, exist_ok=True)
        url_file.write_text(nats_url + "\n")
    try:
        print(
            server.banner(config, server.dev_token(dev_secret), nats_url, demo_enabled(config)),
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
            **{MULTIPROC_ENV: metrics_dir},  # workers' metrics: prometheus_client multiprocess
            **({server.DEV_ISSUER_ENV: config.auth.issuers[0]} if dev_secret else {}),
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatekeeper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    add_admin_parsers(sub, add_keys_parser(sub))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

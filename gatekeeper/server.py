"""``gatekeeper serve``: the embedded defaults, the worker processes, graceful stop.

workers == 1  uvicorn runs in this process.
workers  > 1  this process supervises N worker processes; each binds the same port
              with SO_REUSEPORT (the kernel spreads connections) and is an
              independent node with its own node id. SIGTERM/SIGINT is passed on.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
import uvicorn

from gatekeeper.app import NodeIdentity, create_app
from gatekeeper.auth.keyfiles import (
    PUBLIC_KEY_FILE,
    SECRET_KEY_FILE,
    init_keys,
    load_secret_key,
    mint,
)
from gatekeeper.bus import natsauth
from gatekeeper.config import Config, NatsConfig
from gatekeeper.http.edge import GatewayHttpProtocol
from gatekeeper.observability.metrics import worker_exited

log = structlog.get_logger("gatekeeper.server")

DEV_ISSUER_ENV = "GATEKEEPER_DEV_ISSUER_PUB"


def node_id_for(config: Config, worker: int) -> str:
    """A unique, stable node id: config/env override, else host-port-worker."""
    explicit = os.environ.get("GATEKEEPER_NODE_ID") or config.node_id
    base = explicit or f"{socket.gethostname()}-{config.server.port}"
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in base)
    return f"{safe[:56]}-w{worker}"  # node ids are at most 64 characters (NODE_ID)


def ensure_dev_issuer(config: Config) -> tuple[Config, str | None]:
    """With no trusted issuers configured, create (once) and trust a dev issuer key."""
    if config.auth.issuers:
        return config, None
    inherited = os.environ.get(DEV_ISSUER_ENV)
    directory = Path(config.auth.dev_issuer_dir)
    if inherited:
        public = inherited
    else:
        if not (directory / SECRET_KEY_FILE).exists():
            init_keys(directory)
        public = (directory / PUBLIC_KEY_FILE).read_text().strip()
    auth = dataclasses.replace(config.auth, issuers=(public,))
    return dataclasses.replace(config, auth=auth), str(directory / SECRET_KEY_FILE)


def credentials_env(nats: NatsConfig) -> dict[str, str]:
    """User/password for the worker processes' environment (argv is public in ``ps``)."""
    if not nats.user:
        return {}
    return {natsauth.USER_ENV: nats.user, natsauth.PASSWORD_ENV: nats.password}


def nats_line(nats: NatsConfig, nats_url: str, anonymous_ok: bool | None) -> list[str]:
    """The banner's NATS line (never a credential), and a warning for an open NATS."""
    kind = natsauth.auth_kind(nats)
    who = {"creds": "creds file", "nkey": "nkey", "user": f"user {nats.user}"}.get(kind, "")
    tls = "TLS" if natsauth.tls_expected(nats, nats_url) else "no TLS"
    lines = [f"  NATS:  {natsauth.redact_url(nats_url)} ({', '.join(filter(None, (who, tls)))})"]
    if anonymous_ok:
        lines.append(
            "  WARNING: this NATS accepts anonymous clients: anyone who reaches it can write "
            "trusted keys and budgets (nats.insecure; see docs/security.md)"
        )
    return lines


DEV_TOKEN_FILE = "dev.token"


def hide_token(config: Config, token: str | None) -> str | None:
    """JSON-log mode (logs are collected): write the dev token to a 0600 file instead
    of the banner; returns the file's path (None: nothing to hide)."""
    if token is None:
        return None
    path = Path(config.auth.dev_issuer_dir) / DEV_TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return str(path)


def banner(
    config: Config,
    token: str | None,
    nats_url: str,
    demo: bool,
    token_file: str | None = None,
    anonymous_ok: bool | None = None,
) -> str:
    scheme = "https" if config.server.tls.enabled else "http"
    base = f"{scheme}://{config.server.host}:{config.server.port}/v1"
    model = "gatekeeper-demo" if demo else "auto"
    lines = ["", "Gatekeeper is up.", f"  API:   {base}"]
    lines += nats_line(config.nats, nats_url, anonymous_ok)
    if demo:
        lines.append("  Provider: built-in demo (no provider API key set; answers are canned)")
    if token_file:  # logs are collected: the examples read the token from its file
        lines.append(f"  Dev token (valid 30 days): written to {token_file} (mode 0600)")
        header = f'"Authorization: Bearer $(cat {shlex.quote(token_file)})"'
        lines += _examples(base, model, header, f"open({token_file!r}).read().strip()")
    elif token:
        lines += [
            "",
            f"Dev token (valid 30 days, signed by the dev issuer in {config.auth.dev_issuer_dir}):",
            f"  {token}",
        ]
        lines += _examples(base, model, f"'Authorization: Bearer {token}'", '"<the dev token>"')
    return "\n".join(lines) + "\n"


def _examples(base: str, model: str, auth_header: str, python_token: str) -> list[str]:
    """A curl and an OpenAI SDK call; the token as the shell and Python should write it."""
    return [
        "",
        "Try it:",
        f"  curl {base}/chat/completions \\",
        f"    -H {auth_header} -H 'Content-Type: application/json' \\",
        f'    -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\'',
        "",
        "Or with the OpenAI SDK:",
        "  from openai import OpenAI",
        f'  client = OpenAI(base_url="{base}", api_key={python_token})',
        f'  reply = client.chat.completions.create(model="{model}",',
        '      messages=[{"role": "user", "content": "Hello!"}])',
        "  print(reply.choices[0].message.content)",
    ]


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_worker(config: Config, nats_url: str, worker: int, *, reuse_port: bool) -> None:
    identity = NodeIdentity(node_id_for(config, worker), nats_url)
    app = create_app(config, identity)
    ucfg = uvicorn.Config(
        app,
        host=config.server.host,
        port=config.server.port,
        loop="uvloop",
        # httptools, bounded, one write per response (http/edge.py)
        http=GatewayHttpProtocol.bounded(config.server.limits),
        lifespan="on",
        ws="none",  # no WebSocket endpoints: an Upgrade is never handed to a ws protocol
        access_log=False,
        proxy_headers=False,  # nothing reads the client address; saves work per request
        server_header=False,  # no "server: uvicorn" on every response
        log_level="warning",
        timeout_graceful_shutdown=int(config.server.shutdown_grace_s),
        backlog=2048,
        timeout_keep_alive=max(1, int(config.server.limits.idle_timeout_s)),
        **tls_options(config),
    )
    server = uvicorn.Server(ucfg)
    # uvicorn drains in-flight requests on SIGTERM/SIGINT, then re-raises the signal
    # through the previous handler; a no-op one makes a graceful stop exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stopped)
    sockets = [_reuse_port_socket(config.server.host, config.server.port)] if reuse_port else None
    server.run(sockets=sockets)
    if server.started is False and not server.should_exit:
        sys.exit(3)


def tls_options(config: Config) -> dict[str, Any]:
    """uvicorn's TLS settings from ``server.tls`` (none: plain HTTP).

    With ``client_ca_file`` a client certificate is asked for but optional: the API
    authenticates with tokens; admin endpoints also accept a verified certificate.
    """
    tls = config.server.tls
    if not tls.enabled:
        return {}
    options: dict[str, Any] = {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file}
    if tls.client_ca_file:
        options |= {"ssl_ca_certs": tls.client_ca_file, "ssl_cert_reqs": ssl.CERT_OPTIONAL}
    return options


def _stopped(signum: int, frame: object) -> None:
    return None


def supervise(argv: list[str], workers: int, env: dict[str, str]) -> int:
    """Run N workers; pass SIGTERM/SIGINT on; restart a worker that dies unexpectedly."""
    procs: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def spawn(i: int) -> None:
        procs[i] = subprocess.Popen([*argv, "--worker-index", str(i)], env=env)

    def stop(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(workers):
        spawn(i)
    while procs:
        time.sleep(0.2)
        for i, p in list(procs.items()):
            code = p.poll()
            if code is None:
                continue
            del procs[i]
            worker_exited(p.pid, env)  # its live gauges go; its counters stay in the sums
            if not stopping:
                log.warning("worker.died", worker=i, code=code)
                spawn(i)
    return 0


def dev_token(secret_path: str | None) -> str | None:
    if secret_path is None:
        return None
    return mint(load_secret_key(secret_path), tenant="dev", ttl=timedelta(days=30))

"""Peer gateways for ``bench.run``: LiteLLM proxy and Portkey's AI gateway beside Gatekeeper.

``make bench-peers`` installs them outside the project's venv (pins in the Makefile):

* ``.bench-peers/litellm-venv``: a venv with ``litellm[proxy]``;
* ``.bench-peers/portkey``: an npm prefix with ``@portkey-ai/gateway`` (run with ``node``),
  its ``@hono/node-server`` held at the version Portkey's own lockfile has (streams fail
  with newer ones: Portkey-AI/gateway#1389, #1550).

Both are plain pass-throughs to the same fake upstream as the gateway (``bench.upstream``
on 127.0.0.1). LiteLLM reads a config written into the bench's temp dir (one model,
``openai/gpt-4o-mini`` at the upstream, a master key, no database, no callbacks, one
worker). Portkey has no config: it routes by request headers (``x-portkey-provider``,
``x-portkey-custom-host``) and forwards the client's ``Authorization`` to the upstream.

Loopback only. Every switch that makes them fetch something remote is set off here
(LiteLLM's cost map, beta headers, presets, blog posts, policy templates; no telemetry,
proxies or databases from the caller's environment), and Portkey trusts only 127.0.0.1
as a custom host. Checked with ``strace -f -e trace=connect``: neither connects anywhere
but the upstream. Portkey's CLI has no host option: it listens on all interfaces (``::``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.loadgen import CHAT_BODY, CHAT_PATH, loopback_only, stop_process

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / ".bench-peers"
HINT = "peer gateways not installed: `make bench-peers` adds LiteLLM proxy and Portkey to this run"

LITELLM_MASTER_KEY = "sk-bench-litellm"  # what clients send to LiteLLM
UPSTREAM_KEY = "sk-bench-upstream"  # what the peers send upstream (the fake ignores it)

# Nothing from the caller's environment that would send a peer's traffic elsewhere or make
# it open a database, a cache or a tracer.
_DROP_ENV = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "DATABASE_URL",
    "DIRECT_URL",
    "REDIS_HOST",
    "REDIS_URL",
    "REDIS_CONNECTION_STRING",
    "LITELLM_LICENSE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # bundled model prices, no download
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_MODE": "PRODUCTION",  # no .env loading
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    "DISABLE_ADMIN_UI": "True",
    "HF_HUB_OFFLINE": "1",
    "NO_PROXY": "127.0.0.1,localhost",
}
PORTKEY_ENV = {
    "NODE_ENV": "production",
    "TRUSTED_CUSTOM_HOSTS": "127.0.0.1",  # the only custom host it may call
    "NO_PROXY": "127.0.0.1,localhost",
}


@dataclass(frozen=True, slots=True)
class Peer:
    """How to start one peer gateway and what each request to it must carry."""

    name: str  # row label: "LiteLLM proxy 1.106.2"
    version: str  # for the report's Versions line
    argv: list[str]
    env: dict[str, str]
    port: int
    token: str  # Authorization: Bearer <token>
    headers: dict[str, str] = field(default_factory=dict)  # extra request headers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# --------------------------------------------------------------------------- install detection


def litellm_version(peers_dir: Path = PEERS_DIR) -> str | None:
    """The litellm in ``peers_dir``'s venv, if ``make bench-peers`` finished installing it."""
    venv = peers_dir / "litellm-venv"
    if not (venv / "bin" / "litellm").exists() or not list(venv.glob(".installed-*")):
        return None
    for meta in venv.glob("lib/python*/site-packages/litellm-*.dist-info/METADATA"):
        for line in meta.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return None


def portkey_version(peers_dir: Path = PEERS_DIR) -> str | None:
    """The @portkey-ai/gateway in ``peers_dir``'s npm prefix, if installed and node is on PATH."""
    prefix = peers_dir / "portkey"
    pkg = prefix / "node_modules" / "@portkey-ai" / "gateway" / "package.json"
    if shutil.which("node") is None or not pkg.exists() or not list(prefix.glob(".installed-*")):
        return None
    return str(json.loads(pkg.read_text())["version"])


def hono_node_server_version(peers_dir: Path = PEERS_DIR) -> str:
    pkg = peers_dir / "portkey" / "node_modules" / "@hono" / "node-server" / "package.json"
    try:
        return str(json.loads(pkg.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "?"


def node_version() -> str:
    try:
        done = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return done.stdout.strip() or "?"


# --------------------------------------------------------------------------- configuration


def litellm_config(upstream_url: str) -> str:
    """LiteLLM proxy config: ``gpt-4o-mini`` passed through to the upstream, nothing else."""
    api_base = loopback_only(upstream_url.rstrip("/") + "/v1")
    return (
        "model_list:\n"
        "  - model_name: gpt-4o-mini\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        f"      api_base: {api_base}\n"
        f"      api_key: {UPSTREAM_KEY}\n"
        "litellm_settings:\n"
        "  callbacks: []\n"
        "  success_callback: []\n"
        "  failure_callback: []\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_MASTER_KEY}\n"
    )


def portkey_headers(upstream_url: str) -> dict[str, str]:
    """What routes a request through Portkey to the upstream (it has no config file)."""
    return {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": loopback_only(upstream_url.rstrip("/") + "/v1"),
    }


def peer_env(extra: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _DROP_ENV}
    return {**env, **extra}


def litellm(upstream_url: str, workdir: Path, port: int, peers_dir: Path = PEERS_DIR) -> Peer:
    version = litellm_version(peers_dir)
    if version is None:
        raise FileNotFoundError(HINT)
    config = workdir / "litellm.yaml"
    config.write_text(litellm_config(upstream_url))
    argv = [
        str(peers_dir / "litellm-venv" / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    return Peer(
        f"LiteLLM proxy {version}",
        f"litellm {version}",
        argv,
        peer_env(LITELLM_ENV),
        port,
        LITELLM_MASTER_KEY,
    )


def portkey(upstream_url: str, port: int, peers_dir: Path = PEERS_DIR) -> Peer:
    version = portkey_version(peers_dir)
    if version is None:
        raise FileNotFoundError(HINT)
    script = peers_dir / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build"
    argv = ["node", str(script / "start-server.js"), f"--port={port}", "--headless"]
    return Peer(
        f"Portkey gateway {version}",
        f"@portkey-ai/gateway {version} (@hono/node-server "
        f"{hono_node_server_version(peers_dir)}) on node {node_version()}",
        argv,
        peer_env(PORTKEY_ENV),
        port,
        UPSTREAM_KEY,
        portkey_headers(upstream_url),
    )


def available(
    upstream_url: str, workdir: Path, ports: tuple[int, int], peers_dir: Path = PEERS_DIR
) -> list[Peer]:
    """The installed peers, configured for this run (empty when ``make bench-peers`` wasn't run)."""
    out = []
    if litellm_version(peers_dir):
        out.append(litellm(upstream_url, workdir, ports[0], peers_dir))
    if portkey_version(peers_dir):
        out.append(portkey(upstream_url, ports[1], peers_dir))
    return out


# --------------------------------------------------------------------------- processes


def request_headers(peer: Peer) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "authorization": f"Bearer {peer.token}",
        **peer.headers,
    }


def start(
    peer: Peer, stack: contextlib.ExitStack, workdir: Path, timeout: float = 90
) -> subprocess.Popen[bytes]:
    """Start ``peer``; stopped when ``stack`` ends; returns once a chat completion succeeds."""
    log = workdir / f"peer-{peer.port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            peer.argv,
            cwd=workdir,
            env=peer.env,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
        )
    stack.callback(stop_process, proc)
    url = peer.url + CHAT_PATH
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{peer.name} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            r = httpx.post(url, content=CHAT_BODY, headers=request_headers(peer), timeout=5)
            if r.status_code == 200 and r.json().get("object") == "chat.completion":
                return proc
            last = f"{r.status_code} {r.text[:300]}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.25)
    raise RuntimeError(f"{peer.name} not answering {url} in {timeout:.0f}s (last: {last})")

"""Run the gateway as a real process (``python -m gatekeeper serve``) for tests."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from gatekeeper.auth.keyfiles import init_keys, load_secret_key, mint
from gatekeeper.auth.node_key import load_or_create_node_key, node_public_key_text
from gatekeeper.bus.embedded import free_port
from gatekeeper.bus.natsauth import PASSWORD_ENV, USER_ENV, split_userinfo

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Issuer:
    """A test issuer key pair; mints tokens the gateway under test trusts.

    Also holds the test cluster's operator key (``operator.key``): every test gateway
    trusts it and may register itself with it (``control:`` in ``base_config``).
    """

    directory: Path
    public: str = ""
    operator_public: str = ""

    def __post_init__(self) -> None:
        if not (self.directory / "issuer.key").exists():
            init_keys(self.directory)
        self.public = (self.directory / "issuer.pub").read_text().strip()
        self.operator_public = node_public_key_text(load_or_create_node_key(self.operator_key))

    @property
    def operator_key(self) -> Path:
        return self.directory / "operator.key"

    def token(self, tenant: str = "acme", **claims: Any) -> str:
        return mint(load_secret_key(self.directory / "issuer.key"), tenant=tenant, **claims)


def base_config(
    providers: list[dict[str, Any]],
    models: list[dict[str, Any]],
    issuer: Issuer,
    state: Path,
    **extra: Any,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "shutdown_grace_s": 5},
        "nats": {"url": "embedded"},
        "providers": providers,
        "models": models,
        "failover_chain": [
            {"provider": p["name"], "priority": i + 1} for i, p in enumerate(providers)
        ],
        "demo": "off",
        "auth": {"issuers": [issuer.public]},
        "control": {
            "operator_keys": [issuer.operator_public],
            "operator_key_file": str(issuer.operator_key),
        },
        "audit": {"spool_dir": str(state / "spool")},
        "state_dir": str(state),
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def chat_model(
    name: str, provider: str, upstream: str | None = None, **over: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "provider": provider,
        "upstream": upstream or name,
        "kind": "chat",
        "input_per_1k": 0.001,
        "output_per_1k": 0.002,
        "context_window": 128000,
        "max_output_tokens": 4096,
        "capabilities": ["tools", "json", "streaming", "vision"],
        "quality": {
            "simple": 0.9,
            "general": 0.9,
            "code": 0.9,
            "math": 0.9,
            "reasoning": 0.9,
            "legal": 0.9,
            "creative": 0.9,
        },
        **over,
    }


def embedding_model(name: str, provider: str) -> dict[str, Any]:
    return {
        "name": name,
        "provider": provider,
        "upstream": name,
        "kind": "embedding",
        "input_per_1k": 0.00002,
        "output_per_1k": 0,
        "context_window": 8192,
        "max_output_tokens": 0,
        "capabilities": [],
        "quality": {},
    }


@dataclass
class GatewayProcess:
    config: dict[str, Any]
    workdir: Path
    nats_url: str
    port: int = 0
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    tls_ca: str | None = None  # PEM of the CA that signed server.tls.cert_file: HTTPS

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_ca else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        cfg_path = self.workdir / "gatekeeper.yaml"
        cfg_path.write_text(yaml.safe_dump(self.config))
        self.log_path = self.workdir / f"gateway-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        # NATS credentials by env, not on the gateway's argv (as a deployment does)
        nats_url, user, password = split_userinfo(self.nats_url)
        if user:
            env.update({USER_ENV: user, PASSWORD_ENV: password})
        env.update({"GATEKEEPER_LOG_FORMAT": "json", **self.env})
        cmd = [
            sys.executable,
            "-m",
            "gatekeeper",
            "serve",
            "--config",
            str(cfg_path),
            "--port",
            str(self.port),
            "--nats-url",
            nats_url,
            "--workers",
            str(self.workers),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited ({self.proc.returncode}):\n{self.logs()}")
            try:
                verify: Any = True
                if self.tls_ca:
                    verify = ssl.create_default_context(cafile=self.tls_ca)
                if httpx.get(f"{self.url}/readyz", timeout=1, verify=verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway not ready in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(15)
            except subprocess.TimeoutExpired:
                self.kill()

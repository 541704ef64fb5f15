"""nats-server processes started from exactly the files in deploy/nats/.

The deploy files read ports, paths, certificate paths and public nkeys from the
environment (nats-server's ``$VAR`` lookup), so the test sets the environment and
runs ``nats-server -c deploy/nats/<file>`` unchanged. A throw-away CA (trustme)
signs the certificates; nkey pairs for the operator and the nodes gw1, gw2 are
made with ``gatekeeper nats nkey``'s function.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nkeys
import trustme
from nats.aio.client import Client

from gatekeeper.bus.embedded import _die_with_parent, _wait_port, find_nats_server, free_port
from gatekeeper.nats_cli import create_user_nkey

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "nats"
USERS = ("operator", "gw1", "gw2")


@dataclass
class Pki:
    """A throw-away CA, a certificate for 127.0.0.1, and an nkey pair per user."""

    directory: Path
    seeds: dict[str, Path] = field(default_factory=dict)
    publics: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.ca_file))
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        leaf.private_key_pem.write_to_path(str(self.key_file))
        leaf.cert_chain_pems[0].write_to_path(str(self.cert_file))
        for user in USERS:
            self.seeds[user] = self.directory / f"{user}.nk"
            self.publics[user] = create_user_nkey(self.seeds[user])

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert_file(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key_file(self) -> Path:
        return self.directory / "server.key"

    def env(self) -> dict[str, str]:
        return {
            "GK_TLS_CERT": str(self.cert_file),
            "GK_TLS_KEY": str(self.key_file),
            "GK_ROUTE_CERT": str(self.cert_file),
            "GK_ROUTE_KEY": str(self.key_file),
            "GK_ROUTE_CA": str(self.ca_file),
            "GK_OPERATOR_NKEY": self.publics["operator"],
            "GK_NODE_GW1_NKEY": self.publics["gw1"],
            "GK_NODE_GW2_NKEY": self.publics["gw2"],
        }

    def nats_config(self, url: str, user: str, **over: Any) -> dict[str, Any]:
        """The gateway's ``nats:`` section for connecting as ``user``."""
        return {
            "url": url,
            "nkey_seed_file": str(self.seeds[user]),
            "tls": {"ca_file": str(self.ca_file)},
            "provision": user == "operator",
            **over,
        }

    async def connect(self, url: str, user: str | None, **kw: Any) -> Client:
        """A raw nats-py client as ``user`` (None: anonymous), no reconnects."""
        import ssl

        auth: dict[str, Any] = {"nkeys_seed": str(self.seeds[user])} if user else {}
        return await nats.connect(
            servers=url.split(","),
            tls=ssl.create_default_context(cafile=str(self.ca_file)),
            allow_reconnect=False,
            connect_timeout=3,
            **auth,
            **kw,
        )


@dataclass
class DeployedNats:
    """One nats-server run from a deploy/nats file with the given environment."""

    conf: str
    name: str
    directory: Path
    env: dict[str, str]
    port: int = 0
    cluster_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'nats' if self.conf.endswith('jwt.conf') else 'tls'}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 15.0) -> DeployedNats:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        env = {
            **os.environ,
            **self.env,
            "GK_SERVER_NAME": self.name,
            "GK_CLIENT_LISTEN": f"127.0.0.1:{self.port}",
            "GK_STORE_DIR": str(self.directory / "store"),
        }
        if self.cluster_port:
            env["GK_CLUSTER_LISTEN"] = f"127.0.0.1:{self.cluster_port}"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [find_nats_server(), "-c", str(DEPLOY / self.conf)],  # an absolute conf stays
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        _wait_port("127.0.0.1", self.port, self.proc, timeout, self.log_path)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def single(pki: Pki, directory: Path) -> DeployedNats:
    return DeployedNats("nats-single.conf", "gk-single", directory, pki.env()).start()


def cluster(pki: Pki, directory: Path) -> list[DeployedNats]:
    cports = [free_port() for _ in range(3)]
    routes = {f"GK_ROUTE_{i + 1}": f"tls://127.0.0.1:{p}" for i, p in enumerate(cports)}
    servers = [
        DeployedNats(
            "nats-cluster.conf",
            f"gk-c{i}",
            directory / f"c{i}",
            {**pki.env(), **routes},
            cluster_port=cports[i],
        )
        for i in range(3)
    ]
    for server in servers:
        server.start()
    return servers


# ---------------------------------------------------------------- decentralized (JWT) auth


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _pair(prefix: int) -> tuple[bytes, Any, str]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    kp = nkeys.from_seed(bytearray(seed))
    return seed, kp, bytes(kp.public_key).decode()


def _jwt(signer: Any, subject: str, nats_claims: dict[str, Any], name: str) -> str:
    """A NATS v2 JWT (ed25519-nkey), signed by ``signer``: what `nsc` would write."""
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": bytes(signer.public_key).decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats_claims, "version": 2},
    }
    digest = hashlib.sha256(json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(signer.sign(f'{head}.{body}'.encode()))}"


def jwt_server(directory: Path) -> tuple[DeployedNats, Path]:
    """A nats-server in operator (JWT) mode with JetStream, and a user's .creds file."""
    directory.mkdir(parents=True, exist_ok=True)
    unlimited = {k: -1 for k in ("subs", "conn", "leaf", "imports", "exports", "data", "payload")}
    _, operator, operator_pub = _pair(nkeys.PREFIX_BYTE_OPERATOR)
    _, account, account_pub = _pair(nkeys.PREFIX_BYTE_ACCOUNT)
    _, _, system_pub = _pair(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, _, user_pub = _pair(nkeys.PREFIX_BYTE_USER)
    js_limits = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    account_jwt = _jwt(
        operator, account_pub, {"type": "account", "limits": {**unlimited, **js_limits}}, "GK"
    )
    system_jwt = _jwt(operator, system_pub, {"type": "account", "limits": unlimited}, "SYS")
    user_limits = {"subs": -1, "data": -1, "payload": -1}  # absent limits mean zero
    user_jwt = _jwt(account, user_pub, {"type": "user", "pub": {}, "sub": {}, **user_limits}, "gw")
    operator_jwt = _jwt(operator, operator_pub, {"type": "operator"}, "op")
    preload = f'{account_pub}: "{account_jwt}", {system_pub}: "{system_jwt}"'
    conf = directory / "jwt.conf"
    conf.write_text(
        "listen: $GK_CLIENT_LISTEN\nserver_name: $GK_SERVER_NAME\n"
        f'operator: "{operator_jwt}"\nsystem_account: {system_pub}\n'
        f"resolver: MEMORY\nresolver_preload: {{ {preload} }}\n"
        "jetstream { store_dir: $GK_STORE_DIR }\n"
    )
    creds = directory / "gw.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    os.chmod(creds, 0o600)
    return DeployedNats(str(conf), "gk-jwt", directory, {}).start(), creds

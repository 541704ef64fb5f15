"""Authentication on by default: the embedded NATS of `make run`, and an open NATS warned about.

`gatekeeper serve` with the embedded server generates a user and password, keeps
them in a 0600 file in a 0700 state dir, gives them to nats-server in a 0600
config file and to worker processes by environment: no process's argv (what `ps`
shows everyone) carries the password. Anonymous clients are refused; the CLI
finds the URL and the credentials by itself.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nats
import pytest

from gatekeeper.bus.embedded import EmbeddedNats
from tests.conftest import openai_provider
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import ROOT, GatewayProcess, Issuer, base_config, chat_model

pytestmark = pytest.mark.slow


def all_argv() -> list[str]:
    """Every process's command line, as `ps` shows them to any user."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def anonymous_refused(url: str) -> bool:
    async def attempt() -> bool:
        try:
            nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
        except Exception as exc:
            return "Authorization Violation" in str(exc)
        await nc.close()
        return False

    return asyncio.run(attempt())


class TestEmbeddedServer:
    def test_serve_generates_credentials_and_never_puts_them_on_argv(
        self, issuer: Issuer, fake_openai: FakeOpenAI, tmp_path: Path
    ) -> None:
        state = tmp_path / "state"
        cfg = base_config(
            [openai_provider("openai", fake_openai)],
            [chat_model("gpt-4o-mini", "openai")],
            issuer,
            state,
            nats={"url": "embedded", "store_dir": str(tmp_path / "nats")},
        )
        gw = GatewayProcess(cfg, tmp_path / "gw", "embedded", workers=2)
        try:
            gw.start()
            creds = json.loads((state / "nats-credentials.json").read_text())
            password = creds["password"]
            assert len(password) >= 24
            assert mode(state / "nats-credentials.json") == 0o600
            assert mode(state / "nats.url") == 0o600
            assert mode(state) == 0o700
            conf = next((tmp_path / "nats").glob("*.conf"))
            assert mode(conf) == 0o600 and password in conf.read_text()
            assert not [argv for argv in all_argv() if password in argv]
            assert password not in gw.logs()  # banner and log lines
            url = (state / "nats.url").read_text().strip()
            assert "@" not in url and anonymous_refused(url)
            cli = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gatekeeper",
                    "streams",
                    "--config",
                    str(gw.workdir / "gatekeeper.yaml"),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert cli.returncode == 0, cli.stderr  # found URL and credentials itself
            assert "BH_AUDIT" in cli.stdout and password not in cli.stdout + cli.stderr
        finally:
            gw.stop()

    def test_fixture_servers_refuse_anonymous_clients(self, nats_server: EmbeddedNats) -> None:
        assert anonymous_refused(nats_server.public_url)
        assert nats_server.password and nats_server.password not in " ".join(nats_server.command())


class TestOpenNats:
    def test_an_open_nats_is_used_but_warned_about(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        tmp_path: Path,
    ) -> None:
        """A developer's laptop NATS without auth: the gateway starts, says nats.insecure
        in its log and a WARNING in its banner."""
        open_nats = EmbeddedNats(tmp_path / "open", name="open", auth=False)
        open_nats.start()
        try:
            gw = start_gateway(
                providers=[openai_provider("openai", fake_openai)],
                models=[chat_model("gpt-4o-mini", "openai")],
                nats_url=open_nats.url,
            )
            logs = gw.logs()
            assert "nats.insecure" in logs
            assert "WARNING: this NATS accepts anonymous clients" in logs
        finally:
            open_nats.stop()

"""`gatekeeper serve`: graceful SIGTERM, several worker processes, config errors at start."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import ROOT, GatewayProcess, Issuer, chat_model


@pytest.mark.slow
class TestGracefulStop:
    def test_sigterm_lets_an_inflight_stream_finish(
        self, gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """SIGTERM mid-stream: the stream still ends with [DONE], then the process exits 0."""
        fake_openai.script.push(Behavior(text="abcdef", chunks=6, chunk_delay=0.3))
        client = openai.OpenAI(
            base_url=gateway.base_url, api_key=issuer.token(), max_retries=0, timeout=20
        )
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
        )
        pieces: list[str] = []
        codes: list[int] = []
        stopper = threading.Thread(target=lambda: codes.append(gateway.terminate(30)))
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                if len(pieces) == 1:
                    stopper.start()
        stopper.join(30)
        assert "".join(pieces) == "abcdef"
        assert codes == [0]

    def test_no_new_connections_after_sigterm(self, gateway: GatewayProcess) -> None:
        """Once stopped, the port no longer answers."""
        assert gateway.terminate(30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{gateway.url}/healthz", timeout=2)


@pytest.mark.slow
class TestWorkers:
    def test_workers_are_independent_nodes_sharing_one_port(
        self, start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI, issuer: Issuer
    ) -> None:
        """--workers 2: both processes serve the port, each with its own node id."""
        gw = start_gateway(
            providers=[openai_provider("openai", fake_openai)],
            models=[chat_model("gpt-4o-mini", "openai")],
            workers=2,
        )
        seen: set[str] = set()
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            with httpx.Client() as fresh:  # a new connection each time
                ready = fresh.get(f"{gw.url}/readyz", timeout=5)
                if ready.status_code == 200:
                    seen.add(ready.json()["node_id"])
        assert len(seen) == 2, seen
        reply = openai.OpenAI(
            base_url=gw.base_url, api_key=issuer.token(), max_retries=0
        ).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert reply.choices[0].message.content


class TestConfigErrors:
    @pytest.mark.parametrize(
        ("patch", "message"),
        [
            (
                {"providers": [{"name": "x", "kind": "openai", "base_url": "not a url"}]},
                "providers[0].base_url: not a URL",
            ),
            ({"server": {"port": "eighty"}}, "server.port: must be an integer"),
            ({"routing": {"default_mode": "fastest"}}, "routing.default_mode: must be one of"),
            ({"surprise": 1}, "surprise: unknown key"),
        ],
    )
    def test_invalid_config_fails_at_start_naming_the_path(
        self, tmp_path: Path, patch: dict[str, object], message: str
    ) -> None:
        """A bad config stops `serve` with exit 2 and the YAML path in the message."""
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(patch))
        done = subprocess.run(
            [sys.executable, "-m", "gatekeeper", "serve", "--config", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2
        assert message in done.stderr

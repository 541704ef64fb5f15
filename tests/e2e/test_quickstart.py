"""What `make run` prints works as printed: the banner's curl and OpenAI SDK examples.

`gatekeeper serve` with the shipped `config/gatekeeper.yaml`, no provider key in the
environment (so the built-in demo answers), the embedded nats-server, and logs in JSON
(as when they are collected): the dev token then goes to a 0600 file, never into the
banner, and the examples read it from there. The test runs the printed curl command in
a shell and the printed Python with the official SDK, from the directory `make run`
ran in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gatekeeper.bus.embedded import free_port
from tests.harness.gateway import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def banner(tmp_path: Path) -> Iterator[str]:
    """The banner of a gateway started as `make run` starts it, in ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["GATEKEEPER_LOG_FORMAT"] = "json"
    port = free_port()
    log = tmp_path / "serve.log"
    config = str(ROOT / "config" / "gatekeeper.yaml")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatekeeper", "serve", "--config", config, "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        text = ""
        while "print(reply" not in text or not answering(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway did not start:\n{text[-3000:]}")
            time.sleep(0.2)
            text = log.read_text()
        yield text[text.index("Gatekeeper is up.") :]
    finally:
        proc.terminate()
        proc.wait(30)


def answering(port: int) -> bool:
    """The gateway's listener is up and ready (the banner is printed before it is)."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def block(text: str, title: str) -> str:
    """The indented lines after ``title`` up to the next blank line, dedented."""
    lines = text[text.index(title) + len(title) :].splitlines()[1:]
    end = next(i for i, line in enumerate(lines) if not line.strip())
    return textwrap.dedent("\n".join(lines[:end]))


def run_in(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``argv`` run where `make run` ran; it must succeed."""
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done


def test_the_banner_examples_answer_and_the_token_stays_in_its_file(
    banner: str, tmp_path: Path
) -> None:
    token = (tmp_path / ".gatekeeper" / "keys" / "dev.token").read_text().strip()
    assert token.startswith("v4.public.") and token not in banner
    curl = block(banner, "Try it:")
    assert "$(cat " in curl
    if shutil.which("curl") and shutil.which("bash"):  # a machine without them: the SDK only
        done = run_in(tmp_path, ["bash", "-c", curl + " --silent --show-error"])
        reply = json.loads(done.stdout)
        assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"]
    sdk = block(banner, "Or with the OpenAI SDK:")
    assert run_in(tmp_path, [sys.executable, "-c", sdk]).stdout.strip()  # the demo's canned answer

"""The official OpenAI SDK spends Privacy Passes through ``httpx.Client(auth=wallet)``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from gatekeeper.passes import NoPassesLeft, Wallet
from tests.conftest import openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model
from tests.integration.test_privacypass_cluster import passes_config

MESSAGES = [{"role": "user", "content": "Capital of France?"}]


@pytest.fixture
def gw(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI, tmp_path: Path
) -> GatewayProcess:
    return start_gateway(
        providers=[openai_provider("openai", fake_openai)],
        models=[chat_model("gpt-4o-mini", "openai")],
        passes=passes_config(tmp_path),
    )


def sdk(gw: GatewayProcess, wallet: Wallet) -> openai.OpenAI:
    http = httpx.Client(auth=wallet, timeout=20)
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", http_client=http, max_retries=0)


class TestOpenAISDKWithWallet:
    def test_each_call_spends_one_pass_and_sends_no_api_key(
        self, gw: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        wallet = Wallet.fetch(gw.url, issuer.token("acme"), 3)
        client = sdk(gw, wallet)
        fake_openai.script.push(Behavior(text="Paris."))
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert reply.choices[0].message.content == "Paris."
        assert len(wallet) == 2
        fake_openai.script.push(Behavior(text="one two three", chunks=3))
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "one two three"
        assert len(wallet) == 1

    def test_a_spent_pass_is_replaced_by_the_next_one(
        self, gw: GatewayProcess, issuer: Issuer
    ) -> None:
        """A wallet copied to two machines: the pass spent elsewhere is skipped once."""
        first, second = Wallet.fetch(gw.url, issuer.token("acme"), 2).unused()
        elsewhere = httpx.Client(auth=Wallet([first]))
        assert elsewhere.post(
            f"{gw.base_url}/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES}
        ).is_success
        wallet = Wallet([first, second])
        reply = sdk(gw, wallet).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert reply.choices and len(wallet) == 0

    def test_refusal_reaches_the_sdk_as_authentication_error(
        self, gw: GatewayProcess, issuer: Issuer
    ) -> None:
        (token,) = Wallet.fetch(gw.url, issuer.token("acme"), 1).unused()
        sdk(gw, Wallet([token])).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(openai.AuthenticationError) as info:
            sdk(gw, Wallet([token])).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert info.value.code == "private_token_spent"

    def test_an_empty_wallet_says_so(self, gw: GatewayProcess) -> None:
        with pytest.raises(NoPassesLeft):
            sdk(gw, Wallet()).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    async def test_async_sdk(self, gw: GatewayProcess, issuer: Issuer) -> None:
        wallet = Wallet.fetch(gw.url, issuer.token("acme"), 1, batch=False)
        async with httpx.AsyncClient(auth=wallet, timeout=20) as http:
            client = openai.AsyncOpenAI(
                base_url=gw.base_url, api_key="unused", http_client=http, max_retries=0
            )
            reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert reply.choices and len(wallet) == 0


class TestCli:
    def test_passes_fetch_writes_a_wallet_the_sdk_can_use(
        self, gw: GatewayProcess, issuer: Issuer, tmp_path: Path
    ) -> None:
        out = tmp_path / "wallet.json"
        cmd = [sys.executable, "-m", "gatekeeper", "passes", "fetch", "--url", gw.url]
        cmd += ["--count", "3", "--out", str(out)]
        env = {"GATEKEEPER_API_KEY": issuer.token("acme"), "PATH": "/usr/bin:/bin"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "3 passes" in done.stdout
        assert (out.stat().st_mode & 0o777) == 0o600
        assert len(orjson.loads(out.read_bytes())["passes"]) == 3
        wallet = Wallet.load(out)
        sdk(gw, wallet).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert len(wallet) == 2

    def test_passes_fetch_reports_a_refusal(self, gw: GatewayProcess, tmp_path: Path) -> None:
        cmd = [sys.executable, "-m", "gatekeeper", "passes", "fetch", "--url", gw.url]
        cmd += ["--api-key", "v4.public.bogus", "--out", str(tmp_path / "w.json")]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "401" in done.stderr

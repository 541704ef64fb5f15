"""Privacy Passes on real processes: two gateways, one real nats-server, one fake upstream.

Both gateways read the same operator secret, so a pass issued by one is accepted by
the other, and a pass spent on one is refused by the other (NATS KV ``create``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gatekeeper.auth.claims import Passes
from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.config import LimitsConfig
from gatekeeper.passes import Wallet, wire
from gatekeeper.passes.wallet import DIRECTORY_PATH, fetch_passes
from tests.conftest import openai_provider
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model
from tests.integration.test_audit_durability import records

StartGateway = Callable[..., GatewayProcess]
GOSSIP_S = 2 * LimitsConfig().gossip_interval_ms / 1000 + 0.1
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def passes_config(tmp_path: Path, **over: Any) -> dict[str, Any]:
    secret = tmp_path / "passes.secret"
    if not secret.exists():
        secret.write_bytes(hashlib.sha256(b"test secret").digest())
    return {
        "enabled": True,
        "secret_file": str(secret),
        "tenants": {"acme": {"rpm": 1000}, "beta": {}},
        **over,
    }


@pytest.fixture
def two(
    start_gateway: StartGateway, fake_openai: FakeOpenAI, tmp_path: Path
) -> list[GatewayProcess]:
    return [
        start_gateway(
            providers=[openai_provider("openai", fake_openai)],
            models=[chat_model("gpt-4o-mini", "openai")],
            passes=passes_config(tmp_path),
        )
        for _ in range(2)
    ]


def _pt(token: str) -> dict[str, str]:
    return {"authorization": f'PrivateToken token="{token}"'}


def _fetch(gw: GatewayProcess, key: str, n: int, *, batch: bool = True) -> list[str]:
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        return fetch_passes(client, key, n, batch=batch)


class TestAcrossTwoGateways:
    def test_issued_on_one_redeemed_on_the_other_then_refused_everywhere(
        self, two: list[GatewayProcess], issuer: Issuer
    ) -> None:
        a, b = two
        (token,) = _fetch(a, issuer.token("acme"), 1, batch=False)
        ok = httpx.post(f"{b.base_url}/chat/completions", json=BODY, headers=_pt(token))
        assert ok.status_code == 200, ok.text
        for gw in (a, b):
            again = httpx.post(f"{gw.base_url}/chat/completions", json=BODY, headers=_pt(token))
            assert again.status_code == 401
            assert again.json()["error"]["code"] == "private_token_spent"
            challenge = again.headers["www-authenticate"]
            assert challenge.startswith("PrivateToken challenge=") and "token-key=" in challenge

    def test_concurrent_double_spend_serves_exactly_one(
        self, two: list[GatewayProcess], issuer: Issuer
    ) -> None:
        """The same 6 passes sent to both gateways at once: each served exactly once."""
        tokens = _fetch(two[0], issuer.token("acme"), 6)

        def send(job: tuple[GatewayProcess, str]) -> int:
            gw, token = job
            url = f"{gw.base_url}/chat/completions"
            return httpx.post(url, json=BODY, headers=_pt(token), timeout=30).status_code

        jobs = [(gw, t) for t in tokens for gw in two]
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(send, jobs))
        for i in range(len(tokens)):
            assert sorted(statuses[2 * i : 2 * i + 2]) == [200, 401]

    def test_audit_record_names_tenant_and_token_key_not_the_api_key(
        self, two: list[GatewayProcess], issuer: Issuer
    ) -> None:
        a, _ = two
        api_key = issuer.token("acme")
        directory = httpx.get(f"{a.url}{DIRECTORY_PATH}?tenant=acme").json()
        public = wire.b64url_decode(directory["token-keys"][0]["token-key"], limit=100)
        (token,) = _fetch(a, api_key, 1)
        resp = httpx.post(f"{a.base_url}/chat/completions", json=BODY, headers=_pt(token))
        assert resp.status_code == 200
        mine = [r for r in records(a.nats_url) if r["request_id"] == resp.headers["x-request-id"]]
        assert len(mine) == 1
        assert mine[0]["tenant"] == "acme"
        assert mine[0]["key_id"] == "pp:" + wire.token_key_id(public).hex()

    def test_allowance_is_enforced_across_both_gateways(
        self, two: list[GatewayProcess], issuer: Issuer
    ) -> None:
        """``passes: {per: hour, count: 3}``: 3 passes in all, from whichever node."""
        key = issuer.token("acme", passes=Passes("hour", 3))
        assert len(_fetch(two[0], key, 2)) == 2
        time.sleep(GOSSIP_S)  # node 0's count reaches node 1 within one gossip round
        with (
            httpx.Client(base_url=two[1].url, timeout=30) as client,
            pytest.raises(httpx.HTTPStatusError) as refused,
        ):
            fetch_passes(client, key, 2)
        assert refused.value.response.status_code == 429
        assert refused.value.response.json()["error"]["code"] == "rate_limit_exceeded"
        assert len(_fetch(two[1], key, 1)) == 1


def test_bus_down_is_503_not_500(
    start_gateway: StartGateway,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    nats_server: EmbeddedNats,
    issuer: Issuer,
) -> None:
    """The double-spend check cannot run without NATS: refuse clearly, do not serve."""
    gw = start_gateway(
        providers=[openai_provider("openai", fake_openai)],
        models=[chat_model("gpt-4o-mini", "openai")],
        passes=passes_config(tmp_path),
        audit={"mode": "async"},
    )
    (token,) = _fetch(gw, issuer.token("acme"), 1)
    nats_server.stop()
    resp = httpx.post(f"{gw.base_url}/chat/completions", json=BODY, headers=_pt(token), timeout=30)
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "private_token_check_unavailable"
    gw.kill()  # a graceful stop with NATS gone (seconds) is not this test's subject


class TestRefusals:
    @pytest.fixture
    def gw(
        self, start_gateway: StartGateway, fake_openai: FakeOpenAI, tmp_path: Path
    ) -> GatewayProcess:
        """One gateway is enough to be refused by."""
        return start_gateway(
            providers=[openai_provider("openai", fake_openai)],
            models=[chat_model("gpt-4o-mini", "openai")],
            passes=passes_config(tmp_path),
        )

    def test_pass_with_bearer_key_is_400(self, gw: GatewayProcess, issuer: Issuer) -> None:
        (token,) = _fetch(gw, issuer.token("acme"), 1)
        headers = [
            ("authorization", f'PrivateToken token="{token}"'),
            ("authorization", f"Bearer {issuer.token('acme')}"),
        ]
        resp = httpx.post(f"{gw.base_url}/chat/completions", json=BODY, headers=headers)
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "ambiguous_authorization"
        ok = httpx.post(f"{gw.base_url}/chat/completions", json=BODY, headers=_pt(token))
        assert ok.status_code == 200  # the refused request did not spend it

    @pytest.mark.parametrize(
        "header",
        [
            'PrivateToken token="not base64!"',
            'PrivateToken token="AAAA"',
            "PrivateToken",
            'PrivateToken token="' + "A" * 100_000 + '"',
        ],
    )
    def test_malformed_passes_are_401_in_openai_shape(
        self, gw: GatewayProcess, header: str
    ) -> None:
        resp = httpx.post(
            f"{gw.base_url}/chat/completions", json=BODY, headers={"authorization": header}
        )
        assert resp.status_code == 401
        err = resp.json()["error"]
        assert err["code"] == "private_token_malformed" and err["type"] == "invalid_request_error"
        assert resp.headers["www-authenticate"].startswith("PrivateToken challenge=")

    def test_a_pass_relabelled_to_another_tenant_is_401(
        self, gw: GatewayProcess, issuer: Issuer
    ) -> None:
        """beta's pass with acme's token key id: the authenticator does not verify."""
        (token,) = _fetch(gw, issuer.token("beta"), 1)
        directory = httpx.get(f"{gw.url}{DIRECTORY_PATH}?tenant=acme").json()
        acme = wire.b64url_decode(directory["token-keys"][0]["token-key"], limit=100)
        raw = wire.b64url_decode(token, limit=400)
        forged = wire.b64url(raw[:66] + wire.token_key_id(acme) + raw[98:])
        resp = httpx.post(f"{gw.base_url}/chat/completions", json=BODY, headers=_pt(forged))
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "private_token_invalid"
        assert wire.b64url(acme) in resp.headers["www-authenticate"]
        ok = httpx.post(f"{gw.base_url}/chat/completions", json=BODY, headers=_pt(token))
        assert ok.status_code == 200  # the genuine one is still unspent

    def test_a_pass_works_on_every_v1_endpoint(self, gw: GatewayProcess, issuer: Issuer) -> None:
        tokens = _fetch(gw, issuer.token("beta"), 2)
        models = httpx.get(f"{gw.base_url}/models", headers=_pt(tokens[0]))
        assert models.status_code == 200
        usage = httpx.get(f"{gw.base_url}/gatekeeper/usage", headers=_pt(tokens[1]))
        assert usage.status_code == 200 and usage.json()["key_id"] == "tenant=beta"

    def test_issuance_needs_the_api_key_and_the_right_media_type(
        self, gw: GatewayProcess, issuer: Issuer
    ) -> None:
        url = f"{gw.url}/v1/gatekeeper/passes/token-request"
        assert httpx.post(url, content=b"x").status_code == 401
        auth = {"authorization": f"Bearer {issuer.token('acme')}"}
        resp = httpx.post(url, content=b"x", headers={**auth, "content-type": "text/plain"})
        assert resp.status_code == 415
        ctype = {"content-type": wire.REQUEST_TYPE}
        resp = httpx.post(url, content=b"\x00\x01", headers={**auth, **ctype})
        assert resp.status_code == 400 and "TokenRequest" in resp.json()["error"]["message"]
        other = {"authorization": f"Bearer {issuer.token('gamma')}", **ctype}
        assert httpx.post(url, content=b"x", headers=other).status_code == 403

    def test_directory_is_per_tenant(self, gw: GatewayProcess) -> None:
        resp = httpx.get(f"{gw.url}{DIRECTORY_PATH}?tenant=acme")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith(wire.DIRECTORY_TYPE)
        body = orjson.loads(resp.content)
        assert body["token-keys"][0]["token-type"] == 1
        assert httpx.get(f"{gw.url}{DIRECTORY_PATH}?tenant=nobody").status_code == 404
        assert httpx.get(f"{gw.url}{DIRECTORY_PATH}").status_code == 400

    def test_wallet_file_round_trip(
        self, gw: GatewayProcess, issuer: Issuer, tmp_path: Path
    ) -> None:
        wallet = Wallet.fetch(gw.url, issuer.token("acme"), 2)
        wallet.save(tmp_path / "w.json")
        loaded = Wallet.load(tmp_path / "w.json")
        assert len(loaded) == 2
        with httpx.Client(auth=loaded) as client:
            assert client.post(f"{gw.base_url}/chat/completions", json=BODY).status_code == 200
        assert len(loaded) == 1

"""HTTPS from ``server.tls``, client certificates for admin endpoints, and /metrics
guarded whenever the listener is not loopback."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trustme

from tests.conftest import openai_provider
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, base_config, chat_model

ADMIN = "adm-" + "x" * 24


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_gateway(
    tmp_path: Path, ca: trustme.CA, nats_server: Any, issuer: Issuer, fake_openai: FakeOpenAI
) -> Any:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    cfg = base_config(
        [openai_provider("openai", fake_openai)],
        [chat_model("gpt-4o-mini", "openai")],
        issuer,
        tmp_path / "state",
        server={
            "admin_token": ADMIN,
            "tls": {
                "cert_file": str(cert_file),
                "key_file": str(key_file),
                "client_ca_file": str(ca_file),
            },
        },
    )
    gw = GatewayProcess(cfg, tmp_path / "gw", nats_server.url, tls_ca=str(ca_file))
    gw.start()
    yield gw
    gw.stop()


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


class TestHTTPS:
    def test_the_openai_sdk_talks_to_the_gateway_over_https(
        self, tls_gateway: GatewayProcess, ca: trustme.CA, issuer: Issuer
    ) -> None:
        """With server.tls set the API is served over HTTPS (a throw-away CA here)."""
        client = openai.OpenAI(
            base_url=tls_gateway.base_url,
            api_key=issuer.token(),
            http_client=httpx.Client(verify=trusting(ca)),
            max_retries=0,
        )
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content

    def test_plain_http_on_the_tls_port_gets_no_answer(self, tls_gateway: GatewayProcess) -> None:
        """The TLS listener does not serve plain HTTP."""
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{tls_gateway.port}/healthz", timeout=3)

    def test_a_client_certificate_opens_metrics_without_the_admin_token(
        self, tls_gateway: GatewayProcess, ca: trustme.CA, tmp_path: Path
    ) -> None:
        """With client_ca_file, a certificate the CA signed stands in for the admin
        token on /metrics; without either, 401."""
        url = f"{tls_gateway.url}/metrics"
        assert httpx.get(url, verify=trusting(ca)).status_code == 401
        with_token = httpx.get(
            url, verify=trusting(ca), headers={"authorization": f"Bearer {ADMIN}"}
        )
        assert with_token.status_code == 200
        client_cert = ca.issue_cert("ops@example.test")
        ctx = trusting(ca)
        client_cert.configure_cert(ctx)
        assert httpx.get(url, verify=ctx).status_code == 200
        stranger = trustme.CA().issue_cert("mallory@example.test")
        ctx = trusting(ca)
        stranger.configure_cert(ctx)
        with pytest.raises(httpx.HTTPError):  # the handshake refuses an unknown CA's cert
            httpx.get(url, verify=ctx)


class TestMetricsOffLoopback:
    def start(self, start: Callable[..., GatewayProcess], fake: FakeOpenAI, **server: Any) -> Any:
        return start(
            providers=[openai_provider("openai", fake)],
            models=[chat_model("gpt-4o-mini", "openai")],
            server={"host": "0.0.0.0", **server},
        )

    def test_metrics_are_off_without_an_admin_token(
        self, start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
    ) -> None:
        """Listening on 0.0.0.0 with no admin token, /metrics is off (404) rather
        than open to the network; the API still works."""
        gw = self.start(start_gateway, fake_openai)
        r = httpx.get(f"{gw.url}/metrics")
        assert r.status_code == 404 and r.json()["error"]["code"] == "metrics_disabled"
        assert httpx.get(f"{gw.url}/healthz").status_code == 200

    def test_metrics_need_the_admin_token(
        self, start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
    ) -> None:
        """With an admin token, /metrics answers only to it."""
        gw = self.start(start_gateway, fake_openai, admin_token=ADMIN)
        assert httpx.get(f"{gw.url}/metrics").status_code == 401
        ok = httpx.get(f"{gw.url}/metrics", headers={"authorization": f"Bearer {ADMIN}"})
        assert ok.status_code == 200 and "gatekeeper_" in ok.text

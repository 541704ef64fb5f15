"""Bad input gets an OpenAI-style error with the right status: never a 500 or a hang."""

from __future__ import annotations

import httpx
import pytest

from tests.harness.gateway import GatewayProcess, Issuer


@pytest.fixture
def http(gateway: GatewayProcess, issuer: Issuer) -> httpx.Client:
    return httpx.Client(
        base_url=gateway.url, timeout=10, headers={"authorization": f"Bearer {issuer.token()}"}
    )


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code
    assert resp.headers["x-request-id"]


class TestRequestEdges:
    def test_malformed_json(self, http: httpx.Client) -> None:
        """Malformed JSON → 400 invalid_json."""
        r = http.post(
            "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert_openai_error(r, 400, "invalid_json")

    def test_json_that_is_not_an_object(self, http: httpx.Client) -> None:
        """A JSON array body → 400."""
        r = http.post("/v1/chat/completions", json=[1, 2])
        assert_openai_error(r, 400, "invalid_json")

    def test_wrong_field_type_names_the_param(self, http: httpx.Client) -> None:
        """A wrong type → 400 with the field's path as param."""
        r = http.post(
            "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "robot"}]}
        )
        assert_openai_error(r, 400)
        assert r.json()["error"]["param"] == "messages[0].role"

    def test_body_over_the_limit(self, http: httpx.Client) -> None:
        """A body over server.max_body_bytes → 413."""
        r = http.post(
            "/v1/chat/completions",
            content=b"x" * (5 * 1024 * 1024),
            headers={"content-type": "application/json"},
        )
        assert_openai_error(r, 413, "payload_too_large")

    def test_wrong_content_type(self, http: httpx.Client) -> None:
        """A form body → 415."""
        r = http.post("/v1/chat/completions", data={"model": "x"})
        assert_openai_error(r, 415, "unsupported_media_type")

    def test_wrong_method(self, http: httpx.Client) -> None:
        """GET on a POST endpoint → 405."""
        assert_openai_error(http.get("/v1/chat/completions"), 405, "method_not_allowed")

    def test_unknown_path(self, http: httpx.Client) -> None:
        """An unknown path → 404 in OpenAI's shape."""
        assert_openai_error(http.get("/v1/nothing-here"), 404)

    def test_missing_token(self, gateway: GatewayProcess) -> None:
        """No Authorization header → 401 invalid_api_key."""
        r = httpx.post(f"{gateway.url}/v1/chat/completions", json={})
        assert_openai_error(r, 401, "invalid_api_key")

    def test_inbound_request_id_is_echoed(self, http: httpx.Client) -> None:
        """A well-formed x-request-id is echoed; a hostile one is replaced."""
        assert (
            http.get("/v1/models", headers={"x-request-id": "abc-123"}).headers["x-request-id"]
            == "abc-123"
        )
        bad = http.get("/v1/models", headers={"x-request-id": "a b<script>"})
        assert bad.headers["x-request-id"].startswith("req_")

    def test_health_and_readiness(self, gateway: GatewayProcess) -> None:
        """/healthz says alive; /readyz reports NATS and providers."""
        assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{gateway.url}/readyz").json()
        assert ready["ready"] is True and ready["nats"] == "connected"

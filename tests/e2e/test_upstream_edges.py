"""Hostile and oversized upstream replies, seen through the official OpenAI SDK.

A real gateway process in front of real HTTP servers on loopback: large unary
replies pass; a redirect, an error object or a non-completion answered with 200, and
an oversized event never reach the client as success; no upstream text carries the
provider key to the client or to the gateway's log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest

from tests.conftest import openai_provider
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model, embedding_model
from tests.harness.hostile_upstream import BEHAVIOURS, HostileUpstream


def client(gw: GatewayProcess, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=token, max_retries=0, timeout=30)


@pytest.fixture(params=["h1", "aiohttp"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_2_4_mb_embeddings_batch_passes(
    start_gateway: Callable[..., GatewayProcess],
    issuer: Issuer,
    fake_openai: FakeOpenAI,
    transport: str,
) -> None:
    """64 inputs × 3,072 floats (what text-embedding-3-large returns, several MB of
    JSON) arrive whole; the reply no longer stalls above the read buffer's high water."""
    gateway = start_gateway(
        providers=[openai_provider("openai", fake_openai)],
        models=[embedding_model("text-embedding-3-small", "openai")],
        upstream={"transport": transport},
    )
    reply = client(gateway, issuer.token()).embeddings.create(
        model="text-embedding-3-small",
        input=[f"text {i}" for i in range(64)],
        dimensions=3072,
        encoding_format="float",
    )
    assert len(reply.data) == 64
    assert all(len(d.embedding) == 3072 for d in reply.data)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    with HostileUpstream() as upstream:
        yield upstream


@pytest.fixture
def hostile_gateway(
    start_gateway: Callable[..., GatewayProcess], hostile: HostileUpstream, transport: str
) -> GatewayProcess:
    provider = {
        "name": "hostile",
        "kind": "openai",
        "base_url": hostile.url,
        "api_key": hostile.api_key,
        "timeouts": {"connect_s": 2, "first_byte_s": 5, "total_s": 20},
    }
    models = [chat_model(m, "hostile") for m in BEHAVIOURS]
    return start_gateway(
        providers=[provider],
        models=models,
        failover={"backoff_cap_s": 0.05},
        upstream={"transport": transport},
    )


EXPECTED = {
    "reflect-json": 400,  # the upstream's own client error, passed on (scrubbed)
    "reflect-text": 502,
    "redirect": 502,
    "error-200": 502,
    "not-json": 502,
    "wrong-shape": 502,
}


class TestHostileUpstream:
    @pytest.mark.parametrize("mode", sorted(EXPECTED))
    def test_no_success_and_no_key(
        self, hostile_gateway: GatewayProcess, issuer: Issuer, hostile: HostileUpstream, mode: str
    ) -> None:
        """Each bad reply is an OpenAI-shaped error with the right status, and neither the
        client nor the gateway's log ever sees the provider key."""
        with pytest.raises(openai.APIStatusError) as info:
            client(hostile_gateway, issuer.token()).chat.completions.create(
                model=mode, messages=[{"role": "user", "content": "hi"}]
            )
        err = info.value
        assert err.status_code == EXPECTED[mode]
        text = err.response.text
        assert '"error"' in text and hostile.api_key not in text
        assert "HOSTILE0123456789" not in text
        assert "HOSTILE0123456789" not in hostile_gateway.logs()

    def test_a_reflected_header_message_is_passed_on_scrubbed(
        self, hostile_gateway: GatewayProcess, issuer: Issuer
    ) -> None:
        with pytest.raises(openai.BadRequestError) as info:
            client(hostile_gateway, issuer.token()).chat.completions.create(
                model="reflect-json", messages=[{"role": "user", "content": "hi"}]
            )
        message = info.value.response.json()["error"]["message"]
        assert "bad header set" in message and "[REDACTED]" in message

    def test_an_unrecognised_text_becomes_a_generic_message_with_the_request_id(
        self, hostile_gateway: GatewayProcess, issuer: Issuer
    ) -> None:
        with pytest.raises(openai.APIStatusError) as info:
            client(hostile_gateway, issuer.token()).chat.completions.create(
                model="reflect-text", messages=[{"role": "user", "content": "hi"}]
            )
        rid = info.value.response.headers["x-request-id"]
        message = info.value.response.json()["error"]["message"]
        assert "not shown" in message and rid in message and "crashed" not in message
        assert "provider.unrecognised_error" in hostile_gateway.logs()

    def test_an_oversized_stream_event_is_a_clear_error(
        self, hostile_gateway: GatewayProcess, issuer: Issuer
    ) -> None:
        """One 2 MB event (over the 1 MiB cap) before the first chunk: a 502, not a hang."""
        with pytest.raises(openai.APIStatusError) as info:
            stream = client(hostile_gateway, issuer.token()).chat.completions.create(
                model="big-event", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            list(stream)
        assert info.value.status_code == 502
        assert "server-sent event" in info.value.response.json()["error"]["message"]

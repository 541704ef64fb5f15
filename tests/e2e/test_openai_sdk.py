"""The official OpenAI SDK, pointed at the gateway, works unchanged."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer


def client(gw: GatewayProcess, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=token, max_retries=0, timeout=20)


class TestChat:
    def test_non_streaming_answer_and_usage(
        self, gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """A plain chat completion comes back as the upstream sent it, with usage."""
        fake_openai.script.push(Behavior(text="Paris.", prompt_tokens=11, completion_tokens=2))
        reply = client(gateway, issuer.token()).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Capital of France?"}]
        )
        completion = reply.parse()
        assert completion.choices[0].message.content == "Paris."
        assert completion.usage is not None and completion.usage.total_tokens == 13
        assert reply.headers["x-request-id"].startswith("req_")
        assert reply.headers["x-gatekeeper-provider"] == "openai"
        assert fake_openai.script.requests[-1]["model"] == "gpt-4o-mini"

    def test_unknown_fields_pass_through(
        self, gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """Fields the gateway does not interpret reach the upstream unchanged."""
        tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
        client(gateway, issuer.token()).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            tools=tools,
            tool_choice="auto",
            seed=7,
            user="u-1",
            logprobs=True,
            response_format={"type": "json_object"},
        )
        sent = fake_openai.script.requests[-1]
        assert sent["tools"] == tools and sent["seed"] == 7 and sent["user"] == "u-1"
        assert sent["tool_choice"] == "auto" and sent["logprobs"] is True
        assert sent["response_format"] == {"type": "json_object"}

    def test_stream_delivers_every_chunk(
        self, gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """A stream is re-assembled by the SDK; no usage chunk unless asked for."""
        fake_openai.script.push(Behavior(text="one two three four", chunks=4))
        stream = client(gateway, issuer.token()).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "count"}], stream=True
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "one two three four"
        assert all(c.usage is None for c in chunks)
        assert fake_openai.script.requests[-1]["stream_options"] == {"include_usage": True}

    def test_stream_usage_when_asked(
        self, gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """With stream_options.include_usage the final usage chunk reaches the client."""
        fake_openai.script.push(Behavior(prompt_tokens=3, completion_tokens=4))
        stream = client(gateway, issuer.token()).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [c.usage for c in stream if c.usage is not None]
        assert len(usage) == 1 and usage[0].total_tokens == 7

    def test_first_chunk_arrives_while_upstream_still_sends(
        self, gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """Chunks are forwarded as they arrive, not buffered until the end."""
        fake_openai.script.push(Behavior(text="abcdef", chunks=6, chunk_delay=0.4))
        started = time.monotonic()
        stream = client(gateway, issuer.token()).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "slow"}], stream=True
        )
        first_content = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first_content = time.monotonic() - started
                break
        total = 6 * 0.4
        assert first_content is not None and first_content < total / 2
        stream.close()

    def test_client_disconnect_cancels_the_upstream(
        self, gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """A client that hangs up mid-stream makes the gateway drop the upstream request."""
        fake_openai.script.push(Behavior(text="x" * 40, chunks=40, chunk_delay=0.1))
        body = {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "long"}],
        }
        headers = {"authorization": f"Bearer {issuer.token()}"}
        with httpx.stream(
            "POST", f"{gateway.base_url}/chat/completions", json=body, headers=headers, timeout=10
        ) as resp:
            for line in resp.iter_lines():
                if '"content":"x' in line:
                    break  # leave after the first content chunk
        deadline = time.monotonic() + 3
        while fake_openai.script.disconnects == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake_openai.script.disconnects == 1
        assert time.monotonic() < deadline  # noticed well before the 4 s stream would end

    def test_cut_stream_ends_with_an_error_not_a_silent_success(
        self, gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """An upstream that drops the connection mid-stream, and again when asked to
        continue (docs/failover.md), surfaces as an SDK error."""
        cut = Behavior(text="abcdefgh", chunks=4, cut_after_chunks=2)
        fake_openai.script.push(cut, cut)
        stream = client(gateway, issuer.token()).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "cut"}], stream=True
        )
        with pytest.raises(openai.APIError, match=r"closed the connection|ended the stream"):
            for _ in stream:
                pass


class TestOtherEndpoints:
    def test_embeddings(self, gateway: GatewayProcess, issuer: Issuer) -> None:
        """Embeddings pass through in OpenAI's shape."""
        result = client(gateway, issuer.token()).embeddings.create(
            model="text-embedding-3-small", input=["a", "b"]
        )
        assert [d.index for d in result.data] == [0, 1]

    def test_models_list_and_retrieve(self, gateway: GatewayProcess, issuer: Issuer) -> None:
        """The models the gateway serves are listed and retrievable."""
        c = client(gateway, issuer.token())
        assert {m.id for m in c.models.list()} == {"gpt-4o-mini", "text-embedding-3-small"}
        assert c.models.retrieve("gpt-4o-mini").owned_by == "openai"


class TestErrorsAreTypedSDKExceptions:
    def test_unknown_model_is_not_found(self, gateway: GatewayProcess, issuer: Issuer) -> None:
        """An unknown model → 404 model_not_found → openai.NotFoundError."""
        with pytest.raises(openai.NotFoundError) as info:
            client(gateway, issuer.token()).chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.code == "model_not_found"

    def test_missing_messages_is_bad_request(self, gateway: GatewayProcess, issuer: Issuer) -> None:
        """A missing required field → 400 naming the param → openai.BadRequestError."""
        with pytest.raises(openai.BadRequestError) as info:
            client(gateway, issuer.token()).chat.completions.create(
                model="gpt-4o-mini", messages=[]
            )
        assert info.value.param == "messages"

    def test_bad_token_is_authentication_error(self, gateway: GatewayProcess) -> None:
        """A forged key → 401 invalid_api_key → openai.AuthenticationError."""
        with pytest.raises(openai.AuthenticationError) as info:
            client(gateway, "v4.public.forged").models.list()
        assert info.value.code == "invalid_api_key"

    def test_model_outside_allow_list_is_permission_denied(
        self, gateway: GatewayProcess, issuer: Issuer
    ) -> None:
        """A key limited to other models → 403 → openai.PermissionDeniedError."""
        token = issuer.token(models=("claude-*",))
        with pytest.raises(openai.PermissionDeniedError):
            client(gateway, token).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )

    def test_upstream_outage_is_a_5xx_naming_what_was_tried(
        self, gateway: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """Every attempt failing → 502/503 with the upstream's reason, never its key."""
        fake_openai.script.push(*[Behavior(status=500, error_message="boom")] * 4)
        with pytest.raises(openai.InternalServerError) as info:
            client(gateway, issuer.token()).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
        assert "boom" in str(info.value) and "openai" in str(info.value)
        assert fake_openai.api_key not in str(info.value)

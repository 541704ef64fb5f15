"""Anthropic behind the OpenAI wire format, and the failover chain across providers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import nats
import openai
import orjson
import pytest

from gatekeeper.bus.embedded import EmbeddedNats
from tests.conftest import anthropic_provider, openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_anthropic import FakeAnthropic
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model

ANTHROPIC_KEY = "sk-ant-fake-upstream"


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=ANTHROPIC_KEY) as fake:
        yield fake


@pytest.fixture
def two_providers(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> GatewayProcess:
    """openai (priority 1) → anthropic (priority 2), one model on each."""
    return start_gateway(
        providers=[
            openai_provider("openai", fake_openai),
            anthropic_provider(
                "anthropic",
                fake_anthropic,
                timeouts={"connect_s": 2, "first_byte_s": 2, "total_s": 30},
            ),
        ],
        models=[
            chat_model("gpt-4o", "openai"),
            chat_model("claude-3-5-sonnet", "anthropic", upstream="claude-3-5-sonnet-20241022"),
        ],
    )


def sdk(gw: GatewayProcess, issuer: Issuer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=issuer.token(), max_retries=0, timeout=20)


class TestAnthropicTranslation:
    def test_non_streaming_chat(
        self, two_providers: GatewayProcess, issuer: Issuer, fake_anthropic: FakeAnthropic
    ) -> None:
        """System prompt and turns go to Anthropic's shape; the answer comes back as OpenAI."""
        fake_anthropic.script.push(Behavior(text="Bonjour", prompt_tokens=12, completion_tokens=3))
        reply = sdk(two_providers, issuer).chat.completions.create(
            model="claude-3-5-sonnet",
            messages=[
                {"role": "system", "content": "Be French."},
                {"role": "user", "content": "Hello"},
            ],
        )
        assert reply.choices[0].message.content == "Bonjour"
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage is not None and reply.usage.prompt_tokens == 12
        sent = fake_anthropic.script.requests[-1]
        assert sent["system"] == "Be French."
        assert sent["model"] == "claude-3-5-sonnet-20241022"
        assert sent["messages"][0]["role"] == "user"

    def test_streaming_chat(
        self, two_providers: GatewayProcess, issuer: Issuer, fake_anthropic: FakeAnthropic
    ) -> None:
        """Anthropic's event stream becomes OpenAI chunks, with usage when asked."""
        fake_anthropic.script.push(
            Behavior(text="one two three", chunks=3, prompt_tokens=5, completion_tokens=3)
        )
        stream = sdk(two_providers, issuer).chat.completions.create(
            model="claude-3-5-sonnet",
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "one two three"
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finishes[-1] == "stop"
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 8

    def test_tool_calls_come_back_as_openai_tool_calls(
        self, two_providers: GatewayProcess, issuer: Issuer, fake_anthropic: FakeAnthropic
    ) -> None:
        """An Anthropic tool_use block → an OpenAI tool call with JSON arguments."""
        fake_anthropic.script.push(Behavior(text='TOOL:get_weather {"city": "Paris"}'))
        tools = [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ]
        reply = sdk(two_providers, issuer).chat.completions.create(
            model="claude-3-5-sonnet",
            tools=tools,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "Weather in Paris?"}],
        )
        call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.function.name == "get_weather"
        assert orjson.loads(call.function.arguments) == {"city": "Paris"}
        assert reply.choices[0].finish_reason == "tool_calls"
        assert fake_anthropic.script.requests[-1]["tools"][0]["name"] == "get_weather"


class TestFailover:
    def test_429_fails_over_to_the_next_provider(
        self,
        two_providers: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
    ) -> None:
        """openai 429 → anthropic answers; headers and attempts say so."""
        fake_openai.script.push(Behavior(status=429, retry_after=1))
        fake_anthropic.script.push(Behavior(text="from claude"))
        raw = sdk(two_providers, issuer).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.parse().choices[0].message.content == "from claude"
        assert raw.headers["x-gatekeeper-provider"] == "anthropic"

    @pytest.mark.parametrize(
        "behavior",
        [
            Behavior(status=500),
            Behavior(status=503),
            Behavior(first_byte_delay=3.0),
        ],
        ids=["500", "503", "slow-first-byte"],
    )
    def test_server_errors_and_timeouts_fail_over(
        self,
        two_providers: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
        behavior: Behavior,
    ) -> None:
        """5xx and a first byte slower than first_byte_s move on to the next provider."""
        fake_openai.script.push(behavior)
        reply = sdk(two_providers, issuer).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == Behavior().text

    def test_client_error_does_not_fail_over(
        self,
        two_providers: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
    ) -> None:
        """The upstream's 400 is the client's fault: passed on, no second provider tried."""
        fake_openai.script.push(Behavior(status=400, error_message="bad temperature"))
        with pytest.raises(openai.BadRequestError, match="bad temperature"):
            sdk(two_providers, issuer).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
        assert fake_anthropic.script.requests == []

    def test_stream_fails_over_before_the_first_byte(
        self,
        two_providers: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
    ) -> None:
        """A stream cut before its first chunk is retried on the next provider."""
        fake_openai.script.push(Behavior(cut_after_chunks=0))
        fake_anthropic.script.push(Behavior(text="rescued"))
        stream = sdk(two_providers, issuer).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "rescued"

    def test_connect_refused_fails_over(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_anthropic: FakeAnthropic,
        issuer: Issuer,
    ) -> None:
        """A provider that refuses connections costs a failover, not an error."""
        gw = start_gateway(
            providers=[
                {
                    "name": "dead",
                    "kind": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "api_key": "k",
                },
                anthropic_provider("anthropic", fake_anthropic),
            ],
            models=[chat_model("m1", "dead"), chat_model("m2", "anthropic")],
        )
        started = time.monotonic()
        reply = sdk(gw, issuer).chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == Behavior().text
        assert time.monotonic() - started < 5


class TestFailoverPolicy:
    def test_a_status_left_out_of_retry_statuses_is_answered_not_failed_over(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
        issuer: Issuer,
    ) -> None:
        """failover.retry_statuses without 500: the client gets the 502, no failover."""
        gw = start_gateway(
            providers=[
                openai_provider("openai", fake_openai),
                anthropic_provider("anthropic", fake_anthropic),
            ],
            models=[chat_model("gpt-4o", "openai"), chat_model("claude-3-5-sonnet", "anthropic")],
            failover={"retry_statuses": [429]},
        )
        fake_openai.script.push(Behavior(status=500, error_message="kaput"))
        with pytest.raises(openai.InternalServerError, match="kaput"):
            sdk(gw, issuer).chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
        assert fake_anthropic.script.requests == []

    def test_upstream_auth_failure_fails_over_and_raises_an_alert(
        self,
        two_providers: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
        nats_server: EmbeddedNats,
    ) -> None:
        """A 401 from the upstream (our key is bad): next provider answers; BH_ALERTS says so."""
        fake_openai.script.push(Behavior(status=401, error_message="bad key"))
        reply = sdk(two_providers, issuer).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == Behavior().text

        async def alerts() -> list[dict[str, object]]:
            nc = await nats.connect(nats_server.url)
            try:
                sub = await nc.jetstream().subscribe(
                    "bh.alerts.provider_auth", ordered_consumer=True
                )
                msg = await sub.next_msg(timeout=5)
                return [orjson.loads(msg.data)]
            finally:
                await nc.close()

        (alert,) = asyncio.run(alerts())
        assert alert["type"] == "provider_auth" and alert["provider"] == "openai"

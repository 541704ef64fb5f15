"""``POST /v1/messages`` with the official ``anthropic`` SDK, over every upstream wire.

One gateway serves a model on a fake OpenAI-compatible upstream, one on a fake
Anthropic upstream and (``demo: on``) the built-in demo model; the Anthropic SDK
talks to all three through the same pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from tests.conftest import anthropic_provider, openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_anthropic import FakeAnthropic
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model
from tests.integration.test_audit_durability import records

ANTHROPIC_KEY = "sk-ant-fake-upstream"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=ANTHROPIC_KEY) as fake:
        yield fake


@pytest.fixture
def gw(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> GatewayProcess:
    return start_gateway(
        providers=[
            openai_provider("openai", fake_openai),
            anthropic_provider("anthropic", fake_anthropic),
        ],
        models=[
            chat_model("gpt-4o", "openai"),
            chat_model("claude-3-5-sonnet", "anthropic", upstream="claude-3-5-sonnet-20241022"),
        ],
        demo="on",
        aliases={"claude-sonnet-4-5": "gpt-4o"},
    )


def client(gw: GatewayProcess, token: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.base_url.removesuffix("/v1"), api_key=token,
                               max_retries=0, timeout=20)  # fmt: skip


UPSTREAMS = {"openai": "gpt-4o", "anthropic": "claude-3-5-sonnet", "demo": "gatekeeper-demo"}


def script(fakes: dict[str, Any], upstream: str, b: Behavior) -> None:
    if upstream in fakes:
        fakes[upstream].script.push(b)


class TestMessagesOverEveryUpstream:
    @pytest.mark.parametrize("upstream", sorted(UPSTREAMS))
    def test_json_and_stream(
        self,
        gw: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
        upstream: str,
    ) -> None:
        """messages.create and messages.stream give a Message with text, stop reason, usage."""
        fakes = {"openai": fake_openai, "anthropic": fake_anthropic}
        c = client(gw, issuer.token())
        script(fakes, upstream, Behavior(text="Bonjour", prompt_tokens=11, completion_tokens=2))
        msg = c.messages.create(
            model=UPSTREAMS[upstream],
            max_tokens=64,
            system="Be French.",
            messages=[{"role": "user", "content": "Hello"}],
        )
        assert msg.type == "message" and msg.role == "assistant"
        assert msg.content[0].type == "text" and msg.content[0].text
        assert msg.stop_reason == "end_turn"
        assert msg.id.startswith("msg_")
        script(fakes, upstream, Behavior(text="one two three", chunks=3, completion_tokens=3))
        with c.messages.stream(
            model=UPSTREAMS[upstream], max_tokens=64, messages=[{"role": "user", "content": "go"}]
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text and final.content[0].text == text  # type: ignore[union-attr]
        assert final.stop_reason == "end_turn"
        assert final.usage.output_tokens > 0
        if upstream == "openai":
            assert text == "one two three"
            sent = fake_openai.script.requests[0]
            assert sent["messages"][0] == {"role": "system", "content": "Be French."}
            assert sent["max_tokens"] == 64

    @pytest.mark.parametrize("upstream", ["openai", "anthropic"])
    @pytest.mark.parametrize("streamed", [False, True])
    def test_tool_use_round_trip(
        self,
        gw: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic,
        upstream: str,
        streamed: bool,
    ) -> None:
        """A tool_use block comes back (streamed as input_json_delta); its tool_result goes on."""
        fakes = {"openai": fake_openai, "anthropic": fake_anthropic}
        c = client(gw, issuer.token())
        script(fakes, upstream, Behavior(text='TOOL:get_weather {"city": "Paris"}', chunks=4))
        ask: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
        kwargs: dict[str, Any] = {
            "model": UPSTREAMS[upstream],
            "max_tokens": 64,
            "tools": [WEATHER],
        }
        if streamed:
            with c.messages.stream(messages=ask, **kwargs) as stream:
                msg = stream.get_final_message()
        else:
            msg = c.messages.create(messages=ask, **kwargs)
        assert msg.stop_reason == "tool_use"
        use = next(b for b in msg.content if b.type == "tool_use")
        assert use.name == "get_weather" and use.input == {"city": "Paris"}
        script(fakes, upstream, Behavior(text="Sunny."))
        follow = [
            *ask,
            {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21C"}
            ]},
        ]  # fmt: skip
        again = c.messages.create(messages=follow, **kwargs)
        assert again.content[0].text == "Sunny."  # type: ignore[union-attr]
        sent = fakes[upstream].script.requests[-1]
        if upstream == "openai":
            assert sent["messages"][1]["tool_calls"][0]["id"] == use.id
            assert sent["messages"][2] == {
                "role": "tool", "tool_call_id": use.id, "content": "sunny, 21C"
            }  # fmt: skip
        else:
            assert sent["messages"][1]["content"][-1]["type"] == "tool_use"
            assert sent["messages"][2]["content"][0]["tool_use_id"] == use.id


class TestMessagesEdges:
    def test_bearer_auth_alias_and_count_tokens(
        self, gw: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """Authorization: Bearer works as x-api-key does; an alias reaches its model."""
        c = anthropic.Anthropic(base_url=gw.base_url.removesuffix("/v1"), auth_token=issuer.token(),
                                max_retries=0, timeout=20)  # fmt: skip
        msg = c.messages.create(
            model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        assert msg.model == "claude-sonnet-4-5"
        assert fake_openai.script.requests[-1]["model"] == "gpt-4o"
        counted = c.messages.count_tokens(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hello " * 100}]
        )
        assert 100 < counted.input_tokens < 400

    def test_errors_are_in_anthropics_shape(self, gw: GatewayProcess, issuer: Issuer) -> None:
        """Bad key 401, bad body 400, unknown model 404: each an Anthropic error object."""
        url = gw.base_url + "/messages"
        ok = {"model": "gpt-4o", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
        headers = {"x-api-key": issuer.token(), "anthropic-version": "2023-06-01"}
        cases: list[tuple[dict[str, str], bytes, int, str]] = [
            ({"x-api-key": "nope"}, orjson.dumps(ok), 401, "authentication_error"),
            (headers, b"{not json", 400, "invalid_request_error"),
            (headers, orjson.dumps({**ok, "max_tokens": None}), 400, "invalid_request_error"),
            (headers, orjson.dumps({**ok, "messages": [{"role": "bot"}]}), 400,
             "invalid_request_error"),
            (headers, orjson.dumps({**ok, "messages": [{"role": "user", "content": [
                {"type": "video"}]}]}), 400, "invalid_request_error"),
            (headers, orjson.dumps({**ok, "model": "no-such"}), 404, "not_found_error"),
            (headers, orjson.dumps([1, 2]), 400, "invalid_request_error"),
        ]  # fmt: skip
        for extra, body, status, kind in cases:
            r = httpx.post(url, content=body, headers={**extra, "content-type": "application/json"})
            assert r.status_code == status, (body, r.text)
            assert r.json()["type"] == "error"
            assert r.json()["error"]["type"] == kind
            assert r.json()["error"]["message"]

    def test_upstream_overload_is_529_and_audit_names_the_wires(
        self, start_gateway: Callable[..., GatewayProcess], issuer: Issuer,
        fake_anthropic: FakeAnthropic,
    ) -> None:  # fmt: skip
        """The only upstream overloaded → overloaded_error 529; the audit record names
        the ingress and the upstream wire."""
        gw = start_gateway(
            providers=[anthropic_provider("anthropic", fake_anthropic)],
            models=[chat_model("claude-3-5-sonnet", "anthropic")],
            failover={"same_provider_retries": 0},
        )
        fake_anthropic.script.push(*[Behavior(status=529)] * 3)
        r = httpx.post(
            gw.base_url + "/messages",
            json={"model": "claude-3-5-sonnet", "max_tokens": 8,
                  "messages": [{"role": "user", "content": "x"}]},
            headers={"x-api-key": issuer.token()},
            timeout=20,
        )  # fmt: skip
        assert r.status_code == 529, r.text
        assert r.json()["error"]["type"] == "overloaded_error"
        fake_anthropic.script.reset()
        c = client(gw, issuer.token())
        c.messages.create(
            model="claude-3-5-sonnet", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
        deadline = time.monotonic() + 10
        served: list[dict[str, Any]] = []
        while not served and time.monotonic() < deadline:
            recs = records(gw.nats_url)
            served = [x for x in recs if x.get("client_api") == "messages" and x["status"] == 200]
            time.sleep(0.1)
        assert served and served[-1]["upstream_wire"] == "anthropic"


class TestNativeToAnthropic:
    def test_thinking_blocks_and_anthropic_only_fields_reach_anthropic_untouched(
        self, gw: GatewayProcess, issuer: Issuer, fake_anthropic: FakeAnthropic
    ) -> None:
        """Routed to an Anthropic provider, the client's body goes as it is (model aside):
        thinking/redacted_thinking with signatures, the thinking config, top_k, cache_control."""
        history: list[Any] = [
            {"role": "user", "content": [{"type": "text", "text": "Think, then answer.",
                                          "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Let me see.", "signature": "sig-abc"},
                {"type": "redacted_thinking", "data": "opaque-bytes"},
                {"type": "text", "text": "Done."},
            ]},
            {"role": "user", "content": "And now?"},
        ]  # fmt: skip
        c = client(gw, issuer.token())
        for streamed in (False, True):
            fake_anthropic.script.push(Behavior(text="native"))
            thinking = {"type": "enabled", "budget_tokens": 1024}
            kw: dict[str, Any] = {"model": "claude-3-5-sonnet", "max_tokens": 2048,
                                  "messages": history, "extra_body": {"top_k": 5},
                                  "thinking": thinking}  # fmt: skip
            if streamed:
                with c.messages.stream(**kw) as stream:
                    msg = stream.get_final_message()
            else:
                msg = c.messages.create(**kw)
            assert msg.content[0].text == "native"  # type: ignore[union-attr]
            sent = fake_anthropic.script.requests[-1]
            assert sent["messages"] == history
            assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
            assert sent["top_k"] == 5 and sent["model"] == "claude-3-5-sonnet-20241022"
            assert sent["stream"] is streamed
        assert msg.usage.output_tokens > 0

    def test_the_budget_cap_is_sent_not_the_clients_max_tokens(
        self, gw: GatewayProcess, issuer: Issuer, fake_anthropic: FakeAnthropic
    ) -> None:
        """A key with 600 tokens left asks for 4,096: Anthropic is sent what fits, so the
        reservation stays an upper bound of what it may bill (thinking lowered below it)."""
        c = client(gw, issuer.token(budget_tokens=600))
        fake_anthropic.script.push(Behavior(text="capped"))
        c.messages.create(
            model="claude-3-5-sonnet",
            max_tokens=4096,
            messages=[{"role": "user", "content": "hi"}],
            thinking={"type": "enabled", "budget_tokens": 2048},
        )
        sent = fake_anthropic.script.requests[-1]
        assert 1 <= sent["max_tokens"] < 600
        assert sent["thinking"]["budget_tokens"] < sent["max_tokens"]


class TestLimits:
    def test_a_rate_limited_key_gets_rate_limit_error_with_retry_after(
        self, gw: GatewayProcess, issuer: Issuer
    ) -> None:
        """The same rate limit step as chat; the refusal in Anthropic's shape, with retry-after."""
        c = client(gw, issuer.token(rpm=1))
        ask: Any = {"model": "gpt-4o", "max_tokens": 8,
                    "messages": [{"role": "user", "content": "x"}]}  # fmt: skip
        c.messages.create(**ask)
        with pytest.raises(anthropic.RateLimitError) as caught:
            c.messages.create(**ask)
        assert caught.value.response.headers["retry-after"]
        assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]

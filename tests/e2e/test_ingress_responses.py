"""``/v1/responses`` with the official ``openai`` SDK, over every upstream wire.

One gateway serves a model on a fake OpenAI-compatible upstream, one on a fake
Anthropic upstream and the demo model; conversation state lives in JetStream, so a
second gateway process on the same NATS continues a conversation the first stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import anthropic_provider, openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_anthropic import FakeAnthropic
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model

UPSTREAMS = {"openai": "gpt-4o", "anthropic": "claude-3-5-sonnet", "demo": "gatekeeper-demo"}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key="sk-ant-fake-upstream") as fake:
        yield fake


def _start(
    start: Callable[..., GatewayProcess], fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic
) -> GatewayProcess:
    return start(
        providers=[
            openai_provider("openai", fake_openai),
            anthropic_provider("anthropic", fake_anthropic),
        ],
        models=[chat_model("gpt-4o", "openai"), chat_model("claude-3-5-sonnet", "anthropic")],
        demo="on",
    )


@pytest.fixture
def gw(
    start_gateway: Callable[..., GatewayProcess],
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> GatewayProcess:
    return _start(start_gateway, fake_openai, fake_anthropic)


def sdk(gw: GatewayProcess, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=token, max_retries=0, timeout=20)


def push(fakes: dict[str, Any], upstream: str, b: Behavior) -> None:
    if upstream in fakes:
        fakes[upstream].script.push(b)


class TestResponsesOverEveryUpstream:
    @pytest.mark.parametrize("upstream", sorted(UPSTREAMS))
    def test_json_and_both_stream_styles(
        self, gw: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic, upstream: str,
    ) -> None:  # fmt: skip
        """create, create(stream=True) and responses.stream all give the same text."""
        fakes = {"openai": fake_openai, "anthropic": fake_anthropic}
        c = sdk(gw, issuer.token())
        push(fakes, upstream, Behavior(text="one two three", prompt_tokens=9, completion_tokens=3))
        r = c.responses.create(model=UPSTREAMS[upstream], input="count", instructions="Be brief.")
        assert r.status == "completed" and r.output_text
        assert r.id.startswith("resp_") and r.output[0].type == "message"
        push(fakes, upstream, Behavior(text="one two three", chunks=3))
        events = list(c.responses.create(model=UPSTREAMS[upstream], input="count", stream=True))
        kinds = [e.type for e in events]
        assert kinds[:4] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ]
        assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                              "response.output_item.done", "response.completed"]  # fmt: skip
        assert [e.sequence_number for e in events] == list(range(len(events)))
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert events[-1].response.output_text == text  # type: ignore[union-attr]
        push(fakes, upstream, Behavior(text="one two three", chunks=3, completion_tokens=3))
        with c.responses.stream(model=UPSTREAMS[upstream], input="count") as stream:
            final = stream.get_final_response()
        assert final.output_text == text
        assert final.usage is not None and final.usage.output_tokens > 0
        if upstream == "openai":
            assert text == "one two three"
            sent = fake_openai.script.requests[0]["messages"]
            assert sent == [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "count"}]  # fmt: skip

    @pytest.mark.parametrize("upstream", ["openai", "anthropic"])
    @pytest.mark.parametrize("streamed", [False, True])
    def test_function_call_round_trip(
        self, gw: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic, upstream: str, streamed: bool,
    ) -> None:  # fmt: skip
        """A function_call item comes back; its function_call_output continues the turn."""
        fakes = {"openai": fake_openai, "anthropic": fake_anthropic}
        c = sdk(gw, issuer.token())
        push(fakes, upstream, Behavior(text='TOOL:get_weather {"city": "Paris"}', chunks=4))
        kwargs: dict[str, Any] = {"model": UPSTREAMS[upstream], "tools": [WEATHER]}
        if streamed:
            with c.responses.stream(input="Weather in Paris?", **kwargs) as stream:
                r = stream.get_final_response()
        else:
            r = c.responses.create(input="Weather in Paris?", **kwargs)
        call = next(item for item in r.output if item.type == "function_call")
        assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
        push(fakes, upstream, Behavior(text="Sunny."))
        again = c.responses.create(
            previous_response_id=r.id,
            input=[{"type": "function_call_output", "call_id": call.call_id,
                    "output": "sunny, 21C"}],
            **kwargs,
        )  # fmt: skip
        assert again.output_text == "Sunny."
        sent = fakes[upstream].script.requests[-1]["messages"]
        if upstream == "openai":
            assert sent[1]["tool_calls"][0]["id"] == call.call_id
            assert sent[2] == {"role": "tool", "tool_call_id": call.call_id,
                               "content": "sunny, 21C"}  # fmt: skip
        else:
            assert sent[-1]["content"][0]["tool_use_id"] == call.call_id


class TestConversationState:
    def test_previous_response_id_across_two_gateways(
        self, start_gateway: Callable[..., GatewayProcess], issuer: Issuer,
        fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic,
    ) -> None:  # fmt: skip
        """Node A stores; node B continues, reads, lists the input and deletes it."""
        a = _start(start_gateway, fake_openai, fake_anthropic)
        b = _start(start_gateway, fake_openai, fake_anthropic)
        token = issuer.token()
        fake_openai.script.push(Behavior(text="Hi Ada."), Behavior(text="Your name is Ada."))
        first = sdk(a, token).responses.create(model="gpt-4o", input="I am Ada.")
        second = sdk(b, token).responses.create(
            model="gpt-4o", input="Who am I?", previous_response_id=first.id
        )
        assert second.previous_response_id == first.id
        sent = fake_openai.script.requests[-1]["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "user"]
        assert sent[1]["content"] == "Hi Ada."
        got = sdk(b, token).responses.retrieve(first.id)
        assert got.id == first.id and got.output_text == "Hi Ada."
        items = sdk(a, token).responses.input_items.list(second.id)
        assert [i.type for i in items.data] == ["message"]
        other = sdk(a, issuer.token(tenant="globex"))
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.create(model="gpt-4o", input="x", previous_response_id=first.id)
        sdk(b, token).responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            sdk(a, token).responses.retrieve(first.id)

    def test_store_false_keeps_nothing(self, gw: GatewayProcess, issuer: Issuer) -> None:
        c = sdk(gw, issuer.token())
        r = c.responses.create(model="gatekeeper-demo", input="x", store=False)
        assert r.store is False
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(r.id)


class TestHostileInput:
    def test_bad_bodies_get_openai_errors_never_500(
        self, gw: GatewayProcess, issuer: Issuer
    ) -> None:
        """Each malformed body is a 4xx with OpenAI's error object."""
        url = gw.base_url + "/responses"
        headers = {"authorization": f"Bearer {issuer.token()}",
                   "content-type": "application/json"}  # fmt: skip
        ok = {"model": "gpt-4o", "input": "x"}
        bodies: list[tuple[Any, int]] = [
            ({"model": "gpt-4o"}, 400),
            ({"input": "x"}, 400),
            ({**ok, "input": 5}, 400),
            ({**ok, "input": [{"type": "message", "role": "robot", "content": "x"}]}, 400),
            ({**ok, "input": [{"type": "web_search_call"}]}, 400),
            ({**ok, "tools": [{"type": "web_search"}]}, 400),
            ({**ok, "temperature": "hot"}, 400),
            ({**ok, "max_output_tokens": 0}, 400),
            ({**ok, "text": {"format": {"type": "json_schema"}}}, 400),
            ({**ok, "previous_response_id": "resp_nope"}, 404),
            ({**ok, "model": "no-such-model"}, 404),
            ([1, 2, 3], 400),
            ({**ok, "input": [[[]]]}, 400),
        ]
        for body, status in bodies:
            r = httpx.post(url, content=orjson.dumps(body), headers=headers, timeout=10)
            assert r.status_code == status, (body, r.text)
            assert r.json()["error"]["message"], body
        assert httpx.post(url, content=b"{", headers=headers).status_code == 400
        r = httpx.post(url, json=ok, headers={"authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
        assert httpx.get(url + "/resp_" + "0" * 24, headers=headers).status_code == 404
        assert httpx.get(url + "/../../etc", headers=headers).status_code == 404

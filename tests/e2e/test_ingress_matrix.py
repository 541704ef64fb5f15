"""The matrix: ingress {chat, responses, messages} × upstream {openai, anthropic, demo}
× {JSON, stream, tools}, each through one shared gateway (kept fast: one process).

Each cell asks with the ingress's official SDK and checks the answer's text (or tool
call), then that the audit record names the ingress and the upstream wire.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gatekeeper.bus.embedded import EmbeddedNats
from tests.conftest import anthropic_provider, openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_anthropic import FakeAnthropic
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, base_config, chat_model
from tests.integration.test_audit_durability import records

MODELS = {"openai": "gpt-4o", "anthropic": "claude-3-5-sonnet", "demo": "gatekeeper-demo"}
TEXT = "alpha beta gamma"
TOOL_TEXT = 'TOOL:get_weather {"city": "Paris"}'
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


class World:
    def __init__(self, gw: GatewayProcess, fakes: dict[str, Any], token: str) -> None:
        self.gw, self.fakes, self.token = gw, fakes, token


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("matrix")
    issuer = Issuer(root / "issuer")
    server = EmbeddedNats(root / "nats", name="matrix-nats")
    server.start()
    with FakeOpenAI() as oa, FakeAnthropic(api_key="sk-ant-fake") as an:
        cfg = base_config(
            [openai_provider("openai", oa), anthropic_provider("anthropic", an)],
            [chat_model("gpt-4o", "openai"), chat_model("claude-3-5-sonnet", "anthropic")],
            issuer,
            root / "state",
            demo="on",
        )
        gw = GatewayProcess(cfg, root / "gw", server.url).start()
        try:
            yield World(gw, {"openai": oa, "anthropic": an}, issuer.token())
        finally:
            gw.stop()
            server.stop()


def ask(world: World, ingress: str, model: str, mode: str) -> tuple[str, dict[str, Any] | None]:
    """(text, tool call as {name, args}) from one request through ``ingress``."""
    gw, tools = world.gw, mode == "tools"
    if ingress == "messages":
        a = anthropic.Anthropic(base_url=gw.url, api_key=world.token, max_retries=0, timeout=20)
        kw: dict[str, Any] = {"model": model, "max_tokens": 64,
                              "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        if tools:
            kw["tools"] = [{"name": "get_weather", "input_schema": SCHEMA}]
        if mode == "stream":
            with a.messages.stream(**kw) as s:
                msg = s.get_final_message()
        else:
            msg = a.messages.create(**kw)
        text = "".join(b.text for b in msg.content if b.type == "text")
        use = next((b for b in msg.content if b.type == "tool_use"), None)
        return text, (None if use is None else {"name": use.name, "args": use.input})
    o = openai.OpenAI(base_url=gw.base_url, api_key=world.token, max_retries=0, timeout=20)
    if ingress == "responses":
        rkw: dict[str, Any] = {"model": model, "input": "hi"}
        if tools:
            rkw["tools"] = [{"type": "function", "name": "get_weather", "parameters": SCHEMA}]
        if mode == "stream":
            with o.responses.stream(**rkw) as rs:
                r = rs.get_final_response()
        else:
            r = o.responses.create(**rkw)
        call = next((i for i in r.output if i.type == "function_call"), None)
        found = None if call is None else {"name": call.name, "args": json.loads(call.arguments)}
        return r.output_text, found
    ckw: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if tools:
        ckw["tools"] = [{"type": "function",
                         "function": {"name": "get_weather", "parameters": SCHEMA}}]  # fmt: skip
    if mode == "stream":
        text, args, name = "", "", None
        for chunk in o.chat.completions.create(stream=True, **ckw):
            if chunk.choices:
                delta = chunk.choices[0].delta
                text += delta.content or ""
                for tc in delta.tool_calls or ():
                    name = name or (tc.function.name if tc.function else None)
                    args += (tc.function.arguments or "") if tc.function else ""
        return text, (None if name is None else {"name": name, "args": json.loads(args)})
    msg = o.chat.completions.create(**ckw).choices[0].message
    tc = (msg.tool_calls or [None])[0]
    found = None
    if tc is not None and tc.type == "function":
        found = {"name": tc.function.name, "args": json.loads(tc.function.arguments)}
    return msg.content or "", found


@pytest.mark.parametrize("mode", ["json", "stream", "tools"])
@pytest.mark.parametrize("upstream", ["openai", "anthropic", "demo"])
@pytest.mark.parametrize("ingress", ["chat", "responses", "messages"])
def test_cell(world: World, ingress: str, upstream: str, mode: str) -> None:
    fake = world.fakes.get(upstream)
    if fake is not None:
        fake.script.reset()
        fake.script.push(Behavior(text=TOOL_TEXT if mode == "tools" else TEXT, chunks=3))
    text, call = ask(world, ingress, MODELS[upstream], mode)
    if upstream == "demo":  # the demo answers in text whatever it is asked
        assert text and call is None
    elif mode == "tools":
        assert call == {"name": "get_weather", "args": {"city": "Paris"}}
    else:
        assert text == TEXT
    wire = upstream
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        latest = records(world.gw.nats_url)[-1]
        if latest["client_api"] == ingress and latest["upstream_wire"] == wire:
            break
        time.sleep(0.05)
    assert (latest["client_api"], latest["upstream_wire"], latest["status"]) == (ingress, wire, 200)


@pytest.mark.parametrize("ingress", ["responses", "messages"])
def test_an_upstream_cut_mid_stream_is_an_error_in_the_clients_api(
    world: World, ingress: str
) -> None:
    """The upstream drops the connection after one chunk and continuation is off
    (docs/failover.md): the client gets its API's error event (not a silent end), and
    the audit record says 502 for that ingress."""
    off = {"x-gatekeeper-continuation": "off"}
    fake = world.fakes["openai"]
    fake.script.reset()
    fake.script.push(Behavior(text=TEXT, chunks=3, cut_after_chunks=1))
    if ingress == "messages":
        a = anthropic.Anthropic(base_url=world.gw.url, api_key=world.token, max_retries=0)
        ask: Any = {"model": "gpt-4o", "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        with (
            pytest.raises(anthropic.APIStatusError) as caught,
            a.messages.stream(**ask, extra_headers=off) as s,
        ):
            list(s.text_stream)
        assert "upstream" in str(caught.value)
    else:
        o = openai.OpenAI(base_url=world.gw.base_url, api_key=world.token, max_retries=0)
        events = list(
            o.responses.create(model="gpt-4o", input="hi", stream=True, extra_headers=off)
        )
        assert [e.type for e in events][-2:] == ["error", "response.failed"]
        assert events[-1].response.status == "failed"  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        latest = records(world.gw.nats_url)[-1]
        if latest["client_api"] == ingress:
            break
        time.sleep(0.05)
    assert (latest["client_api"], latest["status"]) == (ingress, 502)


@pytest.mark.parametrize(
    ("ingress", "path", "body"),
    [
        ("responses", "/v1/responses", {"model": "gpt-4o", "input": "hi", "stream": True}),
        ("messages", "/v1/messages", {"model": "gpt-4o", "max_tokens": 8, "stream": True,
                                      "messages": [{"role": "user", "content": "hi"}]}),
    ],
)  # fmt: skip
def test_a_client_that_hangs_up_mid_stream_still_gets_one_record(
    world: World, ingress: str, path: str, body: dict[str, Any]
) -> None:
    """The client closes after the first bytes: the upstream call is dropped and the
    record says 499 for that ingress, as for chat."""
    fake = world.fakes["openai"]
    fake.script.reset()
    fake.script.push(Behavior(text=TEXT * 20, chunks=40, chunk_delay=0.05))
    headers = {"authorization": f"Bearer {world.token}"}
    with httpx.stream("POST", world.gw.url + path, json=body, headers=headers) as r:
        assert r.status_code == 200
        next(r.iter_bytes())
    deadline = time.monotonic() + 10
    latest: dict[str, Any] = {}
    while time.monotonic() < deadline:
        latest = records(world.gw.nats_url)[-1]
        if latest["client_api"] == ingress and latest["status"] == 499:
            break
        time.sleep(0.05)
    assert (latest["client_api"], latest["status"]) == (ingress, 499)

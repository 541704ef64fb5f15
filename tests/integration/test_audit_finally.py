"""Exactly one record per accepted request on every path, with an injected bug.

The gateway's node runs in this process against a real nats-server (so a provider
can be swapped for one that fails in ways no provider should: an exception type
the pipeline does not know, or a hang the client gives up on). Requests go through
the real app (its single outermost boundary) via ``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gatekeeper.app import NodeIdentity, create_app
from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.catalog import Catalog
from gatekeeper.config import load_config
from gatekeeper.http.inbound import Inbound
from gatekeeper.node import Node, start_node
from gatekeeper.providers.base import Call, Reply
from tests.conftest import openai_provider
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import Issuer, base_config, chat_model
from tests.integration.test_audit_durability import records

NODE_ID = "gk-finally-w0"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


class Broken:
    """A provider with a bug: it raises what no provider may raise."""

    name, kind, total_timeout_s = "openai", "openai", 30.0

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.called = asyncio.Event()

    async def chat(self, call: Call) -> Reply:
        self.called.set()
        if self.hang:
            await asyncio.sleep(3600)
        raise ZeroDivisionError("a bug deep in a provider")

    async def chat_stream(self, call: Call) -> Any:
        raise ZeroDivisionError("a bug deep in a provider")

    async def embeddings(self, call: Call) -> Reply:
        raise ZeroDivisionError("a bug deep in a provider")

    async def aclose(self) -> None:
        return None


class InProcess:
    def __init__(self, node: Node, app: Any) -> None:
        self.node, self.app = node, app

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="http://gk.test/v1", timeout=15)

    def in_flight(self, token: str) -> dict[str, Any]:
        claims = self.node.pipeline.verifier.verify_bearer(f"Bearer {token}")
        return {kind: c["in_flight"] for kind, c in self.node.admission.usage(claims).items()}


@pytest.fixture
async def gateway(
    tmp_path: Path, nats_server: EmbeddedNats, issuer: Issuer, fake_openai: FakeOpenAI
) -> AsyncIterator[InProcess]:
    cfg = base_config(
        [openai_provider("openai", fake_openai)],
        [chat_model("gpt-4o-mini", "openai")],
        issuer,
        tmp_path / "state",
    )
    path = tmp_path / "gatekeeper.yaml"
    path.write_text(yaml.safe_dump(cfg))
    config = load_config(path)
    app = create_app(config, NodeIdentity(NODE_ID, nats_server.url))
    node = await start_node(config, Catalog.build(config), NODE_ID, nats_server.url)
    app.state.gateway.node = node
    try:
        yield InProcess(node, app)
    finally:
        await node.stop(5)


def audit_of(url: str) -> list[dict[str, Any]]:
    return [r for r in records(url) if r["tenant"] != "_anonymous"]


@pytest.mark.slow
class TestUnexpectedErrors:
    async def test_a_bug_is_a_500_with_one_record_and_no_reservation_left(
        self, gateway: InProcess, nats_server: EmbeddedNats, issuer: Issuer
    ) -> None:
        """A provider raising ZeroDivisionError: 500 with a request id, one record each."""
        gateway.node.pipeline.pool.providers["openai"] = Broken()  # type: ignore[assignment]
        token = issuer.token(budget_tokens=1_000_000)
        headers = {"authorization": f"Bearer {token}"}
        async with gateway.client() as http:
            replies = [
                await http.post("/chat/completions", json=BODY, headers=headers) for _ in range(5)
            ]
        assert [r.status_code for r in replies] == [500] * 5
        rids = [r.headers["x-request-id"] for r in replies]
        assert all(
            rid in r.json()["error"]["message"] for rid, r in zip(rids, replies, strict=True)
        )
        assert set(gateway.in_flight(token).values()) <= {0, None}
        recs = await asyncio.to_thread(audit_of, nats_server.url)
        assert [r["request_id"] for r in recs] == rids
        assert {(r["status"], r["error_code"], r["usage_source"]) for r in recs} == {
            (500, "internal_error", "none")
        }

    async def test_a_client_that_gives_up_still_leaves_one_record(
        self, gateway: InProcess, nats_server: EmbeddedNats, issuer: Issuer
    ) -> None:
        """The request task is cancelled mid-upstream: a 499 record, reservation released."""
        broken = Broken(hang=True)
        gateway.node.pipeline.pool.providers["openai"] = broken  # type: ignore[assignment]
        token = issuer.token(budget_tokens=1_000_000)
        headers = {"authorization": f"Bearer {token}", "x-request-id": "gives-up"}
        async with gateway.client() as http:
            request = asyncio.ensure_future(
                http.post("/chat/completions", json=BODY, headers=headers)
            )
            await asyncio.wait_for(broken.called.wait(), 10)
            assert any(v for v in gateway.in_flight(token).values())  # reserved while waiting
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
        for _ in range(100):  # the record is written in the background
            if gateway.node.pipeline.background:
                await asyncio.sleep(0.02)
        await asyncio.gather(*gateway.node.pipeline.background)
        assert set(gateway.in_flight(token).values()) <= {0, None}
        recs = await asyncio.to_thread(audit_of, nats_server.url)
        assert [(r["request_id"], r["status"], r["error_code"]) for r in recs] == [
            ("gives-up", 499, "client_disconnected")
        ]
        assert json.loads(json.dumps(recs[0]))["seq"] == 1


@pytest.mark.slow
async def test_a_stream_whose_client_left_before_its_head_still_has_its_record(
    gateway: InProcess, nats_server: EmbeddedNats, issuer: Issuer
) -> None:
    """The SSE response's first send fails: the pump never runs, the record is still one."""
    token = issuer.token(budget_tokens=1_000_000)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
        ],
        "client": ("127.0.0.1", 5000),
    }
    body = json.dumps(BODY | {"stream": True}).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        raise OSError("the client is gone")

    pipeline = gateway.node.pipeline
    response = await pipeline.chat_completions(Inbound(scope, receive), "left-early", 0.0)
    with pytest.raises(OSError):
        await response(scope, receive, send)
    while pipeline.background:
        await asyncio.gather(*pipeline.background)
    assert set(gateway.in_flight(token).values()) <= {0, None}
    recs = await asyncio.to_thread(audit_of, nats_server.url)
    assert [(r["request_id"], r["status"], r["error_code"]) for r in recs] == [
        ("left-early", 499, "client_disconnected")
    ]

"""The pipeline's composition against in-memory fakes of its steps' Protocols.

No server: a fake request (the ``Readable`` the edge hands in), a router, an admission,
an auditor and providers that answer from memory. What is checked is the flow itself:
the order of the steps, exactly one record on every way out, the reservation settled
once, the fair-share slot given back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from gatekeeper.auth import paserk
from gatekeeper.auth.keyfiles import mint
from gatekeeper.auth.verifier import Keyring, TokenVerifier
from gatekeeper.budget.concurrency import ConcurrencyLimiter
from gatekeeper.config import Config
from gatekeeper.errors import AuthError, BudgetExceeded, ProviderUnavailable
from gatekeeper.exchange import Exchange
from gatekeeper.pipeline import Pipeline
from gatekeeper.providers.base import Call, Reply, ReplyStream, StreamState, Usage
from gatekeeper.providers.pool import ProviderPool
from gatekeeper.routing.decision import RouteDecision
from gatekeeper.routing.matrix import ModelSpec
from gatekeeper.validate import ChatRequest

SECRET = paserk.generate_secret_key()
TOKEN = mint(SECRET, "acme")
CHAT = ModelSpec("small", "up", "small-1", "chat", 0.001, 0.002, 8192, 1024)
EMBED = ModelSpec("vec", "up", "vec-1", "embedding", 0.001, 0.0, 8192, 0)
BODY = {"model": "small", "messages": [{"role": "user", "content": "hello"}]}


class Request:
    """What the edge hands the pipeline: headers, the ASGI scope, the body's messages."""

    def __init__(self, body: object, token: str | None = TOKEN) -> None:
        self.headers = {"content-type": "application/json"}
        if token is not None:
            self.headers["authorization"] = f"Bearer {token}"
        self.scope: dict[str, Any] = {"headers": [], "client": ("192.0.2.7", 5000)}
        self._body = orjson.dumps(body)

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": self._body, "more_body": False}


class Router:
    def route(
        self, req: ChatRequest, claims: object, mode: str | None, open_breakers: frozenset[str]
    ) -> RouteDecision:
        return RouteDecision(CHAT, (CHAT,), "requested", "requested model small")

    def route_embedding(self, model: str) -> RouteDecision:
        return RouteDecision(EMBED, (EMBED,), "requested", "requested model vec")


@dataclass
class Admission:
    refuse: bool = False
    strict: bool = False  # answer with an awaitable, as a strict key short of escrow does
    calls: list[str] = field(default_factory=list)

    def admit(self, ex: Exchange, req: ChatRequest | None) -> object:
        self.calls.append("admit")
        assert ex.route is not None, "the route is decided before admission"
        if self.refuse:
            raise BudgetExceeded("over budget", retry_after=60)
        if self.strict:
            return self._later()
        return "ticket"

    async def _later(self) -> object:
        await asyncio.sleep(0)
        return "ticket"

    def charge(self, ex: Exchange) -> None:
        self.calls.append("charge")

    def settle(self, ex: Exchange) -> None:
        assert ex.ticket == "ticket"
        self.calls.append("settle")

    def headers(self, ex: Exchange) -> dict[str, str]:
        return {"x-ratelimit-limit-requests": "10"}


@dataclass
class Auditor:
    records: list[Exchange] = field(default_factory=list)
    routed_ids: list[str] = field(default_factory=list)

    def begin(self, ex: Exchange) -> object:
        self.records.append(ex)
        return "sealed"

    async def end(self, ex: Exchange, sealed: object) -> None:
        assert sealed == "sealed"

    async def commit(self, ex: Exchange) -> None:
        self.records.append(ex)

    def routed(self, ex: Exchange) -> None:
        self.routed_ids.append(ex.request_id)


@dataclass
class Provider:
    """Answers from memory; ``fail``: an error to raise, ``bug``: an exception no
    provider may raise."""

    fail: Exception | None = None
    name: str = "up"
    kind: str = "openai"
    total_timeout_s: float = 30.0
    calls: list[Call] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def chat(self, call: Call) -> Reply:
        self.calls.append(call)
        if self.fail is not None:
            raise self.fail
        return Reply(b'{"id":"c1","choices":[]}', Usage(3, 4))

    async def embeddings(self, call: Call) -> Reply:
        self.calls.append(call)
        return Reply(b'{"data":[]}', Usage(2, 0))

    async def chat_stream(self, call: Call) -> ReplyStream:
        self.calls.append(call)
        state = StreamState()
        release = self.release = asyncio.Event()

        async def rest() -> AsyncIterator[bytes]:
            await release.wait()  # the rest of the answer comes when the test says so
            state.usage, state.completed = Usage(3, 4), True
            yield b'data: {"choices":[{"delta":{"content":" there"}}]}\n\n'

        async def close() -> None:
            return None

        return ReplyStream(
            b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n', rest(), state, close
        )

    async def aclose(self) -> None:
        return None


def pipeline(provider: Provider, admission: Admission, auditor: Auditor) -> Pipeline:
    return Pipeline(
        Config(),
        TokenVerifier(Keyring([paserk.public_key_of(SECRET)])),
        Router(),
        admission,  # type: ignore[arg-type]
        ProviderPool({"up": provider}),  # type: ignore[dict-item]
        auditor,  # type: ignore[arg-type]
        concurrency=ConcurrencyLimiter(),
    )


class TestChat:
    async def test_a_reply_is_charged_settled_and_recorded_once(self) -> None:
        """The steps in order: admit, the upstream call, charge, settle; one record."""
        admission, auditor, up = Admission(), Auditor(), Provider()
        p = pipeline(up, admission, auditor)
        response = await p.chat_completions(Request(BODY), "req_1", 0.0)
        assert response.status_code == 200
        assert admission.calls == ["admit", "charge", "settle"]
        [ex] = auditor.records
        assert (ex.status, ex.served, ex.usage) == (200, CHAT, Usage(3, 4))
        assert ex.claims is not None and ex.claims.tenant == "acme"
        assert up.calls[0].model is CHAT
        assert response.headers["x-request-id"] == "req_1"
        assert response.headers["x-gatekeeper-model"] == "small"
        assert response.headers["x-ratelimit-limit-requests"] == "10"

    async def test_a_strict_reservation_is_awaited(self) -> None:
        admission, auditor = Admission(strict=True), Auditor()
        response = await pipeline(Provider(), admission, auditor).chat_completions(
            Request(BODY), "req_2", 0.0
        )
        assert response.status_code == 200
        assert admission.calls == ["admit", "charge", "settle"]

    async def test_a_refused_reservation_is_recorded_with_its_status(self) -> None:
        """A 429 from admission: never sent upstream, one record, headers on the error."""
        admission, auditor, up = Admission(refuse=True), Auditor(), Provider()
        with pytest.raises(BudgetExceeded) as caught:
            await pipeline(up, admission, auditor).chat_completions(Request(BODY), "req_3", 0.0)
        assert up.calls == []
        [ex] = auditor.records
        assert (ex.status, ex.error_code, ex.ticket) == (429, "insufficient_quota", None)
        assert caught.value.headers["x-request-id"] == "req_3"
        assert admission.calls == ["admit"]  # nothing reserved: nothing to settle

    async def test_an_unknown_key_is_recorded_with_the_client_address(self) -> None:
        auditor = Auditor()
        with pytest.raises(AuthError):
            await pipeline(Provider(), Admission(), auditor).chat_completions(
                Request(BODY, token=None), "req_4", 0.0
            )
        [ex] = auditor.records
        assert (ex.status, ex.claims, ex.client) == (401, None, "192.0.2.7")

    async def test_an_upstream_failure_settles_and_records(self) -> None:
        admission, auditor = Admission(), Auditor()
        up = Provider(fail=ProviderUnavailable("down", provider="up"))
        with pytest.raises(ProviderUnavailable):
            await pipeline(up, admission, auditor).chat_completions(Request(BODY), "req_5", 0.0)
        [ex] = auditor.records
        assert ex.status == 503
        assert admission.calls == ["admit", "settle"]

    async def test_a_bug_is_still_one_record_and_the_slot_is_released(self) -> None:
        """An exception no step may raise: a 500 record, the slot given back."""
        admission, auditor = Admission(), Auditor()
        p = pipeline(Provider(fail=ZeroDivisionError("bug")), admission, auditor)
        with pytest.raises(ZeroDivisionError):
            await p.chat_completions(Request(BODY), "req_6", 0.0)
        [ex] = auditor.records
        assert (ex.status, ex.error_code) == (500, "internal_error")
        assert admission.calls == ["admit", "settle"]
        assert p.concurrency.in_flight == 0


class TestStream:
    async def test_a_stream_says_how_it_was_routed_after_its_first_chunk(self) -> None:
        """The routing event of a stream is sent while it runs, once its first chunk is
        on its way (not on the time to first token); one record when it ends."""
        admission, auditor, up = Admission(), Auditor(), Provider()
        p = pipeline(up, admission, auditor)
        response = await p.chat_completions(
            Request({**BODY, "stream": True}), "req_s", time.perf_counter()
        )
        assert auditor.routed_ids == []  # nothing sent yet: the event waits for the chunk
        sent: list[dict[str, Any]] = []
        first = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message.get("body"):
                first.set()

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # the client stays
            return {"type": "http.disconnect"}

        task = asyncio.ensure_future(response({"type": "http"}, receive, send))
        await first.wait()
        await asyncio.sleep(0)
        assert auditor.routed_ids == ["req_s"] and auditor.records == []
        up.release.set()
        await task
        assert [ex.request_id for ex in auditor.records] == ["req_s"]
        assert auditor.routed_ids == ["req_s"]
        assert sent[-2]["body"] == b"data: [DONE]\n\n"


class TestEmbeddings:
    async def test_an_embedding_is_recorded_once(self) -> None:
        admission, auditor = Admission(), Auditor()
        body = {"model": "vec", "input": "hello"}
        response = await pipeline(Provider(), admission, auditor).embeddings(
            Request(body), "req_7", 0.0
        )
        assert response.status_code == 200
        [ex] = auditor.records
        assert (ex.endpoint, ex.served, ex.input_chars) == ("embeddings", EMBED, len('"hello"'))
        assert admission.calls == ["admit", "charge", "settle"]

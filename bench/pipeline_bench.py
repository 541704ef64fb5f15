"""The pipeline's own cost per request: p50 µs of ``Pipeline.chat_completions`` with every
step an in-memory fake (token verification real, cached after the first request).

Run: ``nice .venv/bin/python -m bench.pipeline_bench``. Compare two builds in one run
(``PYTHONPATH=<other checkout>``). Not a test: timings depend on the machine.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import orjson

from gatekeeper.auth import paserk
from gatekeeper.auth.keyfiles import mint
from gatekeeper.auth.verifier import Keyring, TokenVerifier
from gatekeeper.config import Config
from gatekeeper.pipeline import Pipeline
from gatekeeper.providers.base import Call, Reply, Usage
from gatekeeper.providers.pool import ProviderPool
from gatekeeper.routing.decision import RouteDecision
from gatekeeper.routing.matrix import ModelSpec

ROUNDS = 20000
SECRET = paserk.generate_secret_key()
TOKEN = mint(SECRET, "acme")
CHAT = ModelSpec("small", "up", "small-1", "chat", 0.001, 0.002, 8192, 1024)
BODY = orjson.dumps({"model": "small", "messages": [{"role": "user", "content": "hello"}]})
HEADERS = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
SCOPE: dict[str, Any] = {"headers": [], "client": ("192.0.2.7", 5000)}
MESSAGE = {"type": "http.request", "body": BODY, "more_body": False}
REPLY = Reply(b'{"id":"c1","choices":[]}', Usage(3, 4))
ROUTE = RouteDecision(CHAT, (CHAT,), "requested", "requested model small")


class Request:
    headers, scope = HEADERS, SCOPE

    async def receive(self) -> dict[str, Any]:
        return MESSAGE


class Router:
    def route(self, *args: object) -> RouteDecision:
        return ROUTE

    def route_embedding(self, model: str) -> RouteDecision:
        return ROUTE


class Admission:
    def admit(self, ex: object, req: object) -> object:
        return "ticket"

    def charge(self, ex: object) -> None:
        return None

    def settle(self, ex: object) -> None:
        return None

    def headers(self, ex: object) -> dict[str, str]:
        return {}


class Auditor:
    def begin(self, ex: object) -> object:
        return None

    async def end(self, ex: object, sealed: object) -> None:
        return None

    async def commit(self, ex: object) -> None:
        return None

    def routed(self, ex: object) -> None:
        return None


class Provider:
    name, kind, total_timeout_s = "up", "openai", 30.0

    async def chat(self, call: Call) -> Reply:
        return REPLY


async def main() -> None:
    p = Pipeline(
        Config(),
        TokenVerifier(Keyring([paserk.public_key_of(SECRET)])),
        Router(),
        Admission(),  # type: ignore[arg-type]
        ProviderPool({"up": Provider()}),  # type: ignore[dict-item]
        Auditor(),  # type: ignore[arg-type]
    )
    request = Request()
    for _ in range(2000):
        await p.chat_completions(request, "req_1", 0.0)  # type: ignore[arg-type]
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        await p.chat_completions(request, "req_1", 0.0)  # type: ignore[arg-type]
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    print(
        f"chat_completions p50 {statistics.median(samples) / 1000:.2f} µs, "
        f"p90 {samples[int(len(samples) * 0.9)] / 1000:.2f} µs ({ROUNDS} requests)"
    )


if __name__ == "__main__":
    asyncio.run(main())

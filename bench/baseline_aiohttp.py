"""Baseline: the thinnest Starlette pass-through, upstream client aiohttp.ClientSession.

    .venv/bin/python -m bench.baseline_aiohttp --port 9003 --upstream http://127.0.0.1:9001

Identical to ``bench.baseline_httpx`` except for the upstream HTTP client (the one
the gateway uses), so the two figures differ by the client's cost alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.baselines import serve


def create_app(upstream: str) -> Starlette:
    session: aiohttp.ClientSession | None = None
    url = f"{upstream}/v1/chat/completions"
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal session
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=256)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30)
        ) as s:
            session = s
            yield

    async def chat(request: Request) -> Response:
        assert session is not None
        async with session.post(url, data=await request.body(), headers=headers) as resp:
            body = await resp.read()
            return Response(body, status_code=resp.status, media_type="application/json")

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan
    )


def main() -> None:
    serve(create_app, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()

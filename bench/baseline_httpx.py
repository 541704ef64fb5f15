"""Baseline: the thinnest Starlette pass-through, upstream client httpx.AsyncClient.

    .venv/bin/python -m bench.baseline_httpx --port 9002 --upstream http://127.0.0.1:9001

One uvicorn worker (uvloop + httptools), one route: POST /v1/chat/completions reads
the body, posts it to the upstream and returns the upstream's bytes. No auth, no
audit, nothing else — it measures the framework plus the HTTP client. Compare with
``bench.baseline_aiohttp`` to see what the upstream client alone costs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.baselines import serve


def create_app(upstream: str) -> Starlette:
    client: httpx.AsyncClient | None = None
    url = f"{upstream}/v1/chat/completions"
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal client
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(limits=limits, timeout=30) as c:
            client = c
            yield

    async def chat(request: Request) -> Response:
        assert client is not None
        resp = await client.post(url, content=await request.body(), headers=headers)
        return Response(resp.content, status_code=resp.status_code, media_type="application/json")

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan
    )


def main() -> None:
    serve(create_app, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()

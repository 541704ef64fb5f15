"""Baseline: the thinnest Starlette pass-through, upstream client ``gatekeeper.providers.h1``.

    .venv/bin/python -m bench.baseline_h1 --port 9004 --upstream http://127.0.0.1:9001

Identical to ``bench.baseline_httpx`` and ``bench.baseline_aiohttp`` except for the
upstream HTTP client (this one is the gateway's), so the three figures differ by the
client's cost alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.baselines import serve
from gatekeeper.providers import h1


def create_app(upstream: str) -> Starlette:
    pool = h1.Pool(f"{upstream}/v1", size=256, connect_s=5, read_s=30)
    prefix = pool.head_prefix(
        "/chat/completions",
        {"content-type": "application/json", "authorization": "Bearer sk-bench"},
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await pool.aclose()

    async def chat(request: Request) -> Response:
        resp = await pool.send(prefix, await request.body())
        body = await resp.read()
        return Response(body, status_code=resp.status, media_type="application/json")

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan
    )


def main() -> None:
    serve(create_app, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()

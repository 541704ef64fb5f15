"""The single outermost boundary: GatewayError → its OpenAI JSON; a bug → a 500."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from starlette.responses import Response

from gatekeeper.errors import GatewayError, internal_error
from gatekeeper.http.inbound import Readable, request_id_for
from gatekeeper.http.responses import error_response

log = structlog.get_logger("gatekeeper.http")

Endpoint = Callable[[Any, str, float], Awaitable[Response]]


def endpoint(fn: Endpoint) -> Callable[[Readable], Awaitable[Response]]:
    """Wrap an endpoint taking (request, request_id, started_at)."""

    @functools.wraps(fn)
    async def wrapped(request: Readable) -> Response:
        started = time.perf_counter()
        rid = request_id_for(request.headers.get("x-request-id"))
        # uvicorn runs each request in a fresh contextvars.Context: nothing to clear.
        structlog.contextvars.bind_contextvars(request_id=rid)
        try:
            return await fn(request, rid, started)
        except GatewayError as err:
            if err.status >= 500:
                log.warning(
                    "request.failed",
                    request_id=rid,
                    status=err.status,
                    code=err.code,
                    error=err.message,
                )
            return error_response(err, rid)
        except Exception:  # the one place a bug is caught: logged, answered, not leaked
            log.exception("request.bug", request_id=rid, path=request.scope["path"])
            return error_response(internal_error(rid), rid)

    return wrapped

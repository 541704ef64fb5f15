"""Step 1, the request: read the body (capped), parse it, validate what the gateway reads.

The chat request another API's body means (``pipeline.ingress``) is validated the same
way. The edge's own bounds (header bytes, connections) are ``gatekeeper.http.edge``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gatekeeper.config import ServerConfig
from gatekeeper.exchange import Exchange
from gatekeeper.http.inbound import Readable, read_json
from gatekeeper.pipeline.ingress import Ingress
from gatekeeper.validate import ChatRequest, validate_chat, validate_embeddings

__all__ = ["ChatRequest", "EmbeddingsRequest", "read_chat", "read_embeddings"]


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """An embeddings request as parsed."""

    model: str
    body: dict[str, Any]
    input_chars: int  # the size of ``input``, for the token reservation


async def read_chat(
    request: Readable, server: ServerConfig, ingress: Ingress | None, ex: Exchange
) -> ChatRequest:
    limits = server.limits
    body = await read_json(request, server.max_body_bytes, limits.max_json_depth)
    if ingress is not None:  # another API's body, as the chat request it means
        body = await ingress.to_chat(body, ex)
    return validate_chat(body, limits, depth_checked=True)


async def read_embeddings(request: Readable, server: ServerConfig) -> EmbeddingsRequest:
    body = await read_json(request, server.max_body_bytes)
    model = validate_embeddings(body, server.limits)
    return EmbeddingsRequest(model, body, len(orjson.dumps(body["input"])))

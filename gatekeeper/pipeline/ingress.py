"""The client wires other than chat completions, as adapters at the two ends of the one
pipeline: a request in → the chat request it means; the chat reply or chunk stream →
that API's reply or events (``gatekeeper.ingress``: Responses, Messages)."""

from __future__ import annotations

from typing import Any, Protocol

from gatekeeper.errors import GatewayError
from gatekeeper.exchange import Exchange

__all__ = ["Ingress", "IngressStream"]


class IngressStream(Protocol):
    """Re-renders the OpenAI chunk stream in another API's events."""

    def feed(self, sse: bytes) -> bytes: ...

    def done(self, ex: Exchange) -> bytes: ...

    def error(self, err: GatewayError) -> bytes: ...


class Ingress(Protocol):
    name: str
    native: dict[str, Any] | None  # its own body, for an upstream that speaks the same API

    async def to_chat(self, body: dict[str, Any], ex: Exchange) -> dict[str, Any]: ...

    def render(self, body: bytes, ex: Exchange) -> bytes: ...

    def stream(self, ex: Exchange) -> IngressStream: ...

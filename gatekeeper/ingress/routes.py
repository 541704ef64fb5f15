"""The extra ingresses' routes, for ``app.create_app`` (one line there)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from nacl.signing import SigningKey
from nats.aio.client import Client
from starlette.responses import Response
from starlette.routing import Route

from gatekeeper.budget.gossip import Gossip
from gatekeeper.config import Config
from gatekeeper.control.registry import NodeKeyRegistry
from gatekeeper.errors import ServiceUnavailable
from gatekeeper.http.inbound import Readable
from gatekeeper.ingress.messages import messages_handlers
from gatekeeper.ingress.responses import responses_handlers
from gatekeeper.ingress.store import ResponsesStore
from gatekeeper.pipeline import Pipeline


class Node(Protocol):
    """What the ingresses use of the running node (``gatekeeper.node.Node``)."""

    nc: Client
    pipeline: Pipeline
    gossip: Gossip


FastRoutes = dict[tuple[str, str], Callable[[Readable], Awaitable[Response]]]


def ingress_routes(
    config: Config, node: Callable[[], Node | None]
) -> tuple[list[Route], FastRoutes]:
    """Starlette routes (for 405s and path parameters) and the exact-path fast routes."""

    def running() -> Node:
        n = node()
        if n is None:
            raise ServiceUnavailable("The gateway is still starting")
        return n

    def pipeline() -> Pipeline:
        return running().pipeline

    def nc() -> Client:
        return running().nc

    def signer() -> tuple[SigningKey, NodeKeyRegistry]:
        gossip = running().gossip  # the node's key and the registry of every node's key
        return gossip.signing_key, gossip.verifier.registry

    aliases = dict(config.aliases)
    messages, count_tokens = messages_handlers(pipeline, aliases)
    store = ResponsesStore(nc, signer, config.responses, config.nats.replicas)
    r = responses_handlers(pipeline, aliases, store)
    one = "/v1/responses/{response_id}"
    routes = [
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/v1/responses", r["create"], methods=["POST"]),
        Route(one, r["get"], methods=["GET"]),
        Route(one, r["delete"], methods=["DELETE"]),
        Route(one + "/input_items", r["input_items"], methods=["GET"]),
    ]
    fast: FastRoutes = {
        ("POST", "/v1/messages"): messages,
        ("POST", "/v1/messages/count_tokens"): count_tokens,
        ("POST", "/v1/responses"): r["create"],
    }
    return routes, fast

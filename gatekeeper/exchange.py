"""The record one request builds on its way through the pipeline; becomes the audit record."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gatekeeper.auth.claims import Claims
from gatekeeper.providers.base import Reply, StreamState, Usage
from gatekeeper.providers.failover import Attempt
from gatekeeper.routing.decision import RouteDecision
from gatekeeper.routing.matrix import ModelSpec

__all__ = ["AuditRef", "Exchange", "Held"]


@dataclass(frozen=True, slots=True)
class AuditRef:
    """Where a request's sealed audit record is: its node, chain ``seq`` and ``hash`` (its
    identity: the record is signed over them), and its BH_AUDIT stream sequence if
    JetStream acknowledged it (None: spooled or queued, not known)."""

    node: str
    seq: int
    hash: str
    stream_seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "seq": self.seq,
            "hash": self.hash,
            "stream_seq": self.stream_seq,
        }

    @classmethod
    def from_dict(cls, d: object) -> AuditRef | None:
        """A reference read back, or None if it is not one."""
        if not isinstance(d, Mapping):
            return None
        node, seq, digest, at = d.get("node"), d.get("seq"), d.get("hash"), d.get("stream_seq")
        if not isinstance(node, str) or not isinstance(digest, str):
            return None
        if type(seq) is not int or seq < 1 or not (at is None or (type(at) is int and at > 0)):
            return None
        return cls(node, seq, digest, at)


class Held(Protocol):
    """Something held for the request and given back once (its fair-share slot)."""

    def release(self) -> None: ...


@dataclass(slots=True)
class Exchange:
    """Everything one request learned on its way through; becomes the audit record."""

    request_id: str
    started: float
    endpoint: str
    claims: Claims | None = None
    requested_model: str = ""
    stream: bool = False
    route: RouteDecision | None = None
    served: ModelSpec | None = None
    attempts: tuple[Attempt, ...] = ()
    usage: Usage | None = None
    status: int = 200
    error_code: str | None = None
    ttft_ms: float | None = None
    ticket: object = None  # admission's reservation (a budget.Ticket), once admitted
    routed: bool = False  # its routing event has been sent
    input_chars: int = 0  # embeddings: size of the input, for the token reservation
    # Budget accounting (gatekeeper.budget.accounting): what was sent and what came back.
    upstream_body: dict[str, Any] | None = None  # the body with the explicit completion cap
    reply: Reply | None = None  # the unary reply
    stream_state: StreamState | None = None  # what the stream has seen so far
    ended: str = "complete"  # complete | cut | hangup (the gateway closed the upstream)
    slot: Held | None = None  # its fair share of in-flight requests (released in finally)
    audited: bool = False  # its record is sealed, or a stream's pump will seal it
    usage_source: str = ""  # upstream | counted | reserved ("" : from ``usage``)
    client: str = ""  # the client's address: set only when authentication failed
    ingress: str = "chat"  # the client's wire: chat | responses | messages (gatekeeper.ingress)
    upstream_wire: str = ""  # the serving provider's kind: openai | anthropic | demo
    resumed: Any = None  # a continued stream's segments (gatekeeper.continuation.Continued)
    cache: str = ""  # HIT | MISS | COALESCED | BYPASS ("": the cache is off) — docs/capacity.md
    # told where its record is once it is acknowledged or spooled (a batch line); None: no one
    witness: Callable[[AuditRef, tuple[int, int]], None] | None = None  # batch line: record, charge

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)

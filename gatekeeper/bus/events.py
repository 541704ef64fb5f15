"""Fire-and-forget publishing to BH_EVENTS / BH_ALERTS (never on the critical path).

Events are published with core NATS publish into subjects the streams capture: no
per-event round trip. Alerts carry a ``Nats-Msg-Id`` so one crossing is stored once
across the whole cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from gatekeeper.audit.chain import AuditChain
from gatekeeper.auth.paserk import encode_public
from gatekeeper.bus.outbox import Outbox
from gatekeeper.bus.streams import CONFIG_BUCKET, subject_token
from gatekeeper.providers.failover import Attempt
from gatekeeper.routing.matrix import ModelSpec

log = structlog.get_logger("gatekeeper.events")


class EventBus:
    """Implements the pool's hook and the pipeline's routing/alert notifications."""

    def __init__(self, outbox: Outbox, node_id: str) -> None:
        self.outbox = outbox
        self.node_id = node_id
        self.failovers = 0
        self.on_attempt: Callable[[Attempt], None] | None = None

    def _emit(self, subject: str, payload: dict[str, Any], msg_id: str | None = None) -> None:
        payload.setdefault("ts", round(time.time(), 3))
        payload.setdefault("node_id", self.node_id)
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        self.outbox.put(subject, orjson.dumps(payload), headers)

    # -------------------------------------------------------------- pipeline

    def routed(self, ex: Any) -> None:
        route = ex.route
        if route is None or not route.event:
            return
        self._emit(
            "bh.events.route",
            {
                "type": "route",
                "request_id": ex.request_id,
                "requested_model": ex.requested_model,
                **route.event,
            },
        )

    # -------------------------------------------------------------- pool hook

    def attempt_done(self, attempt: Attempt) -> None:
        if attempt.error == "upstream_auth_failed":  # our key for that provider is bad
            self.alert(
                "provider_auth",
                {"provider": attempt.provider, "model": attempt.model, "status": attempt.status},
                msg_id=f"provider_auth:{attempt.provider}:{int(time.time() // 600)}",
            )
        if self.on_attempt is not None:
            self.on_attempt(attempt)

    def failover(self, request_id: str, failed: Attempt, next_model: ModelSpec) -> None:
        self.failovers += 1
        self._emit(
            "bh.events.failover",
            {
                "type": "failover",
                "request_id": request_id,
                "from_provider": failed.provider,
                "from_model": failed.model,
                "status": failed.status,
                "error": failed.error,
                "to_provider": next_model.provider,
                "to_model": next_model.name,
            },
        )

    def breaker_changed(self, provider: str, state: str) -> None:
        self._emit(
            f"bh.events.breaker.{subject_token(provider)}",
            {"type": "breaker", "provider": provider, "state": state},
        )

    def config_rejected(self, key: str, error: str) -> None:
        """A bad BH_CONFIG value this node refused (it keeps what it had)."""
        self._emit("bh.events.config", {"type": "config_rejected", "key": key, "error": error})

    # -------------------------------------------------------------- alerts

    def budget_alert(
        self, key_id: str, counter: str, threshold: float, value: int, limit: int
    ) -> None:
        pct = int(threshold * 100)
        self._emit(
            f"bh.alerts.budget.{subject_token(key_id)}",
            {
                "type": "budget_threshold",
                "key_id": key_id,
                "counter": counter,
                "threshold_pct": pct,
                "value": value,
                "limit": limit,
            },
            msg_id=f"budget:{counter}:{pct}",
        )

    def alert(self, kind: str, payload: dict[str, Any], msg_id: str | None = None) -> None:
        self._emit(f"bh.alerts.{subject_token(kind)}", {"type": kind, **payload}, msg_id)

    # -------------------------------------------------------------- node key

    async def publish_node_key(self, js: Any, chain: AuditChain) -> None:
        """Publish this node's audit public key in BH_CONFIG (``nodes.<id>.audit_key``)."""
        kv = await js.key_value(CONFIG_BUCKET)
        public = encode_public(bytes(chain._key.verify_key))
        await kv.put(f"nodes.{subject_token(self.node_id)}.audit_key", public.encode())

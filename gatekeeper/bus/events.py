"""Fire-and-forget publishing to BH_EVENTS / BH_ALERTS (never on the critical path).

Events are published with core NATS publish into subjects the streams capture: no
per-event round trip. Breaker events and alerts, which peers and operators act on,
are signed with the node key (``gatekeeper.control.node_events``). Alerts carry a
``Nats-Msg-Id`` that ends in a MAC keyed by the node key: one crossing is stored once
per node that saw it, and nobody without the key can pre-publish an id to silence it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from nacl.signing import SigningKey

from gatekeeper.bus.outbox import Outbox
from gatekeeper.control.node_events import sign_event
from gatekeeper.control.reporting import CONFIG_KINDS
from gatekeeper.providers.failover import Attempt
from gatekeeper.routing.matrix import ModelSpec
from gatekeeper.subjects import subject_token

log = structlog.get_logger("gatekeeper.events")


class EventBus:
    """Implements the pool's hook and the pipeline's routing/alert notifications."""

    def __init__(self, outbox: Outbox, node_id: str, signing_key: SigningKey | None = None) -> None:
        self.outbox = outbox
        self.node_id = node_id
        self.signing_key = signing_key or SigningKey.generate()
        self._mac_key = hashlib.blake2b(
            bytes(self.signing_key), digest_size=32, person=b"gk-alert-msg-id"
        ).digest()
        self.failovers = 0
        self.on_attempt: Callable[[Attempt], None] | None = None

    def _emit(
        self,
        subject: str,
        payload: dict[str, Any],
        msg_id: str | None = None,
        *,
        signed: bool = False,
    ) -> None:
        payload.setdefault("ts", round(time.time(), 3))
        payload.setdefault("node_id", self.node_id)
        headers = {"Nats-Msg-Id": self.msg_id(msg_id)} if msg_id else None
        data = sign_event(self.signing_key, subject, payload) if signed else orjson.dumps(payload)
        self.outbox.put(subject, data, headers)

    def msg_id(self, base: str) -> str:
        """``base`` made unguessable: node id and a MAC by a key derived from the node key."""
        mac = hashlib.blake2b(base.encode(), key=self._mac_key, digest_size=12).hexdigest()
        return f"{base}:{self.node_id}:{mac}"

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

    def continued(self, ex: Any) -> None:
        """A stream finished by several upstreams: its segments, seams and usages."""
        resumed = ex.resumed
        if resumed is None or not resumed.continued:
            return
        self._emit(
            "bh.events.continuation",
            {
                "type": "continuation",
                "request_id": ex.request_id,
                "status": ex.status,
                "segments": resumed.report(),
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
            signed=True,
        )

    def config_rejected(self, key: str, error: str) -> None:
        """A bad BH_CONFIG value this node refused (it keeps what it had)."""
        self._emit("bh.events.config", {"type": "config_rejected", "key": key, "error": error})

    def control_rejected(self, report: dict[str, Any]) -> None:
        """A refused control value (config entry, slot, peer event): rate-limited upstream."""
        kind = str(report.get("kind", "unknown"))
        subject = "bh.events.config" if kind in CONFIG_KINDS else f"bh.events.rejected.{kind}"
        rtype = "config_rejected" if kind in CONFIG_KINDS else "control_rejected"
        self._emit(subject, {"type": rtype, **report})

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
            signed=True,
        )

    def budget_exhausted(self, key_id: str, counter: str, value: int, limit: int) -> None:
        """The first refusal for budget on ``counter`` (one per counter and period)."""
        self._emit(
            f"bh.alerts.budget.{subject_token(key_id)}",
            {
                "type": "budget_exhausted",
                "key_id": key_id,
                "counter": counter,
                "value": value,
                "limit": limit,
            },
            msg_id=f"budget_exhausted:{counter}",
            signed=True,
        )

    def alert(self, kind: str, payload: dict[str, Any], msg_id: str | None = None) -> None:
        self._emit(
            f"bh.alerts.{subject_token(kind)}", {"type": kind, **payload}, msg_id, signed=True
        )

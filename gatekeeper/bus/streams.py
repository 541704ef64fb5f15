"""The JetStream layout: BH_* streams and KV buckets, provisioned idempotently.

This is a public contract (audit consumers read these streams directly):

    stream        subjects                          kept
    BH_AUDIT      bh.audit.<tenant>.<node>          file, deny delete/purge, no rollup, dedup 2 min
    BH_EVENTS     bh.events.<kind>                  routing decisions, failovers, breakers
    BH_HEALTH     bh.health.<provider>.<node>       provider latency time series
    BH_ALERTS     bh.alerts.<kind>                  budget thresholds, SLA breaches (dedup 1 h)
    BH_SESSIONS   bh.sessions.<key_id>              latest value per API key
    KV BH_CONFIG  (KV)                              routing matrix, trusted keys, revocations
    KV BH_BUDGET  (KV) <counter>.<node>             CRDT slots, one key per counter and node

Start fails, naming the differences, if a stream exists with a config that is not
compatible — never a silent change to an audit stream.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

DAY = 86_400.0
AUDIT, EVENTS, HEALTH, ALERTS, SESSIONS = (
    "BH_AUDIT",
    "BH_EVENTS",
    "BH_HEALTH",
    "BH_ALERTS",
    "BH_SESSIONS",
)
CONFIG_BUCKET, BUDGET_BUCKET = "BH_CONFIG", "BH_BUDGET"

_TOKEN_RE = re.compile(r"[^A-Za-z0-9_-]")


class StreamMismatch(RuntimeError):
    """An existing stream's config differs from what the gateway needs."""


def subject_token(value: str) -> str:
    """A value made safe for one NATS subject token (tenant, node, key id)."""
    return _TOKEN_RE.sub("_", value)[:128] or "_"


@functools.lru_cache(maxsize=4096)
def audit_subject(tenant: str, node_id: str) -> str:
    return f"bh.audit.{subject_token(tenant)}.{subject_token(node_id)}"


@dataclass(frozen=True, slots=True)
class Retention:
    audit_days: float = 0  # 0 = keep forever
    events_days: float = 7
    health_days: float = 1
    alerts_days: float = 30
    sessions_days: float = 90


def desired_streams(replicas: int, keep: Retention = Retention()) -> list[api.StreamConfig]:
    file = api.StorageType.FILE

    def cfg(name: str, subjects: list[str], days: float, **kw: Any) -> api.StreamConfig:
        return api.StreamConfig(
            name=name,
            subjects=subjects,
            storage=file,
            num_replicas=replicas,
            max_age=days * DAY if days else None,
            **kw,
        )

    return [
        cfg(
            AUDIT,
            ["bh.audit.>"],
            keep.audit_days,
            deny_delete=True,
            deny_purge=True,
            allow_rollup_hdrs=False,
            duplicate_window=120.0,
            description="Gatekeeper audit trail: one signed, chained record per request",
        ),
        cfg(
            EVENTS,
            ["bh.events.>"],
            keep.events_days,
            duplicate_window=120.0,
            description="Routing decisions, failovers, circuit breaker changes",
        ),
        cfg(
            HEALTH,
            ["bh.health.>"],
            keep.health_days,
            duplicate_window=60.0,
            description="Provider latency and error-rate time series",
        ),
        cfg(
            ALERTS,
            ["bh.alerts.>"],
            keep.alerts_days,
            duplicate_window=3600.0,
            description="Budget thresholds and SLA breaches (deduplicated by Nats-Msg-Id)",
        ),
        cfg(
            SESSIONS,
            ["bh.sessions.>"],
            keep.sessions_days,
            max_msgs_per_subject=1,
            duplicate_window=60.0,
            description="Per API key session state, latest per key",
        ),
    ]


def differences(have: api.StreamConfig, want: api.StreamConfig) -> list[str]:
    """What in ``have`` is incompatible with ``want`` (pure).

    More replicas than wanted is fine (an operator tool asking for the default 1 must
    work on an R3 cluster); fewer is not: that would silently weaken durability.
    """
    out = []
    if (have.num_replicas or 1) < (want.num_replicas or 1):
        out.append(f"num_replicas: is {have.num_replicas!r}, needs >= {want.num_replicas!r}")
    checks = (
        "subjects",
        "storage",
        "deny_delete",
        "deny_purge",
        "allow_rollup_hdrs",
        "max_msgs_per_subject",
    )
    for name in checks:
        h, w = getattr(have, name), getattr(want, name)
        if name == "subjects":
            h, w = sorted(h or []), sorted(w or [])
        if h != w:
            out.append(f"{name}: is {h!r}, needs {w!r}")
    if (have.duplicate_window or 0) < (want.duplicate_window or 0):
        out.append(
            f"duplicate_window: is {have.duplicate_window}s, needs >= {want.duplicate_window}s"
        )
    return out


async def ensure_streams(
    js: JetStreamContext, replicas: int = 1, keep: Retention = Retention()
) -> list[str]:
    """Create missing streams; fail on incompatible ones. Returns a line per stream."""
    report = []
    for want in desired_streams(replicas, keep):
        assert want.name is not None
        try:
            have = (await js.stream_info(want.name)).config
        except NotFoundError:
            try:
                await js.add_stream(want)
            except BadRequestError as exc:
                raise StreamMismatch(
                    f"cannot create stream {want.name}: {exc.description}"
                ) from None
            report.append(f"{want.name}: created")
            continue
        diff = differences(have, want)
        if diff:
            raise StreamMismatch(
                f"stream {want.name} exists with an incompatible config: " + "; ".join(diff)
            )
        report.append(f"{want.name}: ok")
    for bucket, history in ((CONFIG_BUCKET, 5), (BUDGET_BUCKET, 1)):
        try:
            await js.key_value(bucket)
            report.append(f"KV {bucket}: ok")
        except (NotFoundError, BadRequestError):
            await js.create_key_value(
                api.KeyValueConfig(
                    bucket=bucket, history=history, storage=api.StorageType.FILE, replicas=replicas
                )
            )
            report.append(f"KV {bucket}: created")
    return report

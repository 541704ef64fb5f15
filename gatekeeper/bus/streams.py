"""The JetStream layout: BH_* streams and KV buckets, provisioned idempotently.

This is a public contract (audit consumers read these streams directly):

    stream        subjects                          kept
    BH_AUDIT      bh.audit.<tenant>.<node>          file, deny delete/purge, no rollup, dedup 2 min
    BH_CHECKPOINTS bh.checkpoints.<node>            signed chain checkpoints; deny delete/purge
    BH_EVENTS     bh.events.<kind>                  routing decisions, failovers, breakers
    BH_HEALTH     bh.health.<provider>.<node>       provider latency time series
    BH_ALERTS     bh.alerts.<kind>                  budget thresholds, SLA breaches (dedup 1 h)
    BH_SESSIONS   bh.sessions.<key_id>              latest value per API key
    KV BH_CONFIG  (KV)                              routing matrix, trusted keys, revocations
    KV BH_BUDGET  (KV) <counter>.<node>             CRDT slots, one key per counter and node
    KV BH_ESCROW  (KV) owner.<counter>, state.<counter>.<node>   strict budgets (signed)
    BH_JOBS       bh.jobs.slice.<batch>, bh.jobs.finalize.<batch>   batch work queue (signed);
                  one durable pull consumer ``batch-workers`` shared by every node
    KV BH_BATCHES (KV) file.*, batch.*, slice.*, line.*   Files/Batch API state (signed)
    OBJ BH_FILES  (object store) <tenant digest>.<file id>   uploaded and output files
    KV BH_CACHE   (KV) <tenant>.<model>.<sha256>    cached answers (signed; docs/capacity.md)
    OBJ BH_CACHE_OBJ  <same key>                    payloads of cached answers too big for KV

``<tenant>`` is ``tenant_token(tenant)``, an injective encoding (two tenants never
share a subject); ``<node>`` is the node id verbatim (``check_node_id``).

Start fails, naming the differences, if a stream exists with a config that is not
compatible — never a silent change to an audit stream. For BH_AUDIT and
BH_CHECKPOINTS that includes the retention limits (``max_age``, ``max_msgs``,
``max_bytes``, ``discard``): lowering ``max_msgs`` for a moment deletes the oldest
records despite ``deny_delete``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from gatekeeper.subjects import tenant_token

DAY = 86_400.0
AUDIT, EVENTS, HEALTH, ALERTS, SESSIONS, CHECKPOINTS = (
    "BH_AUDIT",
    "BH_EVENTS",
    "BH_HEALTH",
    "BH_ALERTS",
    "BH_SESSIONS",
    "BH_CHECKPOINTS",
)
TAMPER_PROOF = frozenset({AUDIT, CHECKPOINTS})  # their retention limits are checked too
CONFIG_BUCKET, BUDGET_BUCKET = "BH_CONFIG", "BH_BUDGET"
RESPONSES_BUCKET = "BH_RESPONSES"  # stored Responses API responses (gatekeeper.ingress.store)
RESPONSES_TTL_S = 30 * 24 * 3600.0  # its TTL when provisioned here (responses.store_ttl_s)
ESCROW_BUCKET = "BH_ESCROW"  # strict budgets: owners and signed escrow replicas
JOBS = "BH_JOBS"  # batch job slices (gatekeeper.batches): a work queue
JOBS_CONSUMER = "batch-workers"  # the one durable pull consumer every node binds to
BATCHES_BUCKET = "BH_BATCHES"  # batch, file, slice and line records (gatekeeper.batches)
FILES_BUCKET = "BH_FILES"  # object store: the Files API's contents
FILES_TTL_S = 30 * 24 * 3600.0  # files and batch records are kept this long
CACHE_BUCKET, CACHE_OBJECTS = "BH_CACHE", "BH_CACHE_OBJ"  # the result cache (gatekeeper.cache)


@dataclass(frozen=True, slots=True)
class CacheBuckets:
    """Bounds of the result cache's buckets: oldest entries are evicted past ``max_bytes``."""

    ttl_s: float = DAY  # the longest any entry lives (a policy's TTL is checked on read)
    max_bytes: int = 1024 * 1024 * 1024
    object_max_bytes: int = 4 * 1024 * 1024 * 1024


_NODE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class StreamMismatch(RuntimeError):
    """An existing stream's config differs from what the gateway needs."""


def check_node_id(node_id: str) -> str:
    """``node_id`` if it may be used verbatim as a subject token and KV key part."""
    if not _NODE_RE.fullmatch(node_id):
        raise ValueError(f"node id {node_id[:80]!r} must match [A-Za-z0-9_-]{{1,64}}")
    return node_id


@functools.lru_cache(maxsize=4096)
@functools.lru_cache(maxsize=4096)
def audit_subject(tenant: str, node_id: str) -> str:
    return f"bh.audit.{tenant_token(tenant)}.{node_id}"


def checkpoint_subject(node_id: str) -> str:
    return f"bh.checkpoints.{node_id}"


@dataclass(frozen=True, slots=True)
class Retention:
    audit_days: float = 0  # 0 = keep forever
    events_days: float = 7
    health_days: float = 1
    alerts_days: float = 30
    sessions_days: float = 90
    checkpoints_days: float = 0  # 0 = keep forever


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
            CHECKPOINTS,
            ["bh.checkpoints.>"],
            keep.checkpoints_days,
            deny_delete=True,
            deny_purge=True,
            allow_rollup_hdrs=False,
            duplicate_window=120.0,
            description="Signed checkpoints {node, seq, hash, count, ts} of each node's chain",
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
            JOBS,
            ["bh.jobs.>"],
            7,
            retention=api.RetentionPolicy.WORK_QUEUE,
            duplicate_window=600.0,
            description="Batch job slices and finalize jobs, one consumer for every node",
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
    if want.name in TAMPER_PROOF:
        out.extend(retention_differences(have, want))
    return out


def _limit(value: object) -> object:
    """A stream limit with "unlimited" spelled one way (None, 0 and -1 all mean it)."""
    if value is None or value in (0, -1):
        return "unlimited"
    return getattr(value, "value", value)  # DiscardPolicy -> "old" / "new"


def retention_differences(have: api.StreamConfig, want: api.StreamConfig) -> list[str]:
    """How ``have`` keeps fewer messages than ``want`` provisioned (pure)."""
    out = []
    for name in ("max_age", "max_msgs", "max_bytes"):
        h, w = _limit(getattr(have, name)), _limit(getattr(want, name))
        if h != w:
            out.append(f"{name}: is {h}, needs {w}")
    h_discard = _limit(have.discard) if have.discard is not None else "old"
    w_discard = _limit(want.discard) if want.discard is not None else "old"
    if h_discard != w_discard:
        out.append(f"discard: is {h_discard}, needs {w_discard}")
    return out


async def ensure_streams(
    js: JetStreamContext,
    replicas: int = 1,
    keep: Retention = Retention(),
    *,
    create: bool = True,
    jobs: JobsConsumer | None = None,
    cache: CacheBuckets = CacheBuckets(),
) -> list[str]:
    """Create missing streams; fail on incompatible ones. Returns a line per stream.

    ``create=False`` (a node user, which may not create streams): only check, and
    name the command that provisions them.
    """
    report = []
    for want in desired_streams(replicas, keep):
        assert want.name is not None
        try:
            have = (await js.stream_info(want.name)).config
        except NotFoundError:
            if not create:
                raise StreamMismatch(_missing(f"stream {want.name}")) from None
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
    for bucket, history, ttl in (
        (CONFIG_BUCKET, 5, None),
        (BUDGET_BUCKET, 1, None),
        (ESCROW_BUCKET, 1, None),
        (RESPONSES_BUCKET, 1, RESPONSES_TTL_S),
        (BATCHES_BUCKET, 1, FILES_TTL_S),
    ):
        report.append(await _ensure_kv(js, bucket, replicas, create, history=history, ttl=ttl))
    report.append(await _ensure_files(js, replicas, create))
    report.append(await _ensure_jobs_consumer(js, jobs or JobsConsumer(), create))
    report.extend(await _ensure_cache(js, replicas, cache, create))
    return report


async def _ensure_kv(
    js: JetStreamContext,
    bucket: str,
    replicas: int,
    create: bool,
    *,
    history: int,
    ttl: float | None,
    max_bytes: int | None = None,
    discard_old: bool = False,
) -> str:
    """One KV bucket: there (``ok``), or created with these settings; its report line."""
    try:
        await js.key_value(bucket)
        return f"KV {bucket}: ok"
    except (NotFoundError, BadRequestError):
        if not create:
            raise StreamMismatch(_missing(f"KV bucket {bucket}")) from None
    await js.create_key_value(
        api.KeyValueConfig(
            bucket=bucket,
            history=history,
            ttl=ttl,
            max_bytes=max_bytes,
            storage=api.StorageType.FILE,
            replicas=replicas,
        )
    )
    if discard_old:  # KeyValueConfig has no discard policy: set it on the bucket's stream
        config = (await js.stream_info(f"KV_{bucket}")).config
        config.discard = api.DiscardPolicy.OLD
        await js.update_stream(config)
    return f"KV {bucket}: created"


async def _ensure_cache(
    js: JetStreamContext, replicas: int, cache: CacheBuckets, create: bool
) -> list[str]:
    """BH_CACHE (KV, evicting the oldest when full) and BH_CACHE_OBJ (Object Store)."""
    kv = await _ensure_kv(
        js,
        CACHE_BUCKET,
        replicas,
        create,
        history=1,
        ttl=cache.ttl_s,
        max_bytes=cache.max_bytes,
        discard_old=True,  # a full cache forgets its oldest answers
    )
    report = [kv]
    try:
        await js.object_store(CACHE_OBJECTS)
        report.append(f"OBJ {CACHE_OBJECTS}: ok")
    except (NotFoundError, BadRequestError):
        if not create:
            raise StreamMismatch(_missing(f"object store {CACHE_OBJECTS}")) from None
        await js.create_object_store(
            CACHE_OBJECTS,
            api.ObjectStoreConfig(
                bucket=CACHE_OBJECTS,
                ttl=cache.ttl_s,
                max_bytes=cache.object_max_bytes,
                storage=api.StorageType.FILE,
                replicas=replicas,
            ),
        )
        report.append(f"OBJ {CACHE_OBJECTS}: created")
    return report


@dataclass(frozen=True, slots=True)
class JobsConsumer:
    """The BH_JOBS consumer's delivery settings (``batches.ack_wait_s``, ``max_deliver``)."""

    ack_wait_s: float = 30.0
    max_deliver: int = 20


def jobs_consumer_config(c: JobsConsumer) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=JOBS_CONSUMER,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=c.ack_wait_s,
        max_deliver=c.max_deliver,
        filter_subject="bh.jobs.>",
        max_ack_pending=10_000,
        description="Gatekeeper batch workers: every node pulls from here",
    )


async def _ensure_files(js: JetStreamContext, replicas: int, create: bool) -> str:
    try:
        await js.object_store(FILES_BUCKET)
        return f"OBJ {FILES_BUCKET}: ok"
    except (NotFoundError, BadRequestError):
        if not create:
            raise StreamMismatch(_missing(f"object store {FILES_BUCKET}")) from None
    await js.create_object_store(
        FILES_BUCKET,
        api.ObjectStoreConfig(
            bucket=FILES_BUCKET,
            ttl=FILES_TTL_S,
            storage=api.StorageType.FILE,
            replicas=replicas,
            description="Gatekeeper Files API: uploaded batch inputs, batch outputs",
        ),
    )
    return f"OBJ {FILES_BUCKET}: created"


async def _ensure_jobs_consumer(js: JetStreamContext, c: JobsConsumer, create: bool) -> str:
    try:
        await js.consumer_info(JOBS, JOBS_CONSUMER)
        return f"consumer {JOBS}/{JOBS_CONSUMER}: ok"
    except NotFoundError:
        if not create:
            raise StreamMismatch(_missing(f"consumer {JOBS}/{JOBS_CONSUMER}")) from None
    await js.add_consumer(JOBS, jobs_consumer_config(c))
    return f"consumer {JOBS}/{JOBS_CONSUMER}: created"


def _missing(what: str) -> str:
    return (
        f"{what} does not exist and this gateway does not create streams "
        "(nats.provision: false): run `gatekeeper nats provision` with operator credentials"
    )

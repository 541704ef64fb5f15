"""The audit record: one per request, published to ``BH_AUDIT``; a public contract.

An ``AuditRecord`` says what happened to one request — who asked (tenant, API key
id), what was asked for and what served it, how it ended, what it cost, how long
it took, and every provider attempt on the way. The schema has no field for prompt
or completion text, API keys, or upstream error bodies, so none can leak into it.

A ``SealedRecord`` is an ``AuditRecord`` after ``AuditChain.seal()`` placed it in
its node's hash chain (``seq``, ``prev``, ``sig_kid``, ``hash``, ``sig``). Its
``to_dict()`` is the wire form; ``docs/audit.md`` documents every field.

Strings are made safe on construction: longer than ``MAX_TEXT`` characters are
cut (a client chooses ``requested_model``), and lone surrogates are replaced, so
every record can be encoded as UTF-8 JSON. Float fields are stored as ``float``
(an ``int`` is converted) and must be finite: the canonical encoding depends on it.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANONYMOUS_TENANT",
    "CHAIN_FIELDS",
    "MAX_TEXT",
    "SCHEMA_VERSION",
    "AnonymousCount",
    "Attempt",
    "AuditRecord",
    "Continuation",
    "SealedRecord",
    "rfc3339_ms",
]

SCHEMA_VERSION = 1
MAX_TEXT = 256
CHAIN_FIELDS = ("seq", "prev", "sig_kid", "hash", "sig")
ANONYMOUS_TENANT = "_anonymous"  # the tenant of a summary of failed-auth requests
USAGE_SOURCES = ("upstream", "counted", "reserved", "cache", "none")

_STR_FIELDS = (
    "request_id",
    "ts",
    "node_id",
    "tenant",
    "key_id",
    "requested_model",
    "served_model",
    "provider",
    "routing_mode",
    "route_reason",
    "error_code",
)
_INT_FIELDS = ("status", "prompt_tokens", "completion_tokens", "total_tokens")
_FLOAT_FIELDS = ("cost_usd", "latency_ms", "ttft_ms")


@functools.lru_cache(maxsize=4)
def _utc_second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def rfc3339_ms(epoch_seconds: float) -> str:
    """``2025-01-31T12:34:56.789Z``: RFC 3339, UTC, millisecond precision."""
    whole = math.floor(epoch_seconds)
    millis = min(999, int((epoch_seconds - whole) * 1000))
    return f"{_utc_second(whole)}.{millis:03d}Z"


def _clean_text(value: str | None) -> str | None:
    if value is None or (len(value) <= MAX_TEXT and value.isascii()):
        return value
    if len(value) > MAX_TEXT:
        value = value[: MAX_TEXT - 1] + "…"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _clean_float(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, not {value!r}")
    return float(value)


def _clean(texts: tuple[str | None, ...], numbers: tuple[float | None, ...]) -> bool:
    """True if ``_tidy`` would change nothing (the common case, checked cheaply)."""
    for text in texts:
        if text is not None and (len(text) > MAX_TEXT or not text.isascii()):
            return False
    for number in numbers:
        if number is not None and (type(number) is not float or not math.isfinite(number)):
            return False
    return True


def _tidy(obj: object, strings: tuple[str, ...], floats: tuple[str, ...]) -> None:
    """Clean a frozen dataclass's strings and floats in place (construction time only)."""
    for name in strings:
        value = getattr(obj, name)
        cleaned = _clean_text(value)
        if cleaned is not value:
            object.__setattr__(obj, name, cleaned)
    for name in floats:
        value = getattr(obj, name)
        cleaned_float = _clean_float(name, value)
        if cleaned_float is not value:
            object.__setattr__(obj, name, cleaned_float)


def _take(data: Mapping[str, Any], name: str, kinds: tuple[type, ...], optional: bool) -> Any:
    """``data[name]`` checked against ``kinds`` (``bool`` is never an ``int``)."""
    if name not in data:
        raise ValueError(f"audit record has no {name!r}")
    value = data[name]
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"audit record field {name!r} has the wrong type")
    if not isinstance(value, kinds):
        raise ValueError(f"audit record field {name!r} has the wrong type")
    return value


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try against one provider.

    ``error`` is a short error code (``"upstream_timeout"``), never an upstream
    body. ``status`` is None when no HTTP status arrived (connect error, timeout).
    Same fields as ``gatekeeper.providers.failover.Attempt``.
    """

    provider: str
    model: str
    status: int | None
    error: str | None
    ms: float

    def __post_init__(self) -> None:
        if not _clean((self.provider, self.model, self.error), (self.ms,)):
            _tidy(self, ("provider", "model", "error"), ("ms",))

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "status": self.status,
            "error": self.error,
            "ms": self.ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        if set(data) != {"provider", "model", "status", "error", "ms"}:
            raise ValueError(f"audit attempt has fields {sorted(data)}")
        return cls(
            provider=_take(data, "provider", (str,), False),
            model=_take(data, "model", (str,), False),
            status=_take(data, "status", (int,), True),
            error=_take(data, "error", (str,), True),
            ms=_take(data, "ms", (int, float), False),
        )


@dataclass(frozen=True, slots=True)
class Continuation:
    """One upstream stream's share of a continued answer (mid-stream failover).

    ``seam``: answer characters the client had when it began (0 for the first);
    ``reason``: the error code that ended the one before ("" for the first); the
    tokens and ``usage_source`` are what this segment was charged.
    """

    provider: str
    model: str
    seam: int
    reason: str
    prompt_tokens: int
    completion_tokens: int
    usage_source: str

    def __post_init__(self) -> None:
        if not _clean((self.provider, self.model, self.reason, self.usage_source), ()):
            _tidy(self, ("provider", "model", "reason", "usage_source"), ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "seam": self.seam,
            "reason": self.reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "usage_source": self.usage_source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Continuation:
        if set(data) != set(cls.__dataclass_fields__):
            raise ValueError(f"audit continuation has fields {sorted(data)}")
        texts = ("provider", "model", "reason", "usage_source")
        return cls(
            **{name: _take(data, name, (str,), False) for name in texts},
            seam=_take(data, "seam", (int,), False),
            prompt_tokens=_take(data, "prompt_tokens", (int,), False),
            completion_tokens=_take(data, "completion_tokens", (int,), False),
        )


@dataclass(frozen=True, slots=True)
class AnonymousCount:
    """How many requests from one client failed authentication for one reason."""

    client: str  # the client's IP address as the gateway saw it, or "_other"
    reason: str  # the error code the client got (e.g. "invalid_token")
    count: int

    def __post_init__(self) -> None:
        if not _clean((self.client, self.reason), ()):
            _tidy(self, ("client", "reason"), ())

    def to_dict(self) -> dict[str, Any]:
        return {"client": self.client, "reason": self.reason, "count": self.count}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnonymousCount:
        if set(data) != {"client", "reason", "count"}:
            raise ValueError(f"audit anonymous count has fields {sorted(data)}")
        return cls(
            client=_take(data, "client", (str,), False),
            reason=_take(data, "reason", (str,), False),
            count=_take(data, "count", (int,), False),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """What happened to one request; no chain fields yet (see ``SealedRecord``)."""

    v: int = SCHEMA_VERSION
    request_id: str
    ts: str  # rfc3339_ms(): when the request arrived
    node_id: str
    tenant: str
    key_id: str  # the API key's id (token ``sub``), never the key itself
    requested_model: str  # what the client asked for, e.g. "auto"
    served_model: str  # "" when no model served it
    provider: str  # "" when no provider served it
    routing_mode: str
    route_reason: str
    stream: bool
    status: int  # HTTP status the client got
    error_code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    attempts: tuple[Attempt, ...] = ()
    usage_source: str = "none"  # where the token counts came from: upstream|counted|reserved|none
    anonymous: tuple[AnonymousCount, ...] = ()  # only in a summary of failed-auth requests
    client_api: str = "chat"  # the ingress: chat | responses | messages (sorts before "hash")
    upstream_wire: str = ""  # the serving provider's wire: openai | anthropic | demo ("" none)
    continued: tuple[Continuation, ...] = ()  # a stream finished by several upstreams, in order
    cache: str = ""  # HIT | MISS | COALESCED | BYPASS; "" (absent on the wire): cache off

    def __post_init__(self) -> None:
        texts: tuple[str | None, ...] = (
            self.request_id,
            self.ts,
            self.node_id,
            self.tenant,
            self.key_id,
            self.requested_model,
            self.served_model,
            self.provider,
            self.routing_mode,
            self.route_reason,
            self.error_code,
        )
        if not _clean(texts, (self.cost_usd, self.latency_ms, self.ttft_ms)):
            _tidy(self, _STR_FIELDS, _FLOAT_FIELDS)

    def to_dict(self) -> dict[str, Any]:
        """The record's fields as JSON-ready values (wire names, no chain fields)."""
        data = {
            "v": self.v,
            "request_id": self.request_id,
            "ts": self.ts,
            "node_id": self.node_id,
            "tenant": self.tenant,
            "key_id": self.key_id,
            "requested_model": self.requested_model,
            "served_model": self.served_model,
            "provider": self.provider,
            "routing_mode": self.routing_mode,
            "route_reason": self.route_reason,
            "stream": self.stream,
            "status": self.status,
            "error_code": self.error_code,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": self.cost_usd,
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "attempts": [attempt.to_dict() for attempt in self.attempts],
            "usage_source": self.usage_source,
            "client_api": self.client_api,
            "upstream_wire": self.upstream_wire,
        }
        if self.cache:  # only with the result cache on (docs/capacity.md)
            data["cache"] = self.cache
        if self.anonymous:  # only a summary of failed-auth requests has it
            data["anonymous"] = [count.to_dict() for count in self.anonymous]
        if self.continued:  # only a stream continued after a cut has it
            data["continued"] = [seg.to_dict() for seg in self.continued]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        """Parse a schema-v1 record; unknown or missing fields raise ``ValueError``.

        ``usage_source``, ``anonymous``, ``client_api``, ``upstream_wire`` and
        ``continued`` came later: a record without them is older.
        """
        if data.get("v") != SCHEMA_VERSION:
            raise ValueError(f"unsupported audit record version {data.get('v')!r}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"audit record has unknown fields {sorted(unknown)}")
        attempts = _take(data, "attempts", (list, tuple), False)
        fields: dict[str, Any] = {
            name: _take(data, name, (str,), name == "error_code") for name in _STR_FIELDS
        }
        fields.update({name: _take(data, name, (int,), False) for name in _INT_FIELDS})
        fields.update(
            {name: _take(data, name, (int, float), name == "ttft_ms") for name in _FLOAT_FIELDS}
        )
        for later in (
            "usage_source",
            "client_api",
            "upstream_wire",
            "cache",
        ):  # absent: an older record
            if later in data:
                fields[later] = _take(data, later, (str,), False)
        anonymous = _take(data, "anonymous", (list, tuple), False) if "anonymous" in data else ()
        continued = _take(data, "continued", (list, tuple), False) if "continued" in data else ()
        return cls(
            **fields,
            stream=_take(data, "stream", (bool,), False),
            attempts=tuple(Attempt.from_dict(_as_mapping(item)) for item in attempts),
            anonymous=tuple(AnonymousCount.from_dict(_as_mapping(item)) for item in anonymous),
            continued=tuple(Continuation.from_dict(_as_mapping(item)) for item in continued),
        )


def _as_mapping(item: object) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise ValueError("audit attempt is not an object")
    return item


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """An ``AuditRecord`` placed in its node's chain and signed.

    ``seq`` counts this node's records from 1; ``prev`` is the ``hash`` of the
    node's previous record (``GENESIS`` for seq 1); ``sig_kid`` is the ``k4.pid``
    id of the node's Ed25519 key; ``hash`` is SHA-256 (hex) of the canonical
    encoding of every other field; ``sig`` is base64url (unpadded) Ed25519 over
    the 32 raw hash bytes.
    """

    record: AuditRecord
    seq: int
    prev: str
    sig_kid: str
    hash: str
    sig: str

    def body(self) -> dict[str, Any]:
        """Everything the hash covers: the record plus ``seq``, ``prev``, ``sig_kid``."""
        data = self.record.to_dict()
        data["seq"] = self.seq
        data["prev"] = self.prev
        data["sig_kid"] = self.sig_kid
        return data

    def to_dict(self) -> dict[str, Any]:
        """The wire form: one flat JSON object."""
        data = self.body()
        data["hash"] = self.hash
        data["sig"] = self.sig
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SealedRecord:
        """Parse the wire form. Checks shape only; ``verify_records`` checks integrity."""
        rest = {name: value for name, value in data.items() if name not in CHAIN_FIELDS}
        return cls(
            record=AuditRecord.from_dict(rest),
            seq=_take(data, "seq", (int,), False),
            prev=_take(data, "prev", (str,), False),
            sig_kid=_take(data, "sig_kid", (str,), False),
            hash=_take(data, "hash", (str,), False),
            sig=_take(data, "sig", (str,), False),
        )

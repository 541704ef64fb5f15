"""What a Gatekeeper API token says, and the profile every token follows.

A token is a PASETO v4.public token whose payload is this JSON object (times are
RFC 3339; ``null`` or absent optional claims mean "no limit"; unknown claims are
ignored so newer minters stay readable by older gateways)::

    {"iss": "gatekeeper", "sub": "key_0123456789abcdef", "jti": "…",
     "iat": "2025-01-01T00:00:00+00:00", "nbf": "…", "exp": "…",
     "tenant": "acme",
     "budget": {"tokens": 1000000, "usd": 50.0, "period": "month", "mode": "strict"},
     "rpm": 60, "tpm": 100000,
     "routing": {"mode": "cost", "quality_threshold": 0.7, "allow_override": false},
     "models": ["gpt-4o-mini", "claude-*"],
     "concurrency": {"requests": 8, "streams": 4,
                     "tenant_requests": 64, "tenant_streams": 32},
     "passes": {"per": "hour", "count": 600},
     "cache": {"ttl_s": 600, "nondeterministic": false, "charge": "free"},
     "priority": "standard", "stream_continuation": false}

``cache`` opts the key into the result cache (docs/capacity.md; ``{"enabled": false}``
opts it out of a configured default); ``priority`` is ``critical``, ``standard`` (absent)
or ``batch``: the lane of its requests when the node is saturated (docs/capacity.md).

``stream_continuation: false`` turns mid-stream failover off for the key
(docs/failover.md). ``passes`` is how many Privacy Passes (docs/privacy.md) the key
may fetch per window;
absent means ``rpm`` × the window's minutes, or the gateway's ``passes.default_count``.

Required: iss, sub, jti, iat, nbf, exp, tenant. ``routing.allow_override: false``
makes the gateway refuse an ``X-Routing-Mode`` header that asks for another mode;
``concurrency`` caps what the key (and its tenant) may have in flight per gateway
process, over the ``limits.concurrency`` defaults. ``sub`` is the API key's id: the
thing revocation names. The footer is ``{"kid": "k4.pid.…"}``; the kid only picks
a key from the verifier's trusted allow-list. Every token is signed over the
implicit assertion ``IMPLICIT_ASSERTION``, so a token minted for another system
that happens to trust the same Ed25519 key does not verify here.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import orjson

__all__ = [
    "IMPLICIT_ASSERTION",
    "MAX_FOOTER_LEN",
    "PERIODS",
    "PRIORITIES",
    "ROUTING_MODES",
    "Budget",
    "CacheClaim",
    "Claims",
    "ClaimsError",
    "Concurrency",
    "Passes",
    "encode_footer",
    "footer_kid",
    "model_allowed",
    "parse_claims",
]

IMPLICIT_ASSERTION = b"gatekeeper/api-token/v1"
MAX_FOOTER_LEN = 512
PERIODS = ("day", "month", "total")
ROUTING_MODES = ("cost", "latency", "capability")

Period = Literal["day", "month", "total"]

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


BUDGET_MODES = ("gossip", "strict")


class ClaimsError(ValueError):
    """A payload or footer does not follow the Gatekeeper token profile."""


@dataclass(frozen=True, slots=True)
class Budget:
    tokens: int | None
    usd: float | None
    period: Period
    mode: str | None = None  # "strict": escrowed shares per node (docs/budget.md); None: config


@dataclass(frozen=True, slots=True)
class Routing:
    mode: str | None
    quality_threshold: float | None
    allow_override: bool = True  # False: the X-Routing-Mode header may not change the mode


@dataclass(frozen=True, slots=True)
class Concurrency:
    """In-flight caps per gateway process; None: the configured default."""

    requests: int | None = None
    streams: int | None = None
    tenant_requests: int | None = None
    tenant_streams: int | None = None

    def to_dict(self) -> dict[str, object]:
        return _without_none(
            requests=self.requests,
            streams=self.streams,
            tenant_requests=self.tenant_requests,
            tenant_streams=self.tenant_streams,
        )


PASS_PERIODS = ("minute", "hour", "day")
PRIORITIES = ("critical", "standard", "batch")
CACHE_CHARGES = ("free", "cost")


@dataclass(frozen=True, slots=True)
class CacheClaim:
    """The ``cache`` claim: the key's result-cache policy (None: the configured default)."""

    enabled: bool = True
    ttl_s: float | None = None
    nondeterministic: bool | None = None
    charge: str | None = None  # free | cost: what a hit is charged
    models: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, object]:
        return _without_none(
            enabled=None if self.enabled else False,
            ttl_s=self.ttl_s,
            nondeterministic=self.nondeterministic,
            charge=self.charge,
            models=list(self.models) if self.models is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Passes:
    """The ``passes`` claim: at most ``count`` Privacy Passes per ``per`` window."""

    per: Literal["minute", "hour", "day"]
    count: int


@dataclass(frozen=True, slots=True)
class Claims:
    iss: str
    sub: str
    jti: str
    iat: datetime
    nbf: datetime
    exp: datetime
    tenant: str
    budget: Budget | None = None
    rpm: int | None = None
    tpm: int | None = None
    routing: Routing | None = None
    models: tuple[str, ...] | None = None
    concurrency: Concurrency | None = None
    passes: Passes | None = None
    pass_key: str | None = None  # set only for a Privacy Pass redemption: the token key id
    stream_continuation: bool | None = None  # False: a cut stream is never continued
    cache: CacheClaim | None = None
    priority: str | None = None  # critical | standard | batch (None: standard)

    @property
    def audit_key_id(self) -> str:
        """What the audit record names: the API key id, or ``pp:<token key id>`` for a
        request redeemed with a Privacy Pass (whose tenant-level ``sub`` names no key)."""
        return self.sub if self.pass_key is None else f"pp:{self.pass_key}"

    def to_dict(self) -> dict[str, Any]:
        """The payload object; optional claims that are ``None`` are left out."""
        out: dict[str, Any] = {"iss": self.iss, "sub": self.sub, "jti": self.jti}
        for name in ("iat", "nbf", "exp"):
            out[name] = _format_time(getattr(self, name))
        out["tenant"] = self.tenant
        if self.budget is not None:
            out["budget"] = _without_none(
                tokens=self.budget.tokens,
                usd=self.budget.usd,
                period=self.budget.period,
                mode=self.budget.mode,
            )
        for name in ("rpm", "tpm"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.routing is not None:
            out["routing"] = _without_none(
                mode=self.routing.mode,
                quality_threshold=self.routing.quality_threshold,
                allow_override=None if self.routing.allow_override else False,
            )
        if self.models is not None:
            out["models"] = list(self.models)
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency.to_dict()
        if self.passes is not None:
            out["passes"] = {"per": self.passes.per, "count": self.passes.count}
        if self.stream_continuation is not None:
            out["stream_continuation"] = self.stream_continuation
        if self.cache is not None:
            out["cache"] = self.cache.to_dict()
        if self.priority is not None:
            out["priority"] = self.priority
        return out

    def to_json(self) -> bytes:
        """Compact JSON: the exact payload a minter signs."""
        return orjson.dumps(self.to_dict())


def _without_none(**fields: object) -> dict[str, object]:
    return {k: v for k, v in fields.items() if v is not None}


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds")


def _parse_time(obj: dict[str, Any], name: str) -> datetime:
    value = obj.get(name)
    if not isinstance(value, str) or _RFC3339.fullmatch(value) is None:
        raise ClaimsError(f"claim {name!r} must be an RFC 3339 time")
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:
        raise ClaimsError(f"claim {name!r} must be an RFC 3339 time") from None
    return parsed.astimezone(UTC)


def _req_str(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise ClaimsError(f"claim {name!r} must be a non-empty string")
    return value


def _opt_int(value: object, name: str, *, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ClaimsError(f"claim {name!r} must be an integer >= {minimum}")
    return value


def _opt_float(value: object, name: str, *, low: float, high: float = math.inf) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClaimsError(f"claim {name!r} must be a number")
    if not (low <= value <= high and math.isfinite(value)):
        bounds = f">= {low:g}" if math.isinf(high) else f"between {low:g} and {high:g}"
        raise ClaimsError(f"claim {name!r} must be a finite number {bounds}")
    return float(value)


def _opt_object(obj: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ClaimsError(f"claim {name!r} must be an object")
    return value


def _parse_budget(obj: dict[str, Any]) -> Budget | None:
    raw = _opt_object(obj, "budget")
    if raw is None:
        return None
    tokens = _opt_int(raw.get("tokens"), "budget.tokens", minimum=0)
    usd = _opt_float(raw.get("usd"), "budget.usd", low=0.0)
    period = raw.get("period", "total")
    if period not in PERIODS:
        raise ClaimsError(f"claim 'budget.period' must be one of {', '.join(PERIODS)}")
    if tokens is None and usd is None:
        raise ClaimsError("claim 'budget' must set 'tokens' or 'usd'")
    mode = raw.get("mode")
    if mode is not None and mode not in BUDGET_MODES:
        raise ClaimsError(f"claim 'budget.mode' must be one of {', '.join(BUDGET_MODES)}")
    return Budget(tokens=tokens, usd=usd, period=cast(Period, period), mode=mode)


def _parse_routing(obj: dict[str, Any]) -> Routing | None:
    raw = _opt_object(obj, "routing")
    if raw is None:
        return None
    mode = raw.get("mode")
    if mode is not None and mode not in ROUTING_MODES:
        raise ClaimsError(f"claim 'routing.mode' must be one of {', '.join(ROUTING_MODES)}")
    threshold = _opt_float(
        raw.get("quality_threshold"), "routing.quality_threshold", low=0.0, high=1.0
    )
    allow = raw.get("allow_override", True)
    if not isinstance(allow, bool):
        raise ClaimsError("claim 'routing.allow_override' must be true or false")
    return Routing(mode=mode, quality_threshold=threshold, allow_override=allow)


def _parse_concurrency(obj: dict[str, Any]) -> Concurrency | None:
    raw = _opt_object(obj, "concurrency")
    if raw is None:
        return None
    values = {
        name: _opt_int(raw.get(name), f"concurrency.{name}", minimum=1)
        for name in ("requests", "streams", "tenant_requests", "tenant_streams")
    }
    return Concurrency(**values)


def _parse_models(obj: dict[str, Any]) -> tuple[str, ...] | None:
    value = obj.get("models")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
        raise ClaimsError("claim 'models' must be a list of non-empty strings")
    return tuple(value)


def _parse_passes(obj: dict[str, Any]) -> Passes | None:
    raw = _opt_object(obj, "passes")
    if raw is None:
        return None
    per = raw.get("per", "hour")
    if per not in PASS_PERIODS:
        raise ClaimsError(f"claim 'passes.per' must be one of {', '.join(PASS_PERIODS)}")
    count = _opt_int(raw.get("count"), "passes.count", minimum=0)
    if count is None:
        raise ClaimsError("claim 'passes.count' must be an integer >= 0")
    return Passes(per=cast(Literal["minute", "hour", "day"], per), count=count)


def _parse_cache(obj: dict[str, Any]) -> CacheClaim | None:
    raw = _opt_object(obj, "cache")
    if raw is None:
        return None
    enabled, nondet = raw.get("enabled", True), raw.get("nondeterministic")
    if not isinstance(enabled, bool) or not isinstance(nondet, bool | None):
        raise ClaimsError("claims 'cache.enabled' and 'cache.nondeterministic' must be booleans")
    charge = raw.get("charge")
    if charge is not None and charge not in CACHE_CHARGES:
        raise ClaimsError(f"claim 'cache.charge' must be one of {', '.join(CACHE_CHARGES)}")
    models = raw.get("models")
    if models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
    ):
        raise ClaimsError("claim 'cache.models' must be a list of non-empty strings")
    return CacheClaim(
        enabled=enabled,
        ttl_s=_opt_float(raw.get("ttl_s"), "cache.ttl_s", low=1.0),
        nondeterministic=nondet,
        charge=charge,
        models=tuple(models) if models is not None else None,
    )


def _parse_priority(obj: dict[str, Any]) -> str | None:
    value = obj.get("priority")
    if value is not None and value not in PRIORITIES:
        raise ClaimsError(f"claim 'priority' must be one of {', '.join(PRIORITIES)}")
    return value


def parse_claims(payload: bytes) -> Claims:
    """Read and type-check a token payload (already authenticated by the signature)."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ClaimsError("payload is not JSON") from None
    if not isinstance(obj, dict):
        raise ClaimsError("payload must be a JSON object")
    return Claims(
        iss=_req_str(obj, "iss"),
        sub=_req_str(obj, "sub"),
        jti=_req_str(obj, "jti"),
        iat=_parse_time(obj, "iat"),
        nbf=_parse_time(obj, "nbf"),
        exp=_parse_time(obj, "exp"),
        tenant=_req_str(obj, "tenant"),
        budget=_parse_budget(obj),
        rpm=_opt_int(obj.get("rpm"), "rpm", minimum=1),
        tpm=_opt_int(obj.get("tpm"), "tpm", minimum=1),
        routing=_parse_routing(obj),
        models=_parse_models(obj),
        concurrency=_parse_concurrency(obj),
        passes=_parse_passes(obj),
        stream_continuation=_opt_bool(obj, "stream_continuation"),
        cache=_parse_cache(obj),
        priority=_parse_priority(obj),
    )


def _opt_bool(obj: dict[str, Any], name: str) -> bool | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, bool):
        raise ClaimsError(f"claim {name!r} must be true or false")
    return value


@functools.lru_cache(maxsize=1024)
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def model_allowed(claims: Claims, model: str) -> bool:
    """Whether the token may use ``model``: exact names or ``*`` wildcards; None = any."""
    if claims.models is None:
        return True
    for allowed in claims.models:
        if allowed == model or ("*" in allowed and _pattern(allowed).fullmatch(model)):
            return True
    return False


def encode_footer(kid: str) -> bytes:
    """The footer a Gatekeeper token carries: ``{"kid": "k4.pid.…"}``."""
    return orjson.dumps({"kid": kid})


def footer_kid(footer: bytes) -> str:
    """The ``kid`` in a (possibly untrusted) footer; raises ClaimsError if absent."""
    if not footer:
        raise ClaimsError("token has no key id")
    if len(footer) > MAX_FOOTER_LEN:
        raise ClaimsError("footer too long")
    try:
        obj = orjson.loads(footer)
    except orjson.JSONDecodeError:
        raise ClaimsError("footer is not JSON") from None
    kid = obj.get("kid") if isinstance(obj, dict) else None
    if not isinstance(kid, str) or not kid.startswith("k4.pid."):
        raise ClaimsError("footer has no k4.pid key id")
    return kid

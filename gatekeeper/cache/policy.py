"""Pure cache decisions: the policy in force, cacheability, and the canonical key.

Nothing here does I/O. ``cache_key`` is an HMAC, under the cluster's cache secret, of
everything that changes the answer:
the tenant (from the verified token, never from the request), the client's wire
(ingress), the routed model, whether it streams, the upstream body (messages, tools,
sampling parameters, response format, the explicit completion cap) and a native
body when one is sent. Fields that do not change the answer (``user``,
``metadata``, ``store``) are left out. Without the secret, a reader of the bucket cannot
confirm a guessed prompt by hashing it (docs/security.md).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gatekeeper.subjects import subject_token, tenant_token

__all__ = [
    "BYPASS",
    "COALESCED",
    "HIT",
    "MISS",
    "CacheDecision",
    "CachePolicy",
    "cache_key",
    "decide",
    "is_deterministic",
    "parse_cache_control",
]

HIT, MISS, COALESCED, BYPASS = "HIT", "MISS", "COALESCED", "BYPASS"
KEY_DOMAIN = b"gatekeeper.cache.key.v2\n"  # v2: HMAC; v1 (plain SHA-256) entries miss
IGNORED_FIELDS = frozenset({"user", "metadata", "store"})
Charge = Literal["free", "cost"]


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How one key's requests are cached: from its ``cache`` claim or the config."""

    ttl_s: float = 300.0
    nondeterministic: bool = False  # also cache temperature > 0 without a seed
    charge: Charge = "free"  # what a hit (or a coalesced follower) is charged
    models: tuple[str, ...] = ()  # glob patterns of routed models; () = every model

    def covers(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, p) for p in self.models)


@dataclass(frozen=True, slots=True)
class CacheDecision:
    lookup: bool  # read the cache (and join an identical flight)
    store: bool  # write the answer when it is complete
    reason: str  # "" when cacheable; else why not (for logs and docs)

    @property
    def bypass(self) -> bool:
        return not self.lookup and not self.store


_BYPASS_OFF = CacheDecision(False, False, "not_enabled")


def parse_cache_control(value: str | None) -> frozenset[str]:
    """The request's ``Cache-Control`` directives, lower case (``no-cache``, ``no-store``)."""
    if not value:
        return frozenset()
    return frozenset(part.split("=", 1)[0].strip().lower() for part in value.split(","))


def is_deterministic(body: Mapping[str, Any]) -> bool:
    """temperature 0, or a ``seed``: the answer is meant to repeat (OpenAI defaults to 1)."""
    seed = body.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return True
    temperature = body.get("temperature", 1)
    return isinstance(temperature, int | float) and temperature == 0


def decide(
    policy: CachePolicy | None, model: str, body: Mapping[str, Any], cache_control: str | None
) -> CacheDecision:
    """Whether a request may be looked up and its answer stored (pure)."""
    if policy is None:
        return _BYPASS_OFF
    if not policy.covers(model):
        return CacheDecision(False, False, "model_not_covered")
    if not policy.nondeterministic and not is_deterministic(body):
        return CacheDecision(False, False, "nondeterministic")
    directives = parse_cache_control(cache_control)
    lookup, store = "no-cache" not in directives, "no-store" not in directives
    if not lookup and not store:
        return CacheDecision(False, False, "cache_control")
    return CacheDecision(lookup, store, "")


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def cache_key(
    secret: bytes,
    tenant: str,
    ingress: str,
    model: str,
    stream: bool,
    body: Mapping[str, Any],
    native: Mapping[str, Any] | None = None,
) -> str:
    """``<tenant>.<model>.<hmac-sha256>``: the KV key of an answer (pure, deterministic).

    The MAC (keyed by ``secret``) covers the tenant too, so an entry cannot be moved to
    another tenant's key space; the first two tokens only let an operator purge by
    tenant or model.
    """
    kept = {k: v for k, v in body.items() if k not in IGNORED_FIELDS and k != "stream"}
    material = _canonical(
        {
            "tenant": tenant,
            "ingress": ingress,
            "model": model,
            "stream": stream,
            "body": kept,
            "native": native,
        }
    )
    digest = hmac.digest(secret, KEY_DOMAIN + material, hashlib.sha256).hex()
    return f"{tenant_token(tenant)}.{subject_token(model)}.{digest}"


def tenant_prefix(tenant: str, model: str | None = None) -> str:
    """The KV key filter of a tenant's entries (and one model's among them)."""
    return f"{tenant_token(tenant)}.{subject_token(model) if model else '*'}.*"

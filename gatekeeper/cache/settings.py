"""``cache:`` in the config, and which policy a key's requests get (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from gatekeeper.auth.claims import CacheClaim, Claims
from gatekeeper.cache.policy import CachePolicy
from gatekeeper.errors import ConfigError
from gatekeeper.yamlread import Section

__all__ = ["CacheConfig", "parse_cache", "policy_for"]


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = False  # off: no lookup, no header, no per-request work at all
    default: CachePolicy | None = None  # for keys without a ``cache`` claim; None: opt-in only
    max_ttl_s: float = 86_400.0  # no entry lives longer (the KV bucket's TTL)
    max_bytes: int = 1024 * 1024 * 1024  # BH_CACHE's size: the oldest entries are evicted
    inline_max_bytes: int = 256 * 1024  # bigger payloads go to the Object Store
    max_entry_bytes: int = 8 * 1024 * 1024  # bigger answers are served but not stored
    lookup_timeout_s: float = 0.25  # a slower KV read is a miss
    coalesce: bool = True  # identical concurrent requests share one upstream call
    index_max_keys: int = 500_000  # keys known locally (a miss without a read); 0: always read
    memory_bytes: int = 64 * 1024 * 1024  # verified answers kept per process (a hit without a
    # read, while the index says the entry is the key's latest); 0: every hit reads BH_CACHE
    memory_recheck_s: float = 1.0  # a kept answer is read from BH_CACHE again after this long
    key_secret_file: str = ""  # the cluster's HMAC key of cache keys (embedded dev: created)


_DEFAULT = CacheConfig()


def _policy(data: object, path: str) -> CachePolicy:
    s = Section(data, path)
    s.unknown({"ttl_s", "nondeterministic", "charge", "models"})
    models = s.data.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{path}.models: must be a list of model name patterns")
    return CachePolicy(
        ttl_s=s.number("ttl_s", 300.0),
        nondeterministic=s.flag("nondeterministic", False),
        charge=s.choice("charge", "free", ("free", "cost")),  # type: ignore[arg-type]
        models=tuple(models),
    )


def parse_cache(data: object) -> CacheConfig:
    s = Section(data, "cache")
    s.unknown(
        {
            "enabled",
            "default",
            "max_ttl_s",
            "max_bytes",
            "inline_max_bytes",
            "max_entry_bytes",
            "lookup_timeout_s",
            "coalesce",
            "index_max_keys",
            "memory_bytes",
            "memory_recheck_s",
            "key_secret_file",
        }
    )
    default = s.data.get("default")
    return CacheConfig(
        enabled=s.flag("enabled", False),
        default=_policy(default, "cache.default") if default is not None else None,
        max_ttl_s=s.number("max_ttl_s", _DEFAULT.max_ttl_s),
        max_bytes=s.integer("max_bytes", _DEFAULT.max_bytes, minimum=1024 * 1024),
        inline_max_bytes=s.integer("inline_max_bytes", _DEFAULT.inline_max_bytes, minimum=1024),
        max_entry_bytes=s.integer("max_entry_bytes", _DEFAULT.max_entry_bytes, minimum=1024),
        lookup_timeout_s=s.number("lookup_timeout_s", _DEFAULT.lookup_timeout_s),
        coalesce=s.flag("coalesce", True),
        index_max_keys=s.integer("index_max_keys", _DEFAULT.index_max_keys, minimum=0),
        memory_bytes=s.integer("memory_bytes", _DEFAULT.memory_bytes, minimum=0),
        memory_recheck_s=s.number("memory_recheck_s", _DEFAULT.memory_recheck_s),
        key_secret_file=s.text("key_secret_file", ""),
    )


def policy_for(claims: Claims | None, config: CacheConfig) -> CachePolicy | None:
    """The key's ``cache`` claim over the config's default; TTL capped by ``max_ttl_s``."""
    claim: CacheClaim | None = claims.cache if claims is not None else None
    base = config.default
    if claim is None:
        policy = base
    elif not claim.enabled:
        return None
    else:
        start = base or CachePolicy()
        policy = CachePolicy(
            ttl_s=claim.ttl_s if claim.ttl_s is not None else start.ttl_s,
            nondeterministic=(
                claim.nondeterministic
                if claim.nondeterministic is not None
                else start.nondeterministic
            ),
            charge=claim.charge if claim.charge is not None else start.charge,  # type: ignore[arg-type]
            models=claim.models if claim.models is not None else start.models,
        )
    if policy is None:
        return None
    if policy.ttl_s > config.max_ttl_s:
        return CachePolicy(config.max_ttl_s, policy.nondeterministic, policy.charge, policy.models)
    return policy

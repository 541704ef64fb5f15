"""Typed configuration: `config/gatekeeper.yaml` loaded once into frozen values.

Every problem is reported as ``ConfigError("<yaml.path>: <reason>")`` at start.
``${VAR}`` and ``${VAR:-default}`` inside strings are replaced from the environment
(for secrets: provider API keys never live in the file).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import yaml

from gatekeeper.auth.claims import Claims, ClaimsError, parse_claims
from gatekeeper.auth.paserk import KeyFormatError, decode_public
from gatekeeper.batchesconfig import BatchesConfig, parse_batches
from gatekeeper.cache.settings import CacheConfig, parse_cache
from gatekeeper.capacityconfig import CapacityConfig, parse_capacity
from gatekeeper.edgeconfig import (
    ConcurrencyConfig,
    EdgeLimits,
    ShieldConfig,
    TlsConfig,
    parse_concurrency,
    parse_edge_limits,
    parse_shield,
    parse_tls,
)
from gatekeeper.errors import ConfigError
from gatekeeper.ingressconfig import ResponsesConfig, parse_aliases, parse_responses
from gatekeeper.providers.failover import FailoverPolicy
from gatekeeper.providers.limits import UpstreamLimits, parse_upstream
from gatekeeper.providers.settings import ProviderConfig, Timeouts
from gatekeeper.routing.matrix import ModelSpec, parse_models
from gatekeeper.scrub import url_secrets
from gatekeeper.yamlread import Section, as_list, check_url, interpolate

__all__ = [
    "AuditConfig",
    "AuthConfig",
    "ConcurrencyConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "EdgeLimits",
    "FailoverStep",
    "HealthConfig",
    "LimitsConfig",
    "NatsConfig",
    "NatsTlsConfig",
    "PassesConfig",
    "ProviderConfig",
    "RoutingConfig",
    "ServerConfig",
    "ShieldConfig",
    "Timeouts",
    "TlsConfig",
    "UpstreamLimits",
    "config_secrets",
    "load_config",
    "parse_config",
]

NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a node id (node.id, NATS subjects, KV keys)

PROVIDER_KINDS = ("openai", "anthropic", "demo")
DEFAULT_CONFIG_PATH = Path("config/gatekeeper.yaml")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout_s: float = 600.0
    shutdown_grace_s: float = 30.0
    admin_token: str = ""
    limits: EdgeLimits = field(default_factory=EdgeLimits)
    tls: TlsConfig = field(default_factory=TlsConfig)
    gc_tuning: bool = True  # gatekeeper.runtime.tune_gc once the node has started

    @property
    def loopback(self) -> bool:
        """Whether the listener is reachable only from this host."""
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class NatsTlsConfig:
    ca_file: str = ""  # CA bundle that signed the servers' certificates (else system CAs)
    cert_file: str = ""  # client certificate (servers that verify clients)
    key_file: str = ""
    handshake_first: bool = False  # TLS before the server's INFO (server: handshake_first)

    @property
    def enabled(self) -> bool:
        return bool(self.ca_file or self.cert_file or self.handshake_first)


@dataclass(frozen=True, slots=True)
class NatsConfig:
    url: str = "embedded"  # "embedded" starts a local nats-server with JetStream
    store_dir: str = ".gatekeeper/nats"
    connect_timeout_s: float = 5.0
    replicas: int = 1
    creds_file: str = ""  # JWT + nkey seed (.creds), decentralized auth
    nkey_seed_file: str = ""  # an nkey seed (SU…) file, static nkey users
    user: str = ""  # user/password: use ${VAR}, never the secret in the file
    password: str = field(default="", repr=False)
    tls: NatsTlsConfig = field(default_factory=NatsTlsConfig)
    provision: bool = True  # create missing streams/buckets, seed the matrix (false: check)

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"


@dataclass(frozen=True, slots=True)
class FailoverStep:
    provider: str
    priority: int


@dataclass(frozen=True, slots=True)
class AuditConfig:
    mode: str = "strict"  # strict | async
    spool_dir: str = ".gatekeeper/spool"
    spool_alert_records: int = 10_000
    checkpoint_interval_s: float = 60.0  # a signed checkpoint of the chain this often, and at stop
    anonymous_interval_s: float = 60.0  # failed-auth requests: one summary record per interval
    anonymous_max_clients: int = 100  # (client, reason) pairs counted per summary; the rest: _other


@dataclass(frozen=True, slots=True)
class AuthConfig:
    issuers: tuple[str, ...] = ()  # trusted issuer public keys, PASERK k4.public text
    leeway_s: float = 30.0
    cache_size: int = 10_000
    max_token_lifetime: float = 400 * 86_400.0  # exp - iat above this is refused
    dev_issuer_dir: str = ".gatekeeper/keys"  # `make run` creates a dev issuer here


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """Who may change the control plane (docs/security.md, "Signed control values")."""

    operator_keys: tuple[str, ...] = ()  # operator root public keys, k4.public text
    operator_key_file: str = ""  # the operator's k4.secret (operator machines and dev only)
    slot_limit_factor: float = 4.0  # a peer slot above limit x this is refused as absurd


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    default_mode: str = "cost"
    quality_threshold: float = 0.6


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    gossip_interval_ms: int = 200
    default_max_tokens: int = 1024  # reservation when a request gives no max_tokens
    # gossip: shared CRDT counters, bounded overspend; strict: escrowed shares, none.
    # A key's ``budget.mode`` claim overrides it (docs/budget.md, "Strict mode").
    budget_mode: str = "gossip"
    strict_wait_ms: int = 250  # strict: how long a request may wait for a share
    concurrency: ConcurrencyConfig = field(default_factory=ConcurrencyConfig)


@dataclass(frozen=True, slots=True)
class HealthConfig:
    window_s: float = 60.0  # sliding window of latency/error samples per provider and model
    publish_interval_s: float = 5.0  # how often a node publishes to BH_HEALTH
    sla_p99_ms: float = 30_000.0  # p99 latency above this raises an SLA alert
    sla_error_rate: float = 0.25  # error rate above this raises an SLA alert


@dataclass(frozen=True, slots=True)
class PassesConfig:
    """Privacy Pass issuance and redemption (docs/privacy.md); off unless enabled."""

    enabled: bool = False
    secret_file: str = ""  # operator-held secret the issuer keys derive from (32+ bytes)
    epoch: str = "hour"  # minute | hour | day: key rotation and double-spend bucket
    grace_epochs: int = 1  # passes of this many past epochs are still accepted
    issuer_name: str = "gatekeeper"  # in the TokenChallenge
    origin: str = ""  # origin_info of the TokenChallenge
    default_count: int = 1000  # passes per epoch for a key with neither ``passes`` nor ``rpm``
    tenants: tuple[tuple[str, Claims], ...] = ()  # tenant -> tenant-level policy claims


_TENANT_POLICY_KEYS = {"budget", "rpm", "tpm", "routing", "models"}


def _tenant_policy(name: str, data: object) -> Claims:
    path = f"passes.tenants.{name}"
    s = Section(data, path)
    s.unknown(_TENANT_POLICY_KEYS)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise ConfigError(f"{path}: tenant names here use [A-Za-z0-9_-], at most 64")
    base = {
        "iss": "gatekeeper",
        "sub": f"tenant={name}",
        "jti": "pp",
        "iat": "1970-01-01T00:00:00Z",
        "nbf": "1970-01-01T00:00:00Z",
        "exp": "1970-01-01T00:00:00Z",
        "tenant": name,
    }
    try:
        return parse_claims(orjson.dumps({**base, **s.data}))
    except (ClaimsError, TypeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _passes(data: object) -> PassesConfig:
    s = Section(data, "passes")
    s.unknown(
        {
            "enabled",
            "secret_file",
            "epoch",
            "grace_epochs",
            "issuer_name",
            "origin",
            "default_count",
            "tenants",
        }
    )
    enabled = s.flag("enabled", False)
    secret_file = s.text("secret_file", "")
    if enabled and not secret_file:
        raise ConfigError("passes.secret_file: required when passes.enabled is true")
    tenants = Section(s.data.get("tenants"), "passes.tenants").data
    return PassesConfig(
        enabled=enabled,
        secret_file=secret_file,
        epoch=s.choice("epoch", "hour", ("minute", "hour", "day")),
        grace_epochs=s.integer("grace_epochs", 1),
        issuer_name=s.text("issuer_name", "gatekeeper") or "gatekeeper",
        origin=s.text("origin", ""),
        default_count=s.integer("default_count", 1000),
        tenants=tuple((str(k), _tenant_policy(str(k), v or {})) for k, v in tenants.items()),
    )


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)
    providers: tuple[ProviderConfig, ...] = ()
    models: tuple[ModelSpec, ...] = ()
    failover_chain: tuple[FailoverStep, ...] = ()
    audit: AuditConfig = field(default_factory=AuditConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    failover: FailoverPolicy = field(default_factory=FailoverPolicy)
    upstream: UpstreamLimits = field(default_factory=UpstreamLimits)
    shield: ShieldConfig = field(default_factory=ShieldConfig)
    passes: PassesConfig = field(default_factory=PassesConfig)
    aliases: tuple[tuple[str, str], ...] = ()  # client model name → matrix model (ingress)
    responses: ResponsesConfig = field(default_factory=ResponsesConfig)
    batches: BatchesConfig = field(default_factory=BatchesConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    capacity: CapacityConfig = field(default_factory=CapacityConfig)
    state_dir: str = ".gatekeeper"
    node_id: str = ""
    demo: str = "auto"  # auto: enable the demo provider when no real provider has a key
    source: str = "<defaults>"

    def provider(self, name: str) -> ProviderConfig | None:
        for p in self.providers:
            if p.name == name:
                return p
        return None

    @property
    def enabled_providers(self) -> tuple[ProviderConfig, ...]:
        return tuple(p for p in self.providers if p.enabled)


# ---------------------------------------------------------------- sections


def _server(data: object) -> ServerConfig:
    s = Section(data, "server")
    s.unknown(
        {
            "host",
            "port",
            "workers",
            "max_body_bytes",
            "request_timeout_s",
            "shutdown_grace_s",
            "admin_token",
            "limits",
            "tls",
            "gc_tuning",
        }
    )
    port = s.integer("port", 8080)
    if port > 65535:
        raise ConfigError("server.port: must be between 0 and 65535")
    return ServerConfig(
        host=s.text("host", "127.0.0.1"),
        port=port,
        workers=s.integer("workers", 1, minimum=1),
        max_body_bytes=s.integer("max_body_bytes", 4 * 1024 * 1024, minimum=1024),
        request_timeout_s=s.number("request_timeout_s", 600.0),
        shutdown_grace_s=s.number("shutdown_grace_s", 30.0),
        admin_token=s.text("admin_token", ""),
        limits=parse_edge_limits(s.data.get("limits")),
        tls=parse_tls(s.data.get("tls")),
        gc_tuning=s.flag("gc_tuning", True),
    )


def _nats_tls(data: object) -> NatsTlsConfig:
    s = Section(data, "nats.tls")
    s.unknown({"ca_file", "cert_file", "key_file", "handshake_first"})
    cert, key = s.text("cert_file", ""), s.text("key_file", "")
    if bool(cert) != bool(key):
        raise ConfigError("nats.tls: cert_file and key_file go together")
    return NatsTlsConfig(
        ca_file=s.text("ca_file", ""),
        cert_file=cert,
        key_file=key,
        handshake_first=s.flag("handshake_first", False),
    )


def _nats_url(url: str) -> None:
    """Each URL valid; never a mix of encrypted and plaintext schemes (a silent downgrade)."""
    schemes = set()
    for i, part in enumerate(url.split(",")):
        path = f"nats.url[{i}]" if "," in url else "nats.url"
        check_url(part.strip(), path, ("nats", "tls", "ws", "wss"))
        schemes.add(part.strip().split("://", 1)[0].lower() in ("tls", "wss"))
    if len(schemes) > 1:
        raise ConfigError("nats.url: mixes tls:// (or wss://) and plaintext URLs")


def _nats(data: object) -> NatsConfig:
    s = Section(data, "nats")
    s.unknown(
        {
            "url",
            "store_dir",
            "connect_timeout_s",
            "replicas",
            "creds_file",
            "nkey_seed_file",
            "user",
            "password",
            "tls",
            "provision",
        }
    )
    url = s.text("url", "embedded") or "embedded"
    if url != "embedded":
        _nats_url(url)
    creds, seed, user = s.text("creds_file", ""), s.text("nkey_seed_file", ""), s.text("user", "")
    if sum(map(bool, (creds, seed, user))) > 1:
        raise ConfigError("nats: give one of creds_file, nkey_seed_file or user/password")
    password = s.text("password", "")
    if password and not user:
        raise ConfigError("nats.password: needs nats.user")
    return NatsConfig(
        url=url,
        store_dir=s.text("store_dir", ".gatekeeper/nats"),
        connect_timeout_s=s.number("connect_timeout_s", 5.0),
        replicas=s.integer("replicas", 1, minimum=1),
        creds_file=creds,
        nkey_seed_file=seed,
        user=user,
        password=password,
        tls=_nats_tls(s.data.get("tls")),
        provision=s.flag("provision", True),
    )


def _timeouts(data: object, path: str) -> Timeouts:
    s = Section(data, path)
    s.unknown({"connect_s", "first_byte_s", "total_s", "stall_s"})
    return Timeouts(
        connect_s=s.number("connect_s", 5.0),
        first_byte_s=s.number("first_byte_s", 60.0),
        total_s=s.number("total_s", 600.0),
        stall_s=s.number("stall_s", 30.0),
    )


def _provider(data: object, path: str) -> ProviderConfig:
    s = Section(data, path)
    s.unknown(
        {
            "name",
            "kind",
            "base_url",
            "api_key",
            "api_key_required",
            "timeouts",
            "pool_size",
            "headers",
        }
    )
    name = s.text("name", "", required=True)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ConfigError(f"{path}.name: lowercase letters, digits, '-' and '_' only")
    kind = s.choice("kind", "openai", PROVIDER_KINDS)
    base_url = s.text("base_url", "")
    if kind != "demo":
        if not base_url:
            raise ConfigError(f"{path}.base_url: required for kind {kind}")
        base_url = check_url(base_url, f"{path}.base_url", ("http", "https"))
    headers = Section(s.data.get("headers"), f"{path}.headers").data
    return ProviderConfig(
        name=name,
        kind=kind,
        base_url=base_url,
        api_key=s.text("api_key", ""),
        api_key_required=s.flag("api_key_required", True),
        timeouts=_timeouts(s.data.get("timeouts"), f"{path}.timeouts"),
        pool_size=s.integer("pool_size", 256, minimum=1),
        headers=tuple((str(k), str(v)) for k, v in headers.items()),
    )


def _failover(data: object, providers: set[str]) -> tuple[FailoverStep, ...]:
    steps = []
    for i, item in enumerate(as_list(data, "failover_chain")):
        s = Section(item, f"failover_chain[{i}]")
        s.unknown({"provider", "priority"})
        name = s.text("provider", "", required=True)
        if name not in providers:
            raise ConfigError(f"failover_chain[{i}].provider: no provider named {name!r}")
        steps.append(FailoverStep(name, s.integer("priority", i + 1, minimum=1)))
    return tuple(sorted(steps, key=lambda st: st.priority))


def _audit(data: object) -> AuditConfig:
    s = Section(data, "audit")
    s.unknown(
        {
            "mode",
            "spool_dir",
            "spool_alert_records",
            "checkpoint_interval_s",
            "anonymous_interval_s",
            "anonymous_max_clients",
        }
    )
    return AuditConfig(
        mode=s.choice("mode", "strict", ("strict", "async")),
        spool_dir=s.text("spool_dir", ".gatekeeper/spool"),
        spool_alert_records=s.integer("spool_alert_records", 10_000, minimum=1),
        checkpoint_interval_s=s.number("checkpoint_interval_s", 60.0),
        anonymous_interval_s=s.number("anonymous_interval_s", 60.0),
        anonymous_max_clients=s.integer("anonymous_max_clients", 100, minimum=1),
    )


def _auth(data: object) -> AuthConfig:
    s = Section(data, "auth")
    s.unknown({"issuers", "leeway_s", "cache_size", "dev_issuer_dir", "max_token_lifetime"})
    issuers = []
    for i, item in enumerate(as_list(s.data.get("issuers"), "auth.issuers")):
        if not isinstance(item, str) or not item.startswith("k4.public."):
            raise ConfigError(f"auth.issuers[{i}]: must be a PASERK k4.public.… key")
        issuers.append(item)
    leeway = s.number("leeway_s", 30.0, positive=False)
    if not 0.0 <= leeway <= MAX_LEEWAY_S:
        raise ConfigError(f"auth.leeway_s: must be between 0 and {MAX_LEEWAY_S:g} seconds")
    return AuthConfig(
        issuers=tuple(issuers),
        leeway_s=leeway,
        max_token_lifetime=_duration(s, "max_token_lifetime", "400d"),
        cache_size=s.integer("cache_size", 10_000),
        dev_issuer_dir=s.text("dev_issuer_dir", ".gatekeeper/keys"),
    )


def _control(data: object) -> ControlConfig:
    s = Section(data, "control")
    s.unknown({"operator_keys", "operator_key_file", "slot_limit_factor"})
    keys = []
    for i, item in enumerate(as_list(s.data.get("operator_keys"), "control.operator_keys")):
        try:
            decode_public(item if isinstance(item, str) else "")
        except KeyFormatError:
            raise ConfigError(
                f"control.operator_keys[{i}]: must be a PASERK k4.public.… key"
            ) from None
        keys.append(item.strip())
    factor = s.number("slot_limit_factor", 4.0)
    if factor < 1:
        raise ConfigError("control.slot_limit_factor: must be at least 1")
    return ControlConfig(
        operator_keys=tuple(keys),
        operator_key_file=s.text("operator_key_file", ""),
        slot_limit_factor=factor,
    )


MAX_LEEWAY_S = 300.0
_DURATION = re.compile(r"(\d+)([dhms]?)")
_UNIT_S = {"d": 86_400, "h": 3_600, "m": 60, "s": 1, "": 1}


def _duration(s: Section, key: str, default: str) -> float:
    """A positive duration: seconds, or a number with d, h, m or s (``"90d"``)."""
    raw = str(s.data.get(key, default)).strip()
    match = _DURATION.fullmatch(raw)
    if match is None or int(match.group(1)) <= 0:
        raise ConfigError(f"auth.{key}: must be a positive duration such as 90d, 12h or 3600")
    return float(int(match.group(1)) * _UNIT_S[match.group(2)])


def _routing(data: object) -> RoutingConfig:
    s = Section(data, "routing")
    s.unknown({"default_mode", "quality_threshold"})
    threshold = s.number("quality_threshold", 0.6, positive=False)
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError("routing.quality_threshold: must be between 0 and 1")
    return RoutingConfig(
        default_mode=s.choice("default_mode", "cost", ("cost", "latency", "capability")),
        quality_threshold=threshold,
    )


def _limits(data: object) -> LimitsConfig:
    s = Section(data, "limits")
    s.unknown(
        {"gossip_interval_ms", "default_max_tokens", "budget_mode", "strict_wait_ms", "concurrency"}
    )
    return LimitsConfig(
        gossip_interval_ms=s.integer("gossip_interval_ms", 200, minimum=10),
        default_max_tokens=s.integer("default_max_tokens", 1024, minimum=1),
        budget_mode=s.choice("budget_mode", "gossip", ("gossip", "strict")),
        strict_wait_ms=s.integer("strict_wait_ms", 250, minimum=1),
        concurrency=parse_concurrency(s.data.get("concurrency")),
    )


def _health(data: object) -> HealthConfig:
    s = Section(data, "health")
    s.unknown({"window_s", "publish_interval_s", "sla_p99_ms", "sla_error_rate"})
    rate = s.number("sla_error_rate", 0.25)
    if rate > 1:
        raise ConfigError("health.sla_error_rate: must be between 0 and 1")
    return HealthConfig(
        window_s=s.number("window_s", 60.0),
        publish_interval_s=s.number("publish_interval_s", 5.0),
        sla_p99_ms=s.number("sla_p99_ms", 30_000.0),
        sla_error_rate=rate,
    )


def _failover_policy(data: object) -> FailoverPolicy:
    s = Section(data, "failover")
    s.unknown(
        {
            "retry_statuses",
            "backoff_base_s",
            "backoff_cap_s",
            "retry_after_cap_s",
            "same_provider_retries",
            "breaker_failures",
            "breaker_reset_s",
            "max_continuations",
        }
    )
    d = FailoverPolicy()
    statuses = s.data.get("retry_statuses", sorted(d.retry_statuses))
    if not isinstance(statuses, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) and 400 <= x <= 599 for x in statuses
    ):
        raise ConfigError("failover.retry_statuses: must be a list of HTTP statuses 400-599")
    return FailoverPolicy(
        backoff_base_s=s.number("backoff_base_s", d.backoff_base_s),
        backoff_cap_s=s.number("backoff_cap_s", d.backoff_cap_s),
        retry_after_cap_s=s.number("retry_after_cap_s", d.retry_after_cap_s),
        same_provider_retries=s.integer("same_provider_retries", d.same_provider_retries),
        breaker_failures=s.integer("breaker_failures", d.breaker_failures, minimum=1),
        breaker_reset_s=s.number("breaker_reset_s", d.breaker_reset_s),
        retry_statuses=frozenset(statuses),
        max_continuations=s.integer("max_continuations", d.max_continuations),
    )


def _node_id(text: str) -> str:
    if text and not NODE_ID.fullmatch(text):
        raise ConfigError("node_id: letters, digits, '-' and '_' only, at most 64 characters")
    return text


def parse_config(
    raw: object, *, env: Mapping[str, str] | None = None, source: str = "<memory>"
) -> Config:
    """Validate a YAML tree into a ``Config``; raise ``ConfigError`` naming the path."""
    top = Section(interpolate(raw, os.environ if env is None else env), "")
    top.unknown(
        {
            "server",
            "nats",
            "providers",
            "models",
            "failover_chain",
            "audit",
            "auth",
            "control",
            "routing",
            "limits",
            "health",
            "failover",
            "upstream",
            "shield",
            "passes",
            "aliases",
            "responses",
            "batches",
            "cache",
            "capacity",
            "state_dir",
            "node_id",
            "demo",
        }
    )
    providers = tuple(
        _provider(p, f"providers[{i}]")
        for i, p in enumerate(as_list(top.data.get("providers"), "providers"))
    )
    names = [p.name for p in providers]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConfigError(f"providers[{i}].name: duplicate provider {n!r}")
    models = parse_models(top.data.get("models") or [], "models")
    for i, m in enumerate(models):
        if m.provider not in names:
            raise ConfigError(f"models[{i}].provider: no provider named {m.provider!r}")
    return Config(
        server=_server(top.data.get("server")),
        nats=_nats(top.data.get("nats")),
        providers=providers,
        models=models,
        failover_chain=_failover(top.data.get("failover_chain"), set(names)),
        audit=_audit(top.data.get("audit")),
        auth=_auth(top.data.get("auth")),
        control=_control(top.data.get("control")),
        routing=_routing(top.data.get("routing")),
        limits=_limits(top.data.get("limits")),
        health=_health(top.data.get("health")),
        failover=_failover_policy(top.data.get("failover")),
        upstream=parse_upstream(top.data.get("upstream")),
        shield=parse_shield(top.data.get("shield")),
        passes=_passes(top.data.get("passes")),
        aliases=parse_aliases(top.data.get("aliases")),
        responses=parse_responses(top.data.get("responses")),
        batches=parse_batches(top.data.get("batches")),
        cache=parse_cache(top.data.get("cache")),
        capacity=parse_capacity(top.data.get("capacity")),
        state_dir=top.text("state_dir", ".gatekeeper"),
        node_id=_node_id(top.text("node_id", "")),
        demo=top.choice("demo", "auto", ("auto", "on", "off")),
        source=source,
    )


def load_config(path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file (``GATEKEEPER_CONFIG`` or ``config/gatekeeper.yaml``)."""
    environ = os.environ if env is None else env
    chosen = Path(path or environ.get("GATEKEEPER_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = chosen.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read config file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{chosen}: not valid YAML ({exc})") from None
    return parse_config(raw, env=environ, source=str(chosen))


def config_secrets(config: Config) -> tuple[str, ...]:
    """Every secret value the configuration holds: provider keys and credential headers,
    the admin token, NATS credentials in its URLs."""
    found: list[str] = [config.server.admin_token]
    for p in config.providers:
        found.append(p.api_key)
        found += [v for k, v in p.headers if _SENSITIVE_HEADER.search(k)]
        found += url_secrets(p.base_url)
    found += url_secrets(config.nats.url)
    return tuple(s for s in found if s)


_SENSITIVE_HEADER = re.compile(r"(?i)auth|key|token|secret|cookie|password")

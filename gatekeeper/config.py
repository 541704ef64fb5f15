"""Typed configuration: `config/gatekeeper.yaml` loaded once into frozen values.

Every problem is reported as ``ConfigError("<yaml.path>: <reason>")`` at start.
``${VAR}`` and ``${VAR:-default}`` inside strings are replaced from the environment
(for secrets: provider API keys never live in the file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gatekeeper.providers.failover import FailoverPolicy
from gatekeeper.routing.matrix import ConfigError, ModelSpec, parse_models
from gatekeeper.yamlread import Section, as_list, check_url, interpolate

__all__ = [
    "AuditConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "FailoverStep",
    "HealthConfig",
    "LimitsConfig",
    "NatsConfig",
    "ProviderConfig",
    "RoutingConfig",
    "ServerConfig",
    "Timeouts",
    "load_config",
    "parse_config",
]

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


@dataclass(frozen=True, slots=True)
class NatsConfig:
    url: str = "embedded"  # "embedded" starts a local nats-server with JetStream
    store_dir: str = ".gatekeeper/nats"
    connect_timeout_s: float = 5.0
    replicas: int = 1

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 5.0
    first_byte_s: float = 60.0
    total_s: float = 600.0


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: str
    base_url: str = ""
    api_key: str = ""
    api_key_required: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    pool_size: int = 256
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def enabled(self) -> bool:
        """A provider is usable when it is the demo, or its key is set (or not needed)."""
        return self.kind == "demo" or bool(self.api_key) or not self.api_key_required


@dataclass(frozen=True, slots=True)
class FailoverStep:
    provider: str
    priority: int


@dataclass(frozen=True, slots=True)
class AuditConfig:
    mode: str = "strict"  # strict | async
    spool_dir: str = ".gatekeeper/spool"
    spool_alert_records: int = 10_000


@dataclass(frozen=True, slots=True)
class AuthConfig:
    issuers: tuple[str, ...] = ()  # trusted issuer public keys, PASERK k4.public text
    leeway_s: float = 30.0
    cache_size: int = 10_000
    dev_issuer_dir: str = ".gatekeeper/keys"  # `make run` creates a dev issuer here


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    default_mode: str = "cost"
    quality_threshold: float = 0.6


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    gossip_interval_ms: int = 200
    default_max_tokens: int = 1024  # reservation when a request gives no max_tokens


@dataclass(frozen=True, slots=True)
class HealthConfig:
    window_s: float = 60.0  # sliding window of latency/error samples per provider and model
    publish_interval_s: float = 5.0  # how often a node publishes to BH_HEALTH
    sla_p99_ms: float = 30_000.0  # p99 latency above this raises an SLA alert
    sla_error_rate: float = 0.25  # error rate above this raises an SLA alert


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)
    providers: tuple[ProviderConfig, ...] = ()
    models: tuple[ModelSpec, ...] = ()
    failover_chain: tuple[FailoverStep, ...] = ()
    audit: AuditConfig = field(default_factory=AuditConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    failover: FailoverPolicy = field(default_factory=FailoverPolicy)
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
    )


def _nats(data: object) -> NatsConfig:
    s = Section(data, "nats")
    s.unknown({"url", "store_dir", "connect_timeout_s", "replicas"})
    url = s.text("url", "embedded") or "embedded"
    if url != "embedded":
        for i, part in enumerate(url.split(",")):
            check_url(
                part.strip(),
                f"nats.url[{i}]" if "," in url else "nats.url",
                ("nats", "tls", "ws", "wss"),
            )
    return NatsConfig(
        url=url,
        store_dir=s.text("store_dir", ".gatekeeper/nats"),
        connect_timeout_s=s.number("connect_timeout_s", 5.0),
        replicas=s.integer("replicas", 1, minimum=1),
    )


def _timeouts(data: object, path: str) -> Timeouts:
    s = Section(data, path)
    s.unknown({"connect_s", "first_byte_s", "total_s"})
    return Timeouts(
        connect_s=s.number("connect_s", 5.0),
        first_byte_s=s.number("first_byte_s", 60.0),
        total_s=s.number("total_s", 600.0),
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
    s.unknown({"mode", "spool_dir", "spool_alert_records"})
    return AuditConfig(
        mode=s.choice("mode", "strict", ("strict", "async")),
        spool_dir=s.text("spool_dir", ".gatekeeper/spool"),
        spool_alert_records=s.integer("spool_alert_records", 10_000, minimum=1),
    )


def _auth(data: object) -> AuthConfig:
    s = Section(data, "auth")
    s.unknown({"issuers", "leeway_s", "cache_size", "dev_issuer_dir"})
    issuers = []
    for i, item in enumerate(as_list(s.data.get("issuers"), "auth.issuers")):
        if not isinstance(item, str) or not item.startswith("k4.public."):
            raise ConfigError(f"auth.issuers[{i}]: must be a PASERK k4.public.… key")
        issuers.append(item)
    return AuthConfig(
        issuers=tuple(issuers),
        leeway_s=s.number("leeway_s", 30.0, positive=False),
        cache_size=s.integer("cache_size", 10_000),
        dev_issuer_dir=s.text("dev_issuer_dir", ".gatekeeper/keys"),
    )


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
    s.unknown({"gossip_interval_ms", "default_max_tokens"})
    return LimitsConfig(
        gossip_interval_ms=s.integer("gossip_interval_ms", 200, minimum=10),
        default_max_tokens=s.integer("default_max_tokens", 1024, minimum=1),
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
    )


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
            "routing",
            "limits",
            "health",
            "failover",
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
        routing=_routing(top.data.get("routing")),
        limits=_limits(top.data.get("limits")),
        health=_health(top.data.get("health")),
        failover=_failover_policy(top.data.get("failover")),
        state_dir=top.text("state_dir", ".gatekeeper"),
        node_id=top.text("node_id", ""),
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

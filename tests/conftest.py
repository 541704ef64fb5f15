"""Fixtures shared by every test: real nats-server(s), fake providers, the gateway."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from gatekeeper.bus.embedded import EmbeddedNats, free_port
from tests.harness.fake_anthropic import FakeAnthropic
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import (
    GatewayProcess,
    Issuer,
    base_config,
    chat_model,
    embedding_model,
)

# Property tests check behaviour, not speed: Hypothesis's default 200 ms deadline per
# example turns a loaded CI machine (or a cold first import) into a spurious failure.
settings.register_profile("gatekeeper", deadline=None)
settings.load_profile("gatekeeper")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A real nats-server with JetStream on a free loopback port and a temp store."""
    server = EmbeddedNats(tmp_path / "nats", name="test-nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[list[EmbeddedNats]]:
    """Three clustered nats-servers with JetStream (R3 streams are possible)."""
    cports = [free_port() for _ in range(3)]
    routes = [f"nats://127.0.0.1:{p}" for p in cports]
    password = secrets.token_urlsafe(24)  # one client password for the whole cluster
    servers = [
        EmbeddedNats(
            tmp_path / f"n{i}",
            name=f"n{i}",
            cluster_name="gk-test",
            cluster_port=cports[i],
            routes=routes,
            password=password,
        )
        for i in range(3)
    ]
    for s in servers:
        s.start()
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    issuer = Issuer(tmp_path_factory.mktemp("issuer"))
    # the operator CLI commands the tests run sign with the test cluster's operator key
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GATEKEEPER_OPERATOR_KEY", str(issuer.operator_key))
        yield issuer


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def openai_provider(name: str, fake: FakeOpenAI, **over: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "openai",
        "base_url": fake.url,
        "api_key": fake.api_key,
        "timeouts": {"connect_s": 2, "first_byte_s": 5, "total_s": 30},
        **over,
    }


def anthropic_provider(name: str, fake: FakeAnthropic, **over: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "anthropic",
        "base_url": fake.url,
        "api_key": fake.api_key,
        **over,
    }


@pytest.fixture
def start_gateway(
    tmp_path: Path, nats_server: EmbeddedNats, issuer: Issuer
) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateway processes: ``start_gateway(providers=…, models=…, **config)``."""
    started: list[GatewayProcess] = []

    def start(
        providers: list[dict[str, Any]],
        models: list[dict[str, Any]],
        workers: int = 1,
        env: dict[str, str] | None = None,
        nats_url: str | None = None,
        **extra: Any,
    ) -> GatewayProcess:
        cfg = base_config(providers, models, issuer, tmp_path / "state", **extra)
        gw = GatewayProcess(
            cfg,
            tmp_path / f"gw{len(started)}",
            nats_url or nats_server.url,
            workers=workers,
            env=env or {},
        )
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> GatewayProcess:
    """One gateway in front of one fake OpenAI provider."""
    return start_gateway(
        providers=[openai_provider("openai", fake_openai)],
        models=[
            chat_model("gpt-4o-mini", "openai"),
            embedding_model("text-embedding-3-small", "openai"),
        ],
    )

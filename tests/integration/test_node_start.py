"""A node whose start fails half way leaves nothing running (``node.start_node``).

The node starts against a real nats-server and fails at the Privacy Pass step (an
unreadable ``passes.secret_file``), after the outbox, the audit publisher, health,
gossip, escrow, the config watcher and the session tracker have started: every one of
them is stopped again, and the NATS connection closed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.catalog import Catalog
from gatekeeper.config import load_config
from gatekeeper.errors import ConfigError
from gatekeeper.node import start_node
from tests.conftest import openai_provider
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import Issuer, base_config, chat_model


async def test_a_start_failing_half_way_unwinds_what_it_started(
    tmp_path: Path, nats_server: EmbeddedNats, issuer: Issuer, fake_openai: FakeOpenAI
) -> None:
    cfg = base_config(
        [openai_provider("openai", fake_openai)],
        [chat_model("gpt-4o-mini", "openai")],
        issuer,
        tmp_path / "state",
    )
    cfg["passes"] = {"enabled": True, "secret_file": str(tmp_path / "missing.secret")}
    path = tmp_path / "gatekeeper.yaml"
    path.write_text(yaml.safe_dump(cfg))
    config = load_config(path)
    before = asyncio.all_tasks()

    with pytest.raises(ConfigError, match=r"passes\.secret_file"):
        await start_node(config, Catalog.build(config), "gk-start-w0", nats_server.url)

    for _ in range(3):  # a cancelled task finishes on the loop's next turns
        await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() - before if not t.done() and not _nats_heartbeat(t)}
    assert not left, [t.get_coro() for t in left]


def _nats_heartbeat(task: asyncio.Task[object]) -> bool:
    """nats-py's own heartbeat checks of a KV watch: they end at their next wake-up once
    the connection is closed (``JetStreamContext._JSI``), so the node cannot await them."""
    return getattr(task.get_coro(), "__qualname__", "").startswith("JetStreamContext._JSI.")

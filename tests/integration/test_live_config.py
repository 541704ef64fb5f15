"""Live configuration through BH_CONFIG on real processes: the admin CLI writes, every node follows.

Each test runs gateways on one real nats-server and drives them with the real
``gatekeeper keys …`` / ``gatekeeper config push`` commands. A change counts as
"reached a node" when that node's HTTP answers change; propagation is measured
from the moment the test's own NATS subscriber sees the KV write.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
import yaml
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from gatekeeper.auth import paseto
from gatekeeper.auth.claims import IMPLICIT_ASSERTION
from gatekeeper.auth.paserk import decode_public, pid
from gatekeeper.bus.embedded import EmbeddedNats, free_port
from gatekeeper.bus.streams import CONFIG_BUCKET
from tests.conftest import openai_provider
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import ROOT, GatewayProcess, Issuer, base_config, chat_model

StartGateway = Callable[..., GatewayProcess]

PROPAGATION_LIMIT_S = 1.0
MODELS = [chat_model("gpt-4o-mini", "openai")]


# ---------------------------------------------------------------------- helpers


def key_id(token: str, issuer: Issuer) -> str:
    """The token's ``sub``: the API key id that revocation names."""
    verified = paseto.verify(token, decode_public(issuer.public), IMPLICIT_ASSERTION)
    sub: str = orjson.loads(verified.payload)["sub"]
    return sub


def cli(nats_url: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``python -m gatekeeper ARGS --nats-url URL`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", *args, "--nats-url", nats_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def acli(nats_url: str, *args: str) -> tuple[int, str, str]:
    """``cli`` without blocking the event loop (pollers keep running meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gatekeeper",
        *args,
        "--nats-url",
        nats_url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def models_of(gw: GatewayProcess, token: str) -> httpx.Response:
    """``GET /v1/models``: the cheapest request that runs the full token check."""
    return httpx.get(
        f"{gw.base_url}/models", headers={"authorization": f"Bearer {token}"}, timeout=5
    )


def chat(gw: GatewayProcess, token: str, model: str = "gpt-4o-mini") -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"authorization": f"Bearer {token}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        timeout=10,
    )


def message(response: httpx.Response) -> str:
    text: str = response.json()["error"]["message"]
    return text


def model_ids(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {m["id"] for m in response.json()["data"]}


class KvWrites:
    """The test's own view of BH_CONFIG writes: when each key's write reached NATS."""

    def __init__(self, nc: NatsClient, pattern: str) -> None:
        self.nc = nc
        self.pattern = pattern
        self.seen: dict[str, float] = {}
        self.event = asyncio.Event()

    async def __aenter__(self) -> KvWrites:
        async def on_write(msg: Msg) -> None:
            key = msg.subject.removeprefix(f"$KV.{CONFIG_BUCKET}.")
            self.seen.setdefault(key, time.monotonic())
            self.event.set()

        self.sub = await self.nc.subscribe(f"$KV.{CONFIG_BUCKET}.{self.pattern}", cb=on_write)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.unsubscribe()

    async def written_at(self, key: str, within: float = 5.0) -> float:
        deadline = time.monotonic() + within
        while key not in self.seen:
            assert time.monotonic() < deadline, f"no KV write of {key} seen"
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), max(0.01, deadline - time.monotonic()))
        return self.seen[key]


async def until(
    client: httpx.AsyncClient,
    request: Callable[[httpx.AsyncClient], Any],
    done: Callable[[httpx.Response], bool],
    within: float = 5.0,
) -> float:
    """Repeat ``request`` until ``done(response)``; returns the monotonic time it was."""
    deadline = time.monotonic() + within
    while True:
        response = await request(client)
        if done(response):
            return time.monotonic()
        assert time.monotonic() < deadline, f"still {response.status_code}: {response.text}"
        await asyncio.sleep(0.002)


def get_models(gw: GatewayProcess, token: str) -> Callable[[httpx.AsyncClient], Any]:
    def request(client: httpx.AsyncClient) -> Any:
        return client.get(f"{gw.base_url}/models", headers={"authorization": f"Bearer {token}"})

    return request


def revoked(response: httpx.Response) -> bool:
    return response.status_code == 401 and "token revoked" in response.text


def ok(response: httpx.Response) -> bool:
    return response.status_code == 200


def refused(response: httpx.Response) -> bool:
    return response.status_code == 401


async def propagate(
    nats_url: str,
    nodes: list[GatewayProcess],
    token: str,
    kv_key: str,
    command: tuple[str, ...],
    done: Callable[[httpx.Response], bool],
) -> tuple[list[float], str]:
    """Run a CLI command while polling every node: (seconds from KV write to each, stdout)."""
    nc = await nats.connect(nats_url)
    try:
        async with KvWrites(nc, ">") as writes, httpx.AsyncClient(timeout=5) as client:
            pollers = [
                asyncio.ensure_future(until(client, get_models(gw, token), done, within=20))
                for gw in nodes
            ]
            code, out, err = await acli(nats_url, *command)
            assert code == 0, err
            written = await writes.written_at(kv_key)
            reached = await asyncio.gather(*pollers)
    finally:
        await nc.close()
    return [max(0.0, t - written) for t in reached], out


def two_nodes(start_gateway: StartGateway, fake: FakeOpenAI) -> list[GatewayProcess]:
    return [
        start_gateway(providers=[openai_provider("openai", fake)], models=MODELS) for _ in range(2)
    ]


# ---------------------------------------------------------------------- revocation


@pytest.mark.slow
class TestRevocation:
    async def test_revocation_reaches_every_node_within_a_second(
        self,
        start_gateway: StartGateway,
        fake_openai: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """``keys revoke`` → 401 "token revoked" on both nodes in < 1 s; unrevoke restores."""
        nodes = two_nodes(start_gateway, fake_openai)
        token = issuer.token()
        sub = key_id(token, issuer)
        for gw in nodes:
            assert chat(gw, token).status_code == 200

        took, out = await propagate(
            nats_server.url,
            nodes,
            token,
            f"revoked.{sub}",
            ("keys", "revoke", sub, "--reason", "leaked"),
            revoked,
        )
        assert out.strip() == f"revoked {sub}"
        print(f"\nrevocation reached the nodes {[round(t * 1000, 1) for t in took]} ms after")
        assert all(t < PROPAGATION_LIMIT_S for t in took)
        for gw in nodes:
            response = chat(gw, token)
            assert response.status_code == 401
            assert message(response) == "token revoked"
        other = issuer.token()  # another key of the same tenant is untouched
        assert all(chat(gw, other).status_code == 200 for gw in nodes)

        listed = cli(nats_server.url, "keys", "revoked")
        assert listed.returncode == 0, listed.stderr
        [line] = listed.stdout.splitlines()
        listed_sub, at, reason = line.split("\t")
        assert (listed_sub, reason) == (sub, "leaked")
        assert datetime.fromisoformat(at).tzinfo is not None

        took, out = await propagate(
            nats_server.url, nodes, token, f"revoked.{sub}", ("keys", "unrevoke", sub), ok
        )
        assert out.strip() == f"unrevoked {sub}"
        print(f"unrevocation reached the nodes {[round(t * 1000, 1) for t in took]} ms after")
        assert all(t < PROPAGATION_LIMIT_S for t in took)
        assert all(chat(gw, token).status_code == 200 for gw in nodes)
        assert cli(nats_server.url, "keys", "revoked").stdout == ""

    def test_revocation_survives_a_gateway_restart(
        self,
        start_gateway: StartGateway,
        fake_openai: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """A node started after the revocation loads it from BH_CONFIG before serving."""
        first = start_gateway(providers=[openai_provider("openai", fake_openai)], models=MODELS)
        token = issuer.token()
        assert chat(first, token).status_code == 200
        done = cli(nats_server.url, "keys", "revoke", key_id(token, issuer))
        assert done.returncode == 0, done.stderr
        first.stop()

        second = start_gateway(providers=[openai_provider("openai", fake_openai)], models=MODELS)
        response = chat(second, token)  # the very first request after readiness
        assert response.status_code == 401
        assert message(response) == "token revoked"
        assert chat(second, issuer.token()).status_code == 200

    def test_nodes_keep_the_last_known_list_without_nats(
        self,
        start_gateway: StartGateway,
        fake_openai: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """With nats-server killed, a revoked key stays refused and others still pass."""
        gw = start_gateway(providers=[openai_provider("openai", fake_openai)], models=MODELS)
        token, other = issuer.token(), issuer.token()
        assert cli(nats_server.url, "keys", "revoke", key_id(token, issuer)).returncode == 0
        deadline = time.monotonic() + 5
        while not revoked(models_of(gw, token)):
            assert time.monotonic() < deadline
            time.sleep(0.01)

        nats_server.kill()
        deadline = time.monotonic() + 10
        while httpx.get(f"{gw.url}/readyz", timeout=5).json()["nats"] != "disconnected":
            assert time.monotonic() < deadline, "the node did not notice NATS going away"
            time.sleep(0.05)
        for _ in range(3):
            assert revoked(models_of(gw, token))
            assert models_of(gw, other).status_code == 200

        nats_server.start()  # same port and store: the node reconnects, nothing changes
        gw.wait_ready(10)
        assert revoked(models_of(gw, token))

        # ...and follows BH_CONFIG again at once (not after nats-py's 10-20 s heartbeat check)
        assert cli(nats_server.url, "keys", "unrevoke", key_id(token, issuer)).returncode == 0
        unrevoked = time.monotonic()
        while models_of(gw, token).status_code != 200:
            assert time.monotonic() - unrevoked < PROPAGATION_LIMIT_S, "BH_CONFIG not followed"
            time.sleep(0.01)
        took = time.monotonic() - unrevoked
        print(f"\nafter the NATS restart, unrevoke reached the node {took * 1000:.0f} ms after")

    def test_cli_gives_up_on_an_unreachable_nats(self) -> None:
        """An operator command against a dead NATS URL fails with exit code 1, not a hang."""
        started = time.monotonic()
        done = cli(f"nats://127.0.0.1:{free_port()}", "keys", "revoke", "key_0", timeout=60)
        assert done.returncode == 1
        assert "cannot connect to NATS" in done.stderr
        assert time.monotonic() - started < 15


# ---------------------------------------------------------------------- issuers


@pytest.mark.slow
class TestRuntimeIssuers:
    async def test_trust_and_untrust_an_issuer_at_run_time(
        self,
        start_gateway: StartGateway,
        fake_openai: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
        tmp_path: Path,
    ) -> None:
        """A second issuer's tokens: 401 → ``keys trust`` → 200 on both → ``untrust`` → 401."""
        nodes = two_nodes(start_gateway, fake_openai)
        second = Issuer(tmp_path / "second-issuer")
        kid = pid(decode_public(second.public))
        token = second.token(tenant="globex")
        for gw in nodes:
            response = chat(gw, token)
            assert response.status_code == 401
            assert message(response) == "token signed by an unknown or retired key"

        took, out = await propagate(
            nats_server.url, nodes, token, f"issuers.{kid}", ("keys", "trust", second.public), ok
        )
        assert out.strip() == f"trusted {kid}"
        print(f"\ntrust reached the nodes {[round(t * 1000, 1) for t in took]} ms after")
        assert all(t < PROPAGATION_LIMIT_S for t in took)
        assert all(chat(gw, token).status_code == 200 for gw in nodes)

        took, out = await propagate(
            nats_server.url, nodes, token, f"issuers.{kid}", ("keys", "untrust", kid), refused
        )
        assert out.strip() == f"untrusted {kid}"
        print(f"untrust reached the nodes {[round(t * 1000, 1) for t in took]} ms after")
        assert all(t < PROPAGATION_LIMIT_S for t in took)
        for gw in nodes:
            response = chat(gw, token)
            assert response.status_code == 401
            assert message(response) == "token signed by an unknown or retired key"
            assert chat(gw, issuer.token()).status_code == 200  # the static issuer stays

    def test_untrusting_a_static_issuer_keeps_it(
        self,
        start_gateway: StartGateway,
        fake_openai: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """The YAML's issuers are not BH_CONFIG's to remove: ``untrust`` of one is a no-op."""
        gw = start_gateway(providers=[openai_provider("openai", fake_openai)], models=MODELS)
        kid = pid(decode_public(issuer.public))
        assert cli(nats_server.url, "keys", "trust", issuer.public).returncode == 0
        assert cli(nats_server.url, "keys", "untrust", kid).returncode == 0
        marker = issuer.token()  # a later change: once it shows, the untrust was applied
        assert cli(nats_server.url, "keys", "revoke", key_id(marker, issuer)).returncode == 0
        deadline = time.monotonic() + 5
        while not revoked(models_of(gw, marker)):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert chat(gw, issuer.token()).status_code == 200


# ---------------------------------------------------------------------- routing matrix


def config_file(path: Path, fake: FakeOpenAI, issuer: Issuer, models: list[dict[str, Any]]) -> Path:
    cfg = base_config([openai_provider("openai", fake)], models, issuer, path.parent / "state")
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
class TestMatrixHotReload:
    async def test_config_push_reaches_every_node_without_a_restart(
        self,
        start_gateway: StartGateway,
        fake_openai: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
        tmp_path: Path,
    ) -> None:
        """A new model pushed with ``config push`` is listed and served on both in < 1 s."""
        nodes = two_nodes(start_gateway, fake_openai)
        token = issuer.token()
        assert all(model_ids(models_of(gw, token)) == {"gpt-4o-mini"} for gw in nodes)
        assert chat(nodes[0], token, "gpt-new").status_code == 404
        pids = [gw.proc.pid for gw in nodes if gw.proc is not None]

        new = [*MODELS, chat_model("gpt-new", "openai", upstream="gpt-new-2025")]
        path = config_file(tmp_path / "gatekeeper.yaml", fake_openai, issuer, new)

        def lists_new(response: httpx.Response) -> bool:
            return response.status_code == 200 and "gpt-new" in model_ids(response)

        took, out = await propagate(
            nats_server.url,
            nodes,
            token,
            "routing.matrix",
            ("config", "push", str(path)),
            lists_new,
        )
        assert out.startswith("routing.matrix updated (2 models, revision ")
        print(f"\nmatrix reached the nodes {[round(t * 1000, 1) for t in took]} ms after")
        assert all(t < PROPAGATION_LIMIT_S for t in took)
        for gw in nodes:
            response = chat(gw, token, "gpt-new")
            assert response.status_code == 200, response.text
            assert response.headers["x-gatekeeper-model"] == "gpt-new"
            assert fake_openai.script.requests[-1]["model"] == "gpt-new-2025"
        assert [gw.proc.pid for gw in nodes if gw.proc is not None] == pids  # no restart

        shown = cli(nats_server.url, "config", "show")
        assert shown.returncode == 0, shown.stderr
        assert [m["name"] for m in orjson.loads(shown.stdout)["models"]] == [
            "gpt-4o-mini",
            "gpt-new",
        ]

    def test_config_push_refuses_an_invalid_file(
        self,
        nats_server: EmbeddedNats,
        fake_openai: FakeOpenAI,
        issuer: Issuer,
        tmp_path: Path,
    ) -> None:
        """A negative price: exit code 1, the YAML path named, nothing written."""
        bad = [*MODELS, chat_model("gpt-new", "openai", input_per_1k=-0.5)]
        path = config_file(tmp_path / "bad.yaml", fake_openai, issuer, bad)
        done = cli(nats_server.url, "config", "push", str(path))
        assert done.returncode == 1
        assert "models[1].input_per_1k: must be a number >= 0" in done.stderr
        assert "routing.matrix updated" not in done.stdout
        shown = cli(nats_server.url, "config", "show")  # nothing was written
        assert shown.returncode == 1
        assert shown.stderr.strip() == "error: no routing.matrix in BH_CONFIG yet"

        missing = cli(nats_server.url, "config", "push", str(tmp_path / "nope.yaml"))
        assert missing.returncode == 1
        assert "nope.yaml" in missing.stderr

    @pytest.mark.parametrize(
        ("value", "show_exit"),
        [
            (b"{not json", 1),
            (orjson.dumps({"models": [chat_model("gpt-4o-mini", "openai", input_per_1k=-1)]}), 0),
            (orjson.dumps({"models": [chat_model("gpt-4o-mini", "nobody-serves-this")]}), 0),
        ],
        ids=["not-json", "negative-price", "no-served-chat-model"],
    )
    async def test_a_bad_raw_kv_write_leaves_routing_as_it_was(
        self,
        start_gateway: StartGateway,
        fake_openai: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
        value: bytes,
        show_exit: int,
    ) -> None:
        """A value written around the CLI is rejected by each node, which keeps its matrix."""
        gw = start_gateway(providers=[openai_provider("openai", fake_openai)], models=MODELS)
        token = issuer.token()
        nc = await nats.connect(nats_server.url)
        try:
            kv = await nc.jetstream().key_value(CONFIG_BUCKET)
            await kv.put("routing.matrix", value)
        finally:
            await nc.close()
        deadline = time.monotonic() + 5
        while "config.rejected" not in gw.logs():
            assert time.monotonic() < deadline, "the node never saw the bad value"
            await asyncio.sleep(0.02)
        rejected = [line for line in gw.logs().splitlines() if "config.rejected" in line]
        assert all("routing.matrix" in line for line in rejected)
        code, _, err = await acli(nats_server.url, "config", "show")
        assert code in (0, show_exit)  # 0 once the node has put the signed matrix back
        assert "Traceback" not in err  # a non-JSON value is explained, not a crash
        assert ("is not JSON; nodes reject it" in err) == (code == 1)
        nc = await nats.connect(nats_server.url)
        try:  # the node put the operator-signed matrix back over the refused value
            kv = await nc.jetstream().key_value(CONFIG_BUCKET)
            deadline = time.monotonic() + 5
            while b'"sig"' not in ((await kv.get("routing.matrix")).value or b""):
                assert time.monotonic() < deadline, "the signed matrix was not put back"
                await asyncio.sleep(0.05)
        finally:
            await nc.close()
        assert model_ids(models_of(gw, token)) == {"gpt-4o-mini"}
        response = await asyncio.to_thread(chat, gw, token)
        assert response.status_code == 200, response.text

        # a node started while the bad value is current serves its YAML's models
        late = start_gateway(providers=[openai_provider("openai", fake_openai)], models=MODELS)
        assert "config.rejected" in late.logs()
        assert model_ids(models_of(late, token)) == {"gpt-4o-mini"}
        response = await asyncio.to_thread(chat, late, token)
        assert response.status_code == 200, response.text

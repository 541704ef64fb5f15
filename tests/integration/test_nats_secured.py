"""The production NATS of deploy/nats/, run from exactly those files: who may do what.

A throw-away CA signs the servers' certificates; the operator and the gateway
hosts gw1, gw2 have nkey pairs. Anonymous clients are refused; a node user may
publish only its own audit records, health samples and budget slots, read
BH_CONFIG and never write it, and never change or empty BH_AUDIT; each refusal is
in the server's log. Gateways connected as node users serve chat and streams
through the official openai SDK, gossip budgets and append audit records, on the
single server and on a 3-server cluster with TLS between routes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import orjson
import pytest
import yaml
from nats.js import api
from nats.js.errors import KeyNotFoundError

from gatekeeper.auth.node_key import load_or_create_node_key, node_public_key_text
from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.bus.streams import (
    AUDIT,
    BATCHES_BUCKET,
    BUDGET_BUCKET,
    CHECKPOINTS,
    CONFIG_BUCKET,
    FILES_BUCKET,
    HEALTH,
    JOBS,
    JOBS_CONSUMER,
    RESPONSES_BUCKET,
    StreamMismatch,
    ensure_streams,
)
from gatekeeper.routing.router import estimate_tokens
from tests.conftest import openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import ROOT, GatewayProcess, Issuer, base_config, chat_model
from tests.harness.secured_nats import DeployedNats, Pki, cluster, jwt_server, single

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "hello there"}]
MAX_TOKENS = 20
COST = estimate_tokens(MESSAGES) + MAX_TOKENS  # reserved == used per request
DENIED_S = 1.0  # a refused request gets no answer: the client gives up after this


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployedNats]:
    srv = single(pki, tmp_path_factory.mktemp("single"))
    yield srv
    srv.stop()


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


async def refused(coro: Awaitable[Any]) -> bool:
    """True when the server never answers (a permission violation is not replied to)."""
    try:
        await asyncio.wait_for(coro, DENIED_S)
    except TimeoutError:
        return True
    return False


def violations(srv: DeployedNats, subject: str) -> int:
    return srv.log().count(f'Publish Violation - Subject "{subject}"')


async def provision(pki: Pki, url: str, replicas: int = 1) -> None:
    """What `gatekeeper nats provision` does, as the operator; retried while a cluster forms."""
    nc = await pki.connect(url, "operator")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                await ensure_streams(nc.jetstream(timeout=5), replicas)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


class TestWhoMayConnect:
    def test_anonymous_clients_are_refused(self, pki: Pki, server: DeployedNats) -> None:
        """No credentials: the server answers 'Authorization Violation'."""
        with pytest.raises(Exception, match="Authorization Violation"):
            run(pki.connect(server.url, None))

    def test_the_gateway_refuses_to_downgrade_a_tls_url(self, tmp_path: Path) -> None:
        """tls:// to a server that offers no TLS: the gateway's client refuses, no plaintext."""
        from gatekeeper.bus.connect import NatsUnavailable, connect
        from gatekeeper.bus.embedded import EmbeddedNats
        from gatekeeper.config import NatsConfig

        plain = EmbeddedNats(tmp_path / "plain", name="plain")
        open_plain = EmbeddedNats(tmp_path / "open", name="open", auth=False)
        plain.start()
        open_plain.start()
        try:
            url = plain.public_url.replace("nats://", "tls://")
            cfg = NatsConfig(user=plain.user, password=plain.password)
            with pytest.raises(NatsUnavailable, match="not encrypted") as caught:
                run(connect(url, name="t", connect_timeout_s=1, auth=cfg))
            # "not encrypted" is the password guard: it refused before CONNECT was written
            assert plain.password not in str(caught.value)
            url = open_plain.public_url.replace("nats://", "tls://")
            with pytest.raises(NatsUnavailable, match="did not start TLS"):
                run(connect(url, name="t", connect_timeout_s=1))
        finally:
            plain.stop()
            open_plain.stop()

    def test_a_creds_file_authenticates_with_decentralized_jwt_auth(self, tmp_path: Path) -> None:
        """nats.creds_file (user JWT + nkey seed) against a server in operator mode."""
        from gatekeeper.bus.connect import connect
        from gatekeeper.config import NatsConfig

        srv, creds = jwt_server(tmp_path / "jwt")

        async def with_creds() -> bool:
            nc = await connect(srv.url, name="t", auth=NatsConfig(creds_file=str(creds)))
            try:  # connect() also checked that JetStream answers this account
                return nc.is_connected
            finally:
                await nc.close()

        try:
            assert run(with_creds())
            with pytest.raises(Exception, match="Authorization Violation"):
                run(nats.connect(srv.url, allow_reconnect=False, connect_timeout=3))
        finally:
            srv.stop()


class TestNodePermissions:
    def test_a_node_cannot_write_issuers(self, pki: Pki, server: DeployedNats) -> None:
        """gw1 puts an issuer key into BH_CONFIG: no answer, nothing stored, logged."""
        run(provision(pki, server.url))

        async def attempt() -> tuple[bool, bool]:
            node = await pki.connect(server.url, "gw1")
            op = await pki.connect(server.url, "operator")
            try:
                kv = await node.jetstream(timeout=DENIED_S).key_value(CONFIG_BUCKET)
                denied = await refused(kv.put("issuers.attacker", b"k4.public.forged"))
                okv = await op.jetstream().key_value(CONFIG_BUCKET)
                try:
                    await okv.get("issuers.attacker")
                    stored = True
                except KeyNotFoundError:
                    stored = False
                return denied, stored
            finally:
                await node.close()
                await op.close()

        denied, stored = run(attempt())
        assert denied and not stored
        assert violations(server, "$KV.BH_CONFIG.issuers.attacker") >= 1

    def test_a_node_writes_its_own_budget_slots_only(self, pki: Pki, server: DeployedNats) -> None:
        """gw1 may put gw1-w1's slot; gw2-w0's slot and a made-up node's are refused."""
        run(provision(pki, server.url))

        async def attempt() -> tuple[bool, bool, bool]:
            node = await pki.connect(server.url, "gw1")
            try:
                kv = await node.jetstream(timeout=DENIED_S).key_value(BUDGET_BUCKET)
                own = await refused(kv.put("tok.k1.total.gw1-w1", b"[30,0]"))
                other, made_up = await asyncio.gather(
                    refused(kv.put("tok.k1.total.gw2-w0", b"[0,1000000000]")),
                    refused(kv.put("tok.k1.total.evil", b"[0,1000000000]")),
                )
                return own, other, made_up
            finally:
                await node.close()

        own_refused, other_refused, made_up_refused = run(attempt())
        assert not own_refused
        assert other_refused and made_up_refused
        assert violations(server, "$KV.BH_BUDGET.tok.k1.total.gw2-w0") >= 1
        assert violations(server, "$KV.BH_BUDGET.tok.k1.total.evil") >= 1

    def test_a_node_stores_and_reads_responses(self, pki: Pki, server: DeployedNats) -> None:
        """BH_RESPONSES is provisioned, and a node user may put, get and purge in it."""
        run(provision(pki, server.url))

        async def attempt() -> tuple[bool, bytes | None, bool]:
            node = await pki.connect(server.url, "gw2")
            try:
                kv = await node.jetstream(timeout=DENIED_S).key_value(RESPONSES_BUCKET)
                put = await refused(kv.put("t0.resp_x", b"signed value"))
                value = (await kv.get("t0.resp_x")).value
                purged = await refused(kv.purge("t0.resp_x"))
                return put, value, purged
            finally:
                await node.close()

        put_refused, value, purge_refused = run(attempt())
        assert not put_refused and value == b"signed value" and not purge_refused

    def test_a_node_does_batch_work(self, pki: Pki, server: DeployedNats) -> None:
        """BH_FILES, BH_BATCHES and BH_JOBS are provisioned; a node user may store, read and
        delete a file, write a batch record, queue a slice, pull it and ack it, but may
        not purge BH_JOBS."""
        run(provision(pki, server.url))

        async def attempt() -> tuple[bytes, bytes | None, bytes, bool, bool]:
            node = await pki.connect(server.url, "gw1")
            try:
                js = node.jetstream(timeout=DENIED_S * 3)
                obj = await js.object_store(FILES_BUCKET)
                await obj.put("t0.file-x", b"line\n" * 1000)
                data = (await obj.get("t0.file-x")).data
                await obj.delete("t0.file-x")  # meta rollup + purge of its chunks
                kv = await js.key_value(BATCHES_BUCKET)
                await kv.create("line.batch_x.0", b"signed value")
                value = (await kv.get("line.batch_x.0")).value
                await js.publish("bh.jobs.slice.batch_x", b"job")
                sub = await js.pull_subscribe_bind(JOBS_CONSUMER, JOBS)
                [msg] = await sub.fetch(1, timeout=DENIED_S * 3)
                await msg.in_progress()
                await msg.ack_sync()
                purge_refused = await refused(js.purge_stream(JOBS))
                again = await refused(sub.fetch(1, timeout=0.5))  # acked: gone for good
                return data or b"", value, msg.data, purge_refused, again
            finally:
                await node.close()

        data, value, job, purge_refused, nothing_left = run(attempt())
        assert data == b"line\n" * 1000 and value == b"signed value" and job == b"job"
        assert purge_refused and nothing_left
        assert violations(server, "$JS.API.STREAM.PURGE.OBJ_BH_FILES") == 0

    def test_a_node_publishes_audit_records_under_its_own_id_only(
        self, pki: Pki, server: DeployedNats
    ) -> None:
        """Any tenant token, but the node token must be the node's own; checkpoints too."""
        run(provision(pki, server.url))

        async def attempt() -> tuple[bool, bool]:
            node = await pki.connect(server.url, "gw1")
            try:
                js = node.jetstream(timeout=DENIED_S)
                own = await refused(js.publish("bh.audit.tenant_x.gw1-w1", b"{}"))
                other, checkpoint = await asyncio.gather(
                    refused(js.publish("bh.audit.tenant_x.gw2-w0", b"{}")),
                    refused(js.publish("bh.checkpoints.gw2-w0", b"{}")),
                )
                return own, other and checkpoint
            finally:
                await node.close()

        own_refused, other_refused = run(attempt())
        assert not own_refused and other_refused
        assert violations(server, "bh.audit.tenant_x.gw2-w0") >= 1
        assert violations(server, "bh.checkpoints.gw2-w0") >= 1

    def test_a_node_cannot_change_delete_or_empty_bh_audit(
        self, pki: Pki, server: DeployedNats
    ) -> None:
        """Update (to allow deletes), delete, purge, delete one message: all refused;
        the stream's config and messages are as before."""
        run(provision(pki, server.url))

        async def attempt() -> tuple[list[bool], Any, Any]:
            op = await pki.connect(server.url, "operator")
            node = await pki.connect(server.url, "gw2")
            try:
                ojs = op.jetstream()
                await ojs.publish("bh.audit.t.gw2-w1", b'{"kept": true}')
                before = await ojs.stream_info(AUDIT)
                js = node.jetstream(timeout=DENIED_S)
                weakened = api.StreamConfig(
                    name=AUDIT, subjects=["bh.audit.>"], deny_delete=False, deny_purge=False
                )
                results = await asyncio.gather(
                    refused(js.update_stream(weakened)),
                    refused(js.delete_stream(AUDIT)),
                    refused(js.purge_stream(AUDIT)),
                    refused(js.delete_msg(AUDIT, 1)),
                    refused(js.add_stream(name="BH_EVIL", subjects=["evil.>"])),
                )
                return results, before, await ojs.stream_info(AUDIT)
            finally:
                await node.close()
                await op.close()

        results, before, after = run(attempt())
        assert all(results)
        assert after.config.deny_delete and after.config.deny_purge
        assert after.state.messages == before.state.messages
        for api_subject in ("UPDATE", "DELETE", "PURGE", "MSG.DELETE"):
            assert violations(server, f"$JS.API.STREAM.{api_subject}.{AUDIT}") >= 1


class TestCheckOnly:
    def test_a_node_that_may_not_provision_names_the_command_instead(
        self, nats_server: EmbeddedNats
    ) -> None:
        """nats.provision false on an empty server: no stream is created, and the error
        says how to create them."""

        async def attempt() -> tuple[str, int]:
            nc = await nats.connect(nats_server.url)
            try:
                with pytest.raises(StreamMismatch) as caught:
                    await ensure_streams(nc.jetstream(), create=False)
                return str(caught.value), (await nc.jetstream().account_info()).streams
            finally:
                await nc.close()

        message, streams = run(attempt())
        assert "gatekeeper nats provision" in message and streams == 0


class TestConsumerDeliveries:
    def test_a_node_consumer_cannot_deliver_into_bh_config_or_another_nodes_audit(
        self, pki: Pki, server: DeployedNats
    ) -> None:
        """A node may create consumers (KV watches need them) and names their deliver subject;
        pointing it at BH_CONFIG's or another node's subjects stores nothing there."""
        run(provision(pki, server.url))

        async def attempt() -> tuple[bool, int]:
            op = await pki.connect(server.url, "operator")
            node = await pki.connect(server.url, "gw1")
            try:
                await op.jetstream().publish("bh.events.bait", b"k4.public.forged")
                js = node.jetstream(timeout=2)
                for target in ("$KV.BH_CONFIG.issuers.evil", "bh.audit.t.gw2-w0"):
                    await js.add_consumer(
                        "BH_EVENTS",
                        api.ConsumerConfig(
                            deliver_subject=target,
                            ack_policy=api.AckPolicy.NONE,
                            filter_subject="bh.events.bait",
                        ),
                    )
                await asyncio.sleep(1.0)
                kv = await op.jetstream().key_value(CONFIG_BUCKET)
                try:
                    await kv.get("issuers.evil")
                    stored = True
                except KeyNotFoundError:
                    stored = False
                info = await op.jetstream().stream_info(AUDIT, subjects_filter="bh.audit.t.gw2-w0")
                return stored, sum((info.state.subjects or {}).values())
            finally:
                await node.close()
                await op.close()

        stored, audit = run(attempt())
        assert not stored and audit == 0


# ---------------------------------------------------------------- gateways end to end


def gateway(
    pki: Pki, issuer: Issuer, fake: FakeOpenAI, url: str, node: str, workdir: Path
) -> GatewayProcess:
    cfg = base_config(
        [openai_provider("openai", fake)],
        [chat_model("gpt-4o-mini", "openai")],
        issuer,
        workdir / "state",
        nats=pki.nats_config(url, node),
        node_id=node,
        health={"publish_interval_s": 0.3},  # its health samples are published, too
        audit={"checkpoint_interval_s": 0.3},  # and its audit checkpoints
        control={"operator_key_file": ""},  # a node host holds no operator key
    )
    return GatewayProcess(cfg, workdir, url)


def register(pki: Pki, issuer: Issuer, url: str, gw: GatewayProcess) -> None:
    """The operator registers the gateway's node key (a node user may not write BH_CONFIG)."""
    node = f"{gw.config['node_id']}-w0"
    key = load_or_create_node_key(Path(gw.config["state_dir"]) / "nodes" / node / "node.key")
    result = cli_as(
        pki,
        url,
        gw.workdir,
        "operator",
        "nodes",
        "register",
        "--node",
        node,
        "--pub",
        node_public_key_text(key),
        "--operator-key",
        str(issuer.operator_key),
        control={"operator_keys": [issuer.operator_public]},
    )
    assert result.returncode == 0, result.stderr


def start_all(gws: list[GatewayProcess]) -> None:
    with ThreadPoolExecutor(len(gws)) as pool:
        list(pool.map(GatewayProcess.start, gws))


def cli_as(
    pki: Pki, url: str, workdir: Path, user: str, *args: str, **extra: Any
) -> subprocess.CompletedProcess[str]:
    """`gatekeeper …` as ``user`` (its nkey and the CA in its config file)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / f"{user}.yaml"
    cfg.write_text(yaml.safe_dump({"nats": pki.nats_config(url, user), **extra}))
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", *args, "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def exercise(gws: list[GatewayProcess], issuer: Issuer) -> None:
    """Chat and stream on each gateway; a budget spent on one is refused on the other."""
    for gw in gws:
        client = openai.OpenAI(base_url=gw.base_url, api_key=issuer.token(), max_retries=0)
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=MAX_TOKENS
        )
        assert reply.choices[0].message.content
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    token = issuer.token(budget_tokens=2 * COST, budget_period="total")
    first, second = (
        openai.OpenAI(base_url=gw.base_url, api_key=token, max_retries=0) for gw in gws
    )
    for _ in range(2):
        first.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=MAX_TOKENS)
    deadline = time.monotonic() + 5
    while True:  # gossip reaches the other gateway within a few hundred ms
        try:
            second.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=MAX_TOKENS
            )
        except openai.RateLimitError as exc:
            assert "quota" in str(exc) or "budget" in str(exc)
            break
        assert time.monotonic() < deadline, "the other gateway never saw the spent budget"
        time.sleep(0.2)
    batch_round_trip(openai.OpenAI(base_url=gws[0].base_url, api_key=issuer.token(), max_retries=0))


def batch_round_trip(client: openai.OpenAI) -> None:
    """Upload, batch, run on the nodes, download, delete: all within a node user's rights."""
    rows = [
        {
            "custom_id": f"n{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": MAX_TOKENS},
        }
        for i in range(3)
    ]
    content = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    f = client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 30
    while batch.status not in ("completed", "failed"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 3, batch
    assert (
        batch.output_file_id
        and len(client.files.content(batch.output_file_id).text.splitlines()) == 3
    )
    assert client.files.delete(f.id).deleted


async def counts(pki: Pki, url: str, stream: str, nodes: list[str]) -> dict[str, int]:
    """Messages per node in BH_AUDIT, BH_HEALTH or BH_CHECKPOINTS, as the operator."""
    prefix = {AUDIT: "bh.audit.*", HEALTH: "bh.health.*", CHECKPOINTS: "bh.checkpoints"}[stream]
    op = await pki.connect(url, "operator")
    try:
        out = {}
        for node in nodes:
            info = await op.jetstream().stream_info(stream, subjects_filter=f"{prefix}.{node}")
            out[node] = sum((info.state.subjects or {}).values())
        return out
    finally:
        await op.close()


def assert_recorded(pki: Pki, url: str) -> None:
    """Audit records appended (2 + 2 budget requests on gw1), checkpoints and health
    samples published."""
    audit = run(counts(pki, url, AUDIT, ["gw1-w0", "gw2-w0"]))
    assert audit["gw1-w0"] >= 4 and audit["gw2-w0"] >= 2
    for stream in (HEALTH, CHECKPOINTS):
        seen = run(counts(pki, url, stream, ["gw1-w0", "gw2-w0"]))
        assert seen["gw1-w0"] >= 1 and seen["gw2-w0"] >= 1, (stream, seen)


def assert_clean(gws: list[GatewayProcess]) -> None:
    """A node user's permissions cover everything a gateway does: nothing was refused."""
    time.sleep(0.7)  # a health publish or two more, and the server's answer to them
    for gw in gws:
        assert "nats.permission_denied" not in gw.logs(), gw.logs()[-3000:]
        assert "nats.insecure" not in gw.logs()  # the server demanded credentials


@pytest.fixture
def upstream(fake_openai: FakeOpenAI) -> FakeOpenAI:
    fake_openai.script.default = Behavior(
        prompt_tokens=estimate_tokens(MESSAGES), completion_tokens=MAX_TOKENS
    )
    return fake_openai


class TestGatewaysAsNodeUsers:
    def test_a_gateway_outside_its_node_ids_is_refused_and_counts_it(
        self,
        pki: Pki,
        server: DeployedNats,
        issuer: Issuer,
        upstream: FakeOpenAI,
        tmp_path: Path,
    ) -> None:
        """User gw1 running as node id "rogue": its audit and health publishes are refused;
        the gateway logs nats.permission_denied and counts it in /metrics."""
        run(provision(pki, server.url))
        gw = gateway(pki, issuer, upstream, server.url, "gw1", tmp_path / "rogue")
        gw.config["node_id"] = "rogue"
        gw.config["server"]["admin_token"] = "admin-secret"
        register(pki, issuer, server.url, gw)
        try:
            gw.start()
            client = openai.OpenAI(base_url=gw.base_url, api_key=issuer.token(), max_retries=0)
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
            deadline = time.monotonic() + 10
            while "nats.permission_denied" not in gw.logs():
                assert time.monotonic() < deadline, gw.logs()[-2000:]
                time.sleep(0.1)
            metrics = httpx.get(
                f"{gw.url}/metrics", headers={"authorization": "Bearer admin-secret"}, timeout=5
            ).text
            counted = [
                line
                for line in metrics.splitlines()
                if line.startswith("gatekeeper_nats_permission_denied_total ")
            ]
            assert counted and float(counted[0].split()[1]) >= 1
            assert violations(server, "bh.audit.acme.rogue-w0") >= 1
        finally:
            gw.kill()  # a clean stop would wait for its spool, which can never drain

    def test_on_the_secured_single_server(
        self,
        pki: Pki,
        server: DeployedNats,
        issuer: Issuer,
        upstream: FakeOpenAI,
        tmp_path: Path,
    ) -> None:
        """The operator provisions with the CLI, a node user checks; gw1 and gw2 serve,
        gossip and audit."""
        result = cli_as(pki, server.url, tmp_path, "operator", "nats", "provision")
        assert result.returncode == 0, result.stderr
        assert "BH_AUDIT" in result.stdout
        result = cli_as(pki, server.url, tmp_path, "gw1", "nats", "check")
        assert result.returncode == 0, result.stderr  # a node user can check, not create
        assert "BH_AUDIT: ok" in result.stdout
        gws = [
            gateway(pki, issuer, upstream, server.url, node, tmp_path / node)
            for node in ("gw1", "gw2")
        ]
        try:
            for gw in gws:
                register(pki, issuer, server.url, gw)
            start_all(gws)
            exercise(gws, issuer)
            assert_clean(gws)
            assert_recorded(pki, server.url)
        finally:
            for gw in gws:
                gw.stop()

    def test_on_a_three_server_cluster_with_tls_routes(
        self,
        pki: Pki,
        issuer: Issuer,
        upstream: FakeOpenAI,
        tmp_path: Path,
    ) -> None:
        """R3 streams on three servers joined over TLS routes; each gateway on its own server."""
        servers = cluster(pki, tmp_path / "cluster")
        gws: list[GatewayProcess] = []
        try:
            run(provision(pki, servers[0].url, replicas=3))
            with pytest.raises(Exception, match="Authorization Violation"):
                run(pki.connect(servers[2].url, None))
            gws = [
                gateway(pki, issuer, upstream, servers[i].url, node, tmp_path / node)
                for i, node in enumerate(("gw1", "gw2"))
            ]
            for gw in gws:
                gw.config["nats"]["replicas"] = 3
                register(pki, issuer, servers[0].url, gw)
            start_all(gws)
            exercise(gws, issuer)
            assert_clean(gws)
            assert_recorded(pki, servers[2].url)
            assert all("Route connection created" in s.log() for s in servers)
        finally:
            for gw in gws:
                gw.stop()
            for s in servers:
                s.stop()

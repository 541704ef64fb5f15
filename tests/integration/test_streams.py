"""The JetStream layout on a real nats-server: provisioning, BH_AUDIT's guarantees, clusters.

``BH_AUDIT`` is a public contract (gatekeeper/bus/streams.py): file storage, no
deletes, no purges, no rollups, a two-minute duplicate window. A stream that
exists with an incompatible config stops the gateway at start, naming the
differences, and is left as it is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import nats
import orjson
import pytest
from nats.js import JetStreamContext, api
from nats.js.errors import APIError

from gatekeeper.audit.verify import verify_records
from gatekeeper.auth.paserk import decode_public
from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.bus.streams import AUDIT, CONFIG_BUCKET, desired_streams, differences
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer
from tests.integration.test_audit_durability import (
    Load,
    assert_one_record_each,
    gatekeeper_cli,
    records,
    start,
    verify_after_failure,
    wait_spool_empty,
)

T = TypeVar("T")
StartGateway = Callable[..., GatewayProcess]
STREAMS = [str(cfg.name) for cfg in desired_streams(1)]


def with_js(url: str, work: Callable[[JetStreamContext], Awaitable[T]], timeout: float = 5.0) -> T:
    """Run ``work(js)`` on a fresh nats-py connection to ``url`` (commas: a cluster)."""

    async def run() -> T:
        nc = await nats.connect(servers=url.split(","), connect_timeout=timeout)
        try:
            return await work(nc.jetstream(timeout=timeout))
        finally:
            await nc.close()

    return asyncio.run(run())


@pytest.mark.slow
class TestProvisioning:
    def test_streams_command_is_idempotent(self, nats_server: EmbeddedNats) -> None:
        """``gatekeeper streams`` twice: the same streams; the second run only says ok."""
        first = gatekeeper_cli("streams", "--nats-url", nats_server.url)
        second = gatekeeper_cli("streams", "--nats-url", nats_server.url)
        assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
        for name in STREAMS:
            assert f"{name}: created" in first.stdout
            assert f"{name}: ok" in second.stdout
        assert "created" not in second.stdout
        assert "KV BH_CONFIG: ok" in second.stdout

        async def names(js: JetStreamContext) -> list[str]:
            return sorted(str(info.config.name) for info in await js.streams_info())

        kv = [
            "KV_BH_BATCHES",
            "KV_BH_BUDGET",
            "KV_BH_CACHE",
            "KV_BH_CONFIG",
            "KV_BH_ESCROW",
            "KV_BH_RESPONSES",
        ]
        kv += ["OBJ_BH_CACHE_OBJ", "OBJ_BH_FILES"]  # object stores: cache, Files API
        assert with_js(nats_server.url, names) == sorted([*STREAMS, *kv])

    def test_bh_audit_keeps_everything(self, nats_server: EmbeddedNats) -> None:
        """BH_AUDIT: file storage, deny delete and purge, no rollup, dedup window >= 120 s."""
        assert gatekeeper_cli("streams", "--nats-url", nats_server.url).returncode == 0

        async def config(js: JetStreamContext) -> api.StreamConfig:
            return (await js.stream_info(AUDIT)).config

        cfg = with_js(nats_server.url, config)
        assert cfg.subjects == ["bh.audit.>"]
        assert cfg.storage == api.StorageType.FILE
        assert cfg.deny_delete is True
        assert cfg.deny_purge is True
        assert not cfg.allow_rollup_hdrs
        assert (cfg.duplicate_window or 0) >= 120
        assert not cfg.max_age  # kept forever by default

    def test_same_msg_id_is_stored_once_and_nothing_can_be_removed(
        self, nats_server: EmbeddedNats
    ) -> None:
        """A repeated Nats-Msg-Id is dropped; delete_msg and purge_stream are refused."""
        assert gatekeeper_cli("streams", "--nats-url", nats_server.url).returncode == 0

        async def attempt(js: JetStreamContext) -> tuple[list[bool], int, list[str]]:
            headers = {"Nats-Msg-Id": "gk-test:1:abc"}
            acks = [
                await js.publish("bh.audit.acme.gk-test", b"{}", headers=headers) for _ in range(2)
            ]
            refused = []
            try:
                await js.delete_msg(AUDIT, acks[0].seq)
            except APIError as exc:
                refused.append(f"delete: {exc.description}")
            try:
                await js.purge_stream(AUDIT)
            except APIError as exc:
                refused.append(f"purge: {exc.description}")
            messages = (await js.stream_info(AUDIT)).state.messages
            return [bool(a.duplicate) for a in acks], messages, refused

        duplicate, messages, refused = with_js(nats_server.url, attempt)
        assert duplicate == [False, True]
        assert messages == 1
        assert len(refused) == 2, refused


class TestCompatibility:
    def test_more_replicas_than_wanted_is_compatible_fewer_is_not(self) -> None:
        """An R3 stream suits a tool asking for R1; an R1 stream never suits a wish for R3."""
        r1, r3 = desired_streams(1)[0], desired_streams(3)[0]
        assert differences(r3, r1) == []
        assert [d.split(":")[0] for d in differences(r1, r3)] == ["num_replicas"]


@pytest.mark.slow
class TestIncompatibleStream:
    def test_gateway_refuses_an_audit_stream_that_allows_deletes(
        self,
        start_gateway: StartGateway,
        fake_openai: FakeOpenAI,
        nats_server: EmbeddedNats,
    ) -> None:
        """BH_AUDIT pre-created with deny_delete off and another subject: start fails."""
        wrong = api.StreamConfig(
            name=AUDIT,
            subjects=["bh.audit.>", "audit.legacy.>"],
            storage=api.StorageType.FILE,
            deny_delete=False,
            deny_purge=True,
            duplicate_window=120.0,
        )

        async def create(js: JetStreamContext) -> None:
            await js.add_stream(wrong)

        with_js(nats_server.url, create)
        with pytest.raises(RuntimeError, match=r"gateway exited \((\d+)\)") as failed:
            start(start_gateway, fake_openai)
        message = str(failed.value)
        code = int(message.split("gateway exited (", 1)[1].split(")", 1)[0])
        assert code != 0
        assert "BH_AUDIT" in message
        assert "deny_delete" in message
        assert "subjects" in message

        async def config(js: JetStreamContext) -> api.StreamConfig:
            return (await js.stream_info(AUDIT)).config

        after = with_js(nats_server.url, config)  # never silently "fixed"
        assert after.deny_delete is False
        assert sorted(after.subjects or []) == ["audit.legacy.>", "bh.audit.>"]


# ---------------------------------------------------------------------- cluster


def audit_leader(url: str) -> str | None:
    async def leader(js: JetStreamContext) -> str | None:
        info = await js.stream_info(AUDIT)
        return info.cluster.leader if info.cluster else None

    try:
        return with_js(url, leader, timeout=0.5)
    except (nats.errors.Error, TimeoutError, OSError):
        return None


def wait_for_jetstream(servers: list[EmbeddedNats], timeout: float = 30) -> None:
    """Until every server answers JetStream requests (a new cluster elects a leader first)."""

    async def info(js: JetStreamContext) -> api.AccountInfo:
        return await js.account_info()

    deadline = time.monotonic() + timeout
    for server in servers:
        while True:
            try:
                with_js(server.url, info, timeout=1)
                break
            except (nats.errors.Error, TimeoutError, OSError):
                assert time.monotonic() < deadline, f"JetStream on {server.name} not ready"
                time.sleep(0.2)


def node_keys(url: str, node_ids: set[str]) -> dict[str, bytes]:
    async def read(js: JetStreamContext) -> dict[str, bytes]:
        kv = await js.key_value(CONFIG_BUCKET)
        keys = {}
        for node in node_ids:  # the node's first registry entry (none of them rotates)
            entry = await kv.get(f"nodes.{node}.key.1")
            keys[node] = decode_public(orjson.loads(entry.value or b"{}")["body"]["pub"])
        return keys

    return with_js(url, read)


@pytest.mark.slow
class TestCluster:
    def test_r3_audit_survives_losing_the_stream_leader(
        self,
        start_gateway: StartGateway,
        fake_openai: FakeOpenAI,
        nats_cluster: list[EmbeddedNats],
        issuer: Issuer,
    ) -> None:
        """R3 streams on 3 servers; SIGKILL BH_AUDIT's leader mid-load: no 200 loses its record."""
        url = ",".join(server.url for server in nats_cluster)
        wait_for_jetstream(nats_cluster)
        gw = start(start_gateway, fake_openai, nats_url=url, nats={"replicas": 3})

        async def replicas(js: JetStreamContext) -> dict[str, int | None]:
            return {name: (await js.stream_info(name)).config.num_replicas for name in STREAMS}

        assert set(with_js(url, replicas).values()) == {3}
        leader = audit_leader(url)
        victim = next(server for server in nats_cluster if server.name == leader)
        survivors = [server for server in nats_cluster if server is not victim]
        survivors_url = ",".join(server.url for server in survivors)

        with Load(gw, issuer.token()) as load:
            time.sleep(2)
            victim.kill()
            killed = time.monotonic()
            new_leader = None
            while time.monotonic() - killed < 20:
                new_leader = audit_leader(survivors_url)
                if new_leader and new_leader != leader:
                    break
                time.sleep(0.1)
            failover_s = time.monotonic() - killed
            time.sleep(2)
        assert new_leader and new_leader != leader, "no new BH_AUDIT leader within 20 s"
        drain = wait_spool_empty(gw)
        ok = load.completed_ok()
        recs = records(survivors_url)
        print(
            f"\ncluster: leader {leader} killed; new leader {new_leader} after "
            f"{failover_s:.2f}s; {len(load.seen)} requests, {len(ok)} complete 200s, "
            f"{len(recs)} records; after the load {drain}"
        )
        assert len(ok) > 50
        assert_one_record_each(ok, recs)
        nodes = {r["node_id"] for r in recs}
        report = verify_records(recs, node_keys(survivors_url, nodes), check_order=False)
        assert report.ok, report.render()  # no gap, duplicate, fork or alteration
        verify_after_failure(survivors_url, load.threads)  # the CLI works on R3 streams too
        assert httpx.get(f"{gw.url}/readyz", timeout=2).json()["nats"] == "connected"

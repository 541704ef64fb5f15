"""The audit trail against an operator-level attacker, on a real nats-server.

Each attack from issue 13, run for real: shrinking BH_AUDIT with ``max_msgs``, an
export with its first and last records removed, a swapped node key, a record
injected on the node's subject before a restart, a flood of tokenless requests.
Each is detected by ``gatekeeper audit verify`` (by name, exit 1), refused by the
gateway, or bounded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nacl.signing import SigningKey

from gatekeeper.audit import AuditChain, record_hash, wire_bytes
from gatekeeper.audit.publisher import ASYNC_WINDOW
from gatekeeper.auth.paserk import encode_public, pid
from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.bus.streams import AUDIT, CONFIG_BUCKET
from tests.harness.gateway import GatewayProcess, Issuer
from tests.integration.test_audit_durability import (
    Load,
    StartGateway,
    assert_one_record_each,
    chat,
    gatekeeper_cli,
    records,
    start,
    upstream,
    verify_after_failure,
    wait_spool_empty,
)

__all__ = ["upstream"]  # the fixture, shared with the durability tests

NODE = "gk-int"
NODE_ID = f"{NODE}-w0"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _js(url: str) -> Any:
    return await nats.connect(servers=url.split(","), connect_timeout=5)


def audit_verify(url: str, *extra: str) -> tuple[int, str]:
    result = gatekeeper_cli("audit", "verify", "--nats-url", url, *extra)
    return result.returncode, result.stdout + result.stderr


def issue_kinds(output: str) -> set[str]:
    lines = [line.split() for line in output.splitlines()[1:] if line.startswith("  ")]
    return {words[0] for words in lines if words and words[0] != "node"}


@pytest.fixture
def gw(start_gateway: StartGateway, upstream: Any) -> GatewayProcess:
    return start(start_gateway, upstream, env={"GATEKEEPER_NODE_ID": NODE})


def send(gw: GatewayProcess, token: str, n: int) -> None:
    with httpx.Client(timeout=15) as http:
        for i in range(n):
            assert chat(http, gw, token, stream=i % 3 == 0).status == 200


@pytest.mark.slow
class TestShrinkingTheStream:
    def test_max_msgs_shrink_is_detected_by_name(
        self, gw: GatewayProcess, nats_server: EmbeddedNats, issuer: Issuer
    ) -> None:
        """max_msgs 5 and back deletes 33 records despite deny_delete: verify says so."""
        send(gw, issuer.token(), 38)
        assert gw.terminate() == 0

        async def shrink() -> None:
            nc = await _js(nats_server.url)
            js = nc.jetstream()
            cfg = (await js.stream_info(AUDIT)).config
            cfg.max_msgs = 5
            await js.update_stream(cfg)
            cfg.max_msgs = -1
            await js.update_stream(cfg)
            await nc.close()

        run(shrink())
        assert [r["seq"] for r in records(nats_server.url)] == list(range(34, 39))
        code, out = audit_verify(nats_server.url)
        assert code == 1, out
        assert {"shrunk_stream", "cut_head"} <= issue_kinds(out), out
        assert "first_seq is 34" in out and "missing seq 1..33" in out

    def test_the_gateway_refuses_to_start_on_a_lowered_retention(
        self, gw: GatewayProcess, nats_server: EmbeddedNats
    ) -> None:
        """A node that finds BH_AUDIT keeping less than provisioned does not start."""
        assert gw.terminate() == 0

        async def lower() -> None:
            nc = await _js(nats_server.url)
            js = nc.jetstream()
            cfg = (await js.stream_info(AUDIT)).config
            cfg.max_age = 3600.0
            await js.update_stream(cfg)
            await nc.close()

        run(lower())
        with pytest.raises(RuntimeError, match="max_age"):
            gw.start()
        code, out = audit_verify(nats_server.url)
        assert code == 1 and "stream_config" in issue_kinds(out), out


@pytest.mark.slow
class TestCutExport:
    def test_an_export_without_its_first_and_last_records_fails(
        self, gw: GatewayProcess, nats_server: EmbeddedNats, issuer: Issuer, tmp_path: Path
    ) -> None:
        """Genesis is required, and the final checkpoint names the real last seq."""
        send(gw, issuer.token(), 8)
        assert gw.terminate() == 0  # writes the final checkpoint
        out_file = tmp_path / "export.jsonl"
        result = gatekeeper_cli(
            "audit", "export", "--out", str(out_file), "--nats-url", nats_server.url
        )
        assert result.returncode == 0, result.stderr
        lines = out_file.read_text().splitlines()
        assert len(lines) == 8
        whole = tmp_path / "whole.jsonl"
        whole.write_text("\n".join(lines) + "\n")
        assert audit_verify(nats_server.url, "--file", str(whole))[0] == 0
        cut = tmp_path / "cut.jsonl"
        cut.write_text("\n".join(lines[1:-1]) + "\n")
        code, out = audit_verify(nats_server.url, "--file", str(cut))
        assert code == 1 and issue_kinds(out) == {"cut_head", "cut_tail"}, out
        local = gw.workdir.parent / "state" / "nodes" / NODE_ID / "checkpoints.jsonl"
        assert local.exists()
        checkpoint = json.loads(local.read_text().splitlines()[-1])
        assert (checkpoint["node"], checkpoint["seq"]) == (NODE_ID, 8)


@pytest.mark.slow
class TestSwappedKey:
    def test_a_replaced_key_cannot_make_a_forged_chain_verify(
        self, gw: GatewayProcess, nats_server: EmbeddedNats, issuer: Issuer, tmp_path: Path
    ) -> None:
        """The attacker overwrites the unpinned audit_key and publishes a forged chain."""
        send(gw, issuer.token(), 3)
        # the node registered its key itself at start, signed by the test cluster's operator
        operator_pub = issuer.operator_public
        assert audit_verify(nats_server.url, "--operator-key", operator_pub)[0] == 0
        forger = SigningKey.generate()

        async def forge() -> None:
            nc = await _js(nats_server.url)
            js = nc.jetstream()
            kv = await js.key_value(CONFIG_BUCKET)
            await kv.put(
                f"nodes.{NODE_ID}.audit_key", encode_public(bytes(forger.verify_key)).encode()
            )
            genuine = json.loads((await js.get_last_msg(AUDIT, f"bh.audit.*.{NODE_ID}")).data)
            chain = AuditChain(NODE_ID, forger, genuine["seq"], genuine["hash"])
            from gatekeeper.audit import AuditRecord

            for i in range(3):
                rec = AuditRecord.from_dict(
                    {
                        k: v
                        for k, v in genuine.items()
                        if k not in ("seq", "prev", "sig_kid", "hash", "sig")
                    }
                    | {"request_id": f"forged-{i}", "cost_usd": 0.0}
                )
                await js.publish(f"bh.audit.acme.{NODE_ID}", wire_bytes(chain.seal(rec)))
            await nc.close()

        gw.terminate()
        run(forge())
        code, out = audit_verify(nats_server.url, "--operator-key", operator_pub)
        assert code == 1 and "bad_signature" in issue_kinds(out), out
        assert out.count("bad_signature") == 3, out
        assert pid(bytes(forger.verify_key)) in out


@pytest.mark.slow
class TestInjectedRecord:
    def test_a_record_with_a_junk_signature_never_becomes_a_parent(
        self, gw: GatewayProcess, nats_server: EmbeddedNats, issuer: Issuer
    ) -> None:
        """sig "AAAA", correct hash, published on the node's subject before a restart."""
        token = issuer.token()
        send(gw, token, 3)
        assert gw.terminate() == 0

        async def inject() -> None:
            nc = await _js(nats_server.url)
            js = nc.jetstream()
            last = json.loads((await js.get_last_msg(AUDIT, f"bh.audit.*.{NODE_ID}")).data)
            fake = dict(last) | {"seq": last["seq"] + 1, "prev": last["hash"]}
            fake |= {"request_id": "injected", "sig": "AAAA"}
            fake["hash"] = record_hash(fake)
            await js.publish(f"bh.audit.acme.{NODE_ID}", json.dumps(fake).encode())
            await nc.close()

        run(inject())
        gw.start()
        send(gw, token, 2)
        assert gw.terminate() == 0
        recs = records(nats_server.url)
        genuine = [r for r in recs if r["request_id"] != "injected"]
        assert [r["seq"] for r in genuine] == [1, 2, 3, 4, 5]
        assert genuine[3]["prev"] == genuine[2]["hash"]  # resumed after seq 3, not the fake
        assert '"audit.foreign_record"' in gw.logs()

        async def alerts() -> list[Any]:
            nc = await _js(nats_server.url)
            js = nc.jetstream()
            msg = await js.get_last_msg("BH_ALERTS", "bh.alerts.audit_foreign_record")
            await nc.close()
            return [json.loads(msg.data)]

        assert run(alerts())[0]["node_id"] == NODE_ID
        code, out = audit_verify(nats_server.url)
        assert code == 1 and issue_kinds(out) == {"bad_signature"}, out
        assert "request injected" in out


@pytest.mark.slow
class TestTokenlessFlood:
    def test_two_thousand_tokenless_requests_are_one_record(
        self, gw: GatewayProcess, nats_server: EmbeddedNats
    ) -> None:
        """2,000 requests without a valid token: 401 each, one summary record in BH_AUDIT."""

        async def flood() -> list[int]:
            limits = httpx.Limits(max_connections=4)
            async with httpx.AsyncClient(timeout=15, limits=limits) as http:
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}

                async def client(first: int) -> list[int]:
                    out = []
                    for i in range(first, 2000, 4):
                        headers = {"authorization": f"Bearer junk-{i}"} if i % 2 else {}
                        url = f"{gw.base_url}/chat/completions"
                        out.append((await http.post(url, json=body, headers=headers)).status_code)
                    return out

                done = await asyncio.gather(*(client(first) for first in range(4)))
                return [status for statuses in done for status in statuses]

        statuses = run(flood())
        assert set(statuses) == {401}
        assert records(nats_server.url) == []  # nothing per request
        assert gw.terminate() == 0
        recs = records(nats_server.url)
        assert len(recs) == 1
        (summary,) = recs
        assert summary["tenant"] == "_anonymous"
        assert sum(c["count"] for c in summary["anonymous"]) == 2000
        assert len(json.dumps(summary)) < 2000
        assert audit_verify(nats_server.url)[0] == 0


@pytest.fixture
def nested_body() -> Iterator[dict[str, Any]]:
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    yield {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "x": deep}


@pytest.mark.slow
class TestNestedJson:
    def test_deeply_nested_json_has_its_record_and_releases_the_reservation(
        self, gw: GatewayProcess, nats_server: EmbeddedNats, issuer: Issuer, nested_body: Any
    ) -> None:
        """The issue's repro: 5 requests nested 300 deep, then nothing stays in flight."""
        token = issuer.token(budget_tokens=1_000_000)
        headers = {"authorization": f"Bearer {token}"}
        statuses = []
        with httpx.Client(timeout=15) as http:
            for _ in range(5):
                r = http.post(f"{gw.base_url}/chat/completions", json=nested_body, headers=headers)
                assert r.headers.get("x-request-id")
                statuses.append(r.status_code)
            usage = http.get(f"{gw.base_url}/gatekeeper/usage", headers=headers).json()
        assert all(status in (400, 500) for status in statuses), statuses
        assert all(c["in_flight"] in (0, None) for c in usage["counters"].values()), usage
        recs = records(nats_server.url)
        assert [r["status"] for r in recs] == statuses
        assert all(r["error_code"] for r in recs)


@pytest.mark.slow
class TestAsyncModeStop:
    def test_sigterm_with_nats_gone_spools_what_was_not_acknowledged(
        self,
        start_gateway: StartGateway,
        upstream: Any,
        nats_server: EmbeddedNats,
        issuer: Issuer,
    ) -> None:
        """audit.mode async under load; NATS dies; SIGTERM at once. After both restart,
        every 200 has exactly one record: the stop waited for the acks and spooled the rest."""
        gw = start(
            start_gateway, upstream, audit={"mode": "async"}, env={"GATEKEEPER_NODE_ID": NODE}
        )
        with Load(gw, issuer.token()) as load:
            time.sleep(1.5)
            nats_server.kill()
            time.sleep(0.3)
            assert gw.terminate() == 0
        ok = load.completed_ok()
        assert len(ok) > 50
        nats_server.start()
        gw.start()
        drain = wait_spool_empty(gw)
        print(f"\nasync SIGTERM with NATS down: {len(ok)} complete 200s; after restart {drain}")
        assert_one_record_each(ok, records(nats_server.url))
        verify_after_failure(nats_server.url, load.threads)

    def test_sigkill_in_async_mode_loses_at_most_the_unacknowledged_window(
        self,
        start_gateway: StartGateway,
        upstream: Any,
        nats_server: EmbeddedNats,
        issuer: Issuer,
    ) -> None:
        """The documented limit of async mode: a SIGKILL loses what was not yet acked
        (never more than the async window); nothing is twice and the chain verifies."""
        gw = start(
            start_gateway, upstream, audit={"mode": "async"}, env={"GATEKEEPER_NODE_ID": NODE}
        )
        with Load(gw, issuer.token()) as load:
            time.sleep(2)
            gw.kill()
        gw.start()
        wait_spool_empty(gw)
        assert gw.terminate() == 0
        ok = load.completed_ok()
        recs = [r for r in records(nats_server.url) if r["tenant"] != "_anonymous"]
        counts = Counter(r["request_id"] for r in recs)
        lost = [s for s in ok if counts[s.request_id] == 0]
        print(f"\nasync SIGKILL: {len(ok)} complete 200s, {len(lost)} without a record")
        assert all(n == 1 for n in counts.values())
        assert len(lost) <= ASYNC_WINDOW
        code, out = audit_verify(nats_server.url)
        assert code == 0, out

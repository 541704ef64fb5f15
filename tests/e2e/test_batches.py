"""The Files and Batch APIs through the official openai SDK, against real gateways.

Each line runs through the live pipeline on whichever node pulls its slice from
BH_JOBS; the output and error files are checked line by line.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import nats
import openai
import orjson
import pytest

from gatekeeper.auth.node_key import load_or_create_node_key
from gatekeeper.batches.store import tenant_digest
from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.bus.streams import AUDIT, BATCHES_BUCKET, CONFIG_BUCKET, JOBS
from gatekeeper.control.values import revocation_key, signed_revocation
from tests.conftest import openai_provider
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model, embedding_model

# Alone, after everything else (make check's last phase): under a parallel load the SIGKILL
# test once ended "failed" instead of "completed", a race not diagnosed yet (issue 18's note).
pytestmark = [pytest.mark.slow, pytest.mark.serial]

BATCHES = {
    "slice_lines": 3,
    "ack_wait_s": 2,
    "workers": 2,
    "max_file_bytes": 64 * 1024,
    "requeue_every_s": 1,
}
CHAT = "/v1/chat/completions"


def line(cid: str, model: str = "gpt-4o-mini", url: str = CHAT, **body: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"hi {cid}"}], **body}
    return {"custom_id": cid, "method": "POST", "url": url, "body": body}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def start(
    start_gateway: Callable[..., GatewayProcess], fake: FakeOpenAI, **env: str
) -> GatewayProcess:
    return start_gateway(
        env=env,
        providers=[openai_provider("openai", fake)],
        models=[
            chat_model("gpt-4o-mini", "openai"),
            embedding_model("text-embedding-3-small", "openai"),
        ],
        batches=BATCHES,
    )


def sdk(gw: GatewayProcess, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=token, max_retries=0, timeout=20)


def wait_for(
    client: openai.OpenAI, batch_id: str, done: Callable[[Any], bool], timeout: float = 60
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, f"batch stuck: {batch}"
        time.sleep(0.1)


def finished(batch: Any) -> bool:
    return batch.status in ("completed", "failed", "cancelled", "expired")


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(x) for x in client.files.content(file_id).text.splitlines()]


def next_event(gw: GatewayProcess, token: str, batch_id: str) -> dict[str, Any]:
    """The first progress event of ``GET /v1/batches/{id}/events``."""
    url = f"{gw.base_url}/batches/{batch_id}/events"
    with httpx.stream("GET", url, headers={"authorization": f"Bearer {token}"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for text in r.iter_lines():
            if text.startswith("data: "):
                return dict(orjson.loads(text[6:]))
    raise AssertionError("no event")


async def revoke(nats_url: str, issuer: Issuer, sub: str) -> None:
    """What `gatekeeper keys revoke` does: an operator-signed BH_CONFIG value."""
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(CONFIG_BUCKET)
        operator = load_or_create_node_key(issuer.operator_key)
        await kv.put(revocation_key(sub), signed_revocation(operator, sub, "test", "now"))
    finally:
        await nc.close()


def verification(nats_url: str, batch_id: str, tenant: str = "acme") -> dict[str, Any]:
    """What the finalizer recorded beside the Batch object: the audit records it read."""

    async def read() -> dict[str, Any]:
        nc = await nats.connect(nats_url)
        try:
            kv = await nc.jetstream().key_value(BATCHES_BUCKET)
            entry = await kv.get(f"batch.{tenant_digest(tenant)}.{batch_id}")
            return dict(orjson.loads(entry.value or b"")["body"].get("verification") or {})
        finally:
            await nc.close()

    return asyncio.run(read())


def run_batch(client: openai.OpenAI, rows: list[dict[str, Any]], url: str = CHAT) -> Any:
    f = client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint=url, completion_window="24h")  # type: ignore[arg-type]
    return wait_for(client, batch.id, finished)


class TestBatchRoundTrip:
    def test_upload_run_and_download_with_the_sdk(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """Seven lines, one naming a model the gateway does not have: six in the output
        file with chat completions, one in the error file with its 404, each once. The
        finalizer read the seven lines' audit records back from BH_AUDIT, and the
        batch's usage is their sum."""
        gw = start(start_gateway, fake_openai)
        client = sdk(gw, issuer.token())
        rows = [line(f"r{i}") for i in range(6)] + [line("nope", model="no-such-model")]
        f = client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
        assert f.purpose == "batch" and f.bytes == len(jsonl(rows))
        assert client.files.retrieve(f.id).filename == "in.jsonl"
        assert client.files.content(f.id).read() == jsonl(rows)
        batch = client.batches.create(
            input_file_id=f.id, endpoint=CHAT, completion_window="24h", metadata={"job": "t"}
        )
        assert batch.status == "in_progress" and batch.request_counts.total == 7
        batch = wait_for(client, batch.id, finished)
        assert batch.status == "completed", batch
        assert batch.request_counts.completed == 6 and batch.request_counts.failed == 1
        assert batch.metadata == {"job": "t"} and batch.completed_at
        out = lines_of(client, batch.output_file_id)
        assert sorted(o["custom_id"] for o in out) == [f"r{i}" for i in range(6)]
        usages = [o["response"]["body"]["usage"] for o in out]
        assert batch.usage is not None and batch.usage.input_tokens == sum(
            u["prompt_tokens"] for u in usages
        )
        assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in usages) > 0
        assert verification(nats_server.url, batch.id) == {
            "audit_records": 7,  # the 404 has its record too
            "audit_usage": [batch.usage.input_tokens, batch.usage.output_tokens],
        }
        for o in out:
            assert o["id"].startswith("batch_req_") and o["error"] is None
            assert o["response"]["status_code"] == 200
            assert o["response"]["body"]["object"] == "chat.completion"
            assert o["response"]["request_id"].startswith(batch.id + ":")
        err = lines_of(client, batch.error_file_id)
        assert [e["custom_id"] for e in err] == ["nope"]
        assert err[0]["response"]["status_code"] == 404
        assert err[0]["response"]["body"]["error"]["code"] == "model_not_found"
        assert len(fake_openai.script.requests) == 6  # each line sent upstream once
        assert next_event(gw, issuer.token(), batch.id)["request_counts"]["completed"] == 6
        listed = client.batches.list(limit=5)
        assert [b.id for b in listed.data] == [batch.id]
        assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
        assert client.files.delete(f.id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(f.id)
        # the same for embeddings, and the listing is newest first
        rows = [
            {
                "custom_id": f"e{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": f"text {i}"},
            }
            for i in range(4)
        ]
        emb = run_batch(client, rows, "/v1/embeddings")
        assert emb.status == "completed" and emb.request_counts.completed == 4
        out = lines_of(client, emb.output_file_id)
        assert {o["custom_id"] for o in out} == {"e0", "e1", "e2", "e3"}
        assert all(o["response"]["body"]["object"] == "list" for o in out)
        assert [b.id for b in client.batches.list().data] == [emb.id, batch.id]
        page = client.batches.list(limit=1, after=emb.id)
        assert [b.id for b in page.data] == [batch.id] and not page.has_more


class TestValidationAndIsolation:
    def test_a_bad_file_fails_the_batch_with_per_line_errors(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        issuer: Issuer,
    ) -> None:
        gw = start(start_gateway, fake_openai)
        client = sdk(gw, issuer.token(models=["gpt-4o-mini"]))
        content = b"\n".join(
            [
                orjson.dumps(line("a")),
                b"{not json",
                orjson.dumps(line("a")),
                orjson.dumps(line("b", url="/v1/embeddings")),
                orjson.dumps(line("c", model="gpt-4o")),
                orjson.dumps(line("d", stream=True)),
            ]
        )
        f = client.files.create(file=("bad.jsonl", content), purpose="batch")
        batch = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
        assert batch.status == "failed" and batch.failed_at
        assert batch.errors is not None and batch.errors.data is not None
        got = [(e.line, e.code) for e in batch.errors.data]
        assert got == [
            (2, "invalid_json_line"),
            (3, "duplicate_custom_id"),
            (4, "mismatched_url"),
            (5, "model_not_allowed"),
            (6, "stream_not_supported"),
        ]
        assert client.batches.retrieve(batch.id).status == "failed"
        assert fake_openai.script.requests == []  # nothing ran
        with pytest.raises(openai.BadRequestError):
            client.batches.create(input_file_id=f.id, endpoint="/v1/nope", completion_window="24h")  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            client.batches.create(
                input_file_id="file-" + "0" * 24, endpoint=CHAT, completion_window="24h"
            )

    def test_another_tenant_sees_nothing(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        issuer: Issuer,
    ) -> None:
        gw = start(start_gateway, fake_openai)
        owner = sdk(gw, issuer.token(tenant="acme"))
        other = sdk(gw, issuer.token(tenant="globex"))
        batch = run_batch(owner, [line("x")])
        assert batch.status == "completed"
        for call in (
            lambda: other.files.retrieve(batch.input_file_id),
            lambda: other.files.content(batch.output_file_id),
            lambda: other.files.delete(batch.input_file_id),
            lambda: other.batches.retrieve(batch.id),
            lambda: other.batches.cancel(batch.id),
            lambda: other.batches.create(
                input_file_id=batch.input_file_id, endpoint=CHAT, completion_window="24h"
            ),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert other.files.list().data == [] and other.batches.list().data == []
        assert owner.files.content(batch.output_file_id).text  # still the owner's


RESPONSES = "/v1/responses"


def responses_line(cid: str, model: str = "gpt-4o-mini", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": RESPONSES,
        "body": {"model": model, "input": f"hi {cid}", **body},
    }


def all_audit_records(nats_url: str) -> list[dict[str, Any]]:
    """Every record in BH_AUDIT, in stream order."""

    async def read() -> list[dict[str, Any]]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(AUDIT)
            first, last = info.state.first_seq, info.state.last_seq
            return [orjson.loads((await js.get_msg(AUDIT, n)).data) for n in range(first, last + 1)]
        finally:
            await nc.close()

    return asyncio.run(read())


class TestResponsesBatch:
    def test_responses_lines_run_as_live_responses_requests(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """Four ``/v1/responses`` lines (one ``auto``, one with instructions and a
        token cap, one ``store: false``) and one naming an unknown model: four
        ``response`` objects in the output file, the 404 in the error file, usage summed
        in the Responses fields, one audit record per line (``client_api: responses``,
        request id ``<batch>:<index>``), and a stored response readable afterwards."""
        gw = start(start_gateway, fake_openai)
        client = sdk(gw, issuer.token())
        rows = [
            responses_line("r0"),
            responses_line("r1", model="auto"),
            responses_line("r2", instructions="Be brief.", max_output_tokens=50),
            responses_line("r3", store=False),
            responses_line("nope", model="no-such-model"),
        ]
        batch = run_batch(client, rows, RESPONSES)
        assert batch.status == "completed", batch
        assert batch.endpoint == RESPONSES
        assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 1)
        out = {o["custom_id"]: o for o in lines_of(client, batch.output_file_id)}
        assert sorted(out) == ["r0", "r1", "r2", "r3"]
        for o in out.values():
            body = o["response"]["body"]
            assert o["response"]["status_code"] == 200 and o["error"] is None
            assert body["object"] == "response" and body["status"] == "completed"
            assert body["id"].startswith("resp_") and body["output"][0]["type"] == "message"
            assert body["output"][0]["content"][0]["type"] == "output_text"
        assert out["r1"]["response"]["body"]["model"] == "auto"  # the name the line asked for
        assert out["r2"]["response"]["body"]["instructions"] == "Be brief."
        assert [b.get("max_tokens") for b in fake_openai.script.requests].count(50) == 1
        usages = [o["response"]["body"]["usage"] for o in out.values()]
        assert batch.usage is not None
        assert batch.usage.input_tokens == sum(u["input_tokens"] for u in usages) > 0
        assert batch.usage.output_tokens == sum(u["output_tokens"] for u in usages) > 0
        err = lines_of(client, batch.error_file_id)
        assert [e["custom_id"] for e in err] == ["nope"]
        assert err[0]["response"]["status_code"] == 404
        assert err[0]["response"]["body"]["error"]["code"] == "model_not_found"
        records = {
            r["request_id"]: r
            for r in all_audit_records(nats_server.url)
            if r["request_id"].startswith(batch.id + ":")
        }
        assert sorted(records) == [f"{batch.id}:{i}" for i in range(5)]
        assert {r["client_api"] for r in records.values()} == {"responses"}
        for o in out.values():
            rec = records[o["response"]["request_id"]]
            u = o["response"]["body"]["usage"]
            assert (rec["prompt_tokens"], rec["completion_tokens"]) == (
                u["input_tokens"],
                u["output_tokens"],
            )
        assert verification(nats_server.url, batch.id) == {
            "audit_records": 5,
            "audit_usage": [batch.usage.input_tokens, batch.usage.output_tokens],
        }
        stored = client.responses.retrieve(out["r0"]["response"]["body"]["id"])
        assert (
            stored.output_text == out["r0"]["response"]["body"]["output"][0]["content"][0]["text"]
        )
        with pytest.raises(openai.NotFoundError):  # store: false kept nothing
            client.responses.retrieve(out["r3"]["response"]["body"]["id"])

    def test_in_async_audit_mode_the_lines_wait_for_their_records(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """``audit.mode: async``: a live request does not wait for its record's ack, a
        batch line does (bounded), so the finalizer finds every record in BH_AUDIT."""
        gw = start_gateway(
            providers=[openai_provider("openai", fake_openai)],
            models=[chat_model("gpt-4o-mini", "openai")],
            batches=BATCHES,
            audit={"mode": "async"},
        )
        client = sdk(gw, issuer.token())
        batch = run_batch(client, [responses_line(f"a{i}") for i in range(4)], RESPONSES)
        assert batch.status == "completed", batch
        assert batch.usage is not None and batch.usage.total_tokens > 0
        assert verification(nats_server.url, batch.id) == {
            "audit_records": 4,
            "audit_usage": [batch.usage.input_tokens, batch.usage.output_tokens],
        }

    def test_an_upstream_that_reports_no_usage_is_counted_and_the_batch_completes(
        self,
        start_gateway: Callable[..., GatewayProcess],
        issuer: Issuer,
        nats_server: EmbeddedNats,
    ) -> None:
        """No ``usage`` in any reply: each line is charged the gateway's own count, the
        line results record that charge, and it is what the audit records carry."""
        with FakeOpenAI(Behavior(omit_usage=True)) as fake:
            gw = start(start_gateway, fake)
            client = sdk(gw, issuer.token())
            batch = run_batch(client, [line(f"u{i}") for i in range(4)])
            assert batch.status == "completed", batch
            out = lines_of(client, batch.output_file_id)
            assert all("usage" not in o["response"]["body"] for o in out)  # as it came
            assert batch.usage is not None and batch.usage.input_tokens > 0
            assert batch.usage.output_tokens > 0
            assert verification(nats_server.url, batch.id) == {
                "audit_records": 4,
                "audit_usage": [batch.usage.input_tokens, batch.usage.output_tokens],
            }

    def test_bad_responses_lines_fail_the_batch_at_create_time(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        issuer: Issuer,
    ) -> None:
        """Checked as ``POST /v1/responses`` would check them, before anything runs:
        a stream, a hosted tool, a bad input, a model the key may not use, a chat url."""
        gw = start(start_gateway, fake_openai)
        client = sdk(gw, issuer.token(models=["gpt-4o-mini"]))
        rows = [
            responses_line("ok"),
            responses_line("s", stream=True),
            responses_line("t", tools=[{"type": "web_search"}]),
            responses_line("i", input=[{"type": "input_file", "file_id": "file-x"}]),
            responses_line("m", model="gpt-4o"),
            line("c"),
        ]
        f = client.files.create(file=("bad.jsonl", jsonl(rows)), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id, endpoint=RESPONSES, completion_window="24h"
        )
        assert batch.status == "failed" and batch.errors is not None
        assert batch.errors.data is not None
        got = [(e.line, e.code, e.param) for e in batch.errors.data]
        assert got == [
            (2, "stream_not_supported", "body.stream"),
            (3, "invalid_body", "body"),
            (4, "invalid_body", "body"),
            (5, "model_not_allowed", None),
            (6, "mismatched_url", "url"),
        ]
        assert fake_openai.script.requests == []  # nothing ran


class TestBudgetAndCancel:
    def test_each_line_is_charged_and_exhaustion_ends_the_rest(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        issuer: Issuer,
    ) -> None:
        """7 + 5 tokens a line against a 60-token budget: some lines run, the others are
        in the error file with insufficient_quota; the key is charged exactly the
        completed lines."""
        gw = start(start_gateway, fake_openai)
        token = issuer.token(budget_tokens=60, budget_period="total")
        client = sdk(gw, token)
        batch = run_batch(client, [line(f"b{i}", max_tokens=5) for i in range(12)])
        assert batch.status == "completed"
        done, failed = batch.request_counts.completed, batch.request_counts.failed
        assert done >= 1 and failed >= 1 and done + failed == 12
        assert len(lines_of(client, batch.output_file_id)) == done
        for e in lines_of(client, batch.error_file_id):
            assert e["response"]["status_code"] == 429
            assert e["response"]["body"]["error"]["code"] == "insufficient_quota"
        usage = httpx.get(
            f"{gw.base_url}/gatekeeper/usage", headers={"authorization": f"Bearer {token}"}
        ).json()
        tokens = {k: c["used"] for k, c in usage["counters"].items() if c["limit"] == 60}
        assert list(tokens.values()) == [12 * done], usage
        assert len(fake_openai.script.requests) == done

    def test_cancel_stops_dispatch(
        self,
        start_gateway: Callable[..., GatewayProcess],
        issuer: Issuer,
    ) -> None:
        with FakeOpenAI(Behavior(first_byte_delay=0.2)) as fake:
            gw = start(start_gateway, fake)
            client = sdk(gw, issuer.token())
            rows = [line(f"c{i}") for i in range(24)]
            f = client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id, endpoint=CHAT, completion_window="24h"
            )
            wait_for(client, batch.id, lambda b: b.request_counts.completed >= 1)
            first = next_event(gw, issuer.token(), batch.id)
            assert first["status"] == "in_progress" and first["slices"]["total"] == 8
            with pytest.raises(openai.ConflictError):  # the input of a running batch
                client.files.delete(f.id)
            assert client.batches.cancel(batch.id).status == "cancelling"
            batch = wait_for(client, batch.id, finished)
            assert batch.status == "cancelled" and batch.cancelled_at
            out = lines_of(client, batch.output_file_id)
            err = lines_of(client, batch.error_file_id)
            ids = [o["custom_id"] for o in out + err]
            assert sorted(ids) == sorted(r["custom_id"] for r in rows)  # each exactly once
            cancelled = [e for e in err if e["error"] and e["error"]["code"] == "batch_cancelled"]
            assert cancelled and all(e["response"] is None for e in cancelled)
            assert len(fake.script.requests) == len(out) < 24
            assert client.batches.cancel(batch.id).status == "cancelled"

    def test_revoking_the_key_stops_its_batch(
        self,
        start_gateway: Callable[..., GatewayProcess],
        nats_server: EmbeddedNats,
        issuer: Issuer,
    ) -> None:
        """The lines still to run after the creator's key is revoked are 401s."""
        with FakeOpenAI(Behavior(first_byte_delay=0.2)) as fake:
            gw = start(start_gateway, fake)
            token = issuer.token()
            client = sdk(gw, token)
            rows = [line(f"v{i}") for i in range(16)]
            f = client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id, endpoint=CHAT, completion_window="24h"
            )
            wait_for(client, batch.id, lambda b: b.request_counts.completed >= 1)
            sub = orjson.loads(base64.urlsafe_b64decode(token.split(".")[2] + "==")[:-64])["sub"]
            asyncio.run(revoke(nats_server.url, issuer, sub))
            other = sdk(gw, issuer.token())  # the batch is still readable by the tenant
            batch = wait_for(other, batch.id, finished)
            assert batch.status == "completed"
            errors = lines_of(other, batch.error_file_id)
            assert errors and all(e["response"]["status_code"] == 401 for e in errors)
            assert len(fake.script.requests) == batch.request_counts.completed < 16


class TestHostileInput:
    def test_oversized_and_malformed_uploads(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        issuer: Issuer,
    ) -> None:
        gw = start(start_gateway, fake_openai)
        token = issuer.token()
        client = sdk(gw, token)
        for size in (100 * 1024, 300 * 1024):  # over the file cap; over the body cap
            with pytest.raises(openai.APIStatusError) as info:
                client.files.create(file=("big.jsonl", b"x" * size), purpose="batch")
            assert info.value.status_code == 413
            assert info.value.body["code"] == "payload_too_large"  # type: ignore[index]
        auth = {"authorization": f"Bearer {token}"}
        for body, ctype in (
            (b"garbage", "multipart/form-data; boundary=xyz"),
            (b"--xyz\r\nno headers here--xyz--", "multipart/form-data; boundary=xyz"),
            (
                b"--xyz\r\nContent-Disposition: form-data\r\n\r\nv\r\n--xyz--",
                "multipart/form-data; boundary=xyz",
            ),
            (b"{}", "multipart/form-data"),
        ):
            r = httpx.post(
                f"{gw.base_url}/files", content=body, headers={**auth, "content-type": ctype}
            )
            assert r.status_code == 400, r.text
            assert r.json()["error"]["type"] == "invalid_request_error"
        with pytest.raises(openai.BadRequestError):
            client.files.create(file=("in.jsonl", b"{}"), purpose="fine-tune")
        r = httpx.post(
            f"{gw.base_url}/files",
            content=b"{}",
            headers={**auth, "content-type": "application/json"},
        )
        assert r.status_code == 415
        r = httpx.get(f"{gw.base_url}/files")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def audit_subjects(nats_url: str) -> dict[str, int]:
    """BH_AUDIT's message count per subject (bh.audit.<tenant>.<node>)."""

    async def read() -> dict[str, int]:
        nc = await nats.connect(nats_url)
        try:
            info = await nc.jetstream().stream_info(AUDIT, subjects_filter="bh.audit.>")
            return dict(info.state.subjects or {})
        finally:
            await nc.close()

    return asyncio.run(read())


class TestAcrossNodes:
    def test_two_nodes_share_a_batch_and_survive_a_sigkill(
        self,
        start_gateway: Callable[..., GatewayProcess],
        nats_server: EmbeddedNats,
        issuer: Issuer,
    ) -> None:
        """Both nodes pull slices; one is SIGKILLed mid-batch; the other finishes it
        (the dead node's slice comes back after AckWait) with every line exactly once,
        and no line recorded before the kill is sent upstream again."""
        with FakeOpenAI(Behavior(first_byte_delay=0.1)) as fake:
            gws = [start(start_gateway, fake), start(start_gateway, fake)]
            client = sdk(gws[1], issuer.token())
            rows = [line(f"k{i}") for i in range(30)]
            f = client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id, endpoint=CHAT, completion_window="24h"
            )
            wait_for(client, batch.id, lambda b: b.request_counts.completed >= 8)
            gws[0].kill()  # SIGKILL: no nak, no goodbye
            batch = wait_for(client, batch.id, finished)
            assert batch.status == "completed", batch
            out = lines_of(client, batch.output_file_id)
            assert sorted(o["custom_id"] for o in out) == sorted(r["custom_id"] for r in rows)
            assert batch.request_counts.completed == 30 and batch.error_file_id is None
            # at most the killed node's in-flight lines (2 workers) ran a second time
            assert 30 <= len(fake.script.requests) <= 30 + BATCHES["workers"]
        nodes = {s.rsplit(".", 1)[1] for s in audit_subjects(nats_server.url)}
        assert len(nodes) == 2  # both nodes ran lines (each line audited where it ran)

    def test_a_node_killed_mid_batch_finishes_it_after_its_restart(
        self,
        start_gateway: Callable[..., GatewayProcess],
        issuer: Issuer,
    ) -> None:
        """The only node is SIGKILLed; restarted, it takes its own slices back from BH_JOBS
        and resumes from the recorded lines."""
        with FakeOpenAI(Behavior(first_byte_delay=0.1)) as fake:
            gw = start(start_gateway, fake)
            client = sdk(gw, issuer.token())
            rows = [line(f"s{i}") for i in range(12)]
            f = client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id, endpoint=CHAT, completion_window="24h"
            )
            wait_for(client, batch.id, lambda b: b.request_counts.completed >= 3)
            gw.kill()
            gw.start()
            batch = wait_for(client, batch.id, finished)
            assert batch.status == "completed" and batch.request_counts.completed == 12
            out = lines_of(client, batch.output_file_id)
            assert sorted(o["custom_id"] for o in out) == sorted(r["custom_id"] for r in rows)
            assert 12 <= len(fake.script.requests) <= 12 + BATCHES["workers"]

    def test_a_crash_between_the_record_and_its_slices_loses_nothing(
        self,
        start_gateway: Callable[..., GatewayProcess],
        issuer: Issuer,
    ) -> None:
        """The creating node SIGKILLs itself right after writing the batch record, before
        queueing a slice; the other node finds the queueing marker and queues the slices:
        the batch completes with every line run exactly once."""
        with FakeOpenAI() as fake:
            doomed = start(start_gateway, fake, GATEKEEPER_TEST_CRASH_AT="batches.recorded")
            other = start(start_gateway, fake)
            client = sdk(doomed, issuer.token())
            rows = [line(f"q{i}") for i in range(7)]
            f = client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
            with pytest.raises(openai.APIConnectionError):
                client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
            assert doomed.proc is not None and doomed.proc.wait(10) == -9
            survivor = sdk(other, issuer.token())
            (batch,) = survivor.batches.list().data
            batch = wait_for(survivor, batch.id, finished)
            assert batch.status == "completed" and batch.request_counts.completed == 7
            out = lines_of(survivor, batch.output_file_id)
            assert sorted(o["custom_id"] for o in out) == sorted(r["custom_id"] for r in rows)
            assert len(fake.script.requests) == 7  # every line exactly once
        assert "batches.requeued" in other.logs()


class TestExpiry:
    def test_a_short_completion_window_expires_the_lines_not_run(
        self,
        start_gateway: Callable[..., GatewayProcess],
        issuer: Issuer,
    ) -> None:
        """A test-only window of about a second: the two lines in flight when it passes
        finish and are in the output file; the other seven never run and are batch_expired."""
        hold = threading.Event()
        with FakeOpenAI(Behavior(hold=hold)) as fake:
            gw = start_gateway(
                providers=[openai_provider("openai", fake)],
                models=[chat_model("gpt-4o-mini", "openai")],
                batches={**BATCHES, "test_completion_window_s": 1},
            )
            client = sdk(gw, issuer.token())
            rows = [line(f"e{i}") for i in range(9)]
            f = client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id, endpoint=CHAT, completion_window="24h"
            )
            until("two lines upstream", lambda: len(fake.script.requests) == 2)
            expires = batch.expires_at
            assert expires is not None
            until("the window passes", lambda: time.time() > expires + 0.05)
            hold.set()
            batch = wait_for(client, batch.id, finished)
            assert batch.status == "expired" and batch.expired_at, batch
            assert batch.request_counts.completed == 2 and batch.request_counts.failed == 7
            assert len(lines_of(client, batch.output_file_id)) == 2
            errors = lines_of(client, batch.error_file_id)
            assert sorted(e["error"]["code"] for e in errors) == ["batch_expired"] * 7
            assert len(fake.script.requests) == 2  # nothing ran after the window


class TestLanes:
    def test_interactive_requests_overtake_queued_batch_lines(
        self,
        start_gateway: Callable[..., GatewayProcess],
        issuer: Issuer,
    ) -> None:
        """Lanes on, one upstream slot: a batch line holds it and a second waits in the
        batch lane; two interactive requests (the same key) arrive after it and run first."""
        hold = threading.Event()
        with FakeOpenAI(Behavior(hold=hold)) as fake:
            gw = start_gateway(
                providers=[openai_provider("openai", fake)],
                models=[chat_model("gpt-4o-mini", "openai")],
                batches=BATCHES,
                capacity={"max_in_flight": 1},
            )
            token = issuer.token(priority="critical")  # the lane is still batch for its lines
            client = sdk(gw, token)
            rows = [line(f"b{i}") for i in range(4)]
            f = client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id, endpoint=CHAT, completion_window="24h"
            )
            until("a line upstream, one queued", lambda: lane_depth(gw, "batch") == 1)
            assert len(fake.script.requests) == 1
            with ThreadPoolExecutor(2) as pool:
                live = [pool.submit(ask_live, gw, token, f"live{i}") for i in range(2)]
                until("both queued", lambda: lane_depth(gw, "critical") == 2)
                hold.set()
                assert [x.result() for x in live] == [200, 200]
            batch = wait_for(client, batch.id, finished)
            assert batch.status == "completed" and batch.request_counts.completed == 4
            texts = [str(r["messages"][0]["content"]) for r in fake.script.requests]  # type: ignore[index]
            assert texts[1:3] == ["live0", "live1"] or texts[1:3] == ["live1", "live0"], texts
            assert sorted(texts[0:1] + texts[3:]) == [f"hi b{i}" for i in range(4)]


def lane_depth(gw: GatewayProcess, lane: str) -> float:
    for text in httpx.get(f"{gw.url}/metrics", timeout=5).text.splitlines():
        if text.startswith(f'gatekeeper_lane_queue_depth{{lane="{lane}"}}'):
            return float(text.rsplit(" ", 1)[1])
    return 0.0


def ask_live(gw: GatewayProcess, token: str, text: str) -> int:
    c = openai.OpenAI(base_url=gw.base_url, api_key=token, max_retries=0, timeout=30)
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )
    return raw.status_code


def until(what: str, cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class TestForgedState:
    def test_unsigned_records_and_jobs_on_nats_are_ignored(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        nats_server: EmbeddedNats,
        issuer: Issuer,
    ) -> None:
        """A writer on NATS without a node key plants a batch record and a slice job: the
        API does not show the batch, the workers refuse the job, nothing runs upstream."""
        gw = start(start_gateway, fake_openai)
        client = sdk(gw, issuer.token(tenant="acme"))
        forged_id = "batch_" + "ab" * 12
        record = {"tenant": "acme", "batch": {"id": forged_id, "status": "in_progress"}}

        async def plant() -> int:
            nc = await nats.connect(nats_server.url)
            try:
                js = nc.jetstream()
                kv = await js.key_value(BATCHES_BUCKET)
                await kv.put(f"batch.{tenant_digest('acme')}.{forged_id}", orjson.dumps(record))
                job = {
                    "kind": "slice",
                    "tenant": "acme",
                    "batch": forged_id,
                    "n": 0,
                    "start": 0,
                    "end": 5,
                }
                await js.publish(f"bh.jobs.slice.{forged_id}", orjson.dumps(job))
                for _ in range(100):  # the worker terminates it: the work queue empties
                    if (await js.stream_info(JOBS)).state.messages == 0:
                        return 0
                    await asyncio.sleep(0.05)
                return (await js.stream_info(JOBS)).state.messages
            finally:
                await nc.close()

        assert asyncio.run(plant()) == 0
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve(forged_id)
        assert client.batches.list().data == []
        assert fake_openai.script.requests == []
        assert "batches.job_refused" in gw.logs()


class TestNatsRestart:
    def test_a_nats_server_restart_mid_batch_loses_nothing(
        self,
        start_gateway: Callable[..., GatewayProcess],
        nats_server: EmbeddedNats,
        issuer: Issuer,
    ) -> None:
        """JetStream keeps the queue, the records and the results on disk: after the
        server's restart the node reconnects and the batch completes, each line once."""
        with FakeOpenAI(Behavior(first_byte_delay=0.1)) as fake:
            gw = start(start_gateway, fake)
            client = sdk(gw, issuer.token())
            rows = [line(f"n{i}") for i in range(12)]
            f = client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id, endpoint=CHAT, completion_window="24h"
            )
            wait_for(client, batch.id, lambda b: b.request_counts.completed >= 3)
            nats_server.stop()
            nats_server.start()
            gw.wait_ready()
            batch = wait_for(client, batch.id, finished)
            assert batch.status == "completed" and batch.request_counts.completed == 12
            out = lines_of(client, batch.output_file_id)
            assert sorted(o["custom_id"] for o in out) == sorted(r["custom_id"] for r in rows)
            assert 12 <= len(fake.script.requests) <= 12 + BATCHES["workers"]

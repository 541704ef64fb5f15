"""The result cache and in-flight coalescing end to end: official openai SDK, real NATS.

One gateway with ``cache.enabled`` in front of a fake OpenAI upstream whose request
log counts the upstream calls. Keys opt in with the ``cache`` claim; requests use
``temperature: 0`` (deterministic) unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import orjson
import pytest
from nacl.signing import SigningKey

from gatekeeper.auth.claims import CacheClaim
from gatekeeper.auth.paseto import b64encode
from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.bus.kv_snapshot import kv_snapshot
from gatekeeper.bus.streams import CACHE_BUCKET
from gatekeeper.cache.entry import _message
from tests.conftest import openai_provider
from tests.e2e.test_budget_leaks import audit_records, used
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model

pytestmark = pytest.mark.slow  # multi-process and timing: make check runs these per file

MODEL = "gpt-4o-mini"
MESSAGES: Any = [{"role": "user", "content": "What is the capital of France?"}]


def secret_file(tmp_path: Path) -> str:
    """The cluster's cache secret (the embedded dev setup would create it in the state dir)."""
    path = tmp_path / "cache.secret"
    path.write_bytes(b"k" * 32)
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def gw(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI, tmp_path: Path
) -> GatewayProcess:
    return start_gateway(
        providers=[openai_provider("openai", fake_openai)],
        models=[chat_model(MODEL, "openai")],
        cache={"enabled": True, "key_secret_file": secret_file(tmp_path)},
    )


def token(issuer: Issuer, tenant: str = "acme", budget: int | None = None, **claim: Any) -> str:
    return issuer.token(tenant=tenant, cache=CacheClaim(ttl_s=60, **claim), budget_tokens=budget)


def client(gw: GatewayProcess, key: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, **kw)


def ask(c: openai.OpenAI, **kw: Any) -> tuple[str, Any]:
    kw.setdefault("temperature", 0)
    raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, **kw)
    return raw.headers.get("x-gatekeeper-cache", ""), raw.parse()


def upstream_calls(fake: FakeOpenAI) -> int:
    return len(fake.script.requests)


def sse(gw: GatewayProcess, key: str) -> tuple[str, bytes]:
    body = {"model": MODEL, "messages": MESSAGES, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST",
        f"{gw.base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=20,
    ) as r:
        return r.headers.get("x-gatekeeper-cache", ""), r.read()


def wait_calls(fake: FakeOpenAI, n: int) -> None:
    async def poll() -> None:
        while upstream_calls(fake) < n:  # noqa: ASYNC110 (the fake logs in its own thread)
            await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(poll(), 10))


class TestHitsAndMisses:
    def test_second_identical_request_is_a_hit(
        self, gw: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """MISS, then HIT with the same body and no second upstream call."""
        c = client(gw, token(issuer))
        first_state, first = ask(c)
        second_state, second = ask(c)
        assert (first_state, second_state) == ("MISS", "HIT")
        assert second.model_dump() == first.model_dump()
        assert upstream_calls(fake_openai) == 1

    def test_another_tenant_misses(
        self, gw: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """A tenant never gets another tenant's answer."""
        assert ask(client(gw, token(issuer, "acme")))[0] == "MISS"
        assert ask(client(gw, token(issuer, "globex")))[0] == "MISS"
        assert ask(client(gw, token(issuer, "acme")))[0] == "HIT"
        assert upstream_calls(fake_openai) == 2

    def test_cache_control_no_cache_and_no_store(
        self, gw: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """no-store: answered, not kept; no-cache: not looked up (but stored)."""
        c = client(gw, token(issuer))
        assert ask(c, extra_headers={"cache-control": "no-store"})[0] == "MISS"
        assert ask(c, extra_headers={"cache-control": "no-cache"})[0] == "MISS"
        assert ask(c)[0] == "HIT"  # the no-cache request stored its answer
        assert ask(c, extra_headers={"cache-control": "no-cache, no-store"})[0] == "BYPASS"
        assert upstream_calls(fake_openai) == 3

    def test_nondeterministic_requests_bypass_unless_the_policy_says(
        self, gw: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """temperature > 0 without a seed: BYPASS; with a seed it is cached."""
        c = client(gw, token(issuer))
        assert ask(c, temperature=0.7)[0] == "BYPASS"
        assert ask(c, temperature=0.7, seed=1)[0] == "MISS"
        assert ask(c, temperature=0.7, seed=1)[0] == "HIT"
        keen = client(gw, token(issuer, nondeterministic=True))
        assert ask(keen, temperature=0.7)[0] == "MISS"
        assert upstream_calls(fake_openai) == 3

    def test_streamed_hit_replays_the_chunks_and_done(
        self, gw: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """A cached stream is replayed as the same chunk sequence, then [DONE]."""
        key = token(issuer)
        miss_state, miss = sse(gw, key)
        hit_state, hit = sse(gw, key)
        assert (miss_state, hit_state) == ("MISS", "HIT")
        assert hit == miss and hit.endswith(b"data: [DONE]\n\n")
        assert upstream_calls(fake_openai) == 1
        chunks = list(
            client(gw, key).chat.completions.create(
                model=MODEL, messages=MESSAGES, temperature=0, stream=True
            )
        )
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == (
            Behavior().text
        )

    def test_hits_are_charged_and_audited_per_policy(
        self,
        gw: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        nats_server: EmbeddedNats,
    ) -> None:
        """free: a hit costs 0 tokens; cost: the original usage. Both audited as hits."""
        free = token(issuer, budget=100_000)
        cost = token(issuer, "payer", budget=100_000, charge="cost")
        for key in (free, cost):
            ask(client(gw, key))
            assert ask(client(gw, key))[0] == "HIT"
        assert used(gw, free)["used"] == 12  # the miss only (7 + 5)
        assert used(gw, cost)["used"] == 24  # the miss and the hit at its original usage
        records = audit_records(nats_server.url, 4)
        hits = [r for r in records if r.get("cache") == "HIT"]
        assert len(hits) == 2 and all(r["usage_source"] == "cache" for r in hits)
        assert sorted(r["total_tokens"] for r in hits) == [0, 12]
        assert all(r["attempts"] == [] for r in hits)


class TestCoalescing:
    def test_concurrent_identical_requests_share_one_upstream_call(
        self, gw: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """30 identical requests in flight at once: one upstream call, the rest COALESCED."""
        fake_openai.script.push(Behavior(first_byte_delay=1.5))
        key = token(issuer)

        async def run() -> list[tuple[str, str]]:
            c = openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0)

            async def one() -> tuple[str, str]:
                raw = await c.chat.completions.with_raw_response.create(
                    model=MODEL, messages=MESSAGES, temperature=0
                )
                reply = raw.parse()
                return raw.headers["x-gatekeeper-cache"], reply.choices[0].message.content or ""

            try:
                return await asyncio.gather(*(one() for _ in range(30)))
            finally:
                await c.close()

        results = asyncio.run(run())
        assert upstream_calls(fake_openai) == 1
        states = sorted(state for state, _ in results)
        assert states.count("MISS") == 1 and states.count("COALESCED") == 29
        assert {text for _, text in results} == {Behavior().text}

    def test_streams_fan_out_the_same_chunks(
        self, gw: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """Identical concurrent streams: one upstream stream, every client the same bytes."""
        fake_openai.script.push(Behavior(first_byte_delay=1.0, chunk_delay=0.05))
        key = token(issuer)

        async def run() -> list[tuple[str, bytes]]:
            body = {"model": MODEL, "messages": MESSAGES, "temperature": 0, "stream": True}
            async with httpx.AsyncClient(timeout=20) as h:

                async def one() -> tuple[str, bytes]:
                    async with h.stream(
                        "POST",
                        f"{gw.base_url}/chat/completions",
                        json=body,
                        headers={"authorization": f"Bearer {key}"},
                    ) as r:
                        return r.headers["x-gatekeeper-cache"], await r.aread()

                return await asyncio.gather(*(one() for _ in range(8)))

        results = asyncio.run(run())
        assert upstream_calls(fake_openai) == 1
        assert sorted(s for s, _ in results).count("COALESCED") == 7
        bodies = sorted({b for _, b in results})
        assert len(bodies) == 1
        assert results[0][1].endswith(b"data: [DONE]\n\n")

    def test_leader_hanging_up_does_not_break_followers(
        self, gw: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """The leader's client goes away; the shared call goes on and followers get it."""
        fake_openai.script.push(Behavior(first_byte_delay=1.5))
        key = token(issuer)

        async def run() -> list[str]:
            impatient = openai.AsyncOpenAI(
                base_url=gw.base_url, api_key=key, max_retries=0, timeout=0.8
            )
            patient = openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
            leader = asyncio.ensure_future(
                impatient.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0)
            )
            while upstream_calls(fake_openai) < 1:  # noqa: ASYNC110 (the fake's own thread)
                await asyncio.sleep(0.01)

            async def follow() -> str:
                raw = await patient.chat.completions.with_raw_response.create(
                    model=MODEL, messages=MESSAGES, temperature=0
                )
                assert raw.parse().choices[0].message.content == Behavior().text
                return raw.headers["x-gatekeeper-cache"]

            followers = [asyncio.ensure_future(follow()) for _ in range(3)]
            with pytest.raises(openai.APITimeoutError):
                await leader
            out = await asyncio.gather(*followers)
            await impatient.close()
            await patient.close()
            return out

        assert asyncio.run(run()) == ["COALESCED"] * 3
        assert upstream_calls(fake_openai) == 1

    def test_upstream_error_is_shared_and_not_cached(
        self, gw: GatewayProcess, issuer: Issuer, fake_openai: FakeOpenAI
    ) -> None:
        """Followers get the leader's error; the next request calls upstream again."""
        fake_openai.script.push(Behavior(status=400, first_byte_delay=1.0))
        key = token(issuer)

        async def run() -> list[BaseException | object]:
            c = openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
            try:
                return await asyncio.gather(
                    *(
                        c.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0)
                        for _ in range(5)
                    ),
                    return_exceptions=True,
                )
            finally:
                await c.close()

        results = asyncio.run(run())
        assert all(isinstance(r, openai.BadRequestError) for r in results), results
        assert upstream_calls(fake_openai) == 1
        assert ask(client(gw, key))[0] == "MISS"
        assert upstream_calls(fake_openai) == 2


class TestForgedEntries:
    def test_forged_or_garbled_entries_are_misses(
        self,
        gw: GatewayProcess,
        issuer: Issuer,
        fake_openai: FakeOpenAI,
        nats_server: EmbeddedNats,
    ) -> None:
        """A NATS writer without the node key cannot plant an answer. Until the gateway's
        watch delivers the overwrite (milliseconds), it may still serve the genuine answer
        it keeps in memory; then it reads the entry, refuses it and asks the upstream."""
        c = client(gw, token(issuer))
        _, genuine = ask(c)
        forger = SigningKey.generate()

        async def tamper(mode: str) -> None:
            nc = await nats.connect(nats_server.url)
            try:
                kv = await nc.jetstream().key_value(CACHE_BUCKET)
                (name,) = [i.key for i in await kv_snapshot(kv)]
                line, _, payload = ((await kv.get(name)).value or b"").partition(b"\n")
                header = orjson.loads(line)
                planted = payload.replace(b"Hello", b"PWNED")
                if mode == "resigned":  # a consistent entry, signed by a key no node holds
                    import hashlib

                    header["sha256"] = hashlib.sha256(planted).hexdigest()
                    header["size"] = len(planted)
                    del header["sig"]
                    header["sig"] = b64encode(forger.sign(_message(header)).signature)
                value = orjson.dumps(header) + b"\n" + planted
                await kv.put(name, value if mode != "garbage" else b"\x00garbage")
            finally:
                await nc.close()

        for n, mode in enumerate(("payload", "resigned", "garbage"), start=2):
            asyncio.run(tamper(mode))
            deadline = time.monotonic() + 10
            while True:  # the genuine answer kept in memory, until the watch shows the change
                state, reply = ask(c)
                assert reply.choices[0].message.content == genuine.choices[0].message.content
                if state == "MISS":  # read, refused, asked upstream
                    break
                assert state == "HIT" and time.monotonic() < deadline, (mode, state)
                time.sleep(0.02)
            wait_calls(fake_openai, n)
            asyncio.run(asyncio.sleep(0.2))  # the genuine answer is stored again


class TestExpiry:
    def test_an_expired_entry_is_a_miss(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        issuer: Issuer,
        nats_server: EmbeddedNats,
        tmp_path: Path,
    ) -> None:
        """A short TTL: MISS, stored; once the bucket's max_age has dropped it, MISS again."""
        gw = start_gateway(
            providers=[openai_provider("openai", fake_openai)],
            models=[chat_model(MODEL, "openai")],
            cache={"enabled": True, "key_secret_file": secret_file(tmp_path), "max_ttl_s": 1},
        )
        c = client(gw, token(issuer))  # its claim's 60 s is capped by max_ttl_s

        async def keys() -> list[str]:
            nc = await nats.connect(nats_server.url)
            try:
                kv = await nc.jetstream().key_value(CACHE_BUCKET)
                return [i.key for i in await kv_snapshot(kv)]
            finally:
                await nc.close()

        async def until_gone(stored: float) -> None:
            # past the entry's own expiry, and absent from the bucket (an empty listing
            # under load can be a watcher that timed out, so it must also be past the TTL)
            while time.monotonic() - stored <= 1.0 or await keys():  # noqa: ASYNC110
                await asyncio.sleep(0.1)

        assert ask(c)[0] == "MISS"
        asyncio.run(asyncio.wait_for(until_stored(keys), 10))
        stored = time.monotonic()
        asyncio.run(asyncio.wait_for(until_gone(stored), 10))  # the bucket's max_age dropped it
        assert ask(c)[0] == "MISS"
        assert upstream_calls(fake_openai) == 2


async def until_stored(keys: Callable[[], Any]) -> None:
    while not await keys():  # noqa: ASYNC110 (polling NATS)
        await asyncio.sleep(0.02)

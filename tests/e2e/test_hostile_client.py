"""A hostile client against a real gateway process: real sockets, real limits.

Each test states the bound it proves (docs/limits.md). The gateways here run with
short timeouts so the suite stays fast; the defaults are the documented ones.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import openai_provider
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, chat_model

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def pid_of(gw: GatewayProcess) -> int:
    assert gw.proc is not None
    return gw.proc.pid


def connect(gw: GatewayProcess, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=timeout)


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or a reset)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what}")


def healthz(gw: GatewayProcess) -> int:
    return httpx.get(f"{gw.url}/healthz", timeout=5).status_code


EDGE = {
    "header_timeout_s": 1.5,
    "body_timeout_s": 1.0,
    "max_connections": 2000,
}


@pytest.fixture
def edge_gateway(
    start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
) -> GatewayProcess:
    return start_gateway(
        providers=[openai_provider("openai", fake_openai)],
        models=[chat_model("gpt-4o-mini", "openai")],
        server={"limits": EDGE},
    )


def chat(token: str, **body: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        **body,
    }


class TestSlowAndOversizedHeads:
    def test_half_sent_heads_are_closed_after_the_header_timeout(
        self, edge_gateway: GatewayProcess
    ) -> None:
        """500 connections that send half a header block are answered 408 and closed
        after header_timeout_s; the process's fd count comes back down, and /healthz
        answers throughout."""
        pid = pid_of(edge_gateway)
        before = fd_count(pid)
        socks = []
        for i in range(500):
            s = connect(edge_gateway)
            s.sendall(HEAD + f"x-slow-{i}: ".encode())
            socks.append(s)
        wait_until(lambda: fd_count(pid) >= before + 450, 10, "the connections to be accepted")
        assert healthz(edge_gateway) == 200
        replies = []
        for s in socks:
            s.settimeout(10)
            replies.append(read_reply(s))
            s.close()
        assert all(r.startswith(b"HTTP/1.1 408 ") for r in replies), replies[0][:200]
        assert b'"code":"request_timeout"' in replies[0]
        wait_until(lambda: fd_count(pid) <= before + 10, 10, "fds to come back down")
        assert healthz(edge_gateway) == 200

    def test_a_64_mib_header_block_gets_431_with_bounded_memory(
        self, edge_gateway: GatewayProcess
    ) -> None:
        """A 64 MiB header is refused with 431 after at most a few hundred KiB are
        read: the gateway's RSS grows by far less than the header."""
        pid = pid_of(edge_gateway)
        assert healthz(edge_gateway) == 200
        rss_before = rss_kib(pid)
        sock = connect(edge_gateway)
        sender_error: list[BaseException] = []

        def send() -> None:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: gw\r\nx-big: ")
                block = b"a" * (1024 * 1024)
                for _ in range(64):
                    sock.sendall(block)
            except OSError as exc:  # the server stops reading, then closes: expected
                sender_error.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        reply = read_reply(sock)
        sender.join(15)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
        assert b"request_header_fields_too_large" in reply
        assert sender_error, "the server must not read all 64 MiB"
        grown_mib = (rss_kib(pid) - rss_before) / 1024
        assert grown_mib < 16, f"RSS grew {grown_mib:.1f} MiB"
        assert healthz(edge_gateway) == 200

    def test_a_slow_body_gets_408(self, edge_gateway: GatewayProcess, issuer: Issuer) -> None:
        """Headers promise 200 bytes of body; 10 arrive, then nothing: 408 after
        body_timeout_s, in OpenAI's error shape."""
        sock = connect(edge_gateway)
        sock.sendall(
            HEAD
            + f"authorization: Bearer {issuer.token()}\r\n".encode()
            + b"content-type: application/json\r\ncontent-length: 200\r\n\r\n"
            + b'{"model": '
        )
        reply = read_reply(sock)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        body = orjson.loads(reply.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "request_timeout"


class TestConnectionCap:
    def test_idle_connections_make_room_busy_ones_do_not(
        self, start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI, issuer: Issuer
    ) -> None:
        """At max_connections a new client evicts the oldest idle connection (so
        /healthz still answers); when every connection is mid-request, the new one is
        refused with 503."""
        gw = start_gateway(
            providers=[openai_provider("openai", fake_openai)],
            models=[chat_model("gpt-4o-mini", "openai")],
            server={
                "limits": {"max_connections": 16, "header_timeout_s": 30, "body_timeout_s": 30}
            },
        )
        idle = [connect(gw) for _ in range(20)]  # more than the cap, all idle
        for _ in range(3):
            assert healthz(gw) == 200
        for s in idle:
            s.close()
        token = issuer.token()
        busy = []
        for _ in range(16):  # mid-body: these are serving a request
            s = connect(gw)
            s.sendall(
                HEAD + f"authorization: Bearer {token}\r\n".encode() + b"content-type: "
                b"application/json\r\ncontent-length: 100\r\n\r\n{"
            )
            busy.append(s)
        time.sleep(0.5)  # let the gateway read every head
        extra = connect(gw)
        reply = read_reply(extra)
        extra.close()
        assert reply.startswith(b"HTTP/1.1 503 "), reply[:200]
        assert b"too_many_connections" in reply
        for s in busy:
            s.close()
        wait_until(lambda: healthz(gw) == 200, 10, "the gateway to take connections again")


class TestRequestShape:
    def test_json_nested_300_deep_is_a_400(
        self, edge_gateway: GatewayProcess, issuer: Issuer
    ) -> None:
        """Nesting past max_json_depth (orjson could not re-serialise 300) is a 400
        naming the field, not a 500."""
        deep: Any = "x"
        for _ in range(300):
            deep = [deep]
        r = httpx.post(
            f"{edge_gateway.base_url}/chat/completions",
            json=chat("", metadata=deep),
            headers={"authorization": f"Bearer {issuer.token()}"},
            timeout=10,
        )
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "nesting_too_deep" and err["param"] == "metadata"

    def test_150k_content_parts_are_a_quick_400(
        self, edge_gateway: GatewayProcess, issuer: Issuer
    ) -> None:
        """150,000 content parts (about 4 MB) are refused with 400 by the count cap."""
        parts = [{"type": "text", "text": "x"}] * 150_000
        body = orjson.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": parts}]}
        )
        r = httpx.post(
            f"{edge_gateway.base_url}/chat/completions",
            content=body,
            headers={
                "authorization": f"Bearer {issuer.token()}",
                "content-type": "application/json",
            },
            timeout=10,
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "too_many_content_parts"


# ---------------------------------------------------------------------- fair sharing

SLOW = 1.0  # seconds the fake upstream waits before answering


@pytest.fixture
def slow_upstream() -> Any:
    from tests.harness.behavior import Behavior

    with FakeOpenAI(default=Behavior(first_byte_delay=SLOW, chunks=4, chunk_delay=0.2)) as fake:
        yield fake


def sdk(gw: GatewayProcess, token: str) -> Any:
    import openai

    return openai.OpenAI(base_url=gw.base_url, api_key=token, max_retries=0, timeout=20)


def in_parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads; their results (or the exceptions they raised)."""
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


class TestFairSharing:
    @pytest.fixture
    def gw(
        self, start_gateway: Callable[..., GatewayProcess], slow_upstream: FakeOpenAI
    ) -> GatewayProcess:
        return start_gateway(
            providers=[openai_provider("openai", slow_upstream)],
            models=[chat_model("gpt-4o-mini", "openai")],
        )

    def test_a_key_over_its_cap_gets_429_while_another_tenant_is_served(
        self, gw: GatewayProcess, issuer: Issuer, slow_upstream: FakeOpenAI
    ) -> None:
        """Key A (concurrency.requests = 2) has two slow requests in flight: a third
        gets 429 with retry-after at once, while tenant B's request is served; once
        A's finish, A may send two again."""
        import openai

        from gatekeeper.auth.claims import Concurrency

        a = sdk(gw, issuer.token("acme", concurrency=Concurrency(requests=2)))
        b = sdk(gw, issuer.token("globex"))
        msgs = [{"role": "user", "content": "hi"}]

        def ask(client: Any) -> Callable[[], Any]:
            return lambda: client.chat.completions.create(model="gpt-4o-mini", messages=msgs)

        first = threading.Thread(target=lambda: in_parallel(ask(a), ask(a)))
        first.start()
        wait_until(lambda: len(slow_upstream.script.requests) >= 2, 10, "A's two requests")
        with pytest.raises(openai.RateLimitError) as refused:
            ask(a)()
        assert refused.value.response.headers["retry-after"] == "1"
        assert refused.value.code == "concurrency_limit_exceeded"
        assert first.is_alive()  # A's two are still in flight ...
        reply = ask(b)()  # ... and B is served meanwhile
        assert reply.choices[0].message.content
        first.join(20)
        again = in_parallel(ask(a), ask(a))
        assert all(not isinstance(r, Exception) for r in again), again

    def test_slots_come_back_after_hang_ups_and_errors(
        self, gw: GatewayProcess, issuer: Issuer, slow_upstream: FakeOpenAI
    ) -> None:
        """Streams the client abandons half way and requests the upstream refuses
        each give their slot back: the key can use its full cap again."""
        from gatekeeper.auth.claims import Concurrency
        from tests.harness.behavior import Behavior

        token = issuer.token("acme", concurrency=Concurrency(requests=2, streams=2))
        headers = {"authorization": f"Bearer {token}"}
        for _ in range(2):  # read the first event of a stream, then hang up
            with httpx.stream(
                "POST",
                f"{gw.base_url}/chat/completions",
                json=chat("", stream=True),
                headers=headers,
                timeout=10,
            ) as r:
                assert r.status_code == 200
                next(r.iter_lines())
        slow_upstream.script.push(Behavior(status=400), Behavior(status=400))
        for _ in range(2):
            r = httpx.post(
                f"{gw.base_url}/chat/completions", json=chat(""), headers=headers, timeout=10
            )
            assert r.status_code == 400
        client = sdk(gw, token)
        msgs = [{"role": "user", "content": "hi"}]

        def both_fit() -> bool:
            results = in_parallel(
                *[
                    lambda: client.chat.completions.create(model="gpt-4o-mini", messages=msgs)
                    for _ in range(2)
                ]
            )
            return all(not isinstance(r, Exception) for r in results)

        wait_until(both_fit, 15, "both slots to be free again")


# ---------------------------------------------------------------------- the shield


def bad_signature(token: str) -> str:
    """The same token with one signature byte changed: valid kid, bad signature."""
    version, purpose, payload, footer = token.split(".")
    i = len(payload) - 20
    flipped = payload[:i] + ("A" if payload[i] != "A" else "B") + payload[i + 1 :]
    return f"{version}.{purpose}.{flipped}.{footer}"


def metric(gw: GatewayProcess, name: str, headers: dict[str, str] | None = None) -> float:
    text = httpx.get(f"{gw.url}/metrics", headers=headers or {}, timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def post_as(gw: GatewayProcess, token: str, **kw: Any) -> httpx.Response:
    return httpx.post(
        f"{gw.base_url}/chat/completions",
        json=chat(""),
        headers={"authorization": f"Bearer {token}", **kw.pop("headers", {})},
        timeout=10,
        **kw,
    )


class TestShield:
    @pytest.fixture
    def gw(
        self, start_gateway: Callable[..., GatewayProcess], fake_openai: FakeOpenAI
    ) -> GatewayProcess:
        return start_gateway(
            providers=[openai_provider("openai", fake_openai)],
            models=[chat_model("gpt-4o-mini", "openai")],
            shield={
                "exempt": [],
                "trusted_proxies": ["127.0.0.1/32"],
                "auth_failures_burst": 5,
                "auth_failures_per_min": 0.01,
                "alert_failures": 5,
                "alert_interval_s": 1,
            },
        )

    def test_a_flood_of_one_bad_token_costs_one_signature_check(
        self, gw: GatewayProcess, issuer: Issuer
    ) -> None:
        """200 requests with the same bad-signature token (valid kid) are all 401, but
        the gateway checks the signature once: the negative cache answers the rest."""
        forged = bad_signature(issuer.token())
        before = metric(gw, "gatekeeper_token_verifications_total")
        with httpx.Client(timeout=10) as client:
            for i in range(200):  # a new client address each time: the shield stays out
                r = client.post(
                    f"{gw.base_url}/chat/completions",
                    json=chat(""),
                    headers={"authorization": f"Bearer {forged}", "x-forwarded-for": f"10.1.{i}.1"},
                )
                assert r.status_code == 401
                assert r.json()["error"]["message"] == "bad token signature"
        assert metric(gw, "gatekeeper_token_verifications_total") - before == 1
        assert metric(gw, 'gatekeeper_auth_failures_total{reason="bad_signature"}') >= 200

    def test_failed_auths_hold_an_address_but_not_its_known_good_tokens(
        self, gw: GatewayProcess, issuer: Issuer
    ) -> None:
        """After auth_failures_burst failures an address is held: new tokens get 429
        without being verified; a token the gateway already accepted still works."""
        known = issuer.token()
        assert post_as(gw, known).status_code == 200
        xff = {"x-forwarded-for": "10.9.9.9"}
        for _ in range(5):
            assert post_as(gw, "v4.public.garbage", headers=xff).status_code == 401
        held = post_as(gw, issuer.token(), headers=xff)
        assert held.status_code == 429
        assert held.json()["error"]["code"] == "auth_failures_exceeded"
        assert held.headers["retry-after"]
        assert post_as(gw, known, headers=xff).status_code == 200
        other = post_as(gw, "v4.public.garbage", headers={"x-forwarded-for": "10.9.9.10"})
        assert other.status_code == 401  # another client behind the proxy is not held

    def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
        self, gw: GatewayProcess, issuer: Issuer
    ) -> None:
        """From 127.0.0.2 (not a trusted proxy) X-Forwarded-For is ignored: changing it
        does not escape the hold on that address."""
        untrusted = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=untrusted, timeout=10) as client:

            def bad(i: int) -> int:
                return client.post(
                    f"{gw.base_url}/chat/completions",
                    json=chat(""),
                    headers={"authorization": "Bearer nope", "x-forwarded-for": f"10.2.{i}.1"},
                ).status_code

            assert [bad(i) for i in range(5)] == [401] * 5
            assert bad(99) == 429  # a fresh forwarded address: still the same peer

    async def test_a_burst_of_failures_raises_one_alert(
        self, gw: GatewayProcess, nats_server: Any
    ) -> None:
        """Failures over alert_failures in an interval publish one BH_ALERTS
        ``auth_failures`` alert naming the worst addresses."""
        import asyncio

        import nats

        nc = await nats.connect(nats_server.url)
        sub = await nc.subscribe("bh.alerts.auth_failures")
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(12):
                await client.post(
                    f"{gw.base_url}/chat/completions",
                    json=chat(""),
                    headers={"authorization": "Bearer nope", "x-forwarded-for": f"10.3.{i % 2}.1"},
                )
        msg = await sub.next_msg(timeout=5)
        alert = orjson.loads(msg.data)
        assert alert["type"] == "auth_failures" and alert["failures"] >= 5
        assert alert["top"][0]["ip"].startswith("10.3.")
        with pytest.raises(asyncio.TimeoutError):
            while True:  # no second alert for the same interval's failures
                extra = orjson.loads((await sub.next_msg(timeout=1.5)).data)
                assert extra["failures"] < 5
        await nc.close()


class TestTokenLifetime:
    def test_tokens_living_longer_than_the_maximum_are_refused(
        self,
        start_gateway: Callable[..., GatewayProcess],
        fake_openai: FakeOpenAI,
        issuer: Issuer,
    ) -> None:
        """auth.max_token_lifetime = 1d: a 30-day token is refused (401, reason in the
        metric), a 12-hour one is served."""
        from datetime import timedelta

        gw = start_gateway(
            providers=[openai_provider("openai", fake_openai)],
            models=[chat_model("gpt-4o-mini", "openai")],
            auth={"max_token_lifetime": "1d"},
        )
        long_lived = post_as(gw, issuer.token(ttl=timedelta(days=30)))
        assert long_lived.status_code == 401
        assert "max_token_lifetime" in long_lived.json()["error"]["message"]
        assert post_as(gw, issuer.token(ttl=timedelta(hours=12))).status_code == 200
        assert metric(gw, 'gatekeeper_auth_failures_total{reason="lifetime_too_long"}') == 1

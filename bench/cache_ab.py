"""The result cache end to end, one gateway, one run (issue 19's two bars).

    .venv/bin/python -m bench.cache_ab [--rounds 7] [--requests 300] [--upstream-ms 0]

Starts the bench upstream, a nats-server and one gateway with ``cache.enabled``, then
alternates, round by round, three kinds of sequential requests on one keep-alive
connection:

* ``off``: a key whose ``cache`` claim opts it out (``BYPASS``: no lookup, no store);
* ``miss``: a key that is cached, every prompt new (0 % hit rate: the lookup, the miss,
  the signed store of the answer);
* ``lookup``: the same with ``Cache-Control: no-store`` (the lookup and the miss only);
* ``hit``: the same key asking one prompt again and again (served from ``BH_CACHE``).

``--upstream-ms N``: the upstream waits N ms before each unary reply (a model's time to
answer; 0, the default, answers at once).

Printed: the median over rounds of each kind's p50 and p90 latency, then ``miss ÷ off``
(the cost of a miss, bar ≤ 1.05×) and ``miss ÷ hit`` (how much faster a hit is, bar ≥ 5×).
Sequential requests leave the gateway mostly idle, so its CPU per request would be mostly
its background loops: throughput and CPU are ``bench.run``'s business.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import percentile
from bench.run import start_server
from gatekeeper.auth.claims import CacheClaim
from gatekeeper.bus.embedded import EmbeddedNats, free_port
from tests.harness.gateway import GatewayProcess, Issuer, base_config, chat_model

MODEL = "gpt-4o-mini"
KINDS = ("off", "lookup", "miss", "hit")


def ask(
    client: httpx.Client, token: str, content: str, cache_control: str | None = None
) -> tuple[float, str]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0}
    headers = {"authorization": f"Bearer {token}"}
    if cache_control:
        headers["cache-control"] = cache_control
    t0 = time.perf_counter()
    r = client.post("/v1/chat/completions", json=body, headers=headers)
    took = time.perf_counter() - t0
    r.raise_for_status()
    return took, r.headers.get("x-gatekeeper-cache", "")


def surroundings(
    stack: contextlib.ExitStack, tmp: Path, upstream_ms: float = 0.0
) -> tuple[EmbeddedNats, Issuer, Path, dict[str, Any]]:
    """What a cache bench's gateways need: the bench upstream (as a provider), a
    nats-server, an issuer and a cache secret file; stopped when ``stack`` closes."""
    up_port = free_port()
    delay = ["--reply-delay-ms", str(upstream_ms)] if upstream_ms else []
    start_server(stack, "bench.upstream", delay, tmp, up_port)
    nats = EmbeddedNats(tmp / "nats", name="cache-bench")
    stack.callback(nats.stop)
    nats.start()
    secret = tmp / "cache.secret"
    secret.write_bytes(b"b" * 32)
    secret.chmod(0o600)
    provider = {
        "name": "bench",
        "kind": "openai",
        "base_url": f"http://127.0.0.1:{up_port}/v1",
        "api_key": "sk-bench",
    }
    return nats, Issuer(tmp / "issuer"), secret, provider


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--requests", type=int, default=300, help="per kind and round")
    p.add_argument(
        "--upstream-ms", type=float, default=0.0, help="the upstream's time to a unary reply"
    )
    opts = p.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gk-cache-ab-")))
        nats, issuer, secret, provider = surroundings(stack, tmp, opts.upstream_ms)
        config = base_config(
            [provider],
            [chat_model(MODEL, "bench")],
            issuer,
            tmp / "state",
            audit={"mode": "strict"},
            cache={"enabled": True, "key_secret_file": str(secret)},
        )
        gw = GatewayProcess(config, tmp / "gw", nats.url)
        stack.callback(gw.stop)
        gw.start(timeout=60)
        limits = {"budget_tokens": 10**12, "rpm": 10**9, "tpm": 10**12}
        off = issuer.token("bench", cache=CacheClaim(enabled=False), **limits)
        on = issuer.token("bench", cache=CacheClaim(ttl_s=3600), **limits)
        client = stack.enter_context(httpx.Client(base_url=gw.url, timeout=30))
        ask(client, on, "the hit prompt")  # stored: every later ask of it is a hit
        for i in range(200):  # warm-up
            ask(client, off, f"warm {i}")
        stats: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
        n = opts.requests
        for r in range(opts.rounds):
            for kind in KINDS:
                took = []
                for i in range(n):
                    if kind == "hit":
                        t, seen = ask(client, on, "the hit prompt")
                        assert seen == "HIT", seen
                    elif kind == "lookup":
                        t, seen = ask(client, on, f"{kind} {r} {i}", "no-store")
                        assert seen == "MISS", seen
                    else:
                        t, seen = ask(client, off if kind == "off" else on, f"{kind} {r} {i}")
                        assert seen == ("MISS" if kind == "miss" else "BYPASS"), (kind, seen)
                    took.append(t)
                stats[kind].append((percentile(took, 50) * 1e3, percentile(took, 90) * 1e3))
        med = {k: (statistics.median(a for a, _ in v), statistics.median(c for _, c in v))
               for k, v in stats.items()}  # fmt: skip
        for kind, (p50, p90) in med.items():
            print(f"{kind:<5} p50 {p50:7.3f} ms   p90 {p90:7.3f} ms")
        print(
            f"miss ÷ off: p50 {med['miss'][0] / med['off'][0]:.3f}×, "
            f"p90 {med['miss'][1] / med['off'][1]:.3f}×;  "
            f"lookup ÷ off: p50 {med['lookup'][0] / med['off'][0]:.3f}×;  "
            f"miss ÷ hit: p50 {med['miss'][0] / med['hit'][0]:.2f}× "
            f"(medians of {opts.rounds} rounds × {n} requests)"
        )


if __name__ == "__main__":
    main()

"""Interactive latency with and without a batch running on the same gateway node.

    nice -n 10 .venv/bin/python -m bench.batch_interference [--requests 300] [--lines 2000]

One nats-server, one fake upstream that answers after ``--upstream-ms``, one gateway
(batch workers at their defaults). Phase 1: ``--requests`` sequential interactive chat
completions, no batch. Phase 2: the same while a batch of ``--lines`` lines runs on the
node. Prints p50/p99 of each phase, their ratio, and how many batch lines ran during
phase 2. Bounded in count and time; traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from gatekeeper.bus.embedded import EmbeddedNats
from tests.harness.behavior import Behavior
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.gateway import GatewayProcess, Issuer, base_config, chat_model

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def interactive(client: httpx.Client, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.post("/v1/chat/completions", json=BODY)
        out.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.text
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--upstream-ms", type=float, default=20.0)
    ap.add_argument("--max-in-flight", type=int, default=0, help="capacity lanes (0: off)")
    ap.add_argument("--workers", type=int, default=2, help="batches.workers")
    args = ap.parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        FakeOpenAI(Behavior(first_byte_delay=args.upstream_ms / 1000)) as fake,
    ):
        tmp = Path(tmp_name)
        nats = EmbeddedNats(tmp / "nats", name="bench-nats")
        nats.start()
        issuer = Issuer(tmp / "issuer")
        provider = {
            "name": "openai",
            "kind": "openai",
            "base_url": fake.url,
            "api_key": fake.api_key,
        }
        cfg = base_config(
            [provider],
            [chat_model("gpt-4o-mini", "openai")],
            issuer,
            tmp / "state",
            capacity={"max_in_flight": args.max_in_flight},
            batches={"workers": args.workers},
        )
        gw = GatewayProcess(cfg, tmp / "gw", nats.url)
        try:
            gw.start()
            token = issuer.token()
            headers = {"authorization": f"Bearer {token}"}
            with httpx.Client(base_url=gw.url, headers=headers, timeout=30) as client:
                interactive(client, 20)  # warm-up
                alone = interactive(client, args.requests)
                rows = [
                    {
                        "custom_id": f"l{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": BODY,
                    }
                    for i in range(args.lines)
                ]
                content = b"".join(orjson.dumps(r) + b"\n" for r in rows)
                up = client.post(
                    "/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}
                ).json()
                batch = client.post(
                    "/v1/batches",
                    json={
                        "input_file_id": up["id"],
                        "endpoint": "/v1/chat/completions",
                        "completion_window": "24h",
                    },
                ).json()
                time.sleep(1.0)  # the workers have picked up their slices
                before = client.get(f"/v1/batches/{batch['id']}").json()["request_counts"]
                beside = interactive(client, args.requests)
                after = client.get(f"/v1/batches/{batch['id']}").json()
            ran = after["request_counts"]["completed"] - before["completed"]
            report = {
                "requests": args.requests,
                "upstream_ms": args.upstream_ms,
                "max_in_flight": args.max_in_flight,
                "workers": args.workers,
                "alone_p50_ms": round(percentile(alone, 50), 2),
                "alone_p99_ms": round(percentile(alone, 99), 2),
                "with_batch_p50_ms": round(percentile(beside, 50), 2),
                "with_batch_p99_ms": round(percentile(beside, 99), 2),
                "p99_ratio": round(percentile(beside, 99) / percentile(alone, 99), 3),
                "batch_lines_during": ran,
                "batch_status_after": after["status"],
            }
            print(orjson.dumps(report).decode())
        finally:
            gw.stop()
            nats.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

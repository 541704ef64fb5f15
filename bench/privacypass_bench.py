"""What a Privacy Pass redemption adds to the request path, and what issuance costs.

Run: ``.venv/bin/python bench/privacypass_bench.py [iterations]``. Starts its own
nats-server (JetStream, temp store). Reports p50 of:

- parse: the ``Authorization: PrivateToken`` header to a ``Token`` (no crypto);
- verify: the VOPRF check, ``Evaluate(skS, token_input)`` == authenticator;
- KV create: the double-spend marker on a real nats-server (loopback round trip);
- redeem: the whole ``Redeemer.redeem`` (parse + verify + KV create);
- issue: one ``TokenResponse`` (blind evaluation + DLEQ proof), and per pass in a
  batch of 100; and the client's blind + finalize per pass.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import nats

from gatekeeper.auth.claims import Claims
from gatekeeper.budget.ledger import BudgetLedger
from gatekeeper.bus.embedded import EmbeddedNats
from gatekeeper.passes import wire
from gatekeeper.passes.issuer import Issuer
from gatekeeper.passes.keys import KeyStore
from gatekeeper.passes.redeem import Redeemer
from gatekeeper.passes.spent import KvSpentStore
from gatekeeper.passes.wallet import begin, complete


def _p50_us(call: Callable[[], object], n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - t)
    return statistics.median(samples) / 1000


async def _ap50_us(make: Callable[[int], Awaitable[object]], n: int) -> float:
    samples = []
    for i in range(n):
        t = time.perf_counter_ns()
        await make(i)
        samples.append(time.perf_counter_ns() - t)
    return statistics.median(samples) / 1000


def _claims(tenant: str, sub: str) -> Claims:
    t = datetime.fromtimestamp(0, UTC)
    return Claims("gatekeeper", sub, "j", t, t, t, tenant)


async def main(n: int) -> None:
    keys = KeyStore(b"b" * 32, {"bench": _claims("bench", "tenant=bench")})
    key = keys.current("bench")
    assert key is not None
    challenge = wire.token_challenge("gatekeeper")
    issuer = Issuer(keys, BudgetLedger("bench"), default_count=10**9)
    api = _claims("bench", "key_bench")

    def fetch(count: int) -> list[str]:
        pending, body = begin(key.public_key, challenge, count, batch=True)
        return complete(pending, issuer.issue(api, body, batch=True))

    tokens: list[str] = []
    while len(tokens) < n:
        tokens += fetch(min(wire.MAX_BATCH, n - len(tokens)))
    headers = [f'PrivateToken token="{t}"' for t in tokens]
    parsed = wire.parse_private_token(headers[0])
    print(f"parse header        {_p50_us(lambda: wire.parse_private_token(headers[0]), n):9.1f} µs")
    verify = key.evaluator.evaluate_known_input
    print(f"verify (VOPRF)      {_p50_us(lambda: verify(parsed.token_input), n):9.1f} µs")
    _, body = begin(key.public_key, challenge, 1, batch=False)
    print(
        f"issue 1 (+proof)    {_p50_us(lambda: issuer.issue(api, body, batch=False), 200):9.1f} µs"
    )
    start = time.perf_counter()
    fetch(100)
    print(
        f"issue+client, per pass in a batch of 100  {(time.perf_counter() - start) * 1e4:9.1f} µs"
    )

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", name="bench-nats")
        server.start()
        try:
            nc = await nats.connect(server.url)
            spent = KvSpentStore(nc.jetstream(), ttl_s=7200)
            await spent.spend(key.epoch, b"warm" * 8, b"\x00" * 32)
            kv_us = await _ap50_us(
                lambda i: spent.spend(key.epoch, b"kv..." * 6 + b"..", i.to_bytes(32, "big")), n
            )
            print(f"KV create (spend)   {kv_us:9.1f} µs")
            redeemer = Redeemer(keys, spent, challenge)
            redeem_us = await _ap50_us(lambda i: redeemer.redeem(headers[i]), n)
            print(f"redeem (all three)  {redeem_us:9.1f} µs  ({n} passes)")
            await nc.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 500))

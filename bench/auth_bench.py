"""How long TokenVerifier.verify_bearer takes: p50 for cached and uncached tokens.

Run: ``.venv/bin/python bench/auth_bench.py [iterations]``. The cached path should
cost about a dict lookup (target: <= 20 µs); the uncached path is dominated by one
Ed25519 signature check.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from gatekeeper.auth.keyfiles import mint
from gatekeeper.auth.paserk import generate_secret_key, public_key_of
from gatekeeper.auth.verifier import Keyring, TokenVerifier


def _p50_us(call: Callable[[], object], iterations: int) -> float:
    samples = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def main(iterations: int = 20_000) -> None:
    secret = generate_secret_key()
    header = "Bearer " + mint(
        secret, "bench", budget_tokens=1_000_000, rpm=600, models=["gpt-4o", "claude-*"]
    )
    keyring = Keyring([public_key_of(secret)])
    cached = TokenVerifier(keyring)
    uncached = TokenVerifier(keyring, cache_size=0)
    cached.verify_bearer(header)  # warm the cache
    cached_us = _p50_us(lambda: cached.verify_bearer(header), iterations)
    uncached_us = _p50_us(lambda: uncached.verify_bearer(header), max(1, iterations // 10))
    print(f"token length        {len(header) - len('Bearer ')} chars")
    print(f"cached verify p50   {cached_us:8.2f} µs  ({iterations} iterations)")
    print(f"uncached verify p50 {uncached_us:8.2f} µs  ({max(1, iterations // 10)} iterations)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)

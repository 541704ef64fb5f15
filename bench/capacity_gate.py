"""Cost of the priority lanes on an unsaturated node: one enter + release per request.

nice -n 10 .venv/bin/python bench/capacity_gate.py
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from gatekeeper.auth.claims import Claims
from gatekeeper.budget.concurrency import ConcurrencyLimiter
from gatekeeper.capacity.gate import CapacityGate
from gatekeeper.capacityconfig import CapacityConfig

N = 200_000


def run(gate: CapacityGate | None, request: Any) -> float:
    limiter = ConcurrencyLimiter()
    now = datetime.now(UTC)
    claims = Claims(iss="i", sub="k1", jti="j", iat=now, nbf=now, exp=now, tenant="acme")
    t0 = time.perf_counter()
    for _ in range(N):
        slot = limiter.acquire(claims, False)
        if gate is not None:
            gate.enter(slot, claims, request)
        slot.release()
    return (time.perf_counter() - t0) / N * 1e9


def main() -> None:
    off = min(run(None, None) for _ in range(5))
    on = min(run(CapacityGate(CapacityConfig(max_in_flight=64), 60.0), None) for _ in range(5))
    reserved = CapacityConfig(max_in_flight=64, reserved={"gold": 8})
    res = min(run(CapacityGate(reserved, 60.0), None) for _ in range(5))
    print(f"slot acquire+release, lanes off:        {off:7.0f} ns")
    print(f"  + lanes on, not saturated:            {on:7.0f} ns  (+{on - off:.0f} ns)")
    print(f"  + lanes on with a reservation:        {res:7.0f} ns  (+{res - off:.0f} ns)")


if __name__ == "__main__":
    main()

"""Genuine values are put back at most once a second per key, and the last request of a
burst is always carried out."""

from __future__ import annotations

import asyncio

from gatekeeper.bus.putback import PutBack


async def test_a_burst_becomes_one_put_now_and_one_at_the_end_of_the_window() -> None:
    now = [0.0]
    puts: list[str] = []
    putback = PutBack(puts.append, every_s=0.05, clock=lambda: now[0])
    for _ in range(100):
        putback("k")
    assert puts == ["k"]
    now[0] = 0.01
    putback("other")
    assert puts == ["k", "other"]
    await asyncio.sleep(0.1)
    assert puts == ["k", "other", "k"]


async def test_forgotten_keys_are_not_put() -> None:
    now = [0.0]
    puts: list[str] = []
    putback = PutBack(puts.append, every_s=0.05, clock=lambda: now[0])
    putback("k")
    putback("k")
    putback.forget(["k"])
    await asyncio.sleep(0.1)
    assert puts == ["k"]

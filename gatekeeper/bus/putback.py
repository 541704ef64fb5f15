"""Putting genuine values back over refused ones, at a bounded rate.

A refused value (or a bare delete) sits in a KV bucket over the genuine value; a node
that holds the genuine one puts it back so that nodes starting later read it. A flood
of forgeries must not become a flood of puts: each key is put back at most once per
``every_s``; a request inside that window is carried out at its end, with the value
held then, so the last forgery of a burst is always answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

__all__ = ["PutBack"]


class PutBack:
    def __init__(
        self,
        put: Callable[[str], None],
        *,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.put = put  # puts the genuine value held for a key *at call time*
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._waiting: set[str] = set()

    def __call__(self, key: str) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is None or now - last >= self.every_s:
            self._last[key] = now
            self.put(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            delay = self.every_s - (now - last)
            asyncio.get_running_loop().call_later(delay, self._due, key)

    def _due(self, key: str) -> None:
        if key in self._waiting:
            self._waiting.discard(key)
            self._last[key] = self.clock()
            self.put(key)

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._last.pop(key, None)
            self._waiting.discard(key)

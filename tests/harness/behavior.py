"""How a scripted fake upstream answers one request.

Tests push ``Behavior`` values onto a fake provider's script; each request pops the
next one (or uses the default when the script is empty). Every fake provider
(OpenAI-compatible, Anthropic) honours every field the same way.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Behavior:
    status: int = 200
    # Body for an error status; None means the provider's own error shape.
    error_message: str = "scripted failure"
    retry_after: float | None = None  # sent as a Retry-After header (seconds)
    first_byte_delay: float = 0.0  # seconds before the status line is sent
    chunk_delay: float = 0.0  # seconds between stream chunks
    text: str = "Hello from the fake upstream."  # the completion text
    chunks: int = 3  # how many content pieces a stream carries
    cut_after_chunks: int | None = None  # drop the TCP connection after N chunks
    prompt_tokens: int = 7
    completion_tokens: int = 5
    extra_headers: dict[str, str] = field(default_factory=dict)


class Script:
    """A thread-safe queue of behaviours plus a record of every request seen."""

    def __init__(self, default: Behavior | None = None) -> None:
        self._lock = threading.Lock()
        self._queue: collections.deque[Behavior] = collections.deque()
        self.default = default or Behavior()
        self.requests: list[dict[str, object]] = []
        self.headers: list[dict[str, str]] = []
        self.disconnects = 0  # client went away before we finished a stream

    def push(self, *behaviors: Behavior) -> None:
        with self._lock:
            self._queue.extend(behaviors)

    def next(self, body: dict[str, object], headers: dict[str, str]) -> Behavior:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            return self._queue.popleft() if self._queue else self.default

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.headers.clear()
            self.disconnects = 0

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
    hold: threading.Event | None = None  # answer only once the test sets it (a stalled upstream)
    chunk_delay: float = 0.0  # seconds between stream chunks
    text: str = "Hello from the fake upstream."  # the completion text
    chunks: int = 3  # how many content pieces a stream carries
    cut_after_chunks: int | None = None  # drop the TCP connection after N chunks
    stall_after_chunks: int | None = None  # after N chunks, send nothing until the client goes
    error_after_chunks: int | None = None  # after N chunks, an error event ends the stream
    # A resumed request (its messages carry the assistant's turn so far, as a prefill or
    # before a "continue" instruction): answer with the rest of ``text`` after that turn,
    # repeating its last ``resume_overlap`` characters (as a model told to continue may).
    resume_overlap: int | None = None
    prompt_tokens: int = 7
    completion_tokens: int = 5
    extra_headers: dict[str, str] = field(default_factory=dict)
    # Usage reporting, as some OpenAI-compatible servers (vLLM, Ollama, proxies) do it:
    omit_usage: bool = False  # no ``usage`` in the JSON body, no usage chunk in a stream
    zero_usage: bool = False  # ``usage: {0, 0}`` whatever was generated
    # Bill like an upstream that generates to the cap: n × max_tokens completion tokens,
    # and 4,096 per choice when the request names no cap (Anthropic's default).
    bill_to_cap: bool = False
    # Stop at the request's cap as real servers do: the text is cut to 4 characters
    # per ``max_tokens`` (English runs ~4.5 characters per token, so it stays under).
    obey_cap: bool = False


def reply_text(b: Behavior, body: dict[str, object]) -> str:
    """The completion text a fake upstream sends for ``body`` under ``b``."""
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    text = resumed_text(b, body)
    if b.obey_cap and isinstance(cap, int):
        return text[: 4 * cap]
    return text


def resumed_text(b: Behavior, body: dict[str, object]) -> str:
    """``b.text``, or for a resumed request (``resume_overlap``) the rest of it."""
    messages = body.get("messages")
    if b.resume_overlap is None or not isinstance(messages, list):
        return b.text
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    content = turns[-1].get("content") if turns else None
    if isinstance(content, list):  # Anthropic blocks
        content = "".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    if not isinstance(content, str) or not b.text.startswith(content):
        return b.text
    return b.text[max(0, len(content) - b.resume_overlap) :]


def billed(b: Behavior, body: dict[str, object]) -> tuple[int, int]:
    """(prompt, completion) tokens a fake upstream reports for ``body`` under ``b``."""
    if b.zero_usage:
        return 0, 0
    if not b.bill_to_cap:
        return b.prompt_tokens, b.completion_tokens
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or 4096
    n = body.get("n") or 1
    assert isinstance(cap, int) and isinstance(n, int)
    return b.prompt_tokens, n * cap


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

"""The Batch object and its status arithmetic, as OpenAI reports them (pure).

validating -> failed                      (a bad input file: ``errors`` per line)
in_progress -> finalizing -> completed    (every line has a result; verified)
                           -> failed      (verification failed: ``errors`` says why)
                           -> expired     (the completion window ran out)
in_progress/cancelling -> cancelling -> cancelled
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gatekeeper.batches.lines import LineError

WINDOWS = {"24h": 24 * 3600}
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
BATCH_ID = re.compile(r"batch_[0-9a-f]{24}")
_AT = {
    "in_progress": "in_progress_at",
    "finalizing": "finalizing_at",
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelling": "cancelling_at",
    "cancelled": "cancelled_at",
}


def new_id(prefix: str) -> str:
    """``<prefix><24 hex>``: nanoseconds since the epoch, then random, so that ids made
    in the same second still list in the order they were made."""
    return f"{prefix}{time.time_ns():016x}{os.urandom(4).hex()}"


def new_batch(
    batch_id: str,
    endpoint: str,
    input_file_id: str,
    window: str,
    metadata: dict[str, str] | None,
    now: int,
) -> dict[str, Any]:
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": endpoint,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + WINDOWS.get(window, WINDOWS["24h"]),
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata,
    }


def moved(batch: Mapping[str, Any], status: str, now: int, **fields: Any) -> dict[str, Any]:
    """``batch`` in ``status`` with its ``<status>_at`` stamped (and any other fields)."""
    out = {**batch, **fields, "status": status}
    at = _AT.get(status)
    if at is not None and out.get(at) is None:
        out[at] = now
    return out


def with_errors(errors: Iterable[LineError]) -> dict[str, Any]:
    return {"object": "list", "data": [e.to_dict() for e in errors]}


def can_cancel(status: str) -> bool:
    return status in ("validating", "in_progress", "finalizing")


def finished_status(current: str, expired: bool, problems: bool) -> str:
    """Where a batch whose slices are all done ends."""
    if problems:
        return "failed"
    if current == "cancelling":
        return "cancelled"
    return "expired" if expired else "completed"


@dataclass(frozen=True, slots=True)
class Progress:
    """One slice's progress, as its worker records it."""

    done: int = 0
    completed: int = 0
    failed: int = 0
    finished: bool = False  # every line of the slice has a result or will not run
    input_tokens: int = 0  # the recorded usage of the slice's lines so far
    output_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "completed": self.completed,
            "failed": self.failed,
            "finished": self.finished,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }

    def add(self, ok: bool, usage: tuple[int, int]) -> Progress:
        """This progress with one more line done."""
        return Progress(
            self.done + 1,
            self.completed + ok,
            self.failed + (not ok),
            self.finished,
            self.input_tokens + usage[0],
            self.output_tokens + usage[1],
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Progress:
        def n(k: str) -> int:
            v = d.get(k)
            return v if type(v) is int and v >= 0 else 0

        return cls(
            n("done"),
            n("completed"),
            n("failed"),
            d.get("finished") is True,
            n("input_tokens"),
            n("output_tokens"),
        )


def batch_usage(slices: Iterable[Progress]) -> tuple[int, int]:
    """(input, output) tokens of a batch: the sum its slices' workers recorded."""
    tokens_in = tokens_out = 0
    for p in slices:
        tokens_in += p.input_tokens
        tokens_out += p.output_tokens
    return tokens_in, tokens_out


def usage_field(usage: tuple[int, int]) -> dict[str, Any]:
    """The Batch object's ``usage`` (OpenAI's shape)."""
    return {
        "input_tokens": usage[0],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage[1],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage[0] + usage[1],
    }


def live_counts(total: int, slices: Iterable[Progress]) -> dict[str, int]:
    """``request_counts`` of a running batch: the sum of its slices' progress."""
    completed = failed = 0
    for p in slices:
        completed += p.completed
        failed += p.failed
    return {"total": total, "completed": completed, "failed": failed}


def page(
    items: list[dict[str, Any]], after: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Newest first; the page after the item ``after`` (cursor pagination as OpenAI's)."""
    items = sorted(items, key=lambda b: (b.get("created_at") or 0, b.get("id") or ""), reverse=True)
    if after is not None:
        ids = [b.get("id") for b in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return items[:limit], len(items) > limit


def progress_event(
    batch: Mapping[str, Any], slices: Mapping[int, Progress], n_slices: int, now: float
) -> dict[str, Any]:
    """One ``GET /v1/batches/{id}/events`` event: counts, slice states, an ETA.

    The ETA is the time so far per line done, times the lines left (None before the
    first line or after the end).
    """
    counts = batch["request_counts"]
    if batch["status"] not in TERMINAL:
        counts = live_counts(counts["total"], slices.values())
    done = counts["completed"] + counts["failed"]
    finished = sum(1 for p in slices.values() if p.finished)
    running = sum(1 for p in slices.values() if not p.finished)
    eta = None
    started = batch.get("in_progress_at")
    if batch["status"] == "in_progress" and done and started:
        eta = round((now - started) / done * (counts["total"] - done), 1)
    return {
        "id": batch["id"],
        "status": batch["status"],
        "request_counts": counts,
        "slices": {
            "total": n_slices,
            "finished": finished,
            "running": running,
            "queued": max(0, n_slices - finished - running),
        },
        "eta_s": eta,
        "output_file_id": batch.get("output_file_id"),
        "error_file_id": batch.get("error_file_id"),
    }

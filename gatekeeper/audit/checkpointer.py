"""Writing a node's signed checkpoints: a local append-only file and ``BH_CHECKPOINTS``.

Every ``audit.checkpoint_interval_s`` (only when the chain moved) and at stop, the
node signs ``{node, seq, hash, count, ts}`` of its chain, appends it to
``<state_dir>/nodes/<node>/checkpoints.jsonl`` (``O_APPEND``, fsynced; make it
``chattr +a`` and ship it to a write-once store, docs/audit.md) and publishes it to
``bh.checkpoints.<node>``. Periodic, never per request.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from nacl.signing import SigningKey
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from gatekeeper.audit.chain import AuditChain
from gatekeeper.audit.checkpoint import Checkpoint, read_checkpoints, sign_checkpoint
from gatekeeper.bus.streams import checkpoint_subject

__all__ = ["CheckpointLog", "Checkpointer"]

log = structlog.get_logger("gatekeeper.audit")

PUBLISH_TIMEOUT_S = 2.0


class CheckpointLog:
    """A node's local checkpoint file: one JSON line per checkpoint, append-only."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, cp: Checkpoint) -> None:
        """Append one line and fsync it (blocking: run it in a thread)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, cp.to_bytes() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def newest(self) -> Checkpoint | None:
        """The checkpoint with the highest seq in the file (None: no file, or none)."""
        if not self.path.exists():
            return None
        found = [cp for cp in read_checkpoints(self.path) if not isinstance(cp, str)]
        return max(found, key=lambda cp: cp.seq, default=None)


class Checkpointer:
    """Signs and writes the node's checkpoints; ``run`` is the periodic loop."""

    def __init__(
        self,
        node_id: str,
        key: SigningKey,
        chain: AuditChain,
        local: CheckpointLog,
        js: JetStreamContext,
        interval_s: float,
        clock: Callable[[], float] = time.time,
        *,
        written: Checkpoint | None = None,
    ) -> None:
        self.node_id, self.key, self.chain, self.local, self.js = node_id, key, chain, local, js
        self.interval_s, self.clock = interval_s, clock
        self.written = written  # the newest in the local file
        self.unpublished: Checkpoint | None = None  # written, but not in BH_CHECKPOINTS yet

    async def checkpoint(self) -> Checkpoint | None:
        """A checkpoint of the chain now, if it moved since the last one."""
        seq, digest = self.chain.state()
        last = self.written
        if seq and (last is None or (last.seq, last.hash) != (seq, digest)):
            cp = sign_checkpoint(self.key, self.node_id, seq, digest, self.clock())
            await asyncio.to_thread(self.local.append, cp)
            self.written = self.unpublished = cp
        await self._publish()
        return self.written

    async def _publish(self) -> None:
        cp = self.unpublished
        if cp is None:
            return
        try:
            await self.js.publish(
                checkpoint_subject(self.node_id),
                cp.to_bytes(),
                timeout=PUBLISH_TIMEOUT_S,
                headers={"Nats-Msg-Id": f"cp:{cp.node}:{cp.seq}:{cp.hash}"},
            )
        except (NatsError, TimeoutError, OSError) as exc:  # kept locally; sent next time
            log.warning("audit.checkpoint_publish_failed", seq=cp.seq, error=type(exc).__name__)
            return
        if self.unpublished is cp:
            self.unpublished = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.checkpoint()

"""A crash-safe, append-only local spool for audit records that NATS could not take.

One directory per node (a second process opening it gets ``SpoolError``)::

    00000000000000000000.seg   the active segment, named by its base offset
    ack                        the offset replay has acknowledged, decimal text
    lock                       flock()ed while an AuditSpool has the directory open

A segment is records back to back, each framed as::

    length   u32 big-endian   payload size, 1..MAX_RECORD_BYTES
    crc      u32 big-endian   zlib.crc32(length bytes + payload)
    payload  the record bytes (for us: one wire-format JSON record)

Offsets are logical byte positions that are never reused: the segment
``<base>.seg`` starts at offset ``base``. ``pending()`` yields ``(offset,
payload)`` where ``offset`` is the position just *after* the record, so
``ack_through(offset)`` acknowledges that record and everything before it. The ack
file is replaced atomically (write temp, fsync, rename, fsync the directory).

Crash safety: ``append`` writes one frame and ``fdatasync``s before returning. On
open the segment is scanned; a torn or corrupt frame at the tail (a crash
mid-write) and anything after it is cut off and counted in ``discarded_bytes``.
When every record is acknowledged and the segment has grown past ``compact_at``
bytes, a new empty segment starting at the current offset replaces it.

Every method blocks on disk I/O: call them from a thread (``append_async`` does).
Replay is at-least-once — a crash between publishing and ``ack_through`` publishes
those records again — so publish with a dedup id (JetStream ``Nats-Msg-Id``).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from gatekeeper.files import fsync_dir

__all__ = ["MAX_RECORD_BYTES", "AuditSpool", "SpoolError"]

MAX_RECORD_BYTES = 16 * 1024 * 1024
_FRAME = struct.Struct(">II")
_SUFFIX = ".seg"
_ACK = "ack"
_datasync = os.fdatasync if hasattr(os, "fdatasync") else os.fsync


class SpoolError(RuntimeError):
    """The spool directory is in use by another process or is inconsistent."""


def _crc(payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(len(payload).to_bytes(4, "big")))


def _frames(file: BinaryIO, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """``(end position, payload)`` of each intact frame in ``[start, stop)``; stops at damage."""
    file.seek(start)
    position = start
    while position + _FRAME.size <= stop:
        length, crc = _FRAME.unpack(file.read(_FRAME.size))
        if not 0 < length <= MAX_RECORD_BYTES or position + _FRAME.size + length > stop:
            return
        payload = file.read(length)
        if len(payload) != length or _crc(payload) != crc:
            return
        position += _FRAME.size + length
        yield position, payload


def _read_ack(directory: Path) -> int:
    try:
        text = (directory / _ACK).read_text(encoding="ascii")
    except FileNotFoundError:
        return 0
    try:
        return int(text.strip())
    except ValueError:
        raise SpoolError(f"{directory / _ACK} does not hold an offset") from None


def _write_ack(directory: Path, offset: int) -> None:
    temp = directory / f"{_ACK}.tmp"
    with open(temp, "w", encoding="ascii") as out:
        out.write(f"{offset}\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, directory / _ACK)
    fsync_dir(directory)


def _lock_directory(directory: Path) -> int:
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolError(f"audit spool {directory} is open in another process") from None
    return fd


class AuditSpool:
    """Append-only, fsynced, replayable record spool in ``directory`` (see module doc)."""

    def __init__(self, directory: str | os.PathLike[str], *, compact_at: int = 1 << 20) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.compact_at = compact_at
        self.discarded_bytes = 0
        self._lock = threading.Lock()
        self._lock_fd = _lock_directory(self.directory)
        self._fd = -1
        try:
            self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- opening and recovery ------------------------------------------------------

    def _segment(self, base: int) -> Path:
        return self.directory / f"{base:020d}{_SUFFIX}"

    def _open(self) -> None:
        bases = sorted(int(path.stem) for path in self.directory.glob(f"*{_SUFFIX}"))
        ack = _read_ack(self.directory)
        if bases and bases[-1] > ack and len(bases) > 1:
            raise SpoolError(f"audit spool {self.directory} has unacknowledged old segments")
        for old in bases[:-1]:  # left over from a compaction cut short
            self._segment(old).unlink()
        self._base = bases[-1] if bases else ack
        self._ack = max(ack, self._base)
        self._fd = os.open(self._segment(self._base), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._end, self._depth = self._recover()
        if self._ack > self._end:  # acknowledged records are gone: nothing to replay
            self._rotate(self._ack)
        elif self._ack == self._end and self._end > self._base:
            self._rotate(self._end)
        fsync_dir(self.directory)

    def _recover(self) -> tuple[int, int]:
        """Scan the segment: cut a torn tail; return ``(end offset, records after ack)``."""
        size = os.fstat(self._fd).st_size
        ack_position = self._ack - self._base
        valid, depth, ack_seen = 0, 0, ack_position == 0
        with open(self._segment(self._base), "rb") as file:
            for valid, _payload in _frames(file, 0, size):
                if valid > ack_position:
                    depth += 1
                ack_seen = ack_seen or valid == ack_position
        if valid < size:
            self.discarded_bytes = size - valid
            os.ftruncate(self._fd, valid)
            os.fsync(self._fd)
        if not ack_seen and ack_position < valid:
            raise SpoolError(f"audit spool ack {self._ack} is not at a record boundary")
        return self._base + valid, depth

    def _rotate(self, new_base: int) -> None:
        """Start an empty segment at ``new_base``; drop the old one (fully acknowledged)."""
        old = self._base
        fd = os.open(self._segment(new_base), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fsync_dir(self.directory)
        os.close(self._fd)
        self._fd, self._base, self._end, self._ack, self._depth = (
            fd,
            new_base,
            new_base,
            new_base,
            0,
        )
        if old != new_base:
            self._segment(old).unlink()
            fsync_dir(self.directory)

    # -- the API ---------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """How many records are spooled and not yet acknowledged."""
        return self._depth

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    @property
    def acked(self) -> int:
        """The offset acknowledged so far."""
        return self._ack

    def append(self, record: bytes) -> None:
        """Append one record and fsync it. Blocking: run it in a thread."""
        if not 0 < len(record) <= MAX_RECORD_BYTES:
            raise ValueError(f"a spooled record is 1..{MAX_RECORD_BYTES} bytes")
        frame = _FRAME.pack(len(record), _crc(record)) + record
        with self._lock:
            self._check_open()
            try:
                written = 0
                while written < len(frame):
                    written += os.write(self._fd, frame[written:])
                _datasync(self._fd)
            except OSError:
                os.ftruncate(self._fd, self._end - self._base)  # no half frame left behind
                raise
            self._end += len(frame)
            self._depth += 1

    async def append_async(self, record: bytes) -> None:
        """``append`` in a worker thread, for use on the event loop."""
        await asyncio.to_thread(self.append, record)

    def pending(self) -> Iterator[tuple[int, bytes]]:
        """Unacknowledged records in append order, as ``(offset after it, payload)``.

        Covers the records present when iteration starts; later appends show up in
        the next call. Nothing is consumed until ``ack_through``.
        """
        with self._lock:
            self._check_open()
            base, start, stop = self._base, self._ack, self._end
            file = open(self._segment(base), "rb")  # noqa: SIM115 - closed below
        with file:
            reached = start - base
            for reached, payload in _frames(file, start - base, stop - base):
                yield base + reached, payload
            if reached != stop - base:
                raise SpoolError(f"audit spool record at offset {base + reached} is damaged")

    def ack_through(self, offset: int) -> None:
        """Mark every record up to ``offset`` (from ``pending``) as replayed; durable.

        Each call fsyncs the ack file, so acknowledge in batches. Going backwards is
        a no-op; an offset that is not a record boundary raises ``ValueError``.
        """
        with self._lock:
            self._check_open()
            if offset <= self._ack:
                return
            count = self._count_through(offset)
            _write_ack(self.directory, offset)
            self._ack = offset
            self._depth -= count
            size = self._end - self._base
            if self._ack == self._end and size > 0 and size >= self.compact_at:
                self._rotate(self._end)

    def compact(self) -> bool:
        """Start a fresh segment now if everything is acknowledged; True if it did."""
        with self._lock:
            self._check_open()
            if self._ack != self._end or self._end == self._base:
                return False
            self._rotate(self._end)
            return True

    def _count_through(self, offset: int) -> int:
        if offset > self._end:
            raise ValueError(f"offset {offset} is past the end of the spool ({self._end})")
        position, count = self._ack - self._base, 0
        while position < offset - self._base:
            length, _crc_value = _FRAME.unpack(os.pread(self._fd, _FRAME.size, position))
            position += _FRAME.size + length
            count += 1
        if position != offset - self._base:
            raise ValueError(f"offset {offset} is not a record boundary")
        return count

    def _check_open(self) -> None:
        if self._fd < 0:
            raise SpoolError("audit spool is closed")

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                os.close(self._lock_fd)
                self._fd = -1

    def __enter__(self) -> AuditSpool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

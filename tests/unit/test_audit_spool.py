"""The local audit spool: durable appends, in-order replay, acks that survive a crash."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from gatekeeper.audit import AuditSpool, SpoolError


def segment(directory: Path) -> Path:
    (path,) = directory.glob("*.seg")
    return path


def payloads(spool: AuditSpool) -> list[bytes]:
    return [payload for _offset, payload in spool.pending()]


def fill(spool: AuditSpool, count: int) -> list[int]:
    """Append record-0 … record-(count-1); return their offsets."""
    for n in range(count):
        spool.append(f"record-{n}".encode())
    return [offset for offset, _payload in spool.pending()]


class TestAppendAndReplay:
    def test_replays_records_in_append_order(self, tmp_path: Path) -> None:
        """pending() yields every record, oldest first, with increasing offsets."""
        with AuditSpool(tmp_path) as spool:
            offsets = fill(spool, 5)
            assert payloads(spool) == [f"record-{n}".encode() for n in range(5)]
            assert offsets == sorted(offsets) and len(set(offsets)) == 5

    def test_records_survive_reopening(self, tmp_path: Path) -> None:
        """Appends are on disk when append() returns."""
        with AuditSpool(tmp_path) as spool:
            fill(spool, 3)
        with AuditSpool(tmp_path) as spool:
            assert payloads(spool) == [b"record-0", b"record-1", b"record-2"]

    def test_frames_are_length_crc_payload(self, tmp_path: Path) -> None:
        """The documented format: u32 length, u32 CRC-32 of length+payload, payload."""
        with AuditSpool(tmp_path) as spool:
            spool.append(b"hello")
        data = segment(tmp_path).read_bytes()
        length = struct.pack(">I", 5)
        assert data == length + struct.pack(">I", zlib.crc32(length + b"hello")) + b"hello"

    def test_pending_covers_the_records_present_when_it_starts(self, tmp_path: Path) -> None:
        """An append during replay shows up in the next pending() call, not this one."""
        with AuditSpool(tmp_path) as spool:
            fill(spool, 2)
            seen = []
            for _offset, payload in spool.pending():
                seen.append(payload)
                spool.append(b"late")
            assert seen == [b"record-0", b"record-1"]
            assert payloads(spool)[-2:] == [b"late", b"late"]

    def test_refuses_empty_or_huge_records(self, tmp_path: Path) -> None:
        """A record is 1 byte to 16 MiB."""
        with AuditSpool(tmp_path) as spool, pytest.raises(ValueError):
            spool.append(b"")

    async def test_append_async_runs_in_a_thread(self, tmp_path: Path) -> None:
        """The event loop's way to append."""
        with AuditSpool(tmp_path) as spool:
            await spool.append_async(b"from the loop")
            assert payloads(spool) == [b"from the loop"]


class TestAck:
    def test_acked_records_are_not_replayed(self, tmp_path: Path) -> None:
        """ack_through(offset) retires that record and everything before it."""
        with AuditSpool(tmp_path) as spool:
            offsets = fill(spool, 4)
            spool.ack_through(offsets[1])
            assert payloads(spool) == [b"record-2", b"record-3"]

    def test_ack_survives_reopening(self, tmp_path: Path) -> None:
        """A restarted node does not publish acknowledged records again."""
        with AuditSpool(tmp_path) as spool:
            offsets = fill(spool, 5)
            spool.ack_through(offsets[1])
        with AuditSpool(tmp_path) as spool:
            assert payloads(spool) == [b"record-2", b"record-3", b"record-4"]
            assert spool.depth == 3
            assert spool.acked == offsets[1]

    def test_depth_counts_unacknowledged_records(self, tmp_path: Path) -> None:
        """depth goes up with append and down with ack."""
        with AuditSpool(tmp_path) as spool:
            assert spool.depth == 0
            offsets = fill(spool, 3)
            assert spool.depth == 3
            spool.ack_through(offsets[0])
            assert spool.depth == 2
            spool.ack_through(offsets[2])
            assert spool.depth == 0

    def test_acking_backwards_changes_nothing(self, tmp_path: Path) -> None:
        """An old offset (a late duplicate ack) is a no-op."""
        with AuditSpool(tmp_path) as spool:
            offsets = fill(spool, 3)
            spool.ack_through(offsets[1])
            spool.ack_through(offsets[0])
            assert spool.depth == 1

    def test_refuses_offsets_that_are_not_record_boundaries(self, tmp_path: Path) -> None:
        """Only offsets pending() handed out can be acknowledged."""
        with AuditSpool(tmp_path) as spool:
            offsets = fill(spool, 2)
            with pytest.raises(ValueError, match="boundary"):
                spool.ack_through(offsets[0] + 1)
            with pytest.raises(ValueError, match="past the end"):
                spool.ack_through(offsets[-1] + 100)
            assert spool.depth == 2


class TestCrashRecovery:
    def test_a_torn_final_record_is_ignored(self, tmp_path: Path) -> None:
        """A crash mid-write leaves half a frame; reopening drops it and keeps the rest."""
        with AuditSpool(tmp_path) as spool:
            fill(spool, 3)
        torn = struct.pack(">II", 100, 0) + b"only part of it"
        with segment(tmp_path).open("ab") as file:
            file.write(torn)
        with AuditSpool(tmp_path) as spool:
            assert payloads(spool) == [b"record-0", b"record-1", b"record-2"]
            assert spool.depth == 3
            assert spool.discarded_bytes == len(torn)

    def test_appends_after_a_torn_tail_are_replayed(self, tmp_path: Path) -> None:
        """The torn bytes are cut off, so new records do not land behind garbage."""
        with AuditSpool(tmp_path) as spool:
            fill(spool, 2)
        with segment(tmp_path).open("ab") as file:
            file.write(b"\x00\x00\x01")
        with AuditSpool(tmp_path) as spool:
            spool.append(b"after the crash")
        with AuditSpool(tmp_path) as spool:
            assert payloads(spool) == [b"record-0", b"record-1", b"after the crash"]

    def test_a_corrupt_final_record_is_ignored(self, tmp_path: Path) -> None:
        """A full-length frame whose CRC does not match is treated like a torn one."""
        with AuditSpool(tmp_path) as spool:
            fill(spool, 2)
        data = bytearray(segment(tmp_path).read_bytes())
        data[-1] ^= 0xFF
        segment(tmp_path).write_bytes(bytes(data))
        with AuditSpool(tmp_path) as spool:
            assert payloads(spool) == [b"record-0"]

    def test_a_zero_filled_tail_is_not_read_as_records(self, tmp_path: Path) -> None:
        """Zeros a filesystem may leave after a crash are not empty records."""
        with AuditSpool(tmp_path) as spool:
            fill(spool, 1)
        with segment(tmp_path).open("ab") as file:
            file.write(bytes(64))
        with AuditSpool(tmp_path) as spool:
            assert payloads(spool) == [b"record-0"]
            assert spool.discarded_bytes == 64

    def test_a_garbled_ack_file_is_an_error(self, tmp_path: Path) -> None:
        """Guessing would replay or lose records; the operator must look."""
        AuditSpool(tmp_path).close()
        (tmp_path / "ack").write_text("twelve\n")
        with pytest.raises(SpoolError, match="offset"):
            AuditSpool(tmp_path)


class TestCompaction:
    def test_a_fully_acked_segment_is_replaced_by_an_empty_one(self, tmp_path: Path) -> None:
        """With everything acknowledged past compact_at, the old bytes are dropped."""
        with AuditSpool(tmp_path, compact_at=0) as spool:
            offsets = fill(spool, 3)
            spool.ack_through(offsets[-1])
            assert segment(tmp_path).name == f"{offsets[-1]:020d}.seg"
            assert segment(tmp_path).stat().st_size == 0

    def test_offsets_keep_growing_across_compactions(self, tmp_path: Path) -> None:
        """An offset is never reused, so a stale ack cannot retire a new record."""
        with AuditSpool(tmp_path, compact_at=0) as spool:
            first = fill(spool, 2)
            spool.ack_through(first[-1])
            spool.append(b"next")
            (offset, payload), *_ = spool.pending()
            assert payload == b"next" and offset > first[-1]
            spool.ack_through(first[0])
            assert spool.depth == 1

    def test_small_segments_are_kept_until_compact(self, tmp_path: Path) -> None:
        """Below compact_at nothing is rotated; compact() forces it once all is acked."""
        with AuditSpool(tmp_path) as spool:
            offsets = fill(spool, 2)
            assert spool.compact() is False
            spool.ack_through(offsets[-1])
            assert segment(tmp_path).stat().st_size > 0
            assert spool.compact() is True
            assert segment(tmp_path).stat().st_size == 0

    def test_reopening_a_fully_acked_spool_compacts_it(self, tmp_path: Path) -> None:
        """Startup drops a segment with nothing left to replay."""
        with AuditSpool(tmp_path) as spool:
            spool.ack_through(fill(spool, 2)[-1])
        with AuditSpool(tmp_path) as spool:
            assert segment(tmp_path).stat().st_size == 0
            assert spool.depth == 0 and payloads(spool) == []

    def test_a_compaction_cut_short_is_finished_on_open(self, tmp_path: Path) -> None:
        """A crash between creating the new segment and deleting the old one is harmless."""
        with AuditSpool(tmp_path) as spool:
            end = fill(spool, 2)[-1]
            spool.ack_through(end)
        old = segment(tmp_path)
        (tmp_path / f"{end:020d}.seg").touch()
        with AuditSpool(tmp_path) as spool:
            assert not old.exists()
            assert segment(tmp_path).name == f"{end:020d}.seg"
            spool.append(b"next")
            assert payloads(spool) == [b"next"]


class TestOwnership:
    def test_a_second_spool_on_the_same_directory_is_refused(self, tmp_path: Path) -> None:
        """Two writers would interleave frames; the directory is locked."""
        with AuditSpool(tmp_path), pytest.raises(SpoolError, match="open in another"):
            AuditSpool(tmp_path)
        AuditSpool(tmp_path).close()

    def test_a_closed_spool_refuses_work(self, tmp_path: Path) -> None:
        """After close() every operation raises instead of touching a stale descriptor."""
        spool = AuditSpool(tmp_path)
        spool.close()
        spool.close()
        with pytest.raises(SpoolError, match="closed"):
            spool.append(b"x")

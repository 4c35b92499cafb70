"""Fault injection: a failed write or fsync poisons the log; reopening recovers to the last good
record."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from kvstore.consensus.types import Entry, EntryType, HardState, SnapshotMeta
from kvstore.errors import WalFailedError
from kvstore.storage.wal import FaultSpec, WriteAheadLog
from kvstore.testing import walformat
from tests.native import walfile

SEGMENT_BYTES = 8192


def batch(lo: int, hi: int, term: int = 1, size: int = 50) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, bytes([i % 256]) * size) for i in range(lo, hi)]


def every_call(wal: WriteAheadLog) -> dict[str, Callable[[], object]]:
    return {
        "append": lambda: wal.append(batch(100, 101)),
        "append hard state": lambda: wal.append([], HardState(9)),
        "sync": wal.sync,
        "truncate_after": lambda: wal.truncate_after(1),
        "compact_through": lambda: wal.compact_through(SnapshotMeta(1, 1)),
        "install_snapshot": lambda: wal.install_snapshot(SnapshotMeta(500, 2)),
        "entries": lambda: wal.entries(1, 2),
        "term": lambda: wal.term(1),
        "first_index": wal.first_index,
        "last_index": wal.last_index,
        "hard_state": wal.hard_state,
        "snapshot_meta": wal.snapshot_meta,
        "initial_state": wal.initial_state,
    }


def assert_poisoned(wal: WriteAheadLog, cause: str) -> None:
    for name, call in every_call(wal).items():
        with pytest.raises(WalFailedError, match=cause):
            call()
        assert name  # (for the traceback)
    wal.stats()  # introspection still works


def test_failed_write_poisons_the_log(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        wal.append(batch(1, 10))
        wal.inject_fault(FaultSpec("write", errno.EIO))
        with pytest.raises(WalFailedError) as info:
            wal.append(batch(10, 12))
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.EIO
        assert_poisoned(wal, "pwrite failed")


def test_failed_fdatasync_poisons_the_log(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        wal.inject_fault(FaultSpec("sync", errno.ENOSPC))
        position = wal.append(batch(1, 10))
        with pytest.raises(WalFailedError, match="fdatasync") as info:
            wal.sync(position)
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.ENOSPC
        assert wal.stats().durable_position < position
        assert_poisoned(wal, "fdatasync failed")


def test_a_fault_armed_with_skip_hits_the_later_operation(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        wal.inject_fault(FaultSpec("write", errno.EIO, skip=2))
        wal.append(batch(1, 2))
        wal.append(batch(2, 3))
        with pytest.raises(WalFailedError):
            wal.append(batch(3, 4))


def record_size(entry: Entry) -> int:
    return walformat.padded(walformat.HEADER_BYTES + 16 + len(entry.data))


@pytest.mark.parametrize("partial", [0, 1, 11, 40, 70, 71, 72, 150, 215, 300])
def test_partial_write_then_reopen_recovers_to_the_last_good_record(
    tmp_path: Path, partial: int
) -> None:
    directory = tmp_path / "wal"
    good = batch(1, 11)
    torn = [Entry(2, 11 + k, EntryType.NORMAL, b"t" * (40 + 3 * k)) for k in range(5)]
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        wal.sync(wal.append(good))
        wal.inject_fault(FaultSpec("write", errno.EIO, partial_bytes=partial))
        with pytest.raises(WalFailedError):
            wal.append(torn)
    # Which of the new records reached the file whole (their padding need not: it is zero)?
    start, whole = 0, 0
    for entry in torn:
        if start + walformat.HEADER_BYTES + 16 + len(entry.data) > partial:
            break
        whole += 1
        start += record_size(entry)
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        assert wal.last_index() == 10 + whole
        assert wal.entries(1, 11 + whole) == good + torn[:whole]
        assert wal.recovery.torn == (partial > start)
        if wal.recovery.torn:
            segment = walformat.segment_paths(directory)[-1]
            assert wal.recovery.torn_path == str(segment)
            assert wal.recovery.torn_offset == walfile.entry_records(segment)[-1].end
        wal.sync(wal.append(batch(11 + whole, 20 + whole, term=3)))
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        assert not wal.recovery.torn
        assert wal.last_index() == 19 + whole


def test_a_failed_sync_wakes_every_waiting_thread(tmp_path: Path) -> None:
    failures: list[BaseException] = []
    lock = threading.Lock()
    next_index = [1]
    with WriteAheadLog(tmp_path / "wal", segment_bytes=1 << 20) as wal:
        wal.inject_fault(FaultSpec("sync", errno.EIO, skip=20))

        def worker() -> None:
            try:
                while True:
                    with lock:
                        i = next_index[0]
                        next_index[0] += 1
                        position = wal.append(batch(i, i + 1))
                    wal.sync(position)
            except WalFailedError as exc:
                failures.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
    assert len(failures) == 8


def test_failed_segment_preparation_poisons_at_rotation(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        # EIO: not a shortage that can end (those are retried: tests/native/test_prepare_retry.py)
        wal.inject_fault(FaultSpec("prepare", errno.EIO))
        with pytest.raises(WalFailedError, match="preparing a segment"):
            for i in range(1, 400):
                wal.append(batch(i, i + 1))
        assert_poisoned(wal, "preparing a segment")


@pytest.mark.parametrize(
    "fault",
    [
        FaultSpec("sync", skip=0),  # fdatasync of the full segment
        FaultSpec("write", skip=0),  # the new segment's preamble
        FaultSpec("sync", skip=1),  # fdatasync of the new segment
        FaultSpec("sync", skip=2),  # fsync of the directory after the rename
        FaultSpec("write", skip=1),  # the records after the rotation
    ],
    ids=["sync-old", "write-preamble", "sync-new", "sync-dir", "write-after"],
)
def test_failure_at_each_step_of_a_rotation_then_reopen(tmp_path: Path, fault: FaultSpec) -> None:
    directory = tmp_path / "wal"
    first = batch(1, 80)  # fills most of the first segment
    second = batch(80, 160, term=2)  # needs a second one
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        wal.sync(wal.append(first))
        assert wal.stats().segment_count == 1
        wal.inject_fault(fault)
        with pytest.raises(WalFailedError):
            wal.append(second)
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        last = wal.last_index()
        assert 79 <= last < 160
        assert wal.entries(1, last + 1) == (first + second)[:last]
        wal.sync(wal.append(batch(last + 1, last + 100, term=3)))
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        assert wal.last_index() == last + 99


def test_failure_while_cutting_a_torn_tail_at_open(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        wal.sync(wal.append(batch(1, 11)))
    segment = walformat.segment_paths(directory)[-1]
    rec = walfile.entry_records(segment)[-1]
    walfile.flip_byte(segment, rec.offset + 20)
    damaged = segment.read_bytes()
    # The zeroing write fails: the file is as it was, and the open fails.
    with pytest.raises(WalFailedError, match="cutting a torn tail"):
        WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES, faults=[FaultSpec("write")])
    assert segment.read_bytes() == damaged
    # The zeros are written but their fdatasync fails: the open fails all the same.
    with pytest.raises(WalFailedError, match="cutting a torn tail"):
        WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES, faults=[FaultSpec("sync")])
    assert segment.read_bytes()[rec.offset :] == bytes(len(damaged) - rec.offset)
    # Next time the tail is already zero: a clean end one record earlier.
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        assert not wal.recovery.torn
        assert wal.last_index() == 9

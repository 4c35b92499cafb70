"""The format's version rule (native/FORMAT.md §8), the one Python writer of the format, and
error details that belong to the call that failed.

Segments are built with `kvstore.testing.walformat` (the one Python reader and writer of the
format), so these tests also check that it and the C library agree.
"""

from __future__ import annotations

import errno
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from kvstore._kvwal import ffi, lib

from kvstore.consensus.types import Entry, EntryType, HardState
from kvstore.errors import CorruptionError, WalFailedError
from kvstore.storage.wal import FaultSpec, WriteAheadLog
from kvstore.testing import walformat

SEGMENT_BYTES = 8192
ENTRIES = [Entry(1, i, EntryType.NORMAL, b"entry %d" % i) for i in range(1, 9)]


def write_segment(
    log_dir: Path,
    *,
    version: int = walformat.SEGMENT_VERSION,
    flags: int = 0,
    tail: Sequence[tuple[int, bytes]] = (),
) -> Path:
    """A one-segment log written by the Python writer: the preamble, ENTRIES, then `tail`
    records (type, payload)."""
    log_dir.mkdir(parents=True)
    path = log_dir / walformat.segment_name(1, 1)
    data = walformat.encode_preamble(1, 1, version=version, flags=flags, hard_state=(1, 4, b"n1"))
    data += walformat.encode_entries(1, len(data), ENTRIES)
    for rtype, payload in tail:
        data += walformat.encode_record(1, len(data), rtype, payload)
    path.write_bytes(data + bytes(SEGMENT_BYTES - len(data)))
    return path


def test_the_python_writer_writes_what_the_c_reader_reads(tmp_path: Path) -> None:
    write_segment(tmp_path / "wal")
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        assert wal.entries(1, 9) == ENTRIES
        assert wal.hard_state() == HardState(1, "n1", 4)
        assert not wal.recovery.torn


def test_the_c_writer_writes_the_current_version_with_no_flags(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        wal.sync(wal.append(ENTRIES))
    [segment] = walformat.segment_paths(tmp_path / "wal")
    header = walformat.read_segment_header(segment)
    assert header == walformat.SegmentHeader(walformat.SEGMENT_VERSION, 0, 1, 1)
    assert walformat.SEGMENT_VERSION == 2
    entries = [r for r in walformat.read_records(segment) if r.type == walformat.REC_ENTRY]
    assert [r.index for r in entries] == [e.index for e in ENTRIES]


@pytest.mark.parametrize("version", [0, 3, 0xFFFFFFFF])
def test_an_unknown_version_is_refused_naming_file_and_versions(
    tmp_path: Path, version: int
) -> None:
    path = write_segment(tmp_path / "wal", version=version)
    with pytest.raises(CorruptionError) as caught:
        WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES)
    message = str(caught.value)
    assert caught.value.path == str(path) and caught.value.offset == 0
    assert f"version {version} is not supported" in message, message
    assert "versions 1 to 2" in message, message
    # The Python reader refuses it the same way.
    with pytest.raises(CorruptionError, match=f"version {version} is not supported"):
        walformat.read_segment_header(path)


@pytest.mark.parametrize("flags", [0x1, 0x80000000])
def test_unknown_segment_flags_are_refused(tmp_path: Path, flags: int) -> None:
    path = write_segment(tmp_path / "wal", flags=flags)
    with pytest.raises(CorruptionError) as caught:
        WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES)
    assert caught.value.path == str(path) and caught.value.offset == 0
    assert f"flags {flags:#x} are not known" in str(caught.value)
    with pytest.raises(CorruptionError, match=r"flags 0x[0-9a-f]+ are not known"):
        walformat.read_segment_header(path)


def test_a_version_1_segment_reads_an_8_byte_truncate_as_a_cut(tmp_path: Path) -> None:
    """Builds before the overwrite batch wrote TRUNCATE with the index alone, as version 1."""
    write_segment(
        tmp_path / "wal", version=1, tail=[(walformat.REC_TRUNCATE, struct.pack("<Q", 4))]
    )
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        assert wal.last_index() == 4 and not wal.recovery.torn
        assert wal.entries(1, 5) == ENTRIES[:4]
        # Appends go on in the newest version: the old segment is read by its own rules.
        wal.sync(wal.append([Entry(2, 5, EntryType.NORMAL, b"new")]))
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        assert wal.entries(4, 6)[-1].data == b"new"


def test_a_version_1_segment_reads_a_16_byte_truncate_too(tmp_path: Path) -> None:
    """Version 1 also holds the 16-byte TRUNCATE (its size changed without a bump, §8)."""
    write_segment(
        tmp_path / "wal", version=1, tail=[(walformat.REC_TRUNCATE, struct.pack("<QQ", 6, 6))]
    )
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        assert wal.last_index() == 6


def test_an_8_byte_truncate_in_a_version_2_segment_is_corruption(tmp_path: Path) -> None:
    path = write_segment(tmp_path / "wal", tail=[(walformat.REC_TRUNCATE, struct.pack("<Q", 4))])
    with pytest.raises(CorruptionError, match="8-byte TRUNCATE") as caught:
        WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES)
    assert caught.value.path == str(path)


def _last_error() -> tuple[int, bytes]:
    detail: Any = ffi.new("kvwal_error_t *")
    assert lib.kvwal_error_last(detail) == 0
    return int(detail.code), ffi.string(detail.message)


def test_each_thread_gets_the_detail_of_its_own_failed_call(tmp_path: Path) -> None:
    """Thread A fails, then thread B fails on the same handle, then A reads its detail: it is
    A's. (With the detail stored on the handle, A was told B's.) The steps are ordered by
    events, so the interleaving is the same every run."""
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        wal.sync(wal.append(ENTRIES))
        handle = wal._handle
        a_failed, b_failed = threading.Event(), threading.Event()
        seen: dict[str, tuple[int, bytes]] = {}

        def thread_a() -> None:
            # Beyond the append position: KVWAL_EINVAL with a sync_to message.
            seen["a_rc"] = (lib.kvwal_log_sync_to(handle, 1 << 40), b"")
            a_failed.set()
            assert b_failed.wait(10)
            seen["a"] = _last_error()

        def thread_b() -> None:
            assert a_failed.wait(10)
            # Compaction beyond the last entry: another code, another message.
            seen["b_rc"] = (lib.kvwal_log_compact_through(handle, 1000, 1, ffi.NULL, 0), b"")
            seen["b"] = _last_error()
            b_failed.set()

        threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert seen["a_rc"][0] == lib.KVWAL_EINVAL
        assert seen["a"][0] == lib.KVWAL_EINVAL and seen["a"][1].startswith(b"sync_to("), seen
        assert seen["b_rc"][0] == lib.KVWAL_EUNAVAILABLE
        assert seen["b"][0] == lib.KVWAL_EUNAVAILABLE, seen
        assert seen["b"][1].startswith(b"compact_through("), seen


def test_a_later_failure_without_a_detail_shows_no_older_one(tmp_path: Path) -> None:
    """A later call that fails without a detail of its own must not show an older one."""
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        handle = wal._handle
        assert lib.kvwal_log_sync_to(handle, 1 << 40) == lib.KVWAL_EINVAL
        assert _last_error()[0] == lib.KVWAL_EINVAL
        # Missing arrays: refused before any work, with no detail.
        rc = lib.kvwal_log_append(
            handle, 1, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL, 0, ffi.NULL, ffi.NULL
        )
        assert rc == lib.KVWAL_EINVAL
        assert _last_error()[0] == 0  # code 0: this call gave no detail


def test_every_thread_is_told_what_poisoned_the_log(tmp_path: Path) -> None:
    """A poisoned log fails every later call, in any thread, with the cause that poisoned it
    (the same for all: it is the handle's state, not one call's)."""
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        wal.inject_fault(FaultSpec("sync", errno.EIO))
        with pytest.raises(WalFailedError) as first:
            wal.sync(wal.append(ENTRIES))
        assert "fdatasync failed" in str(first.value)
        caught: list[BaseException] = []

        def other_thread() -> None:
            try:
                wal.last_index()
            except BaseException as exc:
                caught.append(exc)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(10)
        [later] = caught
        assert isinstance(later, WalFailedError)
        assert "fdatasync failed" in str(later), later
        assert isinstance(later.__cause__, OSError) and later.__cause__.errno == errno.EIO

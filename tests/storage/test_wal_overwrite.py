"""An append that overwrites older entries is all-or-nothing across a crash (FORMAT.md §4).

Such an append writes `TRUNCATE n last`, then the entries n+1 .. last. A crash that keeps the
TRUNCATE and only some of those entries must not cut the older ones: recovery voids the whole
batch, cuts it like a torn tail, and the log reads as before the append. (A Paxos acceptor that
re-accepts a slot writes its older accepted values again after it in the same append: it must
never lose them.) Faults are injected as partial writes (the first bytes of the batch reach the
file, then the write fails), and some logs are crafted with `walformat.encode_record`.
"""

from __future__ import annotations

import errno
import logging
import struct
from pathlib import Path

import pytest

from kvstore.consensus.types import Entry, EntryType, HardState
from kvstore.errors import CorruptionError, WalFailedError
from kvstore.storage.wal import FaultSpec, WriteAheadLog
from kvstore.testing import walformat
from tests.native import walfile

SEGMENT_BYTES = 8192
TRUNCATE_BYTES = walformat.padded(walformat.HEADER_BYTES + 16)
TRUNCATE_WHOLE_BYTES = walformat.HEADER_BYTES + 16
"""Bytes that make a TRUNCATE record valid (its padding is not covered by the CRC)."""


def entries(lo: int, hi: int, term: int, size: int = 40) -> list[Entry]:
    return [
        Entry(term, i, EntryType.NORMAL, bytes([term, i % 256]) * (size // 2))
        for i in range(lo, hi)
    ]


def entry_bytes(e: Entry) -> int:
    return walformat.padded(walformat.HEADER_BYTES + 16 + len(e.data))


OLD = entries(1, 11, term=1)
"""The acknowledged log: 1..10 in term 1."""
NEW = entries(4, 14, term=2, size=60)
"""The overwrite: 4..13 in term 2 (cuts 4..10, adds 11..13)."""
HARD = HardState(2, "n1", 3)


def _overwrite_with_a_torn_write(directory: Path, partial: int) -> int:
    """Write OLD durably, then the overwrite with only `partial` bytes reaching the file.
    Returns the offset where the overwrite's TRUNCATE record starts."""
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        wal.sync(wal.append(OLD, HardState(1, "n1", 3)))
        start = walformat.records_end(walformat.segment_paths(directory)[-1])
        wal.inject_fault(FaultSpec("write", errno.EIO, partial_bytes=partial))
        with pytest.raises(WalFailedError):
            wal.append(NEW, HARD)
    return start


def _cut_points() -> list[int]:
    """Partial write sizes: inside the TRUNCATE, right after it, inside and between entries."""
    # (20: the TRUNCATE's `last` field is missing; its high bytes would be zeros anyway.)
    points = [0, 8, 20, TRUNCATE_WHOLE_BYTES, TRUNCATE_BYTES]
    at = TRUNCATE_BYTES
    for e in NEW[:-1]:
        points += [at + 20, at + entry_bytes(e)]
        at += entry_bytes(e)
    points.append(at + 30)  # inside the last entry
    return points


@pytest.mark.parametrize("partial", _cut_points())
def test_an_unfinished_overwrite_keeps_the_older_entries(tmp_path: Path, partial: int) -> None:
    directory = tmp_path / "wal"
    start = _overwrite_with_a_torn_write(directory, partial)
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        # The log is exactly what was acknowledged before: the cut never happened.
        assert (wal.first_index(), wal.last_index()) == (1, 10)
        assert wal.entries(1, 11) == OLD
        assert wal.hard_state() == HardState(1, "n1", 3)
        report = wal.recovery
        assert report.torn == (partial > 0)
        if partial >= TRUNCATE_WHOLE_BYTES:
            # A whole TRUNCATE was read: the batch is void, and cut from its first byte.
            assert report.torn_batch == (4, 13)
            assert report.torn_offset == start
        else:
            assert report.torn_batch is None  # a torn TRUNCATE is an ordinary torn tail
        # Appends go on where the batch started, and nothing of it resurfaces later.
        wal.sync(wal.append(entries(11, 15, term=3)))
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        assert not wal.recovery.torn
        assert wal.entries(1, 15) == OLD + entries(11, 15, term=3)


def test_a_finished_overwrite_whose_hard_state_was_torn_takes_effect(tmp_path: Path) -> None:
    """Every entry of the batch is there, only the HARD_STATE after them is torn: the batch
    closed, so the cut and the new entries stand (the hard state is the older one)."""
    directory = tmp_path / "wal"
    partial = TRUNCATE_BYTES + sum(entry_bytes(e) for e in NEW) + 10
    _overwrite_with_a_torn_write(directory, partial)
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        assert wal.entries(1, 14) == OLD[:3] + NEW
        assert wal.hard_state() == HardState(1, "n1", 3)
        assert wal.recovery.torn and wal.recovery.torn_batch is None


def test_a_whole_overwrite_survives_reopen_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "wal"
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        wal.sync(wal.append(OLD))
        wal.sync(wal.append(NEW, HARD))
    [segment] = walformat.segment_paths(directory)
    [truncate] = [r for r in walformat.read_records(segment) if r.type == walformat.REC_TRUNCATE]
    assert (truncate.index, truncate.last, truncate.length) == (3, 13, 16)
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        assert wal.entries(1, 14) == OLD[:3] + NEW
        assert wal.hard_state() == HARD
        assert not wal.recovery.torn
    # The void-batch message only appears for a void batch.
    with caplog.at_level(logging.WARNING):
        _overwrite_with_a_torn_write(tmp_path / "other", TRUNCATE_BYTES + 5)
        with WriteAheadLog(tmp_path / "other", segment_bytes=SEGMENT_BYTES):
            pass
    assert any("unfinished overwrite of entries 4..13" in r.getMessage() for r in caplog.records)


def test_a_bare_truncate_after_still_cuts_at_once(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        wal.sync(wal.append(OLD))
        wal.sync(wal.truncate_after(6))
    [segment] = walformat.segment_paths(directory)
    [truncate] = [r for r in walformat.read_records(segment) if r.type == walformat.REC_TRUNCATE]
    assert (truncate.index, truncate.last) == (6, 6)
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        assert wal.last_index() == 6


def _craft_after_old(directory: Path, records: list[tuple[int, bytes]]) -> Path:
    """OLD in a fresh log, then `records` (type, payload) written right after it."""
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        wal.sync(wal.append(OLD))
    [segment] = walformat.segment_paths(directory)
    at, seq = walformat.records_end(segment), walformat.segment_seq(segment)
    for rtype, payload in records:
        raw = walformat.encode_record(seq, at, rtype, payload)
        walfile.patch(segment, at, raw)
        at += len(raw)
    return segment


def _entry_payload(index: int, term: int, data: bytes = b"x") -> bytes:
    return struct.pack("<QQ", index, term) + data


def test_anything_but_the_next_entry_inside_a_batch_is_corruption(tmp_path: Path) -> None:
    truncate = (walformat.REC_TRUNCATE, struct.pack("<QQ", 3, 6))
    cases = {
        "hard state": [truncate, (walformat.REC_ENTRY, _entry_payload(4, 2)),
                       (walformat.REC_HARD_STATE, struct.pack("<QQ", 2, 0))],
        "skipped index": [truncate, (walformat.REC_ENTRY, _entry_payload(5, 2))],
        "another truncate": [truncate, truncate],
    }  # fmt: skip
    for name, records in cases.items():
        directory = tmp_path / name.replace(" ", "-")
        segment = _craft_after_old(directory, records)
        with pytest.raises(CorruptionError, match="inside an overwrite batch") as info:
            WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES)
        assert info.value.path is not None and info.value.path.endswith(segment.name)


def test_a_batch_that_ends_before_its_cut_is_corruption(tmp_path: Path) -> None:
    _craft_after_old(tmp_path / "wal", [(walformat.REC_TRUNCATE, struct.pack("<QQ", 5, 4))])
    with pytest.raises(CorruptionError, match="batch ends before"):
        WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES)


def test_a_crafted_complete_batch_is_applied_and_an_incomplete_one_is_void(tmp_path: Path) -> None:
    """The rule, independent of the writer: ENTRY `last` closes the batch."""
    truncate = (walformat.REC_TRUNCATE, struct.pack("<QQ", 3, 5))
    done = [
        truncate,
        (walformat.REC_ENTRY, _entry_payload(4, 2)),
        (walformat.REC_ENTRY, _entry_payload(5, 2)),
    ]
    _craft_after_old(tmp_path / "done", done)
    with WriteAheadLog(tmp_path / "done", segment_bytes=SEGMENT_BYTES) as wal:
        assert wal.last_index() == 5 and wal.term(4) == 2 and wal.term(3) == 1
    _craft_after_old(tmp_path / "open", done[:2])
    with WriteAheadLog(tmp_path / "open", segment_bytes=SEGMENT_BYTES) as wal:
        assert wal.entries(1, 11) == OLD
        assert wal.recovery.torn_batch == (4, 5)


def test_an_overwrite_never_spans_segments(tmp_path: Path) -> None:
    """A batch that does not fit in what is left of a segment starts a new one, grown if the
    batch is bigger than a segment, so a void batch is always at the end of the newest one."""
    directory = tmp_path / "wal"
    big = [Entry(3, i, EntryType.NORMAL, b"b" * 900) for i in range(5, 25)]  # ~18 KiB > a segment
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        wal.sync(wal.append(entries(1, 60, term=1)))  # fills most of two segments
        wal.sync(wal.append(entries(50, 70, term=2)))  # an overwrite near a segment's end
        wal.sync(wal.append(big))  # an overwrite bigger than a segment
        assert wal.entries(1, 25) == entries(1, 5, term=1) + big
    for segment in walformat.segment_paths(directory):
        records = walformat.read_records(segment)
        for k, r in enumerate(records):
            if r.type == walformat.REC_TRUNCATE and r.last > r.index:
                batch = records[k + 1 : k + 1 + r.last - r.index]
                assert [e.index for e in batch] == list(range(r.index + 1, r.last + 1)), segment
    grown = [p for p in walformat.segment_paths(directory) if p.stat().st_size > SEGMENT_BYTES]
    assert grown  # the big batch got a segment of its own size
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        assert wal.entries(1, 25) == entries(1, 5, term=1) + big


def test_an_open_batch_at_the_end_of_an_older_segment_is_corruption(tmp_path: Path) -> None:
    directory = tmp_path / "wal"
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        wal.sync(wal.append(entries(1, 200, term=1)))  # several segments
    older = walformat.segment_paths(directory)[0]
    at, seq = walformat.records_end(older), walformat.segment_seq(older)
    last_there = max(r.index for r in walfile.entry_records(older))
    payload = struct.pack("<QQ", last_there - 1, last_there + 5)
    walfile.patch(older, at, walformat.encode_record(seq, at, walformat.REC_TRUNCATE, payload))
    with pytest.raises(CorruptionError, match="unfinished overwrite batch in an older segment"):
        WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES)

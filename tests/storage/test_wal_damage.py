"""Damage tests in the style of LevelDB's log_test: change bytes on disk, reopen, assert the exact
outcome. A torn tail (damage to the last record of the last segment, nothing valid after it) is
cut and reported; anything else is `CorruptionError` naming the file and the offset.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from kvstore.consensus.types import Entry, EntryType, HardState
from kvstore.errors import CorruptionError
from kvstore.storage.wal import WriteAheadLog
from kvstore.testing import walformat
from tests.native import walfile

SEGMENT_BYTES = 16384
ENTRIES = [Entry(1 + i // 10, i, EntryType.NORMAL, bytes([i % 251]) * 40) for i in range(1, 31)]
HARD_STATE = HardState(term=3, vote="n2", commit=20)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-segment log: 30 entries of 40 bytes (72-byte records), the hard state first."""
    directory = tmp_path_factory.mktemp("template") / "wal"
    with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
        wal.append([], HARD_STATE)
        wal.sync(wal.append(ENTRIES))
    return directory


@pytest.fixture(scope="module")
def multi_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log of several segments."""
    directory = tmp_path_factory.mktemp("multi") / "wal"
    with WriteAheadLog(directory, segment_bytes=4096) as wal:
        for i in range(1, 201, 5):
            wal.append([Entry(1, j, EntryType.NORMAL, b"m" * 60) for j in range(i, i + 5)])
        wal.sync()
    assert len(walformat.segment_paths(directory)) >= 3
    return directory


def copy(template: Path, tmp_path: Path, name: str = "wal") -> tuple[Path, Path]:
    """A private copy of the template log and its (last) segment."""
    directory = tmp_path / name
    shutil.copytree(template, directory)
    return directory, walformat.segment_paths(directory)[-1]


def reopen(directory: Path, segment_bytes: int = SEGMENT_BYTES) -> WriteAheadLog:
    return WriteAheadLog(directory, segment_bytes=segment_bytes)


def assert_intact(wal: WriteAheadLog, last: int) -> None:
    assert wal.last_index() == last
    assert wal.entries(1, last + 1) == ENTRIES[:last]
    assert wal.hard_state() == HARD_STATE


def assert_torn(wal: WriteAheadLog, segment: Path, offset: int) -> None:
    assert wal.recovery.torn
    assert wal.recovery.torn_path == str(segment)
    assert wal.recovery.torn_offset == offset


def assert_usable_after_cut(directory: Path, segment: Path, cut_at: int, last: int) -> None:
    """After a cut, the tail is zero on disk, appends go where the cut was, and the next open
    finds a clean log."""
    data = segment.read_bytes()
    assert data[cut_at:] == bytes(len(data) - cut_at)
    extra = Entry(9, last + 1, EntryType.NORMAL, b"after the cut")
    with reopen(directory) as wal:
        assert not wal.recovery.torn
        wal.sync(wal.append([extra]))
    assert walfile.entry_records(segment)[-1].offset == cut_at
    with reopen(directory) as wal:
        assert not wal.recovery.torn
        assert wal.entries(last + 1, last + 2) == [extra]


def last_entry(segment: Path) -> walformat.Record:
    return walfile.entry_records(segment)[-1]


@pytest.mark.parametrize("where", ["crc", "length", "type", "reserved", "index", "data", "end"])
def test_flipped_byte_in_the_last_record_is_a_torn_tail(
    template: Path, tmp_path: Path, where: str
) -> None:
    directory, segment = copy(template, tmp_path)
    rec = last_entry(segment)
    offset = {
        "crc": 0,
        "length": 4,
        "type": 8,
        "reserved": 10,
        "index": 12,
        "data": 28,
        "end": 12 + rec.length - 1,
    }[where]
    walfile.flip_byte(segment, rec.offset + offset)
    with reopen(directory) as wal:
        assert_torn(wal, segment, rec.offset)
        assert_intact(wal, 29)
    assert_usable_after_cut(directory, segment, rec.offset, 29)


def test_cut_at_every_offset_inside_the_last_record(template: Path, tmp_path: Path) -> None:
    segment = walformat.segment_paths(template)[-1]
    rec = last_entry(segment)
    raw = segment.read_bytes()
    payload_end = rec.offset + walformat.HEADER_BYTES + rec.length
    for cut in range(rec.offset, rec.end + 1):
        directory, segment = copy(template, tmp_path, f"cut{cut}")
        walfile.zero_from(segment, cut)  # preallocated space: "cut" means the rest is zero
        with reopen(directory) as wal:
            if cut == rec.offset:
                # The whole record is gone: the log simply ends one record earlier.
                assert not wal.recovery.torn
                assert_intact(wal, 29)
            elif cut < payload_end:
                assert_torn(wal, segment, rec.offset)
                # What was discarded: the kept part, up to its last non-zero byte.
                kept = raw[rec.offset : cut]
                assert wal.recovery.torn_bytes == len(kept.rstrip(b"\0"))
                assert_intact(wal, 29)
            else:
                # Only padding is missing, and padding is zero anyway: the record is whole.
                assert not wal.recovery.torn
                assert_intact(wal, 30)
        shutil.rmtree(directory)


@pytest.mark.parametrize("keep", [0, 5, 12, 40])
def test_a_file_shortened_inside_the_last_record(template: Path, tmp_path: Path, keep: int) -> None:
    directory, segment = copy(template, tmp_path)
    rec = last_entry(segment)
    os.truncate(segment, rec.offset + keep)
    with reopen(directory) as wal:
        if keep == 0:
            assert not wal.recovery.torn
        else:
            assert_torn(wal, segment, rec.offset)
        assert_intact(wal, 29)
    # The segment is smaller than a full one now; appends still work and rotate when full.
    with reopen(directory) as wal:
        new = [Entry(5, i, EntryType.NORMAL, b"z" * 100) for i in range(30, 300)]
        wal.sync(wal.append(new))
    with reopen(directory) as wal:
        assert wal.entries(30, 300) == new


def test_zeroed_tail_is_the_end_of_the_log(template: Path, tmp_path: Path) -> None:
    directory, segment = copy(template, tmp_path)
    walfile.zero_from(segment, walfile.entry_records(segment)[-3].offset)
    with reopen(directory) as wal:
        assert not wal.recovery.torn
        assert_intact(wal, 27)


def test_zeroed_half_of_the_last_record_is_torn(template: Path, tmp_path: Path) -> None:
    directory, segment = copy(template, tmp_path)
    rec = last_entry(segment)
    kept = segment.read_bytes()[rec.offset : rec.offset + 20]
    walfile.patch(segment, rec.offset + 20, bytes(rec.size - 20))
    with reopen(directory) as wal:
        assert_torn(wal, segment, rec.offset)
        assert wal.recovery.torn_bytes == len(kept.rstrip(b"\0"))
        assert_intact(wal, 29)


def test_garbage_after_the_last_record_is_cut(template: Path, tmp_path: Path) -> None:
    directory, segment = copy(template, tmp_path)
    end = last_entry(segment).end
    walfile.patch(segment, end + 100, b"\x13\x37" * 50)
    with reopen(directory) as wal:
        assert_torn(wal, segment, end)
        assert wal.recovery.torn_bytes == 200
        assert_intact(wal, 30)
    assert_usable_after_cut(directory, segment, end, 30)


@pytest.mark.parametrize("victim", [0, 10, 28])
def test_flipped_byte_followed_by_valid_records_is_corruption(
    template: Path, tmp_path: Path, victim: int
) -> None:
    directory, segment = copy(template, tmp_path)
    rec = walfile.entry_records(segment)[victim]
    walfile.flip_byte(segment, rec.offset + 30)
    damaged = segment.read_bytes()
    with pytest.raises(CorruptionError) as info:
        reopen(directory)
    assert info.value.path == str(segment)
    assert info.value.offset == rec.offset
    assert segment.read_bytes() == damaged  # refusing to open changes nothing


def test_zeroed_record_followed_by_valid_records_is_corruption(
    template: Path, tmp_path: Path
) -> None:
    directory, segment = copy(template, tmp_path)
    rec = walfile.entry_records(segment)[15]
    walfile.patch(segment, rec.offset, bytes(rec.size))
    with pytest.raises(CorruptionError) as info:
        reopen(directory)
    assert (info.value.path, info.value.offset) == (str(segment), rec.offset)


@pytest.mark.parametrize("delta", [8, -8, 1 << 20])
def test_wrong_length_field(template: Path, tmp_path: Path, delta: int) -> None:
    # In the last record: a torn tail. In any earlier record: corruption at that record.
    directory, segment = copy(template, tmp_path, "last")
    rec = last_entry(segment)
    walfile.patch(segment, rec.offset + 4, struct.pack("<I", rec.length + delta))
    with reopen(directory) as wal:
        assert_torn(wal, segment, rec.offset)
        assert_intact(wal, 29)

    directory, segment = copy(template, tmp_path, "middle")
    rec = walfile.entry_records(segment)[20]
    walfile.patch(segment, rec.offset + 4, struct.pack("<I", rec.length + delta))
    with pytest.raises(CorruptionError) as info:
        reopen(directory)
    assert (info.value.path, info.value.offset) == (str(segment), rec.offset)


def test_a_valid_record_copied_to_another_offset_does_not_verify(
    template: Path, tmp_path: Path
) -> None:
    # The CRC is seeded with the record's segment and offset (FORMAT.md §2): a copy of a valid
    # record placed after the tail is garbage, so it is cut, not replayed.
    directory, segment = copy(template, tmp_path, "copied")
    rec = last_entry(segment)
    raw = segment.read_bytes()[rec.offset : rec.end]
    walfile.patch(segment, rec.end, raw)
    with reopen(directory) as wal:
        assert_torn(wal, segment, rec.end)
        assert_intact(wal, 30)
    # The same bytes with the CRC fixed for the new offset are a valid record again: the entry
    # with the same index overrides the earlier one (FORMAT.md §4), so nothing changes.
    directory, segment = copy(template, tmp_path, "fixed")
    walfile.patch(segment, rec.end, raw)
    walfile.fix_crc(segment, rec.end)
    with reopen(directory) as wal:
        assert not wal.recovery.torn
        assert_intact(wal, 30)


def test_changed_data_with_a_fixed_crc_is_accepted(template: Path, tmp_path: Path) -> None:
    # The counterpart of every test above: the CRC is what catches the damage (and the test
    # helpers compute it as FORMAT.md says).
    directory, segment = copy(template, tmp_path)
    rec = walfile.entry_records(segment)[4]
    walfile.patch(segment, rec.offset + 28, b"REWRITTEN")
    walfile.fix_crc(segment, rec.offset)
    with reopen(directory) as wal:
        assert wal.entries(5, 6)[0].data == b"REWRITTEN" + ENTRIES[4].data[9:]


@pytest.mark.parametrize("position", ["middle", "last"])
def test_damage_in_an_older_segment_is_corruption(
    multi_template: Path, tmp_path: Path, position: str
) -> None:
    directory, _ = copy(multi_template, tmp_path)
    older = walformat.segment_paths(directory)[0]
    records = walfile.entry_records(older)
    rec = records[len(records) // 2] if position == "middle" else records[-1]
    walfile.flip_byte(older, rec.offset + 20)
    with pytest.raises(CorruptionError) as info:
        reopen(directory, 4096)
    assert (info.value.path, info.value.offset) == (str(older), rec.offset)


def test_zeroed_tail_of_an_older_segment_is_corruption(
    multi_template: Path, tmp_path: Path
) -> None:
    directory, _ = copy(multi_template, tmp_path)
    older = walformat.segment_paths(directory)[1]
    rec = walfile.entry_records(older)[-1]
    walfile.zero_from(older, rec.offset + 16)
    with pytest.raises(CorruptionError) as info:
        reopen(directory, 4096)
    assert (info.value.path, info.value.offset) == (str(older), rec.offset)


def test_a_missing_segment_is_corruption(multi_template: Path, tmp_path: Path) -> None:
    directory, _ = copy(multi_template, tmp_path)
    paths = walformat.segment_paths(directory)
    paths[1].unlink()
    with pytest.raises(CorruptionError) as info:
        reopen(directory, 4096)
    assert (info.value.path, info.value.offset) == (str(paths[2]), 0)


def test_a_damaged_segment_header_is_corruption(multi_template: Path, tmp_path: Path) -> None:
    directory, _ = copy(multi_template, tmp_path)
    last = walformat.segment_paths(directory)[-1]
    walfile.flip_byte(last, 20)  # inside the SEGMENT record's magic
    with pytest.raises(CorruptionError) as info:
        reopen(directory, 4096)
    assert (info.value.path, info.value.offset) == (str(last), 0)


def test_a_segment_renamed_out_of_place_is_corruption(multi_template: Path, tmp_path: Path) -> None:
    # The header must match the name: a segment under another first index is not trusted.
    directory, _ = copy(multi_template, tmp_path)
    last = walformat.segment_paths(directory)[-1]
    seq, first = last.stem.split("-")
    last.rename(last.with_name(f"{seq}-{int(first, 16) + 1:016x}.wal"))
    with pytest.raises(CorruptionError, match="does not match"):
        reopen(directory, 4096)


def test_torn_tail_is_logged(
    template: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory, segment = copy(template, tmp_path)
    rec = last_entry(segment)
    walfile.flip_byte(segment, rec.offset + 30)
    with caplog.at_level("WARNING", logger="kvstore.storage.wal"), reopen(directory):
        pass
    [message] = [r.getMessage() for r in caplog.records if r.name == "kvstore.storage.wal"]
    assert str(segment) in message and f"offset {rec.offset}" in message


@pytest.fixture(scope="module")
def paged_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-segment log whose records span several 4 KiB disk pages (120 records of 200
    bytes): room to lose a page in the middle of the tail, as a power cut may."""
    directory = tmp_path_factory.mktemp("paged") / "wal"
    with WriteAheadLog(directory, segment_bytes=1 << 16) as wal:
        wal.sync(wal.append([Entry(1, i, EntryType.NORMAL, b"p" * 200) for i in range(1, 121)]))
    return directory


def _first_record_reaching(segment: Path, page: int) -> walfile.Record:
    return next(r for r in walfile.entry_records(segment) if r.offset + r.size > page)


@pytest.mark.parametrize("page", [4096, 8192])
def test_a_page_lost_to_a_power_cut_is_a_torn_tail(
    paged_template: Path, tmp_path: Path, page: int
) -> None:
    """After a power cut a disk may keep a later unsynced page but not an earlier one: a page
    of preallocation zeros, then valid records that were never acknowledged. That is a torn
    tail from the first record the lost page touches, not corruption."""
    directory, segment = copy(paged_template, tmp_path)
    victim = _first_record_reaching(segment, page)
    walfile.patch(segment, page, bytes(4096))
    with reopen(directory, segment_bytes=1 << 16) as wal:
        assert_torn(wal, segment, victim.offset)
        last = wal.last_index()
        # One record per entry, numbered from 1: the entries before the victim survive.
        assert last == sum(1 for r in walfile.entry_records(segment) if r.offset < victim.offset)
        assert last > 0
        assert all(e.data == b"p" * 200 for e in wal.entries(1, last + 1))


def test_a_lost_page_in_an_older_segment_is_corruption(
    multi_template: Path, tmp_path: Path
) -> None:
    """Older segments were synced before the next one was made: a zero page there is damage."""
    directory = tmp_path / "wal"
    shutil.copytree(multi_template, directory)
    first = walfile.segment_paths(directory)[0]
    rec = walfile.entry_records(first)[3]
    walfile.patch(first, rec.offset, bytes(rec.size))
    with pytest.raises(CorruptionError):
        reopen(directory, segment_bytes=4096)


def test_zeros_that_are_not_a_whole_page_before_valid_records_are_corruption(
    paged_template: Path, tmp_path: Path
) -> None:
    """A zeroed record inside one page, followed by valid records: a page is written whole or
    not at all, so this is damage to written data, never a power cut."""
    directory, segment = copy(paged_template, tmp_path)
    rec = next(r for r in walfile.entry_records(segment) if r.offset > 4096 + 300)
    walfile.patch(segment, rec.offset, bytes(rec.size))
    with pytest.raises(CorruptionError) as info:
        reopen(directory, segment_bytes=1 << 16)
    assert info.value.offset == rec.offset

"""WriteAheadLog: the LogView contract, appends, truncation, compaction, snapshots, life cycle."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from kvstore.consensus.types import ConfState, Entry, EntryType, HardState, SnapshotMeta
from kvstore.errors import (
    InvalidArgumentError,
    LogCompactedError,
    LogUnavailableError,
    WalFailedError,
)
from kvstore.storage.wal import WriteAheadLog
from kvstore.testing import walformat
from tests.native import walfile

SMALL = 8192  # bytes per segment: a few dozen small entries, so rotation is easy to reach


def payload(index: int, term: int, size: int | None = None) -> bytes:
    """Deterministic data for an entry, of `size` bytes (default: varies with the index)."""
    size = (index * 7) % 50 if size is None else size
    unit = f"<{index}:{term}>".encode()
    return (unit * (size // len(unit) + 1))[:size]


def make(lo: int, hi: int, term: int, size: int | None = None) -> list[Entry]:
    """Entries [lo, hi) of `term`; every fifth is a configuration change."""
    return [
        Entry(
            term,
            i,
            EntryType.CONF_CHANGE if i % 5 == 0 else EntryType.NORMAL,
            payload(i, term, size),
        )
        for i in range(lo, hi)
    ]


@pytest.fixture
def wal_dir(tmp_path: Path) -> Path:
    return tmp_path / "wal"


def test_new_log_is_empty(wal_dir: Path) -> None:
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        assert (wal.first_index(), wal.last_index()) == (1, 0)
        assert wal.term(0) == 0
        assert wal.entries(1, 1) == []
        assert wal.hard_state() == HardState()
        assert wal.snapshot_meta() == SnapshotMeta()
        assert wal.initial_state() == (HardState(), ConfState())
        assert not wal.recovery.torn
    [segment] = walformat.segment_paths(wal_dir)
    assert segment.name == "0000000000000001-0000000000000001.wal"
    assert segment.stat().st_size == SMALL
    # The preamble (FORMAT.md §3): segment header, snapshot marker, hard state.
    kinds = [r.type for r in walformat.read_records(segment)]
    assert kinds == [walformat.REC_SEGMENT, walformat.REC_SNAPSHOT, walformat.REC_HARD_STATE]


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "data" / "node-1" / "wal", segment_bytes=SMALL) as wal:
        wal.append(make(1, 2, term=1))
    assert len(walformat.segment_paths(tmp_path / "data" / "node-1" / "wal")) == 1


def test_append_read_back_and_reopen(wal_dir: Path) -> None:
    entries = make(1, 40, term=3)
    hs = HardState(term=3, vote="node-7", commit=12)
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        wal.sync(wal.append(entries, hs))
        assert wal.entries(1, 40) == entries
        assert wal.hard_state() == hs
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        assert (wal.first_index(), wal.last_index()) == (1, 39)
        assert wal.entries(1, 40) == entries
        assert [wal.term(i) for i in range(0, 40)] == [0] + [3] * 39
        assert wal.initial_state() == (hs, ConfState())
        assert wal.recovery.records > 39


def test_entries_range_errors(wal_dir: Path) -> None:
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        wal.append(make(1, 11, term=1))
        wal.compact_through(SnapshotMeta(4, 1))
        assert wal.entries(5, 5) == []
        assert [e.index for e in wal.entries(5, 11)] == list(range(5, 11))
        with pytest.raises(LogCompactedError):
            wal.entries(4, 6)
        with pytest.raises(LogUnavailableError):
            wal.entries(5, 12)
        with pytest.raises(InvalidArgumentError):
            wal.entries(8, 7)
        assert wal.term(4) == 1
        with pytest.raises(LogCompactedError):
            wal.term(3)
        with pytest.raises(LogUnavailableError):
            wal.term(11)


def test_entries_max_bytes_takes_the_longest_prefix_that_fits(wal_dir: Path) -> None:
    sizes = [10, 20, 30, 40, 0, 50]
    entries = [Entry(1, i + 1, EntryType.NORMAL, b"x" * n) for i, n in enumerate(sizes)]
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        wal.append(entries)
        cases = {0: 1, 9: 1, 10: 1, 29: 1, 30: 2, 59: 2, 60: 3, 99: 3, 100: 5, 149: 5, 150: 6}
        for budget, count in cases.items():
            assert wal.entries(1, 7, budget) == entries[:count], budget
        assert wal.entries(2, 7, 0) == entries[1:2]  # always at least one
        assert wal.entries(1, 7, None) == entries


def test_overlapping_append_cuts_the_suffix_with_a_marker(wal_dir: Path) -> None:
    first = make(1, 11, term=1)
    second = make(6, 8, term=2)
    with WriteAheadLog(wal_dir, segment_bytes=1 << 16) as wal:
        wal.append(first)
        [segment] = walformat.segment_paths(wal_dir)
        before = segment.read_bytes()
        wal.sync(wal.append(second))
        assert wal.last_index() == 7
        assert wal.entries(1, 8) == first[:5] + second
        assert wal.term(7) == 2
    after = segment.read_bytes()
    records = walformat.read_records(segment)
    old_end = records[2 + len(first)].end  # preamble (3 records) + first batch
    # Nothing was rewritten: the old records are byte for byte where they were...
    assert after[:old_end] == before[:old_end]
    # ...and the cut is a TRUNCATE 5 record followed by the new entries.
    tail = [r for r in records if r.offset >= old_end]
    assert [(r.type, r.index) for r in tail] == [
        (walformat.REC_TRUNCATE, 5),
        (walformat.REC_ENTRY, 6),
        (walformat.REC_ENTRY, 7),
    ]
    with WriteAheadLog(wal_dir, segment_bytes=1 << 16) as wal:
        assert wal.entries(1, 8) == first[:5] + second


def test_append_rejects_gaps_disorder_and_compacted_indexes(wal_dir: Path) -> None:
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        wal.append(make(1, 6, term=1))
        position = wal.stats().appended_position
        with pytest.raises(InvalidArgumentError):
            wal.append(make(7, 8, term=1))  # gap after 5
        with pytest.raises(InvalidArgumentError):
            wal.append([Entry(1, 6), Entry(1, 8)])  # not consecutive
        with pytest.raises(InvalidArgumentError):
            wal.append([(1, 6, 0)])  # type: ignore[list-item]  # not an Entry
        wal.compact_through(SnapshotMeta(3, 1))
        position = wal.stats().appended_position
        with pytest.raises(LogCompactedError):
            wal.append(make(3, 5, term=2))
        # A refused append writes nothing.
        assert wal.stats().appended_position == position
        assert wal.entries(4, 6) == make(4, 6, term=1)


def test_truncate_after(wal_dir: Path) -> None:
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        wal.append(make(1, 21, term=1))
        wal.sync(wal.truncate_after(12))
        assert wal.last_index() == 12
        position = wal.stats().appended_position
        assert wal.truncate_after(12) == position  # nothing to cut: no record
        assert wal.truncate_after(30) == position
        wal.compact_through(SnapshotMeta(5, 1))
        with pytest.raises(LogCompactedError):
            wal.truncate_after(4)
        wal.sync(wal.truncate_after(5))
        assert (wal.first_index(), wal.last_index()) == (6, 5)
        wal.sync(wal.append(make(6, 9, term=2)))
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        assert (wal.first_index(), wal.last_index()) == (6, 8)
        assert wal.entries(6, 9) == make(6, 9, term=2)


def test_hard_state_alone_and_vote_limits(wal_dir: Path) -> None:
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        wal.append([], HardState(term=2, vote="a", commit=0))
        wal.append([], HardState(term=5, vote=None, commit=9))
        wal.sync()
        with pytest.raises(InvalidArgumentError):
            wal.append([], HardState(term=6, vote="x" * 1025))
        with pytest.raises(InvalidArgumentError):
            wal.append([], HardState(term=6, vote=""))
        position = wal.stats().appended_position
        assert wal.append([]) == position  # nothing to write: no record
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        assert wal.hard_state() == HardState(term=5, vote=None, commit=9)
        wal.append([], HardState(term=6, vote="v" * 1024))
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        assert wal.hard_state() == HardState(term=6, vote="v" * 1024)


def test_rotation_names_sort_in_log_order(wal_dir: Path) -> None:
    entries = make(1, 301, term=1, size=100)
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        for k in range(0, 300, 7):  # many small batches
            wal.append(entries[k : k + 7])
        wal.sync()
        assert wal.stats().segment_count == len(walformat.segment_paths(wal_dir)) > 3
    paths = walformat.segment_paths(wal_dir)
    assert [walformat.segment_seq(p) for p in paths] == list(range(1, len(paths) + 1))
    next_index = 1
    for path in paths:
        assert path.stat().st_size == SMALL
        first_in_name = int(path.stem.split("-")[1], 16)
        indexes = [r.index for r in walfile.entry_records(path)]
        # The name's first index is the index the segment's first entry has.
        assert first_in_name == next_index == indexes[0]
        next_index = indexes[-1] + 1
    assert next_index == 301
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        assert wal.entries(1, 301) == entries


def test_record_bigger_than_a_segment(wal_dir: Path) -> None:
    big = Entry(1, 2, EntryType.NORMAL, bytes(range(256)) * 400)  # 100 KiB in 8 KiB segments
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        wal.append(make(1, 2, term=1))
        wal.sync(wal.append([big, *make(3, 5, term=1)]))
        assert wal.entries(2, 3) == [big]
    sizes = [p.stat().st_size for p in walformat.segment_paths(wal_dir)]
    grown = [s for s in sizes if s > SMALL]
    assert len(grown) == 1 and grown[0] % 4096 == 0 and grown[0] > len(big.data)
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        assert wal.entries(1, 5) == [*make(1, 2, term=1), big, *make(3, 5, term=1)]


def test_compaction_deletes_only_whole_segments(wal_dir: Path) -> None:
    entries = make(1, 201, term=2, size=100)
    conf = ConfState(("a", "b", "c"), ("d",))
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        for k in range(0, 200, 10):
            wal.append(entries[k : k + 10])
        before = {
            p: [r.index for r in walfile.entry_records(p)] for p in walformat.segment_paths(wal_dir)
        }
        wal.compact_through(SnapshotMeta(120, 2, conf))
        after = walformat.segment_paths(wal_dir)
        deleted = set(before) - set(after)
        # Exactly the segments before the one holding entry 121 went away.
        holder = next(p for p, idx in before.items() if 121 in idx)
        assert deleted == {p for p in before if p < holder}
        assert min(after) == holder
        assert wal.stats().segments_deleted == len(deleted) > 0
        assert (wal.first_index(), wal.last_index()) == (121, 200)
        assert wal.snapshot_meta() == SnapshotMeta(120, 2, conf)
        assert wal.term(120) == 2
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        assert (wal.first_index(), wal.last_index()) == (121, 200)
        assert wal.entries(121, 201) == entries[120:]
        assert wal.snapshot_meta() == SnapshotMeta(120, 2, conf)
        wal.compact_through(SnapshotMeta(200, 2, conf))  # everything: only the newest stays
        assert len(walformat.segment_paths(wal_dir)) == 1
        assert (wal.first_index(), wal.last_index()) == (201, 200)
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        assert (wal.first_index(), wal.last_index(), wal.term(200)) == (201, 200, 2)


def test_compaction_argument_errors(wal_dir: Path) -> None:
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        wal.append(make(1, 11, term=1) + make(11, 13, term=2))
        with pytest.raises(LogUnavailableError):
            wal.compact_through(SnapshotMeta(13, 2))
        with pytest.raises(InvalidArgumentError):
            wal.compact_through(SnapshotMeta(11, 1))  # entry 11 has term 2
        wal.compact_through(SnapshotMeta(11, 2))
        position = wal.stats().appended_position
        wal.compact_through(SnapshotMeta(11, 2))  # the same point again: a no-op
        assert wal.stats().appended_position == position
        with pytest.raises(LogCompactedError):
            wal.compact_through(SnapshotMeta(10, 1))


def test_install_snapshot_discards_the_log(wal_dir: Path) -> None:
    conf = ConfState(("x", "y"))
    hs = HardState(term=4, vote="x", commit=30)
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        wal.append(make(1, 101, term=1), hs)
        wal.install_snapshot(SnapshotMeta(50, 3, conf))  # below the old last index, too
        assert (wal.first_index(), wal.last_index(), wal.term(50)) == (51, 50, 3)
        assert wal.hard_state() == hs
        assert wal.snapshot_meta() == SnapshotMeta(50, 3, conf)
        assert len(walformat.segment_paths(wal_dir)) == 1
        with pytest.raises(InvalidArgumentError):
            wal.append(make(52, 53, term=4))
        wal.sync(wal.append(make(51, 53, term=4)))
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        assert (wal.first_index(), wal.last_index()) == (51, 52)
        assert wal.entries(51, 53) == make(51, 53, term=4)
        assert wal.initial_state() == (hs, conf)
        wal.install_snapshot(SnapshotMeta(1000, 9))
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        assert (wal.first_index(), wal.last_index(), wal.term(1000)) == (1001, 1000, 9)
        assert wal.snapshot_meta() == SnapshotMeta(1000, 9, ConfState())


def test_close_is_idempotent_and_final(wal_dir: Path) -> None:
    wal = WriteAheadLog(wal_dir, segment_bytes=SMALL)
    wal.append(make(1, 3, term=1))
    wal.close()
    wal.close()
    for call in (wal.last_index, wal.sync, lambda: wal.append(make(3, 4, term=1))):
        with pytest.raises(WalFailedError, match="closed"):
            call()


def test_one_handle_per_directory(wal_dir: Path) -> None:
    with WriteAheadLog(wal_dir, segment_bytes=SMALL):
        with pytest.raises(OSError) as info:
            WriteAheadLog(wal_dir, segment_bytes=SMALL)
        assert info.value.errno == errno.EBUSY
    WriteAheadLog(wal_dir, segment_bytes=SMALL).close()  # released by close


def test_stale_temporary_segment_is_removed(wal_dir: Path) -> None:
    WriteAheadLog(wal_dir, segment_bytes=SMALL).close()
    (wal_dir / "segment.tmp").write_bytes(b"half-prepared")
    (wal_dir / "notes.txt").write_bytes(b"not ours")
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        assert wal.last_index() == 0
    assert not (wal_dir / "segment.tmp").exists()
    assert (wal_dir / "notes.txt").exists()


def test_sync_positions(wal_dir: Path) -> None:
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        p1 = wal.append(make(1, 5, term=1))
        p2 = wal.append(make(5, 9, term=1))
        assert p2 > p1
        wal.sync(p1)
        assert wal.stats().durable_position >= p1
        with pytest.raises(InvalidArgumentError):
            wal.sync(p2 + 1)
        wal.sync()
        assert wal.stats().durable_position == p2


def test_table_crc_and_sse42_crc_read_each_others_logs(wal_dir: Path) -> None:
    with WriteAheadLog(wal_dir, segment_bytes=SMALL, portable_crc=True) as wal:
        wal.append(make(1, 60, term=1))
    with WriteAheadLog(wal_dir, segment_bytes=SMALL) as wal:
        assert wal.entries(1, 60) == make(1, 60, term=1)
        wal.append(make(60, 90, term=2))
    with WriteAheadLog(wal_dir, segment_bytes=SMALL, portable_crc=True) as wal:
        assert wal.entries(1, 90) == make(1, 60, term=1) + make(60, 90, term=2)


def test_reads_run_alongside_appends_and_syncs(wal_dir: Path) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []
    with WriteAheadLog(wal_dir, segment_bytes=1 << 16) as wal:
        wal.append(make(1, 2, term=1))

        def writer() -> None:
            try:
                for i in range(2, 400):
                    wal.sync(wal.append(make(i, i + 1, term=1)))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                stop.set()

        thread = threading.Thread(target=writer)
        thread.start()
        reads = 0
        while not stop.is_set() or reads == 0:
            last = wal.last_index()
            got = wal.entries(1, last + 1)
            assert [e.index for e in got] == list(range(1, last + 1))
            assert got[-1] == make(last, last + 1, term=1)[0]
            reads += 1
        thread.join()
    assert not errors
    assert reads > 0


def test_close_waits_for_a_sync_in_another_thread(wal_dir: Path) -> None:
    wal = WriteAheadLog(wal_dir, segment_bytes=1 << 16)
    outcome: list[str] = []
    started = threading.Event()

    def syncer() -> None:
        index = 1
        try:
            while True:
                wal.sync(wal.append(make(index, index + 1, term=1)))
                index += 1
                started.set()
        except WalFailedError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=syncer)
    thread.start()
    assert started.wait(10)
    wal.close()
    thread.join(10)
    assert not thread.is_alive()
    assert outcome and "closed" in outcome[0]

"""Disk faults of the nemesis, applied to a real redo log written through `WriteAheadLog`.

A torn last write (cut at a random byte, or with a zeroed sector) must be cut at open with every
entry kept; a flipped byte with valid records after it must refuse the open with
`CorruptionError` naming the file and the damaged record's offset.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kvstore.consensus.types import Entry, HardState
from kvstore.errors import CorruptionError
from kvstore.storage.wal import WriteAheadLog
from kvstore.testing import walformat
from kvstore.testing.nemesis import (
    flip_middle_byte,
    tear_tail,
    wal_segments,
    zero_tail_sector,
)

SEGMENT_BYTES = 64 << 10


def write_log(data_dir: Path, entries: int, rng: random.Random) -> list[Entry]:
    written = [
        Entry(term=1 + i // 50, index=i + 1, data=rng.randbytes(rng.randrange(10, 400)))
        for i in range(entries)
    ]
    with WriteAheadLog(data_dir / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        for start in range(0, entries, 7):
            batch = written[start : start + 7]
            wal.append(batch, HardState(term=batch[-1].term, vote="n1", commit=batch[0].index))
            wal.sync()
    return written


def test_scan_finds_every_record_of_a_fresh_log(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    write_log(tmp_path, 40, rng)
    (segment,) = wal_segments(tmp_path)
    records = walformat.read_records(segment)  # it verifies each record's CRC
    assert records[0].offset == 0 and records[0].type == 1  # the SEGMENT header
    assert sum(1 for r in records if r.type == 2) == 40  # one ENTRY record per entry


@pytest.mark.parametrize("fault", [tear_tail, zero_tail_sector])
def test_torn_last_write_is_cut_and_nothing_is_lost(
    tmp_path: Path, fault: object, seed: int
) -> None:
    s = seed
    rng = random.Random(s)
    written = write_log(tmp_path, 60, rng)
    damage = fault(tmp_path, rng)  # type: ignore[operator]
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        assert wal.recovery.torn, f"seed {s}: {damage}"
        assert wal.recovery.torn_offset == damage.offset, f"seed {s}: {damage}"
        assert wal.last_index() == len(written)
        assert wal.entries(1, len(written) + 1) == written
    # The cut is durable: a second open finds a clean log.
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        assert not wal.recovery.torn


def test_flipped_byte_in_the_middle_refuses_to_open(tmp_path: Path, seed: int) -> None:
    s = seed
    rng = random.Random(s)
    write_log(tmp_path, 60, rng)
    damage = flip_middle_byte(tmp_path, rng)
    with pytest.raises(CorruptionError) as caught:
        WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES)
    assert caught.value.path == str(damage.path), f"seed {s}: {damage}"
    assert caught.value.offset == damage.offset, f"seed {s}: {damage}"


def test_flipped_byte_in_an_older_segment_refuses_to_open(tmp_path: Path, seed: int) -> None:
    s = seed
    rng = random.Random(s)
    write_log(tmp_path, 600, rng)  # about 130 KiB of entries: several 64 KiB segments
    segments = wal_segments(tmp_path)
    assert len(segments) >= 3
    damage = flip_middle_byte(tmp_path, rng)
    assert damage.path != segments[-1]
    with pytest.raises(CorruptionError) as caught:
        WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES)
    assert caught.value.path == str(damage.path), f"seed {s}: {damage}"
    assert caught.value.offset == damage.offset, f"seed {s}: {damage}"

"""Damage helpers for the redo-log tests, in the style of LevelDB's log_test (IncrementByte,
ShrinkSize, FixChecksum).

Reading and writing the format is `kvstore.testing.walformat`'s job (the one Python reader of
native/FORMAT.md); this module only changes bytes in place.
"""

from __future__ import annotations

import struct
from pathlib import Path

from kvstore.testing import walformat


def patch(path: Path, offset: int, data: bytes) -> None:
    """Overwrite bytes in place (no fsync: the tests reopen in the same process)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def flip_byte(path: Path, offset: int) -> None:
    """LevelDB's IncrementByte: change one byte."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([(b[0] + 1) & 0xFF]))


def zero_from(path: Path, offset: int) -> None:
    """Zero everything from `offset` to the end of the file (a tail that never reached disk)."""
    size = path.stat().st_size
    patch(path, offset, bytes(size - offset))


def fix_crc(path: Path, record_offset: int) -> None:
    """LevelDB's FixChecksum: recompute a record's CRC after its bytes were changed."""
    data = path.read_bytes()
    length = struct.unpack_from("<I", data, record_offset + 4)[0]
    covered = data[record_offset + 4 : record_offset + walformat.HEADER_BYTES + length]
    crc = walformat.record_crc(walformat.segment_seq(path), record_offset, covered)
    patch(path, record_offset, struct.pack("<I", crc))


def entry_records(path: Path) -> list[walformat.Record]:
    """The ENTRY records of a segment."""
    return [r for r in walformat.read_records(path) if r.type == walformat.REC_ENTRY]


# Two names of the reader that tests written before walformat reach through this module (the
# power-loss damage tests): the same objects as walformat's, not another reader.
Record = walformat.Record
segment_paths = walformat.segment_paths

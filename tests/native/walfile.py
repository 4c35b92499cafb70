"""A small, independent reader of the redo-log format (native/FORMAT.md) for damage tests.

It re-implements the framing from the document (not from the C code), so the tests that use it
also check that the C code writes what the document says. LevelDB's log_test has the same kind of
helpers (IncrementByte, ShrinkSize, FixChecksum).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import crcmod.predefined

crc32c = crcmod.predefined.mkCrcFun("crc-32c")

HEADER_BYTES = 12
REC_SEGMENT = 1
REC_ENTRY = 2
REC_HARD_STATE = 3
REC_TRUNCATE = 4
REC_SNAPSHOT = 5
TYPE_MAX = 5


def mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record_crc(seq: int, offset: int, covered: bytes) -> int:
    """The stored CRC of a record whose bytes [4, 12 + length) are `covered`."""
    return mask(crc32c(covered, crc32c(struct.pack("<QQ", seq, offset))))


def padded(n: int) -> int:
    return (n + 7) & ~7


@dataclass(frozen=True)
class Record:
    offset: int
    length: int
    type: int
    aux: int
    payload: bytes

    @property
    def size(self) -> int:
        """Bytes on disk, padding included."""
        return padded(HEADER_BYTES + self.length)

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def index(self) -> int:
        """For ENTRY, TRUNCATE and SNAPSHOT records: the index field."""
        return int(struct.unpack_from("<Q", self.payload)[0])

    @property
    def last(self) -> int:
        """For TRUNCATE records: the last entry of its batch (the index for a bare cut, and for
        the 8-byte payload of older builds)."""
        if len(self.payload) < 16:
            return self.index
        return int(struct.unpack_from("<Q", self.payload, 8)[0])


def segment_paths(directory: str | os.PathLike[str]) -> list[Path]:
    """Segment files in log order (their names sort that way)."""
    return sorted(p for p in Path(directory).iterdir() if p.suffix == ".wal")


def segment_seq(path: Path) -> int:
    return int(path.name.split("-")[0], 16)


def read_records(path: Path) -> list[Record]:
    """The valid records of a segment, up to the first invalid or zero header."""
    data = path.read_bytes()
    seq = segment_seq(path)
    records = []
    offset = 0
    while offset + HEADER_BYTES <= len(data):
        crc, length, rtype, aux, reserved = struct.unpack_from("<IIBBH", data, offset)
        if rtype == 0 or rtype > TYPE_MAX or reserved != 0:
            break
        end = offset + HEADER_BYTES + length
        if end > len(data):
            break
        if record_crc(seq, offset, data[offset + 4 : end]) != crc:
            break
        records.append(Record(offset, length, rtype, aux, data[offset + HEADER_BYTES : end]))
        offset += padded(HEADER_BYTES + length)
    return records


def entry_records(path: Path) -> list[Record]:
    return [r for r in read_records(path) if r.type == REC_ENTRY]


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
    covered = data[record_offset + 4 : record_offset + HEADER_BYTES + length]
    crc = record_crc(segment_seq(path), record_offset, covered)
    patch(path, record_offset, struct.pack("<I", crc))


def encode_record(seq: int, offset: int, rtype: int, payload: bytes, aux: int = 0) -> bytes:
    """A valid record (padding included) for file offset `offset` of segment `seq`."""
    covered = struct.pack("<IBBH", len(payload), rtype, aux, 0) + payload
    raw = struct.pack("<I", record_crc(seq, offset, covered)) + covered
    return raw + bytes(padded(len(raw)) - len(raw))


def records_end(path: Path) -> int:
    """The offset just past the last valid record of a segment (where the next would go)."""
    records = read_records(path)
    return records[-1].end if records else 0

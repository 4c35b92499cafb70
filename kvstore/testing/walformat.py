"""The redo log's on-disk format (native/FORMAT.md) in Python: one reader and one writer.

A public testing helper. Applications that torture-test themselves with `kvstore.testing` can
read a member's log with it (`read_records`, `read_segment_header`) or forge what a crash or a
bad disk leaves behind (`encode_record`, `record_crc`). Inside kvstore it is the only Python
code that knows the format: the nemesis's disk faults, the damage tests and the pure-Python
baseline of the log benchmark all use it.

It follows the document, not the C code, so a test that reads with it what the C library wrote
also checks that the C library writes what the document says. The CRC32C primitive is the
library's own (`kvstore.storage.wal.crc32c`); tests/native/test_crc32c.py checks it against an
independent implementation.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from kvstore.errors import CorruptionError
from kvstore.storage.wal import crc32c

__all__ = [
    "HEADER_BYTES",
    "REC_ENTRY",
    "REC_HARD_STATE",
    "REC_SEGMENT",
    "REC_SNAPSHOT",
    "REC_TRUNCATE",
    "SEGMENT_FLAGS_KNOWN",
    "SEGMENT_MAGIC",
    "SEGMENT_VERSION",
    "SEGMENT_VERSIONS_READ",
    "SNAPSHOT_FLAG_RESET",
    "Record",
    "SegmentHeader",
    "encode_entries",
    "encode_preamble",
    "encode_record",
    "mask",
    "padded",
    "read_records",
    "read_segment_header",
    "record_crc",
    "records_end",
    "segment_name",
    "segment_paths",
    "segment_seq",
]

HEADER_BYTES = 12
"""Bytes of a record header: crc u32, length u32, type u8, aux u8, reserved u16 (§2)."""

REC_SEGMENT = 1
REC_ENTRY = 2
REC_HARD_STATE = 3
REC_TRUNCATE = 4
REC_SNAPSHOT = 5
_TYPE_MAX = REC_SNAPSHOT

SNAPSHOT_FLAG_RESET = 0x1
"""The `aux` bit of a SNAPSHOT record that installs a snapshot (§4)."""

SEGMENT_MAGIC = b"KVWALSEG"
SEGMENT_VERSION = 2
"""The segment format version writers write (FORMAT.md §8 says when it changes)."""
SEGMENT_VERSIONS_READ = (1, 2)
"""Every segment format version a reader accepts."""
SEGMENT_FLAGS_KNOWN = 0
"""The SEGMENT header flags a reader knows (none yet): any other bit is refused."""

_SEED = struct.Struct("<QQ")  # the CRC seed: segment seq, record offset
_HEAD_TAIL = struct.Struct("<IBBH")  # length, type, aux, reserved: header bytes [4, 12)
_HEADER = struct.Struct("<IIBBH")
_U32 = struct.Struct("<I")
_ENTRY_FIXED = struct.Struct("<QQ")  # index, term
_SEGMENT_PAYLOAD = struct.Struct("<8sIIQQ")  # magic, version, flags, seq, first_index
_PADS = [bytes(n) for n in range(8)]


def mask(crc: int) -> int:
    """LevelDB's CRC mask (§2): stored CRCs are masked."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record_crc(seq: int, offset: int, covered: bytes | bytearray | memoryview) -> int:
    """The stored CRC of a record at `offset` of segment `seq` whose bytes `[4, 12 + length)`
    (length, type, aux, reserved and payload) are `covered`."""
    return mask(crc32c(covered, crc32c(_SEED.pack(seq, offset))))


def padded(n: int) -> int:
    """`n` rounded up to a multiple of 8: every record starts 8-aligned."""
    return (n + 7) & ~7


def encode_record(seq: int, offset: int, rtype: int, payload: bytes, aux: int = 0) -> bytes:
    """A valid record (padding included) for file offset `offset` of segment `seq`."""
    covered = _HEAD_TAIL.pack(len(payload), rtype, aux, 0) + payload
    raw = _U32.pack(record_crc(seq, offset, covered)) + covered
    return raw + _PADS[-len(raw) % 8]


def encode_entries(seq: int, offset: int, entries: Iterable[tuple[int, int, int, bytes]]) -> bytes:
    """ENTRY records for `(term, index, type, data)` tuples (a `kvstore.consensus.types.Entry` is
    one), laid out from `offset` of segment `seq`: what one append of these entries writes."""
    parts: list[bytes] = []
    append = parts.append
    head = _HEAD_TAIL.pack
    fixed = _ENTRY_FIXED.pack
    seed = _SEED.pack
    crc_pack = _U32.pack
    crc32 = crc32c
    for term, index, etype, data in entries:
        length = 16 + len(data)
        body = head(length, REC_ENTRY, etype, 0) + fixed(index, term)
        body += data
        crc = crc32(body, crc32(seed(seq, offset)))
        pad = -(HEADER_BYTES + length) % 8
        append(crc_pack((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF))
        append(body)
        append(_PADS[pad])
        offset += HEADER_BYTES + length + pad
    return b"".join(parts)


def encode_preamble(
    seq: int,
    first_index: int,
    *,
    version: int = SEGMENT_VERSION,
    flags: int = 0,
    snapshot: tuple[int, int] = (0, 0),
    reset: bool = False,
    hard_state: tuple[int, int, bytes] = (0, 0, b""),
) -> bytes:
    """The preamble a segment starts with (§3): SEGMENT, SNAPSHOT `(index, term)` (with the
    RESET flag if `reset`) and HARD_STATE `(term, commit, vote)`. `version` and `flags` may be
    set to anything, to build segments that readers must refuse."""
    out = encode_record(
        seq, 0, REC_SEGMENT, _SEGMENT_PAYLOAD.pack(SEGMENT_MAGIC, version, flags, seq, first_index)
    )
    snap = _ENTRY_FIXED.pack(*snapshot)
    out += encode_record(seq, len(out), REC_SNAPSHOT, snap, SNAPSHOT_FLAG_RESET if reset else 0)
    term, commit, vote = hard_state
    out += encode_record(seq, len(out), REC_HARD_STATE, _ENTRY_FIXED.pack(term, commit) + vote)
    return out


@dataclass(frozen=True)
class Record:
    """One valid record of a segment, where it lies and what it holds."""

    offset: int
    length: int
    """Payload bytes (without header and padding)."""
    type: int
    aux: int
    payload: bytes

    @property
    def size(self) -> int:
        """Bytes on disk, padding included."""
        return padded(HEADER_BYTES + self.length)

    @property
    def end(self) -> int:
        """The offset just past this record: where the next one starts."""
        return self.offset + self.size

    @property
    def index(self) -> int:
        """For ENTRY, TRUNCATE and SNAPSHOT records: the index field."""
        return int(struct.unpack_from("<Q", self.payload)[0])

    @property
    def last(self) -> int:
        """For TRUNCATE records: the last entry of its batch (the index for a bare cut, and for
        the 8-byte payload that version 1 also allowed)."""
        if len(self.payload) < 16:
            return self.index
        return int(struct.unpack_from("<Q", self.payload, 8)[0])


class SegmentHeader(NamedTuple):
    """The SEGMENT record at the start of a segment file."""

    version: int
    flags: int
    seq: int
    first_index: int


def segment_name(seq: int, first_index: int) -> str:
    """The file name of a segment (§1): both numbers as 16 lower-case hex digits."""
    return f"{seq:016x}-{first_index:016x}.wal"


def segment_paths(log_dir: str | os.PathLike[str]) -> list[Path]:
    """The segment files of the log in `log_dir`, in log order (their names sort that way)."""
    return sorted(p for p in Path(log_dir).glob("*-*.wal") if p.is_file())


def segment_seq(path: Path) -> int:
    """A segment's `seq`, from its file name."""
    return int(path.name.split("-", 1)[0], 16)


def read_records(path: Path) -> list[Record]:
    """The valid records of a segment, in order, up to the first invalid or zero header.

    Framing and CRC only: the meaning of the records (§4) and the segment header's fields are
    not checked here (see `read_segment_header`).
    """
    data = path.read_bytes()
    seq = segment_seq(path)
    records = []
    offset = 0
    while offset + HEADER_BYTES <= len(data):
        crc, length, rtype, aux, reserved = _HEADER.unpack_from(data, offset)
        if rtype == 0 or rtype > _TYPE_MAX or reserved != 0:
            break
        end = offset + HEADER_BYTES + length
        if end > len(data) or record_crc(seq, offset, data[offset + 4 : end]) != crc:
            break
        records.append(Record(offset, length, rtype, aux, data[offset + HEADER_BYTES : end]))
        offset = padded(end)
    return records


def read_segment_header(path: Path) -> SegmentHeader:
    """The segment's header, checked as the C reader checks it (§6, §8).

    Raises `CorruptionError` (with the path and offset 0) if the first record is not a valid
    SEGMENT record, if its magic, seq or first index disagree with the file, if its version is
    not one of `SEGMENT_VERSIONS_READ`, or if it sets a flag outside `SEGMENT_FLAGS_KNOWN`.
    """
    records = read_records(path)

    def refuse(why: str) -> CorruptionError:
        return CorruptionError(f"redo log segment: {why}", path=str(path), offset=0)

    if not records or records[0].type != REC_SEGMENT or records[0].length != _SEGMENT_PAYLOAD.size:
        raise refuse("damaged segment header")
    magic, version, flags, seq, first_index = _SEGMENT_PAYLOAD.unpack(records[0].payload)
    if magic != SEGMENT_MAGIC:
        raise refuse("not a kvstore log segment (bad magic)")
    if version not in SEGMENT_VERSIONS_READ:
        supported = ", ".join(map(str, SEGMENT_VERSIONS_READ))
        raise refuse(
            f"segment format version {version} is not supported (this build reads versions "
            f"{supported})"
        )
    if flags & ~SEGMENT_FLAGS_KNOWN:
        raise refuse(
            f"segment header flags {flags:#x} are not known (known: {SEGMENT_FLAGS_KNOWN:#x})"
        )
    if path.name != segment_name(seq, first_index):
        raise refuse("segment header does not match its file name")
    return SegmentHeader(version, flags, seq, first_index)


def records_end(path: Path) -> int:
    """The offset just past the last valid record of a segment (where the next would go)."""
    records = read_records(path)
    return records[-1].end if records else 0

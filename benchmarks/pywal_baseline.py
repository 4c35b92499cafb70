"""A pure-Python writer of the redo-log format (native/FORMAT.md): the benchmark baseline.

It does what the C library does on append, the way one would write it in Python: `struct` for
the framing, `crcmod`'s CRC32C (its C extension) for the checksums, one `os.pwrite` per batch.
It writes a real segment (preamble included) that `WriteAheadLog` can open, which
tests/native/test_format.py checks, so the comparison is like for like.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

import crcmod.predefined

from kvstore.raft.types import Entry

_crc32c = crcmod.predefined.mkCrcFun("crc-32c")

REC_SEGMENT = 1
REC_ENTRY = 2
REC_HARD_STATE = 3
REC_SNAPSHOT = 5
HEADER_BYTES = 12

_SEED = struct.Struct("<QQ")
_HEAD_TAIL = struct.Struct("<IBBH")  # length, type, aux, reserved: header bytes [4, 12)
_ENTRY_FIXED = struct.Struct("<QQ")  # index, term
_CRC = struct.Struct("<I")
_PADS = [b"\0" * n for n in range(8)]


def mask(crc: int) -> int:
    """LevelDB's CRC mask (FORMAT.md §2)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def encode_record(seq: int, offset: int, rtype: int, aux: int, payload: bytes) -> bytes:
    """One record, padded to 8 bytes, as it sits at `offset` of segment `seq`."""
    body = _HEAD_TAIL.pack(len(payload), rtype, aux, 0) + payload
    crc = mask(_crc32c(body, _crc32c(_SEED.pack(seq, offset))))
    return _CRC.pack(crc) + body + _PADS[-(HEADER_BYTES + len(payload)) % 8]


class PyWalWriter:
    """Appends ENTRY records to one preallocated segment file in `directory`."""

    def __init__(self, directory: str, *, segment_bytes: int = 64 << 20, seq: int = 1) -> None:
        os.makedirs(directory, exist_ok=True)
        self.seq = seq
        self.path = os.path.join(directory, f"{seq:016x}-{1:016x}.wal")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.posix_fallocate(self.fd, 0, segment_bytes)
        self.size = segment_bytes
        preamble = encode_record(
            seq, 0, REC_SEGMENT, 0, b"KVWALSEG" + struct.pack("<IIQQ", 1, 0, seq, 1)
        )
        preamble += encode_record(seq, len(preamble), REC_SNAPSHOT, 0, struct.pack("<QQ", 0, 0))
        preamble += encode_record(seq, len(preamble), REC_HARD_STATE, 0, struct.pack("<QQ", 0, 0))
        os.pwrite(self.fd, preamble, 0)
        self.offset = len(preamble)

    def append(self, entries: Sequence[Entry]) -> int:
        """Encode and write `entries` with one pwrite; returns the new end offset."""
        seq = self.seq
        offset = self.offset
        parts = []
        seed = _SEED.pack
        head = _HEAD_TAIL.pack
        fixed = _ENTRY_FIXED.pack
        crc32c = _crc32c
        for entry in entries:
            length = 16 + len(entry.data)
            body = head(length, REC_ENTRY, entry.type, 0) + fixed(entry.index, entry.term)
            body += entry.data
            crc = crc32c(body, crc32c(seed(seq, offset)))
            parts.append(_CRC.pack((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF))
            parts.append(body)
            pad = -(HEADER_BYTES + length) % 8
            parts.append(_PADS[pad])
            offset += HEADER_BYTES + length + pad
        if offset > self.size:
            raise ValueError("segment full: the baseline writes one segment only")
        os.pwrite(self.fd, b"".join(parts), self.offset)
        self.offset = offset
        return offset

    def sync(self) -> None:
        """fdatasync the segment."""
        os.fdatasync(self.fd)

    def close(self) -> None:
        """Close the file."""
        os.close(self.fd)

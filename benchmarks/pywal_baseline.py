"""A pure-Python writer of the redo-log format (native/FORMAT.md): the benchmark baseline.

It does what the C library does on append, the way one would write it in Python: `struct` for
the framing, a CRC32C in C called once per record (the library's, through cffi), one `os.pwrite`
per batch. The encoding is `kvstore.testing.walformat`'s, the one Python writer of the format.
It writes a real segment (preamble included) that `WriteAheadLog` can open (tests/storage/
test_walformat.py checks that of walformat's writer), so the comparison is like for like.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from kvstore.consensus.types import Entry
from kvstore.testing import walformat


class PyWalWriter:
    """Appends ENTRY records to one preallocated segment file in `directory`."""

    def __init__(self, directory: str, *, segment_bytes: int = 64 << 20, seq: int = 1) -> None:
        os.makedirs(directory, exist_ok=True)
        self.seq = seq
        self.path = os.path.join(directory, walformat.segment_name(seq, 1))
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.posix_fallocate(self.fd, 0, segment_bytes)
        self.size = segment_bytes
        preamble = walformat.encode_preamble(seq, 1)
        os.pwrite(self.fd, preamble, 0)
        self.offset = len(preamble)

    def append(self, entries: Sequence[Entry]) -> int:
        """Encode and write `entries` with one pwrite; returns the new end offset."""
        records = walformat.encode_entries(self.seq, self.offset, entries)
        offset = self.offset + len(records)
        if offset > self.size:
            raise ValueError("segment full: the baseline writes one segment only")
        os.pwrite(self.fd, records, self.offset)
        self.offset = offset
        return offset

    def sync(self) -> None:
        """fdatasync the segment."""
        os.fdatasync(self.fd)

    def close(self) -> None:
        """Close the file."""
        os.close(self.fd)

"""kvwal_log_append_msgpack: the msgpack framing of the entries' data (kvwal.h).

Every bin and array size class is accepted; anything malformed is refused with KVWAL_EINVAL
before a byte is written."""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Any

import msgpack
import pytest
from kvstore._kvwal import ffi, lib

from kvstore.storage.wal import WriteAheadLog


def call(wal: WriteAheadLog, count: int, packed: bytes, first: int = 1) -> int:
    out = ffi.new("uint64_t *")
    rc: int = lib.kvwal_log_append_msgpack(
        wal._handle,
        count,
        ffi.from_buffer("uint64_t[]", array("Q", range(first, first + count))),
        ffi.from_buffer("uint64_t[]", array("Q", [3] * count)),
        bytes(count),
        packed,
        len(packed),
        ffi.NULL,
        out,
    )
    return rc


@pytest.mark.parametrize(
    "datas",
    [
        [b"one"],
        [b""] * 15,  # fixarray
        [b"x"] * 16,  # array 16
        [b"y"] * 70000,  # array 32
        [b"s" * 255, b"m" * 256, b"l" * 65535, b"L" * 65536],  # bin 8 / 16 / 16 / 32
    ],
    ids=["one", "fixarray", "array16", "array32", "bin-sizes"],
)
def test_every_size_class_reads_back(tmp_path: Path, datas: list[bytes]) -> None:
    with WriteAheadLog(tmp_path / "wal") as wal:
        assert call(wal, len(datas), msgpack.packb(datas)) == 0
        assert [e.data for e in wal.entries(1, len(datas) + 1)] == datas
        assert {e.term for e in wal.entries(1, len(datas) + 1)} == {3}


def _bad_cases() -> dict[str, tuple[int, bytes]]:
    two = msgpack.packb([b"ab", b"cd"])
    return {
        "not-an-array": (1, msgpack.packb(b"ab")),
        "fewer-items": (3, two),
        "more-items": (1, two),
        "str-item": (2, msgpack.packb([b"ab", "cd"])),
        "int-item": (2, msgpack.packb([b"ab", 5])),
        "trailing-byte": (2, two + b"\x00"),
        "item-cut-short": (2, two[:-1]),
        "header-cut-short": (2, b"\xdc\x00"),
        "empty": (1, b""),
        "bin-length-past-end": (1, b"\x91\xc6\xff\xff\xff\xff"),
    }


@pytest.mark.parametrize("name", sorted(_bad_cases()))
def test_malformed_framing_is_refused_and_writes_nothing(tmp_path: Path, name: str) -> None:
    count, packed = _bad_cases()[name]
    with WriteAheadLog(tmp_path / "wal") as wal:
        before = wal.stats().appended_position
        assert call(wal, count, packed) == lib.KVWAL_EINVAL
        error: Any = ffi.new("kvwal_error_t *")
        assert lib.kvwal_error_last(error) == 0  # this thread's failed call
        assert error.code == lib.KVWAL_EINVAL
        assert ffi.string(error.message).startswith(b"append:")
        assert wal.stats().appended_position == before
        assert wal.last_index() == 0
        assert call(wal, 2, msgpack.packb([b"ok", b"!"])) == 0  # not poisoned
        assert [e.data for e in wal.entries(1, 3)] == [b"ok", b"!"]

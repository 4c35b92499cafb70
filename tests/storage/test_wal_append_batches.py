"""WriteAheadLog.append with many entries: the column-building fast paths against the plain ones.

append() takes a shortcut for a batch that shares one term and holds only NORMAL entries, and
frames the data with msgpack (kvwal_log_append_msgpack). These tests mix batches that do and do
not take each shortcut, data of every msgpack bin size class, and byte-like data of other types,
and check what reads back, before and after a reopen, and that the bytes on disk are the ones
the C entry point with explicit lengths (kvwal_log_append) writes for the same entries.
"""

from __future__ import annotations

import random
import threading
from array import array
from pathlib import Path

import pytest
from kvstore._kvwal import ffi, lib

from kvstore.consensus.types import Entry, EntryType, HardState
from kvstore.errors import InvalidArgumentError
from kvstore.storage.wal import WriteAheadLog
from kvstore.testing import walformat

SEED = 20261126
SEGMENT = 1 << 16

# msgpack writes a byte string of < 256 bytes as bin 8, < 65536 as bin 16, else bin 32.
SIZES = (0, 1, 100, 255, 256, 65535, 65536, 70000)


def random_batch(rng: random.Random, first: int, count: int, term: int) -> list[Entry]:
    """`count` entries from index `first`: sometimes one shared term and all NORMAL, sometimes
    not, with data of assorted sizes."""
    uniform = rng.random() < 0.5
    batch = []
    for i in range(first, first + count):
        t = term if uniform or rng.random() < 0.5 else term + rng.randrange(1, 3)
        kind = EntryType.NORMAL if uniform or rng.random() < 0.6 else EntryType.CONF_CHANGE
        size = rng.choice(SIZES) if rng.random() < 0.2 else rng.randrange(0, 300)
        batch.append(Entry(t, i, kind, rng.randbytes(size)))
    return batch


def test_random_batches_read_back_and_survive_a_reopen(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    expected: list[Entry] = []
    try:
        with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT) as wal:
            term = 1
            for _ in range(40):
                count = rng.choice((0, 1, 2, 3, 17, 200))
                if count and expected and rng.random() < 0.2:
                    # An overwrite: the batch starts inside the log and cuts the rest.
                    first = rng.randrange(expected[0].index, expected[-1].index + 1)
                    term += 3
                    del expected[first - 1 :]
                else:
                    first = len(expected) + 1
                batch = random_batch(rng, first, count, term)
                hs = HardState(term=term + 2, vote="n1", commit=0) if rng.random() < 0.3 else None
                wal.append(batch, hs)
                expected += batch
                assert wal.last_index() == len(expected)
            wal.sync()
            assert wal.entries(1, len(expected) + 1) == expected
        with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT) as wal:
            assert wal.entries(1, len(expected) + 1) == expected
    except AssertionError:
        print(f"seed {SEED}")
        raise


def _append_with_lengths(wal: WriteAheadLog, entries: list[Entry]) -> None:
    """The same batch through kvwal_log_append (explicit lengths, one data block)."""
    data = b"".join(e.data for e in entries)
    out = ffi.new("uint64_t *")
    rc = lib.kvwal_log_append(
        wal._handle,
        len(entries),
        ffi.from_buffer("uint64_t[]", array("Q", [e.index for e in entries])),
        ffi.from_buffer("uint64_t[]", array("Q", [e.term for e in entries])),
        bytes(e.type for e in entries),
        ffi.from_buffer("uint32_t[]", array("I", [len(e.data) for e in entries])),
        data,
        len(data),
        ffi.NULL,
        out,
    )
    assert rc == 0


@pytest.mark.parametrize("uniform", [True, False])
def test_same_bytes_on_disk_as_explicit_lengths(tmp_path: Path, uniform: bool) -> None:
    rng = random.Random(SEED + uniform)
    batches = []
    first = 1
    for _ in range(6):
        count = rng.randrange(2, 50)
        batch = random_batch(rng, first, count, term=4)
        if uniform:
            batch = [Entry(4, e.index, EntryType.NORMAL, e.data) for e in batch]
        batches.append(batch)
        first += count
    with WriteAheadLog(tmp_path / "a", segment_bytes=SEGMENT) as wal:
        for batch in batches:
            wal.append(batch)
    with WriteAheadLog(tmp_path / "b", segment_bytes=SEGMENT) as wal:
        for batch in batches:
            _append_with_lengths(wal, batch)
    a = [p.read_bytes() for p in walformat.segment_paths(tmp_path / "a")]
    b = [p.read_bytes() for p in walformat.segment_paths(tmp_path / "b")]
    assert len(a) > 1  # the batches crossed segments
    assert a == b


def test_byte_like_data_is_written_as_its_bytes(tmp_path: Path) -> None:
    datas = [bytearray(b"ba"), memoryview(b"mv-data"), b"plain", bytearray()]
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT) as wal:
        wal.append([Entry(1, i, EntryType.NORMAL, d) for i, d in enumerate(datas, 1)])  # type: ignore[arg-type]
        assert [e.data for e in wal.entries(1, 5)] == [bytes(d) for d in datas]


@pytest.mark.parametrize(
    "batch",
    [
        [Entry(1, 1, EntryType.NORMAL, b"a"), Entry(1, 2, EntryType.NORMAL, "text")],  # type: ignore[arg-type]
        [Entry(1, 1, EntryType.NORMAL, b"a"), Entry(1, 2, EntryType.NORMAL, 7)],  # type: ignore[arg-type]
        [Entry(1, 1), Entry(-1, 2)],
        [Entry(1, -1), Entry(1, 0)],
        [Entry(1, 1), Entry(1, 2, 256)],  # type: ignore[arg-type]
        [Entry(1, 1), (1, 2, EntryType.NORMAL)],
        [Entry(1, 1), Entry(1, 3)],
        [Entry(1, 2), Entry(1, 1)],
    ],
    ids=[
        "str-data",
        "int-data",
        "negative-term",
        "negative-index",
        "type-256",
        "short-entry",
        "gap",
        "backwards",
    ],
)
def test_bad_batches_are_refused_and_write_nothing(tmp_path: Path, batch: list[Entry]) -> None:
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT) as wal:
        position = wal.stats().appended_position
        with pytest.raises(InvalidArgumentError):
            wal.append(batch)
        assert wal.stats().appended_position == position
        assert wal.last_index() == 0
        # The log still takes good appends afterwards (a refusal does not poison it).
        wal.append([Entry(1, 1, EntryType.NORMAL, b"x"), Entry(1, 2, EntryType.NORMAL, b"y")])
        assert [e.data for e in wal.entries(1, 3)] == [b"x", b"y"]


def test_threads_appending_batches_at_once_each_get_their_own_data(tmp_path: Path) -> None:
    """append() frames data in a per-thread buffer: threads appending batches at the same time
    (to their own logs, and to one shared log under a lock) must not see each other's data."""
    threads_n, rounds = 4, 30
    shared = WriteAheadLog(tmp_path / "shared", segment_bytes=SEGMENT)
    lock = threading.Lock()
    next_index = [1]
    errors: list[BaseException] = []
    own_expected: dict[int, list[Entry]] = {}

    def work(k: int) -> None:
        try:
            rng = random.Random(SEED + k)
            mine: list[Entry] = []
            with WriteAheadLog(tmp_path / f"own{k}", segment_bytes=SEGMENT) as own:
                for _ in range(rounds):
                    batch = random_batch(rng, len(mine) + 1, rng.randrange(2, 40), term=1)
                    own.append(batch)
                    mine += batch
                    with lock:
                        first = next_index[0]
                        shared.append(
                            [
                                Entry(1, first + j, EntryType.NORMAL, bytes([k]) * 3)
                                for j in range(3)
                            ]
                        )
                        next_index[0] += 3
                assert own.entries(1, len(mine) + 1) == mine
            own_expected[k] = mine
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    try:
        assert not errors, errors
        assert len(own_expected) == threads_n
        entries = shared.entries(1, next_index[0])
        assert len(entries) == 3 * threads_n * rounds
        for j in range(0, len(entries), 3):
            # Each batch of three carries one thread's tag, never a mix.
            assert len({e.data for e in entries[j : j + 3]}) == 1
    finally:
        shared.close()

"""The state machine's storage quota and map growth (issue 11 item 4).

The LMDB map starts small and grows by itself, so `apply` never fails for lack of map space;
at the logical quota, writes that add data are refused the same way on every member (the
verdict depends on replicated state only), deletes keep working and free room again.
"""

from __future__ import annotations

import argparse
import itertools
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

import kvstore
from kvstore.cli import parse_size_bytes
from kvstore.consensus.types import Entry, EntryType
from kvstore.errors import InvalidArgumentError
from kvstore.storage.commands import (
    CommandRejected,
    ResultCode,
    encode_cas,
    encode_delete,
    encode_put,
    encode_register,
)
from kvstore.storage.state_machine import ENTRY_OVERHEAD_BYTES, StateMachine

MIB = 1 << 20


SESSIONS = 8


def cid(n: int) -> int:
    """The id of the n-th session `registered` made (0 <= n < SESSIONS): its entry's index."""
    assert 0 <= n < SESSIONS
    return n + 1


def registered(sm: StateMachine) -> StateMachine:
    """`sm`, with `SESSIONS` client sessions registered through its log if it is new."""
    if sm.applied_index() == 0:
        sm.apply(entries([encode_register(n + 1) for n in range(SESSIONS)], 1))
    return sm


def entries(datas: list[bytes], first_index: int) -> list[Entry]:
    return [Entry(1, first_index + i, EntryType.NORMAL, d) for i, d in enumerate(datas)]


def apply_all(sm: StateMachine, datas: list[bytes], batch: int = 100) -> list[object]:
    results: list[object] = []
    for lo in range(0, len(datas), batch):
        results += sm.apply(entries(datas[lo : lo + batch], sm.applied_index() + 1))
    return results


def is_full(result: object) -> bool:
    return isinstance(result, CommandRejected) and result.code == ResultCode.STORAGE_FULL


def entry_bytes(key: bytes, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES


# --- map growth ---------------------------------------------------------------------------------


def test_the_map_grows_past_its_initial_size_while_readers_read(tmp_path: Path) -> None:
    """32 MiB into a 1 MiB map, with threads reading through every growth: no error anywhere
    (the old code raised lmdb.MapFullError out of apply at the first megabyte)."""
    value = b"v" * 4000
    datas = [encode_put(cid(1), seq, b"key-%06d" % seq, value) for seq in range(1, 8001)]
    errors: list[BaseException] = []
    stop = threading.Event()
    with registered(StateMachine(tmp_path / "state", map_size_bytes=MIB)) as sm:

        def read() -> None:
            try:
                while not stop.is_set():
                    applied = sm.applied_index()
                    if applied > SESSIONS:  # the writes follow the registrations
                        assert sm.get(b"key-%06d" % (applied - SESSIONS)) == value
                    sm.scan(b"key-0000", limit=5)
                    sm.members()
            except BaseException as exc:  # reported to the test thread
                errors.append(exc)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for thread in readers:
            thread.start()
        try:
            results = apply_all(sm, datas, batch=50)
        finally:
            stop.set()
            for thread in readers:
                thread.join()
        assert errors == []
        assert results == [True] * len(datas)
        assert sm.map_size_bytes() > 32 * MIB
        assert sm.get(b"key-000001") == value and sm.get(b"key-008000") == value
    # Reopened with the small initial size: LMDB keeps at least the size the data needs, and
    # the map grows again from there.
    with registered(StateMachine(tmp_path / "state", map_size_bytes=MIB)) as sm:
        assert sm.map_size_bytes() > 16 * MIB
        assert sm.get(b"key-008000") == value
        assert sm.apply(
            entries([encode_put(cid(2), 1, b"after", value)], sm.applied_index() + 1)
        ) == [True]


def test_one_batch_bigger_than_the_whole_map_is_applied(tmp_path: Path) -> None:
    """A single batch of 6 MiB meets a full 1 MiB map mid-transaction: the batch is rolled
    back, the map grown and the batch applied again, with the same results."""
    datas = [
        encode_put(cid(1), seq, b"big-%04d" % seq, bytes([seq % 256]) * 60_000)
        for seq in range(1, 101)
    ]
    datas.append(encode_delete(cid(1), 101, b"big-0001"))
    with registered(StateMachine(tmp_path / "a", map_size_bytes=MIB)) as sm:
        results = sm.apply(entries(datas, sm.applied_index() + 1))
        assert results == [True] * 100 + [True]
        assert sm.get(b"big-0001") is None and sm.get(b"big-0100") == bytes([100]) * 60_000
        assert sm.logical_bytes() == sum(
            entry_bytes(b"big-%04d" % seq, b"x" * 60_000) for seq in range(2, 101)
        )
        digest = sm.digest()
    with registered(StateMachine(tmp_path / "b", map_size_bytes=256 * MIB)) as roomy:
        assert roomy.apply(entries(datas, roomy.applied_index() + 1)) == results
        assert roomy.digest() == digest


# --- the quota ----------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Iterator[StateMachine]:
    with registered(StateMachine(tmp_path / "state", map_size_bytes=MIB, quota_bytes=1000)) as sm:
        yield sm


def test_at_the_quota_puts_are_refused_and_deletes_free_room(small: StateMachine) -> None:
    seqs = itertools.count(1)

    def one(data_of_seq: Callable[[int], bytes]) -> object:
        (result,) = apply_all(small, [data_of_seq(next(seqs))])
        return result

    value = b"v" * 200  # 208 bytes with its 8-byte key, 224 with the overhead
    for number in range(4):
        assert one(lambda seq, n=number: encode_put(cid(1), seq, b"key-%04d" % n, value)) is True
    assert small.logical_bytes() == 896
    assert is_full(one(lambda seq: encode_put(cid(1), seq, b"key-0004", value)))  # 1120 > 1000
    assert small.get(b"key-0004") is None and small.logical_bytes() == 896
    # Overwrites apply as long as the size stays within the quota: 996 fits, 1001 does not.
    assert one(lambda seq: encode_put(cid(1), seq, b"key-0000", b"w" * 200)) is True
    assert one(lambda seq: encode_put(cid(1), seq, b"key-0000", b"w" * 300)) is True
    assert small.logical_bytes() == 996
    assert is_full(one(lambda seq: encode_put(cid(1), seq, b"key-0000", b"w" * 305)))
    # A cas that would not swap answers False, as it would below the quota; one that would
    # grow the store is refused; cas-to-delete applies.
    assert one(lambda seq: encode_cas(cid(1), seq, b"key-0001", b"nope", b"x" * 300)) is False
    assert is_full(one(lambda seq: encode_cas(cid(1), seq, b"key-0001", value, b"x" * 300)))
    assert one(lambda seq: encode_cas(cid(1), seq, b"key-0001", value, None)) is True
    assert small.logical_bytes() == 996 - 224
    # Room again: the put refused above now applies (under a new seq).
    assert one(lambda seq: encode_put(cid(1), seq, b"key-0004", value)) is True
    assert small.get(b"key-0004") == value and small.logical_bytes() == 996
    assert one(lambda seq: encode_delete(cid(1), seq, b"key-0002")) is True
    assert small.logical_bytes() == 996 - 224


def test_a_refused_write_retried_later_is_refused_again_never_applied(
    small: StateMachine,
) -> None:
    fill = [encode_put(cid(1), seq, b"key-%04d" % seq, b"v" * 200) for seq in range(1, 5)]
    apply_all(small, fill)
    refused = encode_put(cid(2), 1, b"late", b"v" * 200)
    assert is_full(apply_all(small, [refused])[0])
    apply_all(small, [encode_delete(cid(1), 5, b"key-0001")])
    # The same command (a client's retry, or a duplicate in the log) after room was freed: it
    # was answered "refused", so it must never take effect now.
    assert apply_all(small, [refused]) == [False]
    assert small.get(b"late") is None


def test_the_verdict_depends_only_on_the_entries(tmp_path: Path, seed: int) -> None:
    """Two members apply one random history near the quota, split into batches differently:
    the same results, byte for byte the same state."""
    rng = random.Random(seed)
    keys = [b"k%02d" % n for n in range(30)]
    datas = []
    for seq in range(1, 1500):
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.6:
            datas.append(encode_put(cid(seq % 7), seq, key, b"x" * rng.randrange(0, 300)))
        elif roll < 0.8:
            datas.append(encode_delete(cid(seq % 7), seq, key))
        else:
            expected = rng.choice([None, b"x" * rng.randrange(0, 300)])
            new = rng.choice([None, b"y" * rng.randrange(0, 300)])
            datas.append(encode_cas(cid(seq % 7), seq, key, expected, new))
    quota = 3000
    with (
        registered(StateMachine(tmp_path / "a", map_size_bytes=MIB, quota_bytes=quota)) as one,
        registered(StateMachine(tmp_path / "b", map_size_bytes=MIB, quota_bytes=quota)) as other,
    ):
        results_one = apply_all(one, datas, batch=1)
        results_other = apply_all(other, datas, batch=rng.randrange(2, 200))
        assert results_one == results_other, f"seed {seed}"
        assert one.digest() == other.digest(), f"seed {seed}"
        assert any(is_full(r) for r in results_one), f"seed {seed}: the quota never bit"
        assert one.logical_bytes() <= quota, f"seed {seed}"
        stored = sum(entry_bytes(k, v) for k, v in one.scan())
        assert one.logical_bytes() == stored, f"seed {seed}"


def test_quota_refuses_agrees_with_apply(tmp_path: Path, seed: int) -> None:
    """The proposer's early check gives apply's verdict on the same state."""
    rng = random.Random(seed)
    with registered(StateMachine(tmp_path / "s", map_size_bytes=MIB, quota_bytes=2000)) as sm:
        for seq in range(1, 400):
            key = b"k%d" % rng.randrange(12)
            if rng.random() < 0.7:
                data = encode_put(cid(1), seq, key, b"v" * rng.randrange(0, 400))
            elif rng.random() < 0.5:
                data = encode_cas(cid(1), seq, key, sm.get(key), b"w" * rng.randrange(0, 400))
            else:
                data = encode_delete(cid(1), seq, key)
            verdict = sm.quota_refuses(data)
            (result,) = sm.apply(entries([data], seq))
            assert verdict == is_full(result), f"seed {seed}, seq {seq}"


def test_the_logical_size_survives_reopen_restore_and_an_older_store(tmp_path: Path) -> None:
    datas = [encode_put(cid(1), seq, b"key-%d" % seq, b"v" * seq) for seq in range(1, 50)]
    with registered(StateMachine(tmp_path / "a")) as sm:
        apply_all(sm, datas)
        size = sm.logical_bytes()
        assert size == sum(entry_bytes(b"key-%d" % s, b"v" * s) for s in range(1, 50))
        sm.snapshot(tmp_path / "snap")
    with registered(StateMachine(tmp_path / "a")) as sm:
        assert sm.logical_bytes() == size
    with registered(StateMachine(tmp_path / "b")) as sm:
        sm.restore(tmp_path / "snap")
        assert sm.logical_bytes() == size
    # A store written before the quota existed: `applied` holds index and term only.
    env = lmdb.open(str(tmp_path / "a"), max_dbs=4)
    meta = env.open_db(b"meta")
    with env.begin(write=True, db=meta) as txn:
        txn.put(b"applied", txn.get(b"applied")[:16])
    env.close()
    with registered(StateMachine(tmp_path / "a")) as sm:
        assert sm.logical_bytes() == size


def test_quota_argument_is_checked(tmp_path: Path) -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidArgumentError):
            StateMachine(tmp_path / "s", quota_bytes=bad)  # type: ignore[arg-type]


def test_options_and_the_serve_flag_take_the_quota() -> None:
    assert kvstore.Options().quota_bytes == 8 << 30
    for bad in (0, -5, 2.5, True):
        with pytest.raises(InvalidArgumentError, match="quota_bytes"):
            kvstore.Options(quota_bytes=bad).validate()  # type: ignore[arg-type]
    assert [parse_size_bytes(t) for t in ("4096", "64K", "2G", "2g", "10MiB", "1T")] == [
        4096,
        64 << 10,
        2 << 30,
        2 << 30,
        10 << 20,
        1 << 40,
    ]
    for bad_text in ("", "G", "-1", "0", "1.5G", "2X", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size_bytes(bad_text)

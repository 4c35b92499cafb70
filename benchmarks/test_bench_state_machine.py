"""State machine benchmarks: LMDB apply throughput and command decoding.

Run with `make bench` (or `pytest benchmarks/test_bench_state_machine.py --benchmark-only`).
Each apply round starts from an empty environment and applies 100k puts (16-byte keys,
100-byte values, 100 client sessions, registered first and not timed, each put stamped by a
leader's clock). `entries_per_s` is in each result's extra_info; the baseline in the same run
applies one entry per write transaction.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from kvstore.consensus.types import Entry
from kvstore.storage.commands import (
    TxnCompare,
    decode_command,
    decode_fields,
    encode_put,
    encode_register,
    encode_txn,
    txn_put,
)
from kvstore.storage.state_machine import StateMachine

ENTRY_COUNT = 100_000
BATCH_ENTRIES = 1_000
CLIENTS = 100


STAMP_MS = 1_765_000_000_000
"""The leader's clock at the first entry (ms); it advances 1 ms every 100 puts."""
REGISTERS = [Entry(1, n + 1, data=encode_register(n + 1, STAMP_MS)) for n in range(CLIENTS)]
"""The sessions' registrations: entries 1..CLIENTS, so the session ids are 1..CLIENTS."""


def make_log() -> list[Entry]:
    """The timed puts, after `REGISTERS`."""
    entries = []
    for i in range(ENTRY_COUNT):
        session_id = i % CLIENTS + 1
        key = b"key-%012d" % ((i * 7919) % ENTRY_COUNT)  # 16 bytes, not in key order
        value = bytes([i % 251]) * 100
        data = encode_put(session_id, i // CLIENTS + 1, key, value, STAMP_MS + i // 100)
        entries.append(Entry(1, CLIENTS + i + 1, data=data))
    return entries


@pytest.fixture(scope="module")
def log() -> list[Entry]:
    return make_log()


def run_apply(
    benchmark: Any, tmp_path: Path, log: list[Entry], batch_entries: int, rounds: int
) -> None:
    counter = itertools.count()
    opened: list[StateMachine] = []

    def setup() -> tuple[tuple[StateMachine], dict[str, Any]]:
        sm = StateMachine(tmp_path / f"round{next(counter)}", map_size_bytes=1 << 30)
        opened.append(sm)
        sm.apply(REGISTERS)
        return (sm,), {}

    def apply_all(sm: StateMachine) -> None:
        for lo in range(0, len(log), batch_entries):
            sm.apply(log[lo : lo + batch_entries])
        assert sm.applied_index() == CLIENTS + ENTRY_COUNT
        assert sm.session(CLIENTS) == (ENTRY_COUNT // CLIENTS, True)  # every put was applied

    try:
        benchmark.pedantic(apply_all, setup=setup, rounds=rounds, iterations=1)
    finally:
        for sm in opened:
            sm.close()
    benchmark.extra_info["entries_per_s"] = round(ENTRY_COUNT / benchmark.stats.stats.mean)


def test_bench_state_machine_apply_batched(
    benchmark: Any, tmp_path: Path, log: list[Entry]
) -> None:
    """100k puts, 1,000 entries per write transaction (how the node applies a Ready)."""
    run_apply(benchmark, tmp_path, log, BATCH_ENTRIES, rounds=5)


def test_bench_state_machine_apply_single(benchmark: Any, tmp_path: Path, log: list[Entry]) -> None:
    """Baseline: the same 100k puts, one write transaction per entry."""
    run_apply(benchmark, tmp_path, log, 1, rounds=3)


def _decode_all(decode: Callable[[bytes], object], datas: list[bytes]) -> None:
    for data in datas:
        decode(data)


def test_bench_state_machine_decode_command(benchmark: Any, log: list[Entry]) -> None:
    """Decode + validate 100k put commands in our fixed-width layout."""
    datas = [entry.data for entry in log]
    benchmark(_decode_all, decode_command, datas)
    benchmark.extra_info["commands_per_s"] = round(ENTRY_COUNT / benchmark.stats.stats.mean)


def test_bench_state_machine_decode_fields(benchmark: Any, log: list[Entry]) -> None:
    """The same, without the NamedTuple: what `apply` calls per entry."""
    datas = [entry.data for entry in log]
    benchmark(_decode_all, decode_fields, datas)
    benchmark.extra_info["commands_per_s"] = round(ENTRY_COUNT / benchmark.stats.stats.mean)


def test_bench_state_machine_encode_put(benchmark: Any, log: list[Entry]) -> None:
    """Encode 100k puts in our layout."""
    commands = [decode_command(entry.data) for entry in log]

    def encode_all() -> None:
        for c in commands:
            encode_put(c.session_id, c.seq, c.key, c.value or b"", c.stamp_ms)

    benchmark(encode_all)
    benchmark.extra_info["commands_per_s"] = round(ENTRY_COUNT / benchmark.stats.stats.mean)


def test_bench_state_machine_encode_msgpack(benchmark: Any, log: list[Entry]) -> None:
    """Baseline: encode the same puts as msgpack arrays (after the same argument checks)."""
    commands = [decode_command(entry.data) for entry in log]
    packb = msgpack.packb

    def encode_all() -> None:
        for c in commands:
            if not (c.session_id >= 1 and c.seq >= 1 and 1 <= len(c.key) <= 511):
                raise ValueError("bad command")
            packb((1, c.session_id, c.seq, c.stamp_ms, c.key, c.value))

    benchmark(encode_all)
    benchmark.extra_info["commands_per_s"] = round(ENTRY_COUNT / benchmark.stats.stats.mean)


def test_bench_state_machine_decode_msgpack(benchmark: Any, log: list[Entry]) -> None:
    """Baseline for the encoding choice: the same commands as msgpack arrays, decoded and
    checked the way `decode_command` checks ours."""
    commands = [decode_command(entry.data) for entry in log]
    datas = [
        msgpack.packb((c.op, c.session_id, c.seq, c.stamp_ms, c.key, c.value)) for c in commands
    ]

    def decode(data: bytes) -> object:
        op, session_id, seq, stamp_ms, key, value = msgpack.unpackb(data)
        if not (
            type(op) is int
            and type(session_id) is int
            and session_id >= 1
            and type(stamp_ms) is int
            and type(seq) is int
            and seq >= 1
            and type(key) is bytes
            and 1 <= len(key) <= 511
            and type(value) is bytes
        ):
            raise ValueError("bad command")
        return op, session_id, seq, stamp_ms, key, value

    benchmark(_decode_all, decode, datas)
    benchmark.extra_info["commands_per_s"] = round(ENTRY_COUNT / benchmark.stats.stats.mean)


def test_bench_state_machine_get(benchmark: Any, tmp_path: Path, log: list[Entry]) -> None:
    """`StateMachine.get` of 100k present keys in key order (a stale read's LMDB part),
    after the 100k puts."""
    with StateMachine(tmp_path / "get", map_size_bytes=1 << 30) as sm:
        sm.apply(REGISTERS)
        for lo in range(0, len(log), BATCH_ENTRIES):
            sm.apply(log[lo : lo + BATCH_ENTRIES])
        keys = [b"key-%012d" % i for i in range(ENTRY_COUNT)]
        get = sm.get

        def get_all() -> None:
            for key in keys:
                get(key)

        benchmark.pedantic(get_all, rounds=7, iterations=1)
        benchmark.extra_info["gets_per_s"] = round(ENTRY_COUNT / benchmark.stats.stats.mean)


TXN_COUNT = 20_000


def test_bench_state_machine_apply_txn(benchmark: Any, tmp_path: Path) -> None:
    """20k transactions (a version compare, then one put of a 100-byte value; the bank
    workload's shape), 1,000 entries per write transaction."""
    entries = []
    for i in range(TXN_COUNT):
        session_id = i % CLIENTS + 1
        key = b"key-%012d" % ((i * 7919) % TXN_COUNT)
        data = encode_txn(
            session_id,
            i // CLIENTS + 1,
            [TxnCompare(key, "version", "<", 1 << 40)],
            [txn_put(key, bytes([i % 251]) * 100)],
            stamp_ms=STAMP_MS + i // 100,
        )
        entries.append(Entry(1, CLIENTS + i + 1, data=data))
    counter = itertools.count()
    opened: list[StateMachine] = []

    def setup() -> tuple[tuple[StateMachine], dict[str, Any]]:
        sm = StateMachine(tmp_path / f"txn{next(counter)}", map_size_bytes=1 << 30)
        opened.append(sm)
        sm.apply(REGISTERS)
        return (sm,), {}

    def apply_all(sm: StateMachine) -> None:
        for lo in range(0, len(entries), BATCH_ENTRIES):
            sm.apply(entries[lo : lo + BATCH_ENTRIES])
        assert sm.revision() == TXN_COUNT

    try:
        benchmark.pedantic(apply_all, setup=setup, rounds=5, iterations=1)
    finally:
        for sm in opened:
            sm.close()
    benchmark.extra_info["txns_per_s"] = round(TXN_COUNT / benchmark.stats.stats.mean)

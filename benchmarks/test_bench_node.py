"""In-process benchmarks of `kvstore.Node`: the paths that never leave the caller's process.

Run with `make bench` (or `pytest benchmarks/test_bench_node.py --benchmark-only`).

- `test_bench_node_get_lmdb_baseline`: a raw py-lmdb read (one read transaction, one get) of
  the same keys and values, in an environment opened like the node's. The floor.
- `test_bench_node_state_machine_get`: `StateMachine.get` (argument check + the read).
- `test_bench_node_get_stale`: `Node.get(key, consistency="stale")` on a running single-member
  node: argument checks, the running check, the read, in the caller's thread.
- `test_bench_node_get_stale_threads`: the same from 8 threads at once (GIL-bound: the figure
  is the sum over the threads).
- `test_bench_node_put`: a sequential `Node.put` on a single-member node: one fsync of the
  redo log plus the hops between the caller's thread and the node's loop.

Each read round reads `READS` keys; `reads_per_s` and the ratio to the LMDB baseline of the
same run (`x_lmdb`, below 1: slower than raw LMDB) are in each result's extra_info.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

import kvstore
from kvstore.storage.state_machine import READERS_MAX, StateMachine

KEYS = 1_000
READS = 100_000
VALUE = b"v" * 100
THREADS = 8

_reads_per_s: dict[str, float] = {}
"""Figures of this run so far, for the ratios against the LMDB baseline."""


def _key(number: int) -> bytes:
    return b"bench/%010d" % number  # 16 bytes, as in `kvstore bench`


@pytest.fixture(scope="module")
def keys() -> list[bytes]:
    # Made before timing: formatting a key costs about as much as the read being measured.
    return [_key(number % KEYS) for number in range(READS)]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kvstore.Node]:
    data_dir = tmp_path_factory.mktemp("node")
    with kvstore.Node("n1", data_dir, {"n1": "127.0.0.1:0"}) as node:
        node.wait_for_leader(timeout_s=10.0)
        for number in range(KEYS):
            node.put(_key(number), VALUE)
        yield node


def _record(benchmark: Any, name: str, reads: int) -> None:
    stats = benchmark.stats.stats if benchmark.stats is not None else None
    if stats is None:  # --benchmark-disable: nothing was timed
        return
    per_s = reads / stats.min
    _reads_per_s[name] = per_s
    benchmark.extra_info["reads_per_s"] = round(per_s)
    baseline = _reads_per_s.get("lmdb")
    if baseline and name != "lmdb":
        benchmark.extra_info["x_lmdb"] = round(per_s / baseline, 3)


def _read_all(get: Callable[[bytes], bytes | None], keys: list[bytes]) -> None:
    for key in keys:
        if get(key) is None:
            raise AssertionError(f"{key!r} was written and reads as absent")


def test_bench_node_get_lmdb_baseline(benchmark: Any, tmp_path: Path, keys: list[bytes]) -> None:
    env = lmdb.open(
        str(tmp_path), map_size=1 << 30, max_dbs=4, sync=False, metasync=False,
        max_readers=READERS_MAX,
    )  # fmt: skip
    try:
        db = env.open_db(b"data")
        with env.begin(db=db, write=True) as txn:
            for number in range(KEYS):
                txn.put(_key(number), VALUE)

        def get(key: bytes) -> bytes | None:
            with env.begin(db=db) as txn:
                value: bytes | None = txn.get(key)
                return value

        benchmark.pedantic(_read_all, args=(get, keys), rounds=5, iterations=1)
        _record(benchmark, "lmdb", len(keys))
    finally:
        env.close()


def test_bench_node_state_machine_get(
    benchmark: Any, node: kvstore.Node, keys: list[bytes]
) -> None:
    sm = node._runtime._sm
    assert isinstance(sm, StateMachine)
    benchmark.pedantic(_read_all, args=(sm.get, keys), rounds=5, iterations=1)
    _record(benchmark, "state_machine", len(keys))


def test_bench_node_get_stale(benchmark: Any, node: kvstore.Node, keys: list[bytes]) -> None:
    def get(key: bytes) -> bytes | None:
        return node.get(key, consistency="stale")

    benchmark.pedantic(_read_all, args=(get, keys), rounds=5, iterations=1)
    _record(benchmark, "node_stale", len(keys))


def test_bench_node_get_stale_threads(
    benchmark: Any, node: kvstore.Node, keys: list[bytes]
) -> None:
    share = keys[: len(keys) // THREADS]

    def get(key: bytes) -> bytes | None:
        return node.get(key, consistency="stale")

    def read_in_threads() -> None:
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                _read_all(get, share)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=worker) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []

    benchmark.pedantic(read_in_threads, rounds=5, iterations=1)
    _record(benchmark, "node_stale_threads", len(share) * THREADS)


def test_bench_node_put(benchmark: Any, node: kvstore.Node) -> None:
    puts = 200
    counter = iter(range(10**9))

    def put_some() -> None:
        for _ in range(puts):
            node.put(_key(KEYS + next(counter)), VALUE)

    started = time.perf_counter()
    benchmark.pedantic(put_some, rounds=3, iterations=1)
    assert time.perf_counter() > started
    stats = benchmark.stats.stats if benchmark.stats is not None else None
    if stats is not None:
        benchmark.extra_info["puts_per_s"] = round(puts / stats.min)

"""Writes and reads in flight while the leader changes (a transfer, or the leader stopping):
pending writes are proposed again to the new leader and applied exactly once, reads ask the
new leader for their read index, and a linearizable read after a write always sees it."""

from __future__ import annotations

import itertools
import random
import threading
from pathlib import Path

import kvstore
from kvstore.testing.local_cluster import wait_until

from .conftest import WAIT_S, EmbeddedCluster


class ReadYourWrites(threading.Thread):
    """Writes `key` = 1, 2, 3... through `writer`; after each acknowledgement reads it back
    through `reader` (linearizable) and records any read that does not see the write."""

    def __init__(self, key: bytes, writer: kvstore.Node, reader: kvstore.Node) -> None:
        super().__init__(daemon=True)
        self.key = key
        self.writer = writer
        self.reader = reader
        self.acknowledged = 0
        self.stale_reads: list[tuple[int, bytes | None]] = []
        self.errors: list[BaseException] = []
        self.halt = threading.Event()

    def run(self) -> None:
        for number in itertools.count(1):
            if self.halt.is_set():
                return
            try:
                self.writer.put(self.key, b"%d" % number, timeout_s=10)
                self.acknowledged = number
                seen = self.reader.get(self.key, consistency="linearizable", timeout_s=10)
            except BaseException as error:  # reported by the test
                self.errors.append(error)
                return
            if seen != b"%d" % number:
                self.stale_reads.append((number, seen))


def _run_during(cluster: EmbeddedCluster, threads: list[ReadYourWrites], action: object) -> None:
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            wait_until(
                lambda t=thread: t.acknowledged >= 5 or t.errors, timeout_s=WAIT_S, what="writes"
            )
        assert callable(action)
        action()
        marks = [thread.acknowledged for thread in threads]
        for thread, mark in zip(threads, marks, strict=True):
            wait_until(
                lambda t=thread, m=mark: t.acknowledged >= m + 5 or t.errors or not t.is_alive(),
                timeout_s=WAIT_S,
                what="writes after the leader change",
            )
    finally:
        for thread in threads:
            thread.halt.set()
        for thread in threads:
            thread.join(WAIT_S)
    for thread in threads:
        assert not thread.errors, thread.errors
        assert not thread.stale_reads, f"a read missed an acknowledged write: {thread.stale_reads}"
        assert thread.acknowledged >= 10


def test_transfers_under_load_lose_no_write_and_serve_no_stale_read(
    cluster: EmbeddedCluster, seed: int
) -> None:
    rng = random.Random(seed)
    nodes = list(cluster.nodes.values())
    threads = [
        ReadYourWrites(b"ryw/%d" % n, rng.choice(nodes), rng.choice(nodes)) for n in range(4)
    ]

    def transfer_around() -> None:
        for _ in range(3):
            leader = cluster.leader()
            target = rng.choice([n for n in nodes if n is not leader])
            leader.transfer_leadership(target.node_id, timeout_s=WAIT_S)

    _run_during(cluster, threads, transfer_around)


def test_leader_stopping_under_load_loses_no_write(tmp_path: Path) -> None:
    cluster = EmbeddedCluster(tmp_path).start()
    try:
        leader = cluster.leader()
        followers = [n for n in cluster.nodes.values() if n is not leader]
        threads = [
            ReadYourWrites(b"stop/%d" % n, followers[n % 2], followers[(n + 1) % 2])
            for n in range(4)
        ]
        _run_during(cluster, threads, lambda: cluster.stop_node(leader.node_id))
        survivor = cluster.leader()
        for thread in threads:
            assert survivor.get(thread.key) == b"%d" % thread.acknowledged
    finally:
        cluster.stop()

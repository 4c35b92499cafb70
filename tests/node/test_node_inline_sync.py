"""Where the redo log's fsync runs: on the loop thread for a lone write while fsyncs are fast
(the thread hop would cost more than the fsync), in the sync executor once fsyncs are slow.
Either way a write is answered only after its entry is durable on the leader and a follower."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import kvstore
from kvstore.testing.local_cluster import wait_until

from .conftest import WAIT_S, EmbeddedCluster

SLOW_SYNC_S = 0.004
"""An fsync this slow is well above `INLINE_SYNC_AVERAGE_S_MAX` (1 ms)."""


class _SyncRecorder:
    """Wraps a node's `WriteAheadLog.sync`: records the thread of each call and the time it
    returned, optionally after an extra delay (a slow disk)."""

    def __init__(self, node: kvstore.Node, delay_s: float = 0.0) -> None:
        assert node._runtime._wal is not None
        self.delay_s = delay_s
        self.calls: list[tuple[str, float]] = []
        self._lock = threading.Lock()
        real: Callable[..., None] = node._runtime._wal.sync

        def sync(*args: Any) -> None:
            real(*args)
            if self.delay_s:
                time.sleep(self.delay_s)  # the disk is slow: not synchronisation
            with self._lock:
                self.calls.append((threading.current_thread().name, time.monotonic()))

        node._runtime._wal.sync = sync  # type: ignore[method-assign]

    def threads(self) -> list[str]:
        with self._lock:
            return [name for name, _ in self.calls]

    def last_returned(self) -> float:
        with self._lock:
            return self.calls[-1][1]


def _forget_fsync_times(node: kvstore.Node) -> None:
    node._runtime._fsync_placement.average_s = 0.0


def _on_loop(node: kvstore.Node, function: Callable[..., None], *args: Any) -> None:
    """Run `function(*args)` on `node`'s loop thread and wait for it."""
    assert node._loop is not None

    async def call() -> None:
        function(*args)

    asyncio.run_coroutine_threadsafe(call(), node._loop).result(WAIT_S)


def _wait_quiet(cluster: EmbeddedCluster) -> None:
    """Wait until every node has applied what the leader committed (no write in flight)."""
    leader = cluster.leader()
    cluster.wait_applied(leader.status().commit_index)


def test_a_lone_write_syncs_on_the_loop_thread_after_fast_fsyncs(cluster: EmbeddedCluster) -> None:
    leader = cluster.leader()
    leader.put(b"warm", b"v")
    _wait_quiet(cluster)
    recorders = {node.node_id: _SyncRecorder(node) for node in cluster.nodes.values()}
    for node in cluster.nodes.values():
        # As if recent fsyncs were fast, whatever the load on this machine made them: the rule
        # under test is where a small batch goes then. Set on the loop thread, its owner.
        _on_loop(node, _forget_fsync_times, node)
    leader.put(b"lone", b"v")
    loop_thread = leader._thread
    assert loop_thread is not None
    leader_threads = recorders[leader.node_id].threads()
    assert leader_threads, "the leader answered a write without an fsync"
    assert leader_threads[0] == loop_thread.name
    # A follower synced the entry on its loop thread too, before it acknowledged.
    follower_threads = [
        (node, recorders[node.node_id].threads()) for node in cluster.nodes.values()
    ]
    assert any(
        node is not leader and node._thread is not None and node._thread.name in names
        for node, names in follower_threads
    )


def test_slow_fsyncs_move_to_the_sync_executor_and_writes_still_wait_for_them(
    cluster: EmbeddedCluster,
) -> None:
    leader = cluster.leader()
    _wait_quiet(cluster)
    recorder = _SyncRecorder(leader, delay_s=SLOW_SYNC_S)
    executor_prefix = f"kvstore-sync-{leader.node_id}"

    def went_to_executor() -> bool:
        leader.put(b"slow/%d" % len(recorder.threads()), b"v")
        return any(name.startswith(executor_prefix) for name in recorder.threads())

    wait_until(went_to_executor, timeout_s=WAIT_S, interval_s=0.0, what="an fsync in the executor")
    # Now every write of the leader goes through the slow executor fsync, and is answered only
    # after the fsync covering it returned.
    before = len(recorder.threads())
    started = time.monotonic()
    leader.put(b"slow/last", b"v")
    answered = time.monotonic()
    assert len(recorder.threads()) > before
    assert started <= recorder.last_returned() <= answered
    assert recorder.threads()[-1].startswith(executor_prefix)

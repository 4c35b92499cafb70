"""A failed write or fsync of the redo log poisons it: the node stops serving (every later call
raises a clear `UnavailableError`), the others go on without it, and it never limps on. Also:
stopping while an fsync runs waits for it before closing the log."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import kvstore
from kvstore.storage.wal import FaultSpec
from kvstore.testing.local_cluster import wait_until

from .conftest import WAIT_S, EmbeddedCluster


def _assert_stopped_serving(node: kvstore.Node) -> None:
    for call in (
        lambda: node.put(b"k", b"v"),
        lambda: node.get(b"k"),
        lambda: node.get(b"k", consistency="stale"),
        lambda: node.scan(),
        lambda: node.wait_for_leader(timeout_s=1),
        lambda: node.add_member("n9", "127.0.0.1:1"),
    ):
        with pytest.raises(kvstore.UnavailableError, match="failed"):
            call()
    # Its status still answers, and names the failure (test_node_failure_visible.py).
    assert node.status().failure is not None


def _survivors_serve(cluster: EmbeddedCluster, failed: kvstore.Node) -> kvstore.Node:
    leader = cluster.leader(exclude=failed.node_id)
    leader.put(b"after/failure", b"ok", timeout_s=10)
    for node in cluster.nodes.values():
        if node is not failed:
            assert node.get(b"after/failure") == b"ok"
    return leader


@pytest.mark.parametrize("kind", ["sync", "write"])
def test_failed_log_on_the_leader_stops_it_and_the_others_go_on(
    cluster: EmbeddedCluster, kind: str
) -> None:
    leader = cluster.leader()
    leader.put(b"before", b"1")
    assert leader._runtime._wal is not None
    leader._runtime._wal.inject_fault(FaultSpec(kind))
    # The followers may have committed it before the leader's own disk failed: its outcome is
    # unknown, so the caller must not be told that nothing happened.
    with pytest.raises(kvstore.OperationTimeoutError, match="outcome is unknown"):
        leader.put(b"doomed", b"1")
    _assert_stopped_serving(leader)
    new_leader = _survivors_serve(cluster, leader)
    assert new_leader.get(b"before") == b"1"
    # The failed node cannot be reached any more: its transport is closed.
    with (
        kvstore.Client([leader.address], timeout_s=1) as client,
        pytest.raises(kvstore.UnavailableError),
    ):
        client.get(b"before", consistency="stale", timeout_s=1)
    # Stopping it works; reopened from its directory, it rejoins and catches up.
    cluster.stop_node(leader.node_id)
    restarted = cluster.start_node(leader.node_id)
    cluster.wait_applied(new_leader.status().commit_index, [restarted])
    assert restarted.get(b"after/failure", consistency="stale") == b"ok"
    assert restarted.get(b"doomed", consistency="stale") == new_leader.get(b"doomed")


def test_failed_fsync_on_a_follower_stops_only_that_follower(cluster: EmbeddedCluster) -> None:
    follower = cluster.followers()[0]
    assert follower._runtime._wal is not None
    follower._runtime._wal.inject_fault(FaultSpec("sync"))
    leader = cluster.leader()
    leader.put(b"k", b"v")  # the other follower completes the quorum
    wait_until(
        lambda: follower._runtime.failure_cause is not None,
        timeout_s=WAIT_S,
        what="the follower to fail",
    )
    _assert_stopped_serving(follower)
    assert cluster.leader() is leader
    _survivors_serve(cluster, follower)


def test_stop_waits_for_a_running_fsync_before_closing_the_log(cluster: EmbeddedCluster) -> None:
    leader = cluster.leader()
    wal = leader._runtime._wal
    assert wal is not None
    in_fsync = threading.Event()
    release = threading.Event()
    real_sync = wal.sync

    def slow_sync(*args: Any) -> None:
        in_fsync.set()
        assert release.wait(WAIT_S)
        real_sync(*args)

    outcome: list[BaseException | None] = []
    registered = threading.Event()
    armed = threading.Event()

    def put() -> None:
        try:
            # This thread's first write registers its client session: done before the fsync
            # is slowed down, so that the write stopped mid-way below is the put itself.
            leader.put(b"before/stop", b"0")
            registered.set()
            assert armed.wait(WAIT_S)
            leader.put(b"during/stop", b"1", timeout_s=10)
            outcome.append(None)
        except BaseException as error:  # reported below
            outcome.append(error)

    writer = threading.Thread(target=put)
    writer.start()
    assert registered.wait(WAIT_S)
    wal.sync = slow_sync  # type: ignore[method-assign]
    armed.set()
    assert in_fsync.wait(WAIT_S)
    stopper = threading.Thread(target=leader.stop)
    stopper.start()
    stopper.join(0.5)
    assert stopper.is_alive(), "stop() returned while an fsync was still running"
    release.set()
    stopper.join(WAIT_S)
    writer.join(WAIT_S)
    assert not stopper.is_alive() and not writer.is_alive()
    # Stopped mid-write: the caller learns that the outcome is unknown, nothing worse.
    assert len(outcome) == 1
    assert outcome[0] is None or isinstance(outcome[0], kvstore.OperationTimeoutError)
    # The log was closed cleanly: the node reopens from its directory and rejoins.
    del cluster.nodes[leader.node_id]
    restarted = cluster.start_node(leader.node_id)
    new_leader = cluster.leader()
    new_leader.put(b"after/restart", b"1")
    assert restarted.get(b"after/restart") == b"1"

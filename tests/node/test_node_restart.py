"""Restarting embedded nodes from their data directories alone: the hard state, the redo log
and LMDB are reloaded, and committed entries missing from LMDB are applied again from the log."""

from __future__ import annotations

import shutil
from pathlib import Path

import kvstore
from kvstore.testing.local_cluster import free_ports, wait_until

from .conftest import FAST, WAIT_S, EmbeddedCluster

NO_CHECKPOINT = kvstore.Options(
    tick_s=FAST.tick_s, election_ticks=FAST.election_ticks, checkpoint_entries=1_000_000
)
EARLY_CHECKPOINT = kvstore.Options(
    tick_s=FAST.tick_s, election_ticks=FAST.election_ticks, checkpoint_entries=10
)


def _write(node: kvstore.Node, prefix: bytes, count: int) -> dict[bytes, bytes]:
    written = {}
    for number in range(count):
        key, value = prefix + b"%03d" % number, b"v%d" % number
        node.put(key, value)
        written[key] = value
    return written


def test_restart_every_member_reloads_hard_state_log_and_state(tmp_path: Path) -> None:
    cluster = EmbeddedCluster(tmp_path, options=EARLY_CHECKPOINT).start()
    try:
        written = _write(cluster.leader(), b"a/", 60)
        commit = cluster.leader().status().commit_index
        cluster.wait_applied(commit)
        before = {node.node_id: node.status() for node in cluster.nodes.values()}
        logs = {}
        for node in cluster.nodes.values():
            assert node._runtime._wal is not None
            logs[node.node_id] = (node._runtime._wal.first_index(), node._runtime._wal.last_index())
            assert node._runtime._wal.first_index() > 1, "the log should have been compacted"
        cluster.stop()
        # Every member again, from its directory: state and log are there before any leader.
        for node_id in before:
            node = cluster.start_node(node_id)
            status = node.status()
            assert status.term >= before[node_id].term
            assert status.applied_index >= before[node_id].applied_index
            assert node._runtime._wal is not None
            assert node._runtime._wal.last_index() >= logs[node_id][1]
            assert node._runtime._wal.first_index() >= logs[node_id][0]
            assert dict(node.scan(b"a/", consistency="stale")) == written
        leader = cluster.leader()
        written.update(_write(leader, b"b/", 20))
        for node in cluster.nodes.values():
            assert dict(node.scan(b"", consistency="linearizable")) == written
    finally:
        cluster.stop()


def test_entries_missing_from_lmdb_are_applied_again_from_the_log(tmp_path: Path) -> None:
    """LMDB is synced only at checkpoints, so after a crash it may lag the log: simulate that by
    putting back an older copy of a member's LMDB environment; the member replays the rest."""
    cluster = EmbeddedCluster(tmp_path, options=NO_CHECKPOINT).start()
    try:
        first = _write(cluster.leader(), b"first/", 30)
        cluster.wait_applied(cluster.leader().status().commit_index)
        victim = cluster.followers()[0].node_id
        cluster.stop_node(victim)
        old_state = tmp_path / "old-state"
        shutil.copytree(tmp_path / victim / "state", old_state)
        cluster.start_node(victim)
        second = _write(cluster.leader(), b"second/", 30)
        cluster.wait_applied(cluster.leader().status().commit_index)
        cluster.stop_node(victim)
        shutil.rmtree(tmp_path / victim / "state")
        shutil.copytree(old_state, tmp_path / victim / "state")
        node = cluster.start_node(victim)
        # No leader needed: its log knows which entries are committed.
        wait_until(
            lambda: dict(node.scan(b"", consistency="stale")) == {**first, **second},
            timeout_s=WAIT_S,
            what="the restarted member to replay its log into LMDB",
        )
    finally:
        cluster.stop()


def test_single_member_restarts_with_a_compacted_log(tmp_path: Path) -> None:
    peers = {"solo": f"127.0.0.1:{free_ports(1)[0]}"}
    with kvstore.Node("solo", tmp_path / "solo", peers, options=EARLY_CHECKPOINT) as node:
        node.wait_for_leader()
        written = _write(node, b"s/", 50)
        assert node._runtime._wal is not None
        wait_until(
            lambda: node._runtime._wal is not None and node._runtime._wal.first_index() > 1,
            timeout_s=WAIT_S,
            what="compaction",
        )
        term = node.status().term
    with kvstore.Node("solo", tmp_path / "solo", peers, options=EARLY_CHECKPOINT) as node:
        assert dict(node.scan(b"s/", consistency="stale")) == written
        node.wait_for_leader()
        assert node.status().term > term  # it campaigned again, from the term it had stored
        node.put(b"s/new", b"1")
        assert node.get(b"s/new") == b"1"
        assert dict(node.scan(b"s/")) == {**written, b"s/new": b"1"}

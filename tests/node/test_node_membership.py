"""Membership changes and snapshots between embedded nodes: a member that joins after the log
was compacted gets a snapshot, streamed in many chunks with acknowledgements, and resumes after
lost chunks and acknowledgements instead of starting over; a removed member gets no traffic."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvstore
from kvstore.node import snapshot_transfer
from kvstore.testing.local_cluster import free_ports, wait_until

from .conftest import FAST, WAIT_S, EmbeddedCluster

SNAPSHOT_OPTIONS = kvstore.Options(
    tick_s=FAST.tick_s,
    election_ticks=FAST.election_ticks,
    checkpoint_entries=20,
    snapshot_chunk_bytes=2048,
)
"""Checkpoints every 20 entries (the log is compacted early) and small snapshot chunks (a
snapshot of a few hundred keys takes dozens of them)."""

KEYS = 200
X_SHA256 = hashlib.sha256(b"x").digest()


def _value(number: int) -> bytes:
    return b"value-%04d-" % number + b"p" * 80


@pytest.fixture
def compacted(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A 3-node cluster holding KEYS keys whose leader's log no longer starts at index 1."""
    cluster = EmbeddedCluster(tmp_path, options=SNAPSHOT_OPTIONS)
    try:
        cluster.start()
        leader = cluster.leader()
        for number in range(KEYS):
            leader.put(b"key/%04d" % number, _value(number))
        assert leader._runtime._wal is not None
        wait_until(
            lambda: leader._runtime._wal is not None and leader._runtime._wal.first_index() > 1,
            timeout_s=WAIT_S,
            what="the leader's log to be compacted",
        )
        yield cluster
    finally:
        cluster.stop()


def _join(cluster: EmbeddedCluster, node_id: str) -> kvstore.Node:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    return cluster.start_node(node_id, join=True, peers={**cluster.peers, node_id: address})


def _assert_holds_every_key(node: kvstore.Node) -> None:
    pairs = node.scan(b"key/", consistency="stale")
    assert pairs == [(b"key/%04d" % n, _value(n)) for n in range(KEYS)]


def test_member_added_after_compaction_gets_a_snapshot_and_serves_reads(
    compacted: EmbeddedCluster,
) -> None:
    leader = compacted.leader()
    joiner = _join(compacted, "n4")
    assert joiner.status().role == "learner"  # not a voter until added and caught up
    assert joiner.status().members == {}
    leader.add_member("n4", joiner.address)
    assert leader.status().members["n4"] == joiner.address
    wait_until(
        lambda: joiner.status().role == "follower",
        timeout_s=WAIT_S,
        what="n4 to be promoted to voter",
    )
    compacted.wait_applied(leader.status().commit_index, [joiner])
    assert joiner._runtime._wal is not None and joiner._runtime._wal.snapshot_meta().index > 0, (
        "no snapshot"
    )
    _assert_holds_every_key(joiner)
    assert joiner.get(b"key/0007", consistency="linearizable") == _value(7)
    # It counts in the quorum now: writes go on with one founder stopped.
    compacted.stop_node(compacted.followers()[0].node_id)
    leader.put(b"after/join", b"1", timeout_s=10)
    assert joiner.get(b"after/join", consistency="lease") == b"1"
    assert set(joiner.status().members) == {"n1", "n2", "n3", "n4"}


def test_removed_member_stops_receiving_traffic(compacted: EmbeddedCluster) -> None:
    leader = compacted.leader()
    removed = compacted.followers()[0]
    leader.remove_member(removed.node_id)
    assert removed.node_id not in leader.status().members
    assert leader._runtime._transport is not None
    wait_until(
        lambda: not leader._runtime._transport.is_connected(removed.node_id),  # type: ignore[union-attr]
        timeout_s=WAIT_S,
        what="the leader to drop its link to the removed member",
    )

    # It learns of its removal when the change commits, and applies that entry last.
    def knows_removed() -> bool:
        status = removed.status()
        return status.role == "learner" and status.applied_index == status.commit_index

    wait_until(knows_removed, timeout_s=WAIT_S, what="the removed member to learn it")
    applied = removed.status().applied_index
    for number in range(30):
        leader.put(b"after/remove/%d" % number, b"x")
    others = [n for n in compacted.nodes.values() if n is not removed]
    compacted.wait_applied(leader.status().commit_index, others)
    assert removed.status().applied_index == applied
    assert removed.get(b"after/remove/0", consistency="stale") is None
    assert sorted(leader.status().members) == sorted(n.node_id for n in others)


def test_snapshot_stream_resumes_after_lost_chunks_and_acks(
    compacted: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drop one data chunk (the receiver reports the gap, the sender rewinds to it) and one
    acknowledgement plus the end frame (the sender stalls and resends from the last ack): the
    stream completes without ever sending offset 0 twice."""
    monkeypatch.setattr(snapshot_transfer, "SNAPSHOT_STALL_S", 0.3)
    leader = compacted.leader()
    transport = leader._runtime._transport
    assert transport is not None
    sent: list[dict[str, Any]] = []
    dropped: list[tuple[str, int]] = []
    real_send = transport.send_snapshot_chunk

    def lossy_send(peer: str, body: Any) -> bool:
        if peer != "n4" or "status" in body:
            return real_send(peer, body)
        sent.append(body)
        offset = body["offset"]
        if offset == 3 * SNAPSHOT_OPTIONS.snapshot_chunk_bytes and ("chunk", offset) not in dropped:
            dropped.append(("chunk", offset))
            return True  # "queued", then lost on the way
        if "checksum" in body and ("end", offset) not in dropped:
            dropped.append(("end", offset))
            return True
        return real_send(peer, body)

    monkeypatch.setattr(transport, "send_snapshot_chunk", lossy_send)
    joiner = _join(compacted, "n4")
    joiner_transport = joiner._runtime._transport
    assert joiner_transport is not None
    real_ack = joiner_transport.send_snapshot_chunk
    acks: list[dict[str, Any]] = []

    def lossy_ack(peer: str, body: Any) -> bool:
        acks.append(body)
        if len(acks) == 6:
            return True  # one acknowledgement lost
        return real_ack(peer, body)

    monkeypatch.setattr(joiner_transport, "send_snapshot_chunk", lossy_ack)
    leader.add_member("n4", joiner.address)
    compacted.wait_applied(leader.status().commit_index, [joiner])
    _assert_holds_every_key(joiner)

    assert [kind for kind, _ in dropped] == ["chunk", "end"]
    data_offsets = [body["offset"] for body in sent if body["data"]]
    assert data_offsets.count(0) == 1, "the stream started over instead of resuming"
    assert data_offsets.count(3 * SNAPSHOT_OPTIONS.snapshot_chunk_bytes) == 2
    assert len(data_offsets) > 10, "the snapshot should take many chunks"
    assert {ack["status"] for ack in acks} >= {"ok", "gap", "done"}
    total = sent[0]["total"]
    assert sum(1 for body in sent if "checksum" in body) >= 2
    assert max(data_offsets) < total


def test_garbage_snapshot_frames_do_not_hurt_the_node(shared_cluster: EmbeddedCluster) -> None:
    """Whatever a peer puts in a SNAPSHOT_CHUNK frame, the node logs it and carries on."""
    node = shared_cluster.followers()[0]
    garbage: list[object] = [
        None,
        [1, 2, 3],
        {},
        {"id": 5, "offset": 0, "total": 10, "data": b"x"},
        {"id": "../../etc/passwd", "offset": 0, "total": 10, "data": b"x"},
        {"id": "s1", "offset": -1, "total": 10, "data": b"x"},
        {"id": "s1", "offset": 0, "total": 1 << 60, "data": b"x"},
        {"id": "s1", "offset": 5, "total": 10, "data": b"x"},
        {"id": "s1", "offset": 0, "total": 2, "data": b"xyz"},
        {"id": "s2", "offset": 0, "total": 1, "data": b"x"},
        {"id": "s2", "offset": 1, "total": 1, "data": b"", "checksum": b"0" * 32, "message": 1},
        {"id": "s3", "offset": 0, "total": 1, "data": b"x"},
        {"id": "s3", "offset": 1, "total": 1, "data": b"", "checksum": "nope", "message": []},
        # Complete and verified, but its SNAPSHOT message is garbage: the file must go.
        {"id": "s4", "offset": 0, "total": 1, "data": b"x"},
        {"id": "s4", "offset": 1, "total": 1, "data": b"", "checksum": X_SHA256, "message": 1},
        {"status": "ok", "id": "nothing", "next_offset": "x"},
        {"status": "weird", "id": "nothing", "next_offset": 0},
    ]

    leader_id = shared_cluster.leader().node_id

    async def feed() -> None:
        for body in garbage:
            node._runtime._on_snapshot_chunk(leader_id, body)

    node._run_on_loop(feed(), timeout_s=5)
    leader = shared_cluster.leader()
    leader.put(b"after/garbage", b"ok")
    assert node.get(b"after/garbage") == b"ok"
    assert node.status().role == "follower"
    # s4 was verified (so renamed to .snap) off the loop, then refused: its file is deleted.
    snapshots = node.data_dir / "snapshots"
    wait_until(
        lambda: not (snapshots / "s4.snap").exists() and not list(snapshots.glob("s4*")),
        timeout_s=WAIT_S,
        what="the refused snapshot to be deleted",
    )
    assert not list(snapshots.glob("*.snap"))


def test_leader_removing_itself_hands_over_to_the_others(cluster: EmbeddedCluster) -> None:
    leader = cluster.leader()
    leader.put(b"before/removal", b"1")
    leader.remove_member(leader.node_id)
    new_leader = cluster.leader(exclude=leader.node_id)
    new_leader.put(b"after/removal", b"1", timeout_s=10)
    others = [n for n in cluster.nodes.values() if n is not leader]
    for node in others:
        assert node.get(b"after/removal") == b"1"
        assert node.get(b"before/removal") == b"1"
        assert leader.node_id not in node.status().members
    assert leader.status().role == "learner"
    assert leader.get(b"after/removal", consistency="stale") is None

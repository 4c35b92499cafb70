"""Log compaction and snapshots: Raft paper §7 (InstallSnapshot), thesis chapter 5."""

from __future__ import annotations

from kvstore.consensus.progress import ProgressState
from kvstore.consensus.types import ConfState, Message, MessageType, SnapshotMeta

from .helpers import Network, peer_with_log, terms_of

MT = MessageType


def _lagging_c(entries: int = 6) -> Network:
    """a leads a, b, c; c missed `entries` proposals; a compacted its log through its applied
    index, so c can only catch up from a snapshot."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    net.down.add("c")
    for k in range(entries):
        net.propose("a", b"v%d" % k)
    net.tick("a")
    a = net["a"]
    a.storage.compact(a.core.applied_index)
    net.down.clear()
    return net


def test_follower_behind_compaction_gets_a_snapshot() -> None:
    """§7: when a follower needs entries the leader has discarded, the leader sends its snapshot
    (the LogView's snapshot point, with the configuration) and waits for it to be installed."""
    net = _lagging_c()
    a = net["a"]
    snap = a.storage.snapshot_meta()
    net.core("a").tick()
    net.send(*a.process_ready())  # heartbeat; c answers; a probes, c rejects; a sends SNAPSHOT
    snaps = [m for m in net.delivered if m.type == MT.SNAPSHOT]
    assert [(m.recipient, m.snapshot) for m in snaps] == [("c", snap)]
    assert snap is not None and snap.conf_state.voters == ("a", "b", "c")
    assert net["c"].snapshots == [snap]
    assert net.core("a").status().progress["c"].state == ProgressState.REPLICATE
    index = net.propose("a", b"after")
    assert terms_of(net["c"]) == terms_of(a)[-(index - snap.index) :]
    assert net["c"].applied_data() == [b"after"]
    assert net.core("c").commit_index == index


def test_one_snapshot_at_a_time_per_follower() -> None:
    """§7: while a snapshot is being sent, the leader sends that follower nothing else (no
    second snapshot, no entries), however many heartbeats and proposals happen."""
    net = _lagging_c()
    net.ignore(MT.SNAPSHOT)  # the application is still streaming it
    for _ in range(5):
        net.tick("a")
        net.propose("a", b"more")
    to_c = [m.type for m in net.sent if m.recipient == "c" and m.sender == "a"]
    assert to_c.count(MT.SNAPSHOT) == 1
    assert MT.APPEND not in to_c[to_c.index(MT.SNAPSHOT) :]
    assert net.core("a").status().progress["c"].state == ProgressState.SNAPSHOT


def test_snapshot_failure_falls_back_to_probing() -> None:
    """§7 (operational): if sending the snapshot failed, the leader goes back to probing after
    the next heartbeat answer, finds the follower still behind, and sends a snapshot again."""
    net = _lagging_c()
    net.ignore(MT.SNAPSHOT)
    net.tick("a")
    leader = net.core("a")
    assert leader.status().progress["c"].state == ProgressState.SNAPSHOT
    leader.report_snapshot("c", success=False)
    assert leader.status().progress["c"].state == ProgressState.PROBE
    net.recover()
    net.tick("a")
    assert net["c"].snapshots == [net["a"].storage.snapshot_meta()]
    assert leader.status().progress["c"].state == ProgressState.REPLICATE


def test_snapshot_success_waits_for_the_followers_ack() -> None:
    """§7: after the application reports success, the leader resumes from the snapshot's index
    once the follower confirms it installed it."""
    net = _lagging_c()
    net.ignore(MT.SNAPSHOT)  # the application streams it; it is delivered by hand below
    net.tick("a")
    leader = net.core("a")
    assert leader.status().progress["c"].state == ProgressState.SNAPSHOT
    leader.report_snapshot("c", success=True)
    pr = leader.status().progress["c"]
    snap = net["a"].storage.snapshot_meta()
    assert (pr.state, pr.next) == (ProgressState.PROBE, snap.index + 1)
    assert not net["a"].process_ready(), "paused until c answers"
    net.recover()
    net.send(Message(MT.SNAPSHOT, "c", "a", leader.term, snapshot=snap))
    assert leader.status().progress["c"].state == ProgressState.REPLICATE


def test_leader_learns_position_from_a_newer_snapshot() -> None:
    """§7 (as the application may stream a newer snapshot than the one the core named): the
    leader takes the follower's position from its acknowledgement, not from what it sent."""
    net = _lagging_c()
    net.ignore(MT.SNAPSHOT)
    net.tick("a")
    net.propose("a", b"newer")
    a = net["a"]
    newer_index = a.core.commit_index
    assert newer_index > a.storage.snapshot_meta().index
    newer = SnapshotMeta(newer_index, a.storage.term(newer_index), a.core.conf_state)
    net.recover()
    net.send(Message(MT.SNAPSHOT, "c", "a", a.core.term, snapshot=newer))
    pr = a.core.status().progress["c"]
    assert pr.match == newer_index and pr.state == ProgressState.REPLICATE


def test_follower_installs_a_newer_snapshot() -> None:
    """§7: a follower receiving a snapshot of entries it lacks discards its log, adopts the
    snapshot's configuration, hands the snapshot to the application and acknowledges it only
    once it is durable."""
    peer = peer_with_log("b", "abc", [1, 1], term=3)
    snap = SnapshotMeta(10, 3, ConfState(("a", "b", "c", "d"), ("e",)))
    peer.core.step(Message(MT.SNAPSHOT, "b", "a", 3, snapshot=snap))
    rd = peer.core.ready()
    assert rd.snapshot == snap and rd.must_sync
    assert not rd.committed_entries, "the snapshot replaces applying entries 1..10"
    [ack] = rd.persisted_messages
    assert (ack.type, ack.index, ack.reject) == (MT.APPEND_RESPONSE, 10, False)
    assert peer.core.conf_state == snap.conf_state
    peer.handle(rd)
    assert peer.core.commit_index == 10 and peer.core.applied_index == 10
    assert (peer.storage.first_index(), peer.storage.last_index()) == (11, 10)


def test_stale_snapshot_is_acknowledged_but_not_installed() -> None:
    """§7: a snapshot that covers nothing new (at or below the follower's commit) is not
    installed; the follower answers with where it stands."""
    peer = peer_with_log("b", "abc", [1, 1, 2, 2, 2], term=2, commit=4)
    peer.core.step(Message(MT.SNAPSHOT, "b", "a", 2, snapshot=SnapshotMeta(3, 2, ConfState())))
    rd = peer.core.ready()
    assert rd.snapshot is None
    assert [(m.type, m.index) for m in rd.persisted_messages] == [(MT.APPEND_RESPONSE, 4)]
    assert peer.core.conf_state.voters == ("a", "b", "c")


def test_snapshot_matching_the_log_only_moves_commit() -> None:
    """§7: "If existing log entry has same index and term as snapshot's last included entry,
    retain log entries following it": the follower keeps its log and commits up to it."""
    peer = peer_with_log("b", "abc", [1, 1, 2, 2, 2], term=2, commit=1)
    peer.core.step(Message(MT.SNAPSHOT, "b", "a", 2, snapshot=SnapshotMeta(3, 2, ConfState())))
    rd = peer.core.ready()
    assert rd.snapshot is None
    assert peer.core.commit_index == 3
    assert [e.index for e in rd.committed_entries] == [1, 2, 3]
    peer.handle(rd)
    assert terms_of(peer) == [1, 1, 2, 2, 2]


def test_leader_copes_with_compaction_under_a_replicating_follower() -> None:
    """§7: the application may compact at any time; a follower in the middle of replication that
    now needs discarded entries is switched to a snapshot."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    net.drop("a", "c", 1.0)  # c misses the entries; the leader streams on optimistically
    for k in range(4):
        net.propose("a", b"v%d" % k)
    pr = net.core("a").status().progress["c"]
    assert pr.state == ProgressState.REPLICATE and pr.next > pr.match + 1
    net.tick("a")  # a applies what b acknowledged
    a = net["a"]
    a.storage.compact(a.core.applied_index)
    net.recover()
    net.tick("a", 2)
    assert net["c"].snapshots == [a.storage.snapshot_meta()]
    assert net.core("c").commit_index == net.core("a").commit_index

"""Restarts: what a core rebuilds from its LogView (Raft paper figure 2, "persistent state"),
bootstrap of a new cluster, and `Config.applied`."""

from __future__ import annotations

import random

from kvstore.consensus.config import Config
from kvstore.consensus.memory import MemoryLogView
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Role,
    SnapshotMeta,
)
from kvstore.raft.core import RaftCore

from .helpers import Network, Peer, new_peer

MT = MessageType


def _restart(peer: Peer, **options: object) -> Peer:
    """A new core over the same storage (the process crashed after its last advance)."""
    config = Config(peer.id, **options)  # type: ignore[arg-type]
    return Peer(RaftCore(config, peer.storage, random.Random(1)), peer.storage)


def test_bootstrap_entries_are_identical_on_every_member() -> None:
    """A new cluster: every initial member writes the same committed entries, one ADD_VOTER per
    voter in sorted order at term 1, so their logs match from the start."""
    logs = []
    for node in ("c", "a", "b"):
        peer = new_peer(node, ("b", "c", "a"))
        rd = peer.take_ready()
        assert rd.hard_state == HardState(1, None, 3) and rd.must_sync
        assert rd.committed_entries == rd.entries
        logs.append(list(rd.entries))
    assert logs[0] == logs[1] == logs[2]
    assert [ConfChange.decode(e.data).node_id for e in logs[0]] == ["a", "b", "c"]
    assert all(e.type == EntryType.CONF_CHANGE and e.term == 1 for e in logs[0])


def test_restart_keeps_term_and_vote() -> None:
    """Figure 2: currentTerm and votedFor survive a restart, so a server never votes twice in a
    term."""
    peer = new_peer("c", ("a", "b", "c"))
    peer.process_ready()
    peer.core.step(Message(MT.VOTE, "c", "a", 5, 1, 3))
    peer.process_ready()
    again = _restart(peer)
    assert (again.core.term, again.core.status().vote) == (5, "a")
    assert again.core.role == Role.FOLLOWER
    again.core.step(Message(MT.VOTE, "c", "b", 5, 1, 3))
    [reply] = again.process_ready()
    assert reply.reject


def test_restart_does_not_bootstrap_again() -> None:
    """initial_voters are used only for a brand-new log; a restarted member keeps its own."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    net.propose("a", b"x")
    again = _restart(net["b"], initial_voters=("a", "b", "c"))
    assert not again.core.has_ready() or not again.core.ready().entries
    assert again.core.last_index == net.core("a").last_index


def test_restart_hands_out_committed_entries_after_applied() -> None:
    """Config.applied: entries up to it were applied before the crash; the rest of the committed
    entries are handed out again, from applied + 1."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    for k in range(5):
        net.propose("a", b"v%d" % k)
    net.tick("a")
    b = net["b"]
    commit = b.core.commit_index
    again = _restart(b, applied=commit - 2)
    rd = again.take_ready()
    assert [e.index for e in rd.committed_entries] == [commit - 1, commit]
    assert again.core.applied_index == commit


def test_restart_replays_configuration_changes_from_the_log() -> None:
    """Thesis §4.1: the configuration is the latest committed one in the log; a change that was
    not committed before the crash takes effect once it is."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    net.core("a").propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
    net.stabilize()
    net.tick("a")
    net.isolate("a")
    index = net.core("a").propose_conf_change(ConfChange(ConfChangeType.REMOVE, "c"))
    net["a"].process_ready()
    again = _restart(net["a"])
    assert again.core.conf_state == ConfState(("a", "b", "c"), ("d",))
    assert again.core.last_index == index
    # The uncommitted removal takes effect when a leader commits it.
    net.peers["a"] = again
    net.recover()
    net.down.add("c")
    for _ in range(50):
        net.tick_all()
        if net.leader() is not None and net.core("a").commit_index >= index:
            break
    assert net.core("a").conf_state == ConfState(("a", "b"), ("d",))


def test_restart_from_a_snapshot() -> None:
    """§7: after restarting from a snapshot, the configuration, commit and applied index come
    from the snapshot, and the log continues after it."""
    snap = SnapshotMeta(20, 3, ConfState(("a", "b", "c"), ()))
    storage = MemoryLogView(
        snapshot=snap,
        hard_state=HardState(3, "a", 20),
        entries=[Entry(3, 21, EntryType.NORMAL, b"x")],
    )
    core = RaftCore(Config("b", ("a", "b", "c")), storage, random.Random(0))
    assert core.conf_state == snap.conf_state
    assert (core.commit_index, core.applied_index, core.last_index) == (20, 20, 21)
    assert not core.ready().committed_entries


def test_applied_beyond_the_persisted_commit_counts_as_committed() -> None:
    """The commit index in the hard state is persisted lazily (no fsync of its own); entries the
    state machine applied were committed, so the restarted core counts them as such."""
    storage = MemoryLogView(
        snapshot=SnapshotMeta(0, 0, ConfState(("a", "b", "c"), ())),
        hard_state=HardState(2, None, 1),
        entries=[Entry(2, i, EntryType.NORMAL, b"%d" % i) for i in range(1, 6)],
    )
    core = RaftCore(Config("b", applied=4), storage, random.Random(0))
    assert (core.commit_index, core.applied_index) == (4, 4)
    assert not core.ready().committed_entries

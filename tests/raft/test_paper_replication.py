"""Log replication and commitment: Raft paper §5.3, §5.4.2; thesis §10.2.1 (the leader writes
its log in parallel with replicating it)."""

from __future__ import annotations

import pytest

from kvstore.consensus.types import Entry, EntryType, Message, MessageType, Role

from .helpers import Network, new_peer, peer_with_log, terms_of

MT = MessageType


def _leader_of_three() -> Network:
    net = Network(["a", "b", "c"])
    net.elect("a")
    return net


def test_leader_appends_then_replicates() -> None:
    """§5.3: the leader appends the command to its log as a new entry, then sends AppendEntries
    carrying it, with the index and term of the entry before it, to every follower."""
    net = _leader_of_three()
    core = net.core("a")
    last, commit = core.last_index, core.commit_index
    index = core.propose(b"cmd")
    assert index == last + 1
    rd = core.ready()
    assert [(e.index, e.term, e.data) for e in rd.entries] == [(index, 2, b"cmd")]
    appends = [m for m in rd.messages if m.type == MT.APPEND]
    assert sorted(m.recipient for m in appends) == ["b", "c"]
    for m in appends:
        assert (m.index, m.log_term, m.commit, m.term) == (last, 2, commit, 2)
        assert [e.data for e in m.entries] == [b"cmd"]


def test_entry_commits_once_a_majority_stores_it() -> None:
    """§5.3: an entry is committed once the leader has replicated it on a majority; the leader
    then applies it and tells the followers, which apply it too."""
    net = _leader_of_three()
    net.down.add("c")
    index = net.propose("a", b"cmd")
    assert net.core("a").commit_index == index
    net.tick("a")  # the heartbeat carries the new commit index
    assert net["a"].applied_data() == [b"cmd"]
    assert net["b"].applied_data() == [b"cmd"]
    assert net["c"].applied_data() == []


def test_no_commit_without_a_majority() -> None:
    """§5.3: with only a minority storing the entry, it is not committed."""
    net = Network(["a", "b", "c", "d", "e"])
    net.elect("a")
    for node in "cde":
        net.down.add(node)
    index = net.propose("a", b"cmd")
    assert net.core("a").commit_index < index
    assert net["a"].applied_data() == []


def test_leader_sends_before_its_own_fsync_and_counts_its_ack_after_advance() -> None:
    """Thesis §10.2.1: the leader's APPENDs go out in `messages` of the very Ready that asks it to
    persist the entry; its own copy counts towards the majority only once `advance()` says it is
    durable."""
    net = _leader_of_three()
    core = net.core("a")
    index = core.propose(b"cmd")
    rd = core.ready()
    assert rd.must_sync and rd.entries and any(m.type == MT.APPEND for m in rd.messages)
    core.step(Message(MT.APPEND_RESPONSE, "a", "b", 2, 0, index))
    assert core.commit_index < index, "the leader's copy is not durable yet"
    core.advance(rd)
    assert core.commit_index == index


def test_single_node_commits_on_its_own_persistence() -> None:
    """§5.3 for a cluster of one: the entry commits when its only copy is durable; it may be
    handed out for applying in the Ready after the one that persists it."""
    peer = new_peer("a", ("a",))
    peer.process_ready()
    peer.core.campaign()
    peer.process_ready()
    assert peer.core.role == Role.LEADER
    index = peer.core.propose(b"solo")
    rd = peer.core.ready()
    assert [e.index for e in rd.entries] == [index] and not rd.committed_entries
    peer.core.advance(rd)
    assert peer.core.commit_index == index
    rd = peer.core.ready()
    assert [e.data for e in rd.committed_entries] == [b"solo"]


def test_committed_entries_are_handed_out_once() -> None:
    """§5.3 (state machine safety at the interface): each committed entry is handed out for
    applying exactly once, in index order."""
    net = _leader_of_three()
    for k in range(20):
        net.propose("a", b"v%d" % k)
        if k % 3 == 0:
            net.tick_all()
    for peer in net.peers.values():
        indices = [e.index for e in peer.applied]
        assert indices == list(range(1, len(indices) + 1))
        assert peer.applied_data() == [b"v%d" % k for k in range(20)]


def test_follower_appends_matching_entries() -> None:
    """§5.3: a follower whose log holds the entry before the new ones appends them, reports the
    last new index, and learns the commit index (up to what it holds)."""
    peer = peer_with_log("b", "abc", [1, 1], term=2)
    ents = (Entry(2, 3, EntryType.NORMAL, b"x"), Entry(2, 4, EntryType.NORMAL, b"y"))
    peer.core.step(Message(MT.APPEND, "b", "a", 2, 1, 2, ents, 9))
    rd = peer.core.ready()
    assert [e.index for e in rd.entries] == [3, 4]
    [ack] = rd.persisted_messages
    assert (ack.type, ack.index, ack.reject) == (MT.APPEND_RESPONSE, 4, False)
    assert not rd.messages, "an ack must wait until the entries are durable"
    assert peer.core.commit_index == 4


@pytest.mark.parametrize(
    ("prev_index", "prev_term"),
    [(2, 2), (3, 1), (5, 1)],
    ids=["term-mismatch", "missing-entry", "far-beyond"],
)
def test_follower_rejects_when_previous_entry_does_not_match(
    prev_index: int, prev_term: int
) -> None:
    """§5.3 consistency check: a follower without an entry at prev_index with prev_term refuses
    the new entries and changes nothing."""
    peer = peer_with_log("b", "abc", [1, 1], term=2)
    ents = (Entry(2, prev_index + 1, EntryType.NORMAL, b"x"),)
    peer.core.step(Message(MT.APPEND, "b", "a", 2, prev_term, prev_index, ents, 0))
    [reply] = peer.process_ready()
    assert reply.type == MT.APPEND_RESPONSE and reply.reject
    assert reply.reject_hint <= 2
    assert terms_of(peer) == [1, 1]


def test_follower_deletes_conflicting_suffix() -> None:
    """§5.3: if an existing entry conflicts with a new one (same index, different terms), the
    follower deletes it and all that follow, then appends the new ones."""
    peer = peer_with_log("b", "abc", [1, 2, 2, 2], term=3)
    ents = (Entry(3, 3, EntryType.NORMAL, b"new"),)
    peer.core.step(Message(MT.APPEND, "b", "a", 3, 2, 2, ents, 0))
    peer.process_ready()
    assert terms_of(peer) == [1, 2, 3]
    assert peer.storage.entries(3, 4)[0].data == b"new"


def test_follower_keeps_entries_on_duplicate_append() -> None:
    """§5.3: appending entries the follower already has changes nothing (in particular it does
    not cut the entries after them: a stale retransmission must not undo newer ones)."""
    peer = peer_with_log("b", "abc", [1, 2, 2, 2], term=2)
    ents = (Entry(2, 2, EntryType.NORMAL, b"e2"),)
    peer.core.step(Message(MT.APPEND, "b", "a", 2, 1, 1, ents, 0))
    rd = peer.core.ready()
    assert not rd.entries
    assert [m.index for m in rd.persisted_messages] == [2]
    peer.core.advance(rd)
    assert terms_of(peer) == [1, 2, 2, 2]


LEADER_LOG = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7_FOLLOWERS = {
    "a-missing-one": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b-missing-many": [1, 1, 1, 4],
    "c-extra-same-term": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d-extra-newer-term": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e-missing-and-extra": [1, 1, 1, 4, 4, 4, 4],
    "f-missing-and-extra": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("follower_log", FIGURE_7_FOLLOWERS.values(), ids=FIGURE_7_FOLLOWERS)
def test_leader_brings_any_follower_log_in_line(follower_log: list[int]) -> None:
    """§5.3 figure 7: whatever a follower's log looks like (missing entries, extra uncommitted
    entries, both), the leader makes it identical to its own."""
    leader = peer_with_log("l", ("l", "f", "z"), LEADER_LOG, term=8, commit=len(LEADER_LOG))
    follower = peer_with_log("f", ("l", "f", "z"), follower_log, term=7)
    net = Network.of(leader, follower)
    leader.core.campaign()
    leader.process_ready()
    # "z" is down; its vote (it has an empty log) lets "l" win even against the longer logs.
    net.send(Message(MT.VOTE_RESPONSE, "l", "z", 9))
    net.stabilize()
    assert leader.core.role == Role.LEADER
    net.propose("l", b"after")
    assert terms_of(follower) == terms_of(leader) == [*LEADER_LOG, 9, 9]


def test_fast_backtracking_skips_a_whole_term_per_round_trip() -> None:
    """§5.3 (the optimisation at the end of the section): a rejecting follower says the term of
    its conflicting entry and where that term starts, so the leader skips all entries of that
    term at once instead of backing up one entry per round trip."""
    leader = peer_with_log("l", ("l", "f", "z"), [1] + [2] * 3, term=5, commit=1)
    follower = peer_with_log("f", ("l", "f", "z"), [1] + [3] * 60, term=4)
    net = Network.of(leader, follower)
    leader.core.campaign()
    leader.process_ready()
    net.send(Message(MT.VOTE_RESPONSE, "l", "z", 6))
    net.stabilize()
    net.propose("l", b"x")
    rejections = [m for m in net.delivered if m.type == MT.APPEND_RESPONSE and m.reject]
    assert 1 <= len(rejections) <= 2
    assert terms_of(follower) == terms_of(leader) == [1, 2, 2, 2, 6, 6]


def test_old_term_entries_are_not_committed_by_counting_replicas() -> None:
    """§5.4.2: a leader never commits an entry of an earlier term by counting its replicas; it
    commits it only together with an entry of its own term."""
    voters = ("a", "b", "c", "d", "e")
    leader = peer_with_log("a", voters, [1, 2], term=3)
    leader.core.campaign()
    for voter in ("b", "c"):
        leader.core.step(Message(MT.VOTE_RESPONSE, "a", voter, 4))
    leader.process_ready()  # persists its no-op at index 3, term 4
    core = leader.core
    assert core.role == Role.LEADER and core.last_index == 3
    for voter in ("b", "c"):
        core.step(Message(MT.APPEND_RESPONSE, "a", voter, 4, 0, 2))
    assert core.commit_index == 0, "index 2 (term 2) is on a majority but must not commit"
    core.step(Message(MT.APPEND_RESPONSE, "a", "b", 4, 0, 3))
    assert core.commit_index == 0
    core.step(Message(MT.APPEND_RESPONSE, "a", "c", 4, 0, 3))
    assert core.commit_index == 3


def _figure_8_cluster() -> Network:
    """Figure 8 (b): S1 led term 2 and put (2, term 2) on S1 and S2; S5 led term 3 and put
    (2, term 3) only on itself; S1 has just been re-elected in term 4 (S5 down)."""
    voters = ("s1", "s2", "s3", "s4", "s5")
    peers = [
        peer_with_log("s1", voters, [1, 2], term=3),
        peer_with_log("s2", voters, [1, 2], term=3),
        peer_with_log("s3", voters, [1], term=3),
        peer_with_log("s4", voters, [1], term=3),
        peer_with_log("s5", voters, [1, 3], term=3),
    ]
    return Network.of(*peers)


def test_figure_8_old_term_entry_on_a_majority_can_still_be_overwritten() -> None:
    """§5.4.2 figure 8 (c)-(d): S1 (term 4) copies (2, term 2) to a majority, but as it is of
    an older term it is not committed; S1 crashes, S5 wins term 5 and overwrites it. Safety
    holds because nobody committed or applied it."""
    net = _figure_8_cluster()
    net.down.add("s5")
    net.ignore(MT.APPEND)  # hold back S1's replication so we can deliver just index 2
    net.elect("s1")
    assert net.leader() == "s1" and net.core("s1").term == 4
    for node in ("s3",):
        net[node].core.step(
            Message(MT.APPEND, node, "s1", 4, 1, 1, (Entry(2, 2, EntryType.NORMAL, b"e2"),), 0)
        )
        net.send(*net[node].process_ready())
    assert [terms_of(net[n])[:2] for n in ("s1", "s2", "s3")] == [[1, 2]] * 3
    assert net.core("s1").commit_index == 0
    # (d): S1 crashes; S5 comes back and is elected with the votes of S2, S3 and S4.
    net.recover()
    net.down = {"s1"}
    for _ in range(3):
        if net.leader() == "s5":
            break
        net.elect("s5")
    assert net.leader() == "s5"
    net.propose("s5", b"s5")
    for node in ("s2", "s3", "s4", "s5"):
        assert terms_of(net[node])[1] == 3
        assert all(e.term != 2 for e in net[node].applied)


def test_figure_8_entry_of_current_term_commits_and_protects_earlier_ones() -> None:
    """§5.4.2 figure 8 (e): once S1 replicates an entry of its own term to a majority, that
    entry and (2, term 2) before it are committed, and S5 can no longer be elected."""
    net = _figure_8_cluster()
    net.down.add("s5")
    net.elect("s1")
    assert net.core("s1").commit_index == 3
    net.down = {"s1"}
    for _ in range(5):
        net.elect("s5")
        assert net.leader() != "s5"
    for _ in range(200):
        net.tick_all()
        if net.leader() is not None:
            break
    leader = net.leader()
    assert leader in ("s2", "s3", "s4")
    assert terms_of(net[leader])[:3] == [1, 2, 4]


def test_message_split_between_messages_and_persisted_messages() -> None:
    """Thesis §10.2.1 and §3.8: what a node says about its own durable state (votes, acks) waits
    for persistence; what a leader sends about its log does not."""
    net = _leader_of_three()
    core = net.core("a")
    core.propose(b"x")
    core.tick()
    rd = core.ready()
    assert {m.type for m in rd.messages} == {MT.APPEND, MT.HEARTBEAT}
    assert not rd.persisted_messages
    core.advance(rd)
    follower = net.core("b")
    for m in rd.messages:
        if m.recipient == "b":
            follower.step(m)
    follower.step(Message(MT.VOTE, "b", "c", 9, 9, 99))
    rd = follower.ready()
    assert {m.type for m in rd.persisted_messages} == {MT.APPEND_RESPONSE, MT.VOTE_RESPONSE}
    assert {m.type for m in rd.messages} <= {MT.HEARTBEAT_RESPONSE}

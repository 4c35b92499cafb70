"""Membership changes: Raft paper §6 and thesis chapter 4 (single-server changes, learners,
removing the leader). Changes take effect when their entry commits (see core.py)."""

from __future__ import annotations

import pytest

from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    DropReason,
    EntryType,
    Message,
    MessageType,
    Role,
)
from kvstore.errors import InvalidArgumentError, ProposalDroppedError

from .helpers import Network, new_peer

MT = MessageType
ADD_VOTER = ConfChangeType.ADD_VOTER
ADD_LEARNER = ConfChangeType.ADD_LEARNER
REMOVE = ConfChangeType.REMOVE


def _cluster(ids: str = "abc", **options: object) -> Network:
    net = Network(list(ids), **options)  # type: ignore[arg-type]
    net.elect(ids[0])
    return net


def _join(net: Network, node: str, change: ConfChangeType = ADD_VOTER) -> None:
    """Start an empty member that waits to be contacted, and propose adding it."""
    net.peers[node] = new_peer(node, (), seed=len(net.peers))
    leader = net.leader()
    assert leader is not None
    net.core(leader).propose_conf_change(ConfChange(change, node, b"addr-" + node.encode()))
    net.stabilize()


def test_new_member_learns_the_configuration_from_the_log() -> None:
    """Thesis §4.2.1: a new server starts with no configuration and catches up from the leader's
    log, including the bootstrap entries that name the initial members."""
    net = _cluster()
    net.propose("a", b"before")
    _join(net, "d")
    net.tick("a")
    assert net.core("d").conf_state.voters == ("a", "b", "c", "d")
    assert net["d"].applied_data() == [b"before"]
    conf_entries = [e for e in net["d"].applied if e.type == EntryType.CONF_CHANGE]
    assert [ConfChange.decode(e.data).node_id for e in conf_entries] == ["a", "b", "c", "d"]
    assert net.core("a").status().progress["d"].match == net.core("a").last_index


def test_change_takes_effect_at_commit_not_at_append() -> None:
    """Thesis §4.1 (etcd's variant): a follower holding an uncommitted change still uses the old
    configuration; it switches once it learns the entry is committed."""
    net = _cluster()
    net.ignore(MT.HEARTBEAT)
    leader = net.core("a")
    index = leader.propose_conf_change(ConfChange(REMOVE, "c"))
    rd = net["a"].take_ready()
    [to_b] = [m for m in rd.messages if m.recipient == "b" and m.type == MT.APPEND]
    net.core("b").step(to_b)
    net["b"].process_ready()
    assert net.core("b").last_index == index
    assert net.core("b").conf_state.voters == ("a", "b", "c")
    net.core("b").step(Message(MT.HEARTBEAT, "b", "a", 2, commit=index))
    net["b"].process_ready()
    assert net.core("b").conf_state.voters == ("a", "b")


def test_one_pending_change_at_a_time() -> None:
    """Thesis §4.1: a leader does not start a new change until the previous one is committed."""
    net = _cluster()
    net.isolate("a")
    net.core("a").propose_conf_change(ConfChange(ADD_LEARNER, "d"))
    with pytest.raises(ProposalDroppedError) as info:
        net.core("a").propose_conf_change(ConfChange(ADD_LEARNER, "e"))
    assert info.value.reason == DropReason.CONF_CHANGE_PENDING
    net.recover()
    net.stabilize()
    net.core("a").propose_conf_change(ConfChange(ADD_LEARNER, "e"))
    net.stabilize()
    assert net.core("a").conf_state.learners == ("d", "e")


def test_new_leader_changes_configuration_only_after_committing_in_its_term() -> None:
    """Thesis §4.1 and Ongaro's 2015 correction: a new leader may propose a membership change
    only once the entries of earlier terms in its log are known to be committed (it learns that
    by committing an entry of its own term)."""
    net = _cluster()
    leader = net.core("a")
    index = leader.propose(b"x")
    rd = net["a"].take_ready()
    [to_b] = [m for m in rd.messages if m.recipient == "b"]
    net.core("b").step(to_b)  # b stores the entry but never hears that it committed
    net["b"].process_ready()
    net.isolate("a")
    net.ignore(MT.APPEND)
    net.elect("b")
    assert net.leader() == "b" and net.core("b").commit_index < index
    with pytest.raises(ProposalDroppedError) as info:
        net.core("b").propose_conf_change(ConfChange(ADD_LEARNER, "d"))
    assert info.value.reason == DropReason.CONF_CHANGE_PENDING
    net.recover()
    net.tick("b")
    assert net.core("b").commit_index > index
    net.core("b").propose_conf_change(ConfChange(ADD_LEARNER, "d"))


def test_learner_receives_the_log_but_does_not_count() -> None:
    """Thesis §4.2.1: a non-voting member receives log entries but is not counted in majorities,
    so adding it does not hurt availability."""
    net = _cluster()
    _join(net, "d", ADD_LEARNER)
    net.down.add("c")
    net.down.add("b")
    index = net.core("a").propose(b"x")
    net.stabilize()
    assert net.core("d").last_index == index, "the learner got the entry"
    assert net.core("a").commit_index < index, "one voter and one learner are not a majority"


def test_learner_never_campaigns() -> None:
    """Thesis §4.2.1: a learner cannot become leader: it never starts an election, even when
    told to by a leadership transfer."""
    net = _cluster()
    _join(net, "d", ADD_LEARNER)
    assert net.core("d").is_learner
    net.down.add("a")
    for _ in range(100):
        net.core("d").tick()
    net.core("d").step(Message(MT.TIMEOUT_NOW, "d", "a", 2))
    assert net.core("d").role == Role.FOLLOWER and net.core("d").term == 2
    assert not net["d"].process_ready()


def test_votes_of_learners_do_not_count() -> None:
    """Thesis §4.2.1: only voters' votes count towards the majority."""
    net = _cluster()
    _join(net, "d", ADD_LEARNER)
    net.down.update({"a", "b", "c"})
    core = net.core("b")
    core.campaign()
    core.step(Message(MT.VOTE_RESPONSE, "b", "d", core.term))
    assert core.role == Role.CANDIDATE


def test_promoted_learner_counts_in_the_majority() -> None:
    """Thesis §4.2.1: once caught up, a learner is promoted to voter and counts from then on."""
    net = _cluster()
    _join(net, "d", ADD_LEARNER)
    net.core("a").propose_conf_change(ConfChange(ADD_VOTER, "d"))
    net.stabilize()
    assert net.core("a").conf_state.voters == ("a", "b", "c", "d")
    assert not net.core("d").is_learner
    net.down.add("c")
    index = net.propose("a", b"x")
    assert net.core("a").commit_index == index  # a, b, d: three of four
    net.down.add("b")
    index = net.propose("a", b"y")
    assert net.core("a").commit_index < index  # a, d: two of four is not a majority


def test_removing_a_follower_shrinks_the_majority() -> None:
    """Thesis §4.1: after removing a server, majorities are counted over the new configuration."""
    net = _cluster("abcde")
    net.core("a").propose_conf_change(ConfChange(REMOVE, "e"))
    net.stabilize()
    net.core("a").propose_conf_change(ConfChange(REMOVE, "d"))
    net.stabilize()
    assert net.core("a").conf_state.voters == ("a", "b", "c")
    net.down.update({"c", "d", "e"})
    index = net.propose("a", b"x")
    assert net.core("a").commit_index == index  # a and b of a, b, c


def test_removed_leader_steps_down_and_others_carry_on() -> None:
    """Thesis §4.2.2: a leader that is removed steps down once the change commits (here it also
    hands over to an up-to-date voter at once), and the remaining servers go on without it."""
    net = _cluster()
    net.core("a").propose_conf_change(ConfChange(REMOVE, "a"))
    net.stabilize()
    assert net.core("a").role == Role.FOLLOWER
    assert net.core("a").conf_state.voters == ("b", "c")
    for _ in range(40):
        if net.leader() in ("b", "c"):
            break
        net.tick_all()
    leader = net.leader()
    assert leader in ("b", "c")
    index = net.propose(leader, b"after")
    assert net.core(leader).commit_index == index
    assert b"after" not in net["a"].applied_data()


def test_removed_node_stops_campaigning() -> None:
    """Thesis §4.2.3: a removed server must not disrupt the cluster: it never campaigns again."""
    net = _cluster()
    net.core("a").propose_conf_change(ConfChange(REMOVE, "c"))
    net.stabilize()
    assert net.core("c").conf_state.voters == ("a", "b")
    net.isolate("c")
    for _ in range(100):
        net.core("c").tick()
    assert net.core("c").role == Role.FOLLOWER and net.core("c").term == 2
    assert not [m for m in net["c"].process_ready() if m.type in (MT.VOTE, MT.PRE_VOTE)]


def test_change_proposed_at_a_follower_is_forwarded() -> None:
    """Thesis §4 with §6.2's forwarding: a follower passes a change on to the leader."""
    net = _cluster()
    assert net.core("b").propose_conf_change(ConfChange(ADD_LEARNER, "d")) == 0
    net.stabilize()
    assert net.core("a").conf_state.learners == ("d",)


@pytest.mark.parametrize(
    "change",
    [
        ConfChange(ADD_VOTER, "b"),
        ConfChange(REMOVE, "zz"),
        ConfChange(ADD_LEARNER, "a"),
    ],
    ids=["already-voter", "not-member", "demote-the-only-other-way"],
)
def test_nonsense_changes_are_refused(change: ConfChange) -> None:
    """Thesis §4.1: each change adds or removes one server; a change that does not apply to the
    current configuration is refused up front."""
    net = _cluster("ab")
    if change.node_id == "a":
        net.core("a").propose_conf_change(ConfChange(REMOVE, "b"))
        net.stabilize()
    with pytest.raises(InvalidArgumentError):
        net.core("a").propose_conf_change(change)


def test_promoted_learner_that_missed_the_commit_can_still_vote() -> None:
    """Thesis §4.2.1 (liveness of promotion): a learner answers vote requests, because it may have
    been promoted without having heard of the commit yet; a candidate that knows the new
    configuration needs its vote."""
    net = _cluster("ab")
    _join(net, "d", ADD_LEARNER)
    a = net["a"]
    a.core.propose_conf_change(ConfChange(ADD_VOTER, "d"))
    rd = a.take_ready()
    [to_d] = [m for m in rd.messages if m.recipient == "d"]
    net.core("d").step(to_d)
    d_ack = net["d"].process_ready()
    net.drop("a", "d", 1.0)  # d never hears that its promotion committed
    net.send(*d_ack, *[m for m in rd.messages if m.recipient == "b"])
    net.tick("a")
    assert net.core("b").conf_state.voters == ("a", "b", "d")
    assert net.core("d").is_learner
    net.down.add("a")
    net.recover()
    net.elect("b")
    assert net.leader() == "b"

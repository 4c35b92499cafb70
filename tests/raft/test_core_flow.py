"""Flow control, batching, probing, proposals and the Ready contract of `RaftCore`.

These go beyond the paper's claims: they pin down etcd-style engineering the design relies on
(pipelining within limits, one APPEND per follower per Ready, the ready/advance rules).
"""

from __future__ import annotations

import pytest

from kvstore.consensus.progress import ProgressState
from kvstore.consensus.types import ConfChange, ConfChangeType, DropReason, Message, MessageType
from kvstore.errors import InvalidArgumentError, InvariantError, ProposalDroppedError

from .helpers import Network, new_peer

MT = MessageType


def _cluster(**options: object) -> Network:
    net = Network(["a", "b", "c"], **options)  # type: ignore[arg-type]
    net.elect("a")
    return net


def _appends_to(msgs: list[Message], node: str) -> list[Message]:
    return [m for m in msgs if m.type == MT.APPEND and m.recipient == node]


def test_pipelining_stops_at_max_inflight_msgs() -> None:
    """A follower that does not answer gets at most max_inflight_msgs APPENDs in flight; the
    leader resumes as acks free the window."""
    net = _cluster(max_inflight_msgs=3)
    net.drop("b", "a", 1.0)
    leader = net["a"]
    sent = []
    for k in range(10):
        leader.core.propose(b"p%d" % k)
        sent += _appends_to(leader.process_ready(), "b")
    assert len(sent) == 3
    assert net.core("a").status().progress["b"].state == ProgressState.REPLICATE
    net.recover()
    net.send(*sent)  # b acks all three: the window opens again
    net.stabilize()
    assert net.core("b").last_index == net.core("a").last_index


def test_pipelining_stops_at_max_inflight_bytes() -> None:
    """Entry bytes in flight per follower are limited too (one message may overshoot)."""
    net = _cluster(max_inflight_bytes=250)
    net.drop("b", "a", 1.0)
    leader = net["a"]
    sent = []
    for _ in range(10):
        leader.core.propose(b"x" * 100)
        sent += _appends_to(leader.process_ready(), "b")
    assert len(sent) == 3
    assert sum(len(e.data) for m in sent for e in m.entries) == 300


def test_batching_many_proposals_share_one_append_per_follower() -> None:
    """Proposals made between two Readys go out together: one APPEND per follower."""
    net = _cluster()
    for k in range(100):
        net.core("a").propose(b"p%d" % k)
    msgs = net["a"].process_ready()
    assert [len(m.entries) for m in _appends_to(msgs, "b")] == [100]
    assert [len(m.entries) for m in _appends_to(msgs, "c")] == [100]


def test_max_append_bytes_splits_messages_but_sends_at_least_one_entry() -> None:
    """An APPEND carries at most max_append_bytes of entry data, but always one entry, however
    large."""
    net = _cluster(max_append_bytes=250)
    net.core("a").propose_many([b"x" * 100] * 5 + [b"y" * 1000])
    msgs = _appends_to(net["a"].process_ready(), "b")
    assert [len(m.entries) for m in msgs] == [2, 2, 1, 1]
    assert all(sum(len(e.data) for e in m.entries) <= 250 for m in msgs[:-1])
    indices = [e.index for m in msgs for e in m.entries]
    assert indices == list(range(indices[0], indices[0] + 6))


def test_probe_sends_one_append_until_answered() -> None:
    """In probe state (after a rejection) the leader sends one APPEND at a time."""
    net = _cluster()
    leader = net.core("a")
    leader.report_unreachable("b")
    assert leader.status().progress["b"].state == ProgressState.PROBE
    net.drop("b", "a", 1.0)
    sent = []
    for k in range(5):
        leader.propose(b"p%d" % k)
        sent += _appends_to(net["a"].process_ready(), "b")
    assert len(sent) == 1
    net.recover()
    net.send(*sent)
    net.stabilize()
    assert leader.status().progress["b"].state == ProgressState.REPLICATE
    assert net.core("b").last_index == leader.last_index


def test_heartbeat_answer_unblocks_a_full_window() -> None:
    """If the acks of a full window were lost, a heartbeat answer lets replication resume."""
    net = _cluster(max_inflight_msgs=2)
    net.drop("b", "a", 1.0)
    for k in range(4):
        net.propose("a", b"p%d" % k)
    net.recover()
    net.tick("a", 2)
    assert net.core("b").last_index == net.core("a").last_index
    assert net.core("b").commit_index == net.core("a").commit_index


def test_lost_appends_are_recovered_after_a_heartbeat() -> None:
    """APPENDs lost in REPLICATE state are resent after the follower's next heartbeat answer."""
    net = _cluster()
    net.drop("a", "b", 1.0)
    net.propose("a", b"lost")
    net.recover()
    net.tick("a")
    assert net["b"].applied_data() == [b"lost"]


def test_max_uncommitted_bytes_refuses_proposals() -> None:
    """A leader that cannot commit refuses proposals beyond max_uncommitted_bytes (but accepts
    the first one whatever its size, so a big entry is not refused forever)."""
    net = _cluster(max_uncommitted_bytes=300)
    net.isolate("a")
    net.core("a").propose(b"x" * 500)
    with pytest.raises(ProposalDroppedError) as info:
        net.core("a").propose(b"y")
    assert info.value.reason == DropReason.UNCOMMITTED and info.value.leader_id == "a"
    net.recover()
    net.tick("a", 2)
    net.core("a").propose(b"y" * 200)


def test_propose_many_assigns_consecutive_indices() -> None:
    """propose_many returns the first index; the batch occupies consecutive indices in order."""
    net = _cluster()
    first = net.core("a").propose_many([b"1", b"2", b"3"])
    net.stabilize()
    net.tick("a")
    assert first == net.core("a").last_index - 2
    assert net["b"].applied_data() == [b"1", b"2", b"3"]
    with pytest.raises(InvalidArgumentError):
        net.core("a").propose_many([])


def test_follower_forwards_proposals_to_the_leader() -> None:
    """A follower forwards proposals (forward_proposals=True) and returns 0."""
    net = _cluster()
    assert net.core("b").propose_many([b"f1", b"f2"]) == 0
    net.stabilize()
    net.tick("a")
    assert net["a"].applied_data() == [b"f1", b"f2"]


def test_follower_without_forwarding_refuses_with_the_leader_hint() -> None:
    """With forward_proposals=False a follower refuses, naming the leader."""
    net = _cluster(forward_proposals=False)
    with pytest.raises(ProposalDroppedError) as info:
        net.core("b").propose(b"x")
    assert (info.value.reason, info.value.leader_id) == (DropReason.NOT_LEADER, "a")


def test_proposal_without_leader_or_at_learner_is_refused() -> None:
    """No leader: refused; a learner never proposes (it is not part of the quorum)."""
    net = Network(["a", "b", "c"])
    with pytest.raises(ProposalDroppedError) as info:
        net.core("a").propose(b"x")
    assert info.value.reason == DropReason.NO_LEADER
    net.elect("a")
    net.peers["d"] = new_peer("d")
    net.core("a").propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
    net.stabilize()
    with pytest.raises(ProposalDroppedError) as info:
        net.core("d").propose(b"x")
    assert info.value.reason == DropReason.LEARNER


def test_forwarded_proposal_refused_by_leader_surfaces_in_dropped() -> None:
    """A forwarded proposal the leader refuses comes back to its sender, which reports it in
    Ready.dropped with the data as context (so the application can match it)."""
    net = _cluster()
    net.down.add("c")
    net.propose("a", b"c-misses-this")
    net.core("a").transfer_leadership("c")
    net.core("b").propose(b"forwarded")
    net.stabilize()
    assert [(d.context, d.reason) for d in net["b"].dropped] == [
        (b"forwarded", DropReason.TRANSFER)
    ]


def test_ready_twice_without_advance_is_a_bug() -> None:
    """The contract: ready() is not called again before advance() of the previous one."""
    net = _cluster()
    core = net.core("a")
    core.propose(b"x")
    rd = core.ready()
    with pytest.raises(InvariantError):
        core.ready()
    core.advance(rd)
    core.propose(b"y")
    other = core.ready()
    with pytest.raises(InvariantError):
        core.advance(rd)
    core.advance(other)


def test_calls_between_ready_and_advance_land_in_the_next_ready() -> None:
    """Between ready() and advance() the application keeps stepping and proposing (group
    commit): nothing is lost and nothing is handed out twice."""
    net = _cluster()
    core = net.core("a")
    first = core.propose(b"one")
    rd = core.ready()
    second = core.propose(b"two")
    core.tick()
    core.has_ready()  # allowed meanwhile; must not disturb rd
    net["a"].handle(rd)
    rd2 = core.ready()
    assert [e.index for e in rd.entries] == [first]
    assert [e.index for e in rd2.entries] == [second]
    net["a"].handle(rd2)
    net.send(*rd.messages, *rd2.messages)
    net.stabilize()
    net.tick("a")
    assert net["a"].applied_data() == [b"one", b"two"]


def test_committed_entries_per_ready_are_limited() -> None:
    """At most max_committed_bytes_per_ready of entries are handed out per Ready (at least one);
    the rest follow in later Readys, in order."""
    peer = new_peer("a", ("a",), max_committed_bytes_per_ready=250)
    peer.core.campaign()
    peer.process_ready()
    peer.core.propose_many([b"x" * 100] * 5 + [b"y" * 300, b"z"])
    batches = []
    while peer.core.has_ready():
        batches.append([e.data for e in peer.take_ready().committed_entries if e.data])
    assert [b for b in batches if b] == [[b"x" * 100] * 2] * 2 + [
        [b"x" * 100],
        [b"y" * 300],
        [b"z"],
    ]


def test_same_seed_same_calls_same_behaviour() -> None:
    """Determinism: the only randomness is the injected rng, so two runs with the same seed and
    the same calls produce the same messages, in the same order."""

    def run(seed: int) -> list[tuple[object, ...]]:
        net = Network(["a", "b", "c", "d", "e"], seed=seed, pre_vote=True, check_quorum=True)
        for step in range(300):
            net.tick_all()
            leader = net.leader()
            if leader is not None and step % 7 == 0:
                net.core(leader).propose(b"s%d" % step)
            if step == 120 and leader is not None:
                net.isolate(leader)
            if step == 200:
                net.recover()
        return [(m.type, m.sender, m.recipient, m.term, m.index, len(m.entries)) for m in net.sent]

    assert run(7) == run(7)
    assert run(7) != run(8)

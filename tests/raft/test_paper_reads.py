"""Read-only queries: Raft paper §8, thesis §6.4 (ReadIndex), §6.4.1 (leases)."""

from __future__ import annotations

from kvstore.consensus.types import (
    DroppedProposal,
    DropReason,
    Message,
    MessageType,
    ReadState,
    Role,
)

from .helpers import Network, new_peer

MT = MessageType


def _cluster(ids: str = "abc", **options: object) -> Network:
    net = Network(list(ids), **options)  # type: ignore[arg-type]
    net.elect(ids[0])
    return net


def test_read_index_is_the_commit_index_confirmed_by_a_quorum() -> None:
    """Thesis §6.4: the leader records its commit index as the read index, confirms it is still
    leader with a round of heartbeats, and then answers with that index."""
    net = _cluster()
    index = net.propose("a", b"x")
    leader = net.core("a")
    leader.read_index(b"r1")
    rd = net["a"].take_ready()
    beats = [m for m in rd.messages if m.type == MT.HEARTBEAT]
    assert sorted(m.recipient for m in beats) == ["b", "c"] and all(m.context for m in beats)
    assert not rd.read_states, "not before a quorum confirmed"
    net.send(*beats)
    assert net["a"].read_states == [ReadState(index, b"r1")]


def test_read_waits_without_a_quorum() -> None:
    """Thesis §6.4: a leader cut off from the majority cannot confirm its leadership, so the
    read is not answered (a newer leader may have committed writes it does not know)."""
    net = _cluster()
    net.isolate("a")
    net.core("a").read_index(b"r1")
    net.stabilize()
    net.tick("a", 5)
    assert net["a"].read_states == []


def test_new_leader_answers_reads_after_committing_in_its_term() -> None:
    """Thesis §6.4 step 1 (and §8): a new leader does not know the latest commit index until it
    commits an entry of its own term (its no-op); reads wait for that."""
    net = _cluster()
    net.ignore(MT.APPEND)
    net.elect("b")
    assert net.leader() == "b"
    net.core("b").read_index(b"r1")
    net.stabilize()
    net.tick("b")
    assert net["b"].read_states == []
    net.recover()
    net.tick("b")
    noop = net.core("b").commit_index
    assert net.core("b").status().term == 3 and net.core("b").last_index == noop
    net.tick("b")
    assert net["b"].read_states == [ReadState(noop, b"r1")]


def test_reads_are_batched_into_one_heartbeat_round() -> None:
    """Thesis §6.4 (batching): all reads queued since the last round share one round of
    heartbeats, one message per follower, and are answered together."""
    net = _cluster()
    leader = net.core("a")
    net.tick("a")  # let a round of ordinary heartbeats go by
    before = len(net.sent)
    for k in range(50):
        leader.read_index(b"r%d" % k)
    net.stabilize()
    beats = [m for m in net.sent[before:] if m.type == MT.HEARTBEAT]
    assert len(beats) == 2
    assert [rs.request_ctx for rs in net["a"].read_states] == [b"r%d" % k for k in range(50)]
    assert {rs.index for rs in net["a"].read_states} == {leader.commit_index}


def test_reads_arriving_during_a_round_go_in_the_next_round() -> None:
    """Thesis §6.4: a read that arrives after a round started needs a round of its own (the
    earlier round's heartbeats may predate it); all such reads share the next round."""
    net = _cluster()
    leader = net.core("a")
    leader.read_index(b"first")
    first_round = [m for m in net["a"].process_ready() if m.type == MT.HEARTBEAT]
    leader.read_index(b"second")
    leader.read_index(b"third")
    assert not [m for m in net["a"].process_ready() if m.type == MT.HEARTBEAT]
    net.send(*first_round)
    ctxs = [rs.request_ctx for rs in net["a"].read_states]
    assert ctxs == [b"first", b"second", b"third"]
    beats = [m for m in net.sent if m.type == MT.HEARTBEAT]
    assert len({m.context for m in beats}) == 2


def test_write_acknowledged_before_a_read_is_visible_to_it() -> None:
    """Thesis §6.4 (linearizability): the read index covers every write committed before the
    read was requested."""
    net = _cluster()
    index = net.propose("a", b"w")
    net.core("a").read_index(b"r")
    net.stabilize()
    [state] = net["a"].read_states
    assert state.index >= index


def test_follower_read_index_goes_through_the_leader() -> None:
    """Thesis §6.4: a follower asks the leader for a read index and serves the read once it has
    applied that far (taking load off the leader)."""
    net = _cluster()
    index = net.propose("a", b"x")
    net.core("b").read_index(b"fr")
    rd = net["b"].take_ready()
    assert [(m.type, m.recipient, m.context) for m in rd.messages] == [(MT.READ_INDEX, "a", b"fr")]
    net.send(*rd.messages)
    assert net["b"].read_states == [ReadState(index, b"fr")]


def test_reads_without_a_leader_are_dropped() -> None:
    """Thesis §6.4: with no known leader a read cannot be served; it is refused at once."""
    peer = new_peer("a", ("a", "b", "c"))
    peer.core.read_index(b"r")
    peer.process_ready()
    assert peer.dropped == [DroppedProposal(b"r", DropReason.NO_LEADER)]


def test_single_voter_answers_at_once() -> None:
    """Thesis §6.4: with a single voter, the leader is its own quorum: no round trip."""
    peer = new_peer("a", ("a",))
    peer.core.campaign()
    peer.process_ready()
    peer.process_ready()
    peer.core.read_index(b"r")
    peer.process_ready()
    assert peer.read_states == [ReadState(peer.core.commit_index, b"r")]


def test_leader_stepping_down_drops_pending_reads() -> None:
    """Thesis §6.4: a leader that loses its role cannot confirm pending reads; they are refused
    (locally) or answered with a rejection (forwarded ones) so callers stop waiting."""
    net = _cluster()
    net.isolate("a")
    net.core("a").read_index(b"local")
    net["a"].core.step(Message(MT.READ_INDEX, "a", "b", context=b"remote"))
    net.stabilize()
    net.recover()
    net.ignore(MT.HEARTBEAT)
    net.core("a").step(Message(MT.APPEND, "a", "c", 9))
    net.stabilize()
    assert net.core("a").role == Role.FOLLOWER
    assert net["a"].dropped == [DroppedProposal(b"local", DropReason.NOT_LEADER)]
    assert [d.context for d in net["b"].dropped] == [b"remote"]


def test_pending_reads_are_limited() -> None:
    """STYLE.md "a limit on every queue": beyond max_pending_reads, reads are refused."""
    net = _cluster(max_pending_reads=3)
    net.isolate("a")
    for k in range(5):
        net.core("a").read_index(b"r%d" % k)
    net.stabilize()
    assert [d.reason for d in net["a"].dropped] == [DropReason.TOO_MANY_READS] * 2


def test_lease_read_is_answered_without_a_round_trip() -> None:
    """Thesis §6.4.1: while its lease holds (a quorum answered within the lease, shorter than the
    election timeout), the leader serves a lease read at once."""
    net = _cluster(check_quorum=True)
    net.tick("a")
    before = len(net.sent)
    net.core("a").read_index(b"lease", lease=True)
    rd = net["a"].take_ready()
    assert rd.read_states == [ReadState(net.core("a").commit_index, b"lease")]
    assert not rd.messages and len(net.sent) == before


def test_lease_read_falls_back_when_the_lease_expired() -> None:
    """Thesis §6.4.1: once the quorum has been silent for the lease length, a lease read falls
    back to ReadIndex (and so waits for a quorum)."""
    net = _cluster(check_quorum=True, election_ticks=10, lease_ticks=4)
    net.tick("a")
    net.isolate("a")
    net.tick("a", 4)
    assert net.core("a").role == Role.LEADER
    net.core("a").read_index(b"lease", lease=True)
    rd = net["a"].take_ready()
    assert not rd.read_states
    assert {m.type for m in rd.messages} == {MT.HEARTBEAT}


def test_lease_read_needs_check_quorum() -> None:
    """Thesis §6.4.1: without check-quorum, followers do not hold back votes for a recently
    heard leader, so there is no lease: a lease read is served by ReadIndex."""
    net = _cluster(check_quorum=False)
    net.tick("a")
    net.core("a").read_index(b"lease", lease=True)
    rd = net["a"].take_ready()
    assert not rd.read_states
    assert {m.type for m in rd.messages} == {MT.HEARTBEAT}
    net.send(*rd.messages)
    assert [rs.request_ctx for rs in net["a"].read_states] == [b"lease"]


def test_no_lease_during_leadership_transfer() -> None:
    """Thesis §6.4.1 with §3.10: a transfer lets another server win an election right away, so
    the old leader's lease no longer protects reads."""
    net = _cluster(check_quorum=True)
    net.tick("a")
    net.down.add("c")
    net.propose("a", b"c-misses-this")
    net.core("a").transfer_leadership("c")
    net.core("a").read_index(b"lease", lease=True)
    rd = net["a"].take_ready()
    assert not rd.read_states


def test_lease_counts_from_when_the_heartbeat_was_sent() -> None:
    """Thesis §6.4.1: the followers' promise not to vote elsewhere runs from when they received
    the heartbeat, so the lease runs from when it was SENT; an answer that arrives late must
    not stretch the lease."""
    net = _cluster(check_quorum=True, election_ticks=10, lease_ticks=4)
    leader = net["a"]
    leader.core.tick()
    beats = [m for m in leader.process_ready() if m.type == MT.HEARTBEAT]
    answers = []
    for m in beats:
        net.core(m.recipient).step(m)
        answers += net[m.recipient].process_ready()
    for _ in range(3):  # three more heartbeat rounds are lost
        leader.core.tick()
        leader.process_ready()
    for m in answers:  # the first round's answers arrive only now
        leader.core.step(m)
    leader.core.read_index(b"fresh", lease=True)
    assert [rs.request_ctx for rs in leader.take_ready().read_states] == [b"fresh"]
    leader.core.tick()  # four ticks after the answered heartbeat was sent: the lease is over
    leader.process_ready()
    leader.core.read_index(b"late", lease=True)
    rd = leader.take_ready()
    assert not rd.read_states
    assert {m.type for m in rd.messages} == {MT.HEARTBEAT}

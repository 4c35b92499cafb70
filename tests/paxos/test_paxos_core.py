"""One claim per test about `PaxosCore`, from Lamport's "Paxos Made Simple" (PMS) and the
Multi-Paxos practice it describes in §3, each in three parts: init, act, check.

The network is the Raft tests' in-memory one (tests/raft/helpers.py): every Ready is persisted
at once and messages are delivered breadth-first until quiet, through drop/cut/isolate filters.
"""

from __future__ import annotations

import random

import pytest

from kvstore.consensus.memory import MemoryLogView
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    DropReason,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Role,
    SnapshotMeta,
)
from kvstore.errors import InvalidArgumentError, ProposalDroppedError
from kvstore.paxos.ballot import next_ballot
from kvstore.paxos.core import PaxosCore
from tests.paxos.helpers import (
    VOTERS3,
    acceptor_storage,
    drain,
    leader_of,
    of_type,
    paxos_config,
    paxos_network,
    paxos_peer,
    restart,
    values,
)
from tests.raft.helpers import Network

MT = MessageType
E = 10  # election_ticks in every test


def ballot_of(node: str, above: int, voters: tuple[str, ...] = VOTERS3) -> int:
    """The next ballot `node` would use above `above`."""
    return next_ballot(above, sorted(voters).index(node), len(voters))


# --- phase 1 and phase 2 (PMS §2.2, §3) ------------------------------------------------------


def test_phase1_runs_once_per_ballot_for_all_future_slots() -> None:
    """PMS §3: the leader runs phase 1 for infinitely many instances at once; afterwards every
    command is chosen with phase 2 alone."""
    net = paxos_network()
    net.elect("a")
    assert net["a"].core.role == Role.LEADER
    prepares = of_type(net.sent, MT.PREPARE)
    assert sorted(m.recipient for m in prepares) == ["b", "c"]
    for k in range(20):
        net.propose("a", b"v%d" % k)
    assert len(of_type(net.sent, MT.PREPARE)) == 2
    for node in VOTERS3:
        assert net[node].applied_data() == [b"v%d" % k for k in range(20)]


def test_phase2_carries_a_batch_of_slots_in_one_message() -> None:
    """Multi-Paxos batching: proposals made between two Readys share one ACCEPT per acceptor,
    and a `propose_many` batch is one phase-2 round."""
    net = paxos_network()
    net.elect("a")
    leader = net["a"].core
    for k in range(10):
        leader.propose(b"single%d" % k)
    before = len(net.sent)
    net.stabilize()
    accepts = [m for m in net.sent[before:] if m.type == MT.ACCEPT and m.entries]
    assert sorted(m.recipient for m in accepts) == ["b", "c"]
    assert all(len(m.entries) == 10 for m in accepts)
    before = len(net.sent)
    net.propose("a", *[b"batch%d" % k for k in range(64)])
    accepts = [m for m in net.sent[before:] if m.type == MT.ACCEPT and m.entries]
    assert [len(m.entries) for m in accepts] == [64, 64]
    assert net["c"].applied_data()[-64:] == [b"batch%d" % k for k in range(64)]


def test_new_leader_proposes_the_highest_ballot_value_of_each_slot() -> None:
    """PMS §2.2 (P2c): a proposer with promises from a majority proposes, for each slot, the
    value of the highest-numbered proposal accepted there, in its own ballot."""
    voters = VOTERS3
    # Everybody promised ballot 5 (owned by c); each accepted different values.
    storages = {
        "a": acceptor_storage(voters, [(4, b"p"), (4, b"q"), (4, b"w")], promised=5),
        "b": acceptor_storage(voters, [(4, b"p"), (5, b"r"), (2, b"t"), (5, b"u")], promised=5),
        "c": acceptor_storage(voters, [(4, b"p"), (3, b"q2")], promised=5),
    }
    peers = {n: paxos_peer(n, storage=storages[n], seed=k) for k, n in enumerate(voters)}
    net = Network(voters, peers=peers)
    net.isolate("a")  # the quorum is {b, c}
    net.elect("c")
    c = net["c"].core
    assert c.role == Role.LEADER
    ballot = c.term
    assert ballot > 5
    # Slot 2: b's ballot 5 beats c's ballot 3; slots 3 and 4 only b has.
    assert values(net["c"]) == [b"p", b"r", b"t", b"u"]
    assert [net["c"].storage.term(i) for i in range(1, 5)] == [ballot] * 4
    net.recover()
    net.tick("c")  # a heartbeat answer resumes the probe lost while a was cut off
    net.propose("c", b"new")
    for node in voters:
        assert net[node].applied_data() == [b"p", b"r", b"t", b"u", b"new"]
    # a's older values at slots 2 and 3 were superseded, not kept beside the new ones.
    assert values(net["a"]) == [b"p", b"r", b"t", b"u", b"new"]


def test_a_value_chosen_in_an_earlier_ballot_survives_the_leader_change() -> None:
    """PMS §2.2 (P2): once a value is chosen (accepted by a majority in one ballot), every
    higher-numbered proposal for that slot has that value, whatever the new proposer held."""
    voters = VOTERS3
    storages = {
        "a": acceptor_storage(voters, [(3, b"chosen")], promised=3),
        "b": acceptor_storage(voters, [(3, b"chosen")], promised=3),
        "c": acceptor_storage(voters, [(2, b"other")], promised=3),
    }
    peers = {n: paxos_peer(n, storage=storages[n], seed=k) for k, n in enumerate(voters)}
    net = Network(voters, peers=peers)
    net.isolate("a")  # c leads with b alone: b carries the chosen value
    net.elect("c")
    assert net["c"].core.role == Role.LEADER
    net.propose("c", b"next")
    assert net["c"].applied_data() == [b"chosen", b"next"]
    assert net["b"].applied_data() == [b"chosen", b"next"]


def test_learned_chosen_values_keep_their_ballot() -> None:
    """A value an acceptor knows to be chosen is final: a new leader learns it as it is
    (commit index and ballot) rather than proposing it again."""
    voters = VOTERS3
    storages = {
        "a": acceptor_storage(voters, [(3, b"x"), (3, b"y")], promised=3, commit=2),
        "b": acceptor_storage(voters, [(3, b"x")], promised=3, commit=0),
        "c": acceptor_storage(voters, [], promised=3),
    }
    peers = {n: paxos_peer(n, storage=storages[n], seed=k) for k, n in enumerate(voters)}
    net = Network(voters, peers=peers)
    net.isolate("b")
    net.elect("c")
    c = net["c"]
    assert c.core.role == Role.LEADER
    assert c.core.commit_index >= 2
    assert [c.storage.term(1), c.storage.term(2)] == [3, 3]
    assert c.applied_data()[:2] == [b"x", b"y"]


# --- proposers and ballots --------------------------------------------------------------------


def test_leader_steps_down_when_a_higher_ballot_is_prepared() -> None:
    """PMS §2.3/§3: a proposer that learns of a higher-numbered proposal abandons its own;
    with check-quorum off, an acceptor promises any higher ballot, the leader included."""
    net = paxos_network()
    net.elect("a")
    low = net["a"].core.term
    net.elect("b")
    assert net["b"].core.role == Role.LEADER
    assert net["a"].core.role == Role.FOLLOWER
    assert net["a"].core.term == net["b"].core.term > low
    assert net["a"].core.leader_id == "b"


def test_leader_steps_down_when_an_acceptor_refuses_its_ballot() -> None:
    """PMS §2.3: an acceptor that promised a higher number tells the proposer, which abandons
    its ballot (here: the leader learns it from a refused ACCEPT)."""
    net = paxos_network()
    net.elect("a")
    low = net["a"].core.term
    high = ballot_of("b", low + 3)
    # c promises b's higher ballot, and b goes quiet (its PREPAREs to others are lost).
    net.isolate("b")
    net["c"].core.step(Message(MT.PREPARE, "c", "b", high))
    net["c"].process_ready()
    assert net["c"].core.term == high
    net.propose("a", b"refused")
    assert net["a"].core.role == Role.FOLLOWER
    assert net["a"].core.term == high
    assert b"refused" not in net["c"].applied_data()


def test_randomized_backoff_is_seeded_and_within_one_election_timeout() -> None:
    """Elections (PMS §3 leaves leader election open): a proposer waits a random number of ticks
    in [E, 2E) before each attempt, drawn from the seeded generator, so dueling proposers
    desynchronise and a run replays exactly from its seed."""

    def gaps(seed: int) -> list[int]:
        peer = paxos_peer("a", VOTERS3, seed=seed, election_ticks=E)
        drain(peer)
        out: list[int] = []
        ticks = 0
        for _ in range(400):
            peer.core.tick()
            ticks += 1
            msgs = [m for rd in drain(peer) for m in rd.persisted_messages]
            if of_type(msgs, MT.PREPARE):
                out.append(ticks)
                ticks = 0
        return out

    for seed in range(5):
        first = gaps(seed)
        assert len(first) >= 10, f"seed {seed}"
        assert all(E <= g < 2 * E for g in first), f"seed {seed}: {first}"
        assert gaps(seed) == first, f"seed {seed}: not deterministic"
        assert len(set(first)) > 1, f"seed {seed}: no randomisation: {first}"
    assert len({tuple(gaps(s)) for s in range(5)}) > 1


def test_ballots_never_repeat_and_always_grow() -> None:
    """PMS §2.2: a proposer never reuses a number; each campaign uses a higher one, owned by
    it, and above every ballot it has seen."""
    net = paxos_network()
    seen = []
    for node in ("a", "b", "c", "a", "c", "b"):
        net.elect(node)
        seen.append(net[node].core.term)
        assert net[node].core.role == Role.LEADER
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    for node, ballot in zip(("a", "b", "c", "a", "c", "b"), seen, strict=True):
        assert VOTERS3[ballot % 3] == node


# --- durability: answer only after persisting (PMS §2.3) --------------------------------------


def test_promise_is_persisted_before_it_is_sent() -> None:
    """PMS §2.3: "an acceptor must remember this information even if it fails and then
    restarts": the promise is in the hard state of the Ready whose persisted_messages carry
    the PROMISE, and never in its send-now messages."""
    acceptor = paxos_peer("b", VOTERS3)
    drain(acceptor)
    ballot = ballot_of("a", 1)
    acceptor.core.step(Message(MT.PREPARE, "b", "a", ballot))
    rd = acceptor.core.ready()
    assert rd.hard_state is not None and rd.hard_state.term == ballot
    assert rd.hard_state.vote == "a" and rd.must_sync
    assert [m.type for m in rd.persisted_messages] == [MT.PROMISE]
    assert not of_type(rd.messages, MT.PROMISE)


def test_acceptance_is_persisted_before_it_is_acknowledged() -> None:
    """PMS §2.3: an accepted value is stable before the acceptor says so: the batch is in the
    Ready's entries and the ACCEPTED is among its persisted_messages."""
    net = paxos_network()
    net.elect("a")
    net["a"].core.propose(b"v")
    accept = [m for m in net["a"].process_ready() if m.type == MT.ACCEPT and m.recipient == "b"]
    assert len(accept) == 1
    follower = net["b"]
    follower.core.step(accept[0])
    rd = follower.core.ready()
    assert [e.data for e in rd.entries] == [b"v"] and rd.must_sync
    assert of_type(rd.persisted_messages, MT.ACCEPTED)
    assert not of_type(rd.messages, MT.ACCEPTED)


def test_a_proposers_ballot_is_durable_before_its_prepares_go_out() -> None:
    """A proposer never reuses a ballot after a crash: PREPAREs leave only once the hard state
    naming the ballot (promised to itself) is persisted."""
    peer = paxos_peer("a", VOTERS3)
    drain(peer)
    peer.core.campaign()
    rd = peer.core.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == "a" and rd.must_sync
    prepares = of_type(rd.persisted_messages, MT.PREPARE)
    assert {m.term for m in prepares} == {rd.hard_state.term}
    assert not of_type(rd.messages, MT.PREPARE)


def test_leaders_own_acceptance_counts_only_once_persisted() -> None:
    """The leader sends ACCEPTs before its own write (they need not wait), but its own
    acceptance counts towards the majority only after `advance()`."""
    net = paxos_network()
    net.elect("a")
    leader = net["a"]
    commit = leader.core.commit_index
    leader.core.propose(b"v")
    rd = leader.core.ready()  # not persisted yet
    to_b = [m for m in rd.messages if m.type == MT.ACCEPT and m.recipient == "b"]
    net.cut("a", "c")
    b_answers = []
    for m in to_b:
        net["b"].core.step(m)
        b_answers.extend(net["b"].process_ready())
    # One acceptor of three is not a majority: the leader's own write is still missing.
    for m in of_type(b_answers, MT.ACCEPTED):
        leader.core.step(m)
    assert leader.core.commit_index == commit
    leader.handle(rd)  # persisted and advanced: now a majority accepted
    assert leader.core.commit_index == commit + 1


def test_restarted_acceptor_keeps_its_promise() -> None:
    """PMS §2.3: a crash never lets an acceptor forget a promise: restarted from its log, it
    refuses lower ballots (PREPARE and ACCEPT) and tells their sender the ballot it promised."""
    net = paxos_network()
    net.elect("a")
    low = net["a"].core.term
    net.elect("c")
    high = net["c"].core.term
    b = restart(net, "b")
    assert b.core.term == high
    assert low < high
    b.core.step(Message(MT.PREPARE, "b", "a", low))
    b.core.step(Message(MT.ACCEPT, "b", "a", low, entries=(Entry(low, 99, EntryType.NORMAL),)))
    out = b.process_ready()
    refusals = [m for m in out if m.reject]
    assert sorted(m.type for m in refusals) == [MT.PROMISE, MT.ACCEPTED]
    assert all(m.term == high for m in refusals)
    assert b.core.term == high


def test_restarted_proposer_uses_a_higher_ballot() -> None:
    """A proposer that crashed after sending PREPAREs never reuses that ballot."""
    net = paxos_network()
    net.elect("a")
    used = net["a"].core.term
    a = restart(net, "a")
    assert a.core.term == used
    net.elect("a")
    assert net["a"].core.term > used


# --- the acceptor's log -----------------------------------------------------------------------


def test_acceptor_keeps_older_values_after_a_batch_up_to_the_recovery_end() -> None:
    """PMS §2.3: an acceptor never forgets an accepted value that may still be chosen. A batch
    that supersedes values in the middle of its log is written with the older values after it
    up to the leader's recovery end; values beyond the recovery end of a lower ballot can never
    be chosen and are dropped."""
    voters = VOTERS3
    olds = [(2, b"o%d" % i) for i in range(1, 7)]
    c = paxos_peer("c", storage=acceptor_storage(voters, olds, promised=2))
    drain(c)
    ballot = ballot_of("a", 2)
    batch = (Entry(ballot, 1, EntryType.NORMAL, b"n1"), Entry(ballot, 2, EntryType.NORMAL, b"n2"))
    c.core.step(Message(MT.ACCEPT, "c", "a", ballot, 0, 0, batch, 0, False, 4))
    rd = c.take_ready()
    assert [(e.index, e.term) for e in rd.entries] == [(1, ballot), (2, ballot), (3, 2), (4, 2)]
    assert values(c) == [b"n1", b"n2", b"o3", b"o4"]
    answer = of_type(rd.persisted_messages, MT.ACCEPTED)
    assert len(answer) == 1 and not answer[0].reject and answer[0].index == 2


def test_acceptor_refuses_a_batch_it_cannot_place_and_hints_where_it_can() -> None:
    """Batches are accepted in slot order (documented rule): one that starts after the end of
    the acceptor's run in this ballot is refused with a hint, and the leader backs off."""
    net = paxos_network()
    net.elect("a")
    net.isolate("c")
    for k in range(5):
        net.propose("a", b"v%d" % k)
    net.recover()
    net.propose("a", b"last")
    hints = [m for m in net.delivered if m.type == MT.ACCEPTED and m.sender == "c" and m.reject]
    assert hints, "c should have refused a batch it could not place"
    assert net["c"].applied_data() == net["a"].applied_data()


# --- reads ------------------------------------------------------------------------------------


def test_read_index_waits_for_a_quorum_round_and_batches_reads() -> None:
    """Linearizable reads (ReadIndex): the leader records its chosen prefix, confirms it still
    leads with one heartbeat round that a majority answers, then answers; reads asked before a
    Ready share one round."""
    net = paxos_network()
    net.elect("a")
    net.propose("a", b"w")
    leader = net["a"]
    commit = leader.core.commit_index
    for k in range(5):
        leader.core.read_index(b"r%d" % k)
    rd = leader.core.ready()
    assert list(rd.read_states) == []
    beats = [m for m in rd.messages if m.type == MT.HEARTBEAT and m.context]
    assert sorted(m.recipient for m in beats) == ["b", "c"]
    assert len({m.context for m in beats}) == 1
    leader.handle(rd)
    net.send(*rd.messages)
    assert [(rs.index, rs.request_ctx) for rs in leader.read_states] == [
        (commit, b"r%d" % k) for k in range(5)
    ]


def test_follower_reads_are_confirmed_by_the_leader() -> None:
    net = paxos_network()
    net.elect("a")
    net.propose("a", b"w")
    net["c"].core.read_index(b"fr")
    net.stabilize()
    assert [(rs.index, rs.request_ctx) for rs in net["c"].read_states] == [
        (net["a"].core.commit_index, b"fr")
    ]


def test_isolated_leader_never_answers_a_read() -> None:
    """A leader cut off from the majority cannot confirm it still leads: its reads are never
    answered, and are dropped when it steps down (check-quorum)."""
    net = paxos_network()
    net.elect("a")
    net.isolate("a")
    net["a"].core.read_index(b"r")
    net.tick("a", 2 * E)
    assert net["a"].read_states == []
    assert net["a"].core.role == Role.FOLLOWER
    assert [d.context for d in net["a"].dropped] == [b"r"]


def test_new_leader_answers_reads_only_once_recovered_slots_are_chosen() -> None:
    """Values of earlier ballots may be chosen up to the recovery end without the new leader
    knowing it; a read index below them could miss an acknowledged write."""
    voters = VOTERS3
    storages = {
        "a": acceptor_storage(voters, [(2, b"x"), (2, b"y")], promised=2),
        "b": acceptor_storage(voters, [(2, b"x"), (2, b"y")], promised=2),
        "c": acceptor_storage(voters, [], promised=2),
    }
    peers = {n: paxos_peer(n, storage=storages[n], seed=k) for k, n in enumerate(voters)}
    net = Network(voters, peers=peers)
    net.ignore(MT.ACCEPT)  # phase 2 cannot finish
    net.elect("c")
    c = net["c"]
    assert c.core.role == Role.LEADER and c.core.recovery_end == 2
    c.core.read_index(b"r")
    net.stabilize()
    net.tick_all(3)
    assert c.read_states == []
    net.recover()
    net.tick_all(2)
    assert [rs.request_ctx for rs in c.read_states] == [b"r"]
    assert c.read_states[0].index >= 2


# --- snapshots and catch-up -------------------------------------------------------------------


def _compact(peer: object, through: int) -> None:
    storage = peer.storage  # type: ignore[attr-defined]
    storage.compact(through)


def test_lagging_acceptor_catches_up_from_a_snapshot() -> None:
    """Learners that fell behind the leader's compaction point catch up from a snapshot, then
    from the log (PMS §3: a learner can learn chosen values from others)."""
    net = paxos_network()
    net.elect("a")
    net.isolate("c")
    for k in range(10):
        net.propose("a", b"v%d" % k)
    leader = net["a"]
    _compact(leader, leader.core.commit_index)
    net.recover()
    net.propose("a", b"after")
    c = net["c"]
    assert len(c.snapshots) == 1
    assert c.snapshots[0].index >= 10
    assert c.core.commit_index == leader.core.commit_index
    assert c.applied_data()[-1] == b"after"
    assert values(c)[-1] == b"after"


def test_acceptor_refuses_a_snapshot_that_would_drop_values_it_may_need() -> None:
    """Installing a snapshot resets the log; an acceptor holding values after the snapshot
    point that may still be chosen (up to the leader's recovery end) refuses it rather than risk
    losing them in a crash between the reset and a re-append."""
    voters = VOTERS3
    ballot = ballot_of("a", 3)
    meta = SnapshotMeta(3, 2, ConfState(voters, ()))
    olds = [(2, b"o%d" % i) for i in range(1, 6)]

    def offer(recovery_end: int) -> tuple[object, list[Message]]:
        c = paxos_peer("c", storage=acceptor_storage(voters, olds, promised=2))
        drain(c)
        c.core.step(Message(MT.SNAPSHOT, "c", "a", ballot, reject_hint=recovery_end, snapshot=meta))
        rd = c.take_ready()
        return rd.snapshot, list(rd.persisted_messages)

    snap, answers = offer(recovery_end=5)
    assert snap is None
    assert [(m.reject, m.snapshot) for m in answers] == [(True, meta)]
    # Values after the recovery end of a lower ballot can never be chosen: install.
    snap, answers = offer(recovery_end=3)
    assert snap == meta
    assert [(m.reject, m.index) for m in answers] == [(False, 3)]


def test_lagging_proposer_gives_up_its_ballot_and_is_caught_up() -> None:
    """A proposer whose quorum knows chosen values that none of the promises carries (they are
    compacted) cannot lead; it keeps what it learned and a caught-up proposer takes over."""
    net = paxos_network()
    net.elect("a")
    net.isolate("c")
    for k in range(10):
        net.propose("a", b"v%d" % k)
    for node in ("a", "b"):
        _compact(net[node], net[node].core.commit_index)
    net.recover()
    net.isolate("a")
    net.elect("c")  # its quorum is {b, c}: b compacted what c lacks
    assert net["c"].core.role == Role.FOLLOWER and net["c"].core.leader_id is None
    net.recover()
    net.elect("b")
    net.propose("b", b"after")
    assert net["c"].core.commit_index == net["b"].core.commit_index
    assert net["c"].applied_data()[-1] == b"after"


# --- membership, transfer, liveness -----------------------------------------------------------


def test_membership_changes_are_refused() -> None:
    """The Paxos core runs a fixed configuration (documented limit)."""
    net = paxos_network()
    net.elect("a")
    for node in VOTERS3:
        with pytest.raises(ProposalDroppedError) as info:
            net[node].core.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, "d"))
        assert info.value.reason == DropReason.MEMBERSHIP_FIXED
    assert net["a"].core.conf_state.voters == VOTERS3


def test_leadership_transfer() -> None:
    """The leader refuses proposals during a transfer and the target starts phase 1 at once,
    even with check-quorum (its PREPAREs bypass the acceptors' lease)."""
    net = paxos_network(check_quorum=True, pre_vote=True)
    net.elect("a")
    assert leader_of(net) == "a"
    net["a"].core.transfer_leadership("c")
    with pytest.raises(ProposalDroppedError) as info:
        net["a"].core.propose(b"x")
    assert info.value.reason == DropReason.TRANSFER
    net.stabilize()
    assert leader_of(net) == "c"
    net.propose("c", b"y")
    assert net["a"].applied_data() == [b"y"]
    with pytest.raises(InvalidArgumentError):
        net["c"].core.transfer_leadership("zz")


def test_isolated_leader_steps_down_after_an_election_timeout() -> None:
    """A leader that has not heard from a quorum within an election timeout steps down (the
    quorum is checked every election timeout; members count as heard from when it starts)."""
    net = paxos_network()
    net.elect("a")
    net.isolate("a")
    net.tick("a", E)
    assert net["a"].core.role == Role.LEADER
    net.tick("a", E)
    assert net["a"].core.role == Role.FOLLOWER


def test_pre_prepare_keeps_a_partitioned_node_from_deposing_the_leader() -> None:
    """`pre_vote` in Paxos: a non-binding PRE_PREPARE round first, which acceptors that heard
    from a leader recently refuse, so a node cut off and back does not raise everybody's
    promised ballot."""
    net = paxos_network(check_quorum=True, pre_vote=True)
    net.elect("a")
    ballot = net["a"].core.term
    net.isolate("c")
    net.tick("c", 5 * E)
    assert net["c"].core.term == ballot  # it never promised itself a ballot
    net.recover()
    net.tick("c", 3 * E)
    assert leader_of(net) == "a" and net["a"].core.term == ballot


def test_messages_with_a_ballot_the_sender_does_not_own_are_ignored() -> None:
    peer = paxos_peer("b", VOTERS3)
    drain(peer)
    not_cs = ballot_of("a", 5)
    peer.core.step(Message(MT.PREPARE, "b", "c", not_cs))
    assert not peer.core.has_ready() or not peer.take_ready().persisted_messages
    assert peer.core.term == 1 and peer.core.ignored_messages == 1


def test_election_happens_by_itself_and_the_cluster_makes_progress() -> None:
    net = paxos_network(check_quorum=True, pre_vote=True, seed=4)
    net.tick_all(3 * E)
    leader = leader_of(net)
    net.propose(leader, b"hello")
    for node in VOTERS3:
        assert net[node].applied_data() == [b"hello"]


def test_same_seed_same_run() -> None:
    """The core is deterministic: the same seed, the same faults and the same calls give the
    same messages, in the same order."""

    def trace(seed: int) -> list[Message]:
        net = paxos_network(seed=seed, check_quorum=True, pre_vote=True)
        rng = random.Random(seed)
        net.drop("a", "b", 0.3)
        net.drop("c", "a", 0.2)
        for _ in range(60):
            node = rng.choice(VOTERS3)
            net.tick(node)
            if rng.random() < 0.3:
                try:
                    net[node].core.propose(b"%d" % rng.randrange(1000))
                except ProposalDroppedError:
                    pass
        return net.delivered

    for seed in (1, 2):
        first = trace(seed)
        assert len(first) > 50, f"seed {seed}"
        assert trace(seed) == first, f"seed {seed}"
    assert trace(1) != trace(2)


def test_restart_keeps_the_chosen_prefix_and_replays_from_applied() -> None:
    """Restarted with `Config.applied`, a member hands out chosen values again from there."""
    net = paxos_network()
    net.elect("a")
    for k in range(4):
        net.propose("a", b"v%d" % k)
    storage = net["b"].storage
    assert isinstance(storage, MemoryLogView)
    applied = storage.hard_state.commit - 2
    core = PaxosCore(paxos_config("b", (), applied=applied), storage, random.Random(1))
    rd = core.ready()
    assert [e.index for e in rd.committed_entries] == [applied + 1, applied + 2]
    assert core.commit_index == storage.hard_state.commit
    assert storage.hard_state == HardState(net["a"].core.term, "a", core.commit_index)

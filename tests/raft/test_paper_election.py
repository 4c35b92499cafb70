"""Leader election: Raft paper §5.1, §5.2, §5.4.1; thesis §9.6 (pre-vote), §6.2 (check-quorum).

Each test is init / act / check, one claim per test, in the style of etcd's raft_paper_test.go.
"""

from __future__ import annotations

import random

import pytest

from kvstore.consensus.config import Config
from kvstore.consensus.memory import MemoryLogView
from kvstore.consensus.types import Message, MessageType, Role
from kvstore.raft.core import RaftCore

from .helpers import Network, new_peer, peer_with_log

MT = MessageType


def test_nodes_start_as_followers() -> None:
    """§5.2: "When servers start up, they begin as followers." A brand-new cluster starts at
    term 1 with the bootstrap configuration committed and no leader."""
    peer = new_peer("a", ("a", "b", "c"))
    core = peer.core
    assert core.role == Role.FOLLOWER
    assert core.leader_id is None
    assert core.term == 1
    assert core.conf_state.voters == ("a", "b", "c")
    peer.process_ready()
    assert core.commit_index == 3 and len(peer.applied) == 3


def test_follower_campaigns_after_election_timeout() -> None:
    """§5.2: a follower that hears nothing for an election timeout increments its term, votes for
    itself and asks every other server for its vote, sending its last log index and term."""
    peer = new_peer("a", ("a", "b", "c"))
    peer.process_ready()
    for _ in range(2 * 10):
        peer.core.tick()
    core = peer.core
    assert core.role == Role.CANDIDATE
    assert core.term == 2
    rd = core.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == "a" and rd.must_sync
    votes = [m for m in rd.persisted_messages if m.type == MT.VOTE]
    assert sorted(m.recipient for m in votes) == ["b", "c"]
    assert all((m.term, m.index, m.log_term) == (2, 3, 1) for m in votes)
    assert not [m for m in rd.messages if m.type == MT.VOTE], "votes must wait for persistence"


def test_follower_does_not_campaign_before_timeout() -> None:
    """§5.2: a follower stays a follower as long as it hears from a leader."""
    net = Network(["a", "b", "c"])
    net.elect("a")
    for _ in range(50):
        net.tick("a")
        net.peers["b"].core.tick()
        net.stabilize()
    assert net.core("b").role == Role.FOLLOWER
    assert net.core("a").role == Role.LEADER and net.core("a").term == 2


@pytest.mark.parametrize(
    ("size", "grants", "rejects", "expected"),
    [
        (1, (), (), Role.LEADER),
        (3, ("b",), (), Role.LEADER),
        (3, ("b", "c"), (), Role.LEADER),
        (3, (), (), Role.CANDIDATE),
        (3, (), ("b",), Role.CANDIDATE),
        (3, (), ("b", "c"), Role.FOLLOWER),
        (5, ("b", "c"), (), Role.LEADER),
        (5, ("b",), (), Role.CANDIDATE),
        (5, ("b",), ("c", "d"), Role.CANDIDATE),
        (5, (), ("c", "d", "e"), Role.FOLLOWER),
    ],
)
def test_candidate_needs_a_majority(
    size: int, grants: tuple[str, ...], rejects: tuple[str, ...], expected: Role
) -> None:
    """§5.2: a candidate wins once a majority of the full cluster votes for it, and gives up once
    a majority refuses; otherwise it keeps waiting."""
    voters = "abcde"[:size]
    peer = new_peer("a", voters)
    peer.process_ready()
    peer.core.campaign()
    for voter in grants:
        peer.core.step(Message(MT.VOTE_RESPONSE, "a", voter, 2))
    for voter in rejects:
        peer.core.step(Message(MT.VOTE_RESPONSE, "a", voter, 2, reject=True))
    assert peer.core.role == expected


def test_votes_from_one_voter_count_once() -> None:
    """§5.2: each server casts one vote; a duplicated grant must not count twice."""
    peer = new_peer("a", "abcde")
    peer.process_ready()
    peer.core.campaign()
    for _ in range(3):
        peer.core.step(Message(MT.VOTE_RESPONSE, "a", "b", 2))
    assert peer.core.role == Role.CANDIDATE


def test_split_vote_leads_to_a_new_election() -> None:
    """§5.2: with no winner, the candidate times out and starts a new election, in a new term."""
    peer = new_peer("a", ("a", "b", "c"))
    peer.process_ready()
    peer.core.campaign()
    peer.core.step(Message(MT.VOTE_RESPONSE, "a", "b", 2, reject=True))
    assert peer.core.role == Role.CANDIDATE and peer.core.term == 2
    for _ in range(2 * 10):
        peer.core.tick()
    assert peer.core.role == Role.CANDIDATE and peer.core.term == 3


def test_election_timeouts_are_randomized_by_the_injected_rng() -> None:
    """§5.2: timeouts are random in [T, 2T) so split votes are rare; the randomness comes only
    from the rng given to the core, so a seed replays the same timeouts."""

    def ticks_to_campaign(seed: int) -> int:
        core = RaftCore(
            Config("a", ("a", "b", "c"), pre_vote=False), MemoryLogView(), random.Random(seed)
        )
        for n in range(1, 100):
            core.tick()
            if core.role == Role.CANDIDATE:
                return n
        raise AssertionError("never campaigned")

    seen = [ticks_to_campaign(seed) for seed in range(40)]
    assert all(10 <= n < 20 for n in seen)
    assert len(set(seen)) >= 5
    assert seen == [ticks_to_campaign(seed) for seed in range(40)]


def test_vote_once_per_term() -> None:
    """§5.2: each server votes for at most one candidate in a term, first come first served (and
    repeats its vote to the same candidate, whose request may have been retried)."""
    peer = new_peer("c", ("a", "b", "c"))
    peer.process_ready()
    core = peer.core
    core.step(Message(MT.VOTE, "c", "a", 2, 1, 3))
    core.step(Message(MT.VOTE, "c", "b", 2, 1, 3))
    core.step(Message(MT.VOTE, "c", "a", 2, 1, 3))
    answers = [(m.recipient, m.reject) for m in peer.process_ready() if m.type == MT.VOTE_RESPONSE]
    assert answers == [("a", False), ("b", True), ("a", False)]
    assert peer.storage.hard_state.vote == "a"


def test_candidate_steps_down_for_a_leader_of_its_term() -> None:
    """§5.2: a candidate that receives an APPEND from a leader of the same term steps down."""
    peer = new_peer("a", ("a", "b", "c"))
    peer.process_ready()
    peer.core.campaign()
    peer.core.step(Message(MT.APPEND, "a", "b", 2, 1, 3, (), 3))
    assert peer.core.role == Role.FOLLOWER
    assert peer.core.leader_id == "b" and peer.core.term == 2


def test_candidate_ignores_append_from_an_older_term() -> None:
    """§5.2: an APPEND from an older term is rejected and the candidate continues."""
    peer = new_peer("a", ("a", "b", "c"))
    peer.process_ready()
    peer.core.campaign()
    peer.core.campaign()
    assert peer.core.term == 3
    peer.process_ready()
    peer.core.step(Message(MT.APPEND, "a", "b", 2, 1, 3, (), 3))
    assert peer.core.role == Role.CANDIDATE
    replies = [m for m in peer.process_ready() if m.recipient == "b"]
    assert [(m.type, m.term) for m in replies] == [(MT.APPEND_RESPONSE, 3)]


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
def test_higher_term_turns_any_role_into_follower(role: Role) -> None:
    """§5.1: "If a server discovers that its term is out of date, it immediately reverts to
    follower state" and adopts the newer term."""
    net = Network(["a", "b", "c"])
    if role == Role.LEADER:
        net.elect("a")
    elif role == Role.CANDIDATE:
        net.core("a").campaign()
        net["a"].process_ready()
    assert net.core("a").role == role
    net.core("a").step(Message(MT.APPEND, "a", "c", 9, 0, 0))
    assert net.core("a").role == Role.FOLLOWER
    assert net.core("a").term == 9 and net.core("a").leader_id == "c"


def test_stale_requests_are_answered_with_the_newer_term() -> None:
    """§5.1: a request with a stale term is rejected, and the reply carries the current term so
    the stale sender updates itself."""
    peer = peer_with_log("a", "abc", [1, 1], term=5)
    peer.core.step(Message(MT.APPEND, "a", "b", 3, 1, 2, (), 2))
    peer.core.step(Message(MT.VOTE, "a", "c", 4, 9, 9))
    replies = {m.type: m for m in peer.process_ready()}
    assert replies[MT.APPEND_RESPONSE].term == 5
    assert replies[MT.VOTE_RESPONSE].term == 5 and replies[MT.VOTE_RESPONSE].reject
    assert peer.core.term == 5 and peer.storage.hard_state.vote is None


@pytest.mark.parametrize(
    ("cand_index", "cand_term", "granted"),
    [
        (2, 2, True),  # same last entry
        (3, 2, True),  # same last term, longer
        (1, 3, True),  # higher last term wins even when shorter
        (1, 2, False),  # same last term, shorter
        (5, 1, False),  # lower last term loses even when longer
    ],
)
def test_election_restriction(cand_index: int, cand_term: int, granted: bool) -> None:
    """§5.4.1: a voter denies its vote if its own log is more up to date than the candidate's
    (compare last terms; if equal, the longer log is more up to date)."""
    peer = peer_with_log("a", "abc", [1, 2], term=2)
    peer.core.step(Message(MT.VOTE, "a", "b", 3, cand_term, cand_index))
    [reply] = [m for m in peer.process_ready() if m.type == MT.VOTE_RESPONSE]
    assert reply.reject is not granted


def test_leader_sends_heartbeats() -> None:
    """§5.2: leaders send periodic heartbeats (empty AppendEntries) to keep their authority."""
    net = Network(["a", "b", "c"], heartbeat_ticks=2)
    net.elect("a")
    core = net.core("a")
    core.tick()
    assert not [m for m in net["a"].process_ready() if m.type == MT.HEARTBEAT]
    core.tick()
    beats = [m for m in net["a"].process_ready() if m.type == MT.HEARTBEAT]
    assert sorted(m.recipient for m in beats) == ["b", "c"]
    assert all(m.term == core.term and m.commit == core.commit_index for m in beats)


@pytest.mark.parametrize(("size", "down", "elected"), [(3, 1, True), (3, 2, False), (5, 2, True)])
def test_leader_needs_live_majority(size: int, down: int, elected: bool) -> None:
    """§5.2: a leader is elected while a majority is up, and never without one."""
    ids = list("abcde"[:size])
    net = Network(ids)
    for node in ids[-down:]:
        net.down.add(node)
    net.elect("a")
    assert (net.leader() == "a") is elected


def test_elections_eventually_succeed_through_ticks() -> None:
    """§5.2: with randomized timeouts, ticking alone elects a leader and everybody follows it."""
    for seed in range(5):
        net = Network(["a", "b", "c", "d", "e"], seed=seed)
        for _ in range(60):
            net.tick_all()
            if net.leader() is not None:
                break
        leader = net.leader()
        assert leader is not None, f"seed {seed}"
        net.tick_all(2)
        assert all(p.core.leader_id == leader for p in net.peers.values()), f"seed {seed}"


# --- pre-vote (thesis §9.6) -------------------------------------------------------------------


def _partitioned_rejoin(pre_vote: bool, check_quorum: bool) -> Network:
    net = Network(["a", "b", "c"], pre_vote=pre_vote, check_quorum=check_quorum)
    net.elect("a")
    net.propose("a", b"x")
    net.isolate("c")
    for _ in range(60):
        net.tick("c")
    net.propose("a", b"y")  # c's log is now stale as well
    net.recover()
    net.tick_all(3)
    return net


def test_prevote_keeps_partitioned_node_from_raising_terms() -> None:
    """Thesis §9.6: a node cut off from the cluster keeps failing its pre-vote, so its term does
    not grow, and when it rejoins it does not disrupt the leader."""
    net = Network(["a", "b", "c"], pre_vote=True)
    net.elect("a")
    net.isolate("c")
    for _ in range(60):
        net.tick("c")
    assert net.core("c").term == 2
    assert net.core("c").role == Role.PRE_CANDIDATE
    net.recover()
    net.tick_all(3)
    assert net.leader() == "a" and net.core("a").term == 2
    assert net.core("c").role == Role.FOLLOWER and net.core("c").leader_id == "a"


def test_prevote_stale_log_rejoin_cannot_depose_leader() -> None:
    """Thesis §9.6: with pre-vote, a rejoining node with a stale log cannot win a pre-vote, so
    the healthy leader stays in place (same term)."""
    net = _partitioned_rejoin(pre_vote=True, check_quorum=False)
    assert net.leader() == "a" and net.core("a").term == 2
    assert net["c"].applied_data() == [b"x", b"y"]


def test_without_prevote_rejoining_node_disrupts() -> None:
    """Thesis §9.6 (the problem pre-vote solves): without pre-vote the rejoining node's higher
    term forces an election, so the term jumps."""
    net = _partitioned_rejoin(pre_vote=False, check_quorum=False)
    assert max(p.core.term for p in net.peers.values()) > 2


def test_prevote_does_not_change_voter_state() -> None:
    """Thesis §9.6: granting a pre-vote changes neither the voter's term nor its vote."""
    peer = peer_with_log("b", "abc", [1], term=1, pre_vote=True)
    peer.core.step(Message(MT.PRE_VOTE, "b", "a", 2, 1, 1))
    [reply] = peer.process_ready()
    assert reply.type == MT.PRE_VOTE_RESPONSE and not reply.reject and reply.term == 2
    assert peer.core.term == 1 and peer.storage.hard_state.vote is None


def test_prevote_then_real_vote_elects() -> None:
    """Thesis §9.6: a pre-candidate that wins the pre-vote runs a real election in term + 1."""
    net = Network(["a", "b", "c"], pre_vote=True)
    net.elect("a")
    assert net.leader() == "a" and net.core("a").term == 2
    kinds = [m.type for m in net.delivered]
    assert kinds.index(MT.PRE_VOTE) < kinds.index(MT.VOTE)


# --- check-quorum (thesis §6.2) -----------------------------------------------------------------


def test_check_quorum_leader_steps_down_without_quorum() -> None:
    """Thesis §6.2: a leader that does not hear from a majority within an election timeout steps
    down, so clients stop waiting on it."""
    net = Network(["a", "b", "c"], check_quorum=True)
    net.elect("a")
    net.isolate("a")
    net.tick("a", 10)
    assert net.core("a").role == Role.LEADER
    net.tick("a", 10)
    assert net.core("a").role == Role.FOLLOWER


def test_check_quorum_leader_with_quorum_stays() -> None:
    """Thesis §6.2: a leader that keeps hearing from a majority stays leader indefinitely."""
    net = Network(["a", "b", "c"], check_quorum=True)
    net.elect("a")
    net.down.add("c")
    net.tick("a", 100)
    assert net.core("a").role == Role.LEADER and net.core("a").term == 2


def test_check_quorum_follower_ignores_disruptive_votes() -> None:
    """Thesis §4.2.3: a server that heard from a current leader within the minimum election
    timeout ignores vote requests, even of a higher term: no term change, no reply."""
    net = Network(["a", "b", "c"], check_quorum=True)
    net.elect("a")
    core = net.core("b")
    core.step(Message(MT.VOTE, "b", "c", 7, 2, 100))
    assert core.term == 2 and core.leader_id == "a"
    assert not [m for m in net["b"].process_ready() if m.type == MT.VOTE_RESPONSE]


def test_check_quorum_follower_votes_after_leader_silence() -> None:
    """Thesis §4.2.3: once the election timeout has passed without the leader, votes count."""
    net = Network(["a", "b", "c"], check_quorum=True)
    net.elect("a")
    net.down.add("a")
    for _ in range(10):
        net.core("b").tick()
    net.core("b").step(Message(MT.VOTE, "b", "c", 7, 2, 100))
    [reply] = [m for m in net["b"].process_ready() if m.type == MT.VOTE_RESPONSE]
    assert not reply.reject and net.core("b").term == 7

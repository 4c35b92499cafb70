"""`kvstore.consensus`: the Protocol both cores satisfy, and the factory the node calls.

The same scenario runs through the Protocol for both protocols (parametrised, not copied):
elect, propose through a follower, read, survive a leader change.
"""

from __future__ import annotations

import random

import pytest

from kvstore.consensus import CONSENSUS_KINDS, ConsensusCore, make_core
from kvstore.consensus.config import Config
from kvstore.consensus.memory import MemoryLogView
from kvstore.consensus.types import ConfChange, ConfChangeType, Role
from kvstore.errors import InvalidArgumentError, ProposalDroppedError
from kvstore.paxos.core import PaxosCore
from kvstore.raft.core import RaftCore
from tests.raft.helpers import Network, Peer

VOTERS = ("n1", "n2", "n3")


def _network(kind: str, seed: int = 0) -> Network:
    peers = {}
    for k, node in enumerate(VOTERS):
        storage = MemoryLogView()
        config = Config(node_id=node, initial_voters=VOTERS, pre_vote=True, check_quorum=True)
        core = make_core(kind, config, storage, random.Random(seed * 10 + k))
        peers[node] = Peer(core, storage)  # type: ignore[arg-type]
    return Network(VOTERS, seed=seed, peers=peers)


def test_make_core_builds_each_kind() -> None:
    config = Config(node_id="n1", initial_voters=VOTERS)
    built = {
        kind: make_core(kind, config, MemoryLogView(), random.Random(0)) for kind in CONSENSUS_KINDS
    }
    assert isinstance(built["raft"], RaftCore)
    assert isinstance(built["paxos"], PaxosCore)
    for core in built.values():
        assert isinstance(core, ConsensusCore)


def test_make_core_refuses_an_unknown_kind() -> None:
    with pytest.raises(InvalidArgumentError, match="raft, paxos"):
        make_core("zab", Config(node_id="n1"), MemoryLogView(), random.Random(0))


def test_a_core_missing_a_method_is_not_a_consensus_core() -> None:
    """The runtime check is not vacuous: an object lacking part of the surface fails it."""

    class Partial:
        def tick(self) -> None: ...

    assert not isinstance(Partial(), ConsensusCore)


@pytest.mark.parametrize("kind", CONSENSUS_KINDS)
def test_the_same_scenario_through_the_protocol(kind: str) -> None:
    net = _network(kind, seed=3)
    net.tick_all(30)
    leader = net.leader()
    assert leader is not None
    follower = next(n for n in VOTERS if n != leader)
    core: ConsensusCore = net[follower].core
    assert core.propose(b"via-follower") == 0  # forwarded
    net.stabilize()
    net.propose(leader, b"a", b"b")
    for node in VOTERS:
        assert net[node].applied_data() == [b"via-follower", b"a", b"b"]
    core.read_index(b"read-1")
    net.stabilize()
    assert [rs.request_ctx for rs in net[follower].read_states] == [b"read-1"]
    assert net[follower].read_states[0].index == net[leader].core.commit_index
    status = net[leader].core.status()
    assert status.role == Role.LEADER and status.leader_id == leader
    assert set(status.progress) == set(VOTERS)
    # Leader change: everything chosen stays chosen.
    net.isolate(leader)
    for _ in range(60):
        net.tick_all(1)
        if net.leader() not in (None, leader) and net[net.leader()].core.term > status.term:
            break
    new = net.leader()
    assert new is not None and new != leader
    net.propose(new, b"c")
    assert net[new].applied_data() == [b"via-follower", b"a", b"b", b"c"]


def test_membership_changes_only_with_raft() -> None:
    change = ConfChange(ConfChangeType.ADD_LEARNER, "n4")
    for kind in CONSENSUS_KINDS:
        net = _network(kind)
        net.elect("n1")
        core: ConsensusCore = net["n1"].core
        if kind == "raft":
            assert core.propose_conf_change(change) > 0
        else:
            with pytest.raises(ProposalDroppedError, match="not supported with consensus=paxos"):
                core.propose_conf_change(change)

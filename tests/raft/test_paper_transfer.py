"""Leadership transfer: thesis §3.10."""

from __future__ import annotations

import pytest

from kvstore.consensus.types import DropReason, MessageType, Role
from kvstore.errors import InvalidArgumentError, ProposalDroppedError

from .helpers import Network

MT = MessageType


def _cluster(**options: object) -> Network:
    net = Network(["a", "b", "c"], **options)  # type: ignore[arg-type]
    net.elect("a")
    net.propose("a", b"x")
    return net


def test_transfer_to_up_to_date_follower() -> None:
    """Thesis §3.10: the leader sends TIMEOUT_NOW to a caught-up target, which starts an election
    at once (without waiting for its timeout) and wins it in the next term."""
    net = _cluster()
    net.core("a").transfer_leadership("b")
    rd = net["a"].take_ready()
    assert [(m.type, m.recipient) for m in rd.messages] == [(MT.TIMEOUT_NOW, "b")]
    net.send(*rd.messages)
    assert net.leader() == "b" and net.core("b").term == 3
    assert net.core("a").role == Role.FOLLOWER and net.core("a").leader_id == "b"
    index = net.propose("b", b"y")
    assert net.core("a").commit_index == index


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    """Thesis §3.10 step 1: the leader first brings the target's log up to date, and sends
    TIMEOUT_NOW only then."""
    net = _cluster()
    net.down.add("c")
    for k in range(5):
        net.propose("a", b"while-c-was-down-%d" % k)
    net.down.clear()
    net.core("a").transfer_leadership("c")
    net.stabilize()
    kinds = [(m.type, m.recipient) for m in net.delivered]
    timeout_at = kinds.index((MT.TIMEOUT_NOW, "c"))
    last_append_to_c = max(i for i, k in enumerate(kinds) if k == (MT.APPEND, "c"))
    assert last_append_to_c < timeout_at
    assert net.leader() == "c"
    assert net["c"].applied_data()[-1] == b"while-c-was-down-4"


def test_proposals_are_dropped_during_transfer() -> None:
    """Thesis §3.10 step 1: the leader stops accepting client requests during the transfer, so
    the target can catch up; the reason says so."""
    net = _cluster()
    net.down.add("c")
    net.propose("a", b"c-misses-this")
    net.core("a").transfer_leadership("c")
    with pytest.raises(ProposalDroppedError) as info:
        net.core("a").propose(b"refused")
    assert info.value.reason == DropReason.TRANSFER


def test_transfer_is_abandoned_after_an_election_timeout() -> None:
    """Thesis §3.10: if the transfer does not complete within an election timeout, the leader
    aborts it and accepts client requests again."""
    net = _cluster()
    net.down.add("c")
    net.propose("a", b"c-misses-this")
    net.core("a").transfer_leadership("c")
    net.tick("a", 9)
    with pytest.raises(ProposalDroppedError):
        net.core("a").propose(b"refused")
    net.tick("a", 1)
    assert net.core("a").status().transferee is None
    assert net.propose("a", b"accepted") > 0
    assert net.leader() == "a"


def test_transfer_overrides_the_lease_of_voters() -> None:
    """Thesis §3.10 and §4.2.3: votes caused by a transfer are not ignored by servers that heard
    from the leader recently (that check exists to stop disruptive servers, not transfers)."""
    net = _cluster(check_quorum=True, pre_vote=True)
    net.core("a").transfer_leadership("c")
    net.stabilize()
    assert net.leader() == "c" and net.core("c").term == 3


def test_transfer_requested_at_a_follower_reaches_the_leader() -> None:
    """Thesis §3.10: any server may ask; a follower passes the request to the leader."""
    net = _cluster()
    net.core("b").transfer_leadership("c")
    net.stabilize()
    assert net.leader() == "c"


def test_transfer_to_self_or_non_voter() -> None:
    """Thesis §3.10: the target must be another voter; asking the leader itself does nothing."""
    net = _cluster()
    net.core("a").transfer_leadership("a")
    net.stabilize()
    assert net.leader() == "a" and net.core("a").term == 2
    with pytest.raises(InvalidArgumentError):
        net.core("a").transfer_leadership("zz")

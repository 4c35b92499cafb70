"""Ballot arithmetic and the phase-1 merge ("Paxos Made Simple" §2.2), as pure functions."""

from __future__ import annotations

import random

import pytest

from kvstore.consensus.types import Entry, EntryType
from kvstore.paxos.ballot import BOOTSTRAP_BALLOT, next_ballot, owner
from kvstore.paxos.recovery import Promise, recover

VOTERS = ("a", "b", "c")


def test_ballots_are_disjoint_per_proposer_and_increasing() -> None:
    """PMS §2.2: "different proposers choose their numbers from disjoint sets of numbers", and a
    proposer always picks a number higher than any it has seen."""
    seed = 7
    rng = random.Random(seed)
    seen: dict[int, str] = {}
    for _ in range(500):
        rank = rng.randrange(len(VOTERS))
        above = rng.randrange(0, 1000)
        b = next_ballot(above, rank, len(VOTERS))
        assert b > above and b > BOOTSTRAP_BALLOT, f"seed {seed}"
        assert b - above <= len(VOTERS), f"seed {seed}: skipped a whole round"
        assert owner(b, VOTERS) == VOTERS[rank], f"seed {seed}"
        assert seen.setdefault(b, VOTERS[rank]) == VOTERS[rank], f"seed {seed}"


def test_single_voter_takes_every_ballot() -> None:
    assert [next_ballot(x, 0, 1) for x in range(0, 4)] == [2, 2, 3, 4]
    assert owner(1, ("a",)) is None  # the bootstrap ballot belongs to nobody


def test_next_ballot_rejects_bad_rank() -> None:
    with pytest.raises(ValueError):
        next_ballot(5, 3, 3)


def _e(ballot: int, slot: int, data: bytes) -> Entry:
    return Entry(ballot, slot, EntryType.NORMAL, data)


def test_highest_ballot_value_wins_each_slot_and_is_restamped() -> None:
    """PMS §2.2 (P2c): for every slot, propose the value of the highest-numbered proposal
    accepted by any acceptor in the quorum; the new proposal carries the new ballot."""
    promises = [
        Promise(0, [_e(4, 1, b"x4"), _e(7, 2, b"y7")]),
        Promise(0, [_e(5, 1, b"x5"), _e(6, 2, b"y6")]),
    ]
    rec = recover(11, 0, promises)
    assert rec.complete and rec.learned == [] and rec.end == 2
    assert rec.proposals == [_e(11, 1, b"x5"), _e(11, 2, b"y7")]


def test_gaps_become_no_ops_up_to_the_last_reported_slot() -> None:
    """Multi-Paxos (PMS §3): a new leader fills slots nobody in its quorum accepted with
    no-ops, up to the highest slot reported; nothing after it can have been chosen."""
    promises = [Promise(0, [_e(3, 1, b"a")]), Promise(0, [_e(3, 1, b"a"), _e(5, 3, b"c")])]
    rec = recover(8, 0, promises)
    assert [(e.index, e.data) for e in rec.proposals] == [(1, b"a"), (2, b""), (3, b"c")]
    assert rec.proposals[1].type == EntryType.NORMAL
    assert rec.end == 3


def test_chosen_values_are_learned_not_reproposed() -> None:
    """A value an acceptor knows chosen is final whatever its ballot: the proposer learns it
    (keeping its ballot), and only later slots go through the highest-ballot rule."""
    promises = [
        Promise(2, [_e(3, 1, b"p"), _e(3, 2, b"q"), _e(3, 3, b"r")]),
        # A higher ballot at a chosen slot must not win: slot 2 is chosen as b"q".
        Promise(0, [_e(9, 2, b"zz"), _e(4, 3, b"s")]),
    ]
    rec = recover(10, 0, promises)
    assert rec.complete and rec.chosen_through == 2
    assert rec.learned == [_e(3, 1, b"p"), _e(3, 2, b"q")]
    assert rec.proposals == [_e(10, 3, b"s")]


def test_missing_chosen_values_leave_the_recovery_incomplete() -> None:
    """If the quorum knows slots chosen that none of the promises carries, the proposer cannot
    lead: it keeps the contiguous part it learned."""
    promises = [Promise(4, [_e(2, 1, b"a"), _e(2, 2, b"b")]), Promise(0, [])]
    rec = recover(6, 0, promises)
    assert not rec.complete
    assert rec.learned == [_e(2, 1, b"a"), _e(2, 2, b"b")]
    assert rec.proposals == []


def test_slots_at_or_below_the_proposers_commit_are_ignored() -> None:
    rec = recover(6, 2, [Promise(0, [_e(1, 1, b"old"), _e(1, 2, b"old"), _e(1, 3, b"new")])])
    assert rec.learned == [] and rec.proposals == [_e(6, 3, b"new")]


def test_recovery_is_order_independent() -> None:
    """The merge depends on the set of promises, not on the order they arrived in."""
    seed = 3
    rng = random.Random(seed)
    for _ in range(50):
        promises = []
        for _ in range(3):
            slots = rng.sample(range(1, 9), rng.randint(0, 6))
            promises.append(
                Promise(
                    0,
                    sorted(
                        (_e(b, s, b"v%d" % b) for s, b in ((s, rng.randint(2, 9)) for s in slots)),
                        key=lambda e: e.index,
                    ),
                )
            )
        first = recover(20, 0, promises)
        shuffled = list(promises)
        rng.shuffle(shuffled)
        assert recover(20, 0, shuffled) == first, f"seed {seed}"

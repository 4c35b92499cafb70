"""Ballot numbers: unique per proposer, totally ordered, carried in the `term` field.

Paxos needs every proposer to draw its ballots from a set no other proposer draws from ("Paxos
Made Simple" §2.2: "different proposers choose their numbers from disjoint sets"). With a fixed
configuration of `n` voters sorted by id, the voter of rank `r` owns the ballots `b` with
`b % n == r`. Ballot 1 is the bootstrap ballot (the term of the bootstrap entries) and is never
used to propose: every real ballot is at least 2.
"""

from __future__ import annotations

from collections.abc import Sequence

BOOTSTRAP_BALLOT = 1
"""The term of the entries a brand-new cluster starts with (no proposer uses it)."""


def next_ballot(above: int, rank: int, n_voters: int) -> int:
    """The smallest ballot greater than `above` (and than the bootstrap ballot) owned by the
    voter of rank `rank` among `n_voters` voters."""
    if n_voters < 1 or not 0 <= rank < n_voters:
        raise ValueError(f"rank {rank} out of range for {n_voters} voters")
    floor = max(above, BOOTSTRAP_BALLOT)
    ballot = floor + 1 + (rank - (floor + 1)) % n_voters
    return ballot


def owner(ballot: int, voters: Sequence[str]) -> str | None:
    """The voter that owns `ballot` (`voters` sorted), or None for the bootstrap ballot or no
    voters."""
    if not voters or ballot <= BOOTSTRAP_BALLOT:
        return None
    return voters[ballot % len(voters)]

"""Majority arithmetic over a set of voters: election results, quorums, activity.

The commit rule is not here: its one home is `RaftCore._maybe_commit` (a quorum's match index,
and only for an entry of the current term, Raft §5.4.2).

Only voters count. Learners never appear here: the caller passes the voter ids.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping


class VoteResult(enum.Enum):
    """Where an election stands."""

    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(voter_count: int) -> int:
    """The smallest number of voters that forms a quorum (1 for an empty set: nobody wins)."""
    return voter_count // 2 + 1


def vote_result(voters: Collection[str], votes: Mapping[str, bool]) -> VoteResult:
    """WON once a majority of `voters` granted, LOST once a majority refused, else PENDING.

    Votes from ids outside `voters` are not counted.
    """
    granted = rejected = 0
    for voter in voters:
        vote = votes.get(voter)
        if vote is True:
            granted += 1
        elif vote is False:
            rejected += 1
    needed = majority(len(voters))
    if voters and granted >= needed:
        return VoteResult.WON
    if rejected >= needed or not voters:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[str], members: Collection[str]) -> bool:
    """Whether the ids in `members` include a majority of `voters`."""
    if not voters:
        return False
    return sum(1 for v in voters if v in members) >= majority(len(voters))


def quorum_tick(voters: Collection[str], tick_of: Callable[[str], int]) -> int:
    """The latest tick by which a majority of `voters` had been heard from.

    `tick_of(voter)` is the tick at which that voter was last heard from. The leader holds a
    lease from this tick on (thesis §6.4.1).
    """
    if not voters:
        return -(1 << 62)
    ticks = sorted((tick_of(v) for v in voters), reverse=True)
    return ticks[majority(len(ticks)) - 1]

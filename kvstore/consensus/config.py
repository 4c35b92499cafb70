"""The Raft core's tunables (`Config`) and the one rule for changing a configuration.

Time is counted in ticks (the node decides how long a tick is); sizes count entry data bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.consensus.types import ConfChange, ConfChangeType, ConfState
from kvstore.errors import InvalidArgumentError


def check_ticks(heartbeat_ticks: int, election_ticks: int) -> None:
    """Raise `InvalidArgumentError` unless 1 <= heartbeat_ticks < election_ticks (a follower must
    hear at least one heartbeat before it may start an election)."""
    if heartbeat_ticks < 1:
        raise InvalidArgumentError(f"heartbeat_ticks must be >= 1, got {heartbeat_ticks}")
    if election_ticks <= heartbeat_ticks:
        raise InvalidArgumentError(
            f"election_ticks ({election_ticks}) must be greater than "
            f"heartbeat_ticks ({heartbeat_ticks})"
        )


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a `RaftCore` needs to know besides its log and its random source."""

    node_id: str
    """This node's id: a non-empty string, unique in the cluster."""
    initial_voters: tuple[str, ...] = ()
    """The configuration of a brand-new cluster (no snapshot, empty hard state, empty log). Every
    initial member passes the same set, this node included. A node that joins an existing
    cluster passes () and waits to be contacted by the leader."""
    election_ticks: int = 10
    """A follower campaigns after a randomised timeout in [election_ticks, 2 * election_ticks)
    without hearing from a leader; a leader checks its quorum every election_ticks."""
    heartbeat_ticks: int = 1
    """Ticks between a leader's heartbeats."""
    pre_vote: bool = True
    """Run a pre-vote round before a real election (thesis §9.6), so a node that was cut off
    cannot bump everybody's term when it comes back."""
    check_quorum: bool = True
    """A leader that has not heard from a quorum within an election timeout steps down, and
    followers that heard from a leader within an election timeout ignore (pre-)votes (thesis
    §6.2, §4.2.3). Lease reads need it."""
    lease_ticks: int | None = None
    """Length of the leader lease for lease reads; None means election_ticks - 2. It must be
    shorter than the election timeout: the difference absorbs message delay and clock drift."""
    max_inflight_msgs: int = 256
    """APPEND messages in flight per follower before the leader waits for acks."""
    max_inflight_bytes: int = 32 << 20
    """Entry bytes in flight per follower before the leader waits for acks."""
    max_append_bytes: int = 1 << 20
    """Entry bytes per APPEND message (a message always carries at least one entry)."""
    max_uncommitted_bytes: int = 64 << 20
    """A leader refuses new proposals while this many entry bytes wait for commit."""
    max_committed_bytes_per_ready: int = 16 << 20
    """Entry bytes handed out for applying in one Ready (at least one entry)."""
    max_pending_reads: int = 100_000
    """Read requests waiting for their read index before new ones are refused."""
    forward_proposals: bool = True
    """A follower forwards proposals to the leader; if False it refuses them (naming the leader)."""
    applied: int = 0
    """On restart: the index the state machine had already applied; committed entries are handed
    out again from applied + 1."""

    @property
    def effective_lease_ticks(self) -> int:
        """The lease length actually used (0: no lease reads)."""
        if not self.check_quorum:
            return 0
        lease = self.election_ticks - 2 if self.lease_ticks is None else self.lease_ticks
        return max(lease, 0)

    def validate(self) -> None:
        """Raise `InvalidArgumentError` naming the first setting that is out of range."""
        if not isinstance(self.node_id, str) or not self.node_id:
            raise InvalidArgumentError(f"node_id must be a non-empty str, got {self.node_id!r}")
        voters = self.initial_voters
        if not isinstance(voters, tuple) or not all(isinstance(v, str) and v for v in voters):
            raise InvalidArgumentError(
                f"initial_voters must be a tuple of non-empty str, got {voters!r}"
            )
        if len(set(voters)) != len(voters):
            raise InvalidArgumentError(f"initial_voters has duplicates: {voters!r}")
        if voters and self.node_id not in voters:
            raise InvalidArgumentError(
                f"initial_voters {voters!r} must include this node ({self.node_id!r}); "
                "a node joining an existing cluster passes ()"
            )
        check_ticks(self.heartbeat_ticks, self.election_ticks)
        if self.lease_ticks is not None and not 1 <= self.lease_ticks < self.election_ticks:
            raise InvalidArgumentError(
                f"lease_ticks ({self.lease_ticks}) must be >= 1 and less than "
                f"election_ticks ({self.election_ticks}), so the lease expires before another "
                "leader can be elected"
            )
        for name in (
            "max_inflight_msgs",
            "max_inflight_bytes",
            "max_append_bytes",
            "max_uncommitted_bytes",
            "max_committed_bytes_per_ready",
            "max_pending_reads",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.applied, bool) or not isinstance(self.applied, int) or self.applied < 0:
            raise InvalidArgumentError(f"applied must be an int >= 0, got {self.applied!r}")


def apply_conf_change(conf: ConfState, change: ConfChange) -> ConfState:
    """The configuration after `change`: a pure function, the same on every member.

    ADD_VOTER adds a voter or promotes a learner; ADD_LEARNER adds a learner or demotes a voter;
    REMOVE drops the node from both sets. Member lists stay sorted, so equal configurations
    compare equal. A change that changes nothing returns an equal configuration.
    """
    voters = set(conf.voters)
    learners = set(conf.learners)
    node = change.node_id
    if change.type == ConfChangeType.ADD_VOTER:
        learners.discard(node)
        voters.add(node)
    elif change.type == ConfChangeType.ADD_LEARNER:
        voters.discard(node)
        learners.add(node)
    else:
        voters.discard(node)
        learners.discard(node)
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))

"""`ConsensusCore`: what the node needs from a consensus core, whichever protocol runs.

Both `RaftCore` (kvstore/raft/) and `PaxosCore` (kvstore/paxos/) satisfy it: the same inputs
(ticks, messages, proposals, reads), the same `Ready` batches out, over the same `LogView`.
`node.py` should depend on this Protocol and construct its core with `make_core`, so that it
never branches on the protocol beyond that one call.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from kvstore.errors import InvalidArgumentError
from kvstore.raft.config import Config
from kvstore.raft.core import CoreStatus
from kvstore.raft.types import ConfChange, ConfState, LogView, Message, Ready, Role

__all__ = ["CONSENSUS_KINDS", "ConsensusCore", "ConsensusKind", "make_core"]

ConsensusKind = Literal["raft", "paxos"]
CONSENSUS_KINDS: tuple[ConsensusKind, ...] = ("raft", "paxos")
"""The protocols a cluster may run (`Options.consensus`, `--consensus`)."""


@runtime_checkable
class ConsensusCore(Protocol):
    """A pure, deterministic consensus member (etcd's RawNode shape). Not thread-safe.

    Errors: proposals it cannot take raise `ProposalDroppedError` (with a reason and the
    leader's id when known); bad arguments raise `InvalidArgumentError`. Peers' garbage is
    ignored, never raised.
    """

    # --- inputs ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick."""
        ...

    def step(self, msg: Message) -> None:
        """Take one message from a peer (or a local event addressed to this node)."""
        ...

    def campaign(self) -> None:
        """Try to become leader now."""
        ...

    def propose(self, data: bytes) -> int:
        """Propose one command; its index on the leader, 0 when forwarded."""
        ...

    def propose_many(self, datas: Sequence[bytes]) -> int:
        """Propose a batch, all or none; the first index on the leader, 0 when forwarded."""
        ...

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose a membership change (Paxos: always refused, fixed configuration)."""
        ...

    def read_index(self, request_ctx: bytes, *, lease: bool = False) -> None:
        """Ask for a read index; answered in a later Ready (read_states or dropped)."""
        ...

    def transfer_leadership(self, target: str) -> None:
        """Ask the leader to hand leadership to `target`."""
        ...

    def report_unreachable(self, peer_id: str) -> None:
        """The transport could not deliver to `peer_id`."""
        ...

    def report_snapshot(self, peer_id: str, success: bool) -> None:
        """The application finished (or failed) streaming a snapshot to `peer_id`."""
        ...

    # --- outputs --------------------------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether `ready()` would return any work."""
        ...

    def ready(self) -> Ready:
        """The next batch of work, in the order `Ready` documents."""
        ...

    def advance(self, ready: Ready) -> None:
        """Acknowledge the last `ready()`: persisted, sent, applied."""
        ...

    def status(self) -> CoreStatus:
        """A consistent copy of the state (progress of each member when leader)."""
        ...

    # --- read-only state ------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id."""
        ...

    @property
    def term(self) -> int:
        """Raft: the current term. Paxos: the promised ballot."""
        ...

    @property
    def role(self) -> Role:
        """The current role."""
        ...

    @property
    def leader_id(self) -> str | None:
        """The leader, if known."""
        ...

    @property
    def commit_index(self) -> int:
        """The highest index known committed (chosen)."""
        ...

    @property
    def applied_index(self) -> int:
        """The highest index the application acknowledged as applied."""
        ...

    @property
    def last_index(self) -> int:
        """The last index of this node's log."""
        ...

    @property
    def is_learner(self) -> bool:
        """Whether this node is a non-voting member."""
        ...

    @property
    def conf_state(self) -> ConfState:
        """The configuration in force."""
        ...


def make_core(kind: str, config: Config, log: LogView, rng: random.Random) -> ConsensusCore:
    """Build the core for `kind` ("raft" or "paxos"); `InvalidArgumentError` for anything else."""
    if kind == "raft":
        from kvstore.raft.core import RaftCore

        return RaftCore(config, log, rng)
    if kind == "paxos":
        from kvstore.paxos.core import PaxosCore

        return PaxosCore(config, log, rng)
    raise InvalidArgumentError(
        f"consensus must be one of {', '.join(CONSENSUS_KINDS)}; got {kind!r}"
    )


if TYPE_CHECKING:
    # Both cores must satisfy the Protocol: mypy checks these assignments.
    from kvstore.paxos.core import PaxosCore
    from kvstore.raft.core import RaftCore

    def _raft_is_a_core(core: RaftCore) -> ConsensusCore:
        return core

    def _paxos_is_a_core(core: PaxosCore) -> ConsensusCore:
        return core

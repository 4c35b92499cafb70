"""`ConsensusCore`: what the node needs from a consensus core, whichever protocol runs.

Both `RaftCore` (kvstore/raft/) and `PaxosCore` (kvstore/paxos/) satisfy it: the same inputs
(ticks, messages, proposals, reads), the same `Ready` batches out, over the same `LogView`.
The node depends on this Protocol and constructs its core with `make_core`, so that it never
branches on the protocol beyond that one call.

The kernel never imports a protocol: `make_core` names each core by its module path
(`CORE_CLASSES`) and loads the one asked for on first use, the way a plugin table would, so
importing `kvstore.consensus` loads neither kvstore/raft/ nor kvstore/paxos/ (a test checks).
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Sequence
from typing import Literal, NamedTuple, Protocol, cast, runtime_checkable

from kvstore.consensus.config import Config
from kvstore.consensus.progress import PeerProgress
from kvstore.consensus.types import ConfChange, ConfState, LogView, Message, Ready, Role
from kvstore.errors import InvalidArgumentError

__all__ = [
    "CONSENSUS_KINDS",
    "CORE_CLASSES",
    "ConsensusCore",
    "ConsensusKind",
    "CoreStatus",
    "make_core",
]

ConsensusKind = Literal["raft", "paxos"]
CONSENSUS_KINDS: tuple[ConsensusKind, ...] = ("raft", "paxos")
"""The protocols a cluster may run (`Options.consensus`, `--consensus`)."""

CORE_CLASSES: dict[str, tuple[str, str]] = {
    "raft": ("kvstore.raft.core", "RaftCore"),
    "paxos": ("kvstore.paxos.core", "PaxosCore"),
}
"""Each protocol's core, as (module, class): loaded by `make_core` only when asked for."""


class CoreStatus(NamedTuple):
    """A snapshot of the core's state, for status pages and tests."""

    node_id: str
    term: int
    vote: str | None
    commit: int
    applied: int
    role: Role
    leader_id: str | None
    conf_state: ConfState
    progress: dict[str, PeerProgress]
    """Each member's replication progress, when this node is the leader (else empty)."""
    transferee: str | None
    """The node leadership is being handed to, if a transfer is in progress."""


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
    where = CORE_CLASSES.get(kind)
    if where is None:
        raise InvalidArgumentError(
            f"consensus must be one of {', '.join(CONSENSUS_KINDS)}; got {kind!r}"
        )
    module, name = where
    core_class = getattr(importlib.import_module(module), name)
    return cast(ConsensusCore, core_class(config, log, rng))

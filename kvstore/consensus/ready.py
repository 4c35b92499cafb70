"""`ReadyAssembler`: a core's outbox between two Readys, and the `Ready` it becomes.

Each core holds one (composition): it puts the messages, read states and refusals it produces
into the assembler's lists, and at `ready()` the assembler adds what changed in the core's state
(soft and hard state, entries to persist, a snapshot, committed entries to apply) and hands the
batch out. The ordering rules are `Ready`'s (types.py); the one rule decided here is which
messages must wait for persistence: `send()` routes by the protocol's `after_persist` set.
"""

from __future__ import annotations

from kvstore.consensus.log import RaftLog
from kvstore.consensus.types import (
    DroppedProposal,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    SoftState,
)
from kvstore.errors import invariant

__all__ = ["ReadyAssembler"]


class ReadyAssembler:
    """Gathers one core's output for its next `Ready`. Not thread-safe, like the core.

    The lists are public so that the core appends to them directly (its hot path): messages to
    send now, read states, refusals. Anything the core sends through `send()` instead is routed
    to `messages` or `persisted_messages` by type.
    """

    __slots__ = (
        "_after_persist",
        "_committed_bytes_max",
        "_prev_hard",
        "_prev_soft",
        "dropped",
        "messages",
        "pending",
        "persisted_messages",
        "read_states",
    )

    def __init__(self, after_persist: frozenset[MessageType], committed_bytes_max: int) -> None:
        self._after_persist = after_persist
        """Types that state something the sender must have persisted first."""
        self._committed_bytes_max = committed_bytes_max
        self.messages: list[Message] = []
        """Send now (`Ready.messages`)."""
        self.persisted_messages: list[Message] = []
        """Send after persisting (`Ready.persisted_messages`)."""
        self.read_states: list[ReadState] = []
        self.dropped: list[DroppedProposal] = []
        self.pending: Ready | None = None
        """The Ready handed out and not yet passed back to `advance()`."""
        self._prev_hard = HardState()
        self._prev_soft = SoftState(None, Role.FOLLOWER)

    def start_from(self, hard: HardState) -> None:
        """The hard state already durable when the core opened its log (not handed out again)."""
        self._prev_hard = hard

    def send(self, m: Message) -> None:
        """Queue `m`: after persistence if its type says so, else at once."""
        if m.type in self._after_persist:
            self.persisted_messages.append(m)
        else:
            self.messages.append(m)

    def has_ready(
        self, log: RaftLog, term: int, vote: str | None, lead: str | None, role: Role
    ) -> bool:
        """Whether `ready()` with this state would return any work."""
        if self.messages or self.persisted_messages or self.read_states or self.dropped:
            return True
        if log.has_unstable() or log.has_next_committed():
            return True
        soft = self._prev_soft
        if soft.leader_id != lead or soft.role != role:
            return True
        hard = self._prev_hard
        return hard.term != term or hard.vote != vote or hard.commit != log.committed

    def ready(
        self, log: RaftLog, term: int, vote: str | None, lead: str | None, role: Role
    ) -> Ready:
        """Hand out everything gathered plus what changed; remember it as `pending`."""
        soft: SoftState | None = None
        prev_soft = self._prev_soft
        if prev_soft.leader_id != lead or prev_soft.role != role:
            soft = self._prev_soft = SoftState(lead, role)
        hard: HardState | None = None
        must_sync = False
        prev = self._prev_hard
        commit = log.committed
        if prev.commit != commit or prev.term != term or prev.vote != vote:
            hard = self._prev_hard = HardState(term, vote, commit)
            must_sync = prev.term != term or prev.vote != vote
        entries = log.take_unstable()
        snapshot = log.take_snapshot()
        rd = Ready(
            soft_state=soft,
            hard_state=hard,
            entries=entries,
            snapshot=snapshot,
            messages=self.messages,
            persisted_messages=self.persisted_messages,
            committed_entries=log.next_committed(self._committed_bytes_max),
            read_states=self.read_states,
            must_sync=must_sync or bool(entries) or snapshot is not None,
            dropped=self.dropped,
        )
        self.messages = []
        self.persisted_messages = []
        self.read_states = []
        self.dropped = []
        self.pending = rd
        return rd

    def acknowledge(self, ready: Ready) -> None:
        """`advance(ready)` was called: it must be the Ready handed out last."""
        invariant(ready is self.pending, "advance() with a Ready other than the last one")
        self.pending = None

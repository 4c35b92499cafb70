"""The kernel's vocabulary: value types shared by both cores, the redo log, the state machine,
the transport and the node.

These are the contract between a pure core (kvstore/raft/, kvstore/paxos/) and the code that
does I/O, which therefore never needs to know which protocol runs.
Entries and messages are `NamedTuple`s rather than dataclasses: they are immutable values like
h11's events, but cheaper to build (the hot path makes many) and msgpack encodes them as arrays.

Conventions: log indices start at 1; `NONE` (0) means "no index"; node ids are non-empty `str`
and `None` means "no node". Ranges are half-open `[lo, hi)`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple, Protocol, cast

NONE = 0
"""No index / no term."""


class MessageType(enum.IntEnum):
    """Every message a core takes or emits. Local types never cross the network.

    One enum for both protocols, Paxos's types included: the wire carries the type as one
    integer and the transport checks it against this enum before any core sees the message, so
    the numbering must be one space. Which fields each type uses is documented by the core that
    sends it (kvstore/raft/core.py, kvstore/paxos/core.py).
    """

    # Local: produced by the application or by the core's own ticks.
    HUP = 0
    """Start an election (a tick ran out, or the application asked)."""
    BEAT = 1
    """Leader: send heartbeats now."""
    CHECK_QUORUM = 2
    """Leader: step down unless a quorum was heard from during the last election timeout."""
    UNREACHABLE = 3
    """The transport could not deliver to `sender` (see `RaftCore.report_unreachable`)."""
    SNAPSHOT_STATUS = 4
    """The application finished (or failed) sending a snapshot to `sender`; `reject` = failed."""

    # Remote.
    PROPOSE = 10
    """Entries proposed at a follower and forwarded to the leader."""
    APPEND = 11
    APPEND_RESPONSE = 12
    VOTE = 13
    VOTE_RESPONSE = 14
    PRE_VOTE = 15
    PRE_VOTE_RESPONSE = 16
    HEARTBEAT = 17
    """Leader -> follower: `commit`, a read round in `context`, and the leader's tick in `index`
    (echoed back, so a lease counts from when the heartbeat was sent, thesis §6.4.1)."""
    HEARTBEAT_RESPONSE = 18
    SNAPSHOT = 19
    """Leader -> follower: install the snapshot in `snapshot`. The application streams its data."""
    READ_INDEX = 20
    """Follower -> leader: ask for a read index for the request id in `context`."""
    READ_INDEX_RESPONSE = 21
    TIMEOUT_NOW = 22
    """Leader -> transfer target: campaign now, skipping pre-vote (leadership transfer)."""
    TRANSFER_LEADER = 23
    """Ask the leader to hand leadership over: to `context` (a node id) when set, else to
    `sender` (the transport only lets a node speak for itself, so a third party names the
    target in `context`)."""

    # Remote, Multi-Paxos only (kvstore/paxos/core.py documents the field use). The Paxos core
    # also uses PROPOSE, HEARTBEAT(_RESPONSE), SNAPSHOT, READ_INDEX(_RESPONSE), TIMEOUT_NOW and
    # TRANSFER_LEADER with the meanings above, `term` being the ballot.
    PREPARE = 40
    """Phase 1a: a proposer asks for promises for its ballot, for every slot after `index`."""
    PROMISE = 41
    """Phase 1b: a promise, with the acceptor's accepted values; `reject` = a higher ballot."""
    ACCEPT = 42
    """Phase 2a: the leader asks acceptors to accept a batch of slots in its ballot."""
    ACCEPTED = 43
    """Phase 2b: slots accepted through `index`; `reject` = cannot place the batch (or stale)."""
    PRE_PREPARE = 44
    """Would you promise this ballot? Non-binding (the Paxos meaning of `pre_vote`)."""
    PRE_PROMISE = 45
    """Answer to PRE_PREPARE; `reject` = no (a leader was heard from recently, or stale)."""

    def is_local(self) -> bool:
        """True for types that only ever travel from the application into its own core."""
        return self < MessageType.PROPOSE


class EntryType(enum.IntEnum):
    """What an entry's `data` holds."""

    NORMAL = 0
    """An application command (empty data: the no-op a new leader appends)."""
    CONF_CHANGE = 1
    """A `ConfChange`, encoded with `ConfChange.encode()`."""


class Entry(NamedTuple):
    """One log entry."""

    term: int
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


class HardState(NamedTuple):
    """What a node must persist before it answers: its term, its vote in that term, its commit."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


class ConfState(NamedTuple):
    """The cluster configuration: voting members and learners (non-voting), by node id."""

    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()


class SnapshotMeta(NamedTuple):
    """Where a snapshot stands in the log, and the configuration at that point."""

    index: int = 0  # type: ignore[assignment]  # shadows tuple.index on purpose
    term: int = 0
    conf_state: ConfState = ConfState()


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0
    """Add a voter, or promote a learner to voter."""
    ADD_LEARNER = 1
    """Add a non-voting member that receives the log."""
    REMOVE = 2
    """Remove a voter or a learner."""


class ConfChange(NamedTuple):
    """A single-server membership change, carried in a `CONF_CHANGE` entry.

    `context` is opaque to the core; the node stores the member's address there.
    """

    type: ConfChangeType
    node_id: str
    context: bytes = b""

    def encode(self) -> bytes:
        """Compact, stable encoding: 1 byte type, 2 bytes id length (LE), id (UTF-8), context."""
        node = self.node_id.encode()
        return bytes([int(self.type)]) + len(node).to_bytes(2, "little") + node + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        """Inverse of `encode()`; raises `ValueError` on malformed data."""
        if len(data) < 3:
            raise ValueError("conf change too short")
        size = int.from_bytes(data[1:3], "little")
        if len(data) < 3 + size:
            raise ValueError("conf change node id truncated")
        return cls(ConfChangeType(data[0]), data[3 : 3 + size].decode(), bytes(data[3 + size :]))


class Message(NamedTuple):
    """One one-way Raft message. Unused fields keep their defaults.

    Field use by type (etcd's layout): `index`/`log_term` are the entry before `entries` in
    APPEND, the candidate's last entry in (PRE_)VOTE, the follower's match index in
    APPEND_RESPONSE; on a rejected APPEND_RESPONSE, `reject_hint` is the follower's hint index
    and `log_term` the term of its entry there (fast backtracking). `context` carries read
    request ids (READ_INDEX, HEARTBEAT) and the campaign reason.
    """

    type: MessageType
    recipient: str
    sender: str
    term: int = 0
    log_term: int = 0
    index: int = 0  # type: ignore[assignment]  # shadows tuple.index on purpose
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
    snapshot: SnapshotMeta | None = None

    # --- named constructors -------------------------------------------------------------------
    # One per message shape, so a call site says what it sends instead of filling ten
    # positional fields. They build the tuple directly (no NamedTuple `__new__` with defaults):
    # the leader makes one per peer per Ready, so they are on the hot path. The Paxos-only
    # shapes are built in kvstore/paxos/messages.py.

    @staticmethod
    def hup(node: str) -> Message:
        """Local: `node` starts an election now."""
        return _message((MessageType.HUP, node, node, 0, 0, 0, (), 0, False, 0, b"", None))

    @staticmethod
    def unreachable(node: str, peer: str) -> Message:
        """Local: the transport of `node` could not deliver to `peer`."""
        return _message((MessageType.UNREACHABLE, node, peer, 0, 0, 0, (), 0, False, 0, b"", None))

    @staticmethod
    def snapshot_status(node: str, peer: str, success: bool) -> Message:
        """Local: `node` finished streaming a snapshot to `peer` (`reject` = it failed)."""
        return _message(
            (MessageType.SNAPSHOT_STATUS, node, peer, 0, 0, 0, (), 0, not success, 0, b"", None)
        )

    @staticmethod
    def propose(to: str, sender: str, entries: tuple[Entry, ...]) -> Message:
        """Proposals forwarded to the leader `to` (no term: valid in any term)."""
        return _message((MessageType.PROPOSE, to, sender, 0, 0, 0, entries, 0, False, 0, b"", None))

    @staticmethod
    def propose_refused(
        to: str, sender: str, entries: tuple[Entry, ...], reason: DropReason
    ) -> Message:
        """Forwarded proposals sent back to the follower `to`, with the reason in `context`."""
        return _message(
            (MessageType.PROPOSE, to, sender, 0, 0, 0, entries, 0, True, 0, reason.to_wire(), None)
        )

    @staticmethod
    def read_index(to: str, sender: str, request_ctx: bytes) -> Message:
        """A follower asks the leader `to` for a read index for `request_ctx`."""
        return _message(
            (MessageType.READ_INDEX, to, sender, 0, 0, 0, (), 0, False, 0, request_ctx, None)
        )

    @staticmethod
    def read_index_response(
        to: str, sender: str, term: int, index: int, request_ctx: bytes, reject: bool
    ) -> Message:
        """The leader's answer: serve `request_ctx` once applied through `index` (or refused)."""
        return _message(
            (
                MessageType.READ_INDEX_RESPONSE,
                to,
                sender,
                term,
                0,
                index,
                (),
                0,
                reject,
                0,
                request_ctx,
                None,
            )
        )

    @staticmethod
    def transfer_leader(to: str, sender: str, target: bytes) -> Message:
        """Ask the leader `to` to hand leadership to `target` (a UTF-8 node id)."""
        return _message(
            (MessageType.TRANSFER_LEADER, to, sender, 0, 0, 0, (), 0, False, 0, target, None)
        )

    @staticmethod
    def timeout_now(to: str, sender: str, term: int) -> Message:
        """The leader tells the transfer target `to` to campaign at once."""
        return _message(
            (MessageType.TIMEOUT_NOW, to, sender, term, 0, 0, (), 0, False, 0, b"", None)
        )

    @staticmethod
    def entries_batch(
        kind: MessageType,
        to: str,
        sender: str,
        term: int,
        prev_term: int,
        prev_index: int,
        entries: tuple[Entry, ...],
        commit: int,
        recovery_end: int,
    ) -> Message:
        """The leader's batch of `entries` after `prev_index` (of term `prev_term`), with its
        commit: Raft's APPEND or Paxos's ACCEPT, which share this layout (`recovery_end` rides
        in `reject_hint`; Raft sends 0)."""
        return _message(
            (
                kind,
                to,
                sender,
                term,
                prev_term,
                prev_index,
                entries,
                commit,
                False,
                recovery_end,
                b"",
                None,
            )
        )

    @staticmethod
    def append(
        to: str,
        sender: str,
        term: int,
        prev_term: int,
        prev_index: int,
        entries: tuple[Entry, ...],
        commit: int,
    ) -> Message:
        """Raft: entries after `prev_index` (of term `prev_term`) and the leader's commit."""
        return Message.entries_batch(
            MessageType.APPEND, to, sender, term, prev_term, prev_index, entries, commit, 0
        )

    @staticmethod
    def append_response(to: str, sender: str, term: int, match: int) -> Message:
        """Raft: the follower's log matches the leader's through `match` (0 from a stale term:
        only the term matters then)."""
        return _message(
            (MessageType.APPEND_RESPONSE, to, sender, term, 0, match, (), 0, False, 0, b"", None)
        )

    @staticmethod
    def append_rejected(
        to: str, sender: str, term: int, rejected: int, hint: int, hint_term: int
    ) -> Message:
        """Raft: the APPEND after `rejected` does not match; the follower's last entry whose term
        is at most the leader's there is `hint`, of term `hint_term` (fast backtracking)."""
        return _message(
            (
                MessageType.APPEND_RESPONSE,
                to,
                sender,
                term,
                hint_term,
                rejected,
                (),
                0,
                True,
                hint,
                b"",
                None,
            )
        )

    @staticmethod
    def vote_request(
        to: str,
        sender: str,
        term: int,
        last_term: int,
        last_index: int,
        context: bytes,
        *,
        pre: bool,
    ) -> Message:
        """Raft: a (pre-)candidate at `term` whose log ends at `last_index` of `last_term`;
        `context` is the campaign reason (CAMPAIGN_TRANSFER or empty)."""
        kind = MessageType.PRE_VOTE if pre else MessageType.VOTE
        return _message(
            (kind, to, sender, term, last_term, last_index, (), 0, False, 0, context, None)
        )

    @staticmethod
    def vote_response(to: str, sender: str, term: int, *, pre: bool, reject: bool) -> Message:
        """Raft: a (pre-)vote granted or refused, at `term`."""
        kind = MessageType.PRE_VOTE_RESPONSE if pre else MessageType.VOTE_RESPONSE
        return _message((kind, to, sender, term, 0, 0, (), 0, reject, 0, b"", None))

    @staticmethod
    def heartbeat(
        to: str, sender: str, term: int, now: int, commit: int, read_round: bytes
    ) -> Message:
        """The leader's heartbeat: the commit `to` may use, its tick `now` (echoed back) and
        the read round id."""
        return _message(
            (
                MessageType.HEARTBEAT,
                to,
                sender,
                term,
                0,
                now,
                (),
                commit,
                False,
                0,
                read_round,
                None,
            )
        )

    @staticmethod
    def heartbeat_response(
        to: str, sender: str, term: int, index: int, read_round: bytes
    ) -> Message:
        """The answer to a heartbeat: `index` (Raft: the echoed tick; Paxos: the end of the
        acceptor's run) and the echoed read round."""
        return _message(
            (
                MessageType.HEARTBEAT_RESPONSE,
                to,
                sender,
                term,
                0,
                index,
                (),
                0,
                False,
                0,
                read_round,
                None,
            )
        )

    @staticmethod
    def install_snapshot(
        to: str, sender: str, term: int, meta: SnapshotMeta, recovery_end: int
    ) -> Message:
        """The leader's SNAPSHOT: install `meta` (the node streams the data); `recovery_end`
        rides in `reject_hint` (Paxos; Raft sends 0)."""
        return _message(
            (MessageType.SNAPSHOT, to, sender, term, 0, 0, (), 0, False, recovery_end, b"", meta)
        )


_message = cast("Callable[[tuple[object, ...]], Message]", partial(tuple.__new__, Message))
"""Builds a `Message` from its 12 fields in order, without NamedTuple's `__new__`."""


class ReadState(NamedTuple):
    """A read request that may be served once the applied index reaches `index`."""

    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose
    request_ctx: bytes


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    PRE_CANDIDATE = "pre-candidate"
    LEADER = "leader"


class SoftState(NamedTuple):
    """Volatile state the application may show (status) but need not persist."""

    leader_id: str | None
    role: Role


class DropReason(enum.StrEnum):
    """Why a core refused a proposal, a read or a membership change (`DroppedProposal.reason`,
    `ProposalDroppedError.reason`). Compare by identity (`reason is DropReason.NO_LEADER`).

    Each value is the text a leader sends back, UTF-8, in the `context` of a refused forwarded
    PROPOSE (so the wire bytes are the human-readable reason); `from_wire` reads it back.
    """

    NO_LEADER = "no leader"
    NOT_LEADER = "not the leader"
    LEARNER = "node is a learner"
    TRANSFER = "leadership transfer in progress"
    UNCOMMITTED = "too many uncommitted bytes"
    TOO_MANY_READS = "too many pending reads"
    READ_REFUSED = "read refused by the leader"
    CONF_CHANGE_PENDING = "a configuration change is already pending"
    CONF_CHANGE_INVALID = "invalid configuration change"
    MEMBERSHIP_FIXED = "membership changes are not supported with consensus=paxos"
    """The Paxos core runs a fixed configuration: retrying cannot help."""

    def to_wire(self) -> bytes:
        """The bytes a refused forwarded PROPOSE carries in `context`."""
        return self.value.encode()

    @classmethod
    def from_wire(cls, data: bytes) -> DropReason:
        """The reason in a refused PROPOSE's `context`; NOT_LEADER for empty or unknown bytes
        (a peer's garbage must not raise into the core)."""
        try:
            return cls(data.decode())
        except ValueError:  # UnicodeDecodeError is a ValueError too
            return cls.NOT_LEADER


class DroppedProposal(NamedTuple):
    """A proposal the core could not take, reported with its request context and a reason."""

    context: bytes
    reason: DropReason


@dataclass(frozen=True, slots=True)
class Ready:
    """A batch of work the application must do, in this order, then pass back to `advance()`.

    The order is part of the contract (etcd's `Ready`, raft-rs's persisted messages):
    """

    soft_state: SoftState | None = None
    """Changed leader or role, or None if unchanged. Nothing to persist."""
    hard_state: HardState | None = None
    """Persist BEFORE sending `persisted_messages`. None if unchanged."""
    entries: Sequence[Entry] = ()
    """Append to stable storage (after cutting any conflicting suffix) BEFORE sending
    `persisted_messages`. They may overlap the log's tail: the new ones win."""
    snapshot: SnapshotMeta | None = None
    """A snapshot received from the leader: restore the state machine from its data and reset
    the log to start after it, BEFORE applying `committed_entries` or sending
    `persisted_messages`."""
    messages: Sequence[Message] = ()
    """Send now: they do not depend on this Ready being persisted (e.g. a leader's APPENDs,
    thesis §10.2.1: the leader's own fsync counts as one ack, so it may replicate in parallel)."""
    persisted_messages: Sequence[Message] = ()
    """Send only AFTER `hard_state`, `entries` and `snapshot` are durable (votes, acks)."""
    committed_entries: Sequence[Entry] = ()
    """Apply to the state machine, in order. They were appended to stable storage earlier."""
    read_states: Sequence[ReadState] = ()
    """Reads that may be served once the state machine has applied through their index."""
    must_sync: bool = False
    """Whether `hard_state`/`entries`/`snapshot` need an fsync before `persisted_messages` go."""
    dropped: Sequence[DroppedProposal] = field(default_factory=tuple)
    """Proposals and read requests refused since the last Ready, so callers can fail fast."""


class LogView(Protocol):
    """Read-only view of the stable log, as the core needs it (etcd's `Storage`).

    Any error other than `LogCompactedError` / `LogUnavailableError` stops the core.
    """

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the configuration as of the latest snapshot."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in `[lo, hi)`, stopping early once their data exceeds `max_bytes` (but always
        at least one). Raises `LogCompactedError` if `lo < first_index()`, `LogUnavailableError` if
        `hi > last_index() + 1`."""
        ...

    def term(self, index: int) -> int:
        """The term of entry `index`, for `first_index() - 1 <= index <= last_index()`."""
        ...

    def first_index(self) -> int:
        """The first index still in the log (snapshot index + 1)."""
        ...

    def last_index(self) -> int:
        """The last index in the log (the snapshot's index when the log is empty)."""
        ...

    def snapshot_meta(self) -> SnapshotMeta:
        """The latest snapshot (or compaction point): its index, term and configuration."""
        ...

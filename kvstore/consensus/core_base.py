"""`CoreBase`: what the Raft core and the Multi-Paxos core do the same way.

Both cores take the same inputs (ticks, messages, proposals, reads) and hand out the same
`Ready` batches over the same `RaftLog`; a leader in either streams entries to its peers with
one `Progress` each, confirms reads with a quorum round of heartbeats and refuses work during a
leadership transfer. That machinery lives here once:

- `has_ready`, `ready` and the `advance` bookkeeping, over a `ReadyAssembler` (ready.py) that
  the core holds: the outbox and the Ready assembly are shared by composition;
- the read-only properties and `status()`;
- the public inputs whose logic does not depend on the protocol (`propose`, `read_index`,
  `transfer_leadership`, `report_*`);
- role plumbing (`_reset`, `_hup`, `_tick_election`; the transitions themselves live in each
  core's own module) and the request
  handling that follows the role, not the protocol (forwarded proposals and reads, transfers);
- the leader's sending loop (`_flush`), its pipelining bookkeeping, heartbeats and read rounds.

What differs stays in each core and is named by the hooks below: the message dispatcher and
stale-term handling, elections (votes vs. phase 1), how a follower takes entries (Raft's log
matching vs. an acceptor's runs), when a leader may commit (Raft counts only entries of its own
term) and when it may serve reads. Like the rest of kvstore/raft/, this module does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from kvstore.consensus import quorum
from kvstore.consensus.config import Config
from kvstore.consensus.log import RaftLog, entries_bytes
from kvstore.consensus.progress import Progress, ProgressState, ProgressTracker
from kvstore.consensus.protocol import CoreStatus
from kvstore.consensus.read_only import ReadOnly, ReadRequest
from kvstore.consensus.ready import ReadyAssembler
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    DroppedProposal,
    DropReason,
    Entry,
    EntryType,
    HardState,
    LogView,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
)
from kvstore.errors import InvalidArgumentError, LogCompactedError, ProposalDroppedError, invariant

if TYPE_CHECKING:
    import random

__all__ = [
    "CAMPAIGN_TRANSFER",
    "TERMLESS",
    "CoreBase",
]

CAMPAIGN_TRANSFER = b"transfer"
"""`context` of a VOTE (PREPARE) sent because of a leadership transfer: voters skip the lease
check."""

MT = MessageType
_LEADER = Role.LEADER
_SELF_ONLY = frozenset({MT.HUP, MT.BEAT, MT.CHECK_QUORUM})
"""Local events a core accepts only from itself."""
TERMLESS = frozenset(
    {
        MT.HUP,
        MT.BEAT,
        MT.CHECK_QUORUM,
        MT.UNREACHABLE,
        MT.SNAPSHOT_STATUS,
        MT.PROPOSE,
        MT.READ_INDEX,
        MT.READ_INDEX_RESPONSE,
        MT.TRANSFER_LEADER,
    }
)
"""Types whose `term` means nothing: local events, and requests forwarded to the leader (or
answered by it) that are valid whatever term (ballot) the two sides are in."""


class CoreBase:
    """The protocol-independent half of a consensus core. Not thread-safe.

    A subclass's constructor calls `super().__init__`, sets `_follower_handlers` and
    `_leader_handlers`, opens the log with `_open_log` (which also sets the configuration of a
    brand-new cluster; else the subclass calls `_set_conf`), sets the term and vote and becomes
    a follower. It defines the class constants `_KNOWN`, `_AFTER_PERSIST` and `_APPEND_TYPE`
    and the hooks marked "Subclass:" below.
    """

    _KNOWN: ClassVar[frozenset[MessageType]]
    """Subclass: every message type the core understands; others are ignored by `step`."""
    _AFTER_PERSIST: ClassVar[frozenset[MessageType]]
    """Subclass: types that state something the sender must have persisted first."""
    _APPEND_TYPE: ClassVar[MessageType]
    """Subclass: the type that carries entries from the leader (APPEND, ACCEPT)."""

    _recovery_end = 0
    """The `reject_hint` a leader puts on its entry and snapshot messages. Paxos: the last slot
    phase 1 recovered, which acceptors need; Raft leaves it 0 (the field means nothing there)."""

    _now = 0
    """Ticks since the core was created, sent in heartbeats and echoed back. Raft: the leader's
    clock for its lease; Paxos has no lease and keeps no clock (its heartbeats carry 0)."""

    def __init__(self, config: Config, rng: random.Random) -> None:
        config.validate()
        self._config = config
        self._id = config.node_id
        self._rng = rng
        self._election_ticks = config.election_ticks
        self._heartbeat_ticks = config.heartbeat_ticks
        self._max_append_bytes = config.max_append_bytes
        self._max_uncommitted_bytes = config.max_uncommitted_bytes
        self._max_pending_reads = config.max_pending_reads

        self._out = ReadyAssembler(self._AFTER_PERSIST, config.max_committed_bytes_per_ready)
        """Outputs gathered for the next Ready, and the Ready assembly (composition)."""

        # Volatile state.
        self._role = Role.FOLLOWER
        self._lead: str | None = None
        self._term = 0
        self._vote: str | None = None
        self._votes: dict[str, bool] = {}
        self._progress = ProgressTracker()
        """Leader: every member's replication progress (composition; empty otherwise)."""
        self._read_only = ReadOnly(self._id, config.max_pending_reads)
        self._reads_waiting: list[tuple[ReadRequest, bool]] = []
        """Leader: reads (with their `lease` flag) that wait until `_reads_may_go()`."""
        self._transferee: str | None = None
        self._need_flush = False
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_ticks
        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick_role: Callable[[], None] = self._tick_election
        self._follower_handlers: Mapping[MessageType, Callable[[Message], None]] = {}
        """Subclass: the handlers of what a leader sends a follower (entries, heartbeats,
        snapshots), by type. Any of them resets the election timer and names the leader."""
        self._leader_handlers: Mapping[MessageType, Callable[[Message], None]] = {}
        """Subclass: the leader's handlers of its peers' answers, by type."""
        self.ignored_messages = 0
        """Messages dropped as stale, misaddressed or malformed (a diagnostic counter)."""

        self._log: RaftLog
        self._conf: ConfState
        self._voters: frozenset[str] = frozenset()
        self._learners: frozenset[str] = frozenset()
        self._voter_list: tuple[str, ...] = ()
        """The voters, sorted by id."""

    def _open_log(self, log: LogView) -> tuple[HardState, ConfState] | None:
        """Set `_log` and the assembler's durable hard state from `log`. Returns its hard
        state and configuration, or None for a brand-new cluster, whose log now holds the
        bootstrap entries (one committed ADD_VOTER per initial voter, term 1) and whose
        configuration is set."""
        config = self._config
        hard, conf = log.initial_state()
        snap = log.snapshot_meta()
        if config.initial_voters and hard.term == 0 and snap.index == 0 and log.last_index() == 0:
            self._out.start_from(HardState())
            self._log = RaftLog(log, committed=0, applied=0)
            voters = sorted(config.initial_voters)
            self._log.append(
                [
                    Entry(
                        1,
                        i,
                        EntryType.CONF_CHANGE,
                        ConfChange(ConfChangeType.ADD_VOTER, v).encode(),
                    )
                    for i, v in enumerate(voters, start=1)
                ]
            )
            self._log.commit_to(len(voters))
            self._set_conf(ConfState(tuple(voters), ()))
            return None
        self._out.start_from(hard)
        last = log.last_index()
        invariant(
            config.applied <= last,
            f"applied index {config.applied} is beyond the log's last index {last}",
        )
        commit = max(hard.commit, snap.index, config.applied)
        invariant(commit <= last, f"commit index {commit} is beyond the last index {last}")
        self._log = RaftLog(log, committed=commit, applied=max(config.applied, snap.index))
        return hard, conf

    def _set_conf(self, conf: ConfState) -> None:
        self._conf = conf
        self._voters = frozenset(conf.voters)
        self._learners = frozenset(conf.learners)
        self._voter_list = tuple(sorted(conf.voters))

    # --- read-only properties -------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._id

    @property
    def term(self) -> int:
        """The current term (Paxos: the promised ballot, the leader's own while it leads)."""
        return self._term

    @property
    def role(self) -> Role:
        """The current role (a learner is a FOLLOWER; see `is_learner`)."""
        return self._role

    @property
    def leader_id(self) -> str | None:
        """The leader of the current term (ballot), if known."""
        return self._lead

    @property
    def commit_index(self) -> int:
        """The highest index known to be committed (Paxos: the end of the chosen prefix)."""
        return self._log.committed

    @property
    def applied_index(self) -> int:
        """The highest index the application acknowledged as applied."""
        return self._log.applied

    @property
    def last_index(self) -> int:
        """The last index of this node's log."""
        return self._log.last_index()

    @property
    def is_learner(self) -> bool:
        """Whether this node is a non-voting member (never under Paxos: fixed voters)."""
        return self._id in self._learners

    @property
    def conf_state(self) -> ConfState:
        """The configuration in force (as of the commit index)."""
        return self._conf

    def status(self) -> CoreStatus:
        """A consistent copy of the state, with every member's progress when leader."""
        progress = self._progress.snapshot() if self._role == _LEADER else {}
        return CoreStatus(
            self._id,
            self._term,
            self._vote,
            self._log.committed,
            self._log.applied,
            self._role,
            self._lead,
            self._conf,
            progress,
            self._transferee,
        )

    # --- inputs -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick (elections, heartbeats, quorum checks)."""
        self._tick_role()

    def step(self, msg: Message) -> None:
        """Take one message from a peer. Stale, misaddressed or malformed ones are ignored.

        Local types are accepted only as this node's own events: HUP, BEAT and CHECK_QUORUM
        must name this node as sender; UNREACHABLE and SNAPSHOT_STATUS name the peer.
        """
        t = msg.type
        if (
            msg.recipient != self._id
            or t not in self._KNOWN
            or (t in _SELF_ONLY and msg.sender != self._id)
        ):
            self.ignored_messages += 1
            return
        self._step(msg)

    def campaign(self) -> None:
        """Start an election (phase 1) now, with a pre-vote round first when pre-vote is on."""
        self._step(Message.hup(self._id))

    def propose(self, data: bytes) -> int:
        """Propose one command. Returns its index on the leader, 0 when forwarded to the leader.

        Raises `ProposalDroppedError` (with the leader's id when known) if it cannot be taken.
        """
        return self.propose_many((data,))

    def propose_many(self, datas: Sequence[bytes]) -> int:
        """Propose a batch of commands, all or none. Returns the first index assigned on the
        leader (the others follow in order), 0 when forwarded to the leader."""
        if not datas:
            raise InvalidArgumentError("propose_many() needs at least one command")
        if self._role == _LEADER:
            self._check_leader_accepts(sum(map(len, datas)))
            first = self._log.append_new(self._term, datas)
            self._need_flush = True
            return first
        self._forward_proposal(tuple(Entry(0, 0, EntryType.NORMAL, d) for d in datas))
        return 0

    def read_index(self, request_ctx: bytes, *, lease: bool = False) -> None:
        """Ask for a read index for the request `request_ctx` (unique per request).

        The answer comes in a later Ready: a `ReadState` (serve the read once the state machine
        has applied its index) or a `DroppedProposal` with a reason. `lease=True` lets the
        leader answer at once while its lease holds, else (and always under Paxos, which has
        no lease) it confirms its leadership with a quorum round.
        """
        request = ReadRequest(request_ctx, None)
        if self._role == _LEADER:
            self._leader_read(request, lease)
        elif self._lead is None:
            self._out.dropped.append(DroppedProposal(request_ctx, DropReason.NO_LEADER))
        else:
            self._out.messages.append(Message.read_index(self._lead, self._id, request_ctx))

    def transfer_leadership(self, target: str) -> None:
        """Ask the leader to hand leadership to `target`, which then campaigns at once.

        Meanwhile the leader refuses proposals; the transfer is abandoned after an election
        timeout.
        """
        if target not in self._voters:
            raise InvalidArgumentError(f"{target!r} is not a voter")
        if self._role == _LEADER:
            self._start_transfer(target)
        elif self._lead is None:
            raise ProposalDroppedError(DropReason.NO_LEADER)
        else:
            # The sender must be this node (the transport checks it); the target rides in context.
            self._out.messages.append(
                Message.transfer_leader(self._lead, self._id, target.encode())
            )

    def report_unreachable(self, peer_id: str) -> None:
        """The transport could not deliver to `peer_id`: stop pipelining to it, probe instead."""
        self._step(Message.unreachable(self._id, peer_id))

    def report_snapshot(self, peer_id: str, success: bool) -> None:
        """The application finished streaming a snapshot to `peer_id` (or failed to)."""
        self._step(Message.snapshot_status(self._id, peer_id, success))

    # --- outputs -----------------------------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether `ready()` would return any work."""
        if self._need_flush:
            self._flush()
        return self._out.has_ready(self._log, self._term, self._vote, self._lead, self._role)

    def ready(self) -> Ready:
        """The work to do now, in the order `Ready` documents. Call `advance()` with it next."""
        invariant(self._out.pending is None, "ready() called again before advance()")
        if self._need_flush:
            self._flush()
        return self._out.ready(self._log, self._term, self._vote, self._lead, self._role)

    def advance(self, ready: Ready) -> None:
        """Acknowledge `ready`: its entries, hard state and snapshot are durable, its committed
        entries applied. For the leader, its own durable entries count as its own ack."""
        self._out.acknowledge(ready)
        log = self._log
        if ready.entries:
            self._entries_stable(ready.entries)
        if ready.snapshot is not None:
            log.stable_snapshot_to(ready.snapshot.index)
            log.applied_to(ready.snapshot.index)
        if ready.committed_entries:
            log.applied_to(ready.committed_entries[-1][1])
        if self._role == _LEADER:
            me = self._progress.get(self._id)
            if me is not None and me.maybe_update(log.stable_last_index()):
                self._maybe_commit()
        else:
            self._advanced_not_leader(ready)
        log.trim_cache()

    def _entries_stable(self, entries: Sequence[Entry]) -> None:
        """`entries` (handed out in the last Ready) are durable."""
        last = entries[-1]
        self._log.stable_to(last[1], last[0])

    def _advanced_not_leader(self, ready: Ready) -> None:
        """Subclass: what a non-leader learns from `advance(ready)` (nothing, by default)."""

    # --- hooks --------------------------------------------------------------------------------

    def _become_follower(self, term: int, lead: str | None) -> None:
        """Subclass: the transition to follower of `term` (every role transition of a protocol
        lives in its own core module: kvstore/raft/core.py, kvstore/paxos/core.py)."""
        raise NotImplementedError

    def _step(self, m: Message) -> None:
        """Subclass: the message dispatcher: term (ballot) checks, the protocol's own requests,
        then `_step_any_role`."""
        raise NotImplementedError

    def _step_any_role(self, m: Message) -> None:
        """What every role does with `m` the same way, else the role's step function."""
        t = m.type
        if t == MT.HUP:
            self._hup(transfer=False)
        elif t == MT.READ_INDEX_RESPONSE:
            self._handle_read_index_response(m)
        elif t == MT.PROPOSE and m.reject:
            reason = DropReason.from_wire(m.context)
            self._out.dropped.extend(DroppedProposal(e.data, reason) for e in m.entries)
        else:
            self._step_role(m)

    def _campaign_pre_vote(self) -> None:
        """Subclass: ask, without changing anybody's term, whether a quorum would elect us."""
        raise NotImplementedError

    def _campaign(self, *, transfer: bool) -> None:
        """Subclass: start a real election (phase 1)."""
        raise NotImplementedError

    def _step_campaign(self, m: Message) -> None:
        """Subclass: a candidate's handling of the answers to its campaign (and nothing else)."""
        raise NotImplementedError

    def _tick_heartbeat(self) -> None:
        """Subclass: the leader's tick."""
        raise NotImplementedError

    def _start_transfer(self, target: str) -> None:
        """Subclass: the leader starts handing leadership to `target`."""
        raise NotImplementedError

    def _handle_forwarded_proposal(self, m: Message) -> None:
        """Subclass: the leader takes (or refuses) proposals a follower forwarded."""
        raise NotImplementedError

    def _maybe_commit(self) -> object:
        """Subclass: the leader advances its commit index as far as its quorum rule allows."""
        raise NotImplementedError

    def _reads_may_go(self) -> bool:
        """Subclass: whether the leader knows its commit index is complete, so reads may be
        answered with it (Raft: an entry of its term is committed; Paxos: recovery is over)."""
        raise NotImplementedError

    def _lease_valid(self) -> bool:
        """Whether the leader may answer a lease read without a round (never, by default)."""
        return False

    # --- roles --------------------------------------------------------------------------------

    def _in_lease(self, m: Message) -> bool:
        """Whether a request to elect `m.sender` comes while a leader is known to be alive, so
        it is ignored (check-quorum, thesis §4.2.3), unless it is a leadership transfer."""
        return (
            self._config.check_quorum
            and self._lead is not None
            and self._election_elapsed < self._election_ticks
            and m.context != CAMPAIGN_TRANSFER
        )

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = None
        if self._role == _LEADER:
            self._drop_leader_reads()
        self._lead = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        # A fresh random timeout on every role change (§5.2; for Paxos, randomized backoff).
        self._randomized_timeout = self._rng.randrange(
            self._election_ticks, 2 * self._election_ticks
        )
        self._transferee = None
        self._votes = {}
        self._progress.clear()
        self._need_flush = False

    def _promotable(self) -> bool:
        return self._id in self._voters

    def _hup(self, *, transfer: bool) -> None:
        if self._role == _LEADER or not self._promotable():
            return
        if self._config.pre_vote and not transfer:
            self._campaign_pre_vote()
        else:
            self._campaign(transfer=transfer)

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout and self._promotable():
            self._election_elapsed = 0
            self._hup(transfer=False)

    # --- follower and candidate ---------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        handler = self._follower_handlers.get(m.type)
        if handler is not None:
            self._election_elapsed = 0
            self._lead = m.sender
            handler(m)
            return
        t = m.type
        if t == MT.PROPOSE:
            self._refuse_forwarded(m, DropReason.NOT_LEADER)
        elif t == MT.READ_INDEX:
            self._refuse_read(m)
        elif t == MT.TRANSFER_LEADER:
            if self._lead is not None and self._lead != m.sender:
                target = m.context or m.sender.encode()
                self._out.messages.append(Message.transfer_leader(self._lead, self._id, target))
            else:
                self.ignored_messages += 1
        elif t == MT.TIMEOUT_NOW:
            # Leadership transfer: campaign at once, skipping pre-vote (thesis §3.10).
            self._hup(transfer=True)
        else:
            self.ignored_messages += 1

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in self._follower_handlers:
            # Another node leads this term (§5.2): follow it.
            self._become_follower(m.term, m.sender)
            self._step_follower(m)
        elif t == MT.PROPOSE:
            self._refuse_forwarded(m, DropReason.NO_LEADER)
        elif t == MT.READ_INDEX:
            self._refuse_read(m)
        else:
            self._step_campaign(m)

    def _forward_proposal(self, entries: tuple[Entry, ...]) -> None:
        if self._id in self._learners:
            raise ProposalDroppedError(DropReason.LEARNER, leader_id=self._lead)
        if self._lead is None:
            raise ProposalDroppedError(DropReason.NO_LEADER)
        if not self._config.forward_proposals:
            raise ProposalDroppedError(DropReason.NOT_LEADER, leader_id=self._lead)
        self._out.messages.append(Message.propose(self._lead, self._id, entries))

    def _refuse_forwarded(self, m: Message, reason: DropReason) -> None:
        """Send a forwarded proposal back to its sender, which reports it in Ready.dropped."""
        if m.entries:
            self._out.messages.append(
                Message.propose_refused(m.sender, self._id, m.entries, reason)
            )

    def _refuse_read(self, m: Message) -> None:
        """Not the leader: refuse a READ_INDEX forwarded to us."""
        self._send_read_response(m.sender, m.context, 0, True)

    def _answer_heartbeat(self, m: Message, index: int) -> None:
        """Answer the leader's heartbeat `m`, echoing its read round (`context`)."""
        self._out.messages.append(
            Message.heartbeat_response(m.sender, self._id, self._term, index, m.context)
        )

    def _handle_read_index_response(self, m: Message) -> None:
        # Valid whatever our term now: the leader confirmed its leadership after the request.
        if m.reject:
            self._out.dropped.append(DroppedProposal(m.context, DropReason.READ_REFUSED))
        else:
            self._out.read_states.append(ReadState(m.index, m.context))

    # --- leader -------------------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        handler = self._leader_handlers.get(m.type)
        if handler is not None:
            handler(m)
            return
        t = m.type
        if t == MT.BEAT:
            self._beat()
        elif t == MT.CHECK_QUORUM:
            self._check_quorum()
        elif t == MT.PROPOSE:
            self._handle_forwarded_proposal(m)
        elif t == MT.READ_INDEX:
            self._leader_read(ReadRequest(m.context, m.sender), False)
        elif t == MT.TRANSFER_LEADER:
            target = m.context.decode(errors="replace") if m.context else m.sender
            if target in self._voters:
                self._start_transfer(target)
            else:
                self.ignored_messages += 1
        elif t == MT.UNREACHABLE:
            pr = self._progress.get(m.sender)
            if pr is not None and pr.state == ProgressState.REPLICATE and m.sender != self._id:
                pr.become_probe()
                self._need_flush = True
        elif t == MT.SNAPSHOT_STATUS:
            self._handle_snapshot_status(m)
        else:
            self.ignored_messages += 1

    def _answering_peer(self, m: Message) -> Progress | None:
        """The progress of the peer that sent the answer `m` (marked active), or None (and the
        message counted as ignored) if it is not a peer."""
        pr = self._progress.get(m.sender)
        if pr is None or m.sender == self._id:
            self.ignored_messages += 1
            return None
        pr.recent_active = True
        return pr

    def _acked(self, pr: Progress, index: int) -> bool:
        """A peer holds everything through `index`. Returns whether its progress moved."""
        was_paused = pr.is_paused()
        if pr.maybe_update(index) or (pr.match == index and pr.state == ProgressState.PROBE):
            state = pr.state
            if state == ProgressState.REPLICATE:
                pr.inflights.free_le(index)
            elif state == ProgressState.PROBE:
                pr.become_replicate()
            elif pr.match + 1 >= self._log.first_index():
                # The snapshot (or a newer one the application sent instead) is installed.
                pr.become_probe()
                pr.become_replicate()
            self._need_flush = True
            self._maybe_commit()
            return True
        if was_paused:
            self._need_flush = True
        return False

    def _heartbeat_answered(self, pr: Progress, m: Message) -> None:
        """The common part of a heartbeat answer: the peer is alive, catch it up, count its
        acknowledgement of the read round in `m.context`."""
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            # The peer is alive: let one more batch go in case acknowledgements were lost.
            pr.inflights.free_first()
        if pr.match < self._log.last_index():
            self._nudge(pr)
        elif pr.state == ProgressState.PROBE:
            self._need_flush = True
        if m.context:
            self._read_ack(m.context, m.sender)

    def _nudge(self, pr: Progress) -> None:
        """Make the next flush send `pr` at least an empty batch after what was sent.

        If entries were lost on the way, the peer refuses it and replication restarts from its
        match index instead of waiting forever for acks that will not come.
        """
        if pr.state == ProgressState.REPLICATE:
            pr.sent_commit = -1
        self._need_flush = True

    def _handle_snapshot_status(self, m: Message) -> None:
        pr = self._progress.get(m.sender)
        if pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if m.reject:
            pr.pending_snapshot = 0
        pr.become_probe()
        # Success: wait for the peer's acknowledgement. Failure: retry after a heartbeat.
        pr.probe_sent = True

    def _check_quorum(self) -> None:
        """Step down unless a quorum was heard from during the last election timeout (§6.2)."""
        peers = self._progress.peers
        active = {node for node, pr in peers if pr.recent_active}
        active.add(self._id)
        if not quorum.has_quorum(self._voter_list, active):
            self._become_follower(self._term, None)
            return
        for _, pr in peers:
            pr.recent_active = False

    def _leader_takes_forwarded(self, m: Message) -> bool:
        """Whether the leader has room for the proposals forwarded in `m` (else they go back
        to their sender with the reason)."""
        try:
            self._check_leader_accepts(entries_bytes(m.entries))
        except ProposalDroppedError as exc:
            self._refuse_forwarded(m, DropReason(exc.reason))
            return False
        return True

    def _check_leader_accepts(self, size: int) -> None:
        if self._transferee is not None:
            raise ProposalDroppedError(DropReason.TRANSFER, leader_id=self._id)
        log = self._log
        uncommitted = log.mem_bytes(log.committed + 1, log.last_index() + 1)
        if uncommitted and uncommitted + size > self._max_uncommitted_bytes:
            raise ProposalDroppedError(DropReason.UNCOMMITTED, leader_id=self._id)

    # --- sending to peers ---------------------------------------------------------------------

    def _flush(self) -> None:
        """Leader: send whatever each peer may receive now (entries, commit index).

        Runs once per Ready rather than once per event, so many proposals and acks between two
        Readys share messages (batching).
        """
        self._need_flush = False
        if self._role != _LEADER:
            return
        log = self._log
        last = log.last_index()
        commit = log.committed
        ro = self._read_only
        if ro.has_queued() and not ro.in_flight():
            self._bcast_heartbeat(ro.start_round(commit))
        for node, pr in self._progress.peers:
            state = pr.state
            if state == ProgressState.REPLICATE:
                inflights = pr.inflights
                while (
                    pr.next <= last and pr.state == ProgressState.REPLICATE and not inflights.full()
                ):
                    if not self._send_entries(node, pr, last):
                        break
                if pr.sent_commit < commit and pr.state == ProgressState.REPLICATE:
                    # Nothing new to send, but the peer should learn the commit index.
                    self._send_entries(node, pr, pr.next - 1)
            elif state == ProgressState.PROBE and not pr.probe_sent:
                self._send_entries(node, pr, last)

    def _send_entries(self, node: str, pr: Progress, last: int) -> bool:
        """Send entries `[pr.next, last]` (as many as one message may carry) to `node`."""
        log = self._log
        prev = pr.next - 1
        prev_term = log.term_or_none(prev)
        if prev_term is None:
            return self._send_snapshot(node, pr)
        ents: list[Entry] = []
        size = 0
        if pr.next <= last:
            try:
                ents, size = log.entries_and_size(pr.next, last + 1, self._max_append_bytes)
            except LogCompactedError:
                return self._send_snapshot(node, pr)
        commit = log.committed
        self._out.messages.append(
            Message.entries_batch(
                self._APPEND_TYPE,
                node,
                self._id,
                self._term,
                prev_term,
                prev,
                tuple(ents),
                commit,
                self._recovery_end,
            )
        )
        pr.sent_commit = commit
        if pr.state == ProgressState.REPLICATE:
            if ents:
                sent = prev + len(ents)
                pr.next = sent + 1
                pr.inflights.add(sent, size)
        else:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, node: str, pr: Progress) -> bool:
        """The peer needs compacted entries: send the snapshot point (§7; the node streams it)."""
        if not pr.recent_active:
            # Do not start streaming a snapshot to a member that does not answer.
            return False
        meta = self._log.storage.snapshot_meta()
        if meta.index <= 0:
            return False
        self._out.messages.append(
            Message.install_snapshot(node, self._id, self._term, meta, self._recovery_end)
        )
        pr.become_snapshot(meta.index)
        return True

    def _bcast_heartbeat(self, context: bytes) -> None:
        """Send every peer a heartbeat carrying the commit index it can use (what it holds of
        ours), the read round id `context`, and in `index` this tick (`_now`, echoed back)."""
        commit = self._log.committed
        term = self._term
        me = self._id
        now = self._now
        for node, pr in self._progress.peers:
            self._out.messages.append(
                Message.heartbeat(node, me, term, now, min(pr.match, commit), context)
            )

    def _beat(self) -> None:
        ro = self._read_only
        if ro.has_queued():
            self._bcast_heartbeat(ro.start_round(self._log.committed))
        else:
            self._bcast_heartbeat(ro.latest_round())

    # --- reads --------------------------------------------------------------------------------

    def _leader_read(self, request: ReadRequest, lease: bool) -> None:
        if not self._reads_may_go():
            # Until then the commit index may miss entries committed by earlier leaders
            # (thesis §6.4 step 1; Paxos: values chosen in earlier ballots): reads wait.
            if len(self._reads_waiting) >= self._max_pending_reads:
                self._drop_read(request, DropReason.TOO_MANY_READS)
            else:
                self._reads_waiting.append((request, lease))
            return
        commit = self._log.committed
        if self._voters == {self._id} or (lease and self._lease_valid()):
            self._answer_read(request, commit)
            return
        ro = self._read_only
        if not ro.has_room():
            self._drop_read(request, DropReason.TOO_MANY_READS)
            return
        ro.enqueue(request)
        # The round starts at the next flush, so every read made before the next Ready shares it.
        self._need_flush = True

    def _release_waiting_reads(self) -> None:
        """Leader: serve the reads that waited, once `_reads_may_go()`."""
        if self._reads_waiting and self._reads_may_go():
            waiting, self._reads_waiting = self._reads_waiting, []
            for request, lease in waiting:
                self._leader_read(request, lease)

    def _read_ack(self, ctx: bytes, sender: str) -> None:
        ro = self._read_only
        round_ = ro.ack(ctx, sender)
        if round_ is None or not quorum.has_quorum(self._voter_list, round_.acks):
            return
        for done in ro.release_through(ctx):
            for request in done.requests:
                self._answer_read(request, done.index)
        if ro.has_queued():
            self._need_flush = True

    def _answer_read(self, request: ReadRequest, index: int) -> None:
        if request.sender is None or request.sender == self._id:
            self._out.read_states.append(ReadState(index, request.context))
        else:
            self._send_read_response(request.sender, request.context, index, False)

    def _drop_read(self, request: ReadRequest, reason: DropReason) -> None:
        if request.sender is None or request.sender == self._id:
            self._out.dropped.append(DroppedProposal(request.context, reason))
        else:
            self._send_read_response(request.sender, request.context, 0, True)

    def _send_read_response(self, to: str, context: bytes, index: int, reject: bool) -> None:
        self._out.messages.append(
            Message.read_index_response(to, self._id, self._term, index, context, reject)
        )

    def _drop_leader_reads(self) -> None:
        """The leader steps down: its pending reads can no longer be confirmed."""
        for request in self._read_only.drain():
            self._drop_read(request, DropReason.NOT_LEADER)
        waiting, self._reads_waiting = self._reads_waiting, []
        for request, _ in waiting:
            self._drop_read(request, DropReason.NOT_LEADER)

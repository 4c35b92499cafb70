"""`RaftCore`: the Raft algorithm as a pure, deterministic state machine (etcd's RawNode).

The application feeds it ticks, messages from peers and proposals, and pulls `Ready` batches of
work: state to persist, messages to send (some only after persisting), committed entries to
apply, reads that may be served. It never does I/O, never reads a clock and draws randomness
only from the `random.Random` it is given (for election jitter). Given the same seed and the
same sequence of calls it does exactly the same thing.

Design choices, with the sections of the Raft paper / Ongaro's thesis they follow:

- Roles are step and tick functions swapped on role changes (`_step_leader`, `_tick_election`).
- Elections use randomised timeouts (§5.2), pre-vote (thesis §9.6) and check-quorum (thesis
  §6.2); a follower that heard from a leader within the election timeout ignores (pre-)votes
  unless they come from a leadership transfer (thesis §4.2.3, §3.10).
- The leader replicates with one `Progress` per follower: PROBE (one APPEND at a time, fast
  backtracking with the follower's hint and the term there, §5.3), REPLICATE (optimistic
  pipelining within in-flight message and byte limits) and SNAPSHOT (§7).
- Outgoing APPENDs are built once per `Ready`, not once per proposal: proposals made between
  two Readys share messages (batching), up to `max_append_bytes` each.
- The leader sends its entries before they are on its own disk (thesis §10.2.1); its own
  persistence, acknowledged by `advance()`, counts like a follower's ack. Only entries of the
  current term are committed by counting replicas (§5.4.2).
- Membership changes are single-server changes (thesis §4.1: simpler than joint consensus and
  enough for adding, removing and promoting one member at a time). A change takes effect when
  its entry is COMMITTED (etcd style), not when appended: the configuration then never has to
  be rolled back when a follower cuts a conflicting suffix. Only one change may be pending; a
  new leader may propose one only after the entries of earlier terms are committed (it sets the
  pending index to its last index), which also closes the single-server-change bug Ongaro
  described in 2015. Learners receive the log but never count in a quorum and never campaign.
- A brand-new cluster starts from identical bootstrap entries on every member: one committed
  ADD_VOTER entry per initial voter (term 1, empty context), so a member that joins later
  learns the initial configuration from the log like any other change.
- Reads: ReadIndex (thesis §6.4) batched into heartbeat rounds (see `read_only.py`), lease
  reads (thesis §6.4.1) when check-quorum is on, and follower reads through the leader.

Message fields beyond the layout in types.py:
- HEARTBEAT carries the leader's tick in `index`; HEARTBEAT_RESPONSE echoes it (and `context`,
  the read round). The lease counts from the echoed tick, i.e. from when the heartbeat was sent.
- PROPOSE, READ_INDEX and TRANSFER_LEADER carry no term (0): they are forwarded requests. A
  PROPOSE with `reject=True` goes back to a follower whose forwarded proposal was refused, with
  the reason in `context`; the follower reports each entry's data in `Ready.dropped`.
- TRANSFER_LEADER names the target in `context` (UTF-8) when the sender is not the target (the
  transport insists that `sender` is the peer that sent it).
- A VOTE sent because of a leadership transfer has `context == CAMPAIGN_TRANSFER`.

The application must call `report_snapshot()` once for every SNAPSHOT message it handles
(success or failure): the follower stays paused in SNAPSHOT state until then or until it acks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from kvstore.errors import CompactedError, InvalidArgumentError, ProposalDroppedError, invariant
from kvstore.raft import quorum
from kvstore.raft.config import Config, apply_conf_change
from kvstore.raft.log import RaftLog, conf_change_indices, entries_bytes
from kvstore.raft.progress import PeerProgress, Progress, ProgressState
from kvstore.raft.read_only import ReadOnly, ReadRequest
from kvstore.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    DroppedProposal,
    Entry,
    EntryType,
    HardState,
    LogView,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    SoftState,
)

if TYPE_CHECKING:
    import random

__all__ = [
    "CAMPAIGN_TRANSFER",
    "REASON_CONF_CHANGE_INVALID",
    "REASON_CONF_CHANGE_PENDING",
    "REASON_LEARNER",
    "REASON_NOT_LEADER",
    "REASON_NO_LEADER",
    "REASON_READ_REFUSED",
    "REASON_TOO_MANY_READS",
    "REASON_TRANSFER",
    "REASON_UNCOMMITTED",
    "CoreStatus",
    "PeerProgress",
    "ProgressState",
    "RaftCore",
]

# Why a proposal or a read was refused (ProposalDroppedError.reason, DroppedProposal.reason).
REASON_NO_LEADER = "no leader"
REASON_NOT_LEADER = "not the leader"
REASON_LEARNER = "node is a learner"
REASON_TRANSFER = "leadership transfer in progress"
REASON_UNCOMMITTED = "too many uncommitted bytes"
REASON_CONF_CHANGE_PENDING = "a configuration change is already pending"
REASON_CONF_CHANGE_INVALID = "invalid configuration change"
REASON_TOO_MANY_READS = "too many pending reads"
REASON_READ_REFUSED = "read refused by the leader"

CAMPAIGN_TRANSFER = b"transfer"
"""`context` of a VOTE sent because of a leadership transfer: voters skip the lease check."""

_NEVER = -(1 << 62)

MT = MessageType
_APPEND = MT.APPEND
_APPEND_RESPONSE = MT.APPEND_RESPONSE
_LEADER = Role.LEADER

# Messages that state something the sender must have persisted first: a candidate's vote for
# itself, a vote granted, entries acknowledged.
_AFTER_PERSIST = frozenset({MT.VOTE, MT.VOTE_RESPONSE, MT.PRE_VOTE_RESPONSE, MT.APPEND_RESPONSE})

# Types that carry no meaningful term: local events, and requests forwarded to the leader (or
# answered by it) that are valid whatever term the two sides are in.
_TERMLESS = frozenset(
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
_SELF_ONLY = frozenset({MT.HUP, MT.BEAT, MT.CHECK_QUORUM})
# Every type this core understands; anything else (types.py may grow types for other
# protocols) is ignored before it can touch the term.
_KNOWN = _TERMLESS | {
    MT.APPEND,
    MT.APPEND_RESPONSE,
    MT.VOTE,
    MT.VOTE_RESPONSE,
    MT.PRE_VOTE,
    MT.PRE_VOTE_RESPONSE,
    MT.HEARTBEAT,
    MT.HEARTBEAT_RESPONSE,
    MT.SNAPSHOT,
    MT.TIMEOUT_NOW,
}


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


class RaftCore:
    """One Raft member, without I/O. Not thread-safe: one caller at a time."""

    def __init__(self, config: Config, log: LogView, rng: random.Random) -> None:
        config.validate()
        self._config = config
        self._id = config.node_id
        self._rng = rng
        self._election_ticks = config.election_ticks
        self._heartbeat_ticks = config.heartbeat_ticks
        self._lease_ticks = config.effective_lease_ticks
        self._max_append_bytes = config.max_append_bytes
        self._max_uncommitted_bytes = config.max_uncommitted_bytes
        self._max_pending_reads = config.max_pending_reads

        # Outputs gathered for the next Ready.
        self._msgs: list[Message] = []
        self._msgs_after: list[Message] = []
        self._read_states: list[ReadState] = []
        self._dropped: list[DroppedProposal] = []

        # Volatile state.
        self._role = Role.FOLLOWER
        self._lead: str | None = None
        self._term = 0
        self._vote: str | None = None
        self._votes: dict[str, bool] = {}
        self._progress: dict[str, Progress] = {}
        self._peers: list[tuple[str, Progress]] = []
        """Every member but this node, sorted by id: who the leader sends to."""
        self._voter_progress: list[Progress] = []
        self._read_only = ReadOnly(self._id, config.max_pending_reads)
        self._reads_waiting_commit: list[tuple[ReadRequest, bool]] = []
        self._transferee: str | None = None
        self._pending_conf_index = 0
        self._need_flush = False
        self._now = 0
        """Ticks since this core was created (the leader's clock for its lease)."""
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_ticks
        self._pending_ready: Ready | None = None
        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick_role: Callable[[], None] = self._tick_election
        self.ignored_messages = 0
        """Messages dropped as stale, misaddressed or malformed (a diagnostic counter)."""

        hard, conf = log.initial_state()
        snap = log.snapshot_meta()
        self._conf_indices: list[int] = []
        """Indices of CONF_CHANGE entries in the log that are not committed yet, in order."""
        if config.initial_voters and hard.term == 0 and snap.index == 0 and log.last_index() == 0:
            self._prev_hard = HardState()
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
            term, vote = 1, None
        else:
            self._prev_hard = hard
            last = log.last_index()
            invariant(
                config.applied <= last,
                f"applied index {config.applied} is beyond the log's last index {last}",
            )
            commit = max(hard.commit, snap.index, config.applied)
            invariant(commit <= last, f"commit index {commit} is beyond the last index {last}")
            self._log = RaftLog(log, committed=commit, applied=max(config.applied, snap.index))
            self._set_conf(conf)
            self._replay_conf_changes()
            term, vote = hard.term, hard.vote
        self._term = term
        self._vote = vote
        self._prev_soft = SoftState(None, Role.FOLLOWER)
        self._become_follower(term, None)

    def _replay_conf_changes(self) -> None:
        """Restart: apply the committed CONF_CHANGE entries of the log, remember the others."""
        log = self._log
        lo, hi = log.first_index(), log.last_index() + 1
        conf = self._conf
        while lo < hi:
            chunk = log.entries(lo, hi, 8 << 20)
            for entry in chunk:
                if entry.type != EntryType.CONF_CHANGE:
                    continue
                if entry.index <= log.committed:
                    change = _decode_conf_change(entry.data)
                    if change is not None:
                        conf = apply_conf_change(conf, change)
                else:
                    self._conf_indices.append(entry.index)
            lo = chunk[-1].index + 1
        self._set_conf(conf)

    # --- read-only properties -------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._id

    @property
    def term(self) -> int:
        """The current term."""
        return self._term

    @property
    def role(self) -> Role:
        """The current role (a learner is a FOLLOWER; see `is_learner`)."""
        return self._role

    @property
    def leader_id(self) -> str | None:
        """The leader of the current term, if known."""
        return self._lead

    @property
    def commit_index(self) -> int:
        """The highest index known to be committed."""
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
        """Whether this node is a non-voting member."""
        return self._id in self._learners

    @property
    def conf_state(self) -> ConfState:
        """The configuration in force (as of the commit index)."""
        return self._conf

    def status(self) -> CoreStatus:
        """A consistent copy of the state, with every member's progress when leader."""
        progress = (
            {pid: pr.snapshot() for pid, pr in self._progress.items()}
            if self._role == _LEADER
            else {}
        )
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
        """Advance logical time by one tick (elections, heartbeats, quorum checks, leases)."""
        self._now += 1
        self._tick_role()

    def step(self, msg: Message) -> None:
        """Take one message from a peer. Stale, misaddressed or malformed ones are ignored.

        Local types are accepted only as this node's own events: HUP, BEAT and CHECK_QUORUM
        must name this node as sender; UNREACHABLE and SNAPSHOT_STATUS name the peer.
        """
        if (
            msg.recipient != self._id
            or msg.type not in _KNOWN
            or (msg.type in _SELF_ONLY and msg.sender != self._id)
        ):
            self.ignored_messages += 1
            return
        self._step(msg)

    def campaign(self) -> None:
        """Start an election now (with a pre-vote round first when pre-vote is on)."""
        self._step(Message(MT.HUP, self._id, self._id))

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

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose a single-server membership change. Returns its index on the leader, 0 when
        forwarded. Only one change may be pending (uncommitted) at a time."""
        data = change.encode()
        if self._role != _LEADER:
            self._forward_proposal((Entry(0, 0, EntryType.CONF_CHANGE, data),))
            return 0
        if self._transferee is not None:
            raise ProposalDroppedError(REASON_TRANSFER, leader_id=self._id)
        if self._pending_conf_index > self._log.committed:
            raise ProposalDroppedError(REASON_CONF_CHANGE_PENDING, leader_id=self._id)
        problem = self._conf_change_problem(change)
        if problem is not None:
            raise InvalidArgumentError(f"{REASON_CONF_CHANGE_INVALID}: {problem}")
        index = self._log.last_index() + 1
        self._append_entries([Entry(self._term, index, EntryType.CONF_CHANGE, data)])
        self._pending_conf_index = index
        self._need_flush = True
        return index

    def read_index(self, request_ctx: bytes, *, lease: bool = False) -> None:
        """Ask for a read index for the request `request_ctx` (unique per request).

        The answer comes in a later Ready: a `ReadState` (serve the read once the state machine
        has applied its index) or a `DroppedProposal` with a reason. `lease=True` lets the
        leader answer at once while its lease holds (else it falls back to ReadIndex).
        """
        request = ReadRequest(request_ctx, None)
        if self._role == _LEADER:
            self._leader_read(request, lease)
        elif self._lead is None:
            self._dropped.append(DroppedProposal(request_ctx, REASON_NO_LEADER))
        else:
            self._msgs.append(Message(MT.READ_INDEX, self._lead, self._id, context=request_ctx))

    def transfer_leadership(self, target: str) -> None:
        """Ask the leader to hand leadership to `target` (thesis §3.10).

        The leader catches `target` up, then tells it to campaign at once; meanwhile it refuses
        proposals. The transfer is abandoned after an election timeout.
        """
        if target not in self._voters:
            raise InvalidArgumentError(f"{target!r} is not a voter")
        if self._role == _LEADER:
            self._start_transfer(target)
        elif self._lead is None:
            raise ProposalDroppedError(REASON_NO_LEADER)
        else:
            # The sender must be this node (the transport checks it); the target rides in context.
            self._msgs.append(
                Message(MT.TRANSFER_LEADER, self._lead, self._id, context=target.encode())
            )

    def report_unreachable(self, peer_id: str) -> None:
        """The transport could not deliver to `peer_id`: stop pipelining to it, probe instead."""
        self._step(Message(MT.UNREACHABLE, self._id, peer_id))

    def report_snapshot(self, peer_id: str, success: bool) -> None:
        """The application finished streaming a snapshot to `peer_id` (or failed to)."""
        self._step(Message(MT.SNAPSHOT_STATUS, self._id, peer_id, reject=not success))

    # --- outputs -----------------------------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether `ready()` would return any work."""
        if self._need_flush:
            self._flush()
        if self._msgs or self._msgs_after or self._read_states or self._dropped:
            return True
        log = self._log
        if log.has_unstable() or log.has_next_committed():
            return True
        soft = self._prev_soft
        if soft.leader_id != self._lead or soft.role != self._role:
            return True
        hard = self._prev_hard
        return hard.term != self._term or hard.vote != self._vote or hard.commit != log.committed

    def ready(self) -> Ready:
        """The work to do now, in the order `Ready` documents. Call `advance()` with it next."""
        invariant(self._pending_ready is None, "ready() called again before advance()")
        if self._need_flush:
            self._flush()
        log = self._log
        soft: SoftState | None = None
        prev_soft = self._prev_soft
        if prev_soft.leader_id != self._lead or prev_soft.role != self._role:
            soft = self._prev_soft = SoftState(self._lead, self._role)
        hard: HardState | None = None
        must_sync = False
        prev = self._prev_hard
        term, vote, commit = self._term, self._vote, log.committed
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
            messages=self._msgs,
            persisted_messages=self._msgs_after,
            committed_entries=log.next_committed(self._config.max_committed_bytes_per_ready),
            read_states=self._read_states,
            must_sync=must_sync or bool(entries) or snapshot is not None,
            dropped=self._dropped,
        )
        self._msgs = []
        self._msgs_after = []
        self._read_states = []
        self._dropped = []
        self._pending_ready = rd
        return rd

    def advance(self, ready: Ready) -> None:
        """Acknowledge `ready`: its entries, hard state and snapshot are durable, its committed
        entries applied. For the leader, its own durable entries count as its own ack."""
        invariant(ready is self._pending_ready, "advance() with a Ready other than the last one")
        self._pending_ready = None
        log = self._log
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last[1], last[0])
        if ready.snapshot is not None:
            log.stable_snapshot_to(ready.snapshot.index)
            log.applied_to(ready.snapshot.index)
        if ready.committed_entries:
            log.applied_to(ready.committed_entries[-1][1])
        if self._role == _LEADER:
            me = self._progress.get(self._id)
            if me is not None and me.maybe_update(log.stable_last_index()):
                self._maybe_commit()
        log.trim_cache()

    # --- the message dispatcher ---------------------------------------------------------------

    def _step(self, m: Message) -> None:
        t = m.type
        if t not in _TERMLESS:
            term = m.term
            if term <= 0:
                self.ignored_messages += 1
                return
            if term > self._term:
                if t == MT.VOTE or t == MT.PRE_VOTE:
                    in_lease = (
                        self._config.check_quorum
                        and self._lead is not None
                        and self._election_elapsed < self._election_ticks
                    )
                    if in_lease and m.context != CAMPAIGN_TRANSFER:
                        # Heard from a leader recently: this candidate is disruptive (§4.2.3).
                        self.ignored_messages += 1
                        return
                if t == MT.PRE_VOTE or (t == MT.PRE_VOTE_RESPONSE and not m.reject):
                    # A pre-vote uses a future term without changing anybody's term; a granted
                    # pre-vote comes back with that future term.
                    pass
                elif t == _APPEND or t == MT.HEARTBEAT or t == MT.SNAPSHOT:
                    self._become_follower(term, m.sender)
                else:
                    self._become_follower(term, None)
            elif term < self._term:
                self._step_stale(m)
                return

        if t == MT.HUP:
            self._hup(transfer=False)
        elif t == MT.VOTE or t == MT.PRE_VOTE:
            self._handle_vote_request(m)
        elif t == MT.READ_INDEX_RESPONSE:
            self._handle_read_index_response(m)
        elif t == MT.PROPOSE and m.reject:
            reason = m.context.decode(errors="replace") or REASON_NOT_LEADER
            self._dropped.extend(DroppedProposal(e.data, reason) for e in m.entries)
        else:
            self._step_role(m)

    def _step_stale(self, m: Message) -> None:
        """A message from an older term (§5.1: a stale term is rejected or ignored)."""
        t = m.type
        if t == _APPEND or t == MT.HEARTBEAT:
            # Tell a deposed leader about the newer term so it steps down (it may have been cut
            # off and, with pre-vote or check-quorum, would otherwise never learn of it).
            self._send(Message(_APPEND_RESPONSE, m.sender, self._id, self._term))
        elif t == MT.VOTE or t == MT.PRE_VOTE:
            response = MT.VOTE_RESPONSE if t == MT.VOTE else MT.PRE_VOTE_RESPONSE
            self._send(Message(response, m.sender, self._id, self._term, reject=True))
        else:
            self.ignored_messages += 1

    def _send(self, m: Message) -> None:
        if m.type in _AFTER_PERSIST:
            self._msgs_after.append(m)
        else:
            self._msgs.append(m)

    # --- roles --------------------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = None
        if self._role == _LEADER:
            self._drop_leader_reads()
        self._lead = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._rng.randrange(
            self._election_ticks, 2 * self._election_ticks
        )
        self._transferee = None
        self._votes = {}
        self._progress = {}
        self._peers = []
        self._voter_progress = []
        self._pending_conf_index = 0
        self._need_flush = False

    def _become_follower(self, term: int, lead: str | None) -> None:
        self._reset(term)
        self._lead = lead
        self._role = Role.FOLLOWER
        self._step_role = self._step_follower
        self._tick_role = self._tick_election

    def _become_pre_candidate(self) -> None:
        invariant(self._role != _LEADER, "a leader cannot become a pre-candidate")
        # Neither the term nor the vote changes: a pre-vote commits nobody to anything.
        self._role = Role.PRE_CANDIDATE
        self._lead = None
        self._votes = {}
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election

    def _become_candidate(self) -> None:
        invariant(self._role != _LEADER, "a leader cannot become a candidate")
        self._reset(self._term + 1)
        self._vote = self._id
        self._role = Role.CANDIDATE
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election

    def _become_leader(self) -> None:
        invariant(self._role == Role.CANDIDATE, "only a candidate can become leader")
        self._reset(self._term)
        self._lead = self._id
        self._role = _LEADER
        self._step_role = self._step_leader
        self._tick_role = self._tick_heartbeat
        log = self._log
        self._rebuild_progress()
        me = self._progress.get(self._id)
        if me is not None:
            me.become_replicate()
            me.maybe_update(log.stable_last_index())
        # Entries of earlier terms must be committed before any membership change (§4.1 and the
        # 2015 single-server bug): the pending index covers everything in the log now.
        self._pending_conf_index = log.last_index()
        # The no-op entry of the new term (§5.4.2, §8): committing it commits everything before.
        log.append_new(self._term, (b"",))
        self._need_flush = True

    def _rebuild_progress(self) -> None:
        """Leader: one Progress per member; keep existing ones, create the new ones."""
        old = self._progress
        last = self._log.last_index()
        config = self._config
        progress: dict[str, Progress] = {}
        for node in sorted(self._voters | self._learners):
            pr = old.get(node)
            if pr is None:
                pr = Progress(
                    last + 1,
                    is_learner=node in self._learners,
                    inflight_msgs=config.max_inflight_msgs,
                    inflight_bytes=config.max_inflight_bytes,
                )
                # A new member gets a check-quorum period to answer before it counts as absent.
                pr.recent_active = True
                if node == self._id:
                    pr.last_heard_tick = self._now
            pr.is_learner = node in self._learners
            progress[node] = pr
        self._progress = progress
        self._peers = [(node, pr) for node, pr in progress.items() if node != self._id]
        self._voter_progress = [progress[v] for v in self._voter_list if v in progress]

    def _promotable(self) -> bool:
        return self._id in self._voters

    # --- ticks --------------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout and self._promotable():
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        me = self._progress.get(self._id)
        if me is not None:
            me.last_heard_tick = self._now
        if self._election_elapsed >= self._election_ticks:
            self._election_elapsed = 0
            if self._config.check_quorum:
                self._check_quorum()
                if self._role != _LEADER:
                    return
            if self._transferee is not None:
                # The target did not take over within an election timeout: give up (§3.10).
                self._transferee = None
        if self._heartbeat_elapsed >= self._heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._beat()

    # --- elections ----------------------------------------------------------------------------

    def _hup(self, *, transfer: bool) -> None:
        if self._role == _LEADER or not self._promotable():
            return
        if self._config.pre_vote and not transfer:
            self._campaign_pre_vote()
        else:
            self._campaign(transfer=transfer)

    def _campaign_pre_vote(self) -> None:
        self._become_pre_candidate()
        if self._poll(self._id, True) == quorum.VoteResult.WON:
            self._campaign(transfer=False)
            return
        self._request_votes(MT.PRE_VOTE, self._term + 1, b"")

    def _campaign(self, *, transfer: bool) -> None:
        self._become_candidate()
        if self._poll(self._id, True) == quorum.VoteResult.WON:
            self._become_leader()
            return
        self._request_votes(MT.VOTE, self._term, CAMPAIGN_TRANSFER if transfer else b"")

    def _request_votes(self, kind: MessageType, term: int, context: bytes) -> None:
        log = self._log
        last_index, last_term = log.last_index(), log.last_term()
        for voter in self._voter_list:
            if voter != self._id:
                self._send(
                    Message(kind, voter, self._id, term, last_term, last_index, context=context)
                )

    def _poll(self, voter: str, granted: bool) -> quorum.VoteResult:
        self._votes.setdefault(voter, granted)
        return quorum.vote_result(self._voter_list, self._votes)

    def _handle_vote_request(self, m: Message) -> None:
        # Learners answer too (etcd does the same): a learner may have been promoted without
        # knowing it yet, and the new leader may need its vote. A candidate that knows it is a
        # learner does not count its answer, so a learner's vote never elects anybody wrongly.
        pre = m.type == MT.PRE_VOTE
        can_vote = (
            self._vote == m.sender
            or (self._vote is None and self._lead is None)
            or (pre and m.term > self._term)
        )
        response = MT.PRE_VOTE_RESPONSE if pre else MT.VOTE_RESPONSE
        if can_vote and self._log.is_up_to_date(m.index, m.log_term):
            # The answer carries the term asked for, so a pre-candidate can count it.
            self._send(Message(response, m.sender, self._id, m.term))
            if not pre:
                self._election_elapsed = 0
                self._vote = m.sender
        else:
            self._send(Message(response, m.sender, self._id, self._term, reject=True))

    # --- follower and candidate ---------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == _APPEND:
            self._election_elapsed = 0
            self._lead = m.sender
            self._handle_append(m)
        elif t == MT.HEARTBEAT:
            self._election_elapsed = 0
            self._lead = m.sender
            self._handle_heartbeat(m)
        elif t == MT.SNAPSHOT:
            self._election_elapsed = 0
            self._lead = m.sender
            self._handle_snapshot(m)
        elif t == MT.PROPOSE:
            self._refuse_forwarded(m, REASON_NOT_LEADER)
        elif t == MT.READ_INDEX:
            self._msgs.append(
                Message(
                    MT.READ_INDEX_RESPONSE,
                    m.sender,
                    self._id,
                    self._term,
                    reject=True,
                    context=m.context,
                )
            )
        elif t == MT.TRANSFER_LEADER:
            if self._lead is not None and self._lead != m.sender:
                target = m.context or m.sender.encode()
                self._msgs.append(Message(MT.TRANSFER_LEADER, self._lead, self._id, context=target))
            else:
                self.ignored_messages += 1
        elif t == MT.TIMEOUT_NOW:
            # Leadership transfer: campaign at once, skipping pre-vote (thesis §3.10).
            self._hup(transfer=True)
        else:
            self.ignored_messages += 1

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t == _APPEND or t == MT.HEARTBEAT or t == MT.SNAPSHOT:
            # Another node won this term (§5.2).
            self._become_follower(m.term, m.sender)
            self._step_follower(m)
        elif (t == MT.PRE_VOTE_RESPONSE and self._role == Role.PRE_CANDIDATE) or (
            t == MT.VOTE_RESPONSE and self._role == Role.CANDIDATE
        ):
            if m.sender not in self._voters:
                self.ignored_messages += 1
                return
            result = self._poll(m.sender, not m.reject)
            if result == quorum.VoteResult.WON:
                if self._role == Role.PRE_CANDIDATE:
                    self._campaign(transfer=False)
                else:
                    self._become_leader()
            elif result == quorum.VoteResult.LOST:
                self._become_follower(self._term, None)
        elif t == MT.PROPOSE:
            self._refuse_forwarded(m, REASON_NO_LEADER)
        elif t == MT.READ_INDEX:
            self._msgs.append(
                Message(
                    MT.READ_INDEX_RESPONSE,
                    m.sender,
                    self._id,
                    self._term,
                    reject=True,
                    context=m.context,
                )
            )
        else:
            self.ignored_messages += 1

    def _handle_append(self, m: Message) -> None:
        log = self._log
        if m.index < log.committed:
            # Everything up to our commit index is known to match: say where we stand.
            self._send(Message(_APPEND_RESPONSE, m.sender, self._id, self._term, 0, log.committed))
            return
        ents = m.entries
        if ents:
            n = len(ents)
            first, last = ents[0], ents[-1]
            if (
                first[1] != m.index + 1
                or last[1] != m.index + n
                or last[0] > m.term
                or first[0] < m.log_term
            ):
                self.ignored_messages += 1
                return
        if not log.match_term(m.index, m.log_term):
            # §5.3 with fast backtracking: hint at the last entry whose term is not above the
            # leader's term at m.index, so the leader skips a whole term per round trip.
            hint, hint_term = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
            self._send(
                Message(
                    _APPEND_RESPONSE,
                    m.sender,
                    self._id,
                    self._term,
                    hint_term,
                    m.index,
                    (),
                    0,
                    True,
                    hint,
                )
            )
            return
        last_new = m.index + len(ents)
        if ents:
            conflict = self._find_conflict(ents)
            if conflict:
                if conflict <= log.committed:
                    # A leader never rewrites committed entries: this message is garbage.
                    self.ignored_messages += 1
                    return
                self._append_entries(ents[conflict - m.index - 1 :])
        if log.commit_to(min(m.commit, last_new)):
            self._on_commit_advanced()
        self._send(Message(_APPEND_RESPONSE, m.sender, self._id, self._term, 0, last_new))

    def _find_conflict(self, ents: Sequence[Entry]) -> int:
        """The index of the first of `ents` that is not in the log (0 if all are)."""
        log = self._log
        last = log.last_index()
        if ents[0][1] > last:
            return ents[0][1]
        for entry in ents:
            index = entry[1]
            if index > last or log.term_or_none(index) != entry[0]:
                return index
        return 0

    def _handle_heartbeat(self, m: Message) -> None:
        # The leader sends min(commit, what we acknowledged), which our log holds; clamping to
        # our last index keeps a bogus commit from crashing us.
        if self._log.commit_to(min(m.commit, self._log.last_index())):
            self._on_commit_advanced()
        self._msgs.append(
            Message(
                MT.HEARTBEAT_RESPONSE,
                m.sender,
                self._id,
                self._term,
                index=m.index,
                context=m.context,
            )
        )

    def _handle_snapshot(self, m: Message) -> None:
        meta = m.snapshot
        if meta is None or meta.index <= 0 or meta.term <= 0 or meta.term > m.term:
            self.ignored_messages += 1
            return
        log = self._log
        if meta.index <= log.committed:
            # Stale: we already have all of it. Tell the leader where we are.
            self._send(Message(_APPEND_RESPONSE, m.sender, self._id, self._term, 0, log.committed))
            return
        if log.match_term(meta.index, meta.term):
            # Our log already holds the snapshot's last entry: just commit up to it.
            if log.commit_to(meta.index):
                self._on_commit_advanced()
        else:
            log.restore(meta)
            self._conf_indices = []
            self._set_conf(meta.conf_state)
            if self._role != _LEADER and not self._promotable():
                self._election_elapsed = 0
        self._send(Message(_APPEND_RESPONSE, m.sender, self._id, self._term, 0, meta.index))

    def _handle_read_index_response(self, m: Message) -> None:
        # Valid whatever our term now: the leader confirmed its leadership after the request.
        if m.reject:
            self._dropped.append(DroppedProposal(m.context, REASON_READ_REFUSED))
        else:
            self._read_states.append(ReadState(m.index, m.context))

    def _forward_proposal(self, entries: tuple[Entry, ...]) -> None:
        if self._id in self._learners:
            raise ProposalDroppedError(REASON_LEARNER, leader_id=self._lead)
        if self._lead is None:
            raise ProposalDroppedError(REASON_NO_LEADER)
        if not self._config.forward_proposals:
            raise ProposalDroppedError(REASON_NOT_LEADER, leader_id=self._lead)
        self._msgs.append(Message(MT.PROPOSE, self._lead, self._id, entries=entries))

    def _refuse_forwarded(self, m: Message, reason: str) -> None:
        """Send a forwarded proposal back to its sender, which reports it in Ready.dropped."""
        if m.entries:
            self._msgs.append(
                Message(
                    MT.PROPOSE,
                    m.sender,
                    self._id,
                    entries=m.entries,
                    reject=True,
                    context=reason.encode(),
                )
            )

    # --- leader -------------------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == _APPEND_RESPONSE:
            self._handle_append_response(m)
        elif t == MT.HEARTBEAT_RESPONSE:
            self._handle_heartbeat_response(m)
        elif t == MT.BEAT:
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

    def _handle_append_response(self, m: Message) -> None:
        pr = self._progress.get(m.sender)
        if pr is None or m.sender == self._id:
            self.ignored_messages += 1
            return
        pr.recent_active = True
        log = self._log
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint, _ = log.find_conflict_by_term(hint, m.log_term)
            if pr.maybe_decrease_to(m.index, hint):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._need_flush = True
            return
        index = m.index
        if index > log.last_index():
            self.ignored_messages += 1
            return
        was_paused = pr.is_paused()
        if pr.maybe_update(index) or (pr.match == index and pr.state == ProgressState.PROBE):
            state = pr.state
            if state == ProgressState.REPLICATE:
                pr.inflights.free_le(index)
            elif state == ProgressState.PROBE:
                pr.become_replicate()
            elif pr.match + 1 >= log.first_index():
                # The snapshot (or a newer one the application sent instead) is installed.
                pr.become_probe()
                pr.become_replicate()
            self._need_flush = True
            self._maybe_commit()
            if self._role != _LEADER:
                return
            if m.sender == self._transferee and pr.match == log.last_index():
                self._msgs.append(Message(MT.TIMEOUT_NOW, m.sender, self._id, self._term))
        elif was_paused:
            self._need_flush = True

    def _handle_heartbeat_response(self, m: Message) -> None:
        pr = self._progress.get(m.sender)
        if pr is None or m.sender == self._id:
            self.ignored_messages += 1
            return
        pr.recent_active = True
        # The lease runs from when the answered heartbeat was SENT (its tick comes back in
        # `index`), not from when the answer arrived: the follower's promise not to vote for
        # anybody else runs from when it received the heartbeat (thesis §6.4.1). A late answer
        # therefore extends the lease by less, never beyond what the follower promised.
        sent = min(m.index, self._now)
        if sent > pr.last_heard_tick:
            pr.last_heard_tick = sent
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            # The follower is alive: let one more APPEND go in case acks were lost.
            pr.inflights.free_first()
        if pr.match < self._log.last_index():
            self._nudge(pr)
        elif pr.state == ProgressState.PROBE:
            self._need_flush = True
        if m.context:
            self._read_ack(m.context, m.sender)

    def _handle_snapshot_status(self, m: Message) -> None:
        pr = self._progress.get(m.sender)
        if pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if m.reject:
            pr.pending_snapshot = 0
        pr.become_probe()
        # Success: wait for the follower's APPEND_RESPONSE. Failure: retry after a heartbeat.
        pr.probe_sent = True

    def _check_quorum(self) -> None:
        """Step down unless a quorum was heard from during the last election timeout (§6.2)."""
        active = {node for node, pr in self._peers if pr.recent_active}
        active.add(self._id)
        if not quorum.has_quorum(self._voter_list, active):
            self._become_follower(self._term, None)
            return
        for _, pr in self._peers:
            pr.recent_active = False

    def _check_leader_accepts(self, size: int) -> None:
        if self._transferee is not None:
            raise ProposalDroppedError(REASON_TRANSFER, leader_id=self._id)
        log = self._log
        uncommitted = log.mem_bytes(log.committed + 1, log.last_index() + 1)
        if uncommitted and uncommitted + size > self._max_uncommitted_bytes:
            raise ProposalDroppedError(REASON_UNCOMMITTED, leader_id=self._id)

    def _handle_forwarded_proposal(self, m: Message) -> None:
        ents = m.entries
        if not ents:
            return
        try:
            self._check_leader_accepts(entries_bytes(ents))
        except ProposalDroppedError as exc:
            self._refuse_forwarded(m, exc.reason)
            return
        if not all(e[2] in (EntryType.NORMAL, EntryType.CONF_CHANGE) for e in ents):
            self.ignored_messages += 1
            return
        log = self._log
        first = log.last_index() + 1
        conf_indices = conf_change_indices(ents)
        if conf_indices:
            if len(conf_indices) > 1 or self._pending_conf_index > log.committed:
                self._refuse_forwarded(m, REASON_CONF_CHANGE_PENDING)
                return
            change = _decode_conf_change(ents[0].data if len(ents) == 1 else b"")
            if len(ents) != 1 or change is None or self._conf_change_problem(change) is not None:
                self._refuse_forwarded(m, REASON_CONF_CHANGE_INVALID)
                return
            self._pending_conf_index = first
        term = self._term
        self._append_entries(
            [Entry(term, first + k, EntryType(e[2]), e[3]) for k, e in enumerate(ents)]
        )
        self._need_flush = True

    def _conf_change_problem(self, change: ConfChange) -> str | None:
        """Why `change` makes no sense in the current configuration (None if it does)."""
        node = change.node_id
        if not isinstance(node, str) or not node:
            return "the node id must be a non-empty str"
        if change.type == ConfChangeType.ADD_VOTER and node in self._voters:
            return f"{node!r} is already a voter"
        if change.type == ConfChangeType.ADD_LEARNER and node in self._learners:
            return f"{node!r} is already a learner"
        if change.type == ConfChangeType.REMOVE and not (
            node in self._voters or node in self._learners
        ):
            return f"{node!r} is not a member"
        if change.type != ConfChangeType.ADD_VOTER and self._voters == {node}:
            return f"{node!r} is the last voter"
        return None

    def _start_transfer(self, target: str) -> None:
        if self._transferee is not None:
            if self._transferee == target:
                return
            self._transferee = None
        if target == self._id or target not in self._progress:
            return
        # The transfer must finish within one election timeout (§3.10).
        self._election_elapsed = 0
        self._transferee = target
        pr = self._progress[target]
        if pr.match == self._log.last_index():
            self._msgs.append(Message(MT.TIMEOUT_NOW, target, self._id, self._term))
        else:
            self._nudge(pr)

    def _nudge(self, pr: Progress) -> None:
        """Make the next flush send `pr` at least an empty APPEND after what was sent.

        If entries were lost on the way, the follower rejects it and replication restarts from
        its match index instead of waiting forever for acks that will not come.
        """
        if pr.state == ProgressState.REPLICATE:
            pr.sent_commit = -1
        self._need_flush = True

    def _maybe_commit(self) -> bool:
        """Commit the highest index stored on a quorum, if it is of the current term (§5.4.2)."""
        voters = self._voter_progress
        if not voters:
            return False
        matches = sorted([pr.match for pr in voters], reverse=True)
        index = matches[len(matches) // 2]
        log = self._log
        if index > log.committed and log.term_or_none(index) == self._term:
            log.commit_to(index)
            self._on_commit_advanced()
            return True
        return False

    def _on_commit_advanced(self) -> None:
        if self._conf_indices and self._conf_indices[0] <= self._log.committed:
            self._apply_committed_conf_changes()
        if self._role == _LEADER:
            self._need_flush = True
            if self._reads_waiting_commit and self._committed_in_term():
                waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
                for request, lease in waiting:
                    self._leader_read(request, lease)

    # --- sending to followers -----------------------------------------------------------------

    def _flush(self) -> None:
        """Leader: send whatever each follower may receive now (entries, commit index).

        Runs once per Ready rather than once per event, so many proposals and acks between two
        Readys share APPEND messages.
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
        for node, pr in self._peers:
            state = pr.state
            if state == ProgressState.REPLICATE:
                inflights = pr.inflights
                while (
                    pr.next <= last and pr.state == ProgressState.REPLICATE and not inflights.full()
                ):
                    if not self._send_append(node, pr, last):
                        break
                if pr.sent_commit < commit and pr.state == ProgressState.REPLICATE:
                    # Nothing new to send, but the follower should learn the commit index.
                    self._send_append(node, pr, pr.next - 1)
            elif state == ProgressState.PROBE and not pr.probe_sent:
                self._send_append(node, pr, last)

    def _send_append(self, node: str, pr: Progress, last: int) -> bool:
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
            except CompactedError:
                return self._send_snapshot(node, pr)
        commit = log.committed
        self._msgs.append(
            Message(_APPEND, node, self._id, self._term, prev_term, prev, tuple(ents), commit)
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
        """The follower needs compacted entries: send the snapshot point (§7)."""
        if not pr.recent_active:
            # Do not start streaming a snapshot to a member that does not answer.
            return False
        meta = self._log.storage.snapshot_meta()
        if meta.index <= 0:
            return False
        self._msgs.append(Message(MT.SNAPSHOT, node, self._id, self._term, snapshot=meta))
        pr.become_snapshot(meta.index)
        return True

    def _beat(self) -> None:
        ro = self._read_only
        if ro.has_queued():
            self._bcast_heartbeat(ro.start_round(self._log.committed))
        else:
            self._bcast_heartbeat(ro.latest_round())

    def _bcast_heartbeat(self, context: bytes) -> None:
        """Send every member a heartbeat carrying the commit index it can use, the read round
        id `context`, and in `index` this tick (echoed back, for the lease)."""
        commit = self._log.committed
        term = self._term
        me = self._id
        now = self._now
        for node, pr in self._peers:
            self._msgs.append(
                Message(
                    MT.HEARTBEAT,
                    node,
                    me,
                    term,
                    0,
                    now,
                    (),
                    min(pr.match, commit),
                    False,
                    0,
                    context,
                )
            )

    # --- reads --------------------------------------------------------------------------------

    def _committed_in_term(self) -> bool:
        return self._log.term_or_none(self._log.committed) == self._term

    def _leader_read(self, request: ReadRequest, lease: bool) -> None:
        if not self._committed_in_term():
            # A new leader learns the true commit index only once an entry of its own term is
            # committed (thesis §6.4 step 1): until then reads wait.
            if len(self._reads_waiting_commit) >= self._max_pending_reads:
                self._drop_read(request, REASON_TOO_MANY_READS)
            else:
                self._reads_waiting_commit.append((request, lease))
            return
        commit = self._log.committed
        if self._voters == {self._id} or (lease and self._lease_valid()):
            self._answer_read(request, commit)
            return
        ro = self._read_only
        if not ro.has_room():
            self._drop_read(request, REASON_TOO_MANY_READS)
            return
        ro.enqueue(request)
        # The round starts at the next flush, so every read made before the next Ready shares it.
        self._need_flush = True

    def _lease_valid(self) -> bool:
        """Whether a quorum answered within the lease (thesis §6.4.1): then no other leader can
        have been elected yet, since those voters ignore candidates for an election timeout."""
        if self._lease_ticks <= 0 or self._transferee is not None:
            return False
        progress = self._progress
        now = self._now

        def heard(node: str) -> int:
            if node == self._id:
                return now
            pr = progress.get(node)
            return pr.last_heard_tick if pr is not None else _NEVER

        return quorum.quorum_tick(self._voter_list, heard) > now - self._lease_ticks

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
            self._read_states.append(ReadState(index, request.context))
        else:
            self._msgs.append(
                Message(
                    MT.READ_INDEX_RESPONSE,
                    request.sender,
                    self._id,
                    self._term,
                    index=index,
                    context=request.context,
                )
            )

    def _drop_read(self, request: ReadRequest, reason: str) -> None:
        if request.sender is None or request.sender == self._id:
            self._dropped.append(DroppedProposal(request.context, reason))
        else:
            self._msgs.append(
                Message(
                    MT.READ_INDEX_RESPONSE,
                    request.sender,
                    self._id,
                    self._term,
                    reject=True,
                    context=request.context,
                )
            )

    def _drop_leader_reads(self) -> None:
        """The leader steps down: its pending reads can no longer be confirmed."""
        for request in self._read_only.drain():
            self._drop_read(request, REASON_NOT_LEADER)
        waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
        for request, _ in waiting:
            self._drop_read(request, REASON_NOT_LEADER)

    # --- the log and the configuration --------------------------------------------------------

    def _append_entries(self, ents: Sequence[Entry]) -> None:
        """Append (replacing any suffix from the first index on) and track CONF_CHANGE entries."""
        if not ents:
            return
        first = ents[0][1]
        if self._conf_indices and self._conf_indices[-1] >= first:
            self._conf_indices = [i for i in self._conf_indices if i < first]
        self._log.append(ents)
        self._conf_indices.extend(conf_change_indices(ents))

    def _apply_committed_conf_changes(self) -> None:
        """Apply every CONF_CHANGE entry that is now committed (etcd style: at commit time)."""
        log = self._log
        conf = self._conf
        while self._conf_indices and self._conf_indices[0] <= log.committed:
            index = self._conf_indices.pop(0)
            change = _decode_conf_change(log.entries(index, index + 1)[0].data)
            if change is not None:
                conf = apply_conf_change(conf, change)
        if conf != self._conf:
            self._set_conf(conf)
            self._on_conf_changed()

    def _set_conf(self, conf: ConfState) -> None:
        self._conf = conf
        self._voters = frozenset(conf.voters)
        self._learners = frozenset(conf.learners)
        self._voter_list = tuple(sorted(conf.voters))

    def _on_conf_changed(self) -> None:
        if self._role != _LEADER:
            if self._role != Role.FOLLOWER and not self._promotable():
                self._become_follower(self._term, None)
            return
        members = self._voters | self._learners
        log = self._log
        for node, pr in self._peers:
            prev_term = log.term_or_none(pr.next - 1)
            if node not in members and prev_term is not None:
                # A last (empty) APPEND with the commit index lets a removed member that holds
                # the change apply it, so it knows it was removed and stops campaigning
                # (§4.2.3). It commits only if its log matches ours up to what was sent.
                self._msgs.append(
                    Message(
                        _APPEND,
                        node,
                        self._id,
                        self._term,
                        prev_term,
                        pr.next - 1,
                        (),
                        log.committed,
                    )
                )
        self._rebuild_progress()
        if self._transferee is not None and self._transferee not in self._voters:
            self._transferee = None
        if not self._promotable():
            # Removed (or demoted): tell the others the new commit index, hand over to a caught
            # up voter if there is one, and step down (thesis §4.2.2).
            self._flush()
            last = self._log.last_index()
            for node, pr in self._peers:
                if node in self._voters and pr.match == last:
                    self._msgs.append(Message(MT.TIMEOUT_NOW, node, self._id, self._term))
                    break
            self._become_follower(self._term, None)
            return
        self._need_flush = True
        self._maybe_commit()


def _decode_conf_change(data: bytes) -> ConfChange | None:
    try:
        return ConfChange.decode(data)
    except ValueError:
        return None

"""`RaftCore`: the Raft algorithm as a pure, deterministic state machine (etcd's RawNode).

The application feeds it ticks, messages from peers and proposals, and pulls `Ready` batches of
work: state to persist, messages to send (some only after persisting), committed entries to
apply, reads that may be served. It never does I/O, never reads a clock and draws randomness
only from the `random.Random` it is given (for election jitter). Given the same seed and the
same sequence of calls it does exactly the same thing. What the Multi-Paxos core does the same
way (Ready assembly, `advance`, the leader's flush loop and pipelining, heartbeats and read
rounds, forwarded requests) lives in the kernel (kvstore/consensus/); this module holds what is
Raft, every role transition (`_become_follower/pre_candidate/candidate/leader`) included.

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

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvstore.consensus import quorum
from kvstore.consensus.config import Config, apply_conf_change
from kvstore.consensus.core_base import (
    CAMPAIGN_TRANSFER,
    TERMLESS,
    CoreBase,
)
from kvstore.consensus.log import conf_change_indices
from kvstore.consensus.progress import PeerProgress, Progress, ProgressState
from kvstore.consensus.protocol import CoreStatus
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    DropReason,
    Entry,
    EntryType,
    LogView,
    Message,
    MessageType,
    Role,
)
from kvstore.errors import InvalidArgumentError, ProposalDroppedError, invariant

if TYPE_CHECKING:
    import random

__all__ = [
    "CAMPAIGN_TRANSFER",
    "CoreStatus",
    "PeerProgress",
    "ProgressState",
    "RaftCore",
]

_NEVER = -(1 << 62)

MT = MessageType
_APPEND = MT.APPEND
_APPEND_RESPONSE = MT.APPEND_RESPONSE
_LEADER = Role.LEADER


class RaftCore(CoreBase):
    """One Raft member, without I/O. Not thread-safe: one caller at a time."""

    # Every type this core understands; anything else (types.py may grow types for other
    # protocols) is ignored before it can touch the term.
    _KNOWN = TERMLESS | {
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
    # Messages that state something the sender must have persisted first: a candidate's vote
    # for itself, a vote granted, entries acknowledged.
    _AFTER_PERSIST = frozenset(
        {MT.VOTE, MT.VOTE_RESPONSE, MT.PRE_VOTE_RESPONSE, MT.APPEND_RESPONSE}
    )
    _APPEND_TYPE = _APPEND

    def __init__(self, config: Config, log: LogView, rng: random.Random) -> None:
        super().__init__(config, rng)
        self._lease_ticks = config.effective_lease_ticks
        self._pending_conf_index = 0
        self._now = 0
        """Ticks since this core was created (the leader's clock for its lease)."""
        self._follower_handlers = {
            _APPEND: self._handle_append,
            MT.HEARTBEAT: self._handle_heartbeat,
            MT.SNAPSHOT: self._handle_snapshot,
        }
        self._leader_handlers = {
            _APPEND_RESPONSE: self._handle_append_response,
            MT.HEARTBEAT_RESPONSE: self._handle_heartbeat_response,
        }
        self._conf_indices: list[int] = []
        """Indices of CONF_CHANGE entries in the log that are not committed yet, in order."""
        opened = self._open_log(log)
        if opened is None:
            term, vote = 1, None
        else:
            hard, conf = opened
            self._set_conf(conf)
            self._replay_conf_changes()
            term, vote = hard.term, hard.vote
        self._term = term
        self._vote = vote
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

    # --- inputs -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advance logical time by one tick (elections, heartbeats, quorum checks, leases)."""
        self._now += 1
        self._tick_role()

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose a single-server membership change. Returns its index on the leader, 0 when
        forwarded. Only one change may be pending (uncommitted) at a time."""
        data = change.encode()
        if self._role != _LEADER:
            self._forward_proposal((Entry(0, 0, EntryType.CONF_CHANGE, data),))
            return 0
        if self._transferee is not None:
            raise ProposalDroppedError(DropReason.TRANSFER, leader_id=self._id)
        if self._pending_conf_index > self._log.committed:
            raise ProposalDroppedError(DropReason.CONF_CHANGE_PENDING, leader_id=self._id)
        problem = self._conf_change_problem(change)
        if problem is not None:
            raise InvalidArgumentError(f"{DropReason.CONF_CHANGE_INVALID}: {problem}")
        index = self._log.last_index() + 1
        self._append_entries([Entry(self._term, index, EntryType.CONF_CHANGE, data)])
        self._pending_conf_index = index
        self._need_flush = True
        return index

    # --- the message dispatcher ---------------------------------------------------------------

    def _step(self, m: Message) -> None:
        t = m.type
        if t not in TERMLESS:
            term = m.term
            if term <= 0:
                self.ignored_messages += 1
                return
            if term > self._term:
                if (t == MT.VOTE or t == MT.PRE_VOTE) and self._in_lease(m):
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

        if t == MT.VOTE or t == MT.PRE_VOTE:
            self._handle_vote_request(m)
        else:
            self._step_any_role(m)

    def _step_stale(self, m: Message) -> None:
        """A message from an older term (§5.1: a stale term is rejected or ignored)."""
        t = m.type
        if t == _APPEND or t == MT.HEARTBEAT:
            # Tell a deposed leader about the newer term so it steps down (it may have been cut
            # off and, with pre-vote or check-quorum, would otherwise never learn of it).
            self._out.send(Message.append_response(m.sender, self._id, self._term, 0))
        elif t == MT.VOTE or t == MT.PRE_VOTE:
            pre = t == MT.PRE_VOTE
            self._out.send(
                Message.vote_response(m.sender, self._id, self._term, pre=pre, reject=True)
            )
        else:
            self.ignored_messages += 1

    # --- roles --------------------------------------------------------------------------------

    def _become_follower(self, term: int, lead: str | None) -> None:
        self._reset(term)
        self._lead = lead
        self._role = Role.FOLLOWER
        self._step_role = self._step_follower
        self._tick_role = self._tick_election

    def _reset(self, term: int) -> None:
        super()._reset(term)
        self._pending_conf_index = 0

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
        # Fresh volatile state for the new term's leader.
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
        self._progress.set(progress, self._id, self._voter_list)

    # --- ticks --------------------------------------------------------------------------------

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

    def _campaign_pre_vote(self) -> None:
        self._become_pre_candidate()
        if self._poll(self._id, True) == quorum.VoteResult.WON:
            self._campaign(transfer=False)
            return
        self._request_votes(self._term + 1, b"", pre=True)

    def _campaign(self, *, transfer: bool) -> None:
        self._become_candidate()
        if self._poll(self._id, True) == quorum.VoteResult.WON:
            self._become_leader()
            return
        self._request_votes(self._term, CAMPAIGN_TRANSFER if transfer else b"", pre=False)

    def _request_votes(self, term: int, context: bytes, *, pre: bool) -> None:
        log = self._log
        last_index, last_term = log.last_index(), log.last_term()
        for voter in self._voter_list:
            if voter != self._id:
                self._out.send(
                    Message.vote_request(
                        voter, self._id, term, last_term, last_index, context, pre=pre
                    )
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
        if can_vote and self._log.is_up_to_date(m.index, m.log_term):
            # The answer carries the term asked for, so a pre-candidate can count it.
            self._out.send(Message.vote_response(m.sender, self._id, m.term, pre=pre, reject=False))
            if not pre:
                self._election_elapsed = 0
                self._vote = m.sender
        else:
            self._out.send(
                Message.vote_response(m.sender, self._id, self._term, pre=pre, reject=True)
            )

    # --- follower and candidate ---------------------------------------------------------------

    def _step_campaign(self, m: Message) -> None:
        t = m.type
        if (t == MT.PRE_VOTE_RESPONSE and self._role == Role.PRE_CANDIDATE) or (
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
        else:
            self.ignored_messages += 1

    def _handle_append(self, m: Message) -> None:
        log = self._log
        if m.index < log.committed:
            # Everything up to our commit index is known to match: say where we stand.
            self._out.send(Message.append_response(m.sender, self._id, self._term, log.committed))
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
            self._out.send(
                Message.append_rejected(m.sender, self._id, self._term, m.index, hint, hint_term)
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
        self._out.send(Message.append_response(m.sender, self._id, self._term, last_new))

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
        self._answer_heartbeat(m, m.index)

    def _handle_snapshot(self, m: Message) -> None:
        meta = m.snapshot
        if meta is None or meta.index <= 0 or meta.term <= 0 or meta.term > m.term:
            self.ignored_messages += 1
            return
        log = self._log
        if meta.index <= log.committed:
            # Stale: we already have all of it. Tell the leader where we are.
            self._out.send(Message.append_response(m.sender, self._id, self._term, log.committed))
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
        self._out.send(Message.append_response(m.sender, self._id, self._term, meta.index))

    # --- leader -------------------------------------------------------------------------------

    def _handle_append_response(self, m: Message) -> None:
        pr = self._answering_peer(m)
        if pr is None:
            return
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
        if self._acked(pr, index):
            if self._role != _LEADER:
                return
            if m.sender == self._transferee and pr.match == log.last_index():
                self._out.messages.append(Message.timeout_now(m.sender, self._id, self._term))

    def _handle_heartbeat_response(self, m: Message) -> None:
        pr = self._answering_peer(m)
        if pr is None:
            return
        # The lease runs from when the answered heartbeat was SENT (its tick comes back in
        # `index`), not from when the answer arrived: the follower's promise not to vote for
        # anybody else runs from when it received the heartbeat (thesis §6.4.1). A late answer
        # therefore extends the lease by less, never beyond what the follower promised.
        sent = min(m.index, self._now)
        if sent > pr.last_heard_tick:
            pr.last_heard_tick = sent
        self._heartbeat_answered(pr, m)

    def _handle_forwarded_proposal(self, m: Message) -> None:
        ents = m.entries
        if not ents:
            return
        if not self._leader_takes_forwarded(m):
            return
        if not all(e[2] in (EntryType.NORMAL, EntryType.CONF_CHANGE) for e in ents):
            self.ignored_messages += 1
            return
        log = self._log
        first = log.last_index() + 1
        conf_indices = conf_change_indices(ents)
        if conf_indices:
            if len(conf_indices) > 1 or self._pending_conf_index > log.committed:
                self._refuse_forwarded(m, DropReason.CONF_CHANGE_PENDING)
                return
            change = _decode_conf_change(ents[0].data if len(ents) == 1 else b"")
            if len(ents) != 1 or change is None or self._conf_change_problem(change) is not None:
                self._refuse_forwarded(m, DropReason.CONF_CHANGE_INVALID)
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
            self._out.messages.append(Message.timeout_now(target, self._id, self._term))
        else:
            self._nudge(pr)

    def _maybe_commit(self) -> bool:
        """Commit the highest index stored on a quorum, if it is of the current term (§5.4.2)."""
        index = self._progress.quorum_match()
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
            self._release_waiting_reads()

    # --- reads --------------------------------------------------------------------------------

    def _reads_may_go(self) -> bool:
        # A new leader learns the true commit index only once an entry of its own term is
        # committed (thesis §6.4 step 1).
        return self._log.term_or_none(self._log.committed) == self._term

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

    def _on_conf_changed(self) -> None:
        if self._role != _LEADER:
            if self._role != Role.FOLLOWER and not self._promotable():
                self._become_follower(self._term, None)
            return
        members = self._voters | self._learners
        log = self._log
        for node, pr in self._progress.peers:
            prev_term = log.term_or_none(pr.next - 1)
            if node not in members and prev_term is not None:
                # A last (empty) APPEND with the commit index lets a removed member that holds
                # the change apply it, so it knows it was removed and stops campaigning
                # (§4.2.3). It commits only if its log matches ours up to what was sent.
                self._out.messages.append(
                    Message.append(
                        node, self._id, self._term, prev_term, pr.next - 1, (), log.committed
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
            for node, pr in self._progress.peers:
                if node in self._voters and pr.match == last:
                    self._out.messages.append(Message.timeout_now(node, self._id, self._term))
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


if TYPE_CHECKING:
    from kvstore.consensus.protocol import ConsensusCore

    def _raft_is_a_core(core: RaftCore) -> ConsensusCore:
        """mypy checks that `RaftCore` satisfies the kernel's `ConsensusCore`."""
        return core

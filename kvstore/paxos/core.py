"""`PaxosCore`: Multi-Paxos as a pure, deterministic state machine, behind the Raft core's shape.

Lamport's "Paxos Made Simple" (PMS below) with a distinguished proposer (PMS §3): every member
is proposer, acceptor and learner at once; one of them, the leader, runs phase 1 once for all
future slots and then phase 2 for batches of slots. The core takes the same inputs as
`RaftCore` (ticks, messages, proposals, reads) and hands out the same `Ready` batches, `Entry`,
`HardState`, `Message` and `SnapshotMeta` values over the same `LogView`, so the node, the redo
log, the state machine, the transport and the simulator run it unchanged. It never does I/O,
never reads a clock, and draws randomness only from the `random.Random` it is given. What it
does exactly as the Raft core does (Ready assembly, the leader's pipelining with `Progress`,
heartbeats and read rounds, forwarded requests, leadership-transfer plumbing) it inherits from
`CoreBase` (kvstore/consensus/core_base.py); this module holds what is Paxos.

How Paxos maps onto the shared types
------------------------------------
- Ballot -> `term`. Ballots are unique per proposer: voter `r` (rank in the sorted fixed
  configuration of `n` voters) owns the ballots `b` with `b % n == r` (ballot.py).
- The acceptor's promised ballot -> `HardState.term`; the proposer it promised -> `vote`; the
  chosen prefix (every slot through it is chosen and known here) -> `commit`.
- Slot -> `index`. A value accepted for a slot is `Entry(term=ballot it was accepted in,
  index=slot, type, data)`; a no-op is a NORMAL entry with empty data. Values known chosen keep
  whatever ballot they were accepted in: they are final.
- Ready fields keep their Raft meanings: `hard_state`, `entries` and `snapshot` are persisted
  BEFORE `persisted_messages` go (PREPARE, PROMISE, ACCEPTED are there: a promise or an
  acceptance is durable before anyone hears of it, so a crash never makes an acceptor forget
  one); `messages` go at once (the leader's ACCEPTs: its own acceptance counts only once
  persisted, at `advance()`); `committed_entries` are the chosen values in slot order.

The acceptor's log
------------------
The redo log keeps a contiguous log and cuts everything after the first index of an append
(etcd semantics). Paxos forbids an acceptor to forget an accepted value, so the acceptor:
- accepts a batch of ballot `b` only if it can place it: the batch must start at or below the
  end of its "run", the slots after its chosen prefix that it accepted in ballot `b` (one leader
  per ballot, and it sends in slot order, so those form one contiguous run);
- when a batch replaces older values in the middle of its log, re-appends its own older values
  after the batch in the same Ready, up to the leader's recovery end (carried in every ACCEPT as
  `reject_hint`). Values after the recovery end with a ballot below `b` can never be chosen
  (the leader's phase-1 quorum reported none there and promised not to accept below `b`), so
  they are dropped;
- installs a snapshot only if it holds no value after it that may still be chosen (installing
  resets the log: a crash between the reset and a re-append would forget them); otherwise it
  refuses, and the leader sends a newer snapshot later (the node streams its latest state);
- may accept a batch past a gap in its run when the leader cannot fill the gap (it compacted
  those chosen slots) and the batch supersedes values the leader recovered (it starts before
  the recovery end): Paxos accepts slot by slot. Its run (what it may learn as chosen) stays
  where it was; its heartbeat answers report the run, so the leader fills the gap from its log
  or, once the superseded slots are chosen, with a snapshot that covers them.
Ballots along such a log need not increase (unlike Raft terms), and a chosen value may carry a
different ballot on different members (a new leader re-proposes in its own ballot every value
it cannot know to be chosen). The value in a slot is what every member agrees on.

Phase 1 and recovery (PMS §2.2, §3)
-----------------------------------
A proposer picks its next ballot above everything it has seen, promises it to itself (durable:
the PREPAREs are persisted messages, so a ballot is never reused after a crash) and asks every
voter for a promise covering every slot after its own commit. A promise carries the acceptor's
commit and its entries after the proposer's commit: the chosen ones (bounded by
`max_append_bytes`) and, in full, every value accepted after its own commit. With a quorum
(itself included once its promise is durable), the proposer learns the chosen values it lacked
and proposes again, in its own ballot, the highest-ballot value of every later slot up to the
last slot reported, filling gaps with no-ops (recovery.py). If the promises do not hold every
chosen value it lacks (compacted away, or over the byte bound), it keeps what they hold and
gives the ballot up; a caught-up proposer wins a later ballot and brings it up to date.

Elections: a follower that hears nothing from a leader for a randomised timeout in
[election_ticks, 2 * election_ticks) becomes a proposer; a proposer that sees a higher ballot
(a refusal, a PREPARE it promises, an ACCEPT) steps down and waits a fresh random timeout
before trying again (randomized backoff, seeded). `Config.pre_vote` means a non-binding
PRE_PREPARE round first, so a member that was cut off does not raise everybody's promised
ballot when it comes back. `Config.check_quorum` means acceptors that heard from a leader
within an election timeout ignore PREPAREs (except for a leadership transfer). A leader that
has not heard from a quorum within an election timeout steps down, always.

Phase 2, learning and catch-up
------------------------------
The leader keeps one `Progress` per acceptor (Raft's PROBE / REPLICATE / SNAPSHOT states and
in-flight limits) and streams ACCEPT batches built once per Ready. An ACCEPTED says how far the
acceptor's run reaches; a slot is chosen once a majority's runs cover it (the leader's own run
counts once persisted). Learners learn the chosen prefix from the `commit` carried by ACCEPTs
and HEARTBEATs (bounded by their own run). A lagging acceptor catches up from the leader's log,
or from a SNAPSHOT when the leader compacted what it needs, exactly as with Raft.

Reads: `read_index` confirms leadership with a quorum round (a HEARTBEAT with the ballot;
acceptors that promised nothing higher answer), batched like the Raft core, and answers the
chosen prefix at request time. A new leader answers only once its recovered slots are chosen.
`lease=True` falls back to the quorum round. Followers forward reads to the leader.

Membership is fixed: `propose_conf_change` raises `ProposalDroppedError`. Leadership transfer:
the leader refuses proposals and tells the target to start phase 1 at once (TIMEOUT_NOW); the
target's PREPAREs bypass the acceptors' check-quorum lease. The transfer is abandoned after an
election timeout.

Known limits
------------
- An overwrite (values of a higher ballot over older ones, with the older tail re-appended) is
  one Ready's `entries`, and the acceptor relies on that append being all-or-nothing across a
  crash. The redo log guarantees it: a TRUNCATE record carries its batch's last index and
  takes effect only once the whole batch is on disk (native/FORMAT.md).
- A PROMISE carries every value the acceptor accepted after its chosen prefix, unbounded (a
  leader bounds that with `max_uncommitted_bytes`, but a promise may exceed a frame limit).
- An acceptor that refuses a snapshot gets another one each heartbeat until one covers the
  values it must keep; each is a full state transfer.

Message fields (`term` is always the sender's ballot, or its higher promise on a refusal):
- PREPARE: `index` = the proposer's commit; `context` = CAMPAIGN_TRANSFER for a transfer.
- PROMISE: `index` = the acceptor's commit; `entries` as above.
- ACCEPT: `index`/`log_term` = the slot before the batch and its ballot at the leader;
  `entries` = the batch; `commit` = the leader's commit; `reject_hint` = its recovery end.
- ACCEPTED: `index` = the end of the acceptor's run (for a batch accepted past a gap: the end
  of the batch); on `reject`, `index` = the slot the refused batch followed and `reject_hint`
  = where the acceptor can take a batch from; with `snapshot` set, that snapshot was refused.
- PRE_PREPARE / PRE_PROMISE: `term` = the ballot the proposer would use.
- HEARTBEAT: `commit` = min(leader commit, that acceptor's known run); `context` = read round.
- HEARTBEAT_RESPONSE: `index` = the end of the acceptor's run; `context` echoed.
- SNAPSHOT: `snapshot` = the point to install; `reject_hint` = the leader's recovery end.
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
from kvstore.consensus.progress import Progress, ProgressState
from kvstore.consensus.types import (
    ConfChange,
    ConfState,
    DropReason,
    Entry,
    EntryType,
    LogView,
    Message,
    MessageType,
    Ready,
    Role,
)
from kvstore.errors import LogCompactedError, ProposalDroppedError, invariant
from kvstore.paxos import messages
from kvstore.paxos.ballot import next_ballot, owner
from kvstore.paxos.recovery import Promise, recover

if TYPE_CHECKING:
    import random

__all__ = ["PaxosCore"]

MT = MessageType
_LEADER = Role.LEADER
_ACCEPT = MT.ACCEPT
_ACCEPTED = MT.ACCEPTED

# Types only the owner of the ballot in `term` may send.
_FROM_OWNER = frozenset(
    {MT.PREPARE, MT.PRE_PREPARE, MT.ACCEPT, MT.HEARTBEAT, MT.SNAPSHOT, MT.TIMEOUT_NOW}
)
_FROM_LEADER = frozenset({MT.ACCEPT, MT.HEARTBEAT, MT.SNAPSHOT})
_NO_REWRITE = 1 << 62


class PaxosCore(CoreBase):
    """One Multi-Paxos member (proposer, acceptor, learner), without I/O. Not thread-safe."""

    # Every type reaches the dispatcher: one this core does not use ends up ignored by the
    # role's step function (after the ballot checks, which only the owner of a ballot passes).
    _KNOWN = frozenset(MessageType)
    # Messages that state something the sender must have persisted first: a ballot it is about
    # to use (PREPARE), a promise (PROMISE), acceptances (ACCEPTED).
    _AFTER_PERSIST = frozenset({MT.PREPARE, MT.PROMISE, MT.ACCEPTED})
    _APPEND_TYPE = _ACCEPT

    def __init__(self, config: Config, log: LogView, rng: random.Random) -> None:
        super().__init__(config, rng)
        self._ballot_floor = 0
        """The highest ballot seen anywhere: the next one we use is above it."""
        self._pre_ballot = 0
        """PRE_CANDIDATE: the ballot asked about in the PRE_PREPARE round."""
        self._promises: dict[str, Promise] = {}
        self._self_promised = False
        self._run_end = 0
        """The last slot of our run: slots (commit, run_end] hold values accepted in the
        promised ballot `_term`. Below commit everything is chosen; `max(run_end, commit)` is
        where a batch of ballot `_term` may start after."""
        self._recovery_end = 0
        """Leader: the last slot that may hold a value chosen in an earlier ballot."""
        self._rewritten_from = _NO_REWRITE
        """The lowest slot rewritten since the last `ready()` (`_NO_REWRITE` if none)."""
        self._follower_handlers = {
            _ACCEPT: self._handle_accept,
            MT.HEARTBEAT: self._handle_heartbeat,
            MT.SNAPSHOT: self._handle_snapshot,
        }
        self._leader_handlers = {
            _ACCEPTED: self._handle_accepted,
            MT.HEARTBEAT_RESPONSE: self._handle_heartbeat_response,
        }
        # A brand-new cluster gets the same committed bootstrap entries as the Raft core (one
        # ADD_VOTER per voter), so the state machine learns the members the same way.
        opened = self._open_log(log)
        if opened is None:
            term, vote = 1, None
        else:
            hard, conf = opened
            self._set_conf(self._bootstrap_conf(conf))
            term, vote = hard.term, hard.vote
        self._term = term
        self._vote = vote
        self._ballot_floor = term
        self._run_end = self._scan_run(self._log.committed)
        self._become_follower(term, None)

    def _bootstrap_conf(self, conf: ConfState) -> ConfState:
        """Restart: the configuration is the snapshot's, plus the bootstrap ADD_VOTER entries
        at the head of the log (the only configuration entries a Paxos cluster ever has)."""
        log = self._log
        index, last = log.first_index(), min(log.committed, log.last_index())
        while index <= last:
            entry = log.entries(index, index + 1)[0]
            if entry.type != EntryType.CONF_CHANGE:
                break
            try:
                conf = apply_conf_change(conf, ConfChange.decode(entry.data))
            except ValueError:
                break
            index += 1
        return conf

    def _scan_run(self, start: int) -> int:
        """The end of the run of ballot `_term` values right after slot `start`."""
        log = self._log
        end = start
        term = self._term
        while log.term_or_none(end + 1) == term:
            end += 1
        return end

    # --- read-only properties -------------------------------------------------------------------

    @property
    def recovery_end(self) -> int:
        """Leader: the last slot phase 1 recovered (0 when not leading)."""
        return self._recovery_end if self._role == _LEADER else 0

    # --- inputs -------------------------------------------------------------------------------

    def propose_conf_change(self, change: ConfChange) -> int:
        """Always refused: the Paxos core runs a fixed configuration."""
        raise ProposalDroppedError(DropReason.MEMBERSHIP_FIXED, leader_id=self._lead)

    # --- outputs -----------------------------------------------------------------------------

    def ready(self) -> Ready:
        """The work to do now, in the order `Ready` documents. Call `advance()` with it next."""
        rd = super().ready()
        # The entries handed out are as rewritten so far; count rewrites afresh (`advance`).
        self._rewritten_from = _NO_REWRITE
        return rd

    def _entries_stable(self, entries: Sequence[Entry]) -> None:
        # Entries rewritten after this Ready was handed out go out again in the next one.
        # Re-appended values keep their ballot, so the last entry may look unchanged while
        # earlier ones were replaced: mark stable only what precedes the rewrite.
        first = entries[0][1]
        upto = min(entries[-1][1], self._rewritten_from - 1)
        if upto >= first:
            last = entries[upto - first]
            self._log.stable_to(last[1], last[0])

    def _advanced_not_leader(self, ready: Ready) -> None:
        # A proposer's own promise counts once it is durable.
        if self._role == Role.CANDIDATE and not self._self_promised:
            hard = ready.hard_state
            if hard is not None and hard.term == self._term and hard.vote == self._id:
                self._self_promised = True
                self._maybe_win()

    # --- the message dispatcher ---------------------------------------------------------------

    def _step(self, m: Message) -> None:
        t = m.type
        if t not in TERMLESS:
            term = m.term
            if term <= 0 or m.sender not in self._voters:
                self.ignored_messages += 1
                return
            if t in _FROM_OWNER and owner(term, self._voter_list) != m.sender:
                self.ignored_messages += 1
                return
            if term > self._ballot_floor:
                self._ballot_floor = term
            if term > self._term:
                if (t == MT.PREPARE or t == MT.PRE_PREPARE) and self._in_lease(m):
                    # A leader was heard from within the election timeout: ignore (§ check_quorum).
                    self.ignored_messages += 1
                    return
                if t == MT.PRE_PREPARE or (t == MT.PRE_PROMISE and not m.reject):
                    # A non-binding question about a future ballot changes nobody's promise.
                    pass
                elif t in _FROM_LEADER:
                    self._become_follower(term, m.sender)
                    self._vote = m.sender
                else:
                    self._become_follower(term, None)
            elif term < self._term:
                self._step_stale(m)
                return

        if t == MT.PREPARE:
            self._handle_prepare(m)
        elif t == MT.PRE_PREPARE:
            self._handle_pre_prepare(m)
        else:
            self._step_any_role(m)

    def _step_stale(self, m: Message) -> None:
        """A message of a lower ballot: refuse it with our promise, so its sender steps down
        (PMS §2.3: the acceptor tells the proposer to abandon a proposal it will not take)."""
        t = m.type
        if t in _FROM_LEADER:
            self._out.send(messages.accept_refused(m.sender, self._id, self._term, 0, 0))
        elif t == MT.PREPARE:
            self._out.send(messages.promise_refused(m.sender, self._id, self._term))
        elif t == MT.PRE_PREPARE:
            self._out.send(messages.pre_promise(m.sender, self._id, self._term, reject=True))
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
        if term != self._term:
            invariant(term > self._term, f"promised ballot would go back from {self._term}")
            self._run_end = self._log.committed
        # Randomized backoff: the base draws a fresh random wait before the next attempt.
        super()._reset(term)
        self._promises = {}
        self._self_promised = False
        self._recovery_end = 0

    def _next_ballot(self) -> int:
        rank = self._voter_list.index(self._id)
        return next_ballot(max(self._term, self._ballot_floor), rank, len(self._voter_list))

    def _campaign_pre_vote(self) -> None:
        """Ask, without promising anything, whether a quorum would promise our next ballot."""
        self._role = Role.PRE_CANDIDATE
        self._lead = None
        self._votes = {self._id: True}
        self._pre_ballot = self._next_ballot()
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election
        self._election_elapsed = 0
        if quorum.vote_result(self._voter_list, self._votes) == quorum.VoteResult.WON:
            self._campaign(transfer=False)
            return
        for voter in self._voter_list:
            if voter != self._id:
                self._out.messages.append(
                    messages.pre_prepare(voter, self._id, self._pre_ballot, self._log.committed)
                )

    def _campaign(self, *, transfer: bool) -> None:
        """Phase 1a (PMS §2.2): promise our next ballot to ourselves, ask everybody else."""
        ballot = self._next_ballot()
        self._reset(ballot)
        self._vote = self._id
        self._role = Role.CANDIDATE
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election
        context = CAMPAIGN_TRANSFER if transfer else b""
        commit = self._log.committed
        for voter in self._voter_list:
            if voter != self._id:
                self._out.send(messages.prepare(voter, self._id, ballot, commit, context))
        # Our own promise counts once it is durable: see advance().

    def _maybe_win(self) -> None:
        """Phase 1 is over once a quorum promised, ourselves included: recover and lead."""
        if not self._self_promised:
            return
        if not quorum.has_quorum(self._voter_list, self._promises.keys() | {self._id}):
            return
        log = self._log
        commit = log.committed
        last = log.last_index()
        own = log.entries(commit + 1, last + 1) if last > commit else []
        promises = [Promise(commit, own)]
        promises.extend(p for node, p in self._promises.items() if node in self._voters)
        rec = recover(self._term, commit, promises)
        if not rec.complete:
            # We lack chosen values the quorum no longer holds for us (compacted, or more than
            # one promise carries): keep what we learned and give the ballot up.
            if rec.learned:
                self._write_over(rec.learned, keep_through=last)
                log.commit_to(rec.learned[-1][1])
            self._become_follower(self._term, None)
            return
        new = rec.learned + rec.proposals
        # Skip what our log already holds (only chosen values can match: the rest is restamped).
        skip = 0
        for entry in rec.learned:
            if log.term_or_none(entry[1]) != entry[0]:
                break
            skip += 1
        if skip < len(new):
            self._overwrite(new[skip:])
        log.commit_to(rec.chosen_through)
        self._become_leader(rec.end)

    def _become_leader(self, recovery_end: int) -> None:
        invariant(self._role == Role.CANDIDATE, "only a proposer in phase 1 can become leader")
        promises = self._promises
        # Fresh volatile state for the new term's leader.
        self._reset(self._term)
        self._lead = self._id
        self._role = _LEADER
        self._step_role = self._step_leader
        self._tick_role = self._tick_heartbeat
        self._recovery_end = recovery_end
        log = self._log
        config = self._config
        commit = log.committed
        progress: dict[str, Progress] = {}
        for node in self._voter_list:
            pr = Progress(
                commit + 1,
                is_learner=False,
                inflight_msgs=config.max_inflight_msgs,
                inflight_bytes=config.max_inflight_bytes,
            )
            pr.recent_active = True
            promise = promises.get(node)
            if node == self._id:
                pr.become_replicate()
                pr.maybe_update(log.stable_last_index())
            elif promise is not None:
                # Its chosen prefix is ours too; everything after it must be accepted again.
                pr.match = min(promise.commit, log.last_index())
                pr.next = pr.match + 1
            progress[node] = pr
        self._progress.set(progress, self._id, self._voter_list)
        self._need_flush = True
        self._maybe_commit()

    # --- ticks --------------------------------------------------------------------------------

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._election_ticks:
            self._election_elapsed = 0
            self._check_quorum()
            if self._role != _LEADER:
                return
            # A transfer that did not finish within an election timeout is abandoned.
            self._transferee = None
        if self._heartbeat_elapsed >= self._heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._beat()

    # --- acceptor (follower) ------------------------------------------------------------------

    def _handle_prepare(self, m: Message) -> None:
        """Phase 1b (PMS §2.2): promise the ballot (now ours) and report accepted values."""
        if m.term != self._term or self._vote not in (None, m.sender):
            self.ignored_messages += 1
            return
        if self._role != Role.FOLLOWER:
            self._become_follower(self._term, None)
        self._vote = m.sender
        self._election_elapsed = 0
        self._out.send(
            messages.promise(
                m.sender, self._id, self._term, self._log.committed, self._promise_entries(m.index)
            )
        )

    def _promise_entries(self, proposer_commit: int) -> tuple[Entry, ...]:
        """What the proposer needs from us: chosen values it lacks (bounded), and every value
        accepted after our chosen prefix (never bounded: the proposer must see them all)."""
        log = self._log
        commit = log.committed
        last = log.last_index()
        lo = proposer_commit + 1
        out: list[Entry] = []
        if lo <= commit and lo >= log.first_index():
            try:
                out = log.entries(lo, commit + 1, self._max_append_bytes)
            except LogCompactedError:
                out = []
        start = max(commit, proposer_commit) + 1
        if start <= last:
            out.extend(log.entries(start, last + 1))
        return tuple(out)

    def _handle_pre_prepare(self, m: Message) -> None:
        # A ballot above our promise reaches here only outside any leader's lease.
        if m.term > self._term:
            self._out.messages.append(
                messages.pre_promise(m.sender, self._id, m.term, reject=False)
            )
        else:
            self._out.messages.append(
                messages.pre_promise(m.sender, self._id, self._term, reject=True)
            )

    def _handle_accept(self, m: Message) -> None:
        """Phase 2b (PMS §2.2): accept a batch of ballot `m.term`, if it can be placed."""
        log = self._log
        commit = log.committed
        ents = m.entries
        prev = m.index
        n = len(ents)
        if n:
            first, last_ent = ents[0], ents[-1]
            if (
                first[1] != prev + 1
                or last_ent[1] != prev + n
                or last_ent[0] > m.term
                or (last_ent[1] > m.commit and last_ent[0] != m.term)
            ):
                self.ignored_messages += 1
                return
        run = self._run_end if self._run_end > commit else commit
        if prev <= run:
            frontier = False
        elif prev <= m.commit and prev <= log.last_index() and prev < m.reject_hint:
            # Past a gap in our run, but the slots up to `prev` are chosen (the leader says so)
            # and the batch supersedes values the leader recovered: accept it here, slot by
            # slot as Paxos allows. The leader compacted the chosen values we lack; we keep our
            # run and learn them from a snapshot once the superseded values are chosen.
            frontier = True
        else:
            # We cannot place it: say from where we can (the leader backs off to there).
            self._out.send(messages.accept_refused(m.sender, self._id, self._term, prev, run))
            return
        end = prev + n
        if n and end > commit:
            skip = commit - prev
            if skip > 0:
                ents = ents[skip:]
            self._place(ents, m.reject_hint)
        if frontier:
            self._out.send(messages.accepted(m.sender, self._id, self._term, end))
            return
        # Slots the leader says are chosen are ours too once the batch is in place; so is our
        # whole run up to the leader's commit (it holds the leader's values).
        if end > run:
            run = end
        self._run_end = run
        if m.commit > log.committed:
            log.commit_to(min(m.commit, run))
        self._out.send(messages.accepted(m.sender, self._id, self._term, run))

    def _place(self, ents: Sequence[Entry], recovery_end: int) -> None:
        """Write `ents` (after our chosen prefix) into the log without forgetting a value that
        may still be chosen: older values after the batch, up to the recovery end, are kept."""
        log = self._log
        last = log.last_index()
        first = ents[0][1]
        if first > last:
            log.append(ents)  # the common case: pure append
            return
        k = 0
        n = len(ents)
        while k < n:
            entry = ents[k]
            if entry[1] > last or log.term_or_none(entry[1]) != entry[0]:
                break
            k += 1
        if k == n:
            return  # we hold all of it already (a resent batch)
        end = ents[-1][1]
        keep_hi = min(last, recovery_end)
        if ents[k][1] <= last and keep_hi > end:
            kept = log.entries(end + 1, keep_hi + 1)
            self._overwrite([*ents[k:], *kept])
        else:
            self._overwrite(ents[k:])

    def _overwrite(self, ents: Sequence[Entry]) -> None:
        """Append `ents`, replacing the log from their first slot on, and remember how far
        back the log changed since the last Ready (see `advance`)."""
        first = ents[0][1]
        if first < self._rewritten_from:
            self._rewritten_from = first
        self._log.append(ents)

    def _write_over(self, ents: Sequence[Entry], *, keep_through: int) -> None:
        """Write `ents` and re-append our own values after them through `keep_through`."""
        log = self._log
        end = ents[-1][1]
        kept = log.entries(end + 1, keep_through + 1) if keep_through > end else []
        self._overwrite([*ents, *kept])

    def _handle_heartbeat(self, m: Message) -> None:
        log = self._log
        run = self._run_end if self._run_end > log.committed else log.committed
        if m.commit > log.committed:
            log.commit_to(min(m.commit, run))
        # Our run tells the leader whether we hold a gap behind what we accepted.
        self._answer_heartbeat(m, run)

    def _handle_snapshot(self, m: Message) -> None:
        meta = m.snapshot
        if meta is None or meta.index <= 0:
            self.ignored_messages += 1
            return
        log = self._log
        commit = log.committed
        run = self._run_end if self._run_end > commit else commit
        if meta.index <= commit:
            self._out.send(messages.accepted(m.sender, self._id, self._term, run))
            return
        if self._holds_values_after(meta.index, m.reject_hint):
            # Installing resets the log, and the values we would re-append after it could be
            # lost by a crash between the two writes. Wait for a snapshot that covers them.
            self._out.send(messages.snapshot_refused(m.sender, self._id, self._term, meta, run))
            return
        log.restore(meta)
        self._rewritten_from = 0
        self._run_end = meta.index
        self._out.send(messages.accepted(m.sender, self._id, self._term, meta.index))

    def _holds_values_after(self, index: int, recovery_end: int) -> bool:
        """Whether our log holds, after `index`, a value that may still be chosen: any value up
        to the leader's recovery end, or one accepted in the leader's (our promised) ballot."""
        log = self._log
        last = log.last_index()
        if last <= index:
            return False
        if min(last, recovery_end) > index:
            return True
        lo = max(index, recovery_end) + 1
        term = self._term
        return any(e[0] == term for e in log.entries(lo, last + 1))

    # --- proposer in phase 1 ------------------------------------------------------------------

    def _step_campaign(self, m: Message) -> None:
        # What a leader sends (a leader of our promised ballot exists, only for a
        # pre-candidate), forwarded proposals and reads are handled by CoreBase._step_candidate.
        t = m.type
        if t == MT.PROMISE:
            if self._role == Role.CANDIDATE and m.term == self._term and not m.reject:
                self._promises[m.sender] = Promise(m.index, m.entries)
                self._maybe_win()
            else:
                self.ignored_messages += 1
        elif t == MT.PRE_PROMISE:
            if self._role != Role.PRE_CANDIDATE or m.term != self._pre_ballot:
                self.ignored_messages += 1
                return
            self._votes.setdefault(m.sender, not m.reject)
            result = quorum.vote_result(self._voter_list, self._votes)
            if result == quorum.VoteResult.WON:
                self._campaign(transfer=False)
            elif result == quorum.VoteResult.LOST:
                self._become_follower(self._term, None)
        else:
            self.ignored_messages += 1

    # --- leader -------------------------------------------------------------------------------

    def _handle_accepted(self, m: Message) -> None:
        pr = self._answering_peer(m)
        if pr is None:
            return
        if m.reject:
            self._handle_accept_refused(pr, m)
            return
        index = m.index
        if index > self._log.last_index():
            self.ignored_messages += 1
            return
        self._acked(pr, index)

    def _handle_accept_refused(self, pr: Progress, m: Message) -> None:
        if m.snapshot is not None:
            # It refused the snapshot: it holds values after it that may still be chosen. Send
            # it the slots after the snapshot point instead (it accepts those past its gap);
            # once they are chosen, a newer snapshot covers them and it can install one.
            if pr.state == ProgressState.PROBE:
                pr.next = max(pr.match, m.snapshot.index) + 1
                pr.probe_sent = False
                self._need_flush = True
            return
        hint = m.reject_hint
        if m.index >= pr.match and hint < pr.match:
            # Its run ends before what it accepted past a gap (or before what it had accepted
            # before a restart): back off to its run, whatever `match` says (it stays valid for
            # counting). From a compacted point this sends a snapshot.
            pr.state = ProgressState.PROBE
            pr.next = hint + 1
            pr.probe_sent = False
            pr.inflights.reset()
            self._need_flush = True
            return
        if pr.maybe_decrease_to(m.index, hint):
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            self._need_flush = True

    def _handle_heartbeat_response(self, m: Message) -> None:
        pr = self._answering_peer(m)
        if pr is None:
            return
        if m.index < pr.match and pr.state != ProgressState.SNAPSHOT:
            # It accepted slots past a gap in its run (after refusing a snapshot, or as a
            # probe): fill the gap from the log, or send a snapshot if we compacted it.
            pr.state = ProgressState.PROBE
            pr.next = m.index + 1
            pr.inflights.reset()
        self._heartbeat_answered(pr, m)

    def _maybe_commit(self) -> None:
        """A slot is chosen once a majority accepted it in our ballot (PMS §2.2)."""
        index = self._progress.quorum_match()
        log = self._log
        if index > log.committed:
            log.commit_to(index)
            self._need_flush = True
            self._release_waiting_reads()

    def _reads_may_go(self) -> bool:
        # Values of earlier ballots may be chosen up to the recovery end without our knowing
        # it: a read must wait until those slots are chosen in our ballot.
        return self._log.committed >= self._recovery_end

    def _handle_forwarded_proposal(self, m: Message) -> None:
        ents = m.entries
        if not ents:
            return
        if any(e[2] != EntryType.NORMAL for e in ents):
            self._refuse_forwarded(m, DropReason.MEMBERSHIP_FIXED)
            return
        if not self._leader_takes_forwarded(m):
            return
        self._log.append_new(self._term, [e[3] for e in ents])
        self._need_flush = True

    def _start_transfer(self, target: str) -> None:
        if target == self._id or target not in self._progress:
            return
        if self._transferee == target:
            return
        self._election_elapsed = 0
        self._transferee = target
        # Paxos needs no caught-up target: its phase 1 recovers everything. Tell it to start.
        self._out.messages.append(Message.timeout_now(target, self._id, self._term))


if TYPE_CHECKING:
    from kvstore.consensus.protocol import ConsensusCore

    def _paxos_is_a_core(core: PaxosCore) -> ConsensusCore:
        """mypy checks that `PaxosCore` satisfies the kernel's `ConsensusCore`."""
        return core

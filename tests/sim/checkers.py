"""Safety checkers the simulator runs after every step, one per protocol (`make_checker`).

`SafetyChecker` checks a Raft cluster (Raft §5.4, Figure 3; thesis §6.4).

Each property is checked incrementally, from hooks the cluster calls when something happens
(a role is seen, entries are written, a hard state is written, an entry is applied, a read is
asked or answered), so checking after every step stays cheap:

- election safety: at most one leader per term, over the whole run;
- log matching: two logs holding an entry with the same index and term agree on its data and
  on the term of the entry before it, which by induction makes their prefixes identical;
- leader completeness: an entry committed in term U is in the log of every leader of a term
  above U;
- state machine safety: every node applies one common sequence (checked entry by entry and,
  for snapshots, through a hash chain over that sequence);
- no lost acknowledged write: once a proposal is applied on its proposer it is acknowledged,
  and its index forever holds it (the common sequence is append-only);
- linearizable reads: a read's answer reflects every write acknowledged before it was asked.

`PaxosSafetyChecker` checks a Multi-Paxos cluster. Entries are compared by (index, term) above;
a Paxos leader re-proposes, in its own ballot, values that may already be chosen, so one value
may carry different ballots on different members and ballots along a log need not grow. It keeps
every check that still means something and replaces the term-based ones by value-based ones:

- election safety: one leader per ballot (unchanged);
- one value per (slot, ballot): log matching without its "same previous term" half, which needs
  Raft's non-decreasing terms;
- leader completeness by value: a leader, from the moment it finished phase 1, holds at every
  slot the value every member applied there (Paxos Made Simple §2.2, P2c);
- state machine safety: every member applies one sequence of values (the hash chain covers the
  entry's type and data, not its ballot);
- acknowledged writes are never lost, reads are linearizable (unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kvstore.consensus import CONSENSUS_KINDS, ConsensusCore
from kvstore.consensus.types import Entry


class LeaderLog(Protocol):
    """What the leader checks read of a leader's storage (`SimStorage`)."""

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def term_or_none(self, index: int) -> int | None: ...


class HeldLog(Protocol):
    """What the Paxos leader check reads of a core's in-memory log (`RaftLog`)."""

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]: ...


class SafetyViolation(AssertionError):
    """A checker found a broken safety property; the message says which and where."""


class SimFailure(SafetyViolation):
    """A failure of a simulated run, reported with its seed and the tail of its trace."""

    cluster: object = None
    """The failed cluster, for post-mortem digging (`cluster.trace`)."""


def chain_hash(prev: int, term: int, data: bytes) -> int:
    """The next link of the hash chain over an applied sequence (in-process only)."""
    return hash((prev, term, data))


@dataclass(slots=True)
class _Committed:
    term: int
    commit_term: int
    """An upper bound of the term in which the entry was first known committed."""


class SafetyChecker:
    """Holds the history the properties are checked against. See the module docstring."""

    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}
        """term -> the one leader ever seen in that term."""
        self._log_facts: dict[tuple[int, int], tuple[bytes, int, int]] = {}
        """(index, term) -> (data, entry type, term of the entry before it)."""
        self.applied: list[tuple[int, bytes, int]] = [(0, b"", 0)]
        """The common applied sequence: applied[i] = (term, data, chain hash through i)."""
        self._committed: dict[int, _Committed] = {}
        self._checked_leaders: dict[str, int] = {}
        """node -> term for which its log was found complete (its current leadership)."""
        self.acked: dict[bytes, tuple[int, bytes]] = {}
        """Acknowledged proposal id -> (its index, its data)."""
        self._acked_by_key: dict[bytes, int] = {}
        """key -> highest index of an acknowledged write to it."""
        self._reads: dict[bytes, tuple[bytes, int]] = {}
        """read ctx -> (key, highest acknowledged write index of that key when asked)."""
        self.reads_checked = 0

    # --- election safety ------------------------------------------------------------------------

    def on_leader(self, node: str, term: int) -> None:
        """`node` is leader in `term`."""
        seen = self.leaders.setdefault(term, node)
        if seen != node:
            raise SafetyViolation(f"two leaders in term {term}: {seen} and {node}")

    # --- log matching ---------------------------------------------------------------------------

    def on_entries_written(self, node: str, entries: list[Entry], prev_term: int | None) -> None:
        """`node` wrote `entries` (contiguous); `prev_term` is its term before the first one
        (None if that index is compacted on it)."""
        facts = self._log_facts
        for e in entries:
            key = (e.index, e.term)
            fact = (e.data, int(e.type), prev_term if prev_term is not None else -1)
            old = facts.get(key)
            if old is None:
                facts[key] = fact
            elif old[0] != fact[0] or old[1] != fact[1]:
                raise SafetyViolation(
                    f"log matching: {node} holds a different entry at index {e.index} "
                    f"term {e.term}: {fact[0]!r} vs {old[0]!r}"
                )
            elif old[2] != fact[2] and old[2] != -1 and fact[2] != -1:
                raise SafetyViolation(
                    f"log matching: {node} has entry ({e.index}, {e.term}) after term "
                    f"{fact[2]}, another log after term {old[2]}"
                )
            elif old[2] == -1 and fact[2] != -1:
                facts[key] = fact
            prev_term = e.term

    # --- commitment and leader completeness -----------------------------------------------------

    def on_commit(self, node: str, term: int, term_of: dict[int, int]) -> None:
        """`node` wrote a hard state in `term` whose commit newly covers the indices in
        `term_of` (those it still holds, mapped to their terms)."""
        for index, entry_term in term_of.items():
            c = self._committed.get(index)
            if c is None:
                self._committed[index] = _Committed(entry_term, term)
            elif c.term != entry_term:
                raise SafetyViolation(
                    f"{node} committed index {index} with term {entry_term}, "
                    f"but it was committed before with term {c.term}"
                )
            elif term < c.commit_term:
                c.commit_term = term

    def committed_terms(self) -> dict[int, tuple[int, int]]:
        """index -> (entry term, commit term) of every entry known committed."""
        return {i: (c.term, c.commit_term) for i, c in self._committed.items()}

    def check_leader_log(self, node: str, term: int, term_at: dict[int, int | None]) -> None:
        """Leader completeness for `node`, leader of `term`: `term_at` maps each index it is
        asked about (see `indices_for_leader`) to the term `node` holds there (None: absent)."""
        for index, held in term_at.items():
            c = self._committed[index]
            if held != c.term:
                raise SafetyViolation(
                    f"leader completeness: {node}, leader of term {term}, holds term {held} at "
                    f"index {index}, committed with term {c.term} in term {c.commit_term}"
                )
        self._checked_leaders[node] = term

    def indices_for_leader(self, term: int, lo: int) -> list[int]:
        """Indices from `lo` on that were committed in a term below `term`."""
        return [i for i, c in self._committed.items() if i >= lo and c.commit_term < term]

    def leader_checked(self, node: str, term: int) -> bool:
        """Whether `node`'s log was already found complete for its leadership in `term`."""
        return self._checked_leaders.get(node) == term

    def forget_leader(self, node: str) -> None:
        """`node` is no longer leader (or crashed): check it again if it leads again."""
        self._checked_leaders.pop(node, None)

    def check_leader(self, node: str, term: int, storage: LeaderLog, core: ConsensusCore) -> None:
        """Leader completeness for `node`, leader of `term`, once per leadership: checked as
        soon as its first entry of the term is written (until then its log may still grow)."""
        if self.leader_checked(node, term):
            return
        if storage.term_or_none(storage.last_index()) != term:
            return  # its first entry of this term is not written yet
        lo = storage.first_index()
        held = {i: storage.term_or_none(i) for i in self.indices_for_leader(term, lo)}
        self.check_leader_log(node, term, held)

    # --- state machine safety -------------------------------------------------------------------

    # How messages name a log position, and what was applied at one (Paxos overrides these).
    POSITION = "index"

    def _entry_hash(self, prev_hash: int, entry: Entry) -> int:
        return chain_hash(prev_hash, entry.term, entry.data)

    def _applied_text(self, term: int, data: bytes) -> str:
        return f"({term}, {data!r})"

    def on_apply(self, node: str, entry: Entry, prev_hash: int) -> int:
        """`node` applied `entry` on top of the chain hash `prev_hash`; returns the new hash."""
        h = self._extend_applied(node, entry, prev_hash)
        c = self._committed.get(entry.index)
        if c is not None and c.term != entry.term:
            raise SafetyViolation(
                f"{node} applied term {entry.term} at index {entry.index}, committed as {c.term}"
            )
        return h

    def _extend_applied(self, node: str, entry: Entry, prev_hash: int) -> int:
        """State machine safety: every member applies the same sequence. Extends the common
        sequence with `entry`, or checks it against what others applied there."""
        h = self._entry_hash(prev_hash, entry)
        applied = self.applied
        where = f"{self.POSITION} {entry.index}"
        if entry.index == len(applied):
            if applied[-1][2] != prev_hash:
                raise SafetyViolation(
                    f"state machine safety: {node} applied {where} on a state that "
                    f"differs from the common sequence before it"
                )
            applied.append((entry.term, entry.data, h))
        elif entry.index < len(applied):
            if applied[entry.index][2] != h:
                t, d, _ = applied[entry.index]
                raise SafetyViolation(
                    f"state machine safety: {node} applied "
                    f"{self._applied_text(entry.term, entry.data)} at {where}, where others "
                    f"applied {self._applied_text(t, d)}"
                )
        else:
            raise SafetyViolation(
                f"{node} applied {where} but the common sequence ends at "
                f"{len(applied) - 1}: a gap nobody filled"
            )
        return h

    def on_snapshot_restored(self, node: str, index: int, chain: int) -> None:
        """`node` restored a snapshot through `index` whose state has hash chain `chain`."""
        if index < len(self.applied):
            if self.applied[index][2] != chain:
                raise SafetyViolation(
                    f"state machine safety: {node} restored a snapshot at {index} whose history "
                    f"differs from the common sequence"
                )
        else:
            raise SafetyViolation(
                f"{node} restored a snapshot at {index}, beyond anything applied anywhere "
                f"({len(self.applied) - 1})"
            )

    # --- acknowledged writes and reads ----------------------------------------------------------

    def on_ack(self, proposal_id: bytes, key: bytes, index: int, data: bytes) -> None:
        """The proposal `proposal_id` (`data`, a write to `key`) was applied at `index` on its
        proposer."""
        if proposal_id in self.acked:
            return  # a duplicate of the proposal (forwarded twice): the first one counts
        self.acked[proposal_id] = (index, data)
        if index > self._acked_by_key.get(key, 0):
            self._acked_by_key[key] = index

    def check_acked_present(self) -> None:
        """Every acknowledged proposal still sits at its index in the common sequence."""
        for pid, (index, data) in self.acked.items():
            if index >= len(self.applied) or self.applied[index][1] != data:
                raise SafetyViolation(f"acknowledged proposal {pid!r} at {index} was lost")

    def on_read_request(self, ctx: bytes, key: bytes) -> None:
        """A linearizable read of `key` was asked, with request id `ctx`."""
        self._reads[ctx] = (key, self._acked_by_key.get(key, 0))

    def on_read_answer(self, node: str, ctx: bytes, observed_index: int) -> None:
        """The read `ctx` was answered on `node` with the write at `observed_index` (0: none)."""
        key, needed = self._reads.pop(ctx)
        self.reads_checked += 1
        if observed_index < needed:
            raise SafetyViolation(
                f"stale read on {node}: key {key!r} answered with the write at index "
                f"{observed_index}, but the write at {needed} was acknowledged before the read"
            )

    def forget_read(self, ctx: bytes) -> None:
        """The read `ctx` was dropped or its node crashed: it will never be answered."""
        self._reads.pop(ctx, None)


def value_hash(prev: int, entry: Entry) -> int:
    """The next link of the hash chain over applied values (type and data, not ballot)."""
    return hash((prev, int(entry.type), entry.data))


class PaxosSafetyChecker(SafetyChecker):
    """`SafetyChecker` with value-based log checks (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._values: dict[tuple[int, int], tuple[bytes, int]] = {}
        self.leaders_checked = 0

    def on_entries_written(self, node: str, entries: list[Entry], prev_term: int | None) -> None:
        """One ballot proposes one value per slot: (slot, ballot) always holds the same value."""
        values = self._values
        for e in entries:
            fact = (e.data, int(e.type))
            old = values.setdefault((e.index, e.term), fact)
            if old != fact:
                raise SafetyViolation(
                    f"{node} holds {fact[0]!r} at slot {e.index} ballot {e.term}, "
                    f"another member {old[0]!r}"
                )

    def on_commit(self, node: str, term: int, term_of: dict[int, int]) -> None:
        """Ballots of chosen slots may differ between members: checked by value at apply time."""

    def check_leader_log(self, node: str, term: int, term_at: dict[int, int | None]) -> None:
        """Term-based: Paxos leaders are checked by value (`check_leader`)."""

    POSITION = "slot"

    def _entry_hash(self, prev_hash: int, entry: Entry) -> int:
        return value_hash(prev_hash, entry)

    def _applied_text(self, term: int, data: bytes) -> str:
        return repr(data)  # the ballots of a chosen slot may differ between members

    def on_apply(self, node: str, entry: Entry, prev_hash: int) -> int:
        """`node` applied `entry`: the value must be the one every member applies there."""
        return self._extend_applied(node, entry, prev_hash)

    def check_leader(self, node: str, term: int, storage: LeaderLog, core: ConsensusCore) -> None:
        """Leader completeness by value, once per leadership, from the moment it leads: its
        whole log, persisted or not (what it will propose), agrees with every applied slot."""
        if self.leader_checked(node, term):
            return
        log = leader_log(core)
        lo = log.first_index()
        hi = min(len(self.applied) - 1, log.last_index())
        if hi >= lo:
            for e in log.entries(lo, hi + 1):
                want = self.applied[e.index][1]
                if e.data != want:
                    raise SafetyViolation(
                        f"leader completeness: {node}, leader of ballot {term}, holds "
                        f"{e.data!r} at slot {e.index} where {want!r} was applied"
                    )
        if log.last_index() < len(self.applied) - 1:
            raise SafetyViolation(
                f"leader completeness: {node}, leader of ballot {term}, ends at slot "
                f"{log.last_index()}, but slot {len(self.applied) - 1} was applied"
            )
        self._checked_leaders[node] = term
        self.leaders_checked += 1


def leader_log(core: ConsensusCore) -> HeldLog:
    """A Paxos core's in-memory log, persisted or not (what it will propose as leader).

    White-box on purpose: at the moment a proposer finishes phase 1 its recovered values are not
    written anywhere yet, and that moment is the one P2c speaks about.
    """
    log: HeldLog = getattr(core, "_log")  # noqa: B009  (private: a test-only peek)
    return log


def make_checker(consensus: str) -> SafetyChecker:
    """The checker for a cluster running `consensus` ("raft" or "paxos")."""
    if consensus == "raft":
        return SafetyChecker()
    if consensus == "paxos":
        return PaxosSafetyChecker()
    raise ValueError(f"consensus must be one of {CONSENSUS_KINDS}, got {consensus!r}")

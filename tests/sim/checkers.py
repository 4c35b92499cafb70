"""Safety checkers the simulator runs after every step (Raft §5.4, Figure 3; thesis §6.4).

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
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.raft.types import Entry


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

    # --- state machine safety -------------------------------------------------------------------

    def on_apply(self, node: str, entry: Entry, prev_hash: int) -> int:
        """`node` applied `entry` on top of the chain hash `prev_hash`; returns the new hash."""
        h = chain_hash(prev_hash, entry.term, entry.data)
        applied = self.applied
        if entry.index == len(applied):
            if applied[-1][2] != prev_hash:
                raise SafetyViolation(
                    f"state machine safety: {node} applied index {entry.index} on a state that "
                    f"differs from the common sequence before it"
                )
            applied.append((entry.term, entry.data, h))
        elif entry.index < len(applied):
            if applied[entry.index][2] != h:
                t, d, _ = applied[entry.index]
                raise SafetyViolation(
                    f"state machine safety: {node} applied ({entry.term}, {entry.data!r}) at "
                    f"index {entry.index}, where others applied ({t}, {d!r})"
                )
        else:
            raise SafetyViolation(
                f"{node} applied index {entry.index} but the common sequence ends at "
                f"{len(applied) - 1}: a gap nobody filled"
            )
        c = self._committed.get(entry.index)
        if c is not None and c.term != entry.term:
            raise SafetyViolation(
                f"{node} applied term {entry.term} at index {entry.index}, committed as {c.term}"
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

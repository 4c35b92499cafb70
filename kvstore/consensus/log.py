"""The log as the core sees it: the stable `LogView` plus an in-memory tail (etcd's raftLog).

The tail is one list of entries starting at index `offset`. Its entries from `unstable` on have
not been handed to the application for persisting yet (or were, but not acknowledged); the ones
before `unstable` are stable and kept only as a cache, so that the leader replicates and both
sides apply recent entries without reading them back from the redo log. The cache is trimmed
once its entries are applied.

Where the tail and the LogView overlap, the tail wins: a follower may cut a conflicting suffix
in memory before the application has rewritten it on disk.

A parallel list of cumulative data sizes turns every byte limit (per APPEND, per Ready, in
flight, uncommitted) into one subtraction or one bisection, with no per-entry Python loop.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from functools import partial
from itertools import accumulate, count, repeat
from operator import itemgetter
from typing import Any, cast

from kvstore.consensus.types import Entry, EntryType, LogView, SnapshotMeta
from kvstore.errors import LogCompactedError, LogUnavailableError, invariant

_DATA = itemgetter(3)
_TYPE = itemgetter(2)
# Builds an Entry from a 4-tuple without the Python-level NamedTuple __new__: the leader makes
# one per proposal, so this is on the hot path.
_make_entry = cast(Any, partial(tuple.__new__, Entry))


def entries_bytes(entries: Sequence[Entry]) -> int:
    """Total data bytes of `entries` (the unit of every size limit)."""
    return sum(map(len, map(_DATA, entries)))


def has_conf_change(entries: Sequence[Entry]) -> bool:
    """Whether any of `entries` is a CONF_CHANGE (one C-level pass, no Python loop)."""
    return any(map(_TYPE, entries))


class RaftLog:
    """The stable log (a `LogView`) plus the in-memory tail, with the commit and apply marks."""

    __slots__ = (
        "_cum",
        "_ents",
        "_in_progress",
        "_offset",
        "_snapshot",
        "_snapshot_in_progress",
        "_unstable",
        "applied",
        "applying",
        "committed",
        "storage",
    )

    def __init__(self, storage: LogView, *, committed: int, applied: int) -> None:
        self.storage = storage
        self._offset = storage.last_index() + 1
        """Index of `_ents[0]`."""
        self._ents: list[Entry] = []
        self._cum: list[int] = [0]
        """`_cum[k]` - `_cum[0]` = data bytes of `_ents[:k]`; one longer than `_ents`."""
        self._unstable = self._offset
        """First index not yet persisted (`offset <= unstable <= last_index() + 1`)."""
        self._in_progress = self._offset
        """First index not yet handed out in a Ready (`>= unstable`): entries handed out but not
        yet acknowledged are not handed out twice."""
        self._snapshot: SnapshotMeta | None = None
        """A snapshot received from the leader and not yet installed by the application."""
        self._snapshot_in_progress = False
        self.committed = committed
        """The highest index known to be committed."""
        self.applying = applied
        """The highest index handed out for applying."""
        self.applied = applied
        """The highest index the application acknowledged as applied."""

    # --- positions ------------------------------------------------------------------------------

    def first_index(self) -> int:
        """The first index still available (entries before it are in a snapshot)."""
        if self._snapshot is not None:
            return self._snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        """The last index of the log."""
        return self._offset + len(self._ents) - 1

    def stable_last_index(self) -> int:
        """The last index known to be persisted (and to belong to this log)."""
        return self._unstable - 1

    def last_term(self) -> int:
        """The term of the last entry (or of the snapshot if the log is empty)."""
        term = self.term_or_none(self.last_index())
        invariant(term is not None, "the last entry's term is unavailable")
        return cast(int, term)

    def term_or_none(self, index: int) -> int | None:
        """The term of entry `index`, or None if it is compacted or beyond the log."""
        k = index - self._offset
        if k >= 0:
            if k < len(self._ents):
                return self._ents[k][0]
            return None
        snap = self._snapshot
        if snap is not None:
            return snap.term if index == snap.index else None
        try:
            return self.storage.term(index)
        except (LogCompactedError, LogUnavailableError):
            return None

    def term(self, index: int) -> int:
        """The term of entry `index`; raises `LogCompactedError` / `LogUnavailableError`."""
        term = self.term_or_none(index)
        if term is None:
            if index > self.last_index():
                raise LogUnavailableError(f"index {index} is beyond the last index")
            raise LogCompactedError(f"index {index} is compacted")
        return term

    def match_term(self, index: int, term: int) -> bool:
        """Whether the log holds entry `index` with term `term` (log matching, Raft §5.3)."""
        return self.term_or_none(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at (`last_index`, `last_term`) is at least as up to date as this
        one (the election restriction, Raft §5.4.1)."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index `j <= index` whose term is `<= term`, and that term.

        Terms never decrease along a log, so a bisection finds it. This is the fast-backtracking
        step: both sides skip every entry of a term the other side cannot have.
        """
        lo = self.first_index() - 1
        hi = min(index, self.last_index())
        if hi < lo:
            return index, 0
        t = self.term_or_none(hi)
        if t is None or t <= term:
            return hi, t or 0
        # Search invariant: term(lo) <= term (lo may be the compaction point), term(hi) > term.
        lo_term = self.term_or_none(lo)
        if lo_term is None or lo_term > term:
            return lo, 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            mid_term = self.term_or_none(mid)
            if mid_term is not None and mid_term <= term:
                lo, lo_term = mid, mid_term
            else:
                hi = mid
        return lo, lo_term

    # --- reading --------------------------------------------------------------------------------

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in `[lo, hi)`, at most `max_bytes` of data but at least one entry."""
        return self.entries_and_size(lo, hi, max_bytes)[0]

    def entries_and_size(
        self, lo: int, hi: int, max_bytes: int | None = None
    ) -> tuple[list[Entry], int]:
        """`entries(lo, hi, max_bytes)` and the data bytes they hold."""
        if lo >= hi:
            return [], 0
        invariant(hi <= self.last_index() + 1, f"entries({lo}, {hi}) beyond the last index")
        offset = self._offset
        if lo >= offset:
            return self._mem_slice(lo, hi, max_bytes)
        if self._snapshot is not None:
            raise LogCompactedError(f"index {lo} is below the snapshot being installed")
        stable = self.storage.entries(lo, min(hi, offset), max_bytes)
        size = entries_bytes(stable)
        if hi <= offset or len(stable) < offset - lo:
            return stable, size
        if max_bytes is not None:
            max_bytes -= size
            if max_bytes <= 0:
                return stable, size
        more, more_size = self._mem_slice(offset, hi, max_bytes, at_least_one=False)
        return stable + more, size + more_size

    def _mem_slice(
        self, lo: int, hi: int, max_bytes: int | None, *, at_least_one: bool = True
    ) -> tuple[list[Entry], int]:
        cum = self._cum
        k0 = lo - self._offset
        k1 = hi - self._offset
        size = cum[k1] - cum[k0]
        if max_bytes is not None and size > max_bytes:
            k1 = bisect_right(cum, cum[k0] + max_bytes, k0 + 1, k1 + 1) - 1
            if k1 == k0 and at_least_one:
                k1 = k0 + 1
            size = cum[k1] - cum[k0]
        return self._ents[k0:k1], size

    def mem_bytes(self, lo: int, hi: int) -> int:
        """Data bytes of the in-memory entries in `[lo, hi)` (entries only on disk count 0)."""
        lo = max(lo, self._offset)
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return 0
        return self._cum[hi - self._offset] - self._cum[lo - self._offset]

    def unstable_entries(self) -> list[Entry]:
        """Entries not yet acknowledged as persisted, in order."""
        if self._unstable > self.last_index():
            return []
        return self._ents[self._unstable - self._offset :]

    def has_unstable(self) -> bool:
        """Whether there are entries or a snapshot to hand out for persisting."""
        if max(self._unstable, self._in_progress) <= self.last_index():
            return True
        return self._snapshot is not None and not self._snapshot_in_progress

    def take_unstable(self) -> list[Entry]:
        """Entries to hand out for persisting now; marks them as handed out."""
        start = max(self._unstable, self._in_progress)
        last = self.last_index()
        if start > last:
            return []
        self._in_progress = last + 1
        return self._ents[start - self._offset :]

    def take_snapshot(self) -> SnapshotMeta | None:
        """The snapshot to hand out for installing now (None if none or already handed out)."""
        if self._snapshot is None or self._snapshot_in_progress:
            return None
        self._snapshot_in_progress = True
        return self._snapshot

    @property
    def pending_snapshot(self) -> SnapshotMeta | None:
        """A snapshot received and not yet installed."""
        return self._snapshot

    def has_next_committed(self) -> bool:
        """Whether committed entries wait to be handed out for applying."""
        return self.committed > self.applying

    def next_committed(self, max_bytes: int) -> list[Entry]:
        """Committed entries not handed out yet (at most `max_bytes`, at least one); marks them
        as handed out."""
        if self.committed <= self.applying:
            return []
        entries = self.entries(self.applying + 1, self.committed + 1, max_bytes)
        if entries:
            self.applying = entries[-1][1]
        return entries

    # --- writing --------------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append `entries` (consecutive indices) after cutting any suffix they replace."""
        if not entries:
            return
        first = entries[0][1]
        invariant(first > self.committed, f"append at {first} would cut committed entries")
        self._truncate_before(first)
        self._ents.extend(entries)
        cum = self._cum
        cum.extend(accumulate(map(len, map(_DATA, entries)), initial=cum.pop()))

    def append_new(self, term: int, datas: Sequence[bytes]) -> int:
        """Leader: append one NORMAL entry of `term` per item of `datas`; returns the first index.

        Builds the entries with C-level iterators only: this is the hot path of proposing.
        """
        first = self.last_index() + 1
        if self._snapshot is not None:
            invariant(first == self._snapshot.index + 1, "leader log does not follow its snapshot")
        self._ents.extend(
            map(_make_entry, zip(repeat(term), count(first), repeat(EntryType.NORMAL), datas))
        )
        cum = self._cum
        cum.extend(accumulate(map(len, datas), initial=cum.pop()))
        return first

    def _truncate_before(self, first: int) -> None:
        """Make `first` the next index to append at, dropping everything from it on."""
        offset = self._offset
        k = first - offset
        size = len(self._ents)
        if k == size:
            return
        invariant(k <= size, f"append at {first} leaves a gap after {self.last_index()}")
        if k >= 0:
            del self._ents[k:]
            del self._cum[k + 1 :]
        else:
            # The new entries replace stable ones below the in-memory tail: the tail restarts.
            snap = self._snapshot
            invariant(snap is None or first > snap.index, "append below an installing snapshot")
            self._ents = []
            self._cum = [0]
            self._offset = first
        if self._unstable > first:
            self._unstable = first
        if self._in_progress > first:
            self._in_progress = first

    def commit_to(self, index: int) -> bool:
        """Raise the commit mark to `index` (never lowers it); True if it moved."""
        if index <= self.committed:
            return False
        invariant(index <= self.last_index(), f"commit {index} beyond the last index")
        self.committed = index
        return True

    def restore(self, snap: SnapshotMeta) -> None:
        """Replace the whole log with `snap` (a follower installing the leader's snapshot)."""
        self._ents = []
        self._cum = [0]
        self._offset = snap.index + 1
        self._unstable = self._offset
        self._in_progress = self._offset
        self._snapshot = snap
        self._snapshot_in_progress = False
        self.committed = snap.index
        self.applying = max(self.applying, snap.index)

    # --- acknowledgements from the application -------------------------------------------------

    def stable_to(self, index: int, term: int) -> None:
        """The application persisted entries through (`index`, `term`).

        Ignored if the tail no longer holds that entry (it was replaced meanwhile: the new
        entries will be handed out again).
        """
        k = index - self._offset
        if index >= self._unstable and 0 <= k < len(self._ents) and self._ents[k][0] == term:
            self._unstable = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        """The application installed the snapshot at `index`."""
        if self._snapshot is not None and self._snapshot.index == index:
            self._snapshot = None
            self._snapshot_in_progress = False

    def applied_to(self, index: int) -> None:
        """The application applied everything through `index`."""
        if index > self.applied:
            self.applied = index

    def trim_cache(self) -> None:
        """Drop cached entries that are both stable and applied: nobody needs them from memory."""
        upto = min(self.applied, self._unstable - 1)
        k = upto + 1 - self._offset
        if k > 0:
            del self._ents[:k]
            del self._cum[:k]
            self._offset += k

    def __repr__(self) -> str:
        return (
            f"RaftLog(offset={self._offset}, last={self.last_index()}, "
            f"unstable={self._unstable}, committed={self.committed}, "
            f"applying={self.applying}, applied={self.applied}, snapshot={self._snapshot})"
        )


def conf_change_indices(entries: Sequence[Entry]) -> list[int]:
    """Indices of the CONF_CHANGE entries among `entries` (cheap when there are none)."""
    if not has_conf_change(entries):
        return []
    return [e[1] for e in entries if e[2] == EntryType.CONF_CHANGE]

"""The simulator's storage model: a Raft log with a durable part and an unsynced tail.

`SimStorage` is the `LogView` the core reads. Writes (`append`, `install_snapshot`) change the
view at once, as a write into the page cache would, but only `sync()` makes them durable.
`crash()` throws the unsynced writes away, except possibly a prefix of them: writes reach the
disk in order and a crash may land anywhere, so some unsynced records may survive (the redo log
cuts a torn tail at a record boundary, which leaves a prefix). The core must be safe either way.
With `tear=True` the first lost write may also survive in part, exactly as far as the redo log
allows (native/FORMAT.md §4): an append's entries are records written before its hard state, so
a prefix of its entries may survive without its hard state; but an append that overwrites
older entries survives with all its entries or none (the log voids an unfinished overwrite).

Compaction (`compact_through`) only ever covers entries the state machine has applied and
checkpointed, which are durable, so it takes effect on both copies at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from kvstore.consensus.types import ConfState, Entry, HardState, SnapshotMeta
from kvstore.errors import InvariantError, LogCompactedError, LogUnavailableError


@dataclass(slots=True)
class LogImage:
    """One copy of the log: a snapshot point, the entries after it, and the hard state."""

    snap: SnapshotMeta = field(default_factory=SnapshotMeta)
    entries: list[Entry] = field(default_factory=list)
    """`entries[k].index == snap.index + 1 + k`."""
    hard_state: HardState = field(default_factory=HardState)

    def copy(self) -> LogImage:
        """An independent copy (entries are immutable, so a shallow list copy suffices)."""
        return LogImage(self.snap, list(self.entries), self.hard_state)

    def last_index(self) -> int:
        """The index of the last entry, or the snapshot's index if there is none."""
        return self.snap.index + len(self.entries)

    def term_at(self, index: int) -> int | None:
        """The term at `index`, or None when the image does not hold it."""
        if index == self.snap.index:
            return self.snap.term
        k = index - self.snap.index - 1
        if 0 <= k < len(self.entries):
            return self.entries[k].term
        return None

    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Cut any suffix from `entries[0].index` on, then append (the new entries win)."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.snap.index:
            # Entries at or below the snapshot are already covered by it: skip them.
            entries = [e for e in entries if e.index > self.snap.index]
            if not entries:
                return
            first = entries[0].index
        if first > self.last_index() + 1:
            raise InvariantError(
                f"append leaves a gap: first new index {first}, last index {self.last_index()}"
            )
        del self.entries[first - self.snap.index - 1 :]
        self.entries.extend(entries)

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        """Reset the log to start right after `meta` (the state machine is restored from it)."""
        self.snap = meta
        self.entries = []
        if self.hard_state.commit < meta.index:
            self.hard_state = self.hard_state._replace(commit=meta.index)

    def compact_through(self, index: int, conf_state: ConfState) -> None:
        """Drop entries up to and including `index`; the snapshot point moves there."""
        if index <= self.snap.index:
            return
        term = self.term_at(index)
        if term is None:
            raise InvariantError(f"compaction point {index} not in log (last {self.last_index()})")
        del self.entries[: index - self.snap.index]
        self.snap = SnapshotMeta(index, term, conf_state)


_APPEND = 0
_SNAPSHOT = 1


class SimStorage:
    """A `LogView` whose writes are lost on a crash unless synced. See the module docstring."""

    def __init__(self, image: LogImage | None = None) -> None:
        durable = image if image is not None else LogImage()
        self._durable = durable
        self._cur = durable.copy()
        # Unsynced writes, oldest first: (kind, entries-or-meta, hard_state or None).
        self._pending: list[tuple[int, object, HardState | None]] = []
        self.syncs = 0
        self.torn_appends = 0
        """Crashes that kept part of an append (its entries, or some, without its hard state)."""

    # --- LogView --------------------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The hard state and the configuration as of the latest snapshot."""
        return self._cur.hard_state, self._cur.snap.conf_state

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in `[lo, hi)`, at most `max_bytes` of data (but at least one)."""
        cur = self._cur
        if lo <= cur.snap.index:
            raise LogCompactedError(f"index {lo} is compacted (first index {cur.snap.index + 1})")
        if hi > cur.last_index() + 1:
            raise LogUnavailableError(f"index {hi - 1} is beyond the last index {cur.last_index()}")
        if lo >= hi:
            return []
        base = cur.snap.index + 1
        out = cur.entries[lo - base : hi - base]
        if max_bytes is not None:
            size = 0
            for k, e in enumerate(out):
                size += len(e.data)
                if size > max_bytes and k > 0:
                    return out[:k]
        return out

    def term(self, index: int) -> int:
        """The term of entry `index` (the snapshot's term at the snapshot's index)."""
        cur = self._cur
        if index < cur.snap.index:
            raise LogCompactedError(f"index {index} is compacted (snapshot at {cur.snap.index})")
        t = cur.term_at(index)
        if t is None:
            raise LogUnavailableError(f"index {index} is beyond the last index {cur.last_index()}")
        return t

    def first_index(self) -> int:
        """The first index still in the log."""
        return self._cur.snap.index + 1

    def last_index(self) -> int:
        """The last index in the log, or the snapshot's index when it holds no entry."""
        return self._cur.last_index()

    def snapshot_meta(self) -> SnapshotMeta:
        """The latest snapshot or compaction point."""
        return self._cur.snap

    # --- writes ---------------------------------------------------------------------------------

    def append(
        self, entries: tuple[Entry, ...] | list[Entry], hard_state: HardState | None
    ) -> None:
        """Write entries (cutting a conflicting suffix) and the hard state; unsynced."""
        if not entries and hard_state is None:
            return
        ents = tuple(entries)
        self._cur.append(ents)
        if hard_state is not None:
            self._cur.hard_state = hard_state
        self._pending.append((_APPEND, ents, hard_state))

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        """Reset the log to start after `meta`; unsynced."""
        self._cur.install_snapshot(meta)
        self._pending.append((_SNAPSHOT, meta, None))

    def sync(self) -> None:
        """Make every write so far durable."""
        for op in self._pending:
            self._replay(self._durable, op)
        self._pending.clear()
        self.syncs += 1

    def compact_through(self, index: int, conf_state: ConfState) -> None:
        """Drop entries through `index` (applied and checkpointed, hence durable) in both copies."""
        if self._pending:
            raise InvariantError("compact only right after a sync")
        self._durable.compact_through(index, conf_state)
        self._cur.compact_through(index, conf_state)

    def crash(self, rng: random.Random | None = None, *, tear: bool = False) -> int:
        """Lose the unsynced writes, or (given `rng`) all but a random prefix of them, and with
        `tear` maybe part of the next one (see the module docstring).

        Returns how many unsynced writes survived whole.
        """
        keep = rng.randint(0, len(self._pending)) if rng is not None and self._pending else 0
        for op in self._pending[:keep]:
            self._replay(self._durable, op)
        if rng is not None and tear and keep < len(self._pending):
            kind, body, _hs = self._pending[keep]
            if kind == _APPEND and isinstance(body, tuple) and body:
                overwrite = body[0].index <= self._durable.last_index()
                n = len(body)
                # The entries that reached the disk; the hard state after them did not.
                survived = rng.choice((0, n)) if overwrite else rng.randint(0, n)
                self._durable.append(body[:survived])
                self.torn_appends += survived > 0
        self._pending.clear()
        self._cur = self._durable.copy()
        return keep

    @staticmethod
    def _replay(image: LogImage, op: tuple[int, object, HardState | None]) -> None:
        kind, body, hs = op
        if kind == _APPEND:
            assert isinstance(body, tuple)
            image.append(body)
            if hs is not None:
                image.hard_state = hs
        else:
            assert isinstance(body, SnapshotMeta)
            image.install_snapshot(body)

    # --- inspection (checkers, tests) -----------------------------------------------------------

    @property
    def hard_state(self) -> HardState:
        """The hard state as last written (durable or not)."""
        return self._cur.hard_state

    @property
    def durable(self) -> LogImage:
        """The durable copy (read-only by convention)."""
        return self._durable

    @property
    def unsynced_writes(self) -> int:
        """How many writes wait for a sync."""
        return len(self._pending)

    def term_or_none(self, index: int) -> int | None:
        """The term at `index` in the current view, or None when it is not held."""
        return self._cur.term_at(index)

    def all_entries(self) -> list[Entry]:
        """Every entry after the snapshot point, in the current view."""
        return list(self._cur.entries)

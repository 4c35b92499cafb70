"""`MemoryLogView`: a `LogView` held in memory, for tests, the simulator and benchmarks.

It plays the part of the redo log: the application appends what a `Ready` hands out, sets the
hard state, compacts after a checkpoint and installs snapshots. Nothing here is durable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import accumulate
from operator import itemgetter

from kvstore.consensus.config import apply_conf_change
from kvstore.consensus.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    SnapshotMeta,
)
from kvstore.errors import InvalidArgumentError, LogCompactedError, LogUnavailableError

_DATA = itemgetter(3)


class MemoryLogView:
    """An in-memory log: a snapshot point followed by entries, plus the hard state."""

    def __init__(
        self,
        snapshot: SnapshotMeta | None = None,
        hard_state: HardState | None = None,
        entries: Iterable[Entry] = (),
    ) -> None:
        self._snapshot = snapshot if snapshot is not None else SnapshotMeta()
        self._hard_state = hard_state if hard_state is not None else HardState()
        # _ents[0] stands for the snapshot point, so `term(snapshot.index)` needs no special case.
        self._ents: list[Entry] = [Entry(self._snapshot.term, self._snapshot.index)]
        self.append(list(entries))

    # --- LogView ----------------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The hard state and the configuration as of the snapshot."""
        return self._hard_state, self._snapshot.conf_state

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in `[lo, hi)`, at most `max_bytes` of data but at least one."""
        offset = self._ents[0].index
        if lo <= offset:
            raise LogCompactedError(f"index {lo} is compacted (first index {offset + 1})")
        if hi > self.last_index() + 1:
            raise LogUnavailableError(
                f"index {hi - 1} is beyond the last index {self.last_index()}"
            )
        if lo >= hi:
            return []
        out = self._ents[lo - offset : hi - offset]
        if max_bytes is not None and len(out) > 1:
            for k, total in enumerate(accumulate(map(len, map(_DATA, out)))):
                if total > max_bytes:
                    return out[: max(k, 1)]
        return out

    def term(self, index: int) -> int:
        """The term of entry `index`, for `first_index() - 1 <= index <= last_index()`."""
        offset = self._ents[0].index
        if index < offset:
            raise LogCompactedError(f"index {index} is compacted (first index {offset + 1})")
        if index - offset >= len(self._ents):
            raise LogUnavailableError(f"index {index} is beyond the last index {self.last_index()}")
        return self._ents[index - offset].term

    def first_index(self) -> int:
        """The first index still in the log (snapshot index + 1)."""
        return self._ents[0].index + 1

    def last_index(self) -> int:
        """The last index in the log (the snapshot's index when the log is empty)."""
        return self._ents[0].index + len(self._ents) - 1

    def snapshot_meta(self) -> SnapshotMeta:
        """The latest snapshot or compaction point."""
        return self._snapshot

    # --- what the application does ------------------------------------------------------------

    @property
    def hard_state(self) -> HardState:
        """The last hard state set."""
        return self._hard_state

    def set_hard_state(self, hard_state: HardState) -> None:
        """Record the hard state of a `Ready`."""
        self._hard_state = hard_state

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries with consecutive indices; any existing suffix they overlap is replaced.

        Entries at or below the snapshot point are skipped (they are already in the snapshot).
        """
        if not entries:
            return
        offset = self._ents[0].index
        first = entries[0].index
        if first <= offset:
            entries = entries[offset + 1 - first :]
            if not entries:
                return
            first = entries[0].index
        if first > self.last_index() + 1:
            raise InvalidArgumentError(
                f"append at {first} leaves a gap after the last index {self.last_index()}"
            )
        del self._ents[first - offset :]
        self._ents.extend(entries)

    def compact(self, index: int, conf_state: ConfState | None = None) -> None:
        """Drop entries through `index` (the application checkpointed its state there).

        `conf_state` is the configuration as of `index`; None computes it from the snapshot's
        configuration and the CONF_CHANGE entries up to `index`.
        """
        offset = self._ents[0].index
        if index <= offset:
            raise LogCompactedError(f"already compacted through {offset}")
        if index > self.last_index():
            raise InvalidArgumentError(
                f"compact({index}) beyond the last index {self.last_index()}"
            )
        if conf_state is None:
            conf_state = self._snapshot.conf_state
            for entry in self._ents[1 : index - offset + 1]:
                if entry.type == EntryType.CONF_CHANGE:
                    try:
                        conf_state = apply_conf_change(conf_state, ConfChange.decode(entry.data))
                    except ValueError:
                        continue
        point = self._ents[index - offset]
        self._snapshot = SnapshotMeta(index, point.term, conf_state)
        self._ents = [Entry(point.term, index), *self._ents[index - offset + 1 :]]

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        """Replace the whole log with the snapshot point `meta` (a follower installed it)."""
        if meta.index < self._ents[0].index:
            raise InvalidArgumentError(
                f"snapshot at {meta.index} is older than the log's ({self._ents[0].index})"
            )
        self._snapshot = meta
        self._ents = [Entry(meta.term, meta.index)]
        if self._hard_state.commit < meta.index:
            self._hard_state = self._hard_state._replace(commit=meta.index)

    def __repr__(self) -> str:
        return (
            f"MemoryLogView(first={self.first_index()}, last={self.last_index()}, "
            f"hard_state={self._hard_state})"
        )

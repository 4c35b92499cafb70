"""Where a Ready's fsync runs: the one rule, in one place.

The node handles every Ready through the same steps in the same order
(`NodeRuntime._ready_steps` in runtime.py): send `messages`, install a snapshot, append, fsync,
send `persisted_messages`, apply, `advance()`. Only the place of the fsync varies, and
`FsyncPlacement.decide` says which:

- `Placement.INLINE`: on the loop thread, without leaving the callback that produced the Ready.
  Chosen for a Ready with nothing to sync, and for a small batch (at most
  `INLINE_SYNC_ENTRIES_MAX` entries, a lone write) while the moving average of recent fsyncs is
  at or below `INLINE_SYNC_AVERAGE_S_MAX`. Measured on the issue 6 VM (fdatasync p50 117 us):
  the executor's thread hop and `call_soon_threadsafe` back cost more than such an fsync, about
  a third of a sequential write's latency across three nodes.
- `Placement.EXECUTOR`: in the sync executor, while the loop keeps stepping messages and
  proposals into the core; those pile up and form the next batch by themselves (natural group
  commit). Chosen for anything bigger, for any Ready while fsyncs are slow, and for any Ready
  carrying a snapshot (its install awaits the work and sync executors).

`FsyncPlacement` is owned by the loop thread: `decide` and `record` run there only. The fsync
itself may run in the sync executor, but it only measures its time and returns it; the loop
folds it into the average after awaiting it (see THREADS.md).
"""

from __future__ import annotations

import enum

from kvstore.consensus.types import Ready

INLINE_SYNC_ENTRIES_MAX = 4
"""A Ready with at most this many entries may fsync on the loop thread."""
INLINE_SYNC_AVERAGE_S_MAX = 0.001
"""... but only while the moving average of fsync times stays at or below this."""
SYNC_AVERAGE_WEIGHT = 0.2
"""Weight of the newest fsync time in that moving average."""


class Placement(enum.Enum):
    """Where one Ready is handled (and its fsync, if any, runs)."""

    INLINE = "inline"
    """On the loop thread, in the callback that produced the Ready: nothing awaits."""
    EXECUTOR = "executor"
    """By the Ready task, which awaits the fsync in the sync executor (and a snapshot install)."""


class FsyncPlacement:
    """The rule that decides where a Ready's fsync runs, and the fsync times it decides by.

    Loop thread only: `decide` before each Ready, `record` after each fsync.
    """

    __slots__ = ("average_s", "average_s_max", "entries_max", "weight")

    def __init__(
        self,
        *,
        entries_max: int = INLINE_SYNC_ENTRIES_MAX,
        average_s_max: float = INLINE_SYNC_AVERAGE_S_MAX,
        weight: float = SYNC_AVERAGE_WEIGHT,
    ) -> None:
        self.entries_max = entries_max
        self.average_s_max = average_s_max
        self.weight = weight
        self.average_s = 0.0
        """Moving average of the redo log's fsync time, in seconds."""

    def decide(self, ready: Ready) -> Placement:
        """Where `ready` is handled: see the module docstring for the rule and its measurements."""
        if ready.snapshot is not None:
            return Placement.EXECUTOR
        if not ready.must_sync:
            return Placement.INLINE
        if len(ready.entries) <= self.entries_max and self.average_s <= self.average_s_max:
            return Placement.INLINE
        return Placement.EXECUTOR

    def record(self, elapsed_s: float) -> None:
        """Fold one fsync's time into the moving average."""
        self.average_s += (elapsed_s - self.average_s) * self.weight


__all__ = [
    "INLINE_SYNC_AVERAGE_S_MAX",
    "INLINE_SYNC_ENTRIES_MAX",
    "SYNC_AVERAGE_WEIGHT",
    "FsyncPlacement",
    "Placement",
]

"""`RaftLog` (the in-memory tail over the LogView) and `MemoryLogView`."""

from __future__ import annotations

import pytest

from kvstore.consensus.log import RaftLog
from kvstore.consensus.memory import MemoryLogView
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    SnapshotMeta,
)
from kvstore.errors import (
    InvalidArgumentError,
    InvariantError,
    LogCompactedError,
    LogUnavailableError,
)

N = EntryType.NORMAL


def ents(first: int, terms: list[int], size: int = 10) -> list[Entry]:
    return [Entry(t, first + k, N, bytes([65 + k % 26]) * size) for k, t in enumerate(terms)]


# --- MemoryLogView --------------------------------------------------------------------------


def test_memory_view_ranges_are_half_open_and_checked() -> None:
    """entries(lo, hi) covers [lo, hi); below the first index is LogCompactedError, beyond the
    last is LogUnavailableError."""
    view = MemoryLogView(entries=ents(1, [1, 1, 2]))
    assert [e.index for e in view.entries(1, 3)] == [1, 2]
    assert view.entries(2, 2) == []
    assert (view.first_index(), view.last_index(), view.term(0), view.term(3)) == (1, 3, 0, 2)
    with pytest.raises(LogUnavailableError):
        view.entries(2, 5)
    with pytest.raises(LogUnavailableError):
        view.term(4)
    view.compact(2)
    with pytest.raises(LogCompactedError):
        view.entries(2, 3)
    with pytest.raises(LogCompactedError):
        view.term(1)
    assert view.term(2) == 1 and view.first_index() == 3


def test_memory_view_byte_limit_keeps_at_least_one_entry() -> None:
    """max_bytes stops early once the data would exceed it, but returns at least one entry."""
    view = MemoryLogView(entries=ents(1, [1] * 5, size=10))
    assert len(view.entries(1, 6, 25)) == 2
    assert len(view.entries(1, 6, 5)) == 1
    assert len(view.entries(1, 6, 1000)) == 5


def test_memory_view_append_replaces_the_overlapping_suffix() -> None:
    """Appended entries win over the existing tail from their first index on."""
    view = MemoryLogView(entries=ents(1, [1, 1, 1, 1]))
    view.append(ents(3, [2]))
    assert [view.term(i) for i in range(1, 4)] == [1, 1, 2] and view.last_index() == 3
    with pytest.raises(InvalidArgumentError):
        view.append(ents(9, [2]))


def test_memory_view_compact_computes_the_configuration() -> None:
    """Compaction records the snapshot point and the configuration as of it."""
    conf_entry = Entry(
        1, 2, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_VOTER, "d").encode()
    )
    view = MemoryLogView(
        snapshot=SnapshotMeta(0, 0, ConfState(("a",))),
        entries=[Entry(1, 1, N, b"x"), conf_entry, Entry(1, 3, N, b"y")],
    )
    view.compact(2)
    assert view.snapshot_meta() == SnapshotMeta(2, 1, ConfState(("a", "d"), ()))
    assert view.initial_state()[1] == ConfState(("a", "d"), ())
    with pytest.raises(LogCompactedError):
        view.compact(2)


def test_memory_view_apply_snapshot_resets_the_log() -> None:
    """Installing a snapshot discards the log; it then starts right after the snapshot."""
    view = MemoryLogView(entries=ents(1, [1, 1]), hard_state=HardState(1, None, 1))
    meta = SnapshotMeta(10, 3, ConfState(("a",)))
    view.apply_snapshot(meta)
    assert (view.first_index(), view.last_index(), view.term(10)) == (11, 10, 3)
    assert view.hard_state.commit == 10
    view.append(ents(11, [3]))
    assert view.last_index() == 11


# --- RaftLog -------------------------------------------------------------------------------------


def _log(terms: list[int], *, committed: int = 0) -> RaftLog:
    return RaftLog(MemoryLogView(entries=ents(1, terms)), committed=committed, applied=0)


def test_unstable_entries_are_handed_out_once_and_stabilized() -> None:
    """take_unstable hands each new entry out once; stable_to marks them persisted."""
    log = _log([1, 1])
    log.append(ents(3, [2, 2]))
    assert log.has_unstable()
    handed = log.take_unstable()
    assert [e.index for e in handed] == [3, 4]
    assert not log.has_unstable()
    log.append(ents(5, [2]))
    log.stable_to(4, 2)
    assert [e.index for e in log.take_unstable()] == [5]
    assert log.stable_last_index() == 4


def test_replaced_entries_are_handed_out_again() -> None:
    """If entries handed out are replaced before they are acknowledged, the acknowledgement is
    ignored and the new entries are handed out."""
    log = _log([1])
    log.append(ents(2, [1, 1, 1]))
    log.take_unstable()
    log.append(ents(3, [2]))  # a new leader replaced 3..4
    log.stable_to(4, 1)
    assert [(e.index, e.term) for e in log.take_unstable()] == [(3, 2)]
    assert log.stable_last_index() == 1


def test_append_below_the_memory_tail_replaces_stable_entries() -> None:
    """Entries replacing part of the stable log are kept in memory and win over the LogView."""
    log = _log([1, 1, 1, 1])
    log.append(ents(3, [2]))
    assert (log.last_index(), log.term(3), log.term(2)) == (3, 2, 1)
    assert [e.term for e in log.entries(1, 4)] == [1, 1, 2]


def test_append_cannot_cut_committed_entries_or_leave_gaps() -> None:
    """Invariants: committed entries are never rewritten; the log has no holes."""
    log = _log([1, 1, 1], committed=2)
    with pytest.raises(InvariantError):
        log.append(ents(2, [2]))
    with pytest.raises(InvariantError):
        log.append(ents(9, [2]))


def test_entries_span_the_view_and_the_tail_within_byte_limits() -> None:
    """entries() joins the LogView and the tail and honours max_bytes across both."""
    log = _log([1, 1, 1])
    log.append(ents(4, [2, 2, 2]))
    assert [e.index for e in log.entries(2, 7)] == [2, 3, 4, 5, 6]
    assert [e.index for e in log.entries(2, 7, 35)] == [2, 3, 4]
    assert [e.index for e in log.entries(5, 7, 1)] == [5]
    batch, size = log.entries_and_size(4, 7, 25)
    assert ([e.index for e in batch], size) == ([4, 5], 20)


def test_find_conflict_by_term() -> None:
    """Fast backtracking: the last index at or before `index` whose term is <= `term`."""
    log = _log([1, 1, 2, 2, 2, 5, 5])
    assert log.find_conflict_by_term(7, 5) == (7, 5)
    assert log.find_conflict_by_term(7, 4) == (5, 2)
    assert log.find_conflict_by_term(7, 1) == (2, 1)
    assert log.find_conflict_by_term(7, 0) == (0, 0)
    assert log.find_conflict_by_term(99, 3) == (5, 2)


def test_committed_entries_are_handed_out_once_within_limits() -> None:
    """next_committed hands out (applying, committed] in order, within the byte limit."""
    log = _log([1] * 5, committed=4)
    first = log.next_committed(25)
    second = log.next_committed(1000)
    assert [e.index for e in first] == [1, 2] and [e.index for e in second] == [3, 4]
    assert log.next_committed(1000) == []


def test_trim_keeps_only_what_is_needed_in_memory() -> None:
    """Applied and stable entries leave the cache; reads then come from the LogView."""
    view = MemoryLogView()
    log = RaftLog(view, committed=0, applied=0)
    new = ents(1, [1, 1, 1])
    log.append(new)
    view.append(log.take_unstable())
    log.stable_to(3, 1)
    log.commit_to(3)
    log.applied_to(2)
    log.trim_cache()
    assert log.mem_bytes(1, 4) == 10
    assert log.entries(1, 4) == new

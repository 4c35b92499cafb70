"""The storage model: the LogView contract and crash semantics (unsynced writes are lost)."""

from __future__ import annotations

import random

import pytest

from kvstore.consensus.types import ConfState, Entry, HardState, SnapshotMeta
from kvstore.errors import InvariantError, LogCompactedError, LogUnavailableError
from tests.sim.storage import SimStorage


def _ents(lo: int, hi: int, term: int, size: int = 1) -> list[Entry]:
    return [Entry(term, i, data=b"x" * size) for i in range(lo, hi)]


def test_empty_log_view() -> None:
    s = SimStorage()
    assert s.first_index() == 1
    assert s.last_index() == 0
    assert s.term(0) == 0
    assert s.entries(1, 1) == []
    assert s.initial_state() == (HardState(), ConfState())
    with pytest.raises(LogUnavailableError):
        s.term(1)


def test_entries_half_open_and_size_limit() -> None:
    s = SimStorage()
    s.append(_ents(1, 11, 1, size=10), HardState(1, "a", 0))
    assert [e.index for e in s.entries(3, 6)] == [3, 4, 5]
    assert [e.index for e in s.entries(3, 11, max_bytes=25)] == [3, 4]
    assert [e.index for e in s.entries(3, 11, max_bytes=1)] == [3]  # at least one
    with pytest.raises(LogUnavailableError):
        s.entries(5, 12)


def test_conflicting_append_cuts_the_suffix() -> None:
    s = SimStorage()
    s.append(_ents(1, 6, 1), None)
    s.append(_ents(3, 4, 2), None)
    assert s.last_index() == 3
    assert [s.term(i) for i in (1, 2, 3)] == [1, 1, 2]
    with pytest.raises(InvariantError):
        s.append(_ents(6, 7, 2), None)  # a gap


def test_crash_loses_unsynced_writes() -> None:
    s = SimStorage()
    s.append(_ents(1, 4, 1), HardState(1, "a", 2))
    s.sync()
    s.append(_ents(4, 6, 2), HardState(2, "b", 3))
    s.append(_ents(2, 3, 3), HardState(3, None, 3))  # overwrites synced entries, unsynced
    assert s.last_index() == 2 and s.term(2) == 3
    assert s.crash() == 0
    assert s.last_index() == 3
    assert [s.term(i) for i in (1, 2, 3)] == [1, 1, 1]
    assert s.hard_state == HardState(1, "a", 2)


def test_crash_may_keep_a_prefix_of_unsynced_writes() -> None:
    kept_counts = set()
    for seed in range(40):
        s = SimStorage()
        s.append(_ents(1, 2, 1), HardState(1, "a", 0))
        s.append(_ents(2, 3, 1), HardState(1, "a", 1))
        s.append(_ents(3, 4, 2), HardState(2, "b", 1))
        kept = s.crash(random.Random(seed))
        kept_counts.add(kept)
        # Whatever survived is exactly the first `kept` writes, in order.
        assert s.last_index() == kept
        if kept:
            assert s.hard_state.term == (1 if kept < 3 else 2)
    assert kept_counts == {0, 1, 2, 3}


def test_compaction_and_snapshot_install() -> None:
    s = SimStorage()
    s.append(_ents(1, 11, 1), HardState(1, None, 10))
    s.sync()
    conf = ConfState(("a", "b"), ())
    s.compact_through(6, conf)
    assert s.first_index() == 7
    assert s.snapshot_meta() == SnapshotMeta(6, 1, conf)
    assert s.term(6) == 1
    with pytest.raises(LogCompactedError):
        s.entries(6, 8)
    with pytest.raises(LogCompactedError):
        s.term(5)
    s.install_snapshot(SnapshotMeta(20, 3, conf))
    assert (s.first_index(), s.last_index()) == (21, 20)
    assert s.hard_state.commit == 20
    s.crash()  # the install was not synced
    assert s.snapshot_meta() == SnapshotMeta(6, 1, conf)
    assert s.last_index() == 10


def test_compaction_refused_with_unsynced_writes() -> None:
    s = SimStorage()
    s.append(_ents(1, 4, 1), None)
    with pytest.raises(InvariantError):
        s.compact_through(2, ConfState())


def test_a_crash_may_tear_the_next_append_as_the_redo_log_can() -> None:
    """Past the kept prefix, an append may survive in part: some of its entries without its
    hard state; an append that overwrites older entries survives whole or not at all."""
    plain_cuts, overwrite_cuts = set(), set()
    for seed in range(60):
        s = SimStorage()
        s.append(_ents(1, 4, 1), HardState(1, "a", 1))
        s.sync()
        s.append(_ents(4, 8, 2), HardState(2, "b", 2))  # extends the log
        rng = random.Random(seed)
        kept = s.crash(rng, tear=True)
        if kept == 0:
            plain_cuts.add(s.last_index() - 3)
            assert s.hard_state == HardState(1, "a", 1)  # the hard state came after the entries
        s = SimStorage()
        s.append(_ents(1, 6, 1), None)
        s.sync()
        s.append(_ents(3, 8, 2), HardState(2, "b", 0))  # overwrites 3..5
        kept = s.crash(random.Random(seed), tear=True)
        if kept == 0:
            terms = [s.term(i) for i in range(1, s.last_index() + 1)]
            assert terms in ([1] * 5, [1, 1, 2, 2, 2, 2, 2])  # never a mix of the two
            overwrite_cuts.add(s.last_index())
    assert plain_cuts == {0, 1, 2, 3, 4}
    assert overwrite_cuts == {5, 7}

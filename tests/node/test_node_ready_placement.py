"""The one rule for where a Ready's fsync runs (`kvstore.node.ready.FsyncPlacement`)."""

from __future__ import annotations

from kvstore.consensus.types import Entry, HardState, Ready, SnapshotMeta
from kvstore.node.ready import (
    INLINE_SYNC_AVERAGE_S_MAX,
    INLINE_SYNC_ENTRIES_MAX,
    FsyncPlacement,
    Placement,
)


def _entries(count: int) -> list[Entry]:
    return [Entry(1, index) for index in range(1, count + 1)]


def test_nothing_to_sync_is_inline_even_while_fsyncs_are_slow() -> None:
    placement = FsyncPlacement()
    placement.record(1.0)
    assert placement.decide(Ready(committed_entries=_entries(100))) is Placement.INLINE


def test_a_small_batch_is_inline_while_fsyncs_are_fast() -> None:
    placement = FsyncPlacement()
    ready = Ready(entries=_entries(INLINE_SYNC_ENTRIES_MAX), must_sync=True)
    assert placement.decide(ready) is Placement.INLINE


def test_a_large_batch_goes_to_the_executor() -> None:
    placement = FsyncPlacement()
    ready = Ready(entries=_entries(INLINE_SYNC_ENTRIES_MAX + 1), must_sync=True)
    assert placement.decide(ready) is Placement.EXECUTOR


def test_slow_fsyncs_send_even_a_lone_write_to_the_executor_until_they_are_fast_again() -> None:
    placement = FsyncPlacement()
    lone = Ready(entries=_entries(1), hard_state=HardState(1, None, 1), must_sync=True)
    placement.record(50 * INLINE_SYNC_AVERAGE_S_MAX)
    assert placement.decide(lone) is Placement.EXECUTOR
    for _ in range(40):
        placement.record(INLINE_SYNC_AVERAGE_S_MAX / 10)
    assert placement.average_s <= INLINE_SYNC_AVERAGE_S_MAX
    assert placement.decide(lone) is Placement.INLINE


def test_a_snapshot_always_goes_to_the_executor() -> None:
    placement = FsyncPlacement()
    assert placement.decide(Ready(snapshot=SnapshotMeta(5, 1))) is Placement.EXECUTOR

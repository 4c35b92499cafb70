"""WriteAheadLog against a pure-Python model, driven by a hypothesis state machine.

Tiny segments make rotation, segments that grow for a big record, and segment deletion by
compaction happen all the time; `reopen` checks that recovery rebuilds exactly the same state.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kvstore.consensus.types import ConfState, Entry, EntryType, HardState, SnapshotMeta
from kvstore.errors import InvalidArgumentError, LogCompactedError, LogUnavailableError
from kvstore.storage.wal import WriteAheadLog
from kvstore.testing import walformat

SEGMENT_BYTES = 4096
SIZES = st.sampled_from([0, 1, 7, 100, 700, 5000])  # 5000 > a segment: it must grow
NAMES = st.sampled_from(["a", "b", "c", "node-4"])


def data(index: int, term: int, size: int) -> bytes:
    unit = f"{index}.{term};".encode()
    return (unit * (size // len(unit) + 1))[:size]


class WalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="wal-model-"))
        self.wal = WriteAheadLog(self.tmp / "wal", segment_bytes=SEGMENT_BYTES)
        # The model: entries by index, the snapshot, the hard state.
        self.entries: dict[int, Entry] = {}
        self.snapshot = SnapshotMeta()
        self.hard_state = HardState()
        self.term = 1

    @initialize()
    def start(self) -> None:
        assert self.wal.last_index() == 0

    def teardown(self) -> None:
        self.wal.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- model helpers ----------------------------------------------------------------------

    @property
    def first(self) -> int:
        return self.snapshot.index + 1

    @property
    def last(self) -> int:
        return max(self.entries, default=self.snapshot.index)

    def model_term(self, index: int) -> int:
        return self.snapshot.term if index == self.snapshot.index else self.entries[index].term

    # ---- rules --------------------------------------------------------------------------------

    @rule(
        back=st.integers(0, 6),
        sizes=st.lists(SIZES, min_size=0, max_size=5),
        new_term=st.booleans(),
        with_hard_state=st.booleans(),
        vote=st.none() | NAMES,
        types=st.lists(st.sampled_from(list(EntryType)), min_size=5, max_size=5),
    )
    def append(
        self,
        back: int,
        sizes: list[int],
        new_term: bool,
        with_hard_state: bool,
        vote: str | None,
        types: list[EntryType],
    ) -> None:
        """Append, possibly overlapping the tail (a conflicting suffix is cut)."""
        if new_term:
            self.term += 1
        start = max(self.first, self.last + 1 - back)
        new = [
            Entry(self.term, start + k, types[k], data(start + k, self.term, size))
            for k, size in enumerate(sizes)
        ]
        hs = HardState(self.term, vote, self.last) if with_hard_state else None
        self.wal.append(new, hs)
        if new:
            for index in [i for i in self.entries if i >= start]:
                del self.entries[index]
            self.entries.update((e.index, e) for e in new)
        if hs is not None:
            self.hard_state = hs

    @rule(gap=st.integers(2, 4))
    def append_after_a_gap_is_refused(self, gap: int) -> None:
        index = self.last + gap
        try:
            self.wal.append([Entry(self.term, index, EntryType.NORMAL, b"gap")])
        except InvalidArgumentError:
            return
        raise AssertionError("an append leaving a gap was accepted")

    @precondition(lambda self: self.snapshot.index > 0)
    @rule()
    def append_below_the_snapshot_is_refused(self) -> None:
        index = self.snapshot.index
        try:
            self.wal.append([Entry(self.term, index, EntryType.NORMAL, b"old")])
        except LogCompactedError:
            return
        raise AssertionError("an append at the snapshot index was accepted")

    @rule(back=st.integers(0, 8))
    def truncate_after(self, back: int) -> None:
        index = max(self.snapshot.index, self.last - back)
        self.wal.truncate_after(index)
        for i in [i for i in self.entries if i > index]:
            del self.entries[i]

    @precondition(lambda self: bool(self.entries))
    @rule(
        fraction=st.floats(0, 1),
        voters=st.lists(NAMES, max_size=3, unique=True),
        learners=st.lists(NAMES, max_size=1),
    )
    def compact_through(self, fraction: float, voters: list[str], learners: list[str]) -> None:
        index = self.first + round(fraction * (self.last - self.first))
        meta = SnapshotMeta(
            index, self.model_term(index), ConfState(tuple(voters), tuple(learners))
        )
        self.wal.compact_through(meta)
        for i in [i for i in self.entries if i <= index]:
            del self.entries[i]
        self.snapshot = meta
        if index == self.last:
            # Nothing live before the newest segment: every older one was deleted.
            assert len(walformat.segment_paths(self.tmp / "wal")) == 1

    @rule(ahead=st.integers(-3, 10), term_ahead=st.integers(0, 2), voters=st.lists(NAMES))
    def install_snapshot(self, ahead: int, term_ahead: int, voters: list[str]) -> None:
        index = max(0, self.last + ahead)
        self.term += term_ahead
        meta = SnapshotMeta(index, self.term, ConfState(tuple(voters)))
        self.wal.install_snapshot(meta)
        self.entries.clear()
        self.snapshot = meta
        assert len(walformat.segment_paths(self.tmp / "wal")) == 1

    @rule()
    def sync(self) -> None:
        self.wal.sync()
        stats = self.wal.stats()
        assert stats.durable_position == stats.appended_position

    @rule()
    def reopen(self) -> None:
        self.wal.sync()
        self.wal.close()
        self.wal = WriteAheadLog(self.tmp / "wal", segment_bytes=SEGMENT_BYTES)
        assert not self.wal.recovery.torn

    @rule(data=st.data())
    def read_a_range(self, data: st.DataObject) -> None:
        lo = data.draw(st.integers(self.first, self.last + 1))
        hi = data.draw(st.integers(lo, self.last + 1))
        budget = data.draw(st.none() | st.integers(0, 12000))
        got = self.wal.entries(lo, hi, budget)
        want = [self.entries[i] for i in range(lo, hi)]
        if budget is not None and want:
            count, total = 0, 0
            for e in want:
                if count and total + len(e.data) > budget:
                    break
                total += len(e.data)
                count += 1
            want = want[:count]
        assert got == want

    # ---- invariants ---------------------------------------------------------------------------

    @invariant()
    def same_as_the_model(self) -> None:
        wal = self.wal
        assert (wal.first_index(), wal.last_index()) == (self.first, self.last)
        assert wal.entries(self.first, self.last + 1) == [
            self.entries[i] for i in range(self.first, self.last + 1)
        ]
        assert [wal.term(i) for i in range(self.first - 1, self.last + 1)] == [
            self.model_term(i) for i in range(self.first - 1, self.last + 1)
        ]
        assert wal.hard_state() == self.hard_state
        assert wal.snapshot_meta() == self.snapshot

    @invariant()
    def out_of_range_errors(self) -> None:
        if self.snapshot.index >= 1:
            try:
                self.wal.term(self.snapshot.index - 1)
                raise AssertionError("term below the snapshot")
            except LogCompactedError:
                pass
        try:
            self.wal.entries(self.first, self.last + 2)
            raise AssertionError("entries beyond the last index")
        except LogUnavailableError:
            pass


TestWalModel = WalMachine.TestCase
TestWalModel.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

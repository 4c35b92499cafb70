"""Revisions, per-key metadata, ranges at past revisions with paging, history and its
deterministic compaction (kvstore.storage.mvcc through StateMachine)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import kvstore
from kvstore.consensus.types import Entry
from kvstore.errors import CompactedError, CorruptionError, InvalidArgumentError
from kvstore.storage.commands import encode_cas, encode_delete, encode_put, encode_register
from kvstore.storage.mvcc import COMPACT_EVENTS_PER_REVISION, EVENT_DELETE, EVENT_PUT
from kvstore.storage.state_machine import StateMachine


class Driver:
    """Applies commands of one registered session to a state machine, entry by entry or in
    batches."""

    def __init__(self, sm: StateMachine) -> None:
        self.sm = sm
        self.index = 1
        self.seq = 0
        sm.apply([Entry(1, 1, data=encode_register(1))])
        self.pending: list[Entry] = []

    def _entry(self, data: bytes) -> Entry:
        self.index += 1
        return Entry(1, self.index, data=data)

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def put(self, key: bytes, value: bytes) -> object:
        return self.sm.apply([self._entry(encode_put(1, self._next(), key, value))])[0]

    def delete(self, key: bytes) -> object:
        return self.sm.apply([self._entry(encode_delete(1, self._next(), key))])[0]

    def cas(self, key: bytes, expected: bytes | None, new: bytes | None) -> object:
        data = encode_cas(1, self._next(), key, expected, new)
        return self.sm.apply([self._entry(data)])[0]


@pytest.fixture
def sm(tmp_path: Path) -> StateMachine:
    machine = StateMachine(tmp_path / "state")
    yield machine  # type: ignore[misc]
    machine.close()


def test_revisions_and_metadata_through_put_delete_recreate(sm: StateMachine) -> None:
    d = Driver(sm)
    assert sm.revision() == 0 and sm.get_kv(b"a") is None
    d.put(b"a", b"1")
    assert sm.get_kv(b"a") == (b"a", b"1", 1, 1, 1, 0)
    d.put(b"b", b"x")
    d.put(b"a", b"2")
    assert sm.get_kv(b"a") == (b"a", b"2", 1, 3, 2, 0)
    assert sm.get(b"a") == b"2" and sm.scan(b"a") == [(b"a", b"2")]
    assert d.delete(b"a") is True
    assert sm.revision() == 4 and sm.get_kv(b"a") is None
    # A delete of an absent key and a failed cas change nothing: no revision.
    assert d.delete(b"a") is False
    assert d.cas(b"b", b"nope", b"y") is False
    assert sm.revision() == 4
    d.put(b"a", b"3")  # recreated: a new life, version from 1
    assert sm.get_kv(b"a") == (b"a", b"3", 5, 5, 1, 0)
    assert d.cas(b"a", b"3", None) is True
    assert sm.revision() == 6 and sm.get_kv(b"a") is None
    # The past, key by key.
    assert sm.get_kv(b"a", revision=1) == (b"a", b"1", 1, 1, 1, 0)
    assert sm.get_kv(b"a", revision=2) == (b"a", b"1", 1, 1, 1, 0)
    assert sm.get_kv(b"a", revision=3) == (b"a", b"2", 1, 3, 2, 0)
    assert sm.get_kv(b"a", revision=4) is None
    assert sm.get_kv(b"a", revision=5) == (b"a", b"3", 5, 5, 1, 0)
    assert sm.get_kv(b"b", revision=1) is None
    assert sm.get_kv(b"b", revision=6) == (b"b", b"x", 2, 2, 1, 0)
    with pytest.raises(InvalidArgumentError, match="future"):
        sm.get_kv(b"a", revision=7)


def _model_at(history: list[dict[bytes, bytes]], revision: int) -> dict[bytes, bytes]:
    return history[revision]


def _random_writes(
    d: Driver, rng: random.Random, count: int, keys: int
) -> list[dict[bytes, bytes]]:
    """Random puts and deletes; the model of the store after each revision (index = revision)."""
    states: list[dict[bytes, bytes]] = [{}]
    current: dict[bytes, bytes] = {}
    for _ in range(count):
        key = b"k%03d" % rng.randrange(keys)
        if rng.random() < 0.3:
            existed = d.delete(key)
            if existed:
                del current[key]
                states.append(dict(current))
        else:
            value = rng.randbytes(rng.randrange(0, 40))
            d.put(key, value)
            current[key] = value
            states.append(dict(current))
    assert d.sm.revision() == len(states) - 1
    return states


def test_ranges_at_past_revisions_after_many_writes(sm: StateMachine, seed: int) -> None:
    rng = random.Random(seed)
    states = _random_writes(Driver(sm), rng, 600, 40)
    for revision in [*rng.sample(range(1, len(states)), 60), len(states) - 1]:
        expected = sorted(states[revision].items())
        page = sm.range(b"", prefix=True, revision=revision)
        assert [(kv[0], kv[1]) for kv in page.kvs] == expected, f"revision {revision}"
        assert page.count == len(expected) and not page.more and page.revision == revision
        lo, hi = sorted(rng.sample([b"k%03d" % i for i in range(40)], 2))
        page = sm.range(lo, hi, revision=revision)
        assert [kv[0] for kv in page.kvs] == [k for k, _ in expected if lo <= k < hi]
        for key, value in expected[:5]:
            kv = sm.get_kv(key, revision=revision)
            assert kv is not None and kv[1] == value and kv[3] <= revision


def test_paging_by_limit_and_bytes_yields_every_key_once(sm: StateMachine, seed: int) -> None:
    rng = random.Random(seed)
    d = Driver(sm)
    for i in range(300):
        d.put(b"p/%04d" % i, rng.randbytes(rng.randrange(0, 300)))
    d.put(b"q", b"outside")
    at = sm.revision()
    for i in range(0, 300, 3):  # writes after the paging started's revision
        d.delete(b"p/%04d" % i)
    expected = [b"p/%04d" % i for i in range(300)]
    for limit, bytes_max in ((1, None), (7, None), (None, 500), (50, 1000), (None, 1)):
        seen = [
            kv[0]
            for kv in sm.range_iter(
                b"p/", prefix=True, revision=at, page_size=limit or 1000, bytes_max=bytes_max
            )
        ]
        assert seen == expected, (limit, bytes_max)
    # A byte budget cuts a page early and says more; the count still covers every match.
    page = sm.range(b"p/", prefix=True, revision=at, bytes_max=1000)
    assert page.more and 0 < len(page.kvs) < 300 and page.count == 300
    assert sum(len(k) + len(v) for k, v, *_ in page.kvs[:-1]) <= 1000
    page = sm.range(b"p/", prefix=True, revision=at, limit=10)
    assert page.more and len(page.kvs) == 10 and page.count == 300
    page = sm.range(b"p/", prefix=True, limit=10, count_all=False)
    assert page.more and page.count == 10


def test_count_only_and_keys_only(sm: StateMachine) -> None:
    d = Driver(sm)
    for i in range(10):
        d.put(b"c%d" % i, b"value")
    page = sm.range(b"c", prefix=True, count_only=True)
    assert page.kvs == [] and page.count == 10 and not page.more
    page = sm.range(b"c", prefix=True, keys_only=True, limit=3)
    assert [kv[:2] for kv in page.kvs] == [(b"c0", b""), (b"c1", b""), (b"c2", b"")]
    assert page.kvs[0][2:] == (1, 1, 1, 0) and page.more and page.count == 10
    assert sm.range(b"c3").count == 1 and sm.range(b"zz").kvs == []
    with pytest.raises(InvalidArgumentError):
        sm.range(b"c", b"d", prefix=True)
    with pytest.raises(InvalidArgumentError):
        sm.range(b"c", prefix=True, limit=0)


def test_history_events_in_order_with_prev_kv(sm: StateMachine) -> None:
    d = Driver(sm)
    d.put(b"a", b"1")
    d.put(b"a", b"2")
    d.delete(b"a")
    d.put(b"b", b"3")
    pages = sm.events(1, prev_kv=True)
    assert [revision for revision, _ in pages] == [1, 2, 3, 4]
    (kind1, kv1, prev1), (kind2, kv2, prev2), (kind3, kv3, prev3), (kind4, kv4, prev4) = [
        events[0] for _, events in pages
    ]
    assert (kind1, kv1, prev1) == (EVENT_PUT, (b"a", b"1", 1, 1, 1, 0), None)
    assert (kind2, kv2, prev2) == (EVENT_PUT, (b"a", b"2", 1, 2, 2, 0), kv1)
    assert kind3 == EVENT_DELETE and kv3[0] == b"a" and kv3[3] == 3 and prev3 == kv2
    assert (kind4, kv4[:2], prev4) == (EVENT_PUT, (b"b", b"3"), None)
    assert [r for r, _ in sm.events(3)] == [3, 4]
    assert sm.events(5) == [] and sm.events(99) == []
    assert [r for r, _ in sm.events(1, events_max=2)] == [1, 2]


def test_compacted_revisions_raise_with_the_oldest(tmp_path: Path) -> None:
    with StateMachine(tmp_path, history_revisions_max=10) as sm:
        d = Driver(sm)
        for i in range(30):
            d.put(b"k%d" % (i % 4), b"v%d" % i)
        assert sm.revision() == 30 and sm.oldest_revision() == 21
        with pytest.raises(CompactedError) as caught:
            sm.get_kv(b"k0", revision=20)
        assert caught.value.oldest_revision == 21
        with pytest.raises(CompactedError):
            sm.range(b"k", prefix=True, revision=5)
        with pytest.raises(CompactedError):
            sm.events(20)
        # The oldest revision still reads exactly, retained events included.
        page = sm.range(b"k", prefix=True, revision=21)
        assert [kv[1] for kv in page.kvs] == [b"v20", b"v17", b"v18", b"v19"]
        assert [r for r, _ in sm.events(21)] == list(range(21, 31))


def _apply_split(sm: StateMachine, entries: list[Entry], rng: random.Random) -> None:
    at = 0
    while at < len(entries):
        size = rng.choice((1, 2, 5, 50))
        sm.apply(entries[at : at + size])
        at += size


def test_compaction_is_deterministic_whatever_the_batches(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    entries = [Entry(1, 1, data=encode_register(1))]
    for seq in range(1, 800):
        key = b"k%02d" % rng.randrange(30)
        if rng.random() < 0.25:
            data = encode_delete(1, seq, key)
        else:
            data = encode_put(1, seq, key, rng.randbytes(rng.randrange(50)))
        entries.append(Entry(1, seq + 1, data=data))
    machines = [
        StateMachine(tmp_path / str(n), history_revisions_max=37, history_bytes_max=4000)
        for n in range(3)
    ]
    try:
        machines[0].apply(entries)
        for machine in machines[1:]:
            _apply_split(machine, entries, rng)
        digests = {machine.digest() for machine in machines}
        oldest = {machine.oldest_revision() for machine in machines}
        assert len(digests) == 1 and len(oldest) == 1
        revision = machines[0].revision()
        assert revision - 37 < oldest.pop() <= revision
        # And what is held still reads right: the oldest revision against a replay.
        oldest_revision = machines[0].oldest_revision()
        states: dict[bytes, bytes] = {}
        replay = StateMachine(tmp_path / "replay")
        try:
            replay.apply(entries)
            page = replay.range(b"", prefix=True, revision=oldest_revision)
            states = {kv[0]: kv[1] for kv in page.kvs}
        finally:
            replay.close()
        page = machines[0].range(b"", prefix=True, revision=oldest_revision)
        assert {kv[0]: kv[1] for kv in page.kvs} == states
    finally:
        for machine in machines:
            machine.close()


def test_compaction_work_per_revision_is_bounded(tmp_path: Path) -> None:
    """Compaction processes at most COMPACT_EVENTS_PER_REVISION events per revision, so it
    catches up over later revisions instead of stalling the apply."""
    with StateMachine(tmp_path, history_revisions_max=1, history_bytes_max=1) as sm:
        d = Driver(sm)
        for i in range(3 * COMPACT_EVENTS_PER_REVISION):
            d.put(b"k%04d" % i, b"v")
        assert sm.oldest_revision() == sm.revision()
        assert sm.range(b"", prefix=True, revision=sm.oldest_revision()).count == (
            3 * COMPACT_EVENTS_PER_REVISION
        )


def test_snapshot_carries_history(tmp_path: Path) -> None:
    with StateMachine(tmp_path / "a") as source, StateMachine(tmp_path / "b") as target:
        d = Driver(source)
        d.put(b"a", b"1")
        d.put(b"a", b"2")
        d.delete(b"a")
        source.snapshot(tmp_path / "snap")
        target.restore(tmp_path / "snap")
        assert target.digest() == source.digest()
        assert target.get_kv(b"a", revision=2) == (b"a", b"2", 1, 2, 2, 0)
        assert target.revision() == 3 and [r for r, _ in target.events(1)] == [1, 2, 3]


def test_version_2_store_is_refused(tmp_path: Path) -> None:
    with StateMachine(tmp_path) as sm:
        env = sm._open_env()
        with env.begin(write=True) as txn:
            txn.put(b"format", bytes([2]), db=sm._meta)
    with pytest.raises(CorruptionError, match="version 2 kept no revisions"):
        StateMachine(tmp_path)


def test_bad_history_bounds_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="history_revisions_max"):
        StateMachine(tmp_path, history_revisions_max=0)


def test_options_check_the_history_bounds() -> None:
    kvstore.Options(history_revisions_max=5, history_bytes_max=1).validate()
    for bad in ({"history_revisions_max": 0}, {"history_bytes_max": -1}):
        with pytest.raises(InvalidArgumentError, match="history"):
            kvstore.Options(**bad).validate()  # type: ignore[arg-type]


def test_reads_after_compaction_match_a_model_at_every_held_revision(
    tmp_path: Path, seed: int
) -> None:
    """Compaction keeps exactly what reads at revisions >= oldest need (retained puts,
    dropped deletes), through deletes and recreations of a few hot keys."""
    rng = random.Random(seed)
    with StateMachine(tmp_path, history_revisions_max=50) as sm:
        states = _random_writes(Driver(sm), rng, 700, 12)
        oldest = sm.oldest_revision()
        assert oldest == sm.revision() - 49
        for revision in range(oldest, sm.revision() + 1):
            page = sm.range(b"", prefix=True, revision=revision)
            assert {kv[0]: kv[1] for kv in page.kvs} == states[revision], f"revision {revision}"
            for key in (b"k%03d" % i for i in range(12)):
                kv = sm.get_kv(key, revision=revision)
                assert (kv[1] if kv else None) == states[revision].get(key)
        events = [e for _, es in sm.events(oldest, events_max=10_000) for e in es]
        assert len(events) == sm.revision() - oldest + 1  # one event per revision here


def test_compaction_drops_tombstones_of_old_deletes(tmp_path: Path) -> None:
    with StateMachine(tmp_path, history_revisions_max=10) as sm:
        d = Driver(sm)
        for i in range(500):
            d.put(b"t%04d" % i, b"v")
            d.delete(b"t%04d" % i)
        with sm._open_env().begin() as txn:
            data_entries = txn.stat(sm._data)["entries"]
            history_entries = txn.stat(sm._history)["entries"]
        # Only deletes younger than the oldest revision keep a tombstone and an event.
        assert data_entries <= 10 and history_entries <= 11
        oldest = sm.oldest_revision()  # odd revisions are puts, even ones deletes
        assert sm.range(b"", prefix=True, revision=oldest + oldest % 2).count == 0
        assert sm.range(b"", prefix=True, revision=oldest + 1 - oldest % 2).count == 1


def test_events_iter_pages_through_every_revision_once(sm: StateMachine) -> None:
    d = Driver(sm)
    for i in range(120):
        d.put(b"w%d" % (i % 7), b"%d" % i)
    seen = [revision for revision, _ in sm.events_iter(5, events_max=16)]
    assert seen == list(range(5, 121))


def test_history_bytes_stay_within_their_bound(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    with StateMachine(tmp_path, history_bytes_max=20_000) as sm:
        d = Driver(sm)
        largest = 0
        for i in range(400):
            d.put(b"b%03d" % rng.randrange(50), rng.randbytes(rng.randrange(200)))
            largest = max(largest, sm.history_bytes())
            if i == 20:
                early = sm.history_bytes()
        assert early > 0
        # One put's event is at most 32 + 51 + 4 + 200 bytes: the bound plus one command.
        assert 10_000 < largest <= 20_000 + 300
        assert sm.oldest_revision() > 1

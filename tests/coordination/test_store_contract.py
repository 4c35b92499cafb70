"""The coordination semantics every store must keep (etcd v3 as the reference), run against the
`store` fixture: today the in-memory fake the recipe tests rely on, later a real node and the
clients. Each test states one rule."""

from __future__ import annotations

from typing import Any

import pytest

from kvstore import Compare, KeyValue, Op, RangeResult, WatchEvent
from kvstore.errors import CompactedError, InvalidArgumentError, LeaseNotFoundError


def revision_of(store: Any) -> int:
    return int(store.range(b"\x00", limit=1).revision)


def test_each_write_makes_one_revision_and_reads_make_none(store: Any) -> None:
    start = revision_of(store)
    store.put(b"a", b"1")
    assert revision_of(store) == start + 1
    result = store.txn([], [Op.put(b"b", b"1"), Op.put(b"c", b"1"), Op.delete(b"a")])
    assert result.revision == start + 2 == revision_of(store)
    store.txn([], [Op.get(b"b"), Op.range(b"", prefix=True)])
    assert revision_of(store) == start + 2


def test_key_metadata_follows_its_life(store: Any) -> None:
    store.put(b"k", b"1")
    created = store.get_kv(b"k")
    assert created.version == 1 and created.create_revision == created.mod_revision
    store.put(b"k", b"2")
    updated = store.get_kv(b"k")
    assert (updated.value, updated.version) == (b"2", 2)
    assert updated.create_revision == created.create_revision
    assert updated.mod_revision > created.mod_revision
    assert store.delete(b"k") is True
    assert store.get_kv(b"k") is None
    store.put(b"k", b"3")
    again = store.get_kv(b"k")
    assert again.version == 1 and again.create_revision > updated.mod_revision


def test_txn_compares_and_results(store: Any) -> None:
    absent = Compare(b"k", "create_revision", "==", 0)
    first = store.txn([absent], [Op.put(b"k", b"v"), Op.get(b"k")], [Op.get(b"k")])
    assert first.succeeded is True
    assert first.results[0] is None
    assert isinstance(first.results[1], KeyValue) and first.results[1].value == b"v"
    second = store.txn([absent], [Op.put(b"k", b"w")], [Op.get(b"k")])
    assert second.succeeded is False and second.revision == first.revision
    assert second.results[0].value == b"v"
    # No value compare holds on a missing key, not even "!=".
    missing = store.txn([Compare(b"nope", "value", "!=", b"x")], [Op.put(b"z", b"1")])
    assert missing.succeeded is False and store.get_kv(b"z") is None
    store.put(b"r1", b"1")
    store.put(b"r2", b"2")
    mixed = store.txn(
        [Compare(b"k", "version", "==", 1), Compare(b"k", "exists", "==", True)],
        [
            Op.delete(b"k"),
            Op.delete(b"k"),
            Op.delete_range(b"r", b"s"),
            Op.get(b"r1"),
            Op.range(b"", prefix=True),
        ],
    )
    assert mixed.succeeded
    assert mixed.results[:4] == [True, False, 2, None]
    assert isinstance(mixed.results[4], RangeResult) and mixed.results[4].count == 0


def test_a_put_on_a_missing_lease_writes_nothing(store: Any) -> None:
    before = revision_of(store)
    with pytest.raises(LeaseNotFoundError):
        store.txn([], [Op.put(b"a", b"1"), Op.put(b"b", b"1", lease=987654)])
    assert store.get_kv(b"a") is None and revision_of(store) == before


def test_ranges_page_and_count(store: Any) -> None:
    for i in range(7):
        store.put(b"p/%d" % i, b"v%d" % i)
    store.put(b"q", b"other")
    first = store.range(b"p/", prefix=True, limit=3)
    assert [kv.key for kv in first.kvs] == [b"p/0", b"p/1", b"p/2"]
    assert first.more is True and first.count == 7
    rest = store.range(b"p/3", b"p0", revision=first.revision)
    assert [kv.key for kv in rest.kvs] == [b"p/3", b"p/4", b"p/5", b"p/6"] and not rest.more
    keys_only = store.range(b"p/", prefix=True, keys_only=True)
    assert {kv.value for kv in keys_only.kvs} == {b""}
    counted = store.range(b"p/", prefix=True, count_only=True)
    assert counted.kvs == [] and counted.count == 7
    assert store.range(b"q").kvs[0].value == b"other"


def test_a_past_revision_reads_the_past(store: Any) -> None:
    store.put(b"k", b"old")
    then = revision_of(store)
    store.put(b"k", b"new")
    store.delete(b"k")
    assert store.get_kv(b"k", revision=then).value == b"old"
    assert store.range(b"k", revision=then).kvs[0].value == b"old"


def test_watch_replays_history_in_order_with_prev_kv(store: Any) -> None:
    store.put(b"w/a", b"1")
    start = revision_of(store)
    store.put(b"w/a", b"2")
    store.put(b"x", b"ignored")
    store.txn([], [Op.put(b"w/b", b"3"), Op.delete(b"w/a")])
    with store.watch(b"w/", prefix=True, start_revision=start, prev_kv=True) as watch:
        events = [next(watch) for _ in range(4)]
    assert [(e.type, e.kv.key) for e in events] == [
        ("put", b"w/a"),
        ("put", b"w/a"),
        ("put", b"w/b"),
        ("delete", b"w/a"),
    ]
    revisions = [e.kv.mod_revision for e in events]
    assert revisions == sorted(revisions) and revisions[2] == revisions[3]
    assert events[1].prev_kv is not None and events[1].prev_kv.value == b"1"
    assert events[3].prev_kv is not None and events[3].prev_kv.value == b"2"
    assert events[3].kv.value == b"" and events[2].prev_kv is None


def test_watch_without_start_sees_only_later_writes(store: Any) -> None:
    store.put(b"k", b"before")
    with store.watch(b"k") as watch:
        store.put(b"k", b"after")
        event = next(watch)
    assert event == WatchEvent("put", store.get_kv(b"k"), None)


def test_a_revoked_lease_deletes_its_keys_at_one_revision(store: Any) -> None:
    lease = store.grant(5.0)
    store.put(b"l/a", b"1", lease=lease.id)
    store.put(b"l/b", b"1", lease=lease.id)
    store.put(b"l/c", b"1")
    assert store.get_kv(b"l/a").lease == lease.id
    assert store.keepalive(lease.id) > 0 and store.time_to_live(lease.id) is not None
    start = revision_of(store) + 1
    store.revoke(lease.id)
    with store.watch(b"l/", prefix=True, start_revision=start) as watch:
        events = [next(watch), next(watch)]
    assert {e.type for e in events} == {"delete"}
    assert events[0].kv.mod_revision == events[1].kv.mod_revision == revision_of(store)
    assert store.get_kv(b"l/c") is not None
    assert store.time_to_live(lease.id) is None
    with pytest.raises(LeaseNotFoundError):
        store.keepalive(lease.id)


def test_bad_input_is_refused(store: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        store.watch(b"")
    for ttl_s in (0, float("nan"), 365 * 86400.0):
        with pytest.raises(InvalidArgumentError):
            store.grant(ttl_s)
    with pytest.raises(InvalidArgumentError):
        store.txn([], [Op.put(b"k", b"v")] * 129)


def test_a_compacted_start_names_the_oldest_revision(store: Any) -> None:
    if not hasattr(store, "compact"):
        pytest.skip("this store compacts by its own bound")
    for i in range(5):
        store.put(b"c", b"%d" % i)
    store.compact(revision_of(store) - 1)
    with pytest.raises(CompactedError) as raised:
        store.watch(b"c", start_revision=1)
    assert raised.value.oldest_revision == revision_of(store) - 1

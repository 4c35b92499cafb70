"""The coordination API of the embedded `kvstore.Node` (DESIGN.md §2b) on a 3-member cluster:
revisions and key metadata, reads at a past revision, paged ranges, `scan_iter`, transactions
and leases, and bad input refused before anything is written.

Tests share one cluster; each uses its own keys and measures revisions relative to its start.
Writes go to the leader; reads also go to a follower (linearizable: after its read barrier).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kvstore
from kvstore import Compare, KeyValue, Op, RangeResult, TxnResult
from kvstore.coordination import KEYSPACE_END
from kvstore.node import coordination as node_coordination

from .conftest import FAST, EmbeddedCluster

TOO_BIG = b"v" * (FAST.max_value_bytes + 1)


def revision_of(node: kvstore.Node) -> int:
    """The store's revision, as a linearizable read sees it."""
    return node.range(b"\x00").revision


def test_revisions_grow_by_one_per_write_and_key_metadata_follows_its_life(
    shared_cluster: EmbeddedCluster,
) -> None:
    leader = shared_cluster.leader()
    follower = shared_cluster.followers()[0]
    start = revision_of(leader)
    leader.put(b"meta/k", b"1")
    assert revision_of(follower) == start + 1
    created = follower.get_kv(b"meta/k")
    assert created == KeyValue(b"meta/k", b"1", start + 1, start + 1, 1, None)
    leader.put(b"meta/k", b"2")
    updated = follower.get_kv(b"meta/k")
    assert updated == KeyValue(b"meta/k", b"2", start + 1, start + 2, 2, None)
    assert leader.delete(b"meta/k") is True
    assert follower.get_kv(b"meta/k") is None
    assert leader.delete(b"meta/k") is False  # deleted nothing: no new revision
    assert revision_of(leader) == start + 3
    leader.put(b"meta/k", b"3")
    again = follower.get_kv(b"meta/k")
    assert again == KeyValue(b"meta/k", b"3", start + 4, start + 4, 1, None)
    # Reads make no revision.
    follower.range(b"meta/", prefix=True)
    assert revision_of(leader) == start + 4


def test_get_kv_and_range_read_a_past_revision(shared_cluster: EmbeddedCluster) -> None:
    leader = shared_cluster.leader()
    follower = shared_cluster.followers()[-1]
    leader.put(b"past/k", b"old")
    then = revision_of(leader)
    leader.put(b"past/k", b"new")
    leader.delete(b"past/k")
    assert follower.get_kv(b"past/k") is None
    old = follower.get_kv(b"past/k", revision=then)
    assert old is not None and old.value == b"old" and old.mod_revision == then
    assert leader.range(b"past/k", revision=then).kvs[0].value == b"old"
    assert leader.get_kv(b"past/k", revision=then + 1).value == b"new"  # type: ignore[union-attr]
    assert leader.range(b"past/", prefix=True, revision=then).revision == then
    with pytest.raises(kvstore.InvalidArgumentError, match="future"):
        leader.get_kv(b"past/k", revision=revision_of(leader) + 1000)


def test_range_pages_with_limit_and_more_counts_and_keys_only(
    shared_cluster: EmbeddedCluster,
) -> None:
    leader = shared_cluster.leader()
    follower = shared_cluster.followers()[0]
    for i in range(7):
        leader.put(b"page/%d" % i, b"v%d" % i)
    leader.put(b"pagf", b"outside the prefix")
    first = follower.range(b"page/", prefix=True, limit=3)
    assert [kv.key for kv in first.kvs] == [b"page/0", b"page/1", b"page/2"]
    assert first.more is True and first.count == 7
    leader.put(b"page/9", b"written after the first page")
    rest = follower.range(first.kvs[-1].key + b"\0", b"page0", limit=10, revision=first.revision)
    assert [kv.key for kv in rest.kvs] == [b"page/%d" % i for i in range(3, 7)]
    assert rest.more is False and rest.count == 4 and rest.revision == first.revision
    exact = follower.range(b"page/", prefix=True, limit=8)
    assert len(exact.kvs) == 8 and exact.more is False
    keys_only = follower.range(b"page/", prefix=True, keys_only=True)
    assert {kv.value for kv in keys_only.kvs} == {b""} and len(keys_only.kvs) == 8
    assert keys_only.kvs[0].version == 1 and keys_only.kvs[0].mod_revision > 0
    counted = follower.range(b"page/", prefix=True, count_only=True)
    assert counted == RangeResult([], False, 8, counted.revision)
    assert follower.range(b"pagf").kvs[0].value == b"outside the prefix"
    assert follower.range(b"page/3", b"page/5").count == 2  # end is exclusive
    assert follower.range(b"page/missing") == RangeResult([], False, 0, counted.revision)
    stale = follower.range(b"page/", prefix=True, consistency="stale")
    assert stale.count <= 8


def test_scan_iter_yields_each_key_once_in_order_at_one_revision(
    shared_cluster: EmbeddedCluster,
) -> None:
    leader = shared_cluster.leader()
    follower = shared_cluster.followers()[-1]
    keys = [b"iter/%03d" % i for i in range(25)]
    for key in keys:
        leader.put(key, key)
    leader.put(b"iterz", b"outside")
    pages = follower.scan_iter(b"iter/", page_size=4)
    seen = [next(pages)]
    leader.put(b"iter/999", b"written while iterating")
    leader.delete(keys[-1])
    seen += list(pages)
    # One revision (the first page's): the later put and delete are not seen.
    assert [kv.key for kv in seen] == keys
    assert all(kv.value == kv.key for kv in seen)
    every = [kv.key for kv in leader.scan_iter(page_size=1000)]
    assert every == sorted(set(every)) and b"iterz" in every and b"iter/999" in every


def test_txn_branches_compare_every_target_and_share_one_revision(
    shared_cluster: EmbeddedCluster,
) -> None:
    leader = shared_cluster.leader()
    follower = shared_cluster.followers()[0]
    leader.put(b"tx/a", b"10")
    a = leader.get_kv(b"tx/a")
    assert a is not None
    start = revision_of(leader)
    holding = [
        Compare(b"tx/a", "value", "==", b"10"),
        Compare(b"tx/a", "value", "<", b"2"),
        Compare(b"tx/a", "version", "==", 1),
        Compare(b"tx/a", "create_revision", "==", a.create_revision),
        Compare(b"tx/a", "mod_revision", ">", 0),
        Compare(b"tx/a", "exists", "==", True),
        Compare(b"tx/none", "exists", "!=", True),
        Compare(b"tx/none", "version", "<", 1),
        Compare(b"tx/a", "mod_revision", "!=", a.mod_revision + 1),
    ]
    result = leader.txn(
        holding,
        [
            Op.put(b"tx/b", b"1"),
            Op.put(b"tx/c", b"2"),
            Op.delete(b"tx/a"),
            Op.get(b"tx/b"),
            Op.range(b"tx/", prefix=True),
        ],
        [Op.put(b"tx/failed", b"1")],
    )
    assert result.succeeded is True and result.revision == start + 1
    put_b, put_c, deleted, got, ranged = result.results
    assert put_b is None and put_c is None and deleted is True
    assert got == KeyValue(b"tx/b", b"1", start + 1, start + 1, 1, None)
    assert isinstance(ranged, RangeResult)
    assert [kv.key for kv in ranged.kvs] == [b"tx/b", b"tx/c"]
    # Every write of the txn carries its one revision.
    b, c = follower.get_kv(b"tx/b"), follower.get_kv(b"tx/c")
    assert b is not None and c is not None
    assert b.mod_revision == c.mod_revision == start + 1
    assert follower.get_kv(b"tx/a") is None and follower.get_kv(b"tx/failed") is None
    # Each compare that fails sends the txn to its failure branch.
    failing = [
        Compare(b"tx/b", "value", "==", b"2"),
        Compare(b"tx/b", "value", ">", b"1"),
        Compare(b"tx/b", "version", ">", 1),
        Compare(b"tx/b", "create_revision", "<", start + 1),
        Compare(b"tx/b", "mod_revision", "!=", start + 1),
        Compare(b"tx/b", "exists", "==", False),
        Compare(b"tx/none", "value", "!=", b"x"),  # a missing key fails every value compare
    ]
    for compare in failing:
        before = revision_of(leader)
        failed = leader.txn([compare], [Op.put(b"tx/ok", b"1")], [Op.get(b"tx/b")])
        assert failed.succeeded is False, compare
        assert failed.results == [b] and failed.revision == before
    assert follower.get_kv(b"tx/ok") is None
    # delete_range reports how many it deleted, at one revision.
    cleared = leader.txn([], [Op.delete_range(b"tx/", b"tx0")])
    assert cleared.results == [2] and cleared.revision == revision_of(leader)
    assert follower.range(b"tx/", prefix=True).count == 0


def test_a_txn_that_fails_at_apply_writes_nothing(shared_cluster: EmbeddedCluster) -> None:
    leader = shared_cluster.leader()
    before = revision_of(leader)
    with pytest.raises(kvstore.LeaseNotFoundError):
        leader.txn([], [Op.put(b"lost/a", b"1"), Op.put(b"lost/b", b"1", lease=987654321)])
    with pytest.raises(kvstore.LeaseNotFoundError):
        leader.put(b"lost/c", b"1", lease=987654321)
    assert leader.range(b"lost/", prefix=True).count == 0
    assert revision_of(leader) == before


def test_leases_attach_keys_and_revoke_deletes_them_at_one_revision(
    shared_cluster: EmbeddedCluster,
) -> None:
    leader = shared_cluster.leader()
    follower = shared_cluster.followers()[0]
    lease = leader.grant(30.0)
    assert lease.ttl_s == 30.0 and lease.id >= 1
    other = follower.grant(30)
    assert other.id != lease.id
    leader.put(b"lease/a", b"1", lease=lease.id)
    follower.put(b"lease/b", b"1", lease=lease.id)
    leader.put(b"lease/c", b"1", lease=other.id)
    leader.put(b"lease/plain", b"1")
    kv = follower.get_kv(b"lease/a")
    assert kv is not None and kv.lease == lease.id and kv.version == 1
    before = revision_of(leader)
    follower.revoke(lease.id)
    assert revision_of(leader) == before + 1
    remaining = [kv.key for kv in follower.range(b"lease/", prefix=True).kvs]
    assert remaining == [b"lease/c", b"lease/plain"]
    gone_a = leader.get_kv(b"lease/a", revision=before)
    assert gone_a is not None and gone_a.lease == lease.id  # the past still shows it
    with pytest.raises(kvstore.LeaseNotFoundError) as raised:
        leader.revoke(lease.id)
    assert raised.value.lease_id == lease.id
    with pytest.raises(kvstore.LeaseNotFoundError):
        leader.put(b"lease/d", b"1", lease=lease.id)
    leader.revoke(other.id)
    assert [kv.key for kv in leader.range(b"lease/", prefix=True).kvs] == [b"lease/plain"]


# (name, call): each must raise InvalidArgumentError before anything is written.
BAD_CALLS: list[tuple[str, Callable[[kvstore.Node], object]]] = [
    ("get_kv-empty-key", lambda n: n.get_kv(b"")),
    ("get_kv-str-key", lambda n: n.get_kv("k")),  # type: ignore[arg-type]
    ("get_kv-zero-revision", lambda n: n.get_kv(b"k", revision=0)),
    ("get_kv-bool-revision", lambda n: n.get_kv(b"k", revision=True)),
    ("get_kv-bad-consistency", lambda n: n.get_kv(b"k", consistency="strong")),  # type: ignore[arg-type]
    ("get_kv-bad-timeout", lambda n: n.get_kv(b"k", timeout_s=0)),
    ("range-end-before-start", lambda n: n.range(b"b", b"a")),
    ("range-end-and-prefix", lambda n: n.range(b"a", b"b", prefix=True)),
    ("range-zero-limit", lambda n: n.range(b"a", prefix=True, limit=0)),
    ("range-huge-limit", lambda n: n.range(b"a", prefix=True, limit=1 << 63)),
    ("range-str-prefix-flag", lambda n: n.range(b"a", prefix="yes")),  # type: ignore[arg-type]
    ("range-str-keys-only", lambda n: n.range(b"a", keys_only="yes")),  # type: ignore[arg-type]
    ("range-negative-revision", lambda n: n.range(b"a", revision=-1)),
    ("range-bad-consistency", lambda n: n.range(b"a", consistency=None)),  # type: ignore[arg-type]
    ("scan_iter-str-prefix", lambda n: n.scan_iter("a")),  # type: ignore[arg-type]
    ("scan_iter-zero-page", lambda n: n.scan_iter(b"a", page_size=0)),
    ("scan_iter-none-page", lambda n: n.scan_iter(b"a", page_size=None)),  # type: ignore[arg-type]
    ("txn-not-a-compare", lambda n: n.txn([("k", "value", "==", b"v")], [])),  # type: ignore[list-item]
    ("txn-not-an-op", lambda n: n.txn([], [b"put"])),  # type: ignore[list-item]
    ("txn-too-many-ops", lambda n: n.txn([], [Op.put(b"bad/k", b"v")] * 129)),
    ("txn-oversized-value", lambda n: n.txn([], [Op.put(b"bad/k", TOO_BIG)])),
    ("txn-too-many-compares", lambda n: n.txn([Compare(b"k", "version", "==", 0)] * 129, [])),
    ("txn-too-many-failure-ops", lambda n: n.txn([], [], [Op.delete(b"bad/k")] * 129)),
    ("txn-bad-timeout", lambda n: n.txn([], [Op.put(b"bad/k", b"v")], timeout_s=-1)),
    ("txn-str-branch", lambda n: n.txn([], "put")),  # type: ignore[arg-type]
    ("put-zero-lease", lambda n: n.put(b"bad/k", b"v", lease=0)),
    ("put-str-lease", lambda n: n.put(b"bad/k", b"v", lease="1")),  # type: ignore[arg-type]
    ("grant-zero-ttl", lambda n: n.grant(0)),
    ("grant-nan-ttl", lambda n: n.grant(float("nan"))),
    ("grant-a-year", lambda n: n.grant(365 * 24 * 3600.0)),
    ("grant-bool-ttl", lambda n: n.grant(True)),
    ("revoke-zero-id", lambda n: n.revoke(0)),
    ("revoke-negative-id", lambda n: n.revoke(-5)),
]


@pytest.mark.parametrize("call", [call for _name, call in BAD_CALLS], ids=[n for n, _ in BAD_CALLS])
def test_bad_input_raises_before_anything_is_written(
    shared_cluster: EmbeddedCluster, call: Callable[[Any], object]
) -> None:
    leader = shared_cluster.leader()
    commit_before = leader.status().commit_index
    with pytest.raises(kvstore.InvalidArgumentError):
        call(leader)
    assert leader.status().commit_index == commit_before
    assert leader.get_kv(b"bad/k") is None


def test_reads_below_the_history_raise_compacted_naming_the_oldest_revision(
    tmp_path: Path,
) -> None:
    options = dataclasses.replace(FAST, history_revisions_max=3)
    embedded = EmbeddedCluster(tmp_path, options=options)
    try:
        leader = embedded.start().leader()
        follower = embedded.followers()[0]
        for i in range(3):
            leader.put(b"old/%d" % i, b"v")
        pages = follower.scan_iter(b"old/", page_size=1)
        assert next(pages).key == b"old/0"
        for i in range(10):
            leader.put(b"hot", b"%d" % i)
        latest = revision_of(follower)
        with pytest.raises(kvstore.CompactedError) as raised:
            follower.get_kv(b"hot", revision=1)
        oldest = raised.value.oldest_revision
        assert 1 < oldest <= latest
        with pytest.raises(kvstore.CompactedError):
            follower.range(b"old/", prefix=True, revision=oldest - 1)
        assert follower.get_kv(b"hot", revision=oldest) is not None
        # The iterator's revision was compacted while it paused between pages.
        with pytest.raises(kvstore.CompactedError):
            list(pages)
    finally:
        embedded.stop()


def test_conversions_between_public_values_and_the_replicated_form() -> None:
    assert node_coordination.key_value((b"k", b"v", 2, 3, 2, 0)) == KeyValue(b"k", b"v", 2, 3, 2)
    assert node_coordination.key_value((b"k", b"v", 2, 3, 2, 9)).lease == 9
    # An unbounded range (prefix b"" or all 0xff, or an end of KEYSPACE_END) becomes a prefix
    # op, whose range has no end either; a limit past the encoding's u32 means "no limit".
    every, tail, deleted = node_coordination.txn_ops(
        [
            Op.range(b"", prefix=True, limit=1 << 40),
            Op.range(b"\xff\xff", KEYSPACE_END),
            Op.delete_range(b"", KEYSPACE_END),
        ],
        FAST.max_value_bytes,
    )
    assert (every.end, every.prefix, every.limit) == (None, True, None)
    assert (tail.key, tail.end, tail.prefix) == (b"\xff\xff", None, True)
    assert (deleted.end, deleted.prefix) == (None, True)
    with pytest.raises(kvstore.InvalidArgumentError, match="KEYSPACE_END"):
        node_coordination.txn_ops([Op.range(b"m", KEYSPACE_END)], FAST.max_value_bytes)
    with pytest.raises(kvstore.InvalidArgumentError):
        node_coordination.txn_ops([Op.put(b"k", TOO_BIG)], FAST.max_value_bytes)
    # A retried txn answered from its session's window knows only which branch ran.
    assert node_coordination.txn_result(True, 7) == TxnResult(True, [], 7)


def test_a_txn_reads_and_deletes_the_whole_keyspace_from_a_member(tmp_path: Path) -> None:
    embedded = EmbeddedCluster(tmp_path)
    try:
        leader = embedded.start().leader()
        follower = embedded.followers()[0]
        for key in (b"a", b"m", b"\xff\xff"):
            leader.put(key, b"v")
        read = follower.txn([], [Op.range(b"", prefix=True), Op.range(b"\xff", KEYSPACE_END)])
        every, tail = read.results
        assert isinstance(every, RangeResult) and isinstance(tail, RangeResult)
        assert [kv.key for kv in every.kvs] == [b"a", b"m", b"\xff\xff"]
        assert [kv.key for kv in tail.kvs] == [b"\xff\xff"]
        cleared = follower.txn([], [Op.delete_range(b"", KEYSPACE_END)])
        assert cleared.results == [3]
        assert leader.range(b"", prefix=True).count == 0
    finally:
        embedded.stop()

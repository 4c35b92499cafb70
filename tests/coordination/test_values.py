"""The coordination value types: every constructor checks its arguments, compares follow etcd."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import pytest

import kvstore
from kvstore.coordination import (
    COMPARES_PER_TXN_MAX,
    KEYSPACE_END,
    LEASE_ID_MAX,
    OPS_PER_TXN_MAX,
    check_lease_ttl,
    check_revision,
    check_txn,
    range_end_of_prefix,
)
from kvstore.errors import InvalidArgumentError

KV = kvstore.KeyValue(b"k", b"v", create_revision=3, mod_revision=7, version=4, lease=None)


def test_public_names_are_exported() -> None:
    for name in ("KeyValue", "RangeResult", "Compare", "Op", "TxnResult", "WatchEvent", "Watch"):
        assert name in kvstore.__all__
        assert getattr(kvstore, name).__doc__
    assert "Lease" in kvstore.__all__


def test_key_value_is_frozen_and_comparable() -> None:
    with pytest.raises(FrozenInstanceError):
        KV.value = b"x"  # type: ignore[misc]
    assert kvstore.KeyValue(b"k", b"v", 3, 7, 4, None) == KV
    assert hash(KV) == hash(kvstore.KeyValue(b"k", b"v", 3, 7, 4))


@pytest.mark.parametrize(
    ("target", "op", "value", "expected"),
    [
        ("value", "==", b"v", True),
        ("value", "!=", b"v", False),
        ("value", "<", b"w", True),
        ("value", ">", b"a", True),
        ("version", "==", 4, True),
        ("version", ">", 4, False),
        ("create_revision", "<", 4, True),
        ("mod_revision", "==", 7, True),
        ("mod_revision", "!=", 7, False),
        ("exists", "==", True, True),
        ("exists", "!=", True, False),
    ],
)
def test_compare_on_an_existing_key(target: str, op: str, value: object, expected: bool) -> None:
    assert kvstore.Compare(b"k", target, op, value).holds(KV) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "op", "value", "expected"),
    [
        # etcd: a missing key has version, create and mod revision 0 ...
        ("version", "==", 0, True),
        ("create_revision", "==", 0, True),
        ("mod_revision", "<", 1, True),
        ("exists", "==", False, True),
        ("exists", "==", True, False),
        # ... and no value compare holds on it, not even "!=".
        ("value", "==", b"", False),
        ("value", "!=", b"v", False),
        ("value", ">", b"", False),
    ],
)
def test_compare_on_a_missing_key(target: str, op: str, value: object, expected: bool) -> None:
    assert kvstore.Compare(b"k", target, op, value).holds(None) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "target", "op", "value"),
    [
        (b"", "value", "==", b""),
        (b"x" * 512, "value", "==", b""),
        ("k", "value", "==", b""),
        (b"k", "lease", "==", 1),
        (b"k", "value", "<=", b""),
        (b"k", "value", "=", b""),
        (b"k", "value", "==", "text"),
        (b"k", "value", "==", None),
        (b"k", "version", "==", b"1"),
        (b"k", "version", "==", True),
        (b"k", "version", "==", -1),
        (b"k", "mod_revision", "==", 1.0),
        (b"k", "create_revision", "==", 1 << 63),
        (b"k", "exists", "==", 1),
        (b"k", "exists", "<", True),
    ],
)
def test_compare_refuses_bad_arguments(
    key: object, target: object, op: object, value: object
) -> None:
    with pytest.raises(InvalidArgumentError):
        kvstore.Compare(key, target, op, value)  # type: ignore[arg-type]


def test_op_constructors() -> None:
    assert kvstore.Op.put(b"k", b"v", lease=5) == kvstore.Op("put", b"k", None, b"v", 5, None)
    assert kvstore.Op.delete(b"k").kind == "delete"
    assert kvstore.Op.delete_range(b"a", b"c") == kvstore.Op("delete_range", b"a", b"c")
    assert kvstore.Op.get(b"k") == kvstore.Op("get", b"k")
    assert kvstore.Op.range(b"a", b"b", limit=3) == kvstore.Op("range", b"a", b"b", limit=3)
    assert kvstore.Op.range(b"a") == kvstore.Op("range", b"a", None)
    assert kvstore.Op.range(b"ab", prefix=True).end == b"ac"
    assert kvstore.Op.range(b"", prefix=True).end == KEYSPACE_END


@pytest.mark.parametrize(
    "build",
    [
        lambda: kvstore.Op.put(b"", b"v"),
        lambda: kvstore.Op.put(b"k", "v"),
        lambda: kvstore.Op.put(b"k", b"v", lease=0),
        lambda: kvstore.Op.put(b"k", b"v", lease=LEASE_ID_MAX + 1),
        lambda: kvstore.Op.put(b"k", b"v", lease=True),
        lambda: kvstore.Op.delete(b"x" * 512),
        lambda: kvstore.Op.delete_range(b"b", b"a"),
        lambda: kvstore.Op.delete_range(b"a", b"a"),
        lambda: kvstore.Op.delete_range(b"a", None),
        lambda: kvstore.Op.get(b""),
        lambda: kvstore.Op.range(b""),
        lambda: kvstore.Op.range(b"a", b"b", prefix=True),
        lambda: kvstore.Op.range(b"a", limit=0),
        lambda: kvstore.Op.range(b"a", limit=True),
        lambda: kvstore.Op.range(b"a", limit=1 << 64),
        lambda: kvstore.Op.range(b"a", prefix=1),
        lambda: kvstore.Op.range(b"a", b"x" * 513),
    ],
)
def test_op_refuses_bad_arguments(build: object) -> None:
    with pytest.raises(InvalidArgumentError):
        build()  # type: ignore[operator]


def test_prefix_range_end_covers_exactly_the_prefix() -> None:
    assert range_end_of_prefix(b"a") == b"b"
    assert range_end_of_prefix(b"a\xff") == b"b"
    assert range_end_of_prefix(b"\xff\xff") == KEYSPACE_END
    # Every valid key sorts below KEYSPACE_END, the longest all-0xff key included.
    assert KEYSPACE_END > b"\xff" * 511
    for prefix in (b"a", b"a\xff", b"\x00", b"ab\xfe"):
        end = range_end_of_prefix(prefix)
        assert prefix + b"\xff" * 100 < end
        assert not (prefix < end <= prefix + b"\xff" * 100)


def test_txn_limits() -> None:
    put = kvstore.Op.put(b"k", b"v")
    cmp = kvstore.Compare(b"k", "exists", "==", True)
    assert check_txn([cmp], [put], ()) == ((cmp,), (put,), ())
    check_txn([cmp] * COMPARES_PER_TXN_MAX, [put] * OPS_PER_TXN_MAX, [put] * OPS_PER_TXN_MAX)
    with pytest.raises(InvalidArgumentError):
        check_txn([], [put] * (OPS_PER_TXN_MAX + 1), ())
    with pytest.raises(InvalidArgumentError):
        check_txn([cmp] * (COMPARES_PER_TXN_MAX + 1), [], ())
    with pytest.raises(InvalidArgumentError):
        check_txn([], [cmp], ())  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError):
        check_txn([put], [], ())  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError):
        check_txn(cmp, [], ())  # type: ignore[arg-type]


@pytest.mark.parametrize("ttl_s", [0, -1, math.nan, math.inf, 365 * 86400.0, True, "5", None])
def test_lease_ttl_refuses(ttl_s: object) -> None:
    with pytest.raises(InvalidArgumentError):
        check_lease_ttl(ttl_s)
    with pytest.raises(InvalidArgumentError):
        kvstore.Lease(1, ttl_s)  # type: ignore[arg-type]


def test_lease_and_revision_checks() -> None:
    assert type(kvstore.Lease(7, 2).ttl_s) is float
    with pytest.raises(InvalidArgumentError):
        kvstore.Lease(0, 1.0)
    assert check_revision(1) == 1
    for bad in (0, -1, True, 1.5, None, 1 << 63):
        with pytest.raises(InvalidArgumentError):
            check_revision(bad)


def test_watch_is_an_abstract_context_manager() -> None:
    closed = []

    class ListWatch(kvstore.Watch):
        def __init__(self, events: list[kvstore.WatchEvent]) -> None:
            self._events = events

        def __next__(self) -> kvstore.WatchEvent:
            if not self._events:
                raise StopIteration
            return self._events.pop(0)

        def close(self) -> None:
            closed.append(True)

        @property
        def revision(self) -> int:
            return 7

    with pytest.raises(TypeError):
        kvstore.Watch()  # type: ignore[abstract]
    event = kvstore.WatchEvent("put", KV)
    with ListWatch([event]) as watch:
        assert list(watch) == [event]
    assert closed == [True]

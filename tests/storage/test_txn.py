"""Transactions (TXN) in the state machine: encoding and its limits, compare semantics for
every target and op, atomicity, one revision per txn, results, exactly-once retries."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.errors import InvalidArgumentError
from kvstore.storage.commands import (
    TXN_BYTES_MAX,
    TXN_OPS_MAX,
    CommandRejected,
    ResultCode,
    TxnCompare,
    TxnOutcome,
    decode_command,
    decode_txn,
    encode_txn,
    txn_delete,
    txn_delete_range,
    txn_get,
    txn_put,
    txn_range,
)
from kvstore.storage.mvcc import RangePage
from kvstore.storage.state_machine import StateMachine
from tests.storage.session_driver import Driver


@pytest.fixture
def sm(tmp_path: Path) -> StateMachine:
    machine = StateMachine(tmp_path / "state")
    yield machine  # type: ignore[misc]
    machine.close()


def test_encoding_round_trips_every_op_and_compare() -> None:
    compares = [
        TxnCompare(b"a", "value", "==", b"x"),
        TxnCompare(b"a", "version", "<", 3),
        TxnCompare(b"a", "create_revision", ">", 0),
        TxnCompare(b"a", "mod_revision", "!=", 7),
        TxnCompare(b"a", "exists", "==", True),
    ]
    success = [
        txn_put(b"k", b"v", lease=5),
        txn_delete(b"k"),
        txn_delete_range(b"a", b"b"),
        txn_delete_range(b"p", prefix=True),
        txn_get(b"k"),
        txn_range(b"", prefix=True, limit=10),
        txn_range(b"a", b"z"),
    ]
    data = encode_txn(1, 2, compares, success, [txn_get(b"f")])
    command = decode_command(data)
    assert command.key == b"" and command.session_id == 1 and command.seq == 2
    assert command.value is not None
    decoded, got_success, got_failure = decode_txn(command.value)
    assert [(c.key, c.value) for c in decoded] == [(c.key, c.value) for c in compares]
    assert got_success == success and got_failure == [txn_get(b"f")]


@pytest.mark.parametrize(
    ("compare", "match"),
    [
        (TxnCompare(b"a", "lease", "==", 1), "unknown compare target"),
        (TxnCompare(b"a", "value", "=", b"x"), "unknown compare op"),
        (TxnCompare(b"a", "value", "==", 3), "takes bytes"),
        (TxnCompare(b"a", "version", "==", b"3"), "takes an int"),
        (TxnCompare(b"a", "version", "==", True), "takes an int"),
        (TxnCompare(b"a", "mod_revision", ">", -1), "takes an int"),
        (TxnCompare(b"a", "exists", "<", True), "== or !="),
        (TxnCompare(b"a", "exists", "==", 1), "takes a bool"),
        (TxnCompare(b"", "value", "==", b""), "key"),
    ],
)
def test_bad_compares_are_refused_when_encoding(compare: TxnCompare, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        encode_txn(1, 1, [compare], [])


def test_limits_are_refused_when_encoding_and_at_apply(sm: StateMachine) -> None:
    with pytest.raises(InvalidArgumentError, match="at most"):
        encode_txn(1, 1, [], [txn_get(b"k")] * (TXN_OPS_MAX + 1))
    with pytest.raises(InvalidArgumentError, match="at most"):
        encode_txn(1, 1, [TxnCompare(b"k", "version", "==", 0)] * (TXN_OPS_MAX + 1), [])
    big = b"x" * (1 << 20)
    with pytest.raises(InvalidArgumentError, match="bytes"):
        encode_txn(1, 1, [], [txn_put(b"k%d" % i, big) for i in range(TXN_BYTES_MAX >> 20)])
    with pytest.raises(InvalidArgumentError):
        encode_txn(1, 1, [], [txn_range(b"a", b"b", prefix=True)])
    # A forged txn past the limits (built around the encoder) is refused at apply, the same
    # way on every member, and writes nothing.
    d = Driver(sm)
    ok = encode_txn(1, 1, [], [txn_put(b"k", b"v")] * TXN_OPS_MAX)
    forged = ok[:27] + (TXN_OPS_MAX + 1).to_bytes(2, "little") + ok[29:]
    result = d.apply(forged)
    assert isinstance(result, CommandRejected) and result.code == ResultCode.MALFORMED
    assert sm.revision() == 0 and sm.get(b"k") is None


@pytest.mark.parametrize(
    ("target", "op", "value", "expected"),
    [
        ("value", "==", b"m", True),
        ("value", "!=", b"m", False),
        ("value", "<", b"n", True),
        ("value", ">", b"n", False),
        ("value", ">", b"a", True),
        ("version", "==", 2, True),
        ("version", "!=", 2, False),
        ("version", "<", 3, True),
        ("version", ">", 2, False),
        ("create_revision", "==", 1, True),
        ("create_revision", ">", 0, True),
        ("create_revision", "<", 1, False),
        ("create_revision", "!=", 2, True),
        ("mod_revision", "==", 3, True),
        ("mod_revision", "<", 3, False),
        ("mod_revision", ">", 2, True),
        ("mod_revision", "!=", 3, False),
        ("exists", "==", True, True),
        ("exists", "!=", True, False),
        ("exists", "==", False, False),
    ],
)
def test_compare_on_a_present_key(
    sm: StateMachine, target: str, op: str, value: bytes | int | bool, expected: bool
) -> None:
    d = Driver(sm)
    d.put(b"k", b"l")  # revision 1
    d.put(b"other", b"x")  # revision 2
    d.put(b"k", b"m")  # revision 3: k has create 1, mod 3, version 2
    result = d.txn([TxnCompare(b"k", target, op, value)], [txn_get(b"k")], [])
    assert isinstance(result, TxnOutcome) and result.succeeded is expected
    assert result.revision == 3  # a read-only txn does not move the revision
    assert result.results == ([(b"k", b"m", 1, 3, 2, 0)] if expected else [])


@pytest.mark.parametrize(
    ("target", "op", "value", "expected"),
    [
        ("value", "==", b"", False),  # a value compare on an absent key is false (etcd)
        ("value", "!=", b"x", False),
        ("version", "==", 0, True),
        ("version", ">", 0, False),
        ("create_revision", "==", 0, True),
        ("mod_revision", "<", 1, True),
        ("exists", "==", False, True),
        ("exists", "!=", False, False),
    ],
)
def test_compare_on_an_absent_key(
    sm: StateMachine, target: str, op: str, value: bytes | int | bool, expected: bool
) -> None:
    d = Driver(sm)
    d.put(b"k", b"v")
    d.apply(encode_txn(1, 99, [], [txn_delete(b"k")]))  # deleted: absent again
    result = d.txn([TxnCompare(b"k", target, op, value)], [], [])
    assert isinstance(result, TxnOutcome) and result.succeeded is expected


def test_writes_share_one_revision_and_results_come_back(sm: StateMachine) -> None:
    d = Driver(sm)
    for key in (b"a", b"p/1", b"p/2", b"p/3", b"z"):
        d.put(key, b"old")
    before = sm.revision()
    result = d.txn(
        [TxnCompare(b"a", "value", "==", b"old")],
        [
            txn_put(b"a", b"new"),
            txn_get(b"a"),
            txn_delete(b"z"),
            txn_delete(b"missing"),
            txn_delete_range(b"p/", prefix=True),
            txn_range(b"", prefix=True),
        ],
        [txn_put(b"failed", b"x")],
    )
    assert isinstance(result, TxnOutcome) and result.succeeded
    revision = before + 1
    assert sm.revision() == revision and result.revision == revision
    put, got, deleted, missing, count, page = result.results
    assert put is None and got == (b"a", b"new", 1, revision, 2, 0)
    assert deleted is True and missing is False and count == 3
    assert isinstance(page, RangePage) and [kv[0] for kv in page.kvs] == [b"a"]
    assert sm.get(b"failed") is None
    # Every change is an event of that one revision, in op order.
    [(at, events)] = sm.events(revision)
    assert at == revision and [kv[0] for _, kv, _ in events] == [b"a", b"z", b"p/1", b"p/2", b"p/3"]
    # The failure branch runs when a compare fails.
    result = d.txn([TxnCompare(b"a", "version", ">", 5)], [txn_put(b"s", b"")], [txn_get(b"a")])
    assert isinstance(result, TxnOutcome) and not result.succeeded
    assert result.results[0][1] == b"new" and sm.get(b"s") is None


def test_a_txn_refused_mid_apply_writes_nothing(tmp_path: Path) -> None:
    with StateMachine(tmp_path, quota_bytes=1000) as sm:
        d = Driver(sm)
        d.put(b"keep", b"v" * 100)
        digest, logical = sm.digest(), sm.logical_bytes()
        result = d.txn(
            [],
            [txn_delete(b"keep"), txn_put(b"a", b"small"), txn_put(b"b", b"x" * 2000)],
        )
        assert isinstance(result, CommandRejected) and result.code == ResultCode.STORAGE_FULL
        assert sm.get(b"keep") == b"v" * 100 and sm.get(b"a") is None
        assert sm.revision() == 1 and sm.events(2) == []
        # Only the session's record of the refusal changed.
        assert sm.logical_bytes() == logical and sm.session(1) == (d.seq, False)
        assert digest != sm.digest()
        # The same txn under a fitting quota's worth applies.
        result = d.txn([], [txn_delete(b"keep"), txn_put(b"a", b"small")])
        assert result and sm.revision() == 2 and sm.get(b"keep") is None


def test_a_retried_txn_applies_once(sm: StateMachine) -> None:
    d = Driver(sm)
    data = encode_txn(
        1, 1, [TxnCompare(b"n", "version", "==", 0)], [txn_put(b"n", b"1")], [txn_put(b"m", b"")]
    )
    first = d.apply(data)
    again = d.apply(data)  # the same command committed twice (a retry)
    assert isinstance(first, TxnOutcome) and first.succeeded
    assert again is True  # answered from the session window, not applied again
    assert (
        sm.revision() == 1 and sm.get(b"m") is None and sm.get_kv(b"n") == (b"n", b"1", 1, 1, 1, 0)
    )

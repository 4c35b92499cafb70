"""The coordination wire kinds: every request, result and watch message survives the wire;
garbage (wrong shapes, unknown codes, oversized lists, ops a client cannot build) raises
`RemoteProtocolError` and nothing else."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore import Compare, KeyValue, Lease, Op, RangeResult, TxnResult, WatchEvent
from kvstore.client import protocol as p
from kvstore.coordination import COMPARES_PER_TXN_MAX, LEASE_ID_MAX, OPS_PER_TXN_MAX
from kvstore.errors import (
    CompactedError,
    InvalidArgumentError,
    LeaseNotFoundError,
    NotLeaderError,
    RemoteProtocolError,
)
from kvstore.options import CONSISTENCY_LEVELS


def wire(obj: object) -> Any:
    """What the other side decodes: msgpack with the transport's settings."""
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False, strict_map_key=False)


u64 = st.integers(min_value=0, max_value=p.REQUEST_ID_MAX)
revisions = st.integers(min_value=1, max_value=p.REQUEST_ID_MAX)
timeouts = st.floats(min_value=1e-3, max_value=3600, allow_nan=False)
keys = st.binary(min_size=1, max_size=32)
values = st.binary(max_size=64)
sessions = st.tuples(st.integers(min_value=1, max_value=p.REQUEST_ID_MAX), u64)
lease_ids = st.integers(min_value=1, max_value=LEASE_ID_MAX)
levels = st.sampled_from(CONSISTENCY_LEVELS)

compares = st.one_of(
    st.builds(Compare, keys, st.just("value"), st.sampled_from(["==", "!=", "<", ">"]), values),
    st.builds(
        Compare,
        keys,
        st.sampled_from(["version", "create_revision", "mod_revision"]),
        st.sampled_from(["==", "!=", "<", ">"]),
        u64,
    ),
    st.builds(Compare, keys, st.just("exists"), st.sampled_from(["==", "!="]), st.booleans()),
)
ops = st.one_of(
    st.builds(Op.put, keys, values, lease=st.none() | lease_ids),
    st.builds(Op.delete, keys),
    st.builds(lambda a, b: Op.delete_range(a, a + b), keys, st.binary(min_size=1, max_size=4)),
    st.builds(Op.get, keys),
    st.builds(Op.range, keys, prefix=st.booleans(), limit=st.none() | st.integers(1, 1000)),
)
requests = st.one_of(
    st.builds(
        p.RangeRequest,
        u64,
        timeouts,
        keys,
        st.none() | st.just(b"\xff\xff"),
        st.none() | st.integers(1, 10**6),
        st.none() | revisions,
        st.booleans(),
        st.booleans(),
        levels,
    ),
    st.builds(
        p.TxnRequest,
        u64,
        timeouts,
        sessions,
        st.lists(compares, max_size=4).map(tuple),
        st.lists(ops, max_size=4).map(tuple),
        st.lists(ops, max_size=4).map(tuple),
    ),
    st.builds(
        p.WatchCreateRequest,
        u64,
        timeouts,
        keys,
        st.none() | keys,
        st.none() | revisions,
        st.booleans(),
    ),
    st.builds(p.WatchCancelRequest, u64, timeouts, u64),
    st.builds(p.WatchProgressRequest, u64, timeouts),
    st.builds(
        p.LeaseGrantRequest,
        u64,
        timeouts,
        sessions,
        st.floats(min_value=0.01, max_value=86400),
        st.just(0) | lease_ids,
    ),
    st.builds(p.LeaseKeepaliveRequest, u64, timeouts, lease_ids),
    st.builds(p.LeaseRevokeRequest, u64, timeouts, sessions, lease_ids),
    st.builds(p.LeaseTtlRequest, u64, timeouts, lease_ids, st.booleans()),
)

kvs = st.builds(KeyValue, keys, values, u64, u64, u64, st.none() | lease_ids)
range_results = st.builds(
    lambda items, more, extra, revision: RangeResult(items, more, len(items) + extra, revision),
    st.lists(kvs, max_size=4),
    st.booleans(),
    st.integers(0, 100),
    u64,
)
op_results = st.one_of(st.none(), st.booleans(), st.integers(0, 10**9), kvs, range_results)
events = st.builds(WatchEvent, st.sampled_from(["put", "delete"]), kvs, st.none() | kvs)


@given(st.lists(requests, min_size=1, max_size=5))
def test_requests_round_trip(batch: list[p.Request]) -> None:
    assert p.decode_requests(wire([p.encode_request(r) for r in batch])) == batch


def test_existing_kinds_are_byte_identical() -> None:
    # The encodings an older client or node already speaks did not change.
    put = p.encode_request(p.PutRequest(1, 1.0, (2, 3), b"k", b"v"))
    assert msgpack.packb(put, use_bin_type=True) == msgpack.packb(
        [1, 1, 1.0, 2, 3, b"k", b"v"], use_bin_type=True
    )
    error = p.encode_error(4, NotLeaderError("no", leader_id="n2", leader_address="h:1"))
    assert error == [4, 1, 1, "no", "n2", "h:1"]


@given(range_results)
def test_range_results_round_trip(result: RangeResult) -> None:
    (response,) = p.decode_responses(wire([p.encode_ok(3, p.Op.RANGE, result)]))
    assert p.parse_range_result(response.result) == result


@given(st.booleans(), st.lists(op_results, max_size=6), u64)
def test_txn_results_round_trip(succeeded: bool, results: list[Any], revision: int) -> None:
    result = TxnResult(succeeded, results, revision)
    (response,) = p.decode_responses(wire([p.encode_ok(3, p.Op.TXN, result)]))
    decoded = p.parse_txn_result(response.result)
    assert decoded == result
    # A delete's bool and a delete_range's count stay apart on the wire.
    assert [type(r) for r in decoded.results] == [type(r) for r in results]


@pytest.mark.parametrize(
    ("op", "result", "parse"),
    [
        (p.Op.WATCH_CREATE, p.WatchCreated(7, 41), p.parse_watch_created),
        (p.Op.WATCH_CANCEL, None, p.parse_none),
        (p.Op.WATCH_PROGRESS, None, p.parse_none),
        (p.Op.LEASE_GRANT, Lease(5, 2.5), p.parse_lease),
        (p.Op.LEASE_KEEPALIVE, 1.25, p.parse_ttl_s),
        (p.Op.LEASE_REVOKE, None, p.parse_none),
        (p.Op.LEASE_TTL, None, p.parse_lease_status),
        (p.Op.LEASE_TTL, p.LeaseStatus(1.0, 3.0, [b"a", b"b"]), p.parse_lease_status),
    ],
)
def test_small_results_round_trip(op: p.Op, result: object, parse: p.ResultParser) -> None:
    (response,) = p.decode_responses(wire([p.encode_ok(9, op, result)]))
    assert parse(response.result) == result


def test_compacted_and_lease_errors_keep_their_detail() -> None:
    compacted, missing = p.decode_responses(
        wire([p.encode_error(1, CompactedError(17)), p.encode_error(2, LeaseNotFoundError(9))])
    )
    assert isinstance(compacted.error, CompactedError)
    assert compacted.error.oldest_revision == 17
    assert isinstance(missing.error, LeaseNotFoundError)
    assert missing.error.lease_id == 9


@given(
    u64,
    u64,
    st.lists(events, max_size=5),
    st.none()
    | st.builds(
        p.WatchCanceled, st.sampled_from(list(p.WatchCancelReason)), st.text(max_size=20), u64
    ),
)
def test_watch_messages_round_trip(
    watch_id: int, revision: int, batch: list[WatchEvent], canceled: p.WatchCanceled | None
) -> None:
    message = p.encode_watch_events(watch_id, revision, batch, canceled)
    answer = p.encode_ok(5, p.Op.PUT, None)
    decoded = p.decode_response_items(wire([answer, message]))
    assert decoded == [
        p.Response(5, None, None),
        p.WatchEventsMessage(watch_id, revision, batch, canceled),
    ]


def test_a_client_that_does_not_stream_refuses_watch_messages() -> None:
    with pytest.raises(RemoteProtocolError):
        p.decode_responses(wire([p.encode_watch_events(1, 2, [])]))


def _txn(compare: list[Any], success: list[Any], failure: list[Any] | None = None) -> list[Any]:
    return [[1, p.Op.TXN, 1.0, 1, 1, compare, success, failure or []]]


PUT = [1, b"k", None, b"v", None, None]
CMP = [b"k", 5, 1, True]


@pytest.mark.parametrize(
    "body",
    [
        _txn([CMP] * (COMPARES_PER_TXN_MAX + 1), []),
        _txn([], [PUT] * (OPS_PER_TXN_MAX + 1)),
        _txn([], [], [PUT] * (OPS_PER_TXN_MAX + 1)),
        _txn("x", []),  # type: ignore[arg-type]
        _txn([[b"k", 9, 1, 1]], []),  # unknown target
        _txn([[b"k", 1, 9, b""]], []),  # unknown op
        _txn([[b"k", True, 1, b""]], []),  # a bool is no code
        _txn([[b"k", 1, 1, 5]], []),  # a value compare on an int
        _txn([[b"k", 2, 1, b"5"]], []),  # a version compare on bytes
        _txn([[b"k", 5, 3, True]], []),  # exists with <
        _txn([[b"", 1, 1, b""]], []),  # empty key
        _txn([[b"k" * 512, 1, 1, b""]], []),  # oversized key
        _txn([[b"k", 1, 1, 1.5]], []),
        _txn([[b"k", 1, 1]], []),
        _txn([], [[9, b"k", None, b"", None, None]]),  # unknown op kind
        _txn([], [[1, b"k", None, b"v", 0, None]]),  # lease 0
        _txn([], [[1, b"k", None, "v", None, None]]),
        _txn([], [[1, b"k", b"z", b"v", None, None]]),  # a put with an end
        _txn([], [[2, b"k", None, b"v", None, None]]),  # a delete with a value
        _txn([], [[4, b"k", None, b"", None, 5]]),  # a get with a limit
        _txn([], [[3, b"b", b"a", b"", None, None]]),  # an empty delete range
        _txn([], [[3, b"b", None, b"", None, None]]),  # a delete range without an end
        _txn([], [[5, b"a", None, b"", None, 0]]),  # limit 0
        _txn([], [[1, b"k", None, b"v", None]]),
        [[1, p.Op.TXN, 1.0, 0, 1, [], [], []]],  # session id 0
        [[1, p.Op.RANGE, 1.0, b"a", None, None, None, False, False]],  # arity
        [[1, p.Op.RANGE, 1.0, b"a", None, 0, None, False, False, 0]],  # limit 0
        [[1, p.Op.RANGE, 1.0, b"a", None, None, 0, False, False, 0]],  # revision 0
        [[1, p.Op.RANGE, 1.0, b"a", None, None, None, 1, False, 0]],  # keys_only not a bool
        [[1, p.Op.RANGE, 1.0, b"a", None, None, None, False, False, 9]],  # consistency
        [[1, p.Op.WATCH_CREATE, 1.0, "k", None, None, False]],
        [[1, p.Op.WATCH_CREATE, 1.0, b"k", None, -1, False]],
        [[1, p.Op.WATCH_CANCEL, 1.0, -1]],
        [[1, p.Op.LEASE_GRANT, 1.0, 1, 1, 0.0, 0]],  # ttl 0
        [[1, p.Op.LEASE_GRANT, 1.0, 1, 1, float("nan"), 0]],
        [[1, p.Op.LEASE_GRANT, 1.0, 1, 1, 365 * 86400.0, 0]],  # a year
        [[1, p.Op.LEASE_GRANT, 1.0, 1, 1, 5.0, -1]],
        [[1, p.Op.LEASE_GRANT, 1.0, 1, 1, 5.0, LEASE_ID_MAX + 1]],
        [[1, p.Op.LEASE_KEEPALIVE, 1.0, 0]],
        [[1, p.Op.LEASE_KEEPALIVE, 1.0, True]],
        [[1, p.Op.LEASE_REVOKE, 1.0, 1, 1, None]],
        [[1, p.Op.LEASE_TTL, 1.0, 5, None]],
    ],
)
def test_malformed_requests_are_protocol_errors(body: object) -> None:
    with pytest.raises(RemoteProtocolError):
        p.decode_requests(wire(body))


KV = [b"k", b"v", 1, 2, 1, None]


@pytest.mark.parametrize(
    ("raw", "parse"),
    [
        ([[KV], False, 0, 3], p.parse_range_result),  # counts fewer than it returns
        ([[KV[:5]], False, 1, 3], p.parse_range_result),
        ([[[b"k", b"v", -1, 2, 1, None]], False, 1, 3], p.parse_range_result),
        ([[[b"k", b"v", 1, 2, 1, 0]], False, 1, 3], p.parse_range_result),  # lease 0
        ([[KV], 1, 1, 3], p.parse_range_result),
        ([True, 3, [[9, None]]], p.parse_txn_result),
        ([True, 3, [[1, 1]]], p.parse_txn_result),  # a delete's result must be a bool
        ([True, 3, [[2, True]]], p.parse_txn_result),  # a count must not be a bool
        ([True, 3, [[0, 1]]], p.parse_txn_result),
        ([True, 3, [[0, None]] * (OPS_PER_TXN_MAX + 1)], p.parse_txn_result),
        ([1, 3, []], p.parse_txn_result),
        ([1], p.parse_watch_created),
        ([0, 5.0], p.parse_lease),
        ([1, 0.0], p.parse_lease),
        ([1, float("inf")], p.parse_lease),
        (-1.0, p.parse_ttl_s),
        ("1", p.parse_ttl_s),
        ([1.0, 2.0, ["k"]], p.parse_lease_status),
        ([1.0, 2.0], p.parse_lease_status),
    ],
)
def test_malformed_results_are_protocol_errors(raw: object, parse: p.ResultParser) -> None:
    with pytest.raises(RemoteProtocolError):
        parse(wire(raw))


@pytest.mark.parametrize(
    "item",
    [
        [1, p.Outcome.EVENTS, 3, []],
        [1, p.Outcome.EVENTS, -1, [], None],
        [1, p.Outcome.EVENTS, 3, [[2, KV, None]], None],  # unknown event type
        [1, p.Outcome.EVENTS, 3, [[0, KV]], None],
        [1, p.Outcome.EVENTS, 3, [[0, KV, None]] * (p.EVENTS_PER_MESSAGE_MAX + 1), None],
        [1, p.Outcome.EVENTS, 3, [], [99, "x", 1]],  # unknown cancel reason
        [1, p.Outcome.EVENTS, 3, [], [1, b"x", 1]],
        [1, p.Outcome.ERROR, p.ErrorCode.COMPACTED, "gone", None, None, -1],
        [1, p.Outcome.ERROR, p.ErrorCode.LEASE_NOT_FOUND, "gone", None, None, "x"],
        [1, p.Outcome.ERROR, p.ErrorCode.COMPACTED, "gone", None, None],  # no detail
    ],
)
def test_malformed_watch_messages_and_errors_are_protocol_errors(item: object) -> None:
    with pytest.raises(RemoteProtocolError):
        p.decode_response_items(wire([item]))


def _mutations(obj: Any, rng: random.Random) -> Any:
    """`obj` with one element somewhere replaced by garbage of another type."""
    if isinstance(obj, list) and obj and rng.random() < 0.8:
        copy = list(obj)
        i = rng.randrange(len(copy))
        copy[i] = _mutations(copy[i], rng)
        return copy
    return rng.choice(
        [None, -1, 0, 2**64 - 1, -(2**63), 1.5, float("nan"), True, "s", b"", b"x" * 600, [], [0]]
    )


def test_mutated_messages_raise_only_protocol_errors(seed: int) -> None:
    rng = random.Random(seed)
    samples: list[tuple[Any, Any]] = [
        (p.decode_requests, [p.encode_request(r)])
        for r in (
            p.RangeRequest(1, 1.0, b"a", b"b", 5, 3, False, True, "stale"),
            p.TxnRequest(
                1,
                1.0,
                (1, 2),
                (Compare(b"k", "version", "<", 3), Compare(b"k", "value", "==", b"v")),
                (Op.put(b"k", b"v", lease=3), Op.range(b"a", prefix=True, limit=2)),
                (Op.delete_range(b"a", b"b"), Op.get(b"k")),
            ),
            p.WatchCreateRequest(1, 1.0, b"k", b"l", 4, True),
            p.LeaseGrantRequest(1, 1.0, (1, 1), 5.0, 0),
            p.LeaseTtlRequest(1, 1.0, 5, True),
        )
    ]
    kv = KeyValue(b"k", b"v", 1, 2, 1, 7)
    txn_result = TxnResult(True, [None, True, 3, kv, RangeResult([kv], True, 9, 4)], 4)
    samples.append((p.decode_response_items, [p.encode_ok(1, p.Op.TXN, txn_result)]))
    samples.append(
        (
            p.decode_response_items,
            [
                p.encode_watch_events(
                    1,
                    2,
                    [WatchEvent("put", kv, kv)],
                    p.WatchCanceled(p.WatchCancelReason.SLOW, "behind", 3),
                )
            ],
        )
    )
    parsers = [p.parse_txn_result, p.parse_range_result]
    for _ in range(3000):
        decode, good = rng.choice(samples)
        bad = wire(_mutations(good, rng))
        try:
            decoded = decode(bad)
            for item in decoded:
                if isinstance(item, p.Response) and item.error is None:
                    for parse in parsers:
                        try:
                            parse(item.result)
                        except RemoteProtocolError:
                            pass
        except RemoteProtocolError:
            pass
        except (InvalidArgumentError, TypeError, ValueError, KeyError, IndexError) as e:
            raise AssertionError(f"{type(e).__name__} decoding {bad!r:.300}") from e


def packed_bytes(obj: object) -> int:
    return len(msgpack.packb(obj, use_bin_type=True))


big_kvs = st.builds(
    KeyValue,
    st.binary(min_size=1, max_size=511),
    st.sampled_from([b"", b"v" * 300, b"w" * 70_000]),
    st.sampled_from([0, 1, 2**32, 2**63 - 1]),
    st.sampled_from([0, 255, 2**16, 2**63 - 1]),
    st.sampled_from([0, 1, 2**40]),
    st.none() | st.sampled_from([1, LEASE_ID_MAX]),
)


@given(st.lists(big_kvs, max_size=3), st.booleans(), u64)
def test_size_bounds_hold_for_ranges_and_txns(items: list[KeyValue], more: bool, rev: int) -> None:
    page = RangeResult(items, more, len(items) + 2**40, rev)
    assert packed_bytes(p.encode_ok(p.REQUEST_ID_MAX, p.Op.RANGE, page)[2]) <= (
        p.result_wire_bytes(page)
    )
    results: list[Any] = [None, True, 2**62, *items, page]
    txn = TxnResult(True, results, rev)
    assert packed_bytes(p.encode_ok(1, p.Op.TXN, txn)[2]) <= p.result_wire_bytes(txn)
    for kv in items:
        assert packed_bytes(p._encode_kv(kv)) <= p.kv_wire_bytes(kv)


@given(
    st.lists(
        st.builds(WatchEvent, st.sampled_from(["put", "delete"]), big_kvs, st.none() | big_kvs),
        max_size=3,
    )
)
def test_size_bounds_hold_for_watch_messages(batch: list[WatchEvent]) -> None:
    message = p.encode_watch_events(p.REQUEST_ID_MAX, p.REQUEST_ID_MAX, batch)
    bound = p.WATCH_MESSAGE_OVERHEAD_BYTES + 1 + sum(p.event_wire_bytes(e) for e in batch)
    assert packed_bytes(message) <= bound


def test_lease_status_size_bound() -> None:
    status = p.LeaseStatus(1.5, 86400.0, [b"k" * 511] * 3 + [b"x"])
    assert packed_bytes(p.encode_ok(1, p.Op.LEASE_TTL, status)[2]) <= p.result_wire_bytes(status)


def test_size_bound_of_the_widest_key_value_is_tight() -> None:
    widest = KeyValue(b"k" * 511, b"v" * 70_000, 2**63 - 1, 2**63 - 1, 2**63 - 1, LEASE_ID_MAX)
    size = packed_bytes(p._encode_kv(widest))
    assert size <= p.kv_wire_bytes(widest) <= size + 4

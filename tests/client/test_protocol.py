"""The client protocol: every request and response survives the wire; garbage is refused."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.client import protocol as p
from kvstore.errors import (
    AuthenticationError,
    InvalidArgumentError,
    KVStoreError,
    NotLeaderError,
    OperationTimeoutError,
    ProposalDroppedError,
    RemoteProtocolError,
    SessionExpiredError,
    UnavailableError,
    WalFailedError,
)
from kvstore.options import CONSISTENCY_LEVELS, Status


def wire(obj: object) -> object:
    """What the other side decodes: msgpack with the transport's settings."""
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False, strict_map_key=False)


u64 = st.integers(min_value=0, max_value=p.REQUEST_ID_MAX)
timeouts = st.floats(min_value=1e-3, max_value=3600, allow_nan=False)
keys = st.binary(min_size=1, max_size=64)
values = st.binary(max_size=256)
sessions = st.tuples(st.integers(min_value=1, max_value=p.REQUEST_ID_MAX), u64)
levels = st.sampled_from(CONSISTENCY_LEVELS)
ids = st.text(min_size=1, max_size=20)

requests = st.one_of(
    st.builds(p.PutRequest, u64, timeouts, sessions, keys, values),
    st.builds(p.GetRequest, u64, timeouts, keys, levels),
    st.builds(p.DeleteRequest, u64, timeouts, sessions, keys),
    st.builds(p.CasRequest, u64, timeouts, sessions, keys, st.none() | values, st.none() | values),
    st.builds(
        p.ScanRequest,
        u64,
        timeouts,
        st.binary(max_size=8),
        st.none() | st.integers(1, 10**6),
        levels,
    ),
    st.builds(p.StatusRequest, u64, timeouts),
    st.builds(p.AddMemberRequest, u64, timeouts, ids, st.just("127.0.0.1:7004")),
    st.builds(p.RemoveMemberRequest, u64, timeouts, ids),
    st.builds(p.TransferLeaderRequest, u64, timeouts, ids),
    st.builds(p.RegisterSessionRequest, u64, timeouts),
)


@given(st.lists(requests, min_size=1, max_size=5))
def test_requests_round_trip(batch: list[p.Request]) -> None:
    assert p.decode_requests(wire([p.encode_request(r) for r in batch])) == batch


STATUS = Status("n1", "leader", 7, "n1", 42, 41, {"n1": "127.0.0.1:7001", "n2": "h:2"})


@pytest.mark.parametrize(
    ("op", "result", "parse"),
    [
        (p.Op.PUT, None, p.parse_none),
        (p.Op.GET, b"v", p.parse_optional_bytes),
        (p.Op.GET, None, p.parse_optional_bytes),
        (p.Op.DELETE, True, p.parse_bool),
        (p.Op.CAS, False, p.parse_bool),
        (p.Op.SCAN, [(b"a", b"1"), (b"b", b"")], p.parse_pairs),
        (p.Op.STATUS, STATUS, p.parse_status),
    ],
)
def test_ok_responses_round_trip(op: p.Op, result: object, parse: p.ResultParser) -> None:
    (response,) = p.decode_responses(wire([p.encode_ok(99, op, result)]))
    assert response.request_id == 99 and response.error is None
    assert parse(response.result) == result


@pytest.mark.parametrize(
    "error",
    [
        NotLeaderError("go away", leader_id="n2", leader_address="127.0.0.1:7002"),
        NotLeaderError("no leader"),
        UnavailableError("no quorum"),
        OperationTimeoutError("slow"),
        InvalidArgumentError("bad key"),
        AuthenticationError("who are you"),
        SessionExpiredError("the client session is unknown or expired"),
        KVStoreError("something else"),
    ],
)
def test_error_responses_keep_their_class_and_leader(error: KVStoreError) -> None:
    (response,) = p.decode_responses(wire([p.encode_error(5, error)]))
    assert type(response.error) is type(error)
    assert str(response.error) == str(error)
    if isinstance(error, NotLeaderError):
        assert isinstance(response.error, NotLeaderError)
        assert response.error.leader_id == error.leader_id
        assert response.error.leader_address == error.leader_address


def test_unexpected_exceptions_become_generic_errors() -> None:
    (response,) = p.decode_responses(wire([p.encode_error(1, RuntimeError("bug"))]))
    assert type(response.error) is KVStoreError
    assert p.error_code_of(TimeoutError()) is p.ErrorCode.TIMEOUT


def test_internal_errors_map_to_what_the_client_should_do() -> None:
    # A dropped proposal did nothing (retry elsewhere); a failed log leaves the outcome unknown.
    dropped = p.encode_error(1, ProposalDroppedError("not leader"))
    wal = p.encode_error(2, WalFailedError("fsync failed"))
    (r1, r2) = p.decode_responses(wire([dropped, wal]))
    assert type(r1.error) is UnavailableError
    assert type(r2.error) is OperationTimeoutError


CID = 1
GOOD_PUT = [1, p.Op.PUT, 1.0, CID, 1, b"k", b"v"]


@pytest.mark.parametrize(
    "body",
    [
        None,
        "text",
        [],
        [[1, 2]],
        [GOOD_PUT] * (p.REQUESTS_PER_FRAME_MAX + 1),
        [[-1, p.Op.GET, 1.0, b"k", 0]],  # negative request id
        [[1.5, p.Op.GET, 1.0, b"k", 0]],
        [[1, 99, 1.0]],  # unknown op
        [[1, True, 1.0]],  # bool is not an op
        [[1, p.Op.GET, 0, b"k", 0]],  # zero timeout
        [[1, p.Op.GET, float("nan"), b"k", 0]],
        [[1, p.Op.GET, "1", b"k", 0]],
        [[1, p.Op.GET, 1.0, "k", 0]],  # key as str
        [[1, p.Op.GET, 1.0, b"k", 7]],  # unknown consistency
        [[1, p.Op.GET, 1.0, b"k"]],  # too few args
        [[1, p.Op.GET, 1.0, b"k", 0, 0]],  # too many
        [[1, p.Op.PUT, 1.0, b"\x01" * 16, 1, b"k", b"v"]],  # session id not an int
        [[1, p.Op.PUT, 1.0, 0, 1, b"k", b"v"]],  # session id 0 (ids are log indices)
        [[1, p.Op.REGISTER_SESSION, 1.0, 5]],  # register takes no args
        [[1, p.Op.PUT, 1.0, CID, -1, b"k", b"v"]],
        [[1, p.Op.CAS, 1.0, CID, 1, b"k", 3, None]],
        [[1, p.Op.SCAN, 1.0, b"", 0, 0]],  # limit 0
        [[1, p.Op.SCAN, 1.0, b"", True, 0]],
        [[1, p.Op.ADD_MEMBER, 1.0, b"n4", "addr"]],
    ],
)
def test_garbage_requests_raise_remote_protocol_error(body: object) -> None:
    with pytest.raises(RemoteProtocolError):
        p.decode_requests(wire(body))


@pytest.mark.parametrize(
    "body",
    [
        {},
        [[1]],
        [[1, 5, None]],  # unknown outcome
        [[1, p.Outcome.OK]],
        [[1, p.Outcome.OK, None, None]],
        [[1, p.Outcome.ERROR, p.ErrorCode.UNAVAILABLE, "m", None]],
        [[1, p.Outcome.ERROR, "code", "m", None, None]],
        [[1, p.Outcome.ERROR, p.ErrorCode.NOT_LEADER, "m", 3, None]],
        [["1", p.Outcome.OK, None]],
    ],
)
def test_garbage_responses_raise_remote_protocol_error(body: object) -> None:
    with pytest.raises(RemoteProtocolError):
        p.decode_responses(wire(body))


@pytest.mark.parametrize(
    ("parse", "raw"),
    [
        (p.parse_none, 1),
        (p.parse_bool, 1),
        (p.parse_optional_bytes, "v"),
        (p.parse_pairs, [[b"k"]]),
        (p.parse_pairs, [[b"k", "v"]]),
        (p.parse_pairs, {b"k": b"v"}),
        (p.parse_status, {"node_id": "n1"}),
        (p.parse_status, [1, 2]),
        (p.parse_status, {**p._encode_status(STATUS), "term": -1}),
        (p.parse_status, {**p._encode_status(STATUS), "members": {"n1": 5}}),
    ],
)
def test_garbage_results_raise_remote_protocol_error(parse: p.ResultParser, raw: object) -> None:
    with pytest.raises(RemoteProtocolError):
        parse(wire(raw))


def test_an_unknown_error_code_is_still_an_error() -> None:
    (response,) = p.decode_responses([[3, p.Outcome.ERROR, 250, "from the future", None, None]])
    assert isinstance(response.error, KVStoreError)
    assert str(response.error) == "from the future"

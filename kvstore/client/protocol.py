"""The client protocol: the bodies of REQUEST and RESPONSE frames. Pure: no I/O.

A REQUEST frame carries a batch (a list) of requests and a RESPONSE frame a batch of responses,
so a client with many calls in flight and a node with many answers ready cross the socket once
per batch. Each element is a compact list:

    request   [request_id, op, timeout_s, *args]
              writes (PUT, DELETE, CAS) start their args with the session: session_id, seq
              REGISTER_SESSION has no args; its result is the new session id
    response  [request_id, OK, result]
              [request_id, ERROR, code, message, leader_id, leader_address]

Responses may come back in any order; the request id matches them up. Consistency levels
travel as their index in `kvstore.options.CONSISTENCY_LEVELS`.

Decoding checks the shape and types of everything and raises `RemoteProtocolError` on garbage.
It does not check key and value sizes: those are the caller's limits, and the service answers
them with an INVALID_ARGUMENT error rather than by closing the connection.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeAlias, TypeGuard

from kvstore.errors import (
    AuthenticationError,
    InvalidArgumentError,
    KVStoreError,
    NotLeaderError,
    OperationTimeoutError,
    ProposalDroppedError,
    RemoteProtocolError,
    SessionExpiredError,
    StorageFullError,
    UnavailableError,
    WalFailedError,
)
from kvstore.options import CONSISTENCY_LEVELS, Status
from kvstore.transport.codec import FrameKind

__all__ = [
    "REQUESTS_PER_FRAME_MAX",
    "REQUEST_ID_MAX",
    "AddMemberRequest",
    "CasRequest",
    "DeleteRequest",
    "ErrorCode",
    "FrameConnection",
    "GetRequest",
    "Op",
    "Outcome",
    "PutRequest",
    "RegisterSessionRequest",
    "RemoveMemberRequest",
    "Request",
    "Response",
    "ResultParser",
    "ScanRequest",
    "Session",
    "StatusRequest",
    "TransferLeaderRequest",
    "decode_request",
    "decode_requests",
    "decode_response",
    "decode_responses",
    "encode_error",
    "encode_ok",
    "encode_request",
    "error_code_of",
    "op_of",
    "parse_bool",
    "parse_none",
    "parse_optional_bytes",
    "parse_pairs",
    "parse_session_id",
    "parse_status",
]

REQUEST_ID_MAX = (1 << 64) - 1
"""Request ids and sequence numbers are unsigned 64-bit integers (msgpack's widest)."""
REQUESTS_PER_FRAME_MAX = 4096
"""A REQUEST or RESPONSE frame with more elements than this is a protocol error."""
_TIMEOUT_S_MAX = 24 * 3600.0


class Op(enum.IntEnum):
    """What a request asks for."""

    PUT = 1
    GET = 2
    DELETE = 3
    CAS = 4
    SCAN = 5
    STATUS = 6
    ADD_MEMBER = 7
    REMOVE_MEMBER = 8
    TRANSFER_LEADER = 9
    REGISTER_SESSION = 10


class Outcome(enum.IntEnum):
    """The second element of a response."""

    OK = 0
    ERROR = 1


class ErrorCode(enum.IntEnum):
    """Why a request failed; one code per public exception, plus INTERNAL for the rest."""

    NOT_LEADER = 1
    UNAVAILABLE = 2
    TIMEOUT = 3
    INVALID_ARGUMENT = 4
    AUTHENTICATION = 5
    INTERNAL = 6
    SESSION_EXPIRED = 7
    STORAGE_FULL = 8
    """The store is at its quota: the write was refused, nothing was done (StorageFullError)."""


Session: TypeAlias = tuple[int, int]
"""(session_id, seq): identifies one write across its retries, for exactly-once application.
The session id comes from a REGISTER_SESSION request (Raft thesis §6.3)."""


class PutRequest(NamedTuple):
    """Set `key` to `value`."""

    request_id: int
    timeout_s: float
    session: Session
    key: bytes
    value: bytes


class GetRequest(NamedTuple):
    """Read `key`."""

    request_id: int
    timeout_s: float
    key: bytes
    consistency: str


class DeleteRequest(NamedTuple):
    """Remove `key`."""

    request_id: int
    timeout_s: float
    session: Session
    key: bytes


class CasRequest(NamedTuple):
    """Set `key` to `new` (None: delete) if its value is `expected` (None: absent)."""

    request_id: int
    timeout_s: float
    session: Session
    key: bytes
    expected: bytes | None
    new: bytes | None


class ScanRequest(NamedTuple):
    """Read the pairs whose key starts with `prefix`, sorted by key, at most `limit`."""

    request_id: int
    timeout_s: float
    prefix: bytes
    limit: int | None
    consistency: str


class StatusRequest(NamedTuple):
    """Report the answering member's `Status`."""

    request_id: int
    timeout_s: float


class AddMemberRequest(NamedTuple):
    """Add `node_id` at `address` to the cluster."""

    request_id: int
    timeout_s: float
    node_id: str
    address: str


class RemoveMemberRequest(NamedTuple):
    """Remove `node_id` from the cluster."""

    request_id: int
    timeout_s: float
    node_id: str


class TransferLeaderRequest(NamedTuple):
    """Hand leadership to `node_id`."""

    request_id: int
    timeout_s: float
    node_id: str


class RegisterSessionRequest(NamedTuple):
    """Register a client session through the log; the result is its id."""

    request_id: int
    timeout_s: float


Request: TypeAlias = (
    PutRequest
    | GetRequest
    | DeleteRequest
    | CasRequest
    | ScanRequest
    | StatusRequest
    | AddMemberRequest
    | RemoveMemberRequest
    | TransferLeaderRequest
    | RegisterSessionRequest
)

_OP_OF: dict[type[Any], Op] = {
    PutRequest: Op.PUT,
    GetRequest: Op.GET,
    DeleteRequest: Op.DELETE,
    CasRequest: Op.CAS,
    ScanRequest: Op.SCAN,
    StatusRequest: Op.STATUS,
    AddMemberRequest: Op.ADD_MEMBER,
    RemoveMemberRequest: Op.REMOVE_MEMBER,
    TransferLeaderRequest: Op.TRANSFER_LEADER,
    RegisterSessionRequest: Op.REGISTER_SESSION,
}


def op_of(request: Request) -> Op:
    """The `Op` code of a request."""
    return _OP_OF[type(request)]


# --- encoding ----------------------------------------------------------------------------------


def encode_request(request: Request) -> list[object]:
    """Return the msgpack-able list for one request (see the module docstring)."""
    kind = type(request)
    if kind is PutRequest:  # the commonest two first, without the match below
        rid, timeout_s, (cid, seq), key, value = request  # type: ignore[misc]
        return [rid, 1, timeout_s, cid, seq, key, value]
    if kind is GetRequest:
        rid, timeout_s, key, consistency = request  # type: ignore[misc]
        return [rid, 2, timeout_s, key, CONSISTENCY_LEVELS.index(consistency)]
    head: list[object] = [request.request_id, op_of(request), request.timeout_s]
    match request:
        case PutRequest(session=(cid, seq), key=key, value=value):
            return [*head, cid, seq, key, value]
        case GetRequest(key=key, consistency=consistency):
            return [*head, key, CONSISTENCY_LEVELS.index(consistency)]
        case DeleteRequest(session=(cid, seq), key=key):
            return [*head, cid, seq, key]
        case CasRequest(session=(cid, seq), key=key, expected=expected, new=new):
            return [*head, cid, seq, key, expected, new]
        case ScanRequest(prefix=prefix, limit=limit, consistency=consistency):
            return [*head, prefix, limit, CONSISTENCY_LEVELS.index(consistency)]
        case StatusRequest() | RegisterSessionRequest():
            return head
        case AddMemberRequest(node_id=node_id, address=address):
            return [*head, node_id, address]
        case RemoveMemberRequest(node_id=node_id) | TransferLeaderRequest(node_id=node_id):
            return [*head, node_id]
    raise TypeError(f"not a request: {request!r}")  # pragma: no cover - exhaustive above


def _encode_status(status: Status) -> dict[str, object]:
    return {
        "node_id": status.node_id,
        "role": status.role,
        "term": status.term,
        "leader_id": status.leader_id,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "members": dict(status.members),
    }


def encode_ok(request_id: int, op: Op, result: object) -> list[object]:
    """Return the success response to a request of kind `op` whose backend returned `result`."""
    if op is Op.STATUS:
        if not isinstance(result, Status):
            raise TypeError(f"status result must be a Status, got {type(result).__name__}")
        return [request_id, Outcome.OK, _encode_status(result)]
    if op is Op.SCAN:
        return [request_id, Outcome.OK, [[k, v] for k, v in result]]  # type: ignore[attr-defined]
    return [request_id, Outcome.OK, result]


_CODE_OF: tuple[tuple[type[BaseException], ErrorCode], ...] = (
    (SessionExpiredError, ErrorCode.SESSION_EXPIRED),
    (NotLeaderError, ErrorCode.NOT_LEADER),
    (UnavailableError, ErrorCode.UNAVAILABLE),
    # The core refused the proposal: nothing was done, another member or a later try may work.
    (ProposalDroppedError, ErrorCode.UNAVAILABLE),
    # The log failed mid-write: the entry may still commit through the other members.
    (WalFailedError, ErrorCode.TIMEOUT),
    # Any TimeoutError (asyncio's too) means the outcome is unknown: the same as ours.
    (TimeoutError, ErrorCode.TIMEOUT),
    (InvalidArgumentError, ErrorCode.INVALID_ARGUMENT),
    (AuthenticationError, ErrorCode.AUTHENTICATION),
    (StorageFullError, ErrorCode.STORAGE_FULL),
)


def error_code_of(exc: BaseException) -> ErrorCode:
    """The wire code for an exception a backend raised (INTERNAL for anything unexpected)."""
    for cls, code in _CODE_OF:
        if isinstance(exc, cls):
            return code
    return ErrorCode.INTERNAL


def encode_error(request_id: int, exc: BaseException) -> list[object]:
    """Return the error response carrying `exc` (its class as a code, its text as the message)."""
    leader_id = leader_address = None
    if isinstance(exc, NotLeaderError):
        leader_id, leader_address = exc.leader_id, exc.leader_address
    message = str(exc) or type(exc).__name__
    return [request_id, Outcome.ERROR, error_code_of(exc), message, leader_id, leader_address]


# --- decoding ----------------------------------------------------------------------------------


def _fail(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"bad client protocol message: {what}")


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass but never a valid number on this wire.
    return isinstance(value, int) and not isinstance(value, bool)


def _uint(value: object, what: str) -> int:
    if not _is_int(value) or not 0 <= value <= REQUEST_ID_MAX:
        raise _fail(f"{what} must be an unsigned 64-bit int, got {value!r:.60}")
    return value


def _bytes(value: object, what: str) -> bytes:
    if type(value) is not bytes:
        raise _fail(f"{what} must be bytes, got {type(value).__name__}")
    return value


def _optional_bytes(value: object, what: str) -> bytes | None:
    return None if value is None else _bytes(value, what)


def _str(value: object, what: str) -> str:
    if type(value) is not str:
        raise _fail(f"{what} must be str, got {type(value).__name__}")
    return value


def _optional_str(value: object, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _consistency(value: object) -> str:
    if not _is_int(value) or not 0 <= value < len(CONSISTENCY_LEVELS):
        raise _fail(f"unknown consistency code {value!r:.60}")
    return CONSISTENCY_LEVELS[value]


def _timeout(value: object) -> float:
    if type(value) not in (int, float):
        raise _fail(f"timeout_s must be a number, got {type(value).__name__}")
    timeout_s = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(timeout_s) and 0 < timeout_s <= _TIMEOUT_S_MAX):
        raise _fail(f"timeout_s out of range: {timeout_s}")
    return timeout_s


def _session(session_id: object, seq: object) -> Session:
    if not _is_int(session_id) or not 1 <= session_id <= REQUEST_ID_MAX:
        raise _fail(f"session_id must be an int in 1..2**64-1, got {session_id!r:.60}")
    return session_id, _uint(seq, "seq")


_ARITY = {
    Op.PUT: 4,
    Op.GET: 2,
    Op.DELETE: 3,
    Op.CAS: 5,
    Op.SCAN: 3,
    Op.STATUS: 0,
    Op.ADD_MEMBER: 2,
    Op.REMOVE_MEMBER: 1,
    Op.TRANSFER_LEADER: 1,
    Op.REGISTER_SESSION: 0,
}


_PUT_ARGS = 3 + 4
_GET_ARGS = 3 + 2


def decode_request(obj: object) -> Request:
    """Validate one decoded request list and return its typed form."""
    if type(obj) is not list or len(obj) < 3:
        raise _fail("a request must be a list [request_id, op, timeout_s, ...]")
    # Fast paths for the two commonest requests: the same checks as below, inline (this runs
    # once per request; the general path cost twice as much). Anything unusual falls through.
    size = len(obj)
    if size == _PUT_ARGS and obj[1] == 1 and type(obj[1]) is int:
        request_id, _op, timeout_s, cid, seq, key, value = obj
        if (
            type(request_id) is int
            and 0 <= request_id <= REQUEST_ID_MAX
            and type(timeout_s) is float
            and 0 < timeout_s <= _TIMEOUT_S_MAX
            and type(cid) is int
            and 1 <= cid <= REQUEST_ID_MAX
            and type(seq) is int
            and 0 <= seq <= REQUEST_ID_MAX
            and type(key) is bytes
            and type(value) is bytes
        ):
            return PutRequest(request_id, timeout_s, (cid, seq), key, value)
    elif size == _GET_ARGS and obj[1] == 2 and type(obj[1]) is int:
        request_id, _op, timeout_s, key, level = obj
        if (
            type(request_id) is int
            and 0 <= request_id <= REQUEST_ID_MAX
            and type(timeout_s) is float
            and 0 < timeout_s <= _TIMEOUT_S_MAX
            and type(key) is bytes
            and type(level) is int
            and 0 <= level < len(CONSISTENCY_LEVELS)
        ):
            return GetRequest(request_id, timeout_s, key, CONSISTENCY_LEVELS[level])
    request_id = _uint(obj[0], "request_id")
    if not _is_int(obj[1]) or obj[1] not in _ARITY:
        raise _fail(f"unknown op {obj[1]!r:.60}")
    op = Op(obj[1])
    timeout_s = _timeout(obj[2])
    args = obj[3:]
    if len(args) != _ARITY[op]:
        raise _fail(f"{op.name} takes {_ARITY[op]} arguments, got {len(args)}")
    if op is Op.PUT:
        return PutRequest(
            request_id,
            timeout_s,
            _session(args[0], args[1]),
            _bytes(args[2], "key"),
            _bytes(args[3], "value"),
        )
    if op is Op.GET:
        return GetRequest(request_id, timeout_s, _bytes(args[0], "key"), _consistency(args[1]))
    if op is Op.DELETE:
        return DeleteRequest(
            request_id, timeout_s, _session(args[0], args[1]), _bytes(args[2], "key")
        )
    if op is Op.CAS:
        return CasRequest(
            request_id,
            timeout_s,
            _session(args[0], args[1]),
            _bytes(args[2], "key"),
            _optional_bytes(args[3], "expected"),
            _optional_bytes(args[4], "new"),
        )
    if op is Op.SCAN:
        limit = args[1]
        if limit is not None and (not _is_int(limit) or not 1 <= limit <= REQUEST_ID_MAX):
            raise _fail(f"limit must be None or a positive int, got {limit!r:.60}")
        return ScanRequest(
            request_id, timeout_s, _bytes(args[0], "prefix"), limit, _consistency(args[2])
        )
    if op is Op.STATUS:
        return StatusRequest(request_id, timeout_s)
    if op is Op.ADD_MEMBER:
        return AddMemberRequest(
            request_id, timeout_s, _str(args[0], "node_id"), _str(args[1], "address")
        )
    if op is Op.REMOVE_MEMBER:
        return RemoveMemberRequest(request_id, timeout_s, _str(args[0], "node_id"))
    if op is Op.REGISTER_SESSION:
        return RegisterSessionRequest(request_id, timeout_s)
    return TransferLeaderRequest(request_id, timeout_s, _str(args[0], "node_id"))


def _batch(body: object, what: str) -> list[object]:
    if type(body) is not list:
        raise _fail(f"a {what} frame body must be a list, got {type(body).__name__}")
    if not 1 <= len(body) <= REQUESTS_PER_FRAME_MAX:
        raise _fail(f"a {what} frame holds 1 to {REQUESTS_PER_FRAME_MAX} items, got {len(body)}")
    return body


def decode_requests(body: object) -> list[Request]:
    """Validate the body of a REQUEST frame (a list of requests)."""
    return [decode_request(item) for item in _batch(body, "REQUEST")]


class Response(NamedTuple):
    """One decoded response: `error` is None on success, and then `result` holds the raw result
    (check it with the `parse_*` function for the request's op)."""

    request_id: int
    result: object
    error: KVStoreError | None


def _exception(
    code: object, message: str, leader_id: str | None, address: str | None
) -> KVStoreError:
    if code == ErrorCode.NOT_LEADER:
        return NotLeaderError(message, leader_id=leader_id, leader_address=address)
    if code == ErrorCode.UNAVAILABLE:
        return UnavailableError(message)
    if code == ErrorCode.TIMEOUT:
        return OperationTimeoutError(message)
    if code == ErrorCode.INVALID_ARGUMENT:
        return InvalidArgumentError(message)
    if code == ErrorCode.AUTHENTICATION:
        return AuthenticationError(message)
    if code == ErrorCode.STORAGE_FULL:
        return StorageFullError(message)
    if code == ErrorCode.SESSION_EXPIRED:
        return SessionExpiredError(message)
    # INTERNAL, and codes from a newer server we do not know: still an error the caller sees.
    return KVStoreError(message)


def decode_response(obj: object) -> Response:
    """Validate one decoded response list."""
    if type(obj) is not list or len(obj) < 2:
        raise _fail("a response must be a list [request_id, outcome, ...]")
    request_id = _uint(obj[0], "request_id")
    if _is_int(obj[1]) and obj[1] == Outcome.OK:
        if len(obj) != 3:
            raise _fail("an OK response must be [request_id, OK, result]")
        return Response(request_id, obj[2], None)
    if _is_int(obj[1]) and obj[1] == Outcome.ERROR:
        if len(obj) != 6 or not _is_int(obj[2]):
            raise _fail("an ERROR response must be [id, ERROR, code, message, leader, address]")
        error = _exception(
            obj[2],
            _str(obj[3], "message"),
            _optional_str(obj[4], "leader_id"),
            _optional_str(obj[5], "leader_address"),
        )
        return Response(request_id, None, error)
    raise _fail(f"unknown outcome {obj[1]!r:.60}")


def decode_responses(body: object) -> list[Response]:
    """Validate the body of a RESPONSE frame (a list of responses)."""
    return [decode_response(item) for item in _batch(body, "RESPONSE")]


# --- results -----------------------------------------------------------------------------------
# One checker per result shape; the client applies the one that matches the op it sent.


def parse_none(raw: object) -> None:
    """PUT, ADD_MEMBER, REMOVE_MEMBER, TRANSFER_LEADER: no result."""
    if raw is not None:
        raise _fail(f"expected no result, got {type(raw).__name__}")


def parse_bool(raw: object) -> bool:
    """DELETE, CAS: whether it took effect."""
    if type(raw) is not bool:
        raise _fail(f"expected a bool result, got {type(raw).__name__}")
    return raw


def parse_session_id(raw: object) -> int:
    """REGISTER_SESSION: the new session's id (>= 1)."""
    if not _is_int(raw) or not 1 <= raw <= REQUEST_ID_MAX:
        raise _fail(f"expected a session id, got {raw!r:.60}")
    return raw


def parse_optional_bytes(raw: object) -> bytes | None:
    """GET: the value, or None when the key is absent."""
    return _optional_bytes(raw, "value")


def parse_pairs(raw: object) -> list[tuple[bytes, bytes]]:
    """SCAN: (key, value) pairs."""
    if type(raw) is not list:
        raise _fail(f"expected a list of pairs, got {type(raw).__name__}")
    pairs = []
    for item in raw:
        if type(item) is not list or len(item) != 2:
            raise _fail("a scan pair must be [key, value]")
        pairs.append((_bytes(item[0], "key"), _bytes(item[1], "value")))
    return pairs


def _nonnegative(value: object, what: str) -> int:
    if not _is_int(value) or value < 0:
        raise _fail(f"{what} must be a non-negative int, got {value!r:.60}")
    return value


def parse_status(raw: object) -> Status:
    """STATUS: the member's `Status`."""
    if type(raw) is not dict:
        raise _fail(f"expected a status map, got {type(raw).__name__}")
    try:
        members = raw["members"]
        if type(members) is not dict:
            raise _fail("status members must be a map")
        return Status(
            node_id=_str(raw["node_id"], "node_id"),
            role=_str(raw["role"], "role"),
            term=_nonnegative(raw["term"], "term"),
            leader_id=_optional_str(raw["leader_id"], "leader_id"),
            commit_index=_nonnegative(raw["commit_index"], "commit_index"),
            applied_index=_nonnegative(raw["applied_index"], "applied_index"),
            members={_str(k, "member id"): _str(v, "member address") for k, v in members.items()},
        )
    except KeyError as e:
        raise _fail(f"status lacks {e}") from None


ResultParser: TypeAlias = Callable[[object], Any]
"""One of the `parse_*` functions."""


class FrameConnection(Protocol):
    """What the client and the service need of a connection: the part of
    `kvstore.transport.tcp.FramedConnection` they use (tests pass in-memory fakes)."""

    async def send(self, kind: FrameKind, body: object) -> None:
        """Write one frame, waiting while the write buffer is full."""
        ...

    async def receive(self) -> tuple[FrameKind, object]:
        """Read one frame: ConnectionError at EOF, RemoteProtocolError on garbage."""
        ...

    def close(self) -> None:
        """Start closing; pending and later `receive()` calls fail."""
        ...

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        ...

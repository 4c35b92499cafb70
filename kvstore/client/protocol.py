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

Coordination (issue 13; value types in `kvstore.coordination`):

    RANGE            [.., start, end, limit, revision, keys_only, count_only, consistency]
                     end None: the single key `start`; a prefix travels as its end
    TXN              [.., session_id, seq, compares, success, failure]
                     compare [key, target, op, value]; op [kind, key, end, value, lease, limit]
                     (codes in `COMPARE_TARGET_CODES`, `COMPARE_OP_CODES`, `OP_KIND_CODES`);
                     a put with a lease travels as a TXN of that one put
    WATCH_CREATE     [.., key, end, start_revision, prev_kv] -> [watch_id, revision]
    WATCH_CANCEL     [.., watch_id] -> None
    WATCH_PROGRESS   [..] -> None, and a progress message for every watch of the connection
    LEASE_GRANT      [.., session_id, seq, ttl_s, lease_id (0: the leader picks)] -> [id, ttl_s]
    LEASE_KEEPALIVE  [.., lease_id] -> remaining ttl_s
    LEASE_REVOKE     [.., session_id, seq, lease_id] -> None
    LEASE_TTL        [.., lease_id, keys] -> None | [remaining_ttl_s, granted_ttl_s, keys]

    key-value        [key, value, create_revision, mod_revision, version, lease | None]
    range result     [kvs, more, count, revision]
    txn result       [succeeded, revision, results], each result [shape, payload]: 0 None,
                     1 bool (delete), 2 int (delete_range), 3 key-value (get), 4 range result

A watch streams its events in RESPONSE frames, as elements the client tells apart from
answers by their outcome:

    [watch_id, EVENTS, revision, events, canceled]
        event     [type (0 put, 1 delete), kv, prev_kv | None]
        revision  every event of a revision <= this one has been sent (a progress message has
                  no events); a revision's events may be split over several messages
        canceled  None, or [reason, message, revision] as the last message of the watch

Errors with a detail (COMPACTED: the oldest revision held; LEASE_NOT_FOUND: the lease id)
carry it as a seventh element; the others keep their six.

Decoding checks the shape and types of everything and raises `RemoteProtocolError` on garbage.
It does not check key and value sizes: those are the caller's limits, and the service answers
them with an INVALID_ARGUMENT error rather than by closing the connection. The one exception is
a TXN: its compares and ops are rebuilt through their checked constructors, so a key that no
conforming client can send (empty, over 511 bytes) or a field that does not belong to the op's
kind is a protocol error there; value sizes are still the service's to check.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias, TypeGuard

from kvstore.coordination import (
    COMPARES_PER_TXN_MAX,
    LEASE_ID_MAX,
    LEASE_TTL_S_MAX,
    OPS_PER_TXN_MAX,
    Compare,
    CompareOp,
    CompareTarget,
    KeyValue,
    Lease,
    OpKind,
    OpResult,
    RangeResult,
    TxnResult,
    WatchEvent,
)
from kvstore.coordination import Op as TxnOp
from kvstore.errors import (
    AuthenticationError,
    CompactedError,
    InvalidArgumentError,
    KVStoreError,
    LeaseNotFoundError,
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
    "COMPARE_OP_CODES",
    "COMPARE_TARGET_CODES",
    "EVENTS_PER_MESSAGE_MAX",
    "KV_WIRE_OVERHEAD_BYTES",
    "LEASE_KEYS_MAX",
    "OP_KIND_CODES",
    "REQUESTS_PER_FRAME_MAX",
    "REQUEST_ID_MAX",
    "WATCH_MESSAGE_OVERHEAD_BYTES",
    "AddMemberRequest",
    "CasRequest",
    "DeleteRequest",
    "ErrorCode",
    "FrameConnection",
    "GetRequest",
    "LeaseGrantRequest",
    "LeaseKeepaliveRequest",
    "LeaseRevokeRequest",
    "LeaseStatus",
    "LeaseTtlRequest",
    "Op",
    "Outcome",
    "PutRequest",
    "RangeRequest",
    "RegisterSessionRequest",
    "RemoveMemberRequest",
    "Request",
    "Response",
    "ResultParser",
    "ScanRequest",
    "Session",
    "StatusRequest",
    "TransferLeaderRequest",
    "TxnRequest",
    "WatchCancelReason",
    "WatchCancelRequest",
    "WatchCanceled",
    "WatchCreateRequest",
    "WatchCreated",
    "WatchEventsMessage",
    "WatchProgressRequest",
    "decode_request",
    "decode_requests",
    "decode_response",
    "decode_response_item",
    "decode_response_items",
    "decode_responses",
    "encode_error",
    "encode_ok",
    "encode_request",
    "encode_watch_events",
    "error_code_of",
    "event_wire_bytes",
    "kv_wire_bytes",
    "op_of",
    "parse_bool",
    "parse_lease",
    "parse_lease_status",
    "parse_none",
    "parse_optional_bytes",
    "parse_pairs",
    "parse_range_result",
    "parse_session_id",
    "parse_status",
    "parse_ttl_s",
    "parse_txn_result",
    "parse_watch_created",
    "result_wire_bytes",
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
    RANGE = 11
    TXN = 12
    WATCH_CREATE = 13
    WATCH_CANCEL = 14
    WATCH_PROGRESS = 15
    LEASE_GRANT = 16
    LEASE_KEEPALIVE = 17
    LEASE_REVOKE = 18
    LEASE_TTL = 19


class Outcome(enum.IntEnum):
    """The second element of a response."""

    OK = 0
    ERROR = 1
    EVENTS = 2
    """Not an answer: a message of a watch's stream (`WatchEventsMessage`)."""


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
    COMPACTED = 9
    """The revision asked for is compacted (CompactedError; detail: the oldest revision)."""
    LEASE_NOT_FOUND = 10
    """The lease does not exist (LeaseNotFoundError; detail: the lease id)."""


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


class RangeRequest(NamedTuple):
    """Read the keys in `[start, end)` (end None: the key `start`) with their metadata; the
    result is a `RangeResult`. `revision` None reads the latest state."""

    request_id: int
    timeout_s: float
    start: bytes
    end: bytes | None
    limit: int | None
    revision: int | None
    keys_only: bool
    count_only: bool
    consistency: str


class TxnRequest(NamedTuple):
    """Apply `success` if every compare holds, else `failure`, atomically at one revision; the
    result is a `TxnResult`. A write: `session` deduplicates retries."""

    request_id: int
    timeout_s: float
    session: Session
    compare: tuple[Compare, ...]
    success: tuple[TxnOp, ...]
    failure: tuple[TxnOp, ...]


class WatchCreateRequest(NamedTuple):
    """Start a watch on `[key, end)` (end None: the key alone) from `start_revision` (None: the
    next write); the result is a `WatchCreated`, then the events follow as
    `WatchEventsMessage`s carrying its watch id."""

    request_id: int
    timeout_s: float
    key: bytes
    end: bytes | None
    start_revision: int | None
    prev_kv: bool


class WatchCancelRequest(NamedTuple):
    """Stop the watch `watch_id` of this connection (its stream ends with a REQUESTED cancel)."""

    request_id: int
    timeout_s: float
    watch_id: int


class WatchProgressRequest(NamedTuple):
    """Ask for a progress message (no events, the current revision) on every watch of this
    connection."""

    request_id: int
    timeout_s: float


class LeaseGrantRequest(NamedTuple):
    """Grant a lease of `ttl_s`, with id `lease_id` (0: the leader picks one); the result is
    the `Lease`. A write: `session` deduplicates retries."""

    request_id: int
    timeout_s: float
    session: Session
    ttl_s: float
    lease_id: int


class LeaseKeepaliveRequest(NamedTuple):
    """Renew lease `lease_id`; the result is its remaining TTL in seconds."""

    request_id: int
    timeout_s: float
    lease_id: int


class LeaseRevokeRequest(NamedTuple):
    """Revoke lease `lease_id`, deleting its keys. A write: `session` deduplicates retries."""

    request_id: int
    timeout_s: float
    session: Session
    lease_id: int


class LeaseTtlRequest(NamedTuple):
    """Report lease `lease_id` (a `LeaseStatus`, None when it does not exist), with its keys
    when `keys` is True."""

    request_id: int
    timeout_s: float
    lease_id: int
    keys: bool


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
    | RangeRequest
    | TxnRequest
    | WatchCreateRequest
    | WatchCancelRequest
    | WatchProgressRequest
    | LeaseGrantRequest
    | LeaseKeepaliveRequest
    | LeaseRevokeRequest
    | LeaseTtlRequest
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
    RangeRequest: Op.RANGE,
    TxnRequest: Op.TXN,
    WatchCreateRequest: Op.WATCH_CREATE,
    WatchCancelRequest: Op.WATCH_CANCEL,
    WatchProgressRequest: Op.WATCH_PROGRESS,
    LeaseGrantRequest: Op.LEASE_GRANT,
    LeaseKeepaliveRequest: Op.LEASE_KEEPALIVE,
    LeaseRevokeRequest: Op.LEASE_REVOKE,
    LeaseTtlRequest: Op.LEASE_TTL,
}


class WatchCreated(NamedTuple):
    """The answer to WATCH_CREATE: the watch's id on this connection and the store's revision
    when it started."""

    watch_id: int
    revision: int


class LeaseStatus(NamedTuple):
    """The answer to LEASE_TTL for a lease that exists."""

    remaining_ttl_s: float
    granted_ttl_s: float
    keys: list[bytes]


class WatchCancelReason(enum.IntEnum):
    """Why a watch's stream ended; `WatchCanceled.revision` says where to go on from."""

    REQUESTED = 1
    """The client cancelled it."""
    COMPACTED = 2
    """Its start is compacted: `revision` is the oldest revision still held."""
    SLOW = 3
    """It fell too far behind (its buffer filled): resume from `revision`."""
    UNAVAILABLE = 4
    """The member stopped serving it (stopping, or cut off): resume from `revision` elsewhere."""
    INVALID = 5
    """The request was refused (a bad key or range): `message` says why."""


class WatchCanceled(NamedTuple):
    """The end of a watch's stream: why, in words, and the revision to resume from (for
    COMPACTED, the oldest revision still held)."""

    reason: WatchCancelReason
    message: str
    revision: int


class WatchEventsMessage(NamedTuple):
    """One message of a watch's stream: its events in revision order, the revision the watch
    is current through, and, on the last message only, why it ended."""

    watch_id: int
    revision: int
    events: list[WatchEvent]
    canceled: WatchCanceled | None


EVENTS_PER_MESSAGE_MAX = 16384
"""Most events in one `WatchEventsMessage` (more of one revision go in further messages)."""
LEASE_KEYS_MAX = 1 << 20
"""Most keys one LEASE_TTL answer lists."""

COMPARE_TARGET_CODES: dict[CompareTarget, int] = {
    "value": 1,
    "version": 2,
    "create_revision": 3,
    "mod_revision": 4,
    "exists": 5,
}
"""Wire codes of the compare targets."""
COMPARE_OP_CODES: dict[CompareOp, int] = {"==": 1, "!=": 2, "<": 3, ">": 4}
"""Wire codes of the compare operators."""
OP_KIND_CODES: dict[OpKind, int] = {
    "put": 1,
    "delete": 2,
    "delete_range": 3,
    "get": 4,
    "range": 5,
}
"""Wire codes of the transaction operation kinds (also tagging their results)."""
_COMPARE_TARGET_OF = {code: target for target, code in COMPARE_TARGET_CODES.items()}
_COMPARE_OP_OF = {code: op for op, code in COMPARE_OP_CODES.items()}
_OP_KIND_OF = {code: kind for kind, code in OP_KIND_CODES.items()}
_EVENT_PUT = 0
_EVENT_DELETE = 1
# A txn result travels tagged with its shape: put and a missing get are both None.
_RESULT_NONE = 0
_RESULT_BOOL = 1
_RESULT_COUNT = 2
_RESULT_KV = 3
_RESULT_RANGE = 4


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
        case RangeRequest():
            level = CONSISTENCY_LEVELS.index(request.consistency)
            return [
                *head,
                request.start,
                request.end,
                request.limit,
                request.revision,
                request.keys_only,
                request.count_only,
                level,
            ]
        case TxnRequest(session=(cid, seq), compare=compare, success=success, failure=failure):
            return [
                *head,
                cid,
                seq,
                [_encode_compare(c) for c in compare],
                [_encode_op(op) for op in success],
                [_encode_op(op) for op in failure],
            ]
        case WatchCreateRequest(key=key, end=end, start_revision=start, prev_kv=prev_kv):
            return [*head, key, end, start, prev_kv]
        case WatchCancelRequest(watch_id=watch_id):
            return [*head, watch_id]
        case WatchProgressRequest():
            return head
        case LeaseGrantRequest(session=(cid, seq), ttl_s=ttl_s, lease_id=lease_id):
            return [*head, cid, seq, ttl_s, lease_id]
        case LeaseKeepaliveRequest(lease_id=lease_id):
            return [*head, lease_id]
        case LeaseRevokeRequest(session=(cid, seq), lease_id=lease_id):
            return [*head, cid, seq, lease_id]
        case LeaseTtlRequest(lease_id=lease_id, keys=keys):
            return [*head, lease_id, keys]
    raise TypeError(f"not a request: {request!r}")  # pragma: no cover - exhaustive above


def _encode_compare(compare: Compare) -> list[object]:
    return [
        compare.key,
        COMPARE_TARGET_CODES[compare.target],
        COMPARE_OP_CODES[compare.op],
        compare.value,
    ]


def _encode_op(op: TxnOp) -> list[object]:
    return [OP_KIND_CODES[op.kind], op.key, op.end, op.value, op.lease, op.limit]


def _encode_kv(kv: KeyValue) -> list[object]:
    return [kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease]


def _encode_range_result(result: RangeResult) -> list[object]:
    return [[_encode_kv(kv) for kv in result.kvs], result.more, result.count, result.revision]


def _encode_op_result(result: OpResult) -> list[object]:
    if result is None:
        return [_RESULT_NONE, None]
    if isinstance(result, bool):
        return [_RESULT_BOOL, result]
    if isinstance(result, int):
        return [_RESULT_COUNT, result]
    if isinstance(result, KeyValue):
        return [_RESULT_KV, _encode_kv(result)]
    if isinstance(result, RangeResult):
        return [_RESULT_RANGE, _encode_range_result(result)]
    raise TypeError(f"not a txn op result: {type(result).__name__}")


def _encode_txn_result(result: TxnResult) -> list[object]:
    return [result.succeeded, result.revision, [_encode_op_result(r) for r in result.results]]


def _encode_event(event: WatchEvent) -> list[object]:
    prev = None if event.prev_kv is None else _encode_kv(event.prev_kv)
    kind = _EVENT_PUT if event.type == "put" else _EVENT_DELETE
    return [kind, _encode_kv(event.kv), prev]


# --- sizes: upper bounds of the msgpack bytes, to split pages and watch messages by frame size ---

_INT_BYTES_MAX = 9
"""An int of up to 64 bits: a marker byte and up to eight bytes."""
_HEADER_BYTES_MAX = 5
"""A bin, str or array header of any length."""
KV_WIRE_OVERHEAD_BYTES = 1 + 2 * _HEADER_BYTES_MAX + 4 * _INT_BYTES_MAX
"""The most a key-value takes on the wire beyond its key and value bytes."""
WATCH_MESSAGE_OVERHEAD_BYTES = 1 + _INT_BYTES_MAX + 1 + _INT_BYTES_MAX + _HEADER_BYTES_MAX
"""The most a watch message takes beyond its events and its cancel."""


def kv_wire_bytes(kv: KeyValue) -> int:
    """An upper bound of the bytes `kv` takes on the wire."""
    return len(kv.key) + len(kv.value) + KV_WIRE_OVERHEAD_BYTES


def event_wire_bytes(event: WatchEvent) -> int:
    """An upper bound of the bytes `event` takes in a watch message."""
    prev = 1 if event.prev_kv is None else kv_wire_bytes(event.prev_kv)
    return 2 + kv_wire_bytes(event.kv) + prev


def result_wire_bytes(result: object) -> int:
    """An upper bound of the bytes a RANGE, TXN or LEASE_TTL result takes on the wire
    (`_INT_BYTES_MAX` for the small results of the others)."""
    if isinstance(result, RangeResult):
        kvs = sum(kv_wire_bytes(kv) for kv in result.kvs)
        return 1 + _HEADER_BYTES_MAX + kvs + 1 + 2 * _INT_BYTES_MAX
    if isinstance(result, TxnResult):
        each = sum(2 + result_wire_bytes(r) for r in result.results)
        return 1 + 1 + _INT_BYTES_MAX + _HEADER_BYTES_MAX + each
    if isinstance(result, KeyValue):
        return kv_wire_bytes(result)
    if isinstance(result, LeaseStatus):
        keys = sum(_HEADER_BYTES_MAX + len(k) for k in result.keys)
        return 1 + 2 * _INT_BYTES_MAX + _HEADER_BYTES_MAX + keys
    return _INT_BYTES_MAX


def encode_watch_events(
    watch_id: int,
    revision: int,
    events: Sequence[WatchEvent],
    canceled: WatchCanceled | None = None,
) -> list[object]:
    """Return the RESPONSE-frame element carrying one message of watch `watch_id`'s stream
    (at most `EVENTS_PER_MESSAGE_MAX` events: split longer runs)."""
    if len(events) > EVENTS_PER_MESSAGE_MAX:
        raise TypeError(f"{len(events)} events in one message, more than {EVENTS_PER_MESSAGE_MAX}")
    cancel = None if canceled is None else [int(canceled[0]), canceled[1], canceled[2]]
    return [watch_id, Outcome.EVENTS, revision, [_encode_event(e) for e in events], cancel]


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
    if op is Op.RANGE:
        if not isinstance(result, RangeResult):
            raise TypeError(f"range result must be a RangeResult, got {type(result).__name__}")
        return [request_id, Outcome.OK, _encode_range_result(result)]
    if op is Op.TXN:
        if not isinstance(result, TxnResult):
            raise TypeError(f"txn result must be a TxnResult, got {type(result).__name__}")
        return [request_id, Outcome.OK, _encode_txn_result(result)]
    if op is Op.WATCH_CREATE:
        if not isinstance(result, WatchCreated):
            raise TypeError(f"watch result must be a WatchCreated, got {type(result).__name__}")
        return [request_id, Outcome.OK, [result.watch_id, result.revision]]
    if op is Op.LEASE_GRANT:
        if not isinstance(result, Lease):
            raise TypeError(f"lease grant result must be a Lease, got {type(result).__name__}")
        return [request_id, Outcome.OK, [result.id, result.ttl_s]]
    if op is Op.LEASE_TTL:
        if result is None:
            return [request_id, Outcome.OK, None]
        if not isinstance(result, LeaseStatus):
            raise TypeError(f"lease ttl result must be a LeaseStatus, got {type(result).__name__}")
        ttls = [float(result.remaining_ttl_s), float(result.granted_ttl_s)]
        return [request_id, Outcome.OK, [*ttls, list(result.keys)]]
    if op is Op.LEASE_KEEPALIVE:
        return [request_id, Outcome.OK, float(result)]  # type: ignore[arg-type]
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
    (CompactedError, ErrorCode.COMPACTED),
    (LeaseNotFoundError, ErrorCode.LEASE_NOT_FOUND),
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
    code = error_code_of(exc)
    if isinstance(exc, CompactedError):
        return [request_id, Outcome.ERROR, code, message, None, None, exc.oldest_revision]
    if isinstance(exc, LeaseNotFoundError):
        return [request_id, Outcome.ERROR, code, message, None, None, exc.lease_id]
    return [request_id, Outcome.ERROR, code, message, leader_id, leader_address]


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
    Op.RANGE: 7,
    Op.TXN: 5,
    Op.WATCH_CREATE: 4,
    Op.WATCH_CANCEL: 1,
    Op.WATCH_PROGRESS: 0,
    Op.LEASE_GRANT: 4,
    Op.LEASE_KEEPALIVE: 1,
    Op.LEASE_REVOKE: 3,
    Op.LEASE_TTL: 2,
}


def _bool(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise _fail(f"{what} must be a bool, got {type(value).__name__}")
    return value


def _limit(value: object) -> int | None:
    if value is not None and (not _is_int(value) or not 1 <= value <= REQUEST_ID_MAX):
        raise _fail(f"limit must be None or a positive int, got {value!r:.60}")
    return value


def _optional_revision(value: object, what: str) -> int | None:
    if value is not None and (not _is_int(value) or not 1 <= value <= REQUEST_ID_MAX):
        raise _fail(f"{what} must be None or an int >= 1, got {value!r:.60}")
    return value


def _lease_id(value: object, *, zero_ok: bool = False) -> int:
    low = 0 if zero_ok else 1
    if not _is_int(value) or not low <= value <= LEASE_ID_MAX:
        raise _fail(f"lease id must be an int in {low}..2**63-1, got {value!r:.60}")
    return value


def _seconds(value: object, what: str, high: float) -> float:
    if type(value) not in (int, float):
        raise _fail(f"{what} must be a number, got {type(value).__name__}")
    seconds = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(seconds) and 0 <= seconds <= high):
        raise _fail(f"{what} out of range: {seconds}")
    return seconds


def _list(value: object, what: str, most: int) -> list[object]:
    if type(value) is not list:
        raise _fail(f"{what} must be a list, got {type(value).__name__}")
    if len(value) > most:
        raise _fail(f"{what} holds {len(value)} items, more than {most}")
    return value


def _decode_compare(obj: object) -> Compare:
    if type(obj) is not list or len(obj) != 4:
        raise _fail("a compare must be [key, target, op, value]")
    target = _COMPARE_TARGET_OF.get(obj[1]) if _is_int(obj[1]) else None
    op = _COMPARE_OP_OF.get(obj[2]) if _is_int(obj[2]) else None
    if target is None or op is None:
        raise _fail(f"unknown compare target or op {obj[1]!r:.20} {obj[2]!r:.20}")
    if type(obj[3]) not in (bytes, int, bool):
        raise _fail(f"a compare value must be bytes, int or bool, got {type(obj[3]).__name__}")
    try:
        return Compare(_bytes(obj[0], "compare key"), target, op, obj[3])
    except InvalidArgumentError as e:
        # A conforming client cannot build such a compare: the peer is broken.
        raise _fail(str(e)) from None


def _decode_op(obj: object) -> TxnOp:
    if type(obj) is not list or len(obj) != 6:
        raise _fail("a txn op must be [kind, key, end, value, lease, limit]")
    kind = _OP_KIND_OF.get(obj[0]) if _is_int(obj[0]) else None
    if kind is None:
        raise _fail(f"unknown txn op kind {obj[0]!r:.60}")
    key = _bytes(obj[1], "op key")
    end = _optional_bytes(obj[2], "op end")
    value = _bytes(obj[3], "op value")
    lease = None if obj[4] is None else _lease_id(obj[4])
    limit = _limit(obj[5])
    try:
        if kind == "put":
            built = TxnOp.put(key, value, lease=lease)
        elif kind == "delete":
            built = TxnOp.delete(key)
        elif kind == "delete_range":
            built = TxnOp.delete_range(key, end)  # type: ignore[arg-type]
        elif kind == "get":
            built = TxnOp.get(key)
        else:
            built = TxnOp.range(key, end, limit=limit)
    except InvalidArgumentError as e:
        raise _fail(str(e)) from None
    if built != TxnOp(kind, key, end, value, lease, limit):
        raise _fail(f"a {kind} op with fields that do not belong to it")
    return built


def _decode_kv(obj: object) -> KeyValue:
    if type(obj) is not list or len(obj) != 6:
        raise _fail("a key-value must be [key, value, create, mod, version, lease]")
    return KeyValue(
        _bytes(obj[0], "key"),
        _bytes(obj[1], "value"),
        _nonnegative(obj[2], "create_revision"),
        _nonnegative(obj[3], "mod_revision"),
        _nonnegative(obj[4], "version"),
        None if obj[5] is None else _lease_id(obj[5]),
    )


def _decode_range_result(obj: object) -> RangeResult:
    if type(obj) is not list or len(obj) != 4:
        raise _fail("a range result must be [kvs, more, count, revision]")
    kvs = [_decode_kv(item) for item in _list(obj[0], "kvs", REQUEST_ID_MAX)]
    count = _nonnegative(obj[2], "count")
    if count < len(kvs):
        raise _fail(f"a range result of {len(kvs)} keys counts only {count}")
    return RangeResult(kvs, _bool(obj[1], "more"), count, _nonnegative(obj[3], "revision"))


def _decode_op_result(obj: object) -> OpResult:
    if type(obj) is not list or len(obj) != 2 or not _is_int(obj[0]):
        raise _fail("a txn op result must be [shape, payload]")
    shape, payload = obj
    if shape == _RESULT_NONE and payload is None:
        return None
    if shape == _RESULT_BOOL:
        return _bool(payload, "delete result")
    if shape == _RESULT_COUNT:
        return _nonnegative(payload, "delete_range result")
    if shape == _RESULT_KV:
        return _decode_kv(payload)
    if shape == _RESULT_RANGE:
        return _decode_range_result(payload)
    raise _fail(f"unknown txn op result shape {shape!r:.60}")


def _decode_event(obj: object) -> WatchEvent:
    if type(obj) is not list or len(obj) != 3:
        raise _fail("a watch event must be [type, kv, prev_kv]")
    if obj[0] == _EVENT_PUT and _is_int(obj[0]):
        kind: Literal["put", "delete"] = "put"
    elif obj[0] == _EVENT_DELETE and _is_int(obj[0]):
        kind = "delete"
    else:
        raise _fail(f"unknown watch event type {obj[0]!r:.60}")
    return WatchEvent(kind, _decode_kv(obj[1]), None if obj[2] is None else _decode_kv(obj[2]))


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
    if op is Op.TRANSFER_LEADER:
        return TransferLeaderRequest(request_id, timeout_s, _str(args[0], "node_id"))
    return _decode_coordination_request(op, request_id, timeout_s, args)


def _decode_coordination_request(
    op: Op, request_id: int, timeout_s: float, args: list[object]
) -> Request:
    if op is Op.RANGE:
        return RangeRequest(
            request_id,
            timeout_s,
            _bytes(args[0], "start"),
            _optional_bytes(args[1], "end"),
            _limit(args[2]),
            _optional_revision(args[3], "revision"),
            _bool(args[4], "keys_only"),
            _bool(args[5], "count_only"),
            _consistency(args[6]),
        )
    if op is Op.TXN:
        return TxnRequest(
            request_id,
            timeout_s,
            _session(args[0], args[1]),
            tuple(_decode_compare(c) for c in _list(args[2], "compares", COMPARES_PER_TXN_MAX)),
            tuple(_decode_op(o) for o in _list(args[3], "success", OPS_PER_TXN_MAX)),
            tuple(_decode_op(o) for o in _list(args[4], "failure", OPS_PER_TXN_MAX)),
        )
    if op is Op.WATCH_CREATE:
        return WatchCreateRequest(
            request_id,
            timeout_s,
            _bytes(args[0], "key"),
            _optional_bytes(args[1], "end"),
            _optional_revision(args[2], "start_revision"),
            _bool(args[3], "prev_kv"),
        )
    if op is Op.WATCH_CANCEL:
        return WatchCancelRequest(request_id, timeout_s, _uint(args[0], "watch_id"))
    if op is Op.WATCH_PROGRESS:
        return WatchProgressRequest(request_id, timeout_s)
    if op is Op.LEASE_GRANT:
        ttl_s = _seconds(args[2], "ttl_s", LEASE_TTL_S_MAX)
        if ttl_s == 0:
            raise _fail("ttl_s must be positive")
        return LeaseGrantRequest(
            request_id,
            timeout_s,
            _session(args[0], args[1]),
            ttl_s,
            _lease_id(args[3], zero_ok=True),
        )
    if op is Op.LEASE_KEEPALIVE:
        return LeaseKeepaliveRequest(request_id, timeout_s, _lease_id(args[0]))
    if op is Op.LEASE_REVOKE:
        return LeaseRevokeRequest(
            request_id, timeout_s, _session(args[0], args[1]), _lease_id(args[2])
        )
    return LeaseTtlRequest(request_id, timeout_s, _lease_id(args[0]), _bool(args[1], "keys"))


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
    code: object, message: str, leader_id: str | None, address: str | None, detail: object
) -> KVStoreError:
    if code == ErrorCode.COMPACTED:
        return CompactedError(_nonnegative(detail, "oldest revision"), message)
    if code == ErrorCode.LEASE_NOT_FOUND:
        return LeaseNotFoundError(_lease_id(detail, zero_ok=True), message)
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
        # Six elements, or seven with the detail of COMPACTED and LEASE_NOT_FOUND.
        if len(obj) not in (6, 7) or not _is_int(obj[2]):
            raise _fail("an ERROR response must be [id, ERROR, code, message, leader, address]")
        error = _exception(
            obj[2],
            _str(obj[3], "message"),
            _optional_str(obj[4], "leader_id"),
            _optional_str(obj[5], "leader_address"),
            obj[6] if len(obj) == 7 else None,
        )
        return Response(request_id, None, error)
    raise _fail(f"unknown outcome {obj[1]!r:.60}")


def decode_responses(body: object) -> list[Response]:
    """Validate the body of a RESPONSE frame (a list of responses)."""
    return [decode_response(item) for item in _batch(body, "RESPONSE")]


def _decode_watch_events(obj: list[object]) -> WatchEventsMessage:
    if len(obj) != 5:
        raise _fail("a watch message must be [watch_id, EVENTS, revision, events, canceled]")
    watch_id = _uint(obj[0], "watch_id")
    revision = _nonnegative(obj[2], "revision")
    events = [_decode_event(e) for e in _list(obj[3], "events", EVENTS_PER_MESSAGE_MAX)]
    canceled = None
    if obj[4] is not None:
        cancel = obj[4]
        if type(cancel) is not list or len(cancel) != 3 or not _is_int(cancel[0]):
            raise _fail("a watch cancel must be [reason, message, revision]")
        try:
            reason = WatchCancelReason(cancel[0])
        except ValueError:
            raise _fail(f"unknown watch cancel reason {cancel[0]!r:.60}") from None
        canceled = WatchCanceled(
            reason, _str(cancel[1], "cancel message"), _nonnegative(cancel[2], "cancel revision")
        )
    return WatchEventsMessage(watch_id, revision, events, canceled)


def decode_response_item(obj: object) -> Response | WatchEventsMessage:
    """Validate one element of a RESPONSE frame: an answer or a message of a watch's stream."""
    if type(obj) is list and len(obj) >= 2 and obj[1] == Outcome.EVENTS and _is_int(obj[1]):
        return _decode_watch_events(obj)
    return decode_response(obj)


def decode_response_items(body: object) -> list[Response | WatchEventsMessage]:
    """Validate the body of a RESPONSE frame from a member that may stream watches."""
    return [decode_response_item(item) for item in _batch(body, "RESPONSE")]


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


def parse_range_result(raw: object) -> RangeResult:
    """RANGE: a `RangeResult`."""
    return _decode_range_result(raw)


def parse_txn_result(raw: object) -> TxnResult:
    """TXN: a `TxnResult`."""
    if type(raw) is not list or len(raw) != 3:
        raise _fail("a txn result must be [succeeded, revision, results]")
    results = [_decode_op_result(r) for r in _list(raw[2], "results", OPS_PER_TXN_MAX)]
    return TxnResult(_bool(raw[0], "succeeded"), results, _nonnegative(raw[1], "revision"))


def parse_watch_created(raw: object) -> WatchCreated:
    """WATCH_CREATE: the watch's id and the revision it started at."""
    if type(raw) is not list or len(raw) != 2:
        raise _fail("a watch creation must be [watch_id, revision]")
    return WatchCreated(_uint(raw[0], "watch_id"), _nonnegative(raw[1], "revision"))


def parse_lease(raw: object) -> Lease:
    """LEASE_GRANT: the granted `Lease`."""
    if type(raw) is not list or len(raw) != 2:
        raise _fail("a lease must be [id, ttl_s]")
    ttl_s = _seconds(raw[1], "ttl_s", LEASE_TTL_S_MAX)
    if ttl_s == 0:
        raise _fail("a granted lease has a positive ttl_s")
    return Lease(_lease_id(raw[0]), ttl_s)


def parse_ttl_s(raw: object) -> float:
    """LEASE_KEEPALIVE: the remaining TTL in seconds."""
    return _seconds(raw, "remaining ttl_s", LEASE_TTL_S_MAX)


def parse_lease_status(raw: object) -> LeaseStatus | None:
    """LEASE_TTL: the lease's remaining and granted TTL and its keys; None if it is gone."""
    if raw is None:
        return None
    if type(raw) is not list or len(raw) != 3:
        raise _fail("a lease status must be [remaining_ttl_s, granted_ttl_s, keys]")
    keys = [_bytes(k, "lease key") for k in _list(raw[2], "lease keys", LEASE_KEYS_MAX)]
    return LeaseStatus(
        _seconds(raw[0], "remaining ttl_s", LEASE_TTL_S_MAX),
        _seconds(raw[1], "granted ttl_s", LEASE_TTL_S_MAX),
        keys,
    )


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

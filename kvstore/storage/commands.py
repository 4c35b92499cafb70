"""The replicated commands (register a session, put, delete, cas) as they travel in
`Entry.data`, and their results.

Client sessions follow the Raft thesis (Ongaro, §6.3 "Implementing linearizable semantics"):

- A client first REGISTERs a session through the log; its session id is the log index of the
  register entry, assigned by the state machine, the same on every member.
- Every write then carries `(session_id, seq)`: `seq` >= 1 grows with each new write of that
  session. The state machine remembers, per session, which of the last `SESSION_WINDOW` seqs
  were applied and their results, so a retried write is answered with its first result instead
  of being applied twice, even when a session's concurrent writes commit out of order.
- A write from a session the state machine does not hold (never registered, or expired) is
  refused (`SESSION_EXPIRED`) and never applied: its outcome is unknown to the client.
- A seq more than `SESSION_WINDOW` above the newest one applied for the session is refused
  (`SEQ_TOO_FAR`) and leaves the session as it was, so a forged seq of 2**64-1 cannot block
  the session's later writes.

Every command also carries `stamp_ms`: the wall-clock time (ms since the epoch) of the node
that proposed it, or 0 for none. Only a node that leads stamps (see `kvstore.node`); the state
machine keeps `clock = max(clock, stamp_ms)` and expires sessions by that clock, so expiry
depends on the log alone.

Wire layout (version 2; all integers little-endian, fixed width)::

    offset  size  field
    0       1     op: 1 put, 2 delete, 3 cas, 4 register, 5 txn, 6 lease grant,
                  7 lease revoke
    1       8     session_id (u64; 0 in a register)
    9       8     seq (u64, >= 1; in a register, the client's random nonce that matches the
                  entry to the caller waiting for it)
    17      8     stamp_ms (u64; 0 = no stamp)
    25      2     key length k (u16, 1..511; 0 in a register)
    27      k     key
    put:      the rest of the data is the value (possibly empty)
    delete:   nothing follows
    cas:      1 byte flags (bit 0: expected present, bit 1: new present),
              4 bytes expected length e (u32; 0 when absent), e bytes expected,
              then the rest is the new value (must be empty when absent)
    register: nothing follows
    txn:      key length 0; the rest is the transaction (see "Transactions" below)
    lease grant:  key length 0; u64 lease id (0: the state machine assigns the entry's
              index), u64 ttl_ms (1..LEASE_TTL_MS_MAX)
    lease revoke: key length 0; u64 lease id (>= 1)

Leases: a grant or revoke may carry session id 0 (no session): the leader commits the revoke
of an expired lease that way (expiry is decided by the leader, outside the state machine);
such commands are not deduplicated, which is harmless (a second revoke finds no lease, a grant
with an explicit id finds it exists). A put with a lease travels as a one-op TXN.

Transactions (op 5; etcd's Txn: compares, then the success or the failure ops, all at one
revision). After the header (key length 0)::

    3 x u16: compare count, success op count, failure op count (each <= TXN_OPS_MAX)
    compare: u8 target (CompareTarget), u8 op (CompareOp), u16 key length, key, then by
             target: value: u32 length + bytes; version, create_revision, mod_revision:
             u64; exists: u8 0 or 1 (only == and !=)
    op:      u8 type (TxnOpType), u16 key length, key (range/delete_range: the start, may be
             empty with an end or a prefix), then by type:
             put: u64 lease (0 = none), u32 value length, value
             delete, get: nothing
             delete_range, range: u8 flags (1: end present, 2: prefix), u16 end length, end;
             range only: u32 limit (0 = none)

The whole command is at most `TXN_BYTES_MAX` bytes. `encode_txn` checks every field and
raises `InvalidArgumentError` before anything is proposed; `decode_txn` applies the same
checks at apply (a violation is MALFORMED there, the same on every member).

Why not msgpack: measured on this machine (benchmarks/test_bench_state_machine.py, best of
runs, 100k puts with 16-byte keys and 100-byte values), decoding plus validating costs the same
either way (200 ns each), and encoding with the argument checks is faster with struct (350 ns
vs 430 ns). A fixed layout also cannot smuggle in unexpected types, so validation is
structural, and the encoding is canonical (one byte string per command).

Results: register -> the new session id (an int: the entry's index); put -> True; delete ->
whether the key existed; cas -> whether it swapped; txn -> a `TxnOutcome` (truthy when the
compares held), or, for a retried txn answered from its session's window, that truth value
alone (the results of its reads are not kept). A command that was not applied yields a
`CommandRejected`. `encode_results` packs a batch of results into one byte each.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import NamedTuple

from kvstore import wire
from kvstore.errors import InvalidArgumentError
from kvstore.options import KEY_BYTES_MAX

SEQ_MAX = (1 << 64) - 1
"""Largest session sequence number (u64)."""

SESSION_ID_MAX = SEQ_MAX
"""Largest session id (u64; a session id is a log index, so >= 1)."""

STAMP_MS_MAX = SEQ_MAX
"""Largest proposer time stamp (u64 milliseconds)."""

SESSION_WINDOW = wire.SESSION_WINDOW
"""How many of a client's most recent seqs the state machine remembers (applied or not, and the
result). Commands of one client may commit in any order within this window; part of the
replicated format, so it must never differ between members.

It also bounds how far a seq may jump: a seq more than `SESSION_WINDOW` above the newest one
applied for its session is refused (`SEQ_TOO_FAR`). A client keeps its writes in flight within
half the window (`kvstore.client.aio_client.SEQS_IN_FLIGHT_MAX`), so it never meets that."""

_HEADER = struct.Struct("<BQQQH")
_HEADER_BYTES = _HEADER.size  # 27
_CAS_EXTRA = struct.Struct("<BI")
_CAS_EXTRA_BYTES = _CAS_EXTRA.size  # 5
_CAS_EXPECTED = 1
_CAS_NEW = 2


class Op(enum.IntEnum):
    """A command's operation code (the first byte of its encoding)."""

    PUT = 1
    DELETE = 2
    CAS = 3
    REGISTER = 4
    """Register a client session; the state machine answers with its id."""
    TXN = 5
    """A transaction: compares, then success or failure ops, at one revision."""
    LEASE_GRANT = 6
    """Grant a lease (its id given, or the entry's index), with a ttl in ms."""
    LEASE_REVOKE = 7
    """Revoke a lease: delete its keys at one revision (also how expiry is committed)."""


_OPS = frozenset(int(op) for op in Op)
# Plain module globals: looking up an enum member through its class costs more on the hot path.
_PUT, _DELETE, _CAS, _REGISTER, _TXN = Op.PUT, Op.DELETE, Op.CAS, Op.REGISTER, Op.TXN
_LEASE_GRANT, _LEASE_REVOKE = Op.LEASE_GRANT, Op.LEASE_REVOKE


class Command(NamedTuple):
    """A decoded command. Fields an op does not use are None.

    put: `value`; delete: nothing; cas: `expected` (None = must be absent) and `new`
    (None = delete); register: `session_id` 0, `seq` the nonce, `key` empty.
    """

    op: Op
    session_id: int
    seq: int
    key: bytes
    value: bytes | None = None
    expected: bytes | None = None
    new: bytes | None = None
    stamp_ms: int = 0


class ResultCode(enum.IntEnum):
    """One byte per result in `encode_results`."""

    FALSE = 0
    """delete: the key was absent; cas: the expected value did not match."""
    TRUE = 1
    """put: done; delete: the key existed; cas: swapped."""
    STALE = 2
    """Not applied: the seq fell out of its session's window (`SESSION_WINDOW` below the newest
    seq applied for that client), so whether it ran before cannot be told. A caller that knows
    its command never applied may retry it under a new seq."""
    MALFORMED = 3
    """Not applied: the entry's data is not a valid command (applied as a no-op)."""
    NONE = 4
    """No result: a no-op entry, a conf change, or an entry skipped because already applied."""
    SESSION_EXPIRED = 5
    """Not applied: the write's session is not held (never registered, or expired). Whether an
    earlier copy of it ran cannot be told: its outcome is unknown."""
    SEQ_TOO_FAR = 6
    """Not applied: the seq is more than `SESSION_WINDOW` above its session's newest; the
    session is unchanged."""
    SESSIONS_FULL = 7
    """Not applied: a registration found `sessions_max` live sessions."""
    REGISTERED = 8
    """A session was registered; its id is the entry's index (not carried in the byte)."""
    STORAGE_FULL = 9
    """Not applied: it would have taken the store past its quota (`StateMachine`, "Quota").
    The session records it as applied with result False, so a retry is refused the same way."""
    LEASE_NOT_FOUND = 10
    """Not applied: a put (in a txn) names a lease, or a revoke a lease, that is not held
    (never granted, revoked or expired). Maps to `kvstore.LeaseNotFoundError`."""
    LEASE_EXISTS = 11
    """Not applied: a grant names a lease id that is held already."""


class CommandRejected(NamedTuple):
    """A command that was not applied. `code` is one of the "not applied" `ResultCode`s;
    `reason` is for logs and error messages.

    It is falsy (unlike other non-empty tuples), so `bool(result)` never reads a rejection as
    "existed" or "swapped"; callers should still test for it and fail the request.
    """

    code: ResultCode
    reason: str = ""

    def __bool__(self) -> bool:
        return False


class TxnOutcome(NamedTuple):
    """The result of an applied txn: whether the compares held, one result per op of the
    branch that ran (put: None; delete: bool; delete_range: int; get: `KvTuple` or None; range:
    `RangePage`), and the store's revision after it. Truthy when the compares held."""

    succeeded: bool
    results: list[object]
    revision: int

    def __bool__(self) -> bool:
        return self.succeeded


class LeaseGranted(NamedTuple):
    """The result of an applied lease grant (truthy)."""

    lease_id: int
    ttl_ms: int


Result = bool | int | CommandRejected | TxnOutcome | LeaseGranted | None
"""What `StateMachine.apply` returns per entry (an int only for a registration)."""


def _check_u64(value: int, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= SEQ_MAX:
        raise InvalidArgumentError(f"{name} must be an int in {low}..2**64-1, got {value!r}")


def _header(op: Op, session_id: int, seq: int, key: bytes, stamp_ms: int) -> bytes:
    _check_u64(session_id, "session_id", 1)
    _check_u64(seq, "seq", 1)
    _check_u64(stamp_ms, "stamp_ms", 0)
    if not isinstance(key, bytes) or not 1 <= len(key) <= KEY_BYTES_MAX:
        raise InvalidArgumentError(f"key must be 1 to {KEY_BYTES_MAX} bytes")
    return _HEADER.pack(op, session_id, seq, stamp_ms, len(key)) + key


def encode_register(nonce: int, stamp_ms: int = 0) -> bytes:
    """Encode a session registration; `nonce` (1..2**64-1, random) lets the proposer match the
    applied entry to its caller. Raises `InvalidArgumentError`."""
    _check_u64(nonce, "nonce", 1)
    _check_u64(stamp_ms, "stamp_ms", 0)
    return _HEADER.pack(Op.REGISTER, 0, nonce, stamp_ms, 0)


def encode_put(session_id: int, seq: int, key: bytes, value: bytes, stamp_ms: int = 0) -> bytes:
    """Encode `put(key, value)` for session `(session_id, seq)`. Raises `InvalidArgumentError`."""
    if not isinstance(value, bytes):
        raise InvalidArgumentError("value must be bytes")
    return _header(Op.PUT, session_id, seq, key, stamp_ms) + value


def encode_delete(session_id: int, seq: int, key: bytes, stamp_ms: int = 0) -> bytes:
    """Encode `delete(key)` for session `(session_id, seq)`. Raises `InvalidArgumentError`."""
    return _header(Op.DELETE, session_id, seq, key, stamp_ms)


def encode_cas(
    session_id: int,
    seq: int,
    key: bytes,
    expected: bytes | None,
    new: bytes | None,
    stamp_ms: int = 0,
) -> bytes:
    """Encode `cas(key, expected, new)`: expected None = "must be absent", new None = delete."""
    for name, part in (("expected", expected), ("new", new)):
        if part is not None and not isinstance(part, bytes):
            raise InvalidArgumentError(f"{name} must be bytes or None")
    flags = (_CAS_EXPECTED if expected is not None else 0) | (_CAS_NEW if new is not None else 0)
    expected_bytes = expected or b""
    return b"".join(
        (
            _header(Op.CAS, session_id, seq, key, stamp_ms),
            _CAS_EXTRA.pack(flags, len(expected_bytes)),
            expected_bytes,
            new or b"",
        )
    )


def decode_command(data: bytes) -> Command:
    """Inverse of the `encode_*` functions. Raises `ValueError` on malformed data.

    Every byte string either decodes to exactly one valid command or raises, so all members
    reach the same verdict on the same entry. (The encoding is canonical: a decoded command
    encodes back to the same bytes.)
    """
    return Command._make(decode_fields(data))


CommandFields = tuple[Op, int, int, bytes, bytes | None, bytes | None, bytes | None, int]
"""`Command`'s fields as a plain tuple, in the same order."""


def decode_fields(data: bytes) -> CommandFields:
    """`decode_command` without building the NamedTuple: the state machine's hot path, where
    NamedTuple construction cost as much as the decoding itself (measured)."""
    size = len(data)
    if size < _HEADER_BYTES:
        raise ValueError(f"command too short: {size} bytes")
    op, session_id, seq, stamp_ms, key_len = _HEADER.unpack_from(data)
    end = _HEADER_BYTES + key_len
    if op == 4:
        if session_id or key_len or size != _HEADER_BYTES or seq < 1:
            raise ValueError("a register carries a nonce and a stamp only")
        return _REGISTER, 0, seq, b"", None, None, None, stamp_ms
    if op == 6 or op == 7:
        if key_len or seq < 1:
            raise ValueError("a lease command carries no key and a seq >= 1")
        payload = data[_HEADER_BYTES:]
        if op == 6:
            if len(payload) != _LEASE_GRANT_BODY.size:
                raise ValueError("a lease grant carries a lease id and a ttl")
            lease_id, ttl_ms = _LEASE_GRANT_BODY.unpack(payload)
            if lease_id > LEASE_ID_MAX or not 1 <= ttl_ms <= LEASE_TTL_MS_MAX:
                raise ValueError(f"lease grant of id {lease_id}, ttl {ttl_ms} ms out of range")
            return _LEASE_GRANT, session_id, seq, b"", payload, None, None, stamp_ms
        if len(payload) != 8 or not 1 <= int.from_bytes(payload, "little") <= LEASE_ID_MAX:
            raise ValueError("a lease revoke carries a lease id in 1..2**63-1")
        return _LEASE_REVOKE, session_id, seq, b"", payload, None, None, stamp_ms
    if session_id < 1:
        raise ValueError("session_id must be >= 1")
    if op == 5:
        if key_len or seq < 1:
            raise ValueError("a txn carries no key and a seq >= 1")
        if size > TXN_BYTES_MAX:
            raise ValueError(f"txn of {size} bytes, more than {TXN_BYTES_MAX}")
        return _TXN, session_id, seq, b"", data[_HEADER_BYTES:], None, None, stamp_ms
    if not 1 <= key_len <= KEY_BYTES_MAX:
        raise ValueError(f"key length {key_len} outside 1..{KEY_BYTES_MAX}")
    if size < end:
        raise ValueError("key truncated")
    if seq < 1:
        raise ValueError("seq must be >= 1")
    key = data[_HEADER_BYTES:end]
    if op == 1:
        return _PUT, session_id, seq, key, data[end:], None, None, stamp_ms
    if op == 2:
        if size != end:
            raise ValueError("trailing bytes after delete")
        return _DELETE, session_id, seq, key, None, None, None, stamp_ms
    if op == 3:
        if size < end + _CAS_EXTRA_BYTES:
            raise ValueError("cas header truncated")
        flags, expected_len = _CAS_EXTRA.unpack_from(data, end)
        if flags & ~(_CAS_EXPECTED | _CAS_NEW):
            raise ValueError(f"unknown cas flags {flags:#x}")
        start = end + _CAS_EXTRA_BYTES
        new_start = start + expected_len
        if size < new_start:
            raise ValueError("cas expected value truncated")
        expected: bytes | None = None
        if flags & _CAS_EXPECTED:
            expected = data[start:new_start]
        elif expected_len:
            raise ValueError("cas expected length set but expected absent")
        new: bytes | None = None
        if flags & _CAS_NEW:
            new = data[new_start:]
        elif size != new_start:
            raise ValueError("trailing bytes after cas with new absent")
        return _CAS, session_id, seq, key, None, expected, new, stamp_ms
    raise ValueError(f"unknown op code {op}")


def decode_session(data: bytes) -> tuple[int, int] | None:
    """The `(session_id, seq)` of an encoded command, or None if `data` is not one; for a
    register, `(0, nonce)`.

    A cheap peek at the fixed header (no full validation), for matching applied entries to the
    callers waiting on them.
    """
    if len(data) < _HEADER_BYTES or data[0] not in _OPS:
        return None
    _op, session_id, seq, _stamp_ms, _key_len = _HEADER.unpack_from(data)
    return session_id, seq


def result_code(result: Result) -> ResultCode:
    """The one-byte code of an `apply` result."""
    if result is None:
        return ResultCode.NONE
    if isinstance(result, CommandRejected):
        return result.code
    if type(result) is int:
        return ResultCode.REGISTERED
    return ResultCode.TRUE if result else ResultCode.FALSE


def encode_results(results: Sequence[Result]) -> bytes:
    """Pack a batch of `apply` results, one byte each (reasons are dropped)."""
    return bytes([result_code(r) for r in results])


def decode_results(data: bytes) -> list[Result]:
    """Inverse of `encode_results` (a rejection comes back without its reason; a registration
    as True, its session id being the entry's index).

    Raises `ValueError` on an unknown code.
    """
    out: list[Result] = []
    for byte in data:
        code = ResultCode(byte)
        if code is ResultCode.TRUE or code is ResultCode.REGISTERED:
            out.append(True)
        elif code is ResultCode.FALSE:
            out.append(False)
        elif code is ResultCode.NONE:
            out.append(None)
        else:
            out.append(CommandRejected(code))
    return out


# --- transactions ---------------------------------------------------------------------------

TXN_OPS_MAX = 128
"""Most compares, and most ops in each branch, of one transaction (etcd's --max-txn-ops)."""

TXN_BYTES_MAX = 4 << 20
"""Largest encoded transaction (header included): the sum of its keys and values, about."""


class CompareTarget(enum.IntEnum):
    """What a compare reads of its key."""

    VALUE = 0
    VERSION = 1
    CREATE_REVISION = 2
    MOD_REVISION = 3
    EXISTS = 4


class CompareOp(enum.IntEnum):
    """How a compare compares (the key's side on the left)."""

    EQUAL = 0
    NOT_EQUAL = 1
    LESS = 2
    GREATER = 3


COMPARE_TARGETS = {
    "value": CompareTarget.VALUE,
    "version": CompareTarget.VERSION,
    "create_revision": CompareTarget.CREATE_REVISION,
    "mod_revision": CompareTarget.MOD_REVISION,
    "exists": CompareTarget.EXISTS,
}
"""The public names of the compare targets (`kvstore.Compare.target`)."""
COMPARE_OPS = {
    "==": CompareOp.EQUAL,
    "!=": CompareOp.NOT_EQUAL,
    "<": CompareOp.LESS,
    ">": CompareOp.GREATER,
}
"""The public names of the compare ops (`kvstore.Compare.op`)."""


class TxnOpType(enum.IntEnum):
    """An operation inside a transaction."""

    PUT = 1
    DELETE = 2
    DELETE_RANGE = 3
    GET = 4
    RANGE = 5


class TxnCompare(NamedTuple):
    """One compare: `target` and `op` are the public names (`COMPARE_TARGETS`, `COMPARE_OPS`);
    `value` bytes for "value", an int for the revisions and version, a bool for "exists"."""

    key: bytes
    target: str
    op: str
    value: bytes | int | bool


class TxnOp(NamedTuple):
    """One op of a transaction (build it with `txn_put` and the other functions below).
    `key` is the start for the range ops; `end` None with `prefix` False: just `key`."""

    type: TxnOpType
    key: bytes
    value: bytes = b""
    lease: int = 0
    end: bytes | None = None
    prefix: bool = False
    limit: int | None = None


def txn_put(key: bytes, value: bytes, lease: int = 0) -> TxnOp:
    """put(key, value) inside a txn, attached to `lease` (0: none)."""
    return TxnOp(TxnOpType.PUT, key, value, lease)


def txn_delete(key: bytes) -> TxnOp:
    """delete(key) inside a txn; its result: whether the key existed."""
    return TxnOp(TxnOpType.DELETE, key)


def txn_delete_range(start: bytes, end: bytes | None = None, *, prefix: bool = False) -> TxnOp:
    """Delete every key in [start, end) (or starting with `start`); result: how many."""
    return TxnOp(TxnOpType.DELETE_RANGE, start, end=end, prefix=prefix)


def txn_get(key: bytes) -> TxnOp:
    """get(key) inside a txn; result: the key's `KvTuple` or None."""
    return TxnOp(TxnOpType.GET, key)


def txn_range(
    start: bytes, end: bytes | None = None, *, prefix: bool = False, limit: int | None = None
) -> TxnOp:
    """A range read inside a txn; result: a `RangePage`."""
    return TxnOp(TxnOpType.RANGE, start, end=end, prefix=prefix, limit=limit)


_TXN_COUNTS = struct.Struct("<HHH")
_COMPARE_HEAD = struct.Struct("<BBH")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_PUT_TAIL = struct.Struct("<QI")
_RANGE_FLAGS = struct.Struct("<BH")
_END_PRESENT = 1
_PREFIX = 2


def _check_txn_key(key: object, what: str, *, empty_ok: bool = False) -> bytes:
    if not isinstance(key, bytes) or len(key) > KEY_BYTES_MAX or (not key and not empty_ok):
        low = 0 if empty_ok else 1
        raise InvalidArgumentError(f"{what} must be {low} to {KEY_BYTES_MAX} bytes, got {key!r}")
    return key


def _encode_compare(compare: TxnCompare) -> bytes:
    key = _check_txn_key(compare.key, "a compare's key")
    target = COMPARE_TARGETS.get(compare.target) if isinstance(compare.target, str) else None
    if target is None:
        raise InvalidArgumentError(
            f"unknown compare target {compare.target!r}: one of {sorted(COMPARE_TARGETS)}"
        )
    op = COMPARE_OPS.get(compare.op) if isinstance(compare.op, str) else None
    if op is None:
        raise InvalidArgumentError(f"unknown compare op {compare.op!r}: one of {list(COMPARE_OPS)}")
    value = compare.value
    head = _COMPARE_HEAD.pack(target, op, len(key)) + key
    if target is CompareTarget.VALUE:
        if not isinstance(value, bytes):
            raise InvalidArgumentError(f"a value compare takes bytes, got {value!r}")
        return head + _U32.pack(len(value)) + value
    if target is CompareTarget.EXISTS:
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"an exists compare takes a bool, got {value!r}")
        if op not in (CompareOp.EQUAL, CompareOp.NOT_EQUAL):
            raise InvalidArgumentError(f"an exists compare takes == or !=, got {compare.op!r}")
        return head + _U8.pack(int(value))
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEQ_MAX:
        raise InvalidArgumentError(
            f"a {compare.target} compare takes an int in 0..2**64-1, got {value!r}"
        )
    return head + _U64.pack(value)


def _encode_op(op: TxnOp) -> bytes:
    kind = op.type
    if not isinstance(op, TxnOp) or kind not in TxnOpType.__members__.values():
        raise InvalidArgumentError(f"not a txn op: {op!r}")
    ranged = kind in (TxnOpType.DELETE_RANGE, TxnOpType.RANGE)
    if ranged:
        key = _check_txn_key(op.key, "a range's start", empty_ok=True)
        if op.end is not None:
            if op.prefix:
                raise InvalidArgumentError("a range takes an end or prefix=True, not both")
            _check_txn_key(op.end, "a range's end", empty_ok=True)
        elif not key and not op.prefix:
            raise InvalidArgumentError("a range of one key needs a key of 1 or more bytes")
    else:
        key = _check_txn_key(op.key, "a txn op's key")
    out = _U8.pack(kind) + _U16.pack(len(key)) + key
    if kind is TxnOpType.PUT:
        if not isinstance(op.value, bytes):
            raise InvalidArgumentError("a put's value must be bytes")
        _check_u64(op.lease, "lease", 0)
        return out + _PUT_TAIL.pack(op.lease, len(op.value)) + op.value
    if not ranged:
        return out
    end = op.end or b""
    flags = (_END_PRESENT if op.end is not None else 0) | (_PREFIX if op.prefix else 0)
    out += _RANGE_FLAGS.pack(flags, len(end)) + end
    if kind is TxnOpType.RANGE:
        limit = op.limit
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit < 1 << 32
        ):
            raise InvalidArgumentError(f"a range limit must be None or 1..2**32-1, got {limit!r}")
        out += _U32.pack(limit or 0)
    return out


def encode_txn(
    session_id: int,
    seq: int,
    compares: Sequence[TxnCompare],
    success: Sequence[TxnOp],
    failure: Sequence[TxnOp] = (),
    stamp_ms: int = 0,
) -> bytes:
    """Encode a transaction for session `(session_id, seq)`. Raises `InvalidArgumentError`
    (unknown compare target or op, a bad key, value or limit, more than `TXN_OPS_MAX` compares
    or ops in a branch, more than `TXN_BYTES_MAX` bytes) before anything is proposed."""
    _check_u64(session_id, "session_id", 1)
    _check_u64(seq, "seq", 1)
    _check_u64(stamp_ms, "stamp_ms", 0)
    for name, part in (("compares", compares), ("success", success), ("failure", failure)):
        if len(part) > TXN_OPS_MAX:
            raise InvalidArgumentError(f"a txn takes at most {TXN_OPS_MAX} {name}, got {len(part)}")
    data = b"".join(
        (
            _HEADER.pack(Op.TXN, session_id, seq, stamp_ms, 0),
            _TXN_COUNTS.pack(len(compares), len(success), len(failure)),
            *(_encode_compare(TxnCompare(*c)) for c in compares),
            *(_encode_op(op) for op in success),
            *(_encode_op(op) for op in failure),
        )
    )
    if len(data) > TXN_BYTES_MAX:
        raise InvalidArgumentError(f"a txn takes at most {TXN_BYTES_MAX} bytes, got {len(data)}")
    return data


class DecodedCompare(NamedTuple):
    """A compare as `decode_txn` returns it (codes, not names)."""

    key: bytes
    target: CompareTarget
    op: CompareOp
    value: bytes | int | bool


class _Reader:
    """Bounds-checked reads from a txn body (ValueError past the end)."""

    __slots__ = ("at", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, size: int) -> bytes:
        end = self.at + size
        if end > len(self.data):
            raise ValueError("txn truncated")
        chunk = self.data[self.at : end]
        self.at = end
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        return layout.unpack(self.take(layout.size))


def _decode_key(reader: _Reader, *, empty_ok: bool) -> bytes:
    (size,) = reader.unpack(_U16)
    if size > KEY_BYTES_MAX or (not size and not empty_ok):
        raise ValueError(f"txn key of {size} bytes")
    return reader.take(size)


def decode_txn(body: bytes) -> tuple[list[DecodedCompare], list[TxnOp], list[TxnOp]]:
    """Inverse of `encode_txn`'s body (what follows the header). Raises `ValueError` for
    anything `encode_txn` would not produce, the limits included."""
    reader = _Reader(body)
    counts = reader.unpack(_TXN_COUNTS)
    if max(counts) > TXN_OPS_MAX:
        raise ValueError(f"txn with more than {TXN_OPS_MAX} compares or ops in a branch")
    compares: list[DecodedCompare] = []
    for _ in range(counts[0]):
        target_code, op_code, key_len = reader.unpack(_COMPARE_HEAD)
        target, op = CompareTarget(target_code), CompareOp(op_code)
        if not 1 <= key_len <= KEY_BYTES_MAX:
            raise ValueError(f"compare key of {key_len} bytes")
        key = reader.take(key_len)
        value: bytes | int | bool
        if target is CompareTarget.VALUE:
            value = reader.take(reader.unpack(_U32)[0])
        elif target is CompareTarget.EXISTS:
            (flag,) = reader.unpack(_U8)
            if flag > 1 or op not in (CompareOp.EQUAL, CompareOp.NOT_EQUAL):
                raise ValueError("bad exists compare")
            value = bool(flag)
        else:
            (value,) = reader.unpack(_U64)
        compares.append(DecodedCompare(key, target, op, value))
    branches: list[list[TxnOp]] = [[], []]
    for branch, count in zip(branches, counts[1:], strict=True):
        for _ in range(count):
            kind = TxnOpType(reader.unpack(_U8)[0])
            ranged = kind in (TxnOpType.DELETE_RANGE, TxnOpType.RANGE)
            key = _decode_key(reader, empty_ok=ranged)
            if kind is TxnOpType.PUT:
                lease, value_len = reader.unpack(_PUT_TAIL)
                branch.append(TxnOp(kind, key, reader.take(value_len), lease))
            elif not ranged:
                branch.append(TxnOp(kind, key))
            else:
                flags, end_len = reader.unpack(_RANGE_FLAGS)
                if flags & ~(_END_PRESENT | _PREFIX) or flags == _END_PRESENT | _PREFIX:
                    raise ValueError(f"bad range flags {flags:#x}")
                end_bytes = reader.take(end_len)
                if not flags & _END_PRESENT and end_len:
                    raise ValueError("range end bytes without an end")
                end = end_bytes if flags & _END_PRESENT else None
                prefix = bool(flags & _PREFIX)
                if end is None and not prefix and not key:
                    raise ValueError("a range of one key with an empty key")
                limit = None
                if kind is TxnOpType.RANGE:
                    limit = reader.unpack(_U32)[0] or None
                branch.append(TxnOp(kind, key, end=end, prefix=prefix, limit=limit))
    if reader.at != len(body):
        raise ValueError("trailing bytes after txn")
    return compares, branches[0], branches[1]


# --- leases -------------------------------------------------------------------------------

LEASE_ID_MAX = (1 << 63) - 1
"""Largest lease id (an int64, as etcd's)."""

LEASE_TTL_MS_MAX = 7 * 24 * 3600 * 1000
"""Longest lease ttl: a week (a lease outliving that is a configuration mistake: refused)."""

_LEASE_GRANT_BODY = struct.Struct("<QQ")


def _check_lease_session(session_id: int, seq: int, stamp_ms: int) -> None:
    _check_u64(session_id, "session_id", 0)
    _check_u64(seq, "seq", 1)
    _check_u64(stamp_ms, "stamp_ms", 0)


def encode_lease_grant(
    session_id: int, seq: int, ttl_ms: int, lease_id: int = 0, stamp_ms: int = 0
) -> bytes:
    """Encode a lease grant: `lease_id` 0 lets the state machine assign the entry's index;
    `session_id` 0 for none (see "Leases" above). Raises `InvalidArgumentError` for a ttl
    outside 1..LEASE_TTL_MS_MAX ms or an id outside 0..LEASE_ID_MAX."""
    _check_lease_session(session_id, seq, stamp_ms)
    if (
        isinstance(ttl_ms, bool)
        or not isinstance(ttl_ms, int)
        or not 1 <= ttl_ms <= LEASE_TTL_MS_MAX
    ):
        raise InvalidArgumentError(
            f"a lease ttl must be 1 to {LEASE_TTL_MS_MAX} ms (a week), got {ttl_ms!r}"
        )
    if (
        isinstance(lease_id, bool)
        or not isinstance(lease_id, int)
        or not 0 <= lease_id <= LEASE_ID_MAX
    ):
        raise InvalidArgumentError(f"a lease id must be in 0..2**63-1, got {lease_id!r}")
    return _HEADER.pack(Op.LEASE_GRANT, session_id, seq, stamp_ms, 0) + _LEASE_GRANT_BODY.pack(
        lease_id, ttl_ms
    )


def encode_lease_revoke(session_id: int, seq: int, lease_id: int, stamp_ms: int = 0) -> bytes:
    """Encode a lease revoke (or the leader's expiry of a lease, with `session_id` 0)."""
    _check_lease_session(session_id, seq, stamp_ms)
    if (
        isinstance(lease_id, bool)
        or not isinstance(lease_id, int)
        or not 1 <= lease_id <= LEASE_ID_MAX
    ):
        raise InvalidArgumentError(f"a lease id must be in 1..2**63-1, got {lease_id!r}")
    return _HEADER.pack(Op.LEASE_REVOKE, session_id, seq, stamp_ms, 0) + _U64.pack(lease_id)

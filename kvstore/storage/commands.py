"""The replicated commands (put, delete, cas) as they travel in `Entry.data`, and their results.

Every command carries a client session, `(client_id, seq)`: `client_id` is 16 bytes chosen by
the client, `seq` a number >= 1 that grows with each new command of that client. The state
machine remembers, per client, which of the last `SESSION_WINDOW` seqs were applied and their
results, so a retried command is answered with its first result instead of being applied
twice, even when a client's concurrent commands commit out of order.

Wire layout (version 1; all integers little-endian, fixed width)::

    offset  size  field
    0       1     op: 1 put, 2 delete, 3 cas
    1       16    client_id
    17      8     seq (u64, >= 1)
    25      2     key length k (u16, 1..511)
    27      k     key
    put:    the rest of the data is the value (possibly empty)
    delete: nothing follows
    cas:    1 byte flags (bit 0: expected present, bit 1: new present),
            4 bytes expected length e (u32; 0 when absent), e bytes expected,
            then the rest is the new value (must be empty when absent)

Why not msgpack: measured on this machine (benchmarks/test_bench_state_machine.py, best of
runs, 100k puts with 16-byte keys and 100-byte values), decoding plus validating costs the same
either way (200 ns each), and encoding with the argument checks is faster with struct (350 ns
vs 430 ns). A fixed layout also cannot smuggle in unexpected types, so validation is
structural, and the encoding is canonical (one byte string per command).

Results: put -> True; delete -> whether the key existed; cas -> whether it swapped. A command
that was not applied yields a `CommandRejected` (stale session sequence, or malformed data).
`encode_results` packs a batch of results into one byte each for the node to hand back.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import NamedTuple

from kvstore import wire
from kvstore.errors import InvalidArgumentError
from kvstore.options import KEY_BYTES_MAX

CLIENT_ID_BYTES = 16
"""Length of a client session id."""

SEQ_MAX = (1 << 64) - 1
"""Largest session sequence number (u64)."""

SESSION_WINDOW = wire.SESSION_WINDOW
"""How many of a client's most recent seqs the state machine remembers (applied or not, and the
result). Commands of one client may commit in any order within this window; part of the
replicated format, so it must never differ between members."""

_HEADER = struct.Struct("<B16sQH")
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


_OPS = frozenset(int(op) for op in Op)
# Plain module globals: looking up an enum member through its class costs more on the hot path.
_PUT, _DELETE, _CAS = Op.PUT, Op.DELETE, Op.CAS


class Command(NamedTuple):
    """A decoded command. Fields an op does not use are None.

    put: `value`; delete: nothing; cas: `expected` (None = must be absent) and `new`
    (None = delete).
    """

    op: Op
    client_id: bytes
    seq: int
    key: bytes
    value: bytes | None = None
    expected: bytes | None = None
    new: bytes | None = None


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


class CommandRejected(NamedTuple):
    """A command that was not applied. `code` is `STALE` or `MALFORMED`; `reason` is for logs.

    It is falsy (unlike other non-empty tuples), so `bool(result)` never reads a rejection as
    "existed" or "swapped"; callers should still test for it and fail the request.
    """

    code: ResultCode
    reason: str = ""

    def __bool__(self) -> bool:
        return False


Result = bool | CommandRejected | None
"""What `StateMachine.apply` returns per entry."""


def _check_session(client_id: bytes, seq: int) -> None:
    if not isinstance(client_id, bytes) or len(client_id) != CLIENT_ID_BYTES:
        raise InvalidArgumentError(f"client_id must be {CLIENT_ID_BYTES} bytes")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= SEQ_MAX:
        raise InvalidArgumentError(f"seq must be an int in 1..2**64-1, got {seq!r}")


def _header(op: Op, client_id: bytes, seq: int, key: bytes) -> bytes:
    _check_session(client_id, seq)
    if not isinstance(key, bytes) or not 1 <= len(key) <= KEY_BYTES_MAX:
        raise InvalidArgumentError(f"key must be 1 to {KEY_BYTES_MAX} bytes")
    return _HEADER.pack(op, client_id, seq, len(key)) + key


def encode_put(client_id: bytes, seq: int, key: bytes, value: bytes) -> bytes:
    """Encode `put(key, value)` for session `(client_id, seq)`. Raises `InvalidArgumentError`."""
    if not isinstance(value, bytes):
        raise InvalidArgumentError("value must be bytes")
    return _header(Op.PUT, client_id, seq, key) + value


def encode_delete(client_id: bytes, seq: int, key: bytes) -> bytes:
    """Encode `delete(key)` for session `(client_id, seq)`. Raises `InvalidArgumentError`."""
    return _header(Op.DELETE, client_id, seq, key)


def encode_cas(
    client_id: bytes, seq: int, key: bytes, expected: bytes | None, new: bytes | None
) -> bytes:
    """Encode `cas(key, expected, new)`: expected None = "must be absent", new None = delete."""
    for name, part in (("expected", expected), ("new", new)):
        if part is not None and not isinstance(part, bytes):
            raise InvalidArgumentError(f"{name} must be bytes or None")
    flags = (_CAS_EXPECTED if expected is not None else 0) | (_CAS_NEW if new is not None else 0)
    expected_bytes = expected or b""
    return b"".join(
        (
            _header(Op.CAS, client_id, seq, key),
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


CommandFields = tuple[Op, bytes, int, bytes, bytes | None, bytes | None, bytes | None]
"""`Command`'s fields as a plain tuple, in the same order."""


def decode_fields(data: bytes) -> CommandFields:
    """`decode_command` without building the NamedTuple: the state machine's hot path, where
    NamedTuple construction cost as much as the decoding itself (measured)."""
    size = len(data)
    if size < _HEADER_BYTES:
        raise ValueError(f"command too short: {size} bytes")
    op, client_id, seq, key_len = _HEADER.unpack_from(data)
    end = _HEADER_BYTES + key_len
    if not 1 <= key_len <= KEY_BYTES_MAX:
        raise ValueError(f"key length {key_len} outside 1..{KEY_BYTES_MAX}")
    if size < end:
        raise ValueError("key truncated")
    if seq < 1:
        raise ValueError("seq must be >= 1")
    key = data[_HEADER_BYTES:end]
    if op == 1:
        return _PUT, client_id, seq, key, data[end:], None, None
    if op == 2:
        if size != end:
            raise ValueError("trailing bytes after delete")
        return _DELETE, client_id, seq, key, None, None, None
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
        return _CAS, client_id, seq, key, None, expected, new
    raise ValueError(f"unknown op code {op}")


def decode_session(data: bytes) -> tuple[bytes, int] | None:
    """The `(client_id, seq)` of an encoded command, or None if `data` is not one.

    A cheap peek at the fixed header (no full validation), for matching applied entries to the
    callers waiting on them.
    """
    if len(data) < _HEADER_BYTES or data[0] not in _OPS:
        return None
    _op, client_id, seq, _key_len = _HEADER.unpack_from(data)
    return client_id, seq


def result_code(result: Result) -> ResultCode:
    """The one-byte code of an `apply` result."""
    if result is None:
        return ResultCode.NONE
    if isinstance(result, CommandRejected):
        return result.code
    return ResultCode.TRUE if result else ResultCode.FALSE


def encode_results(results: Sequence[Result]) -> bytes:
    """Pack a batch of `apply` results, one byte each (reasons are dropped)."""
    return bytes([result_code(r) for r in results])


def decode_results(data: bytes) -> list[Result]:
    """Inverse of `encode_results` (a rejection comes back without its reason).

    Raises `ValueError` on an unknown code.
    """
    out: list[Result] = []
    for byte in data:
        code = ResultCode(byte)
        if code is ResultCode.TRUE:
            out.append(True)
        elif code is ResultCode.FALSE:
            out.append(False)
        elif code is ResultCode.NONE:
            out.append(None)
        else:
            out.append(CommandRejected(code))
    return out

"""Public value types of the coordination API: revisions, ranges, transactions, watches, leases.

The semantics follow etcd's v3 API (the reference for every rule below):

- **Revision.** The store has one revision, a counter that grows by one with each committed
  write or transaction (a transaction is one revision however many keys it changes). A store
  that has never been written is at revision 0; the first write makes it 1.
- **Per key.** `create_revision` is the revision of the write that created the key (after its
  last delete), `mod_revision` that of its last change, `version` the number of writes since it
  was created (1 after creation); a delete resets all three (a re-created key starts over at
  version 1). A missing key has all three 0.
- **Ranges** are half-open `[start, end)` in byte order; `end=None` means the single key
  `start`. `range_end_of_prefix()` turns a prefix into the `end` that covers it.

Everything here is a plain value (frozen, comparable, hashable where its fields are) and checks
its arguments in its constructor: a bad one raises `kvstore.InvalidArgumentError` before
anything is sent or written. Nothing here does I/O.
"""

from __future__ import annotations

import abc
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, TypeAlias, get_args

from kvstore.closing import ClosingContext
from kvstore.errors import InvalidArgumentError
from kvstore.options import KEY_BYTES_MAX, check_key, check_limit

__all__ = [
    "COMPARES_PER_TXN_MAX",
    "KEYSPACE_END",
    "LEASE_ID_MAX",
    "LEASE_TTL_S_MAX",
    "OPS_PER_TXN_MAX",
    "REVISION_MAX",
    "AsyncWatch",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "KeyValue",
    "Lease",
    "Op",
    "OpKind",
    "OpResult",
    "RangeResult",
    "TxnResult",
    "Watch",
    "WatchEvent",
    "WatchEventType",
    "check_lease_id",
    "check_lease_ttl",
    "check_range_limit",
    "check_revision",
    "check_txn",
    "jsonable",
    "normalize_range",
    "parse_txn_json",
    "range_end_of_prefix",
]

KEYSPACE_END = b"\xff" * (KEY_BYTES_MAX + 1)
"""An exclusive range end above every valid key (keys are at most 511 bytes, so each is below
512 bytes of 0xff): `range(start, KEYSPACE_END)` reads every key from `start` on."""

OPS_PER_TXN_MAX = 128
"""Most operations in one branch (`success` or `failure`) of a transaction (etcd's default)."""
COMPARES_PER_TXN_MAX = 128
"""Most compares in one transaction."""
LEASE_TTL_S_MAX = 24 * 3600.0
"""Longest lease TTL (a day): a lease is a liveness signal, renewed by keepalives; anything
meant to live longer should not hang on one."""
LEASE_ID_MAX = (1 << 63) - 1
"""Lease ids are positive signed 64-bit integers (etcd's); 0 means "no lease"."""
REVISION_MAX = (1 << 63) - 1
"""Revisions, versions and limits are signed 64-bit integers (etcd's): larger ones are refused."""

CompareTarget = Literal["value", "version", "create_revision", "mod_revision", "exists"]
"""What a `Compare` looks at."""
CompareOp = Literal["==", "!=", "<", ">"]
"""How a `Compare` compares."""
OpKind = Literal["put", "delete", "delete_range", "get", "range"]
"""What an `Op` does."""
WatchEventType = Literal["put", "delete"]
"""What a `WatchEvent` reports."""

_COMPARE_TARGETS: tuple[CompareTarget, ...] = get_args(CompareTarget)
_COMPARE_OPS: tuple[CompareOp, ...] = get_args(CompareOp)
_INT_TARGETS = ("version", "create_revision", "mod_revision")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_revision(revision: object, name: str = "revision") -> int:
    """Return `revision` if it is an int in 1..`REVISION_MAX`, else raise
    `InvalidArgumentError`."""
    if not _is_int(revision) or not 1 <= revision <= REVISION_MAX:  # type: ignore[operator]
        raise InvalidArgumentError(f"{name} must be an int in 1..2**63-1, got {revision!r:.60}")
    return revision  # type: ignore[return-value]


def check_range_limit(limit: object) -> int | None:
    """Return `limit` if it is None or an int in 1..`REVISION_MAX`, else raise."""
    checked = check_limit(limit)
    if checked is not None and checked > REVISION_MAX:
        raise InvalidArgumentError(f"limit must be at most 2**63-1, got {limit!r:.60}")
    return checked


def check_lease_id(lease_id: object) -> int:
    """Return `lease_id` if it is an int in 1..`LEASE_ID_MAX`, else raise."""
    if not _is_int(lease_id) or not 1 <= lease_id <= LEASE_ID_MAX:  # type: ignore[operator]
        raise InvalidArgumentError(f"a lease id must be an int in 1..2**63-1, got {lease_id!r:.60}")
    return lease_id  # type: ignore[return-value]


def check_lease_ttl(ttl_s: object) -> float:
    """Return `ttl_s` as a float if it is a finite number in (0, `LEASE_TTL_S_MAX`], else
    raise (0, negatives, nan, inf, bools and a year are refused)."""
    if (
        isinstance(ttl_s, bool)
        or not isinstance(ttl_s, int | float)
        or not math.isfinite(ttl_s)
        or not 0 < ttl_s <= LEASE_TTL_S_MAX
    ):
        raise InvalidArgumentError(
            f"a lease ttl_s must be a number of seconds in (0, {LEASE_TTL_S_MAX:g}], "
            f"got {ttl_s!r:.60}"
        )
    return float(ttl_s)


def _check_range_start(start: object) -> bytes:
    # A range's start may be empty ("from the first key"); a single key may not.
    if not isinstance(start, bytes):
        raise InvalidArgumentError(f"range start must be bytes, got {type(start).__name__}")
    if len(start) > KEY_BYTES_MAX:
        raise InvalidArgumentError(
            f"range start must be at most {KEY_BYTES_MAX} bytes, got {len(start)}"
        )
    return start


def _check_range_end(start: bytes, end: object) -> bytes:
    if not isinstance(end, bytes):
        raise InvalidArgumentError(f"range end must be bytes or None, got {type(end).__name__}")
    if not 1 <= len(end) <= KEY_BYTES_MAX + 1:
        raise InvalidArgumentError(
            f"range end must be 1 to {KEY_BYTES_MAX + 1} bytes, got {len(end)}"
        )
    if end <= start:
        raise InvalidArgumentError(
            "range end must sort after its start (the range is [start, end))"
        )
    return end


def range_end_of_prefix(prefix: bytes) -> bytes:
    """The exclusive `end` of the range of keys that start with `prefix`.

    The prefix with its last byte below 0xff incremented (and what follows dropped), as etcd's
    `GetPrefixRangeEnd`; `KEYSPACE_END` for an empty or all-0xff prefix."""
    _check_range_start(prefix)
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return KEYSPACE_END
    return stripped[:-1] + bytes([stripped[-1] + 1])


def normalize_range(start: bytes, end: bytes | None, prefix: bool) -> tuple[bytes, bytes | None]:
    """Check a range's arguments as `range()` takes them and return `(start, end)` with the
    prefix turned into its end: `end` None means the single key `start`. Raises
    `InvalidArgumentError` for a bad start or end, an end with `prefix=True`, or a non-bool
    `prefix`."""
    if not isinstance(prefix, bool):
        raise InvalidArgumentError(f"prefix must be True or False, got {prefix!r:.60}")
    if prefix:
        if end is not None:
            raise InvalidArgumentError("give either an end or prefix=True, not both")
        start = _check_range_start(start)
        return start, range_end_of_prefix(start)
    if end is None:
        return check_key(start), None
    start = _check_range_start(start)
    return start, _check_range_end(start, end)


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key with its value and metadata, as a read or a watch sees it.

    For a key that exists: `create_revision` is the revision that created it, `mod_revision`
    the revision of its last write (>= `create_revision`), `version` the writes since creation
    (1 right after it), `lease` the id of the lease it is attached to or None. A read with
    `keys_only` returns `value` empty. The `kv` of a delete event carries the key and the
    delete's revision as `mod_revision`, with an empty value and the other fields 0 / None."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class RangeResult:
    """One page of a range read.

    `kvs` are the matching keys in key order, at most the requested `limit` (none with
    `count_only`); `more` is True when matching keys beyond this page exist (ask again from
    the key after the last one, at the same `revision`, for the next page); `count` is the
    number of all keys in the range (not just this page); `revision` is the store's revision
    the read saw (pass it as `revision=` to page through one consistent state)."""

    kvs: list[KeyValue]
    more: bool
    count: int
    revision: int


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction: `target` of `key` compared with `value` by `op`.

    - "value": the key's value (bytes), ordered bytewise for "<" and ">". As in etcd, no value
      compare holds for a missing key, not even "!=": compare "exists" (or "version" with 0)
      to ask about presence.
    - "version", "create_revision", "mod_revision": ints >= 0; a missing key has all three 0
      (so `Compare(key, "create_revision", "==", 0)` means "key absent").
    - "exists": a bool, op "==" or "!=" only; a missing key is `False`.

    Raises `InvalidArgumentError` for an unknown target or op, a value of the wrong type for
    the target, or a key that is not 1 to 511 bytes."""

    key: bytes
    target: CompareTarget
    op: CompareOp
    value: bytes | int | bool

    def __post_init__(self) -> None:
        check_key(self.key)
        if self.target not in _COMPARE_TARGETS or not isinstance(self.target, str):
            raise InvalidArgumentError(
                f"compare target must be one of {', '.join(_COMPARE_TARGETS)}; "
                f"got {self.target!r:.60}"
            )
        if self.op not in _COMPARE_OPS or not isinstance(self.op, str):
            raise InvalidArgumentError(
                f"compare op must be one of {' '.join(_COMPARE_OPS)}; got {self.op!r:.60}"
            )
        if self.target == "value":
            if not isinstance(self.value, bytes):
                raise InvalidArgumentError(
                    f"a value compare takes bytes, got {type(self.value).__name__}"
                )
        elif self.target == "exists":
            if not isinstance(self.value, bool):
                raise InvalidArgumentError(
                    f"an exists compare takes True or False, got {self.value!r:.60}"
                )
            if self.op not in ("==", "!="):
                raise InvalidArgumentError(f"an exists compare takes == or !=, not {self.op}")
        elif not _is_int(self.value) or not 0 <= self.value <= REVISION_MAX:  # type: ignore[operator]
            raise InvalidArgumentError(
                f"a {self.target} compare takes an int in 0..2**63-1, got {self.value!r:.60}"
            )

    def holds(self, kv: KeyValue | None) -> bool:
        """Whether this condition holds for the key's current state (`kv` None: missing).

        The one statement of compare semantics; the state machine and test fakes call it."""
        if self.target == "exists":
            actual: bytes | int | bool = kv is not None
        elif self.target == "value":
            if kv is None:
                return False
            actual = kv.value
        elif kv is None:
            actual = 0
        elif self.target == "version":
            actual = kv.version
        elif self.target == "create_revision":
            actual = kv.create_revision
        else:
            actual = kv.mod_revision
        expected = self.value
        if self.op == "==":
            return actual == expected
        if self.op == "!=":
            return actual != expected
        if self.op == "<":
            return actual < expected  # type: ignore[operator]
        return actual > expected  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a transaction. Build it with a static constructor (`Op.put`,
    `Op.delete`, `Op.delete_range`, `Op.get`, `Op.range`), which checks its arguments.

    Its result in `TxnResult.results`: put None; delete a bool (whether the key existed);
    delete_range an int (how many keys it deleted); get a `KeyValue` or None; range a
    `RangeResult`. Reads inside a transaction see the writes before them in the same branch.

    Fields: `kind`; `key` (the range start for delete_range and range); `end` (exclusive, None
    for a single key); `value` and `lease` (put only); `limit` (range only)."""

    kind: OpKind
    key: bytes
    end: bytes | None = None
    value: bytes = b""
    lease: int | None = None
    limit: int | None = None

    @staticmethod
    def put(key: bytes, value: bytes, *, lease: int | None = None) -> Op:
        """Set `key` to `value`, attached to `lease` (None: no lease; the lease must exist when
        the transaction applies, else it fails with `LeaseNotFoundError`)."""
        check_key(key)
        if not isinstance(value, bytes):
            raise InvalidArgumentError(f"value must be bytes, got {type(value).__name__}")
        if lease is not None:
            check_lease_id(lease)
        return Op("put", key, None, value, lease, None)

    @staticmethod
    def delete(key: bytes) -> Op:
        """Delete `key`; its result says whether it existed."""
        return Op("delete", check_key(key))

    @staticmethod
    def delete_range(start: bytes, end: bytes) -> Op:
        """Delete every key in `[start, end)`; its result is how many there were."""
        start = _check_range_start(start)
        return Op("delete_range", start, _check_range_end(start, end))

    @staticmethod
    def get(key: bytes) -> Op:
        """Read `key` with its metadata (a `KeyValue`, or None when missing)."""
        return Op("get", check_key(key))

    @staticmethod
    def range(
        start: bytes, end: bytes | None = None, *, prefix: bool = False, limit: int | None = None
    ) -> Op:
        """Read `[start, end)` (end None: the key `start`; prefix=True: every key starting with
        `start`), at most `limit` keys, as a `RangeResult`."""
        start, stop = normalize_range(start, end, prefix)
        return Op("range", start, stop, b"", None, check_range_limit(limit))


OpResult: TypeAlias = bool | int | KeyValue | RangeResult | None
"""The result of one `Op` (see `Op`)."""


def check_txn(
    compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
) -> tuple[tuple[Compare, ...], tuple[Op, ...], tuple[Op, ...]]:
    """Check a transaction's arguments (types and counts) and return them as tuples.

    Raises `InvalidArgumentError` for a non-`Compare` compare, a non-`Op` op, or more than
    `COMPARES_PER_TXN_MAX` compares or `OPS_PER_TXN_MAX` ops in a branch. Value sizes are the
    node's limit (`Options.max_value_bytes`), checked where the options are known."""
    checked = []
    for name, items, kind, most in (
        ("compare", compare, Compare, COMPARES_PER_TXN_MAX),
        ("success", success, Op, OPS_PER_TXN_MAX),
        ("failure", failure, Op, OPS_PER_TXN_MAX),
    ):
        if isinstance(items, bytes | str) or not isinstance(items, Sequence):
            raise InvalidArgumentError(f"{name} must be a sequence, got {type(items).__name__}")
        if len(items) > most:
            raise InvalidArgumentError(f"{name} holds {len(items)} items, more than {most}")
        for item in items:
            if not isinstance(item, kind):
                raise InvalidArgumentError(
                    f"{name} items must be {kind.__name__}, got {type(item).__name__}"
                )
        checked.append(tuple(items))
    return checked[0], checked[1], checked[2]  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class TxnResult:
    """What a transaction did: `succeeded` is True when every compare held (the `success` ops
    ran) and False otherwise (the `failure` ops ran); `results` has one entry per op that ran
    (see `Op` for their types); `revision` is the store's revision after the transaction (a
    transaction that wrote makes exactly one new revision; a read-only one leaves it)."""

    succeeded: bool
    results: list[OpResult]
    revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change a watch reports: `type` "put" (created or updated; `kv` is the key after the
    write) or "delete" (`kv` carries the key and the delete's revision as `mod_revision`).
    `prev_kv` is the key before the change when the watch asked for `prev_kv=True` and the key
    existed, else None. A lease expiry shows up as the deletes of its keys."""

    type: WatchEventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """A granted lease: `id` (1..2**63-1) and `ttl_s`, the TTL it was granted with. Keys put
    with `lease=id` are deleted when the lease expires (no keepalive within `ttl_s`) or is
    revoked."""

    id: int
    ttl_s: float

    def __post_init__(self) -> None:
        check_lease_id(self.id)
        object.__setattr__(self, "ttl_s", check_lease_ttl(self.ttl_s))


class Watch(ClosingContext, abc.ABC):
    """A stream of `WatchEvent`s, as `watch()` returns it.

    Iterate it for events in revision order (events of one revision in the order the
    transaction wrote them), with none missing and none twice, from the watch's start revision
    on. Iteration blocks until the next event; it ends (StopIteration) after `close()`, which
    any thread may call, also while another thread is blocked in `next()`. A watch whose start
    is compacted raises `kvstore.CompactedError`. Use it as a context manager to close it."""

    @abc.abstractmethod
    def __next__(self) -> WatchEvent:
        """The next event, waiting for it; StopIteration once closed."""

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watching and release the watch (idempotent, thread-safe)."""

    @property
    @abc.abstractmethod
    def revision(self) -> int:
        """How current this watch is: every event up to this revision has been delivered (or
        did not match). Progress notifications raise it while no event matches."""


class AsyncWatch(abc.ABC):
    """The asyncio form of `Watch` (`kvstore.aio.Client.watch`): an async iterator of the same
    events with the same guarantees, an async context manager, `close()` and `.revision`."""

    @abc.abstractmethod
    async def __anext__(self) -> WatchEvent:
        """The next event, waiting for it; StopAsyncIteration once closed."""

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching and release the watch (idempotent)."""

    @property
    @abc.abstractmethod
    def revision(self) -> int:
        """As `Watch.revision`."""

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# --- the JSON form (the CLI's `kvstore txn`) ------------------------------------------------------
#
#     {"compare": [{"key": "acct/a", "target": "value", "op": "==", "value": "100"},
#                  {"key": "lock", "target": "exists", "op": "==", "value": false}],
#      "success": [{"op": "put", "key": "acct/a", "value": "90", "lease": 7},
#                  {"op": "delete", "key": "k"},
#                  {"op": "delete_range", "key": "a", "end": "b"},
#                  {"op": "get", "key": "acct/b"},
#                  {"op": "range", "key": "acct/", "prefix": true, "limit": 10}],
#      "failure": []}
#
# Keys and values are JSON strings, taken as UTF-8; compares on version and revisions take
# integers, on existence true or false. Every field is checked; an unknown one is an error.

_OP_FIELDS: dict[str, frozenset[str]] = {
    "put": frozenset({"op", "key", "value", "lease"}),
    "delete": frozenset({"op", "key"}),
    "delete_range": frozenset({"op", "key", "end"}),
    "get": frozenset({"op", "key"}),
    "range": frozenset({"op", "key", "end", "prefix", "limit"}),
}
_COMPARE_FIELDS = frozenset({"key", "target", "op", "value"})


def _utf8(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a JSON string, got {value!r:.60}")
    return value.encode()


def _json_fields(item: object, allowed: frozenset[str], what: str) -> dict[str, object]:
    if not isinstance(item, dict):
        raise InvalidArgumentError(f"each {what} must be a JSON object, got {item!r:.60}")
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise InvalidArgumentError(f"unknown {what} field(s): {', '.join(map(str, unknown))}")
    return item


def _compare_from_json(item: object) -> Compare:
    fields = _json_fields(item, _COMPARE_FIELDS, "compare")
    missing = sorted(_COMPARE_FIELDS - set(fields))
    if missing:
        raise InvalidArgumentError(f"a compare needs {', '.join(missing)}")
    value = fields["value"]
    if fields["target"] == "value":
        value = _utf8(value, "a value compare's value")
    return Compare(_utf8(fields["key"], "compare key"), fields["target"], fields["op"], value)  # type: ignore[arg-type]


def _op_from_json(item: object) -> Op:
    if not isinstance(item, dict) or item.get("op") not in _OP_FIELDS:
        raise InvalidArgumentError(
            f'each op must be an object with "op" one of {", ".join(_OP_FIELDS)}; got {item!r:.60}'
        )
    kind = str(item["op"])
    fields = _json_fields(item, _OP_FIELDS[kind], f"{kind} op")
    key = _utf8(fields.get("key"), f"{kind} key")
    end = None if fields.get("end") is None else _utf8(fields["end"], f"{kind} end")
    if kind == "put":
        lease = fields.get("lease")
        return Op.put(key, _utf8(fields.get("value"), "put value"), lease=lease)  # type: ignore[arg-type]
    if kind == "delete":
        return Op.delete(key)
    if kind == "delete_range":
        if end is None:
            raise InvalidArgumentError("a delete_range op needs an end")
        return Op.delete_range(key, end)
    if kind == "get":
        return Op.get(key)
    prefix = fields.get("prefix", False)
    return Op.range(key, end, prefix=prefix, limit=fields.get("limit"))  # type: ignore[arg-type]


def parse_txn_json(document: object) -> tuple[list[Compare], list[Op], list[Op]]:
    """The compares, success and failure ops of a transaction in its JSON form (already
    parsed with `json.loads`; the form is documented above). Raises `InvalidArgumentError`
    naming the first bad part."""
    fields = _json_fields(document, frozenset({"compare", "success", "failure"}), "txn")
    parts: list[list[object]] = []
    for name in ("compare", "success", "failure"):
        items = fields.get(name, [])
        if not isinstance(items, list):
            raise InvalidArgumentError(f"txn {name} must be a JSON array")
        parts.append(items)
    compare = [_compare_from_json(item) for item in parts[0]]
    success = [_op_from_json(item) for item in parts[1]]
    failure = [_op_from_json(item) for item in parts[2]]
    check_txn(compare, success, failure)
    return compare, success, failure


def _text(data: bytes) -> str:
    # For display: binary that is not UTF-8 shows as \x escapes (not reversible).
    return data.decode("utf-8", "backslashreplace")


def jsonable(value: object) -> object:
    """`value` (a result of the coordination API) as plain JSON data, keys and values as
    UTF-8 text (other bytes as backslash escapes): what `kvstore txn`, `kvstore watch` and
    friends print."""
    if isinstance(value, KeyValue):
        return {
            "key": _text(value.key),
            "value": _text(value.value),
            "create_revision": value.create_revision,
            "mod_revision": value.mod_revision,
            "version": value.version,
            "lease": value.lease,
        }
    if isinstance(value, RangeResult):
        return {
            "kvs": [jsonable(kv) for kv in value.kvs],
            "more": value.more,
            "count": value.count,
            "revision": value.revision,
        }
    if isinstance(value, TxnResult):
        return {
            "succeeded": value.succeeded,
            "revision": value.revision,
            "results": [jsonable(r) for r in value.results],
        }
    if isinstance(value, WatchEvent):
        prev = None if value.prev_kv is None else jsonable(value.prev_kv)
        return {"type": value.type, "kv": jsonable(value.kv), "prev_kv": prev}
    if isinstance(value, Lease):
        return {"id": value.id, "ttl_s": value.ttl_s}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"no JSON form for {type(value).__name__}")

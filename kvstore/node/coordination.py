"""The coordination API's translation between public values and the replicated format.

`kvstore.coordination` holds the public value types (`KeyValue`, `RangeResult`, `Compare`, `Op`,
`TxnResult`); the state machine speaks tuples (`mvcc.KvTuple`, `mvcc.RangePage`) and the
command encoding speaks `commands.TxnCompare` / `commands.TxnOp`. The functions here convert
one into the other, for the embedded `Node` (facade.py) and, later, the serving side.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvstore.coordination import (
    KEYSPACE_END,
    Compare,
    KeyValue,
    Op,
    OpResult,
    RangeResult,
    TxnResult,
)
from kvstore.errors import InvalidArgumentError
from kvstore.options import check_value
from kvstore.storage import commands
from kvstore.storage.mvcc import KvTuple, RangePage

_TXN_LIMIT_MAX = (1 << 32) - 1
"""The encoding's largest range limit (u32): a larger limit reads as many keys as there are."""


def key_value(kv: KvTuple) -> KeyValue:
    """A state machine's `KvTuple` as the public `KeyValue` (lease 0 becomes None)."""
    key, value, create_revision, mod_revision, version, lease = kv
    return KeyValue(key, value, create_revision, mod_revision, version, lease or None)


def range_result(page: RangePage) -> RangeResult:
    """A state machine's `RangePage` as the public `RangeResult`."""
    return RangeResult([key_value(kv) for kv in page.kvs], page.more, page.count, page.revision)


def txn_compares(compares: Sequence[Compare]) -> list[commands.TxnCompare]:
    """Public compares (checked by their constructor) in the encoding's form."""
    return [commands.TxnCompare(c.key, c.target, c.op, c.value) for c in compares]


def _bounds(op: Op) -> tuple[bytes | None, bool]:
    """(end, prefix) of a ranged op for the encoding, whose ends are at most 511 bytes:
    `KEYSPACE_END` (no upper bound) becomes a prefix whose range has no end either."""
    if op.end != KEYSPACE_END:
        return op.end, False
    if op.key.rstrip(b"\xff"):
        # [start, KEYSPACE_END) for a start that is not all 0xff has no encoded form yet.
        raise InvalidArgumentError(
            f"a transaction's {op.kind} up to KEYSPACE_END must start at b'' or an all-0xff "
            "key; give an end of at most 511 bytes"
        )
    return None, True


def txn_ops(ops: Sequence[Op], value_bytes_max: int) -> list[commands.TxnOp]:
    """Public ops (checked by their constructors) in the encoding's form; every put's value
    is checked against the node's `value_bytes_max` (`InvalidArgumentError`)."""
    out: list[commands.TxnOp] = []
    for op in ops:
        kind = op.kind
        if kind == "put":
            check_value(op.value, value_bytes_max)
            out.append(commands.txn_put(op.key, op.value, op.lease or 0))
        elif kind == "delete":
            out.append(commands.txn_delete(op.key))
        elif kind == "get":
            out.append(commands.txn_get(op.key))
        elif kind == "delete_range":
            end, prefix = _bounds(op)
            out.append(commands.txn_delete_range(op.key, end, prefix=prefix))
        else:
            end, prefix = _bounds(op)
            limit = op.limit if op.limit is not None and op.limit <= _TXN_LIMIT_MAX else None
            out.append(commands.txn_range(op.key, end, prefix=prefix, limit=limit))
    return out


def _op_result(result: object) -> OpResult:
    if isinstance(result, RangePage):
        return range_result(result)
    if isinstance(result, tuple):
        return key_value(result)  # a get's KvTuple
    return result  # type: ignore[return-value]  # None, bool or int, as the public type


def txn_result(outcome: object, revision_now: int) -> TxnResult:
    """The public `TxnResult` of a txn command's result.

    A retried txn answered from its session's window carries only whether the compares held
    (`commands`, "Results"); its results are then empty and `revision_now` (the store's
    revision when it was answered) stands for its revision."""
    if isinstance(outcome, commands.TxnOutcome):
        results = [_op_result(result) for result in outcome.results]
        return TxnResult(outcome.succeeded, results, outcome.revision)
    return TxnResult(bool(outcome), [], revision_now)


__all__ = ["key_value", "range_result", "txn_compares", "txn_ops", "txn_result"]

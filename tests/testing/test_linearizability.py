"""The linearizability checker: hand-written histories, a brute-force oracle, generated ones."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from kvstore.testing.history import Operation, synthetic_history
from kvstore.testing.linearizability import check_history, check_key

K = b"k"


class H:
    """Builds a history by hand: each call names its client, interval and answer."""

    def __init__(self) -> None:
        self.ops: list[Operation] = []

    def _add(self, **fields: object) -> Operation:
        end = fields.pop("end")
        outcome = "unknown" if end is None else fields.pop("outcome", "ok")
        op = Operation(
            op_id=len(self.ops),
            client_id=int(fields.pop("client", len(self.ops))),  # type: ignore[call-overload]
            key=fields.pop("key", K),  # type: ignore[arg-type]
            complete_ns=end,  # type: ignore[arg-type]
            outcome=outcome,
            error=None
            if outcome == "ok"
            else "OperationTimeoutError"
            if end is None
            else "UnavailableError",
            **fields,  # type: ignore[arg-type]
        )
        self.ops.append(op)
        return op

    def put(self, value: bytes, start: int, end: int | None, **kw: object) -> Operation:
        return self._add(kind="put", value=value, invoke_ns=start, end=end, **kw)

    def get(self, result: bytes | None, start: int, end: int | None, **kw: object) -> Operation:
        return self._add(kind="get", result=result, invoke_ns=start, end=end, **kw)

    def delete(self, existed: bool, start: int, end: int | None, **kw: object) -> Operation:
        return self._add(kind="delete", result=existed, invoke_ns=start, end=end, **kw)

    def cas(
        self,
        expected: bytes | None,
        new: bytes | None,
        swapped: bool,
        start: int,
        end: int | None,
        **kw: object,
    ) -> Operation:
        return self._add(
            kind="cas",
            expected=expected,
            value=new,
            result=swapped,
            invoke_ns=start,
            end=end,
            **kw,
        )


# --- hand-written histories -------------------------------------------------------------------


def test_sequential_history_is_linearizable() -> None:
    h = H()
    h.put(b"a", 0, 1)
    h.get(b"a", 2, 3)
    h.cas(b"a", b"b", True, 4, 5)
    h.cas(b"a", b"c", False, 6, 7)
    h.delete(True, 8, 9)
    h.get(None, 10, 11)
    h.delete(False, 12, 13)
    result = check_history(h.ops)
    assert result.ok, result.report()


def test_stale_read_is_caught_and_reported() -> None:
    h = H()
    h.put(b"a", 0, 10)
    h.put(b"b", 20, 30)
    stale = h.get(b"a", 40, 50)
    result = check_history(h.ops)
    assert result.linearizable is False
    (failure,) = result.failures
    assert failure.key == K
    assert failure.blocked == stale
    assert failure.state == b"b"
    report = result.report()
    assert "key b'k'" in report and f"op {stale.op_id} " in report


def test_concurrent_read_may_see_either_value() -> None:
    h = H()
    h.put(b"a", 0, 10)
    h.put(b"b", 20, 40)
    h.get(b"a", 25, 35)  # overlaps the second put: may be ordered before it
    h.get(b"b", 30, 50)
    assert check_history(h.ops).ok


def test_reads_must_not_go_back_in_time() -> None:
    h = H()
    h.put(b"a", 0, 10)
    h.put(b"b", 20, 60)
    h.get(b"b", 25, 30)  # the new value is visible...
    late = h.get(b"a", 40, 45)  # ...so a later read may not see the old one
    result = check_history(h.ops)
    assert not result.ok
    assert result.failures[0].blocked == late


def test_lost_write_is_caught() -> None:
    h = H()
    h.put(b"a", 0, 10)
    lost = h.get(None, 20, 30)
    result = check_history(h.ops)
    assert result.linearizable is False
    assert result.failures[0].blocked == lost


def test_two_cas_from_the_same_value_cannot_both_succeed() -> None:
    h = H()
    h.put(b"a", 0, 10)
    first = h.cas(b"a", b"b", True, 20, 40)
    second = h.cas(b"a", b"c", True, 21, 41)
    result = check_history(h.ops)
    assert result.linearizable is False
    (failure,) = result.failures
    # One of them can go first; the other then cannot: the report names both.
    assert {failure.blocked, failure.ordered[-1]} == {first, second}
    report = result.report()
    assert f"op {first.op_id} " in report and f"op {second.op_id} " in report


def test_one_of_two_concurrent_cas_succeeding_is_fine() -> None:
    h = H()
    h.put(b"a", 0, 10)
    h.cas(b"a", b"b", True, 20, 40)
    h.cas(b"a", b"c", False, 21, 41)
    h.get(b"b", 50, 60)
    assert check_history(h.ops).ok


def test_read_of_a_value_never_written_is_caught() -> None:
    h = H()
    h.put(b"a", 0, 10)
    h.put(b"b", 5, 15)
    ghost = h.get(b"zzz", 6, 20)
    result = check_history(h.ops)
    assert not result.ok
    assert result.failures[0].blocked == ghost
    assert "b'zzz'" in result.report()


def test_delete_reporting_a_missing_key_as_existing_is_caught() -> None:
    h = H()
    h.delete(True, 0, 10)
    assert not check_history(h.ops).ok


def test_unknown_write_may_take_effect_later() -> None:
    h = H()
    h.put(b"a", 0, None)  # timed out; the client moved on
    h.get(None, 10, 20)
    h.get(b"a", 100, 110)  # it took effect after all, long after
    assert check_history(h.ops).ok


def test_unknown_write_may_never_take_effect() -> None:
    h = H()
    h.put(b"a", 0, None)
    h.get(None, 10, 20)
    h.get(None, 100, 110)
    assert check_history(h.ops).ok


def test_unknown_write_cannot_take_effect_before_it_was_invoked() -> None:
    h = H()
    early = h.get(b"a", 0, 10)
    h.put(b"a", 20, None)
    result = check_history(h.ops)
    assert not result.ok
    assert result.failures[0].blocked == early


def test_unknown_write_takes_effect_at_most_once() -> None:
    h = H()
    h.put(b"a", 0, None)
    h.get(b"a", 10, 20)
    h.put(b"b", 30, 40)
    h.get(b"a", 50, 60)  # "a" again would need the timed-out put applied twice
    assert not check_history(h.ops).ok


def test_failed_operations_never_take_effect() -> None:
    h = H()
    h.put(b"a", 0, 10, outcome="fail")
    h.get(b"a", 20, 30)
    assert not check_history(h.ops).ok


def test_unknown_cas_may_enable_a_read() -> None:
    h = H()
    h.put(b"a", 0, 10)
    h.cas(b"a", b"b", False, 20, None)  # answer lost; it did swap
    h.get(b"b", 30, 40)
    assert check_history(h.ops).ok


def test_unknown_cas_only_swaps_from_its_expected_value() -> None:
    h = H()
    h.put(b"x", 0, 10)
    h.cas(b"a", b"b", False, 20, None)
    h.get(b"b", 30, 40)
    assert not check_history(h.ops).ok


def test_keys_are_checked_independently_and_named() -> None:
    h = H()
    h.put(b"1", 0, 10, key=b"good")
    h.get(b"1", 20, 30, key=b"good")
    h.put(b"1", 0, 10, key=b"bad")
    h.get(b"2", 20, 30, key=b"bad")
    result = check_history(h.ops)
    assert [failure.key for failure in result.failures] == [b"bad"]
    assert result.keys == 2 and result.operations == 4


def test_initial_values_are_honoured() -> None:
    h = H()
    h.get(b"seed", 0, 10)
    assert not check_history(h.ops).ok
    assert check_history(h.ops, initial={K: b"seed"}).ok


def test_budget_exhaustion_is_undecided_not_a_failure() -> None:
    history = synthetic_history(3, operations=400, keys=1, clients=8)
    result = check_history(history, steps_max_per_key=10)
    assert result.linearizable is None
    assert result.undecided == (b"k000",)
    assert not result.ok


def test_check_key_rejects_another_key() -> None:
    h = H()
    h.put(b"a", 0, 1, key=b"other")
    with pytest.raises(ValueError, match="other"):
        check_key(K, h.ops)


# --- a brute-force oracle on small random histories ----------------------------------------------


def brute_force(ops: Sequence[Operation], initial: bytes | None = None) -> bool:
    """Try every subset of unknown operations and every order respecting real time."""
    unknown = [op for op in ops if op.outcome == "unknown"]
    known = [op for op in ops if op.outcome == "ok"]
    for mask in range(1 << len(unknown)):
        chosen = known + [op for i, op in enumerate(unknown) if mask >> i & 1]
        if _orderable(chosen, [], initial):
            return True
    return False


def _orderable(left: list[Operation], done: list[Operation], state: bytes | None) -> bool:
    if not left:
        return True
    for op in left:
        # op may go next only if no other remaining operation answered before op was invoked.
        if any(o.complete_ns is not None and o.complete_ns < op.invoke_ns for o in left):
            continue
        fits, new_state = _apply(op, state)
        if fits and _orderable([o for o in left if o is not op], [*done, op], new_state):
            return True
    return False


def _apply(op: Operation, state: bytes | None) -> tuple[bool, bytes | None]:
    unknown = op.outcome == "unknown"
    if op.kind == "put":
        return True, op.value
    if op.kind == "get":
        return state == op.result, state
    if op.kind == "delete":
        return unknown or op.result == (state is not None), None
    swapped = state == op.expected
    return unknown or op.result == swapped, op.value if swapped else state


def random_small_history(rng: random.Random, size: int) -> list[Operation]:
    values = [b"a", b"b", None]
    ops = []
    for op_id in range(size):
        start = rng.randrange(20)
        end = None if rng.random() < 0.2 else start + rng.randrange(1, 8)
        kind = rng.choice(["put", "get", "delete", "cas"])
        if kind == "get" and end is None:
            end = start + 1  # unknown reads are dropped by the checker: keep them known
        outcome = "ok" if end is not None else "unknown"
        value = expected = None
        result: bytes | bool | None = None
        if kind == "put":
            value = rng.choice([b"a", b"b"])
        elif kind == "get":
            result = rng.choice(values)
        elif kind == "delete":
            result = rng.random() < 0.5 if outcome == "ok" else None
        else:
            expected, value = rng.choice(values), rng.choice(values)
            result = rng.random() < 0.5 if outcome == "ok" else None
        ops.append(
            Operation(
                op_id=op_id,
                client_id=op_id,
                kind=kind,
                key=K,
                value=value,
                expected=expected,
                invoke_ns=start,
                complete_ns=end,
                outcome=outcome,
                result=result,
            )
        )
    return ops


def test_agrees_with_brute_force_on_random_small_histories(seed: int) -> None:
    rng = random.Random(seed)
    verdicts = {True: 0, False: 0}
    for case in range(600):
        ops = random_small_history(rng, rng.randrange(1, 7))
        expected = brute_force(ops)
        result = check_history(ops)
        assert result.linearizable is expected, (
            f"seed {seed} case {case}: checker says {result.linearizable}, brute force "
            f"{expected}\n" + "\n".join(op.describe() for op in ops) + "\n" + result.report()
        )
        verdicts[expected] += 1
    # Both verdicts must be exercised, or the comparison proves little.
    assert verdicts[True] > 50 and verdicts[False] > 50, (seed, verdicts)


# --- generated histories --------------------------------------------------------------------------


@pytest.mark.parametrize("unknown_fraction", [0.0, 0.05])
def test_generated_linearizable_histories_pass(unknown_fraction: float, seed: int) -> None:
    history = synthetic_history(
        seed, operations=3000, keys=20, clients=10, unknown_fraction=unknown_fraction
    )
    result = check_history(history)
    assert result.ok, f"seed {seed}: {result.report()}"


def test_generated_history_with_a_corrupted_read_fails_on_that_key(seed: int) -> None:
    rng = random.Random(seed)
    history = synthetic_history(seed, operations=3000, keys=20, clients=10)
    reads = [i for i, op in enumerate(history) if op.kind == "get"]
    victim = history[rng.choice(reads)]
    corrupted = Operation(**{**_fields(victim), "result": b"never-written"})
    history[victim.op_id] = corrupted
    result = check_history(history)
    assert [failure.key for failure in result.failures] == [victim.key], f"seed {seed}"
    assert result.failures[0].blocked == corrupted, f"seed {seed}"


def test_generated_history_with_a_dropped_write_fails(seed: int) -> None:
    """Forget that a write happened: reads of its value become reads of a ghost."""
    history = synthetic_history(seed, operations=2000, keys=10, clients=6)
    read_values = {op.result for op in history if op.kind == "get" and op.outcome == "ok"}
    victim = next(op for op in history if op.kind == "put" and op.value in read_values)
    history = [op for op in history if op is not victim]
    result = check_history(history)
    assert not result.ok, f"seed {seed}"
    assert result.failures[0].key == victim.key, f"seed {seed}"


def _fields(op: Operation) -> dict[str, object]:
    return {name: getattr(op, name) for name in Operation.__dataclass_fields__}


def test_meets_the_size_target() -> None:
    """10,000 operations over 50 keys from 10 clients, with timeouts, in under 10 s."""
    history = synthetic_history(7, operations=10_000, keys=50, clients=10, unknown_fraction=0.02)
    result = check_history(history)
    assert result.ok, result.report()
    assert result.operations == 10_000 - sum(
        1 for op in history if op.kind == "get" and op.outcome == "unknown"
    )
    assert result.elapsed_s < 10.0


def test_report_points_at_a_failed_write_that_took_effect() -> None:
    h = H()
    failed = h.put(b"a", 0, 10, outcome="fail")
    h.get(b"a", 20, 30)
    h.get(b"never", 40, 50, key=b"other")
    result = check_history(h.ops)
    report = result.report()
    assert f"op {failed.op_id} put (leaving b'a') failed with UnavailableError" in report
    assert "no operation in the history wrote b'never'" in report

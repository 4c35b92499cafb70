"""A linearizability checker for key-value histories (put, get, delete, cas).

A history is linearizable when every operation can be given one instant, between its invocation
and its answer, at which it took effect, such that the answers are those a single copy of the
store would give executing the operations in the order of those instants.

The search is Wing & Gong's, with Lowe's memoisation (as in Porcupine): walk the invocation and
answer events in time order; at each step pick some invoked, not yet ordered operation whose
answer the model agrees with, order it, and restart from the earliest event; reaching the answer
of an operation not yet ordered means the choices so far were wrong, so undo the last one and
try the next candidate. A configuration is (set of ordered operations, model state); one that
was explored before is not explored again, which turns an exponential search into one bounded
by the number of distinct configurations.

Two things keep it fast on real histories:
- P-compositionality: keys are independent registers, so each key's sub-history is checked on
  its own (a history is linearizable iff every key's is).
- An operation whose outcome is unknown (timeout, crash) has no answer event: it may be ordered
  at any point after its invocation, or never. Ordering it where it changes nothing would only
  take options away, so the search orders it only where it changes the value.

A failure names the key, the operations ordered in the longest partial order found, the
operation that could not be ordered before its answer, and the concurrent candidates.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kvstore.errors import invariant
from kvstore.testing.history import Operation, Result

STEPS_MAX_PER_KEY = 5_000_000
"""Default search budget per key; past it the key is reported as undecided, not as a failure."""

_PUT, _GET, _DELETE, _CAS = 0, 1, 2, 3
_CODES = {"put": _PUT, "get": _GET, "delete": _DELETE, "cas": _CAS}
_CONTEXT_OPS = 8
"""How many of the last ordered operations a failure report shows."""


@dataclass(frozen=True, slots=True)
class KeyFailure:
    """Why one key's sub-history is not linearizable."""

    key: bytes
    ordered: tuple[Operation, ...]
    """The longest sequence the search could order (a valid prefix of some attempted order)."""
    state: bytes | None
    """The key's value after `ordered` (None: absent)."""
    blocked: Operation
    """An operation that had answered at that point but could not be ordered before it."""
    candidates: tuple[Operation, ...]
    """Every operation invoked but not ordered at that point (`blocked` among them)."""
    operations: int
    """How many operations of this key the search considered."""
    hints: tuple[str, ...] = ()
    """Likely causes spotted in the whole history (e.g. a failed write whose value was read)."""

    def explain(self) -> str:
        """A multi-line explanation naming the key and the operations that cannot be ordered."""
        lines = [
            f"key {self.key!r} is not linearizable: at most {len(self.ordered)} of its "
            f"{self.operations} operations can be put in an order consistent with their "
            f"answers; then the value is {_show(self.state)} and {self.blocked.describe()} "
            f"must take effect before it answered, but no order of the operations "
            f"concurrent with it allows that:"
        ]
        for operation in self.candidates:
            lines.append(f"  {operation.describe()}: {_why_not(operation, self.state)}")
        if self.ordered:
            shown = self.ordered[-_CONTEXT_OPS:]
            lines.append(
                f"  the last {len(shown)} of the {len(self.ordered)} operations ordered before:"
            )
            lines.extend(f"    {operation.describe()}" for operation in shown)
        lines.extend(f"  hint: {hint}" for hint in self.hints)
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict on a whole history."""

    operations: int
    """Operations checked (failed calls and reads with unknown outcome are left out)."""
    keys: int
    failures: tuple[KeyFailure, ...] = ()
    undecided: tuple[bytes, ...] = ()
    """Keys whose search ran out of budget: neither proven nor refuted."""
    elapsed_s: float = 0.0
    steps: int = 0
    """Search steps taken over all keys (a measure of how hard the history was)."""

    @property
    def linearizable(self) -> bool | None:
        """True if proven linearizable, False if refuted, None if some key is undecided."""
        if self.failures:
            return False
        return None if self.undecided else True

    @property
    def ok(self) -> bool:
        """True only if the history was proven linearizable."""
        return self.linearizable is True

    def report(self) -> str:
        """A human summary: one line if linearizable, else an explanation per failed key."""
        head = (
            f"{self.operations} operations over {self.keys} keys checked in "
            f"{self.elapsed_s:.2f}s ({self.steps} steps): "
        )
        if self.ok:
            return head + "linearizable"
        parts = [head + ("NOT linearizable" if self.failures else "undecided")]
        parts.extend(failure.explain() for failure in self.failures)
        if self.undecided:
            parts.append(
                "search budget exhausted (undecided) for keys: "
                + ", ".join(repr(key) for key in self.undecided)
            )
        return "\n".join(parts)


@dataclass(slots=True)
class KeyOutcome:
    """The verdict on one key: a failure, undecided (out of budget), or neither (linearizable)."""

    failure: KeyFailure | None = None
    undecided: bool = False
    steps: int = 0


def check_history(
    operations: Iterable[Operation],
    *,
    initial: Mapping[bytes, bytes] | None = None,
    steps_max_per_key: int = STEPS_MAX_PER_KEY,
) -> CheckResult:
    """Check a key-value history for linearizability, key by key.

    `initial` holds values keys had before the history began (default: every key absent).
    Calls that failed (nothing done) and reads whose outcome is unknown constrain nothing and
    are left out. Reads at "stale" consistency promise no linearizability: leave them out too.
    """
    started = time.monotonic()
    by_key: dict[bytes, list[Operation]] = {}
    failed_writes: dict[tuple[bytes, bytes | None], Operation] = {}
    for operation in operations:
        if operation.outcome == "fail":
            if operation.kind != "get":  # the value it would have left: None after a delete
                failed_writes[(operation.key, operation.value)] = operation
            continue
        if operation.outcome == "unknown" and operation.kind == "get":
            continue
        by_key.setdefault(operation.key, []).append(operation)
    initial = initial or {}
    failures: list[KeyFailure] = []
    undecided: list[bytes] = []
    steps = 0
    checked = 0
    # The search allocates millions of small tuples and keeps them; the cyclic garbage
    # collector would rescan them all again and again (they hold no cycles).
    collecting = gc.isenabled()
    gc.disable()
    try:
        for key in sorted(by_key):
            outcome = check_key(
                key, by_key[key], initial=initial.get(key), steps_max=steps_max_per_key
            )
            steps += outcome.steps
            checked += len(by_key[key])
            if outcome.failure is not None:
                hints = _hints(outcome.failure, by_key[key], failed_writes)
                failures.append(dataclasses.replace(outcome.failure, hints=hints))
            elif outcome.undecided:
                undecided.append(key)
    finally:
        if collecting:
            gc.enable()
    return CheckResult(
        operations=checked,
        keys=len(by_key),
        failures=tuple(failures),
        undecided=tuple(undecided),
        elapsed_s=time.monotonic() - started,
        steps=steps,
    )


def check_key(
    key: bytes,
    operations: list[Operation],
    *,
    initial: bytes | None = None,
    steps_max: int = STEPS_MAX_PER_KEY,
) -> KeyOutcome:
    """Check the sub-history of one key (every operation must be on `key`).

    Known operations (those that answered) live in a time-ordered doubly linked list of
    invocation and answer events; unknown ones, which have no answer, in a second list ordered
    by invocation. At each step the search first tries the known candidates (invoked before the
    earliest pending answer), and only at a dead end the unknown ones that were invoked by then.

    Memoisation remembers, for each (set of known operations ordered, value), the sets of unknown
    operations ordered along with them. A configuration that used a superset of the unknown
    operations of one already seen is pruned: it has the same obligations and fewer options.
    """
    ops = [
        op
        for op in operations
        if op.outcome != "fail" and not (op.outcome == "unknown" and op.kind == "get")
    ]
    for op in ops:
        if op.key != key:
            raise ValueError(f"operation {op.op_id} is on {op.key!r}, not {key!r}")
    count = len(ops)
    code = [_CODES[op.kind] for op in ops]
    arg_a = [op.expected if op.kind == "cas" else op.value for op in ops]
    arg_b = [op.value for op in ops]
    known = [op.outcome == "ok" for op in ops]
    result: list[Result] = [op.result for op in ops]

    # Known events: (time, 0 = invocation / 1 = answer, op index). Invocations sort first at
    # equal times, which treats touching operations as concurrent: never a false alarm.
    events: list[tuple[int, int, int]] = []
    for index, op in enumerate(ops):
        if op.complete_ns is not None:
            events.append((op.invoke_ns, 0, index))
            events.append((op.complete_ns, 1, index))
    events.sort()
    n = len(events)
    head, tail = n, n + 1
    nxt, prv = _linked(n)
    is_call = [kind == 0 for _, kind, _ in events]
    op_of = [index for _, _, index in events]
    event_ns = [when for when, _, _ in events]
    answer_of = [-1] * n
    call_event: dict[int, int] = {}
    for event, (_, kind, index) in enumerate(events):
        if kind == 0:
            call_event[index] = event
        else:
            answer_of[call_event[index]] = event

    # Unknown operations, by invocation time. Which of them may go next at a dead end:
    # - a cas only when it expects the current value (otherwise it changes nothing);
    # - a put of a value that some operation still to be ordered refers to (a known get read
    #   it, a cas expects it);
    # - of the puts of values no operation still to be ordered refers to, only the first:
    #   they are interchangeable (swap the two values and every order works as well);
    # - of the deletes, only the first, for the same reason.
    unknown = sorted((op.invoke_ns, index) for index, op in enumerate(ops) if not known[index])
    u_invoke_ns = [when for when, _ in unknown]
    u_op = [index for _, index in unknown]
    cas_by_expected: dict[bytes | None, list[int]] = {}
    puts: list[int] = []
    deletes: list[int] = []
    for slot, index in enumerate(u_op):
        if code[index] == _CAS:
            cas_by_expected.setdefault(arg_a[index], []).append(slot)
        elif code[index] == _DELETE:
            deletes.append(slot)
        else:
            puts.append(slot)
    # refs[v]: how many operations not ordered yet refer to the value of unknown put v.
    value_id: dict[bytes | None, int] = {}
    for slot in puts:
        value_id.setdefault(arg_b[u_op[slot]], len(value_id))
    refs = [0] * len(value_id)
    ref_of = [-1] * count
    for index, op in enumerate(ops):
        referred = op.result if op.kind == "get" else op.expected if op.kind == "cas" else None
        if op.kind in ("get", "cas") and referred in value_id:
            ref_of[index] = value_id[referred]
            refs[ref_of[index]] += 1
    put_ref = [value_id.get(arg_b[index], -1) for index in u_op]

    state = initial
    # The set of ordered known operations is kept as a Zobrist hash (the XOR of a random
    # 128-bit tag per operation): O(1) to update and hash, where a bitset of thousands of bits
    # costs O(n) per step. Two different sets collide with odds near 2**-128 per pair.
    tag_rng = random.Random(0x5EED)
    tag = [tag_rng.getrandbits(128) for _ in range(count)]
    known_bits = 0
    unknown_bits = 0
    remaining = n // 2
    seen: dict[tuple[int, bytes | None], list[int]] = {}
    # Frames: (known event or unknown slot, state before, -1 for a known operation or the
    # position of the unknown one in `choices`, the unknown choices at that dead end, and
    # the dead end's answer event).
    stack: list[tuple[int, bytes | None, int, list[int], int]] = []
    best_known = -1
    best: tuple[tuple[int, ...], bytes | None, int, tuple[int, ...]] | None = None
    steps = 0
    entry = nxt[head]
    resume = -1  # >= 0: at a dead end, resume trying `choices` from this position
    dead_end = -1
    choices: list[int] = []
    while remaining:
        steps += 1
        if steps > steps_max:
            return KeyOutcome(undecided=True, steps=steps)
        if resume < 0:
            invariant(entry != tail, "linearizability search walked past every answer")
            if is_call[entry]:
                index = op_of[entry]
                kind = code[index]
                if kind == _GET:
                    fits = state == result[index]
                    new_state = state
                elif kind == _PUT:
                    fits = True
                    new_state = arg_b[index]
                elif kind == _CAS:
                    swapped = state == arg_a[index]
                    fits = result[index] == swapped
                    new_state = arg_b[index] if swapped else state
                else:
                    fits = result[index] == (state is not None)
                    new_state = None
                if fits:
                    bits = known_bits ^ tag[index]
                    if _fresh(seen, bits, new_state, unknown_bits):
                        stack.append((entry, state, -1, choices, dead_end))
                        state = new_state
                        known_bits = bits
                        remaining -= 1
                        if ref_of[index] >= 0:
                            refs[ref_of[index]] -= 1
                        # Lift the invocation and its answer out of the list.
                        answer = answer_of[entry]
                        nxt[prv[entry]] = nxt[entry]
                        prv[nxt[entry]] = prv[entry]
                        nxt[prv[answer]] = nxt[answer]
                        prv[nxt[answer]] = prv[answer]
                        entry = nxt[head]
                        continue
                entry = nxt[entry]
                continue
            # The answer of an operation not ordered yet: no known candidate works from here.
            dead_end = entry
            deadline_ns = event_ns[dead_end]
            ordered_known = n // 2 - remaining
            if ordered_known > best_known:  # the deepest dead end so far: keep it for the report
                best_known = ordered_known
                pending_unknown = [
                    slot
                    for slot in range(len(u_op))
                    if u_invoke_ns[slot] <= deadline_ns and not (unknown_bits >> slot) & 1
                ]
                best = _snapshot(stack, state, dead_end, op_of, u_op, nxt, head, pending_unknown)
            choices = []
            pending = ~unknown_bits
            for slot in cas_by_expected.get(state, ()):
                if u_invoke_ns[slot] > deadline_ns:
                    break
                if (pending >> slot) & 1 and arg_b[u_op[slot]] != state:
                    choices.append(slot)
            # Right after an unknown operation (no known one since) only a cas may follow: a
            # put or delete would overwrite it, and ordering that one alone is tried anyway.
            if not stack or stack[-1][2] < 0:
                interchangeable_tried = False
                for slot in puts:
                    if u_invoke_ns[slot] > deadline_ns:
                        break
                    if (pending >> slot) & 1 and arg_b[u_op[slot]] != state:
                        if refs[put_ref[slot]]:
                            choices.append(slot)
                        elif not interchangeable_tried:
                            choices.append(slot)
                            interchangeable_tried = True
                if state is not None:
                    for slot in deletes:
                        if u_invoke_ns[slot] > deadline_ns:
                            break
                        if (pending >> slot) & 1:
                            choices.append(slot)
                            break
            steps += len(choices)
            position = 0
        else:
            position = resume
            resume = -1
        moved = False
        while position < len(choices):
            slot = choices[position]
            index = u_op[slot]
            new_state = None if code[index] == _DELETE else arg_b[index]
            bits = unknown_bits | (1 << slot)
            if _fresh(seen, known_bits, new_state, bits):
                stack.append((slot, state, position, choices, dead_end))
                state = new_state
                unknown_bits = bits
                if ref_of[index] >= 0:
                    refs[ref_of[index]] -= 1
                entry = nxt[head]
                moved = True
                break
            position += 1
        if moved:
            continue
        # Every choice at this dead end failed: undo the last choice.
        if not stack:
            break
        item, state, position, choices, dead_end = stack.pop()
        if position < 0:
            index = op_of[item]
            known_bits ^= tag[index]
            remaining += 1
            if ref_of[index] >= 0:
                refs[ref_of[index]] += 1
            answer = answer_of[item]
            nxt[prv[answer]] = answer
            prv[nxt[answer]] = answer
            nxt[prv[item]] = item
            prv[nxt[item]] = item
            entry = nxt[item]
        else:
            unknown_bits &= ~(1 << item)
            if ref_of[u_op[item]] >= 0:
                refs[ref_of[u_op[item]]] += 1
            resume = position + 1
    if remaining == 0:
        return KeyOutcome(steps=steps)
    invariant(best is not None, "linearizability search failed without a dead end")
    assert best is not None
    ordered, best_state, blocked, pending_ops = best
    failure = KeyFailure(
        key=key,
        ordered=tuple(ops[i] for i in ordered),
        state=best_state,
        blocked=ops[blocked],
        candidates=tuple(ops[i] for i in pending_ops),
        operations=count,
    )
    return KeyOutcome(failure=failure, steps=steps)


def _linked(count: int) -> tuple[list[int], list[int]]:
    """next and prev arrays of a list of `count` items plus a head (count) and tail (count+1)."""
    head, tail = count, count + 1
    nxt = [0] * (count + 2)
    prv = [0] * (count + 2)
    chain = [head, *range(count), tail]
    for before, after in itertools.pairwise(chain):
        nxt[before] = after
        prv[after] = before
    nxt[tail], prv[head] = tail, head
    return nxt, prv


def _walk(nxt: list[int], head: int, tail: int) -> list[int]:
    items = []
    item = nxt[head]
    while item != tail:
        items.append(item)
        item = nxt[item]
    return items


def _fresh(
    seen: dict[tuple[int, bytes | None], list[int]],
    known_bits: int,
    state: bytes | None,
    unknown_bits: int,
) -> bool:
    """Record a configuration; False if one with fewer unknown operations was already seen."""
    configuration = (known_bits, state)
    earlier = seen.get(configuration)
    if earlier is None:
        seen[configuration] = [unknown_bits]
        return True
    for used in earlier:
        if used & ~unknown_bits == 0:
            return False
    # Forget the sets this one dominates: keeps the lists short.
    earlier[:] = [used for used in earlier if unknown_bits & ~used]
    earlier.append(unknown_bits)
    return True


def _snapshot(
    stack: list[tuple[int, bytes | None, int, list[int], int]],
    state: bytes | None,
    dead_end: int,
    op_of: list[int],
    u_op: list[int],
    nxt: list[int],
    head: int,
    pending_unknown: list[int],
) -> tuple[tuple[int, ...], bytes | None, int, tuple[int, ...]]:
    """(ordered op indices, value, blocked op index, candidate op indices) at a dead end."""
    ordered = tuple(op_of[item] if at < 0 else u_op[item] for item, _, at, _, _ in stack)
    candidates = []
    event = nxt[head]
    while event != dead_end:  # the list is in time order: these were all invoked by then
        candidates.append(op_of[event])
        event = nxt[event]
    candidates.extend(u_op[slot] for slot in pending_unknown)
    return ordered, state, op_of[dead_end], tuple(candidates)


def _hints(
    failure: KeyFailure,
    operations: list[Operation],
    failed_writes: dict[tuple[bytes, bytes | None], Operation],
) -> tuple[str, ...]:
    """Point at failed writes whose value was read, and at reads of values nobody wrote."""
    written = {op.value for op in operations if op.kind in ("put", "cas")}
    hints = []
    observed = [op.result for op in (failure.blocked, *failure.candidates) if op.kind == "get"]
    for value in dict.fromkeys(observed):
        if isinstance(value, bool):
            continue
        failed = failed_writes.get((failure.key, value))
        if failed is not None:
            hints.append(
                f"op {failed.op_id} {failed.kind} (leaving {_show(value)}) failed with "
                f"{failed.error}, which promises it did nothing; did it take effect?"
            )
        if value is not None and value not in written:
            hints.append(f"no operation in the history wrote {value!r}")
    return tuple(hints)


def _show(value: bytes | None) -> str:
    return "absent" if value is None else repr(value)


def _why_not(op: Operation, state: bytes | None) -> str:
    """Why `op` cannot simply go next from `state`, or what goes wrong if it does."""
    if op.outcome == "unknown":
        return "outcome unknown: it may take effect here, later, or never"
    if op.kind == "get" and op.result != state:
        return f"it read {_show(op.result)}, not the current {_show(state)}"  # type: ignore[arg-type]
    if op.kind == "delete" and op.result != (state is not None):
        return "it reported the key " + ("existed" if op.result else "absent")
    if op.kind == "cas" and op.result != (state == op.expected):
        return "it reported " + ("a swap" if op.result else "no swap")
    return "it could go next, but every order starting with it fails later"

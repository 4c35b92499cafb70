"""Histories of key-value operations: what clients asked, when, and what they were told.

A history is a list of `Operation`s, one per client call, each with the moment it was invoked
and the moment its answer arrived (both from one monotonic clock, in nanoseconds). On disk it
is JSON lines, one operation per line, so a crashed run still leaves every finished line behind
and a failing history can be replayed through the checker later:

    {"op_id": 7, "client_id": 2, "kind": "cas", "key": "k03", "expected": "v1", "value": "v9",
     "invoke_ns": 1200, "complete_ns": 3400, "outcome": "ok", "result": true}

Keys and values are bytes. In JSON they are written as text holding one character per byte
(latin-1), which keeps ASCII readable and round-trips every byte exactly; `null` is "absent".

Outcomes:
- ``ok``: the call returned; `result` is what it returned.
- ``fail``: the call raised an error that promises nothing was done (`UnavailableError`): the
  operation never took effect, and the checker ignores it.
- ``unknown``: the call timed out or its client crashed; the operation may take effect at any
  moment after it was invoked, or never. `complete_ns` is None.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

KINDS = ("put", "get", "delete", "cas")
OUTCOMES = ("ok", "fail", "unknown")

Result = bytes | bool | None
"""get: the value read (None: absent); delete: whether the key existed; cas: whether it
swapped; put: None."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client call and its answer. See the module docstring for the outcomes."""

    op_id: int
    """Unique within its history."""
    client_id: int
    """The logical client (one call at a time per client)."""
    kind: str
    """"put", "get", "delete" or "cas"."""
    key: bytes
    value: bytes | None = None
    """put: the value written; cas: the new value (None: delete the key)."""
    expected: bytes | None = None
    """cas only: the value the key must hold (None: the key must be absent)."""
    invoke_ns: int = 0
    complete_ns: int | None = None
    """When the answer arrived; None when the outcome is unknown."""
    outcome: str = "ok"
    result: Result = None
    error: str | None = None
    """The exception's class name for "fail" and "unknown" outcomes."""
    consistency: str | None = None
    """get only: the read level asked for."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"operation {self.op_id}: unknown kind {self.kind!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"operation {self.op_id}: unknown outcome {self.outcome!r}")
        if (self.complete_ns is None) != (self.outcome == "unknown"):
            raise ValueError(f"operation {self.op_id}: complete_ns must be None iff unknown")
        if self.complete_ns is not None and self.complete_ns < self.invoke_ns:
            raise ValueError(f"operation {self.op_id}: completes before it is invoked")

    def describe(self) -> str:
        """A one-line human description, as failure reports print it."""
        if self.kind == "put":
            call = f"put({_show(self.value)})"
        elif self.kind == "get":
            call = "get()"
        elif self.kind == "delete":
            call = "delete()"
        else:
            call = f"cas({_show(self.expected)} -> {_show(self.value)})"
        if self.outcome == "ok":
            answer = f" = {_show(self.result)}" if self.kind != "put" else " ok"
        elif self.outcome == "fail":
            answer = f" failed ({self.error})"
        else:
            answer = f" outcome unknown ({self.error})"
        end = "..." if self.complete_ns is None else f"{self.complete_ns / 1e9:.6f}s"
        return (
            f"op {self.op_id} client {self.client_id} {call}{answer} "
            f"[{self.invoke_ns / 1e9:.6f}s, {end}]"
        )

    def to_json(self) -> str:
        """This operation as one line of JSON (no trailing newline)."""
        record: dict[str, Any] = {
            "op_id": self.op_id,
            "client_id": self.client_id,
            "kind": self.kind,
            "key": _text(self.key),
        }
        if self.kind in ("put", "cas"):
            record["value"] = _text(self.value)
        if self.kind == "cas":
            record["expected"] = _text(self.expected)
        record["invoke_ns"] = self.invoke_ns
        record["complete_ns"] = self.complete_ns
        record["outcome"] = self.outcome
        record["result"] = _text(self.result) if isinstance(self.result, bytes) else self.result
        if self.error is not None:
            record["error"] = self.error
        if self.consistency is not None:
            record["consistency"] = self.consistency
        return json.dumps(record, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Operation:
        """Parse one line written by `to_json`; raises ValueError on a malformed line."""
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError("a history line must be a JSON object")
        kind = record["kind"]
        result = record.get("result")
        if kind == "get" and result is not None:
            result = _bytes(result)
        return cls(
            op_id=int(record["op_id"]),
            client_id=int(record["client_id"]),
            kind=kind,
            key=_bytes(record["key"]),
            value=_optional_bytes(record.get("value")),
            expected=_optional_bytes(record.get("expected")),
            invoke_ns=int(record["invoke_ns"]),
            complete_ns=None if record.get("complete_ns") is None else int(record["complete_ns"]),
            outcome=record["outcome"],
            result=result,
            error=record.get("error"),
            consistency=record.get("consistency"),
        )


def _show(value: Result) -> str:
    if value is None:
        return "absent"
    if isinstance(value, bool):
        return str(value)
    return repr(value)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _bytes(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {text!r}")
    return text.encode("latin-1")


def _optional_bytes(text: object) -> bytes | None:
    return None if text is None else _bytes(text)


# --- files ------------------------------------------------------------------------------------


class HistoryWriter:
    """Appends operations to a JSON-lines file as they finish. Safe to share between threads.

    Each line is flushed when written, so a crash of the runner loses at most the line being
    written. Also keeps the operations in memory (`operations`) for an immediate check.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else Path(path)
        self.operations: list[Operation] = []
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", encoding="ascii")  # noqa: SIM115 (closed in close)

    def record(self, operation: Operation) -> None:
        """Keep `operation` and append it to the file."""
        with self._lock:
            self.operations.append(operation)
            if self._file is not None:
                self._file.write(operation.to_json() + "\n")
                self._file.flush()

    def close(self) -> None:
        """Close the file; safe to call twice."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def write_history(path: str | os.PathLike[str], operations: Iterable[Operation]) -> None:
    """Write `operations` to `path` as JSON lines (replacing the file)."""
    with HistoryWriter(path) as writer:
        for operation in operations:
            writer.record(operation)


def read_history(path: str | os.PathLike[str]) -> list[Operation]:
    """Read a JSON-lines history; a torn last line (the writer crashed mid-line) is ignored."""
    operations: list[Operation] = []
    lines = Path(path).read_text(encoding="ascii").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            operations.append(Operation.from_json(line))
        except (ValueError, KeyError) as exc:
            if number == len(lines):
                break  # the last line has no newline: it was being written when the run died
            raise ValueError(f"{path}:{number}: bad history line: {exc}") from exc
    return operations


# --- synthetic histories ------------------------------------------------------------------------


def synthetic_history(
    seed: int,
    *,
    operations: int = 1000,
    keys: int = 10,
    clients: int = 5,
    unknown_fraction: float = 0.0,
    values: int | None = None,
) -> list[Operation]:
    """A linearizable history of a simulated key-value store, for testing checkers.

    Each client issues calls one after another. Every call takes effect at a random moment
    between its invocation and its answer, and its result is computed from the store at that
    moment, so the history is linearizable by construction. A `unknown_fraction` of the writes
    time out instead: such a call takes effect at a random later moment or, half the time,
    never, and its client moves on.

    With `values` None every write stores a fresh value and a cas expects one of the last few
    values written to its key (as the torture workload does); otherwise values are drawn from
    a pool of that many, which makes the search much harder.
    """
    rng = random.Random(seed)
    key_names = [b"k%03d" % number for number in range(keys)]
    clock = [rng.randrange(1_000) for _ in range(clients)]
    # Plan every call first: (effect time or None, op index) events, applied in time order below.
    plans: list[tuple[int, int, bytes, str, bytes | None, bytes | None, int, int | None]] = []
    effects: list[tuple[int, int]] = []
    written: dict[bytes, list[bytes]] = {}
    for op_id in range(operations):
        client = min(range(clients), key=lambda c: clock[c])
        invoke_ns = clock[client] + rng.randrange(1, 50)
        duration_ns = rng.randrange(10, 400)
        key = rng.choice(key_names)
        kind = rng.choice(KINDS)
        value = expected = None
        if kind in ("put", "cas"):
            value = b"v%d" % (op_id if values is None else rng.randrange(values))
            written.setdefault(key, []).append(value)
        if kind == "cas":
            recent = written[key][-4:-1]
            expected = rng.choice(recent) if recent and rng.random() < 0.8 else None
            if rng.random() < 0.1:
                value = None
        unknown = kind != "get" and rng.random() < unknown_fraction
        if unknown:
            effect_ns: int | None = None
            if rng.random() < 0.5:
                effect_ns = invoke_ns + rng.randrange(1, 5_000)
            complete_ns: int | None = None
        else:
            complete_ns = invoke_ns + duration_ns
            effect_ns = invoke_ns + rng.randrange(duration_ns + 1)
        clock[client] = invoke_ns + duration_ns
        plans.append((op_id, client, key, kind, value, expected, invoke_ns, complete_ns))
        if effect_ns is not None:
            effects.append((effect_ns, op_id))
    effects.sort()
    store: dict[bytes, bytes] = {}
    results: dict[int, Result] = {}
    for _, op_id in effects:
        _, _, key, kind, value, expected, _, _ = plans[op_id]
        current = store.get(key)
        if kind == "put" and value is not None:  # a put always has a value
            store[key] = value
            results[op_id] = None
        elif kind == "get":
            results[op_id] = current
        elif kind == "delete":
            results[op_id] = current is not None
            store.pop(key, None)
        else:
            swapped = current == expected
            if swapped:
                if value is None:
                    store.pop(key, None)
                else:
                    store[key] = value
            results[op_id] = swapped
    history = []
    for op_id, client, key, kind, value, expected, invoke_ns, complete_ns in plans:
        history.append(
            Operation(
                op_id=op_id,
                client_id=client,
                kind=kind,
                key=key,
                value=value,
                expected=expected,
                invoke_ns=invoke_ns,
                complete_ns=complete_ns,
                outcome="ok" if complete_ns is not None else "unknown",
                result=results.get(op_id) if complete_ns is not None else None,
                error=None if complete_ns is not None else "OperationTimeoutError",
            )
        )
    return history


def iter_keys(operations: Iterable[Operation]) -> Iterator[bytes]:
    """The distinct keys of a history, in order of first appearance."""
    seen: set[bytes] = set()
    for operation in operations:
        if operation.key not in seen:
            seen.add(operation.key)
            yield operation.key

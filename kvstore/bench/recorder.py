"""How every benchmarked system is timed: settings, keys, the recorder, the runners, progress.

Nothing here knows a cluster or draws anything: the kvstore workloads (`kvstore.bench.workloads`)
and the comparison peers in the source checkout (`benchmarks/peers/`) time their operations with
the same recorder and runners, so that their figures can stand side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from kvstore.consensus import CONSENSUS_KINDS
from kvstore.errors import KVStoreError
from kvstore.options import Consistency

KEY_BYTES = 16
VALUE_BYTES = 100
CONSISTENCY_LEVELS: tuple[Consistency, ...] = ("linearizable", "lease", "stale")

PUT_SEQUENTIAL = "put_sequential"
PUT_CONCURRENT = "put_concurrent"
FAILOVER = "failover"


def get_workload(consistency: str, *, concurrent: bool) -> str:
    """The name of a read workload, e.g. `get_lease_concurrent`."""
    return f"get_{consistency}_{'concurrent' if concurrent else 'sequential'}"


WORKLOADS = (
    PUT_SEQUENTIAL,
    PUT_CONCURRENT,
    *(get_workload(c, concurrent=k) for c in CONSISTENCY_LEVELS for k in (False, True)),
    FAILOVER,
)
"""Every workload name, in the order of the table."""

IN_PROCESS_READ_OPS_FACTOR = 20
"""In-process reads are ~100x faster than a network round trip: run more of them so that the
measurement spans a meaningful time (tenths of a second rather than milliseconds)."""

CONCURRENT_ROUNDS_MIN = 40
"""Default of `BenchSettings.concurrent_rounds_min`."""


class OperationError(Exception):
    """One timed operation failed without the system raising (a bad HTTP status, a key written
    earlier in the run that reads as absent...): it counts as an error, like a raised one."""


class BenchError(KVStoreError):
    """The benchmark itself could not run (a cluster did not start, no leader in time...)."""


OP_ERRORS: tuple[type[BaseException], ...] = (KVStoreError, OSError, EOFError, OperationError)
"""What one timed operation may raise without stopping the workload: it counts as an error."""


@dataclass(frozen=True, slots=True)
class BenchSettings:
    """The sizes and limits every system's workloads share in one run."""

    ops: int = 5000
    """Operations per workload (reads served in-process run `IN_PROCESS_READ_OPS_FACTOR` x)."""
    concurrency: int = 256
    """Operations in flight in the concurrent workloads."""
    duration_s_max: float = 30.0
    """Wall-time limit of one workload: it stops early (and says so) past this."""
    timeout_s: float = 5.0
    """Timeout of one operation."""
    key_bytes: int = KEY_BYTES
    value_bytes: int = VALUE_BYTES
    concurrent_rounds_min: int = CONCURRENT_ROUNDS_MIN
    """Fewest operations per in-flight slot in a concurrent workload (see `concurrent_ops`)."""
    consensus: str = "raft"
    """The protocol kvstore's clusters run ("raft" or "paxos", `--consensus`)."""

    def validate(self) -> None:
        """Raise `BenchError` naming the first setting that is out of range."""
        if self.ops < 1:
            raise BenchError(f"ops must be >= 1, got {self.ops}")
        if self.concurrency < 1:
            raise BenchError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.duration_s_max <= 0 or self.timeout_s <= 0:
            raise BenchError("duration_s_max and timeout_s must be > 0")
        if self.concurrent_rounds_min < 1:
            raise BenchError("concurrent_rounds_min must be >= 1")
        if self.key_bytes != KEY_BYTES or self.value_bytes < 1:
            raise BenchError(f"keys are {KEY_BYTES} bytes; values need at least one byte")
        if self.consensus not in CONSENSUS_KINDS:
            raise BenchError(f"consensus must be one of {CONSENSUS_KINDS}, got {self.consensus!r}")

    @property
    def concurrent_ops(self) -> int:
        """Operations of a concurrent workload: at least `concurrent_rounds_min` per slot in
        flight, so that filling the pipeline and draining it are a small part of the run."""
        return max(self.ops, self.concurrent_rounds_min * self.concurrency)

    @property
    def errors_max(self) -> int:
        """Failed operations tolerated in one workload before it is stopped as broken."""
        return max(10, self.ops // 100)


def bench_key(number: int) -> bytes:
    """The 16-byte key of operation `number` (the same for every system)."""
    key = b"bench/%010d" % number
    if len(key) != KEY_BYTES:
        raise BenchError(f"operation number {number} does not fit a {KEY_BYTES}-byte key")
    return key


def bench_keys(count: int) -> list[bytes]:
    """Keys 0 to count - 1, made before timing starts: a key costs about as much to format as
    an in-process stale read takes, and the benchmark measures the read."""
    return [bench_key(number) for number in range(count)]


def bench_value(value_bytes: int = VALUE_BYTES) -> bytes:
    """The value every put writes: printable, so that peers with text APIs take it as is."""
    return (b"0123456789abcdef" * (value_bytes // 16 + 1))[:value_bytes]


# --- recording ----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending sequence (`fraction` in (0, 1]); 0 if empty."""
    if not sorted_values:
        return 0
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    # Nearest rank: the smallest value with at least `fraction` of the values at or below it.
    # The epsilon keeps 0.29 * 100 (28.999...96 in binary) from rounding up to rank 30.
    rank = math.ceil(len(sorted_values) * fraction - 1e-9)
    return sorted_values[max(0, rank - 1)]


@dataclass(frozen=True, slots=True)
class WorkloadResult:
    """One system's figures for one workload."""

    system: str
    workload: str
    ops: int
    """Operations that succeeded (and were timed)."""
    errors: int
    concurrency: int
    elapsed_s: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    note: str = ""
    """Why the figure is partial or missing (stopped early, skipped...), else empty."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


class Recorder:
    """Times one workload: per-operation latencies, errors and the wall time around them.

    `record` is called from many threads or tasks at once; list.append and the int updates it
    does are atomic under the GIL, so it takes no lock (a lock would cost more than the read).
    """

    def __init__(self, *, ops_max: int, errors_max: int, duration_s_max: float) -> None:
        self.ops_max = ops_max
        self.errors_max = errors_max
        self.duration_s_max = duration_s_max
        self._latencies_ns: list[int] = []
        self.errors = 0
        self.last_error: str = ""
        self._started_ns = 0
        self._stopped_ns = 0
        self._deadline = float("inf")

    @property
    def completed(self) -> int:
        """Operations finished so far, successful or not (for the progress bar)."""
        return len(self._latencies_ns) + self.errors

    def start(self) -> None:
        """Mark the start of the timed section."""
        self._deadline = time.monotonic() + self.duration_s_max
        self._started_ns = time.perf_counter_ns()

    def stop(self) -> None:
        """Mark its end (idempotent: the first call counts)."""
        if not self._stopped_ns:
            self._stopped_ns = time.perf_counter_ns()

    def record(self, latency_ns: int) -> None:
        """One successful operation that took `latency_ns`."""
        self._latencies_ns.append(latency_ns)

    def record_error(self, error: BaseException) -> None:
        """One failed operation; its message is kept for the report."""
        self.errors += 1
        self.last_error = f"{type(error).__name__}: {error}"

    def should_stop(self) -> bool:
        """True once the workload is past its time limit or its error budget."""
        return self.errors > self.errors_max or time.monotonic() > self._deadline

    def result(self, system: str, workload: str, *, concurrency: int) -> WorkloadResult:
        """The figures of the timed section (call after `stop`)."""
        self.stop()
        elapsed_s = max(self._stopped_ns - self._started_ns, 1) / 1e9
        latencies = sorted(self._latencies_ns)
        notes = []
        if self.errors > self.errors_max:
            notes.append(f"stopped after {self.errors} errors (last: {self.last_error})")
        elif self.errors:
            notes.append(f"{self.errors} errors (last: {self.last_error})")
        if len(latencies) + self.errors < self.ops_max and self.errors <= self.errors_max:
            notes.append(f"stopped at the {self.duration_s_max:.0f} s limit")
        return WorkloadResult(
            system=system,
            workload=workload,
            ops=len(latencies),
            errors=self.errors,
            concurrency=concurrency,
            elapsed_s=elapsed_s,
            ops_per_s=len(latencies) / elapsed_s,
            p50_ms=percentile(latencies, 0.50) / 1e6,
            p99_ms=percentile(latencies, 0.99) / 1e6,
            note="; ".join(notes),
        )


def skipped(system: str, workload: str, reason: str) -> WorkloadResult:
    """A row for a workload that did not run, saying why."""
    return WorkloadResult(system, workload, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, note=reason)


# --- runners ------------------------------------------------------------------------------------


def _timed_call(op: Callable[[int], object], number: int, recorder: Recorder) -> None:
    """Call `op(number)` and record its latency, or its error if it raised one of OP_ERRORS."""
    started = time.perf_counter_ns()
    try:
        op(number)
    except OP_ERRORS as error:
        recorder.record_error(error)
    else:
        recorder.record(time.perf_counter_ns() - started)


def run_sequential(op: Callable[[int], object], recorder: Recorder) -> None:
    """Run `op(0)`, `op(1)`, ... one at a time, each waiting for the previous one."""
    recorder.start()
    try:
        for number in range(recorder.ops_max):
            if recorder.should_stop():
                break
            _timed_call(op, number, recorder)
    finally:
        recorder.stop()


def run_threaded(op: Callable[[int], object], recorder: Recorder, *, concurrency: int) -> None:
    """Keep `concurrency` calls of `op` in flight from as many threads until `ops_max` are done."""
    numbers = itertools.count()  # next() on it is atomic under the GIL

    def worker() -> None:
        while not recorder.should_stop():
            number = next(numbers)
            if number >= recorder.ops_max:
                return
            _timed_call(op, number, recorder)

    threads = [
        threading.Thread(target=worker, name=f"bench-{i}", daemon=True)
        for i in range(min(concurrency, recorder.ops_max))
    ]
    recorder.start()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        recorder.stop()


async def run_async(
    op: Callable[[int], Awaitable[object]], recorder: Recorder, *, concurrency: int
) -> None:
    """Keep `concurrency` awaits of `op` in flight on this loop until `ops_max` are done."""
    numbers = itertools.count()
    clock = time.perf_counter_ns

    async def worker() -> None:
        while not recorder.should_stop():
            number = next(numbers)
            if number >= recorder.ops_max:
                return
            started = clock()
            try:
                await op(number)
            except OP_ERRORS as error:
                recorder.record_error(error)
                continue
            recorder.record(clock() - started)

    recorder.start()
    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, recorder.ops_max))))
    finally:
        recorder.stop()


# --- progress -----------------------------------------------------------------------------------


class Trackable(Protocol):
    """What a progress bar reads: a `Recorder`, or a proxy for one in another process."""

    @property
    def ops_max(self) -> int:
        """The bar's total."""

    @property
    def completed(self) -> int:
        """Operations finished so far."""


class Progress(Protocol):
    """Where workloads show what they are doing: `kvstore bench` draws bars, tests show nothing."""

    def track(self, label: str, recorder: Trackable) -> AbstractContextManager[None]:
        """Show `recorder`'s progress under `label` while the block runs."""
        ...

    def note(self, message: str) -> None:
        """Print one line (rich markup such as `[yellow]` is allowed and may be dropped)."""
        ...


class QuietProgress:
    """A `Progress` that shows nothing: for tests, and benchmarks that report through pytest."""

    @contextlib.contextmanager
    def track(self, label: str, recorder: Trackable) -> Iterator[None]:
        """Run the block; nothing is shown."""
        yield

    def note(self, message: str) -> None:
        """Drop the line."""


def measure(
    system: str,
    workload: str,
    settings: BenchSettings,
    progress: Progress,
    body: Callable[[Recorder], None],
    *,
    concurrency: int,
    ops: int | None = None,
) -> WorkloadResult:
    """Run `body(recorder)` under a progress bar and return the recorded figures."""
    recorder = Recorder(
        ops_max=settings.ops if ops is None else ops,
        errors_max=settings.errors_max,
        duration_s_max=settings.duration_s_max,
    )
    with progress.track(f"{system} {workload}", recorder):
        body(recorder)
    return recorder.result(system, workload, concurrency=concurrency)

"""`kvstore bench`: throughput and latency of a 3-node cluster, side by side with its peers.

Every workload uses 16-byte keys and 100-byte values against three members that are separate
processes on 127.0.0.1 with fsync on. kvstore is measured twice: through `kvstore.Client` (a
`LocalCluster` of `kvstore serve` processes) and embedded (a `kvstore.Node` in this process as
the leader, the two other members as `kvstore serve` processes). When they are installed, etcd
and PySyncObj run the same workloads in the same run (`benchmarks/peers/`), and the table shows
kvstore's ratio against each. Every workload is bounded in operations and in time.

The recorder and the workload runners here are shared with `benchmarks/peers/` and
`benchmarks/test_bench_cluster.py`, so every system is timed by the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import itertools
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kvstore.consensus import CONSENSUS_KINDS
from kvstore.errors import KVStoreError
from kvstore.eventloop import new_event_loop
from kvstore.options import Options
from kvstore.testing.local_cluster import LocalCluster

KEY_BYTES = 16
VALUE_BYTES = 100
CONSISTENCY_LEVELS = ("linearizable", "lease", "stale")

KVSTORE = "kvstore"
KVSTORE_EMBEDDED = "kvstore-embedded"
ETCD = "etcd"
PYSYNCOBJ = "pysyncobj"
PEERS = (ETCD, PYSYNCOBJ)
"""Peer systems, each a module `benchmarks.peers.<module>` with `available()` and `run()`."""

_PEER_MODULES = {ETCD: "benchmarks.peers.etcd", PYSYNCOBJ: "benchmarks.peers.pysyncobj_peer"}

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

FAILOVER_TRIALS = 3
STATUS_POLL_S = 0.01
"""How often the failover measurement asks the members who leads."""
FAILOVER_WAIT_S_MAX = 20.0
"""How long one failover trial waits for the first acknowledged write before giving up."""
LEADER_WAIT_S_MAX = 20.0


class PeerOperationError(Exception):
    """One operation against a peer system failed (bad HTTP status, a SyncObj failure...)."""


class BenchError(KVStoreError):
    """The benchmark itself could not run (a cluster did not start, no leader in time...)."""


OP_ERRORS: tuple[type[BaseException], ...] = (KVStoreError, OSError, EOFError, PeerOperationError)
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


class BenchProgress:
    """Progress bars (rich) fed from recorders by one polling thread.

    The workloads never touch the display: a stale read takes about a microsecond, and updating
    a bar per operation would cost more than the operation. Disabled, `track` does nothing.
    """

    POLL_S = 0.1

    def __init__(self, console: Console | None = None, *, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("{task.description:<44}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
        )
        self._tracked: dict[Any, Trackable] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._poller: threading.Thread | None = None

    def __enter__(self) -> BenchProgress:
        if self.enabled:
            self._progress.start()
            self._poller = threading.Thread(target=self._poll, name="bench-progress", daemon=True)
            self._poller.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._closed.set()
        if self._poller is not None:
            self._poller.join()
        if self.enabled:
            self._progress.stop()

    def _poll(self) -> None:
        while not self._closed.wait(self.POLL_S):
            with self._lock:
                for task, recorder in self._tracked.items():
                    self._progress.update(task, completed=recorder.completed)

    @contextlib.contextmanager
    def track(self, label: str, recorder: Trackable) -> Iterator[None]:
        """Show a bar for `recorder` while the block runs."""
        if not self.enabled:
            yield
            return
        task = self._progress.add_task(label, total=recorder.ops_max)
        with self._lock:
            self._tracked[task] = recorder
        try:
            yield
        finally:
            with self._lock:
                del self._tracked[task]
            self._progress.update(task, completed=recorder.completed)

    def note(self, message: str) -> None:
        """Print a line (above the bars when they are shown)."""
        self.console.print(message)


def measure(
    system: str,
    workload: str,
    settings: BenchSettings,
    progress: BenchProgress,
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


# --- kvstore ------------------------------------------------------------------------------------


class _SyncStore(Protocol):
    """What `kvstore.Node` and `kvstore.Client` share for the workloads below."""

    def put(self, key: bytes, value: bytes, *, timeout_s: float = ...) -> None: ...

    def get(
        self, key: bytes, *, consistency: str = ..., timeout_s: float = ...
    ) -> bytes | None: ...


def _check_found(value: bytes | None, key: bytes) -> None:
    if value is None:
        raise PeerOperationError(f"key {key!r} written earlier in the run reads as absent")


class StoreWorkloads:
    """kvstore's workloads against a store with the synchronous API (`Client` or `Node`).

    Reads use the keys the writes left behind, so the put workloads run first. Subclasses say
    how `concurrency` operations are kept in flight.
    """

    in_process = False
    """True when reads may be served without leaving this process (lease, stale on a Node)."""

    def __init__(
        self, system: str, store: _SyncStore, settings: BenchSettings, progress: BenchProgress
    ) -> None:
        self.system = system
        self.store = store
        self.settings = settings
        self.progress = progress
        self.value = bench_value(settings.value_bytes)
        self.keys = bench_keys(max(settings.ops, settings.concurrent_ops))
        """Every key a put writes; reads read the first `settings.ops` of them."""

    def put_sequential(self) -> WorkloadResult:
        """One writer; each put waits for its commit."""
        store, keys, value, timeout_s = self.store, self.keys, self.value, self.settings.timeout_s

        def put_one(number: int) -> None:
            store.put(keys[number], value, timeout_s=timeout_s)

        return self._measure(PUT_SEQUENTIAL, lambda r: run_sequential(put_one, r), concurrency=1)

    def put_concurrent(self) -> WorkloadResult:
        """`concurrency` puts in flight."""
        return self._measure(
            PUT_CONCURRENT,
            self._run_concurrent_put,
            concurrency=self.settings.concurrency,
            ops=self.settings.concurrent_ops,
        )

    def get(self, consistency: str, *, concurrent: bool) -> WorkloadResult:
        """Reads of keys the put workloads wrote, one at a time or `concurrency` in flight."""
        settings, store, keys = self.settings, self.store, self.keys
        # In-process lease and stale reads never leave this process: give them more operations.
        local = self.in_process and consistency != "linearizable"
        ops = settings.concurrent_ops if concurrent else settings.ops
        ops *= IN_PROCESS_READ_OPS_FACTOR if local else 1
        workload = get_workload(consistency, concurrent=concurrent)
        if concurrent:
            body = functools.partial(self._run_concurrent_get, consistency=consistency)
            return self._measure(workload, body, concurrency=settings.concurrency, ops=ops)

        def get_one(number: int) -> None:
            key = keys[number % settings.ops]
            found = store.get(key, consistency=consistency, timeout_s=settings.timeout_s)
            _check_found(found, key)

        return self._measure(workload, lambda r: run_sequential(get_one, r), concurrency=1, ops=ops)

    def run_all(self) -> list[WorkloadResult]:
        """Every workload, writes first."""
        results = [self.put_sequential(), self.put_concurrent()]
        for consistency in CONSISTENCY_LEVELS:
            for concurrent in (False, True):
                results.append(self.get(consistency, concurrent=concurrent))
        return results

    def _measure(
        self,
        workload: str,
        body: Callable[[Recorder], None],
        *,
        concurrency: int,
        ops: int | None = None,
    ) -> WorkloadResult:
        return measure(
            self.system,
            workload,
            self.settings,
            self.progress,
            body,
            concurrency=concurrency,
            ops=ops,
        )

    def _run_concurrent_put(self, recorder: Recorder) -> None:
        raise NotImplementedError

    def _run_concurrent_get(self, recorder: Recorder, *, consistency: str) -> None:
        raise NotImplementedError


class ClientWorkloads(StoreWorkloads):
    """Through `kvstore.Client` (sequential) and `kvstore.aio.Client` (concurrent)."""

    def __init__(
        self,
        store: _SyncStore,
        addresses: Sequence[str],
        settings: BenchSettings,
        progress: BenchProgress,
    ) -> None:
        super().__init__(KVSTORE, store, settings, progress)
        self.addresses = list(addresses)

    def _run_aio(
        self, recorder: Recorder, make_op: Callable[[Any], Callable[[int], Awaitable[object]]]
    ) -> None:
        _node, _client, aio_client_class = _import_kvstore_parts()
        settings = self.settings

        async def main() -> None:
            aio_client = aio_client_class(self.addresses, timeout_s=settings.timeout_s)
            try:
                # Untimed: dial every member and find the leader, as etcd's connections are
                # opened before its timing starts.
                for address in self.addresses:
                    await aio_client.status(address)
                await aio_client.put(self.keys[0], self.value, timeout_s=settings.timeout_s)
                await run_async(make_op(aio_client), recorder, concurrency=settings.concurrency)
            finally:
                await aio_client.close()

        # The measured client runs on the same kind of loop as the servers (uvloop if present).
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(main())

    def _run_concurrent_put(self, recorder: Recorder) -> None:
        keys, value, timeout_s = self.keys, self.value, self.settings.timeout_s

        def make_op(aio_client: Any) -> Callable[[int], Awaitable[object]]:
            async def op(number: int) -> None:
                await aio_client.put(keys[number], value, timeout_s=timeout_s)

            return op

        self._run_aio(recorder, make_op)

    def _run_concurrent_get(self, recorder: Recorder, *, consistency: str) -> None:
        settings, keys = self.settings, self.keys

        def make_op(aio_client: Any) -> Callable[[int], Awaitable[object]]:
            async def op(number: int) -> None:
                key = keys[number % settings.ops]
                found = await aio_client.get(
                    key, consistency=consistency, timeout_s=settings.timeout_s
                )
                _check_found(found, key)

            return op

        self._run_aio(recorder, make_op)


class EmbeddedWorkloads(StoreWorkloads):
    """Through a `kvstore.Node` in this process; `concurrency` threads when concurrent."""

    in_process = True

    def __init__(self, node: _SyncStore, settings: BenchSettings, progress: BenchProgress) -> None:
        super().__init__(KVSTORE_EMBEDDED, node, settings, progress)

    def _run_concurrent_put(self, recorder: Recorder) -> None:
        store, keys, value, timeout_s = self.store, self.keys, self.value, self.settings.timeout_s

        def put_one(number: int) -> None:
            store.put(keys[number], value, timeout_s=timeout_s)

        run_threaded(put_one, recorder, concurrency=self.settings.concurrency)

    def _run_concurrent_get(self, recorder: Recorder, *, consistency: str) -> None:
        store, settings, keys = self.store, self.settings, self.keys

        def get_one(number: int) -> None:
            key = keys[number % settings.ops]
            found = store.get(key, consistency=consistency, timeout_s=settings.timeout_s)
            _check_found(found, key)

        run_threaded(get_one, recorder, concurrency=settings.concurrency)


def _import_kvstore_parts() -> tuple[type[Any], type[Any], type[Any]]:
    """(Node, Client, aio Client), or BenchError saying which part has not landed."""
    try:
        node_module = importlib.import_module("kvstore.node")
        client_module = importlib.import_module("kvstore.client.client")
        aio_module = importlib.import_module("kvstore.client.aio_client")
    except ImportError as error:
        raise BenchError(f"kvstore is not complete yet ({error})") from error
    return node_module.Node, client_module.Client, aio_module.Client


@contextlib.contextmanager
def client_cluster(settings: BenchSettings) -> Iterator[tuple[LocalCluster, Any]]:
    """Three `kvstore serve` processes with a leader, and a `kvstore.Client` on all of them."""
    _node, client_class, _aio = _import_kvstore_parts()
    with (
        LocalCluster(3, consensus=settings.consensus) as cluster,
        client_class(cluster.addresses, timeout_s=settings.timeout_s) as client,
    ):
        cluster.wait_for_leader(client, timeout_s=LEADER_WAIT_S_MAX)
        yield cluster, client


@contextlib.contextmanager
def embedded_node(consensus: str = "raft") -> Iterator[Any]:
    """A `kvstore.Node` in this process that leads two `kvstore serve` processes."""
    node_class, _client, _aio = _import_kvstore_parts()
    cluster = LocalCluster(3, consensus=consensus)
    local_id = "n1"
    with contextlib.closing(cluster):
        # restart() spawns a member that is not running: start only the other two as processes.
        for member in cluster:
            if member.node_id != local_id:
                cluster.restart(member.node_id)
        peers = {member.node_id: member.address for member in cluster}
        data_dir = cluster.members[local_id].data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        options = Options(consensus=consensus)
        with node_class(local_id, data_dir, peers, options=options) as node:
            _make_leader(node, local_id, list(peers.values()))
            yield node


def bench_kvstore_client(settings: BenchSettings, progress: BenchProgress) -> list[WorkloadResult]:
    """kvstore through `kvstore.Client` against three `kvstore serve` processes, then failover."""
    with client_cluster(settings) as (cluster, client):
        progress.note(
            f"kvstore: 3 `kvstore serve` processes, leader {cluster.leader(client) or '?'}"
        )
        results = ClientWorkloads(client, cluster.addresses, settings, progress).run_all()
        _node, client_class, _aio = _import_kvstore_parts()
        # Status polls go through a client of their own, so as not to disturb the writer's.
        with client_class(cluster.addresses, timeout_s=1.0) as observer:
            results.append(measure_failover(cluster, client, settings, progress, observer=observer))
    return results


def bench_kvstore_embedded(
    settings: BenchSettings, progress: BenchProgress
) -> list[WorkloadResult]:
    """kvstore through a `kvstore.Node` in this process, made leader of a 3-member cluster."""
    with embedded_node(settings.consensus) as node:
        progress.note("kvstore-embedded: the kvstore.Node in this process is leader")
        return EmbeddedWorkloads(node, settings, progress).run_all()


def measure_failover(
    cluster: Any,
    client: Any,
    settings: BenchSettings,
    progress: BenchProgress,
    *,
    observer: Any | None = None,
) -> WorkloadResult:
    """kill -9 the leader while one client writes continuously; time to the first acknowledged
    write after the kill. Repeated `FAILOVER_TRIALS` times (the killed member is restarted and
    rejoins between trials); the result's p50/p99 are over the trials, in milliseconds.
    `observer` is the client that polls members' status (default: `client`, which writes).
    """
    observer = client if observer is None else observer
    value = bench_value(settings.value_bytes)
    acked_ns: list[int] = []  # perf_counter_ns at which each write was acknowledged
    stop = threading.Event()
    refused = 0  # writes that failed while the cluster had no leader (expected)

    def writer() -> None:
        nonlocal refused
        for number in itertools.count():
            if stop.is_set():
                return
            try:
                client.put(bench_key(number % settings.ops), value, timeout_s=settings.timeout_s)
            except OP_ERRORS:
                refused += 1
                continue
            acked_ns.append(time.perf_counter_ns())

    def acked_after(moment_ns: int) -> int | None:
        # Appends only ever grow the list; the newest entries are at the end.
        for stamp in reversed(acked_ns[-64:]):
            if stamp > moment_ns:
                earliest = stamp
                for earlier in reversed(acked_ns):
                    if earlier <= moment_ns:
                        break
                    earliest = earlier
                return earliest
        return None

    def all_caught_up() -> Callable[[], bool]:
        target: list[int] = []  # the highest commit index seen on the first look

        def check() -> bool:
            statuses = list(cluster.statuses(client).values())
            if any(status is None for status in statuses):
                return False
            if not target:
                target.append(max(status.commit_index for status in statuses))
            applied: int = min(status.applied_index for status in statuses)
            return applied >= target[0]

        return check

    def writes_reached(count: int) -> Callable[[], bool]:
        return lambda: len(acked_ns) >= count

    def wait_first_ack(old_leader: str, dead_ns: int) -> tuple[int, int | None]:
        """(when the first write after the kill was acknowledged, when a new leader was seen).

        The second splits the failover time into the election and the client's part in it.
        """
        deadline = time.monotonic() + FAILOVER_WAIT_S_MAX
        elected: int | None = None
        next_poll = 0.0
        while (first := acked_after(dead_ns)) is None:
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"no write committed {FAILOVER_WAIT_S_MAX:.0f} s after the kill")
            if elected is None and now >= next_poll:
                next_poll = now + STATUS_POLL_S
                if cluster.leader(observer) not in (None, old_leader):
                    elected = time.perf_counter_ns()
            time.sleep(0.001)
        return first, elected

    samples_ns: list[int] = []
    elected_ms: list[str] = []
    notes: list[str] = []
    recorder = Recorder(ops_max=FAILOVER_TRIALS, errors_max=FAILOVER_TRIALS, duration_s_max=120)
    thread = threading.Thread(target=writer, name="bench-failover-writer", daemon=True)
    with progress.track(f"{KVSTORE} {FAILOVER} (kill -9 the leader)", recorder):
        recorder.start()
        thread.start()
        try:
            for _trial in range(FAILOVER_TRIALS):
                leader = cluster.wait_for_leader(client, timeout_s=LEADER_WAIT_S_MAX)
                # A member restarted by the previous trial must catch up first, or this
                # trial would time its catching up as well as the election.
                _wait(all_caught_up(), FAILOVER_WAIT_S_MAX, "every member to catch up")
                # Let the writer settle on this leader before pulling it away.
                _wait(writes_reached(len(acked_ns) + 50), FAILOVER_WAIT_S_MAX, "writes to resume")
                killed_ns = time.perf_counter_ns()
                cluster.kill(leader)
                # Anything acknowledged before the process is reaped came from the old leader.
                dead_ns = time.perf_counter_ns()
                try:
                    first, elected = wait_first_ack(leader, dead_ns)
                except BenchError as error:
                    recorder.record_error(error)
                    notes.append(str(error))
                else:
                    samples_ns.append(first - killed_ns)
                    recorder.record(first - killed_ns)
                    elected_ms.append(
                        "?" if elected is None else f"{(elected - killed_ns) / 1e6:.0f}"
                    )
                cluster.restart(leader)
        finally:
            stop.set()
            thread.join(timeout=settings.timeout_s * 3)
            recorder.stop()
    result = recorder.result(KVSTORE, FAILOVER, concurrency=1)
    worst_ms = max(samples_ns, default=0) / 1e6
    trials = ", ".join(f"{s / 1e6:.0f}" for s in samples_ns)
    note = (
        f"{len(samples_ns)} trials: {trials} ms (a new leader answered status after "
        f"{', '.join(elected_ms)} ms); {refused} writes refused during failovers"
    )
    return WorkloadResult(
        system=KVSTORE,
        workload=FAILOVER,
        ops=len(samples_ns),
        errors=result.errors,
        concurrency=1,
        elapsed_s=result.elapsed_s,
        ops_per_s=0.0,
        p50_ms=result.p50_ms,
        p99_ms=worst_ms,
        note="; ".join([note, *notes]),
    )


def _wait(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `condition` until it returns a truthy value; BenchError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.001)


def _make_leader(node: Any, node_id: str, addresses: Sequence[str]) -> None:
    """Wait for a leader, then have it hand leadership to `node_id` until that one holds it.

    A transfer is asked of the current leader, which may be another process: through a
    `kvstore.Client` on every member's address.
    """
    _node, client_class, _aio = _import_kvstore_parts()
    deadline = time.monotonic() + LEADER_WAIT_S_MAX
    node.wait_for_leader(timeout_s=LEADER_WAIT_S_MAX)
    with client_class(list(addresses), timeout_s=5.0) as client:
        while node.status().role != "leader":
            if time.monotonic() > deadline:
                raise BenchError(f"{node_id} did not become leader in {LEADER_WAIT_S_MAX:.0f} s")
            with contextlib.suppress(*OP_ERRORS):
                client.transfer_leadership(node_id, timeout_s=5.0)
            with contextlib.suppress(BenchError):
                _wait(lambda: node.status().role == "leader", 2.0, "the leadership transfer")


# --- peers --------------------------------------------------------------------------------------


class PeerModule(Protocol):
    """What each `benchmarks.peers.<peer>` module provides."""

    def available(self) -> str | None:
        """None when the peer can run here, else why not (shown in the table)."""

    def run(self, settings: BenchSettings, progress: BenchProgress) -> list[WorkloadResult]:
        """Start the peer's 3-process cluster, run its workloads, stop it."""


def load_peer(name: str) -> PeerModule | str:
    """The peer's harness module, or a string saying why it cannot be loaded.

    The harnesses live in the source checkout's `benchmarks/peers/`, not in the installed
    package: they are found from the working directory or beside this package's folder.
    """
    module_name = _PEER_MODULES[name]
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "benchmarks" / "peers").is_dir() and str(checkout) not in sys.path:
        sys.path.append(str(checkout))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        return f"harness {module_name} not found ({error}); run from a source checkout"
    return cast(PeerModule, module)


def bench_peer(name: str, settings: BenchSettings, progress: BenchProgress) -> list[WorkloadResult]:
    """Run one peer, or one row saying why it was skipped."""
    module = load_peer(name)
    if isinstance(module, str):
        return [skipped(name, PUT_SEQUENTIAL, module)]
    reason = module.available()
    if reason is not None:
        progress.note(f"[yellow]{name} skipped:[/yellow] {reason}")
        return [skipped(name, PUT_SEQUENTIAL, f"skipped: {reason}")]
    return module.run(settings, progress)


# --- report -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One goal of the performance issue, checked against figures of the same run."""

    label: str
    workload: str
    system: str
    minimum: float
    """Lowest passing value: a ratio (kvstore / baseline) or an absolute ops/s."""
    baseline: str | None = None
    """The peer system the ratio is against; None for an absolute figure."""
    maximum_ms: float | None = None
    """For latency goals (failover): the highest passing p99 in milliseconds."""


TARGETS = (
    Target("sequential writes >= 1.5x etcd", PUT_SEQUENTIAL, KVSTORE, 1.5, ETCD),
    Target("concurrent writes >= 2x etcd", PUT_CONCURRENT, KVSTORE, 2.0, ETCD),
    Target("concurrent writes >= 3x PySyncObj", PUT_CONCURRENT, KVSTORE, 3.0, PYSYNCOBJ),
    Target(
        "linearizable reads, 256 in flight >= 3x etcd",
        get_workload("linearizable", concurrent=True),
        KVSTORE,
        3.0,
        ETCD,
    ),
    Target(
        "stale reads via kvstore.Node >= 300,000/s",
        get_workload("stale", concurrent=False),
        KVSTORE_EMBEDDED,
        300_000.0,
    ),
    Target("failover (kill -9 leader) < 1 s", FAILOVER, KVSTORE, 0.0, maximum_ms=1000.0),
)


@dataclass
class BenchReport:
    """Every result of one run, the targets' verdicts, and where it ran."""

    settings: BenchSettings
    results: list[WorkloadResult] = field(default_factory=list)

    def find(self, system: str, workload: str) -> WorkloadResult | None:
        """The result of `system` for `workload`, if it ran (ops > 0)."""
        for result in self.results:
            if result.system == system and result.workload == workload and result.ops > 0:
                return result
        return None

    def ratio(self, workload: str, system: str, baseline: str) -> float | None:
        """`system`'s ops/s over `baseline`'s for `workload`, when both ran."""
        mine, theirs = self.find(system, workload), self.find(baseline, workload)
        if mine is None or theirs is None or theirs.ops_per_s <= 0:
            return None
        return mine.ops_per_s / theirs.ops_per_s

    def verdicts(self) -> list[tuple[Target, float | None, bool | None]]:
        """(target, measured value, passed) for each target; None where it could not run."""
        verdicts: list[tuple[Target, float | None, bool | None]] = []
        for target in TARGETS:
            measured: float | None
            if target.maximum_ms is not None:
                result = self.find(target.system, target.workload)
                measured = None if result is None else result.p99_ms
                passed = None if measured is None else measured < target.maximum_ms
            elif target.baseline is not None:
                measured = self.ratio(target.workload, target.system, target.baseline)
                passed = None if measured is None else measured >= target.minimum
            else:
                result = self.find(target.system, target.workload)
                measured = None if result is None else result.ops_per_s
                passed = None if measured is None else measured >= target.minimum
            verdicts.append((target, measured, passed))
        return verdicts

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON-ready data."""
        return {
            "settings": asdict(self.settings),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "results": [result.to_json() for result in self.results],
            "ratios": [
                {"workload": w, "system": s, "baseline": b, "ratio": r}
                for w in WORKLOADS
                for s in (KVSTORE, KVSTORE_EMBEDDED)
                for b in PEERS
                if (r := self.ratio(w, s, b)) is not None
            ],
            "targets": [
                {"target": t.label, "measured": m, "passed": p} for t, m, p in self.verdicts()
            ],
        }


def workload_label(workload: str) -> str:
    """A short name for the table: `get_linearizable_concurrent` -> `get lin conc`."""
    return (
        workload.replace("linearizable", "lin")
        .replace("_sequential", " seq")
        .replace("_concurrent", " conc")
        .replace("_", " ")
    )


SYSTEM_LABELS = {
    KVSTORE: "kvstore",
    KVSTORE_EMBEDDED: "kvstore Node",
    ETCD: "etcd",
    PYSYNCOBJ: "PySyncObj",
}
"""Names in the table (the JSON keeps the system ids)."""


def _ms(value: float) -> str:
    # Three significant digits, but no more than four decimals: in-process reads take ~1 us.
    return f"{value:.3g}" if value >= 0.1 else f"{value:.4f}"


def render_report(report: BenchReport, console: Console) -> None:
    """Print the comparison table (one row per workload and system), the targets, the notes."""
    settings = report.settings
    table = Table(
        title=(
            f"3 members on 127.0.0.1, fsync on, {settings.key_bytes}-byte keys, "
            f"{settings.value_bytes}-byte values"
        ),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("workload", no_wrap=True)
    table.add_column("system", no_wrap=True)
    table.add_column("ops/s", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p99 ms", justify="right")
    for peer in PEERS:
        table.add_column(f"x\n{SYSTEM_LABELS[peer]}", justify="right")
    systems = (KVSTORE, KVSTORE_EMBEDDED, *PEERS)
    for workload in WORKLOADS:
        rows = [r for s in systems if (r := report.find(s, workload)) is not None]
        for number, result in enumerate(rows):
            if workload == FAILOVER:
                # Failover is a time, not a rate: p50 and worst over the trials.
                figures = ["-", f"{result.p50_ms:.0f}", f"{result.p99_ms:.0f}"]
            else:
                figures = [
                    f"{result.ops_per_s:,.0f}",
                    _ms(result.p50_ms),
                    _ms(result.p99_ms),
                ]
            ratios = []
            for peer in PEERS:
                ratio = (
                    None if result.system in PEERS else report.ratio(workload, result.system, peer)
                )
                ratios.append("" if ratio is None else f"{ratio:.2f}")
            table.add_row(
                workload_label(workload) if number == 0 else "",
                SYSTEM_LABELS[result.system],
                *figures,
                *ratios,
            )
    console.print(table)
    legend = (
        f"seq: one operation at a time; conc: {settings.concurrency} in flight; lin: "
        "linearizable; kvstore Node: embedded, in this process; x peer: this row's ops/s over "
        "the peer's in the same run; failover: kill -9 of the leader to the first acknowledged "
        "write (p50 and worst of the trials)."
    )
    console.print(legend, style="dim")
    for target, measured, passed in report.verdicts():
        mark = {
            True: "[green]met   [/green]",
            False: "[red]missed[/red]",
            None: "[dim]n/a   [/dim]",
        }
        shown = "not measured" if measured is None else f"{measured:,.2f}"
        console.print(f"  {mark[passed]}  {target.label}: {shown}")
    for result in report.results:
        if result.note:
            console.print(f"  [dim]{result.system} {result.workload}: {result.note}[/dim]")


def run_comparison(
    settings: BenchSettings,
    progress: BenchProgress,
    *,
    systems: Sequence[str] = (KVSTORE, KVSTORE_EMBEDDED, *PEERS),
) -> BenchReport:
    """Run each named system's workloads in turn; a system that fails gets a row saying why."""
    settings.validate()
    report = BenchReport(settings)
    runners: dict[str, Callable[[], list[WorkloadResult]]] = {
        KVSTORE: lambda: bench_kvstore_client(settings, progress),
        KVSTORE_EMBEDDED: lambda: bench_kvstore_embedded(settings, progress),
        ETCD: lambda: bench_peer(ETCD, settings, progress),
        PYSYNCOBJ: lambda: bench_peer(PYSYNCOBJ, settings, progress),
    }
    for system in systems:
        try:
            report.results.extend(runners[system]())
        except (KVStoreError, OSError, TimeoutError) as error:
            progress.note(f"[red]{system} failed:[/red] {error}")
            report.results.append(skipped(system, PUT_SEQUENTIAL, f"failed: {error}"))
    return report


def run_bench(*, ops: int, concurrency: int, json_path: str | None, consensus: str = "raft") -> int:
    """The `kvstore bench` command: run every system, print the table, optionally write JSON.

    Returns the exit status: 0 when kvstore's workloads ran (targets missed are reported, not
    failed), 2 when kvstore itself could not be measured.
    """
    settings = BenchSettings(ops=ops, concurrency=concurrency, consensus=consensus)
    settings.validate()
    # Off a terminal (a log, CI) rich assumes 80 columns, too narrow for the table.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    console.rule(f"[bold]kvstore bench[/bold] (consensus={consensus})")
    with BenchProgress(console, enabled=console.is_terminal) as progress:
        report = run_comparison(settings, progress)
    render_report(report, console)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"wrote {json_path}")
    return 0 if report.find(KVSTORE, PUT_SEQUENTIAL) is not None else 2

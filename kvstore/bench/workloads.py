"""kvstore's workloads: a 3-member cluster on 127.0.0.1, through the client and embedded.

kvstore is measured two ways: through `kvstore.Client` against a `LocalCluster` of three
`kvstore serve` processes (and the kill -9 failover on it), and through a `kvstore.Node` in this
process made leader of two `kvstore serve` processes. Every workload is bounded in operations
and in time; the figures come from `kvstore.bench.recorder`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from kvstore import Client, Node, Options
from kvstore.aio import Client as AsyncClient
from kvstore.bench.recorder import (
    CONSISTENCY_LEVELS,
    FAILOVER,
    IN_PROCESS_READ_OPS_FACTOR,
    OP_ERRORS,
    PUT_CONCURRENT,
    PUT_SEQUENTIAL,
    BenchError,
    BenchSettings,
    OperationError,
    Progress,
    Recorder,
    WorkloadResult,
    bench_key,
    bench_keys,
    bench_value,
    get_workload,
    measure,
    run_async,
    run_sequential,
    run_threaded,
)
from kvstore.eventloop import new_event_loop
from kvstore.options import Consistency
from kvstore.testing.local_cluster import LocalCluster

KVSTORE = "kvstore"
"""The system id of kvstore through `kvstore.Client`."""
KVSTORE_EMBEDDED = "kvstore-embedded"
"""The system id of kvstore through a `kvstore.Node` in this process."""

FAILOVER_TRIALS = 3
STATUS_POLL_S = 0.01
"""How often the failover measurement asks the members who leads."""
FAILOVER_WAIT_S_MAX = 20.0
"""How long one failover trial waits for the first acknowledged write before giving up."""
LEADER_WAIT_S_MAX = 20.0


SyncStore = Client | Node
"""What the workloads below drive: both have the same synchronous `put` and `get`."""


def _check_found(value: bytes | None, key: bytes) -> None:
    if value is None:
        raise OperationError(f"key {key!r} written earlier in the run reads as absent")


class StoreWorkloads:
    """kvstore's workloads against a store with the synchronous API (`Client` or `Node`).

    Reads use the keys the writes left behind, so the put workloads run first. Subclasses say
    how `concurrency` operations are kept in flight.
    """

    in_process = False
    """True when reads may be served without leaving this process (lease, stale on a Node)."""

    def __init__(
        self, system: str, store: SyncStore, settings: BenchSettings, progress: Progress
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

    def get(self, consistency: Consistency, *, concurrent: bool) -> WorkloadResult:
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

    def _run_concurrent_get(self, recorder: Recorder, *, consistency: Consistency) -> None:
        raise NotImplementedError


class ClientWorkloads(StoreWorkloads):
    """Through `kvstore.Client` (sequential) and `kvstore.aio.Client` (concurrent)."""

    def __init__(
        self,
        store: SyncStore,
        addresses: Sequence[str],
        settings: BenchSettings,
        progress: Progress,
    ) -> None:
        super().__init__(KVSTORE, store, settings, progress)
        self.addresses = list(addresses)

    def _run_aio(
        self,
        recorder: Recorder,
        make_op: Callable[[AsyncClient], Callable[[int], Awaitable[object]]],
    ) -> None:
        settings = self.settings

        async def main() -> None:
            aio_client = AsyncClient(self.addresses, timeout_s=settings.timeout_s)
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

        def make_op(aio_client: AsyncClient) -> Callable[[int], Awaitable[object]]:
            async def op(number: int) -> None:
                await aio_client.put(keys[number], value, timeout_s=timeout_s)

            return op

        self._run_aio(recorder, make_op)

    def _run_concurrent_get(self, recorder: Recorder, *, consistency: Consistency) -> None:
        settings, keys = self.settings, self.keys

        def make_op(aio_client: AsyncClient) -> Callable[[int], Awaitable[object]]:
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

    def __init__(self, node: SyncStore, settings: BenchSettings, progress: Progress) -> None:
        super().__init__(KVSTORE_EMBEDDED, node, settings, progress)

    def _run_concurrent_put(self, recorder: Recorder) -> None:
        store, keys, value, timeout_s = self.store, self.keys, self.value, self.settings.timeout_s

        def put_one(number: int) -> None:
            store.put(keys[number], value, timeout_s=timeout_s)

        run_threaded(put_one, recorder, concurrency=self.settings.concurrency)

    def _run_concurrent_get(self, recorder: Recorder, *, consistency: Consistency) -> None:
        store, settings, keys = self.store, self.settings, self.keys

        def get_one(number: int) -> None:
            key = keys[number % settings.ops]
            found = store.get(key, consistency=consistency, timeout_s=settings.timeout_s)
            _check_found(found, key)

        run_threaded(get_one, recorder, concurrency=settings.concurrency)


@contextlib.contextmanager
def client_cluster(settings: BenchSettings) -> Iterator[tuple[LocalCluster, Client]]:
    """Three `kvstore serve` processes with a leader, and a `kvstore.Client` on all of them."""
    with (
        LocalCluster(3, consensus=settings.consensus) as cluster,
        Client(cluster.addresses, timeout_s=settings.timeout_s) as client,
    ):
        cluster.wait_for_leader(client, timeout_s=LEADER_WAIT_S_MAX)
        yield cluster, client


@contextlib.contextmanager
def embedded_node(consensus: str = "raft") -> Iterator[Node]:
    """A `kvstore.Node` in this process that leads two `kvstore serve` processes."""
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
        with Node(local_id, data_dir, peers, options=options) as node:
            _make_leader(node, local_id, list(peers.values()))
            yield node


def bench_kvstore_client(settings: BenchSettings, progress: Progress) -> list[WorkloadResult]:
    """kvstore through `kvstore.Client` against three `kvstore serve` processes, then failover."""
    with client_cluster(settings) as (cluster, client):
        progress.note(
            f"kvstore: 3 `kvstore serve` processes, leader {cluster.leader(client) or '?'}"
        )
        results = ClientWorkloads(client, cluster.addresses, settings, progress).run_all()
        # Status polls go through a client of their own, so as not to disturb the writer's.
        with Client(cluster.addresses, timeout_s=1.0) as observer:
            results.append(measure_failover(cluster, client, settings, progress, observer=observer))
    return results


def bench_kvstore_embedded(settings: BenchSettings, progress: Progress) -> list[WorkloadResult]:
    """kvstore through a `kvstore.Node` in this process, made leader of a 3-member cluster."""
    with embedded_node(settings.consensus) as node:
        progress.note("kvstore-embedded: the kvstore.Node in this process is leader")
        return EmbeddedWorkloads(node, settings, progress).run_all()


def measure_failover(
    cluster: Any,
    client: Any,
    settings: BenchSettings,
    progress: Progress,
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


def _make_leader(node: Node, node_id: str, addresses: Sequence[str]) -> None:
    """Wait for a leader, then have it hand leadership to `node_id` until that one holds it.

    A transfer is asked of the current leader, which may be another process: through a
    `kvstore.Client` on every member's address.
    """
    deadline = time.monotonic() + LEADER_WAIT_S_MAX
    node.wait_for_leader(timeout_s=LEADER_WAIT_S_MAX)
    with Client(list(addresses), timeout_s=5.0) as client:
        while node.status().role != "leader":
            if time.monotonic() > deadline:
                raise BenchError(f"{node_id} did not become leader in {LEADER_WAIT_S_MAX:.0f} s")
            with contextlib.suppress(*OP_ERRORS):
                client.transfer_leadership(node_id, timeout_s=5.0)
            with contextlib.suppress(BenchError):
                _wait(lambda: node.status().role == "leader", 2.0, "the leadership transfer")

"""What mutual TLS costs: the same writes against a plaintext and a TLS 3-member cluster.

Both clusters (3 `kvstore serve` processes each, `kvstore.testing.LocalCluster`, the TLS one
with `tls=True`) run side by side in the same run, and the rounds alternate between them
(plaintext, TLS, plaintext, TLS...), so that whatever else the machine is doing weighs on both
alike. Two workloads:

- sequential writes through `kvstore.Client` (one put at a time, each waiting for its commit);
- writes with 256 in flight through `kvstore.aio.Client`.

Each test runs `KVSTORE_BENCH_TLS_ROUNDS` rounds (default 5) per cluster and reports, in its
`extra_info`, the ops/s of every round and the cost of TLS (1 - tls/plaintext) on the best
rounds, on the median rounds, and as the median over adjacent (plaintext, TLS) pairs. Beside the
wall clock, it reports the CPU time the three members spent per write (from /proc): on a machine
shared with other work, that is the steadier measure of what TLS adds. The targets (issue 11):
at most 20% at 256 in flight, 15% sequential. They are printed, not asserted: on a shared
machine one noisy round can miss them.

Measured on the 2-core development machine while six other jobs shared it (load 5-8), 7 rounds
each: sequential, TLS costs 8.4% on the median rounds and 8.9% as the median of pairs (target
15%; the best-round figure swings with the noise: 23%); 256 in flight, 16.2% on the median
rounds, 19.2% median of pairs (target 20%; best rounds -8.3%). The members' CPU per write is
x1.19 sequential (1650 -> 1967 us over three members) and x1.11 at 256 in flight (43 -> 48 us).

Run with `make bench` or `pytest benchmarks/test_bench_tls.py --benchmark-only -s`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kvstore
import kvstore.aio
from kvstore.eventloop import new_event_loop
from kvstore.testing.local_cluster import LocalCluster

ROUNDS = int(os.environ.get("KVSTORE_BENCH_TLS_ROUNDS", "5"))
SEQUENTIAL_OPS = int(os.environ.get("KVSTORE_BENCH_TLS_SEQUENTIAL_OPS", "600"))
IN_FLIGHT = 256
CONCURRENT_OPS = IN_FLIGHT * 40
VALUE = b"v" * 100
TIMEOUT_S = 10.0
TARGET_COST = {"sequential": 0.15, "concurrent": 0.20}

pytestmark = pytest.mark.timeout(900)


class _Cluster:
    """One running 3-member cluster and the `tls=` its clients need."""

    def __init__(self, name: str, cluster: LocalCluster) -> None:
        self.name = name
        self.cluster = cluster
        self.tls = cluster.client_tls
        self.client = kvstore.Client(cluster.addresses, tls=self.tls, timeout_s=TIMEOUT_S)
        cluster.wait_for_leader(self.client, timeout_s=30.0)
        self.round = 0

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the running members have used so far."""
        total_ticks = 0
        for member in self.cluster:
            if member.process is not None:
                fields = Path(f"/proc/{member.process.pid}/stat").read_text().rsplit(")", 1)[1]
                utime, stime = fields.split()[11:13]
                total_ticks += int(utime) + int(stime)
        return total_ticks / os.sysconf("SC_CLK_TCK")

    def keys(self, count: int) -> list[bytes]:
        # Fresh keys every round, so every round does the same work (inserts).
        self.round += 1
        return [b"bench/%d/%08d" % (self.round, number) for number in range(count)]

    def put_sequential(self) -> float:
        """ops/s of SEQUENTIAL_OPS puts, one at a time."""
        keys, client = self.keys(SEQUENTIAL_OPS), self.client
        client.put(b"warm", VALUE, timeout_s=TIMEOUT_S)
        started = time.perf_counter()
        for key in keys:
            client.put(key, VALUE, timeout_s=TIMEOUT_S)
        return len(keys) / (time.perf_counter() - started)

    def put_concurrent(self) -> float:
        """ops/s of CONCURRENT_OPS puts, IN_FLIGHT at a time, through one aio client."""
        keys = self.keys(CONCURRENT_OPS)

        async def main() -> float:
            client = kvstore.aio.Client(self.cluster.addresses, tls=self.tls, timeout_s=TIMEOUT_S)
            try:
                # Untimed: dial every member and find the leader first.
                for address in self.cluster.addresses:
                    await client.status(address)
                await client.put(b"warm", VALUE, timeout_s=TIMEOUT_S)
                queue = iter(keys)

                async def worker() -> None:
                    for key in queue:
                        await client.put(key, VALUE, timeout_s=TIMEOUT_S)

                started = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
                return len(keys) / (time.perf_counter() - started)
            finally:
                await client.close()

        # The same kind of loop as the servers (uvloop if installed).
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(main())

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


@pytest.fixture(scope="module")
def clusters() -> Iterator[dict[str, _Cluster]]:
    plain = _Cluster("plaintext", LocalCluster(3).start())
    try:
        secure = _Cluster("tls", LocalCluster(3, tls=True).start())
    except BaseException:
        plain.close()
        raise
    try:
        yield {"plaintext": plain, "tls": secure}
    finally:
        secure.close()
        plain.close()


def _compare(
    benchmark: Any, clusters: dict[str, _Cluster], workload: str, run: Callable[[_Cluster], float]
) -> None:
    ops = SEQUENTIAL_OPS if workload == "sequential" else CONCURRENT_OPS

    def rounds() -> dict[str, tuple[list[float], list[float]]]:
        results: dict[str, tuple[list[float], list[float]]] = {
            "plaintext": ([], []),
            "tls": ([], []),
        }
        for _ in range(ROUNDS):
            for name in ("plaintext", "tls"):
                cpu_before = clusters[name].cpu_s()
                results[name][0].append(run(clusters[name]))
                results[name][1].append((clusters[name].cpu_s() - cpu_before) / ops * 1e6)
        return results

    results = benchmark.pedantic(rounds, rounds=1, iterations=1, warmup_rounds=0)
    (plain, plain_cpu), (tls, tls_cpu) = results["plaintext"], results["tls"]
    cost_best = 1 - max(tls) / max(plain)
    cost_median = 1 - statistics.median(tls) / statistics.median(plain)
    cost_pairs = statistics.median(1 - t / p for p, t in zip(plain, tls, strict=True))
    cpu_ratio = statistics.median(tls_cpu) / statistics.median(plain_cpu)
    benchmark.extra_info.update(
        workload=workload,
        rounds=ROUNDS,
        plaintext_ops_per_s=[round(value, 1) for value in plain],
        tls_ops_per_s=[round(value, 1) for value in tls],
        tls_cost_best=round(cost_best, 3),
        tls_cost_median=round(cost_median, 3),
        tls_cost_pairs_median=round(cost_pairs, 3),
        plaintext_member_cpu_us_per_write=round(statistics.median(plain_cpu), 1),
        tls_member_cpu_us_per_write=round(statistics.median(tls_cpu), 1),
        target_cost=TARGET_COST[workload],
    )
    print(
        f"\n{workload}: plaintext {[round(v) for v in plain]} ops/s, tls {[round(v) for v in tls]}"
        f" ops/s; TLS costs {cost_best:.1%} (best rounds), {cost_median:.1%} (median rounds), "
        f"{cost_pairs:.1%} (median of pairs); target <= {TARGET_COST[workload]:.0%}; members' CPU "
        f"per write {statistics.median(plain_cpu):.0f} us plaintext, "
        f"{statistics.median(tls_cpu):.0f} us TLS (x{cpu_ratio:.2f})"
    )
    assert min(plain) > 0 and min(tls) > 0


def test_bench_tls_put_sequential(benchmark: Any, clusters: dict[str, _Cluster]) -> None:
    _compare(benchmark, clusters, "sequential", _Cluster.put_sequential)


def test_bench_tls_put_concurrent(benchmark: Any, clusters: dict[str, _Cluster]) -> None:
    _compare(benchmark, clusters, "concurrent", _Cluster.put_concurrent)

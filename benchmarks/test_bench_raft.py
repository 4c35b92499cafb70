"""Raft core throughput through the simulator's message passing (no faults, no disk).

A 3-node in-memory `SimCluster` (tests/sim) with instant delivery and instant "fsync": the
leader takes batches of 64 proposals of 100 bytes (`propose_many`), and the clock stops when
the leader has applied them all (committed on a majority, handed out, applied). What is
measured is the core plus the simulator's Ready loop -- the ceiling the real node cannot beat.

Baseline in the same run: the same loop on a 1-node cluster (commit needs no replication), so
the ratio shows what replication to two followers costs.

Profile the 3-node case with `python -m benchmarks.test_bench_raft` (top 15 functions).

`cluster`, `run` and `bench` take the protocol, so benchmarks/test_bench_paxos.py measures the
Paxos core through the very same loop.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from typing import Any

from kvstore.paxos.core import PaxosCore
from kvstore.raft.core import RaftCore
from tests.sim.cluster import SimCluster, SimNode, SimOptions
from tests.sim.network import NetworkOptions

BATCH = 64
ENTRY_BYTES = 100
BATCHES = 400
"""Entries per measured run: BATCHES * BATCH = 25,600."""
BATCHES_PER_STEP = 8
"""Batches proposed per simulator step (keeps the pipeline full)."""


def cluster(n_nodes: int, consensus: str = "raft") -> tuple[SimCluster, SimNode]:
    """A settled `n_nodes` cluster of `consensus` cores, and its leader (n1)."""
    opts = SimOptions(
        n_nodes=n_nodes,
        consensus=consensus,
        network=NetworkOptions(delay_min_steps=1, delay_mean_steps=1.0),
        sync_now_probability=1.0,
        trace_messages=False,
        trace_max=1,
        max_inflight_msgs=256,
    )
    c = SimCluster(1, options=opts, check=False)
    c.nodes["n1"].core.campaign()

    def elected() -> bool:
        ld = c.leader()
        return ld is not None and ld.core.commit_index >= ld.storage.last_index() > 0

    if not c.run(2000, until=elected):
        raise AssertionError("no leader")
    ld = c.leader()
    assert ld is not None
    return c, ld


def run(c: SimCluster, ld: SimNode, batches: int) -> int:
    """Propose `batches` batches at the leader and step until it applied them all."""
    payload = [b"x" * ENTRY_BYTES] * BATCH
    start = ld.sm.applied
    target = start + batches * BATCH
    proposed = 0
    for _ in range(100_000):
        for _ in range(min(BATCHES_PER_STEP, batches - proposed)):
            ld.core.propose_many(payload)
            proposed += 1
        c.step()
        if ld.sm.applied >= target:
            return ld.sm.applied - start
    raise AssertionError(f"not all applied: {ld.sm.applied - start} of {batches * BATCH}")


def bench(benchmark: Any, n_nodes: int, consensus: str = "raft") -> float:
    """Time `run` on fresh clusters (7 rounds); the median rate in entries per second."""
    state: dict[str, tuple[SimCluster, SimNode]] = {}

    def setup() -> tuple[tuple[SimCluster, SimNode, int], dict[str, object]]:
        c, ld = cluster(n_nodes, consensus)
        state["c"] = (c, ld)
        return (c, ld, BATCHES), {}

    benchmark.pedantic(run, setup=setup, rounds=7, iterations=1)
    entries = BATCHES * BATCH
    rate = entries / benchmark.stats.stats.median
    benchmark.extra_info["entries_per_s_median"] = round(rate)
    c, ld = state["c"]
    assert isinstance(ld.core, {"raft": RaftCore, "paxos": PaxosCore}[consensus])
    # Every member applies everything (followers learn the last commit one round later).
    assert c.run(100, until=lambda: all(n.sm.applied >= ld.sm.applied for n in c.nodes.values()))
    assert ld.sm.applied >= entries
    return rate


def test_bench_raft_propose_many_1node(benchmark: Any) -> None:
    """Baseline: one node, no replication."""
    rate = bench(benchmark, 1)
    print(f"\n1 node: {rate:,.0f} entries/s")


def test_bench_raft_propose_many_3nodes(benchmark: Any) -> None:
    """Three nodes: batches of 64 x 100 B through the leader, committed on a majority."""
    rate = bench(benchmark, 3)
    print(f"\n3 nodes: {rate:,.0f} entries/s")


def time_once(consensus: str = "raft") -> None:
    """Time one unprofiled run on a fresh 3-node cluster and print the rate."""
    c, ld = cluster(3, consensus)
    t0 = time.perf_counter()
    n = run(c, ld, BATCHES)
    dt = time.perf_counter() - t0
    print(f"{consensus} 3 nodes: {n} entries in {dt:.3f} s = {n / dt:,.0f} entries/s")


def profile(consensus: str = "raft") -> None:
    """Profile one run on a fresh 3-node cluster (top 15 functions by own time)."""
    c, ld = cluster(3, consensus)
    prof = cProfile.Profile()
    prof.enable()
    run(c, ld, BATCHES)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main() -> None:
    """Time and profile the 3-node case."""
    time_once()
    profile()


if __name__ == "__main__":
    main()

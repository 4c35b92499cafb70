"""Multi-Paxos core throughput through the simulator's message passing (no faults, no disk).

The same measurement as benchmarks/test_bench_raft.py, run for both cores in one run: a 3-node
in-memory `SimCluster` with instant delivery and instant "fsync"; the leader takes batches of
64 proposals of 100 bytes (`propose_many`), and the clock stops when it has applied them all
(chosen by a majority, handed out, applied). The baseline is the Raft core through the same
loop, so the printed ratio is Paxos / Raft.

`SimCluster` builds `RaftCore`s; for the Paxos runs the class it uses is swapped while the
cluster is built (nothing restarts during a run). Profile with
`python -m benchmarks.test_bench_paxos`.
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import time
from collections.abc import Iterator
from typing import Any

import tests.sim.cluster as sim_cluster
from kvstore.paxos.core import PaxosCore
from tests.sim.cluster import SimCluster, SimNode, SimOptions
from tests.sim.network import NetworkOptions

BATCH = 64
ENTRY_BYTES = 100
BATCHES = 400
"""Entries per measured run: BATCHES * BATCH = 25,600."""
BATCHES_PER_STEP = 8

_rates: dict[str, float] = {}


@contextlib.contextmanager
def _core_class(kind: str) -> Iterator[None]:
    original = sim_cluster.RaftCore
    if kind == "paxos":
        sim_cluster.RaftCore = PaxosCore  # type: ignore[misc]
    try:
        yield
    finally:
        sim_cluster.RaftCore = original  # type: ignore[misc]


def _cluster(kind: str) -> tuple[SimCluster, SimNode]:
    opts = SimOptions(
        n_nodes=3,
        network=NetworkOptions(delay_min_steps=1, delay_mean_steps=1.0),
        sync_now_probability=1.0,
        trace_messages=False,
        trace_max=1,
        max_inflight_msgs=256,
    )
    with _core_class(kind):
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


def _run(c: SimCluster, ld: SimNode, batches: int) -> int:
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


def _bench(benchmark: Any, kind: str) -> float:
    state: dict[str, tuple[SimCluster, SimNode]] = {}

    def setup() -> tuple[tuple[SimCluster, SimNode, int], dict[str, object]]:
        c, ld = _cluster(kind)
        state["c"] = (c, ld)
        return (c, ld, BATCHES), {}

    benchmark.pedantic(_run, setup=setup, rounds=7, iterations=1)
    rate = BATCHES * BATCH / benchmark.stats.stats.median
    benchmark.extra_info["entries_per_s_median"] = round(rate)
    c, ld = state["c"]
    assert isinstance(ld.core, PaxosCore) == (kind == "paxos")
    assert c.run(100, until=lambda: all(n.sm.applied >= ld.sm.applied for n in c.nodes.values()))
    _rates[kind] = rate
    return rate


def test_bench_paxos_propose_many_raft_baseline(benchmark: Any) -> None:
    """Baseline: the Raft core, 3 nodes, the same loop and load."""
    rate = _bench(benchmark, "raft")
    print(f"\nraft 3 nodes: {rate:,.0f} entries/s")


def test_bench_paxos_propose_many_3nodes(benchmark: Any) -> None:
    """Three Paxos members: batches of 64 x 100 B through the leader, chosen by a majority."""
    rate = _bench(benchmark, "paxos")
    ratio = f" ({rate / _rates['raft']:.2f}x raft)" if "raft" in _rates else ""
    print(f"\npaxos 3 nodes: {rate:,.0f} entries/s{ratio}")


def main() -> None:
    """Time both cores, then profile Paxos (top 15 functions by own time)."""
    for kind in ("raft", "paxos"):
        c, ld = _cluster(kind)
        t0 = time.perf_counter()
        n = _run(c, ld, BATCHES)
        dt = time.perf_counter() - t0
        print(f"{kind} 3 nodes: {n} entries in {dt:.3f} s = {n / dt:,.0f} entries/s")
    c, ld = _cluster("paxos")
    prof = cProfile.Profile()
    prof.enable()
    _run(c, ld, BATCHES)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()

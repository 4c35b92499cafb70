"""Multi-Paxos core throughput through the simulator's message passing (no faults, no disk).

The same measurement as benchmarks/test_bench_raft.py (whose `cluster`, `run` and `bench` it
uses), run for both cores in one run: a 3-node in-memory `SimCluster` with instant delivery and
instant "fsync"; the leader takes batches of 64 proposals of 100 bytes (`propose_many`), and
the clock stops when it has applied them all (chosen by a majority, handed out, applied). The
baseline is the Raft core through the same loop, so the printed ratio is Paxos / Raft.

Profile with `python -m benchmarks.test_bench_paxos`.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from typing import Any

from benchmarks.test_bench_raft import BATCHES, bench, cluster, run

_rates: dict[str, float] = {}


def test_bench_paxos_propose_many_raft_baseline(benchmark: Any) -> None:
    """Baseline: the Raft core, 3 nodes, the same loop and load."""
    rate = _rates["raft"] = bench(benchmark, 3, "raft")
    print(f"\nraft 3 nodes: {rate:,.0f} entries/s")


def test_bench_paxos_propose_many_3nodes(benchmark: Any) -> None:
    """Three Paxos members: batches of 64 x 100 B through the leader, chosen by a majority."""
    rate = _rates["paxos"] = bench(benchmark, 3, "paxos")
    ratio = f" ({rate / _rates['raft']:.2f}x raft)" if "raft" in _rates else ""
    print(f"\npaxos 3 nodes: {rate:,.0f} entries/s{ratio}")


def main() -> None:
    """Time both cores, then profile Paxos (top 15 functions by own time)."""
    for kind in ("raft", "paxos"):
        c, ld = cluster(3, kind)
        t0 = time.perf_counter()
        n = run(c, ld, BATCHES)
        dt = time.perf_counter() - t0
        print(f"{kind} 3 nodes: {n} entries in {dt:.3f} s = {n / dt:,.0f} entries/s")
    c, ld = cluster(3, "paxos")
    prof = cProfile.Profile()
    prof.enable()
    run(c, ld, BATCHES)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()

"""Multi-Paxos core throughput through the simulator's message passing (no faults, no disk).

The same measurement as benchmarks/test_bench_raft.py (whose `cluster`, `run` and `bench` it
uses), run for both cores in one run: a 3-node in-memory `SimCluster` with instant delivery and
instant "fsync"; the leader takes batches of 64 proposals of 100 bytes (`propose_many`), and
the clock stops when it has applied them all (chosen by a majority, handed out, applied). The
baseline is the Raft core through the same loop, so the printed ratio is Paxos / Raft.

Profile with `python -m benchmarks.test_bench_paxos`.
"""

from __future__ import annotations

from typing import Any

from benchmarks.test_bench_raft import bench, profile, time_once

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
        time_once(kind)
    profile("paxos")


if __name__ == "__main__":
    main()

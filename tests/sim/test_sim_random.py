"""Randomised fault scenarios over many seeds (the VOPR-style sweep).

Each seed builds a cluster (3 or 5 nodes, random network faults, fsync timing, compaction),
runs a fault phase (partitions, crashes, slow nodes, membership changes, leadership
transfers, client writes and reads) with every safety checker after every step, then heals
and asserts liveness within a bounded number of ticks (tests/sim/scenarios.py).

Seeds: 0 .. KVSTORE_SIM_SEEDS-1 (default 500). Replay one failing seed with
`KVSTORE_SIM_SEED=N pytest tests/sim/test_sim_random.py`.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.checkers import SimFailure
from tests.sim.scenarios import FaultOptions, run_scenario


def _seeds() -> list[int]:
    one = os.environ.get("KVSTORE_SIM_SEED")
    if one is not None:
        return [int(one)]
    return list(range(int(os.environ.get("KVSTORE_SIM_SEEDS", "500"))))


@pytest.mark.parametrize("seed", _seeds())
def test_random_scenario(seed: int) -> None:
    try:
        run_scenario(seed)
    except SimFailure as e:
        pytest.fail(f"simulation failed, seed {seed}:\n{e}", pytrace=False)


def test_fault_coverage() -> None:
    """The driver really exercises what it claims to (with faults turned up, few seeds)."""
    faults = FaultOptions(
        fault_steps=1500,
        crash_probability=0.01,
        membership_probability=0.01,
        partition_probability=0.01,
        transfer_probability=0.005,
    )
    totals: dict[str, int] = {}
    for seed in range(1000, 1012):
        try:
            result = run_scenario(seed, faults)
        except SimFailure as e:
            pytest.fail(f"simulation failed, seed {seed}:\n{e}", pytrace=False)
        for k, v in result.stats.items():
            totals[k] = totals.get(k, 0) + v
    for key in (
        "acked",
        "reads_checked",
        "crashes",
        "snapshots_installed",
        "conf_changes",
        "net_dropped",
        "net_duplicated",
        "dropped_proposals",
    ):
        assert totals.get(key, 0) > 0, f"no {key} in 12 seeds: {totals}"
    assert totals["terms"] > 12  # leadership moved, not just the first election

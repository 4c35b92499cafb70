"""Randomised fault scenarios over many seeds (the VOPR-style sweep), for every protocol.

Each seed builds a cluster (3 or 5 nodes, random network faults, fsync timing, compaction),
runs a fault phase (partitions, crashes, slow nodes, membership changes where the protocol has
them, leadership transfers, client writes and reads) with every safety checker after every step,
then heals and asserts liveness within a bounded number of ticks (tests/sim/scenarios.py). The
same seeds run on Raft and on Paxos, from this one suite.

Seeds: 0 .. KVSTORE_SIM_SEEDS-1 (default 500) per protocol, each with `SWEEP_FAULT_STEPS` steps
of faults. Replay one failing run with
`KVSTORE_SIM_SEED=N KVSTORE_SIM_CONSENSUS=paxos pytest tests/sim/test_sim_random.py`
(without KVSTORE_SIM_CONSENSUS the seed runs on every protocol). Replays and longer sweeps take
`KVSTORE_SIM_FAULT_STEPS` (default `SWEEP_FAULT_STEPS`).
"""

from __future__ import annotations

import os

import pytest

from kvstore.consensus import CONSENSUS_KINDS
from tests.sim.checkers import SimFailure
from tests.sim.scenarios import FIXED_CONFIGURATION, FaultOptions, run_scenario

SWEEP_FAULT_STEPS = 1000
"""Fault-phase steps per seed in CI: 1,000 seeds (500 per protocol) must fit in about two
minutes on two cores, so each seed is shorter than `FaultOptions`' default; longer runs come
from more seeds (`KVSTORE_SIM_SEEDS`) or `KVSTORE_SIM_FAULT_STEPS`."""


def _seeds() -> list[int]:
    one = os.environ.get("KVSTORE_SIM_SEED")
    if one is not None:
        return [int(one)]
    return list(range(int(os.environ.get("KVSTORE_SIM_SEEDS", "500"))))


def _kinds() -> list[str]:
    one = os.environ.get("KVSTORE_SIM_CONSENSUS")
    return [one] if one is not None else list(CONSENSUS_KINDS)


@pytest.mark.parametrize("seed", _seeds())
@pytest.mark.parametrize("consensus", _kinds())
def test_random_scenario(consensus: str, seed: int) -> None:
    steps = int(os.environ.get("KVSTORE_SIM_FAULT_STEPS", str(SWEEP_FAULT_STEPS)))
    try:
        run_scenario(seed, FaultOptions(fault_steps=steps), consensus=consensus)
    except SimFailure as e:
        pytest.fail(f"{consensus} simulation failed, seed {seed}:\n{e}", pytrace=False)


@pytest.mark.parametrize("consensus", CONSENSUS_KINDS)
def test_fault_coverage(consensus: str) -> None:
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
            result = run_scenario(seed, faults, consensus=consensus)
        except SimFailure as e:
            pytest.fail(f"{consensus} simulation failed, seed {seed}:\n{e}", pytrace=False)
        for k, v in result.stats.items():
            totals[k] = totals.get(k, 0) + v
    expected = [
        "acked",
        "reads_checked",
        "crashes",
        "snapshots_installed",
        "net_dropped",
        "net_duplicated",
        "dropped_proposals",
        "torn_appends",
    ]
    if consensus in FIXED_CONFIGURATION:
        assert totals.get("conf_changes", 0) == 0  # none tried: the configuration is fixed
    else:
        expected.append("conf_changes")
    for key in expected:
        assert totals.get(key, 0) > 0, f"no {key} in 12 {consensus} seeds: {totals}"
    assert totals["terms"] > 12  # leadership moved, not just the first election

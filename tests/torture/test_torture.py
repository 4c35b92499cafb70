"""The bounded torture pass of `make test`: every fault family once, on real processes.

Each schedule starts its own cluster of `kvstore serve` processes, runs 4 clients over 6 keys
while the nemesis injects faults for CI_FAULT_S seconds, heals, reads everything back, and
asserts that the history is linearizable, that the cluster served again within
RECOVERY_LIMIT_S after every heal, and what the schedule itself promises (see
kvstore/testing/torture.py). The seed is fixed so that a failure can be replayed;
KVSTORE_TORTURE_SEED=N picks another one, and KVSTORE_TORTURE_FAILURES=DIR keeps the history
and the members' logs of a failing run there (default: under pytest's tmp_path).

The long soak is `make torture SEED=... MINUTES=...`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.testing.torture import SCHEDULES, run_schedule

CI_FAULT_S = 6.0
CI_SCHEDULES = [
    "kill-one",
    "kill-leader",
    "kill-majority",
    "kill-all",
    "pause-leader",
    "partition-minority",
    "isolate-leader",
    "bridge",
    "one-way",
    "slow-network",
    "torn-tail",
    "corrupt-middle",
    "lease-isolate-leader",
    "netns-isolate-leader",
    "netns-partition",
    "netns-netem",
]
SEED = int(os.environ.get("KVSTORE_TORTURE_SEED", "20250601"))


@pytest.mark.parametrize("name", CI_SCHEDULES)
def test_schedule(name: str, tmp_path: Path) -> None:
    failures_dir = Path(os.environ.get("KVSTORE_TORTURE_FAILURES", tmp_path / "failures"))
    verdict = run_schedule(SCHEDULES[name], SEED, fault_s=CI_FAULT_S, failures_dir=failures_dir)
    print(verdict.line())  # shown with -s or -rA: the recovery times measured
    if verdict.skipped is not None:
        pytest.skip(verdict.skipped)
    assert verdict.passed, f"KVSTORE_TORTURE_SEED={SEED}\n{verdict.report()}"
    assert verdict.recovery_s, "no recovery was measured"


def test_every_schedule_is_either_in_ci_or_soak_only() -> None:
    soak_only = {"pause-one", "mixed"}
    assert set(CI_SCHEDULES) | soak_only == set(SCHEDULES)


def test_soak_command_prints_one_verdict_per_schedule(tmp_path: Path) -> None:
    failures = tmp_path / "failures"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvstore.testing.torture",
            "--seed",
            "3",
            "--minutes",
            "0.3",
            "--schedules",
            "pause-one",
            "--fault-seconds",
            "2",
            "--failures-dir",
            str(failures),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    verdicts = [line for line in result.stdout.splitlines() if line.startswith("pause-one ")]
    assert verdicts, result.stdout + result.stderr
    assert all(" PASS " in line for line in verdicts), result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert not failures.exists() or not any(failures.iterdir())

"""Torture schedules over mutual TLS (what `make torture TLS=1` runs, bounded): faults, then a
linearizable history and recovery, with every member and client connection on TLS.

`kill-leader` reconnects every peer link through new TLS handshakes; `corrupt-middle` removes a
member, wipes it and adds it back (a member re-dialing with its certificate after a restart).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvstore.testing.torture import SCHEDULES, run_schedule

FAULT_S = 6.0
SEED = int(os.environ.get("KVSTORE_TORTURE_SEED", "20250601"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kill-leader", "corrupt-middle"])
def test_schedule_over_tls(name: str, tmp_path: Path) -> None:
    verdict = run_schedule(
        SCHEDULES[name], SEED, fault_s=FAULT_S, failures_dir=tmp_path / "failures", tls=True
    )
    print(verdict.line())
    assert verdict.skipped is None, verdict.skipped
    assert verdict.passed, f"KVSTORE_TORTURE_SEED={SEED} (tls)\n{verdict.report()}"
    assert verdict.recovery_s, "no recovery was measured"

"""The side-by-side comparison (`benchmarks/compare.py`): ratios, targets, skipped peers.

The comparison lives in the source checkout, not in the package; these tests import it from
there, as `make bench` runs it (`python -m benchmarks.compare` from the checkout's root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks.compare import (
    ETCD,
    PYSYNCOBJ,
    TARGETS,
    ComparisonReport,
    bench_peer,
    render_report,
)
from kvstore.bench.recorder import (
    FAILOVER,
    PUT_CONCURRENT,
    PUT_SEQUENTIAL,
    BenchSettings,
    QuietProgress,
    WorkloadResult,
    get_workload,
    skipped,
)
from kvstore.bench.workloads import KVSTORE, KVSTORE_EMBEDDED

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 120.0


def _result(system: str, workload: str, ops_per_s: float, p99_ms: float = 1.0) -> WorkloadResult:
    return WorkloadResult(system, workload, 100, 0, 1, 1.0, ops_per_s, 0.5, p99_ms)


def test_report_ratios_and_targets() -> None:
    lin_conc = get_workload("linearizable", concurrent=True)
    stale_seq = get_workload("stale", concurrent=False)
    report = ComparisonReport(BenchSettings())
    report.results += [
        _result(KVSTORE, PUT_SEQUENTIAL, 1500.0),
        _result(ETCD, PUT_SEQUENTIAL, 1000.0),
        _result(KVSTORE, PUT_CONCURRENT, 9000.0),
        _result(ETCD, PUT_CONCURRENT, 5000.0),
        _result(PYSYNCOBJ, PUT_CONCURRENT, 2000.0),
        _result(KVSTORE, lin_conc, 100.0),
        _result(KVSTORE_EMBEDDED, stale_seq, 400_000.0),
        _result(KVSTORE, FAILOVER, 0.0, p99_ms=1200.0),
    ]
    assert report.ratio(PUT_CONCURRENT, KVSTORE, PYSYNCOBJ) == pytest.approx(4.5)
    assert report.ratio(lin_conc, KVSTORE, ETCD) is None  # etcd did not run it
    verdicts = {target.label: (measured, passed) for target, measured, passed in report.verdicts()}
    assert len(verdicts) == len(TARGETS)
    assert verdicts["sequential writes >= 1.5x etcd"] == (pytest.approx(1.5), True)
    assert verdicts["concurrent writes >= 2x etcd"] == (pytest.approx(1.8), False)
    assert verdicts["concurrent writes >= 3x PySyncObj"] == (pytest.approx(4.5), True)
    assert verdicts["linearizable reads, 256 in flight >= 3x etcd"] == (None, None)
    assert verdicts["stale reads via kvstore.Node >= 300,000/s"] == (400_000.0, True)
    assert verdicts["failover (kill -9 leader) < 1 s"] == (1200.0, False)

    data = json.loads(json.dumps(report.to_json()))
    assert {r["baseline"] for r in data["ratios"]} == {ETCD, PYSYNCOBJ}
    assert len(data["results"]) == 8

    console = Console(record=True, width=140)
    render_report(report, console)
    text = console.export_text()
    assert "4.50" in text and "1.80" in text and "missed" in text


class _Unavailable:
    """A peer harness whose system is not installed here."""

    def __init__(self) -> None:
        self.runs = 0

    def available(self) -> str | None:
        return "not installed (apt-get install it)"

    def run(self, settings: BenchSettings, progress: object) -> list[WorkloadResult]:
        self.runs += 1
        return []


class _Notes(QuietProgress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, message: str) -> None:
        self.lines.append(message)


def test_a_peer_that_is_not_installed_is_skipped_with_its_reason() -> None:
    peer, progress = _Unavailable(), _Notes()
    (row,) = bench_peer(peer, ETCD, BenchSettings(ops=10), progress)
    assert peer.runs == 0
    assert (row.system, row.ops) == (ETCD, 0)
    assert row.note == "skipped: not installed (apt-get install it)"
    assert any("etcd skipped" in line and "apt-get" in line for line in progress.lines)


def test_the_script_runs_from_the_checkout_and_skips_a_missing_peer(tmp_path: Path) -> None:
    """`python -m benchmarks.compare`, as `make bench` runs it: no path set up beforehand."""
    out = tmp_path / "compare.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["KVSTORE_BENCH_ETCD"] = str(tmp_path / "no-etcd-here")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "--systems", ETCD, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "etcd skipped" in done.stdout, done.stdout
    (row,) = json.loads(out.read_text())["results"]
    assert row["system"] == ETCD and row["ops"] == 0
    assert row["note"].startswith("skipped: etcd is not installed")


def test_notes_are_printed_as_written_not_as_markup() -> None:
    """A skipped peer's note quotes an install command with `[bench]`; rich would take that for
    a style tag and drop it."""
    report = ComparisonReport(BenchSettings())
    install = "pip install -e '.[bench]'"
    report.results.append(skipped(PYSYNCOBJ, PUT_SEQUENTIAL, f"skipped: run {install}"))
    console = Console(record=True, width=200)
    render_report(report, console)
    assert install in console.export_text()

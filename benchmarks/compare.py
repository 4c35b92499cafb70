"""kvstore side by side with etcd and PySyncObj: the same workloads, one table, the ratios.

Run from the source checkout (`make bench` does, after `benchmarks/install_peers.sh`):

    python -m benchmarks.compare [--ops N] [--concurrency N] [--json FILE] [--consensus raft]

kvstore runs as `kvstore bench` runs it (`kvstore.bench.workloads`); each peer in
`benchmarks/peers/` runs the same workloads with the same recorder, as 3 processes on 127.0.0.1.
A peer that is not installed is skipped with a message saying how to install it. The table
shows kvstore's ratio against each peer, and the goals of the performance issue (`TARGETS`) are
checked against figures of the same run.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape

from benchmarks.peers import etcd, pysyncobj_peer
from kvstore.bench.command import (
    LEGEND,
    BarProgress,
    figures,
    find,
    machine,
    print_notes,
    results_table,
    run_systems,
    wide_console,
    workload_label,
)
from kvstore.bench.recorder import (
    FAILOVER,
    PUT_CONCURRENT,
    PUT_SEQUENTIAL,
    WORKLOADS,
    BenchSettings,
    Progress,
    WorkloadResult,
    get_workload,
    skipped,
)
from kvstore.bench.workloads import (
    KVSTORE,
    KVSTORE_EMBEDDED,
    bench_kvstore_client,
    bench_kvstore_embedded,
)

ETCD = etcd.ETCD
PYSYNCOBJ = pysyncobj_peer.PYSYNCOBJ
PEERS = (ETCD, PYSYNCOBJ)
"""Peer systems, in the order of the table's ratio columns."""

SYSTEMS = (KVSTORE, KVSTORE_EMBEDDED, *PEERS)
SYSTEM_LABELS = {
    KVSTORE: "kvstore",
    KVSTORE_EMBEDDED: "kvstore Node",
    ETCD: "etcd",
    PYSYNCOBJ: "PySyncObj",
}
"""Names in the table (the JSON keeps the system ids)."""


class PeerModule(Protocol):
    """What each `benchmarks.peers.<peer>` module provides."""

    def available(self) -> str | None:
        """None when the peer can run here, else why not (shown in the table)."""

    def run(self, settings: BenchSettings, progress: Progress) -> list[WorkloadResult]:
        """Start the peer's 3-process cluster, run its workloads, stop it."""


PEER_MODULES: dict[str, PeerModule] = {ETCD: etcd, PYSYNCOBJ: pysyncobj_peer}


def bench_peer(
    module: PeerModule, name: str, settings: BenchSettings, progress: Progress
) -> list[WorkloadResult]:
    """Run one peer, or one row saying why it was skipped."""
    reason = module.available()
    if reason is not None:
        progress.note(f"[yellow]{name} skipped:[/yellow] {escape(reason)}")
        return [skipped(name, PUT_SEQUENTIAL, f"skipped: {reason}")]
    return module.run(settings, progress)


# --- report -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One goal of the performance issue, checked against figures of the same run."""

    label: str
    workload: str
    system: str
    minimum: float
    """Lowest passing value: a ratio (kvstore / baseline) or an absolute ops/s."""
    baseline: str | None = None
    """The peer system the ratio is against; None for an absolute figure."""
    maximum_ms: float | None = None
    """For latency goals (failover): the highest passing p99 in milliseconds."""


TARGETS = (
    Target("sequential writes >= 1.5x etcd", PUT_SEQUENTIAL, KVSTORE, 1.5, ETCD),
    Target("concurrent writes >= 2x etcd", PUT_CONCURRENT, KVSTORE, 2.0, ETCD),
    Target("concurrent writes >= 3x PySyncObj", PUT_CONCURRENT, KVSTORE, 3.0, PYSYNCOBJ),
    Target(
        "linearizable reads, 256 in flight >= 3x etcd",
        get_workload("linearizable", concurrent=True),
        KVSTORE,
        3.0,
        ETCD,
    ),
    Target(
        "stale reads via kvstore.Node >= 300,000/s",
        get_workload("stale", concurrent=False),
        KVSTORE_EMBEDDED,
        300_000.0,
    ),
    Target("failover (kill -9 leader) < 1 s", FAILOVER, KVSTORE, 0.0, maximum_ms=1000.0),
)


@dataclass
class ComparisonReport:
    """Every result of one run, the targets' verdicts, and where it ran."""

    settings: BenchSettings
    results: list[WorkloadResult] = field(default_factory=list)

    def find(self, system: str, workload: str) -> WorkloadResult | None:
        """The result of `system` for `workload`, if it ran (ops > 0)."""
        return find(self.results, system, workload)

    def ratio(self, workload: str, system: str, baseline: str) -> float | None:
        """`system`'s ops/s over `baseline`'s for `workload`, when both ran."""
        mine, theirs = self.find(system, workload), self.find(baseline, workload)
        if mine is None or theirs is None or theirs.ops_per_s <= 0:
            return None
        return mine.ops_per_s / theirs.ops_per_s

    def verdicts(self) -> list[tuple[Target, float | None, bool | None]]:
        """(target, measured value, passed) for each target; None where it could not run."""
        verdicts: list[tuple[Target, float | None, bool | None]] = []
        for target in TARGETS:
            measured: float | None
            if target.maximum_ms is not None:
                result = self.find(target.system, target.workload)
                measured = None if result is None else result.p99_ms
                passed = None if measured is None else measured < target.maximum_ms
            elif target.baseline is not None:
                measured = self.ratio(target.workload, target.system, target.baseline)
                passed = None if measured is None else measured >= target.minimum
            else:
                result = self.find(target.system, target.workload)
                measured = None if result is None else result.ops_per_s
                passed = None if measured is None else measured >= target.minimum
            verdicts.append((target, measured, passed))
        return verdicts

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON-ready data."""
        return {
            "settings": asdict(self.settings),
            "machine": machine(),
            "results": [result.to_json() for result in self.results],
            "ratios": [
                {"workload": w, "system": s, "baseline": b, "ratio": r}
                for w in WORKLOADS
                for s in (KVSTORE, KVSTORE_EMBEDDED)
                for b in PEERS
                if (r := self.ratio(w, s, b)) is not None
            ],
            "targets": [
                {"target": t.label, "measured": m, "passed": p} for t, m, p in self.verdicts()
            ],
        }


def render_report(report: ComparisonReport, console: Console) -> None:
    """Print the comparison table (one row per workload and system), the targets, the notes."""
    settings = report.settings
    table = results_table(settings, [f"x\n{SYSTEM_LABELS[peer]}" for peer in PEERS])
    for workload in WORKLOADS:
        rows = [r for s in SYSTEMS if (r := report.find(s, workload)) is not None]
        for number, result in enumerate(rows):
            ratios = []
            for peer in PEERS:
                ratio = (
                    None if result.system in PEERS else report.ratio(workload, result.system, peer)
                )
                ratios.append("" if ratio is None else f"{ratio:.2f}")
            table.add_row(
                workload_label(workload) if number == 0 else "",
                SYSTEM_LABELS[result.system],
                *figures(result),
                *ratios,
            )
    console.print(table)
    legend = LEGEND.format(concurrency=settings.concurrency)
    console.print(
        f"{legend} x peer: this row's ops/s over the peer's in the same run.", style="dim"
    )
    marks = {True: "[green]met   [/green]", False: "[red]missed[/red]", None: "[dim]n/a   [/dim]"}
    for target, measured, passed in report.verdicts():
        shown = "not measured" if measured is None else f"{measured:,.2f}"
        console.print(f"  {marks[passed]}  {target.label}: {shown}")
    print_notes(report.results, console)


def run_comparison(
    settings: BenchSettings, progress: Progress, *, systems: Sequence[str] = SYSTEMS
) -> ComparisonReport:
    """Run each named system's workloads in turn; a system that fails gets a row saying why."""
    settings.validate()
    runners: dict[str, Callable[[], list[WorkloadResult]]] = {
        KVSTORE: lambda: bench_kvstore_client(settings, progress),
        KVSTORE_EMBEDDED: lambda: bench_kvstore_embedded(settings, progress),
    }
    for peer in PEERS:
        runners[peer] = functools.partial(bench_peer, PEER_MODULES[peer], peer, settings, progress)
    results = run_systems([(system, runners[system]) for system in systems], progress)
    return ComparisonReport(settings, results)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every system, print the table, optionally write JSON; the exit status.

    0 when kvstore's workloads ran or were not asked for (targets missed are reported, not
    failed), 2 when kvstore itself could not be measured.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("--ops", type=int, default=5000, help="operations per workload")
    parser.add_argument("--concurrency", type=int, default=256, help="operations in flight")
    parser.add_argument("--json", help="also write the report to this JSON file")
    parser.add_argument("--consensus", default="raft", help="the protocol kvstore runs")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated systems to run (default: all of {', '.join(SYSTEMS)})",
    )
    args = parser.parse_args(argv)
    systems = [name for name in args.systems.split(",") if name]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    settings = BenchSettings(ops=args.ops, concurrency=args.concurrency, consensus=args.consensus)
    settings.validate()
    console = wide_console()
    console.rule(f"[bold]kvstore beside its peers[/bold] (consensus={args.consensus})")
    with BarProgress(console, enabled=console.is_terminal) as progress:
        report = run_comparison(settings, progress, systems=systems)
    render_report(report, console)
    if args.json is not None:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"wrote {args.json}")
    measured = KVSTORE not in systems or report.find(KVSTORE, PUT_SEQUENTIAL) is not None
    return 0 if measured else 2


if __name__ == "__main__":
    sys.exit(main())

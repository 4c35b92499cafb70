"""The `kvstore bench` command: throughput and latency of a local 3-member cluster.

Every workload uses 16-byte keys and 100-byte values against three members that are separate
processes on 127.0.0.1 with fsync on, through `kvstore.Client` and through a `kvstore.Node`
embedded in this process (`kvstore.bench.workloads`), then times a kill -9 failover. It shows
progress bars and a table (rich, the `cli` extra) and can write the figures as JSON.

The side-by-side comparison with etcd and PySyncObj is not part of the package: it runs the
same workloads from a source checkout, `python -m benchmarks.compare` (`make bench`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from kvstore.bench.recorder import (
    FAILOVER,
    PUT_SEQUENTIAL,
    WORKLOADS,
    BenchSettings,
    Progress,
    Trackable,
    WorkloadResult,
    skipped,
)
from kvstore.bench.workloads import (
    KVSTORE,
    KVSTORE_EMBEDDED,
    bench_kvstore_client,
    bench_kvstore_embedded,
)
from kvstore.errors import KVStoreError

COMPARISON_HINT = (
    "side by side with etcd and PySyncObj: `python -m benchmarks.compare` in a source checkout"
)


class BarProgress:
    """A `Progress` that draws bars (rich), fed from the recorders by one polling thread.

    The workloads never touch the display: a stale read takes about a microsecond, and updating
    a bar per operation would cost more than the operation. Disabled, `track` does nothing.
    """

    POLL_S = 0.1

    def __init__(self, console: Console | None = None, *, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._progress = RichProgress(
            TextColumn("{task.description:<44}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
        )
        self._tracked: dict[TaskID, Trackable] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._poller: threading.Thread | None = None

    def __enter__(self) -> BarProgress:
        if self.enabled:
            self._progress.start()
            self._poller = threading.Thread(target=self._poll, name="bench-progress", daemon=True)
            self._poller.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._closed.set()
        if self._poller is not None:
            self._poller.join()
        if self.enabled:
            self._progress.stop()

    def _poll(self) -> None:
        while not self._closed.wait(self.POLL_S):
            with self._lock:
                for task, recorder in self._tracked.items():
                    self._progress.update(task, completed=recorder.completed)

    @contextlib.contextmanager
    def track(self, label: str, recorder: Trackable) -> Iterator[None]:
        """Show a bar for `recorder` while the block runs."""
        if not self.enabled:
            yield
            return
        task = self._progress.add_task(label, total=recorder.ops_max)
        with self._lock:
            self._tracked[task] = recorder
        try:
            yield
        finally:
            with self._lock:
                del self._tracked[task]
            self._progress.update(task, completed=recorder.completed)

    def note(self, message: str) -> None:
        """Print a line (above the bars when they are shown)."""
        self.console.print(message)


def run_systems(
    runners: Sequence[tuple[str, Callable[[], list[WorkloadResult]]]],
    progress: Progress,
) -> list[WorkloadResult]:
    """Run each (system, runner) in turn; a system that fails gets one row saying why."""
    results: list[WorkloadResult] = []
    for system, runner in runners:
        try:
            results.extend(runner())
        except (KVStoreError, OSError, TimeoutError) as error:
            progress.note(f"[red]{system} failed:[/red] {escape(str(error))}")
            results.append(skipped(system, PUT_SEQUENTIAL, f"failed: {error}"))
    return results


def find(results: Sequence[WorkloadResult], system: str, workload: str) -> WorkloadResult | None:
    """The result of `system` for `workload`, if it ran (ops > 0)."""
    for result in results:
        if result.system == system and result.workload == workload and result.ops > 0:
            return result
    return None


def machine() -> dict[str, Any]:
    """Where the figures were measured, for the JSON report."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def workload_label(workload: str) -> str:
    """A short name for the table: `get_linearizable_concurrent` -> `get lin conc`."""
    return (
        workload.replace("linearizable", "lin")
        .replace("_sequential", " seq")
        .replace("_concurrent", " conc")
        .replace("_", " ")
    )


def _ms(value: float) -> str:
    # Three significant digits, but no more than four decimals: in-process reads take ~1 us.
    return f"{value:.3g}" if value >= 0.1 else f"{value:.4f}"


def figures(result: WorkloadResult) -> list[str]:
    """The ops/s, p50 and p99 cells of a row (failover is a time: p50 and worst of the trials)."""
    if result.workload == FAILOVER:
        return ["-", f"{result.p50_ms:.0f}", f"{result.p99_ms:.0f}"]
    return [f"{result.ops_per_s:,.0f}", _ms(result.p50_ms), _ms(result.p99_ms)]


def results_table(settings: BenchSettings, extra_columns: Sequence[str] = ()) -> Table:
    """An empty table with the workload, system and figure columns, then `extra_columns`."""
    # A caption, not a title: a title wraps to the table's width, which is narrow here.
    table = Table(
        caption=(
            f"3 members on 127.0.0.1, fsync on, {settings.key_bytes}-byte keys, "
            f"{settings.value_bytes}-byte values"
        ),
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("workload", no_wrap=True)
    table.add_column("system", no_wrap=True)
    for name in ("ops/s", "p50 ms", "p99 ms", *extra_columns):
        table.add_column(name, justify="right")
    return table


LEGEND = (
    "seq: one operation at a time; conc: {concurrency} in flight; lin: linearizable; "
    "kvstore Node: embedded, in this process; failover: kill -9 of the leader to the first "
    "acknowledged write (p50 and worst of the trials)."
)


def render_results(
    settings: BenchSettings, results: Sequence[WorkloadResult], console: Console
) -> None:
    """Print kvstore's table (one row per workload and way in), the legend and the notes."""
    table = results_table(settings)
    labels = {KVSTORE: "kvstore", KVSTORE_EMBEDDED: "kvstore Node"}
    for workload in WORKLOADS:
        rows = [r for s in labels if (r := find(results, s, workload)) is not None]
        for number, result in enumerate(rows):
            label = workload_label(workload) if number == 0 else ""
            table.add_row(label, labels[result.system], *figures(result))
    console.print(table)
    console.print(LEGEND.format(concurrency=settings.concurrency), style="dim")
    print_notes(results, console)


def print_notes(results: Sequence[WorkloadResult], console: Console) -> None:
    """One dim line per result that carries a note (stopped early, skipped, failed)."""
    for result in results:
        if result.note:
            # A note quotes error messages and install commands (`.[bench]`): not markup.
            console.print(f"  [dim]{result.system} {result.workload}: {escape(result.note)}[/dim]")


def report_json(settings: BenchSettings, results: Sequence[WorkloadResult]) -> dict[str, Any]:
    """The settings, the machine and every result, as JSON-ready data."""
    return {
        "settings": asdict(settings),
        "machine": machine(),
        "results": [result.to_json() for result in results],
    }


def wide_console() -> Console:
    """A console for the report: off a terminal (a log, CI) rich assumes 80 columns, too narrow
    for the table."""
    return Console() if sys.stdout.isatty() else Console(width=120)


def run_bench(*, ops: int, concurrency: int, json_path: str | None, consensus: str = "raft") -> int:
    """The `kvstore bench` command: run kvstore's workloads, print the table, optionally JSON.

    Returns the exit status: 0 when the client's writes were measured, 2 when kvstore could not
    be measured.
    """
    settings = BenchSettings(ops=ops, concurrency=concurrency, consensus=consensus)
    settings.validate()
    console = wide_console()
    console.rule(f"[bold]kvstore bench[/bold] (consensus={consensus})")
    with BarProgress(console, enabled=console.is_terminal) as progress:
        results = run_systems(
            [
                (KVSTORE, lambda: bench_kvstore_client(settings, progress)),
                (KVSTORE_EMBEDDED, lambda: bench_kvstore_embedded(settings, progress)),
            ],
            progress,
        )
    render_results(settings, results, console)
    console.print(COMPARISON_HINT, style="dim")
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report_json(settings, results), indent=2) + "\n")
        console.print(f"wrote {json_path}")
    return 0 if find(results, KVSTORE, PUT_SEQUENTIAL) is not None else 2

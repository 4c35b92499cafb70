"""`kvstore demo` (`make demo`): a real 3-node cluster survives the loss of its leader.

It starts three `kvstore serve` processes on free loopback ports with their data in a temporary
folder, writes keys with a progress bar, kills the leader with SIGKILL, times the failover,
keeps writing, restarts the killed node, watches it catch up, then reads every acknowledged
key back from every node. It exits 1 if any acknowledged write was lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kvstore.client.client import Client
from kvstore.errors import KVStoreError
from kvstore.testing.local_cluster import LocalCluster, wait_until

WRITE_TIMEOUT_S = 2.0
FAILOVER_LIMIT_S = 30.0
CATCH_UP_LIMIT_S = 60.0
PROTOCOL_NAMES = {"raft": "Raft", "paxos": "Multi-Paxos"}
"""How the heading names each `--consensus` protocol."""


@dataclass
class DemoReport:
    """What the demo measured; printed as the closing table."""

    acknowledged: dict[bytes, bytes] = field(default_factory=dict)
    unknown_outcome: int = 0
    write_seconds: float = 0.0
    failover_s: float = 0.0
    old_leader: str = ""
    new_leader: str = ""
    catch_up_s: float = 0.0
    lost: dict[str, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return len(self.acknowledged) / self.write_seconds if self.write_seconds else 0.0


def _key(number: int) -> bytes:
    return b"demo/%06d" % number


def _value(number: int) -> bytes:
    return b"value-%06d-" % number + b"x" * 32


def _write_range(
    client: Client, first: int, count: int, report: DemoReport, progress: Progress, label: str
) -> None:
    task = progress.add_task(label, total=count)
    started = time.monotonic()
    for number in range(first, first + count):
        key, value = _key(number), _value(number)
        try:
            client.put(key, value, timeout_s=WRITE_TIMEOUT_S)
        except KVStoreError:
            report.unknown_outcome += 1
        else:
            report.acknowledged[key] = value
        progress.advance(task)
    report.write_seconds += time.monotonic() - started


def run_demo(*, keys: int = 3000, consensus: str = "raft") -> int:
    """Run the demo on a cluster running `consensus` ("raft" or "paxos"); returns the process
    exit status (0 = nothing acknowledged was lost)."""
    console = Console()
    report = DemoReport()
    protocol = PROTOCOL_NAMES.get(consensus, consensus)
    console.rule(f"[bold]kvstore demo[/bold]: a 3-node {protocol} cluster on 127.0.0.1")
    with LocalCluster(3, consensus=consensus) as cluster:
        console.print(f"data in [cyan]{cluster.base_dir}[/cyan]")
        for member in cluster:
            pid = member.process.pid if member.process is not None else "?"
            console.print(f"  started {member.node_id} (pid {pid}) on {member.address}")
        with Client(cluster.addresses, timeout_s=WRITE_TIMEOUT_S) as client:
            leader = cluster.wait_for_leader(client)
            console.print(f"leader elected: [bold green]{leader}[/bold green]")
            progress_columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*progress_columns, console=console) as progress:
                _write_range(client, 0, keys, report, progress, "writing")
            console.print(f"{len(report.acknowledged)} writes acknowledged")

            report.old_leader = leader
            console.print(f"[bold red]kill -9[/bold red] the leader {leader}")
            killed_at = time.monotonic()
            cluster.kill(leader)
            probe = keys
            while True:
                key, value = _key(probe), _value(probe)
                try:
                    client.put(key, value, timeout_s=WRITE_TIMEOUT_S)
                except KVStoreError:
                    report.unknown_outcome += 1
                    if time.monotonic() - killed_at > FAILOVER_LIMIT_S:
                        console.print("[red]no write was acknowledged after the failover[/red]")
                        return 1
                    continue
                finally:
                    probe += 1
                report.acknowledged[key] = value
                break
            report.failover_s = time.monotonic() - killed_at
            report.new_leader = cluster.wait_for_leader(client, exclude=leader)
            console.print(
                f"new leader: [bold green]{report.new_leader}[/bold green]; first write "
                f"acknowledged {report.failover_s * 1000:.0f} ms after the kill"
            )
            more = max(1, keys // 3)
            with Progress(*progress_columns, console=console) as progress:
                _write_range(client, probe, more, report, progress, "writing on 2 nodes")

            console.print(f"restarting {leader} from its data directory")
            restarted_at = time.monotonic()
            cluster.restart(leader)
            target = client.status(cluster.members[report.new_leader].address).commit_index
            with Progress(*progress_columns, console=console) as progress:
                task = progress.add_task(f"{leader} catching up", total=target)

                def caught_up() -> bool:
                    try:
                        applied = client.status(cluster.members[leader].address).applied_index
                    except KVStoreError:
                        return False
                    progress.update(task, completed=min(applied, target))
                    return applied >= target

                wait_until(caught_up, timeout_s=CATCH_UP_LIMIT_S, what=f"{leader} to catch up")
            report.catch_up_s = time.monotonic() - restarted_at

            console.print("reading every acknowledged key back from every node")
            for member in cluster:
                with Client([member.address], balancer="round_robin") as one:
                    lost = 0
                    for key, value in report.acknowledged.items():
                        if one.get(key, consistency="stale") != value:
                            lost += 1
                    report.lost[member.node_id] = lost
    _print_summary(console, report)
    return 0 if not any(report.lost.values()) else 1


def _print_summary(console: Console, report: DemoReport) -> None:
    table = Table(title="summary", show_header=False)
    table.add_row("writes acknowledged", str(len(report.acknowledged)))
    table.add_row(
        "writes with unknown outcome (timed out during failover)", str(report.unknown_outcome)
    )
    lost_total = sum(report.lost.values())
    style = "green" if lost_total == 0 else "bold red"
    table.add_row("acknowledged writes lost", f"[{style}]{lost_total}[/{style}]")
    for node_id, lost in sorted(report.lost.items()):
        table.add_row(f"  missing on {node_id}", str(lost))
    table.add_row("leader killed / new leader", f"{report.old_leader} -> {report.new_leader}")
    table.add_row(
        "failover (kill -9 to first acknowledged write)", f"{report.failover_s * 1000:.0f} ms"
    )
    table.add_row("restarted node caught up in", f"{report.catch_up_s:.2f} s")
    table.add_row("write throughput (sequential, 1 client)", f"{report.throughput:.0f} ops/s")
    console.print(table)

"""kvstore's own benchmark workloads, run small against real clusters on 127.0.0.1.

`kvstore bench` must be able to drive both ways of using kvstore: a client against three
`kvstore serve` processes, and a `kvstore.Node` in this process made leader of two others.
"""

from __future__ import annotations

from kvstore.bench.recorder import BenchSettings, QuietProgress, WorkloadResult
from kvstore.bench.workloads import (
    KVSTORE,
    KVSTORE_EMBEDDED,
    ClientWorkloads,
    EmbeddedWorkloads,
    client_cluster,
    embedded_node,
)

SMALL = BenchSettings(ops=30, concurrency=8, duration_s_max=30.0, concurrent_rounds_min=5)


def _check(results: list[WorkloadResult], system: str) -> None:
    assert len(results) == 8  # 2 puts, 3 read levels x (sequential, concurrent)
    for result in results:
        assert result.system == system
        assert result.ops > 0 and result.errors == 0 and result.note == "", result


def test_client_workloads_run_against_three_serve_processes() -> None:
    with client_cluster(SMALL) as (cluster, client):
        results = ClientWorkloads(client, cluster.addresses, SMALL, QuietProgress()).run_all()
    _check(results, KVSTORE)


def test_embedded_node_is_made_leader_and_runs_the_workloads() -> None:
    with embedded_node() as node:
        assert node.status().role == "leader"
        results = EmbeddedWorkloads(node, SMALL, QuietProgress()).run_all()
    _check(results, KVSTORE_EMBEDDED)

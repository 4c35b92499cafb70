"""Cluster benchmarks: kvstore beside etcd and PySyncObj, each as 3 processes on 127.0.0.1.

The same workloads as `kvstore bench` and `benchmarks/compare.py` (the code is shared, in
kvstore/bench/ and benchmarks/peers/), one pytest-benchmark test per system and workload. Each
test is one round of a bounded workload; its figures (ops/s, p50, p99 in ms) are in the test's
`extra_info`, and kvstore's tests also carry their ratio against each peer that ran earlier in
the same run (the peers' tests come first in this file). A peer that is not installed is
skipped with a message saying how to install it (`benchmarks/install_peers.sh`).

KVSTORE_BENCH_OPS sets the operations per workload (default 2000).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kvstore
from benchmarks.compare import PEERS
from benchmarks.peers import etcd, pysyncobj_peer
from kvstore.bench.recorder import (
    PUT_CONCURRENT,
    PUT_SEQUENTIAL,
    BenchError,
    BenchSettings,
    QuietProgress,
    WorkloadResult,
)
from kvstore.bench.workloads import (
    ClientWorkloads,
    EmbeddedWorkloads,
    client_cluster,
    embedded_node,
    measure_failover,
)

SETTINGS = BenchSettings(ops=int(os.environ.get("KVSTORE_BENCH_OPS", "2000")), concurrency=256)

_results: dict[tuple[str, str], WorkloadResult] = {}
"""Figures of this run so far, for the ratios: (system, workload) -> result."""

pytestmark = pytest.mark.timeout(600)


def _progress() -> QuietProgress:
    return QuietProgress()


def _bench(benchmark: Any, run: Callable[[], WorkloadResult]) -> WorkloadResult:
    """One round of `run`, its figures into extra_info, and the ratios against the peers."""
    result: WorkloadResult = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    _results[(result.system, result.workload)] = result
    benchmark.extra_info.update(
        ops=result.ops,
        errors=result.errors,
        concurrency=result.concurrency,
        ops_per_s=round(result.ops_per_s, 1),
        p50_ms=round(result.p50_ms, 6),
        p99_ms=round(result.p99_ms, 6),
    )
    if result.system not in PEERS:
        for peer in PEERS:
            theirs = _results.get((peer, result.workload))
            if theirs is not None and theirs.ops_per_s > 0:
                benchmark.extra_info[f"x_{peer}"] = round(result.ops_per_s / theirs.ops_per_s, 2)
    if result.note:
        benchmark.extra_info["note"] = result.note
    assert result.ops > 0, result.note
    assert result.errors <= SETTINGS.errors_max, result.note
    return result


# --- etcd ---------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def etcd_workloads() -> Iterator[etcd.EtcdWorkloads]:
    reason = etcd.available()
    if reason is not None:
        pytest.skip(reason)
    with etcd.EtcdCluster(3) as cluster:
        yield etcd.EtcdWorkloads(cluster, SETTINGS, _progress())


class TestEtcd:
    """etcd: 3 `etcd` processes; puts to the leader, reads spread over members."""

    def test_bench_cluster_etcd_put_sequential(self, benchmark: Any, etcd_workloads: Any) -> None:
        _bench(benchmark, etcd_workloads.put_sequential)

    def test_bench_cluster_etcd_put_concurrent(self, benchmark: Any, etcd_workloads: Any) -> None:
        _bench(benchmark, etcd_workloads.put_concurrent)

    @pytest.mark.parametrize("consistency", ["linearizable", "stale"])
    @pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
    def test_bench_cluster_etcd_get(
        self, benchmark: Any, etcd_workloads: Any, consistency: str, concurrent: bool
    ) -> None:
        _bench(benchmark, lambda: etcd_workloads.get(consistency, concurrent=concurrent))


# --- PySyncObj ----------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def pysyncobj_cluster() -> Iterator[pysyncobj_peer.PySyncObjCluster]:
    reason = pysyncobj_peer.available()
    if reason is not None:
        pytest.skip(reason)
    with pysyncobj_peer.PySyncObjCluster(3) as cluster:
        yield cluster


class TestPySyncObj:
    """PySyncObj: 3 processes with a ReplDict; the leader's process runs the workload."""

    def test_bench_cluster_pysyncobj_put_sequential(
        self, benchmark: Any, pysyncobj_cluster: Any
    ) -> None:
        settings = BenchSettings(ops=min(SETTINGS.ops, pysyncobj_peer.SEQUENTIAL_OPS_MAX))
        _bench(
            benchmark,
            lambda: pysyncobj_cluster.run_workload(
                PUT_SEQUENTIAL, settings, _progress(), concurrency=1
            ),
        )

    def test_bench_cluster_pysyncobj_put_concurrent(
        self, benchmark: Any, pysyncobj_cluster: Any
    ) -> None:
        _bench(
            benchmark,
            lambda: pysyncobj_cluster.run_workload(
                PUT_CONCURRENT,
                dataclasses.replace(SETTINGS, ops=SETTINGS.concurrent_ops),
                _progress(),
                concurrency=SETTINGS.concurrency,
            ),
        )


# --- kvstore through kvstore.Client -------------------------------------------------------------


@pytest.fixture(scope="class")
def kvstore_cluster() -> Iterator[tuple[Any, Any]]:
    try:
        with client_cluster(SETTINGS) as (cluster, client):
            yield cluster, client
    except BenchError as error:
        if "not complete" in str(error):
            pytest.skip(str(error))
        raise


@pytest.fixture(scope="class")
def client_workloads(kvstore_cluster: tuple[Any, Any]) -> ClientWorkloads:
    cluster, client = kvstore_cluster
    return ClientWorkloads(client, cluster.addresses, SETTINGS, _progress())


class TestKvstoreClient:
    """kvstore through kvstore.Client / kvstore.aio.Client against 3 `kvstore serve`."""

    def test_bench_cluster_kvstore_put_sequential(
        self, benchmark: Any, client_workloads: Any
    ) -> None:
        _bench(benchmark, client_workloads.put_sequential)

    def test_bench_cluster_kvstore_put_concurrent(
        self, benchmark: Any, client_workloads: Any
    ) -> None:
        _bench(benchmark, client_workloads.put_concurrent)

    @pytest.mark.parametrize("consistency", ["linearizable", "lease", "stale"])
    @pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
    def test_bench_cluster_kvstore_get(
        self, benchmark: Any, client_workloads: Any, consistency: str, concurrent: bool
    ) -> None:
        _bench(benchmark, lambda: client_workloads.get(consistency, concurrent=concurrent))

    def test_bench_cluster_kvstore_failover(self, benchmark: Any, kvstore_cluster: Any) -> None:
        """kill -9 of the leader while one client writes: p50 / worst time to the first ack."""
        cluster, client = kvstore_cluster
        with kvstore.Client(cluster.addresses, timeout_s=1.0) as observer:
            result = _bench(
                benchmark,
                lambda: measure_failover(cluster, client, SETTINGS, _progress(), observer=observer),
            )
        benchmark.extra_info["failover_worst_ms"] = round(result.p99_ms, 1)


# --- kvstore embedded: kvstore.Node in this process ---------------------------------------------


@pytest.fixture(scope="class")
def embedded_workloads() -> Iterator[EmbeddedWorkloads]:
    try:
        with embedded_node() as node:
            yield EmbeddedWorkloads(node, SETTINGS, _progress())
    except BenchError as error:
        if "not complete" in str(error):
            pytest.skip(str(error))
        raise


class TestKvstoreEmbedded:
    """kvstore through a kvstore.Node in this process, leader of 2 `kvstore serve`."""

    def test_bench_cluster_embedded_put_sequential(
        self, benchmark: Any, embedded_workloads: Any
    ) -> None:
        _bench(benchmark, embedded_workloads.put_sequential)

    def test_bench_cluster_embedded_put_concurrent(
        self, benchmark: Any, embedded_workloads: Any
    ) -> None:
        _bench(benchmark, embedded_workloads.put_concurrent)

    @pytest.mark.parametrize("consistency", ["linearizable", "lease", "stale"])
    @pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
    def test_bench_cluster_embedded_get(
        self, benchmark: Any, embedded_workloads: Any, consistency: str, concurrent: bool
    ) -> None:
        _bench(benchmark, lambda: embedded_workloads.get(consistency, concurrent=concurrent))

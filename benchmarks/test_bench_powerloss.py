"""What power-loss-safe checkpoints cost: A/B against LMDB without per-commit syncs.

Arm `safe` is the product (LMDB `sync=True, metasync=False`: one fdatasync per applied batch).
Arm `nosync` is the same code with LMDB opened `sync=False` in every `kvstore serve` process
(a `sitecustomize` on PYTHONPATH wraps `lmdb.open`): the durability before this design, which a
power cut could empty. Both run the same workloads through a 3-member `LocalCluster` (sequential
puts through `kvstore.Client`, then 256 in flight through `kvstore.aio.Client`), alternating
arms in one sitting, `KVSTORE_POWERLOSS_ROUNDS` rounds each (default 3); the min and median of
ops/s and p50 per arm and workload go to extra_info and stdout.

Run: `pytest benchmarks/test_bench_powerloss.py --benchmark-only -s`.
KVSTORE_BENCH_OPS sets the operations per workload (default 2000).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvstore.bench.recorder import (
    PUT_CONCURRENT,
    PUT_SEQUENTIAL,
    BenchSettings,
    QuietProgress,
    WorkloadResult,
)
from kvstore.bench.workloads import ClientWorkloads, client_cluster

SETTINGS = BenchSettings(ops=int(os.environ.get("KVSTORE_BENCH_OPS", "2000")), concurrency=256)
ROUNDS = int(os.environ.get("KVSTORE_POWERLOSS_ROUNDS", "3"))

_NOSYNC_SITECUSTOMIZE = '''
"""Benchmark arm `nosync`: every LMDB environment opened sync=False, as before."""
import lmdb

_open = lmdb.open


def _open_nosync(*args, **kwargs):
    kwargs["sync"] = False
    return _open(*args, **kwargs)


lmdb.open = _open_nosync
'''

pytestmark = pytest.mark.timeout(1800)


@contextlib.contextmanager
def _arm(name: str, patch_dir: Path) -> Iterator[None]:
    """Environment of the serve processes spawned inside: the `nosync` arm adds the patch."""
    saved = os.environ.get("PYTHONPATH")
    if name == "nosync":
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(patch_dir), saved]))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _round(arm: str, patch_dir: Path) -> list[WorkloadResult]:
    progress = QuietProgress()
    with _arm(arm, patch_dir), client_cluster(SETTINGS) as (cluster, client):
        workloads = ClientWorkloads(client, cluster.addresses, SETTINGS, progress)
        return [workloads.put_sequential(), workloads.put_concurrent()]


def test_powerloss_safe_lmdb_cost(benchmark: Any, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(_NOSYNC_SITECUSTOMIZE)
    figures: dict[tuple[str, str], list[WorkloadResult]] = {}

    def run() -> None:
        for _ in range(ROUNDS):
            for arm in ("safe", "nosync"):
                for result in _round(arm, tmp_path):
                    assert result.ops > 0 and result.errors <= SETTINGS.errors_max, result.note
                    figures.setdefault((arm, result.workload), []).append(result)

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    lines = []
    for workload in (PUT_SEQUENTIAL, PUT_CONCURRENT):
        medians = {}
        for arm in ("safe", "nosync"):
            results = figures[(arm, workload)]
            rates = [r.ops_per_s for r in results]
            p50s = [r.p50_ms for r in results]
            medians[arm] = statistics.median(rates)
            summary = {
                "ops_per_s_min": round(min(rates), 1),
                "ops_per_s_median": round(statistics.median(rates), 1),
                "p50_ms_min": round(min(p50s), 3),
                "p50_ms_median": round(statistics.median(p50s), 3),
            }
            benchmark.extra_info[f"{arm}_{workload}"] = summary
            lines.append(f"{workload:15} {arm:7} {summary}")
        ratio = medians["safe"] / medians["nosync"]
        benchmark.extra_info[f"safe_over_nosync_{workload}"] = round(ratio, 3)
        lines.append(f"{workload:15} safe/nosync median ops/s: {ratio:.3f}")
    print("\n" + "\n".join(lines))


APPLY_BATCHES = 500


@pytest.mark.parametrize("batch_entries", [1, 100])
def test_apply_batch_cost(benchmark: Any, tmp_path: Path, batch_entries: int) -> None:
    """The cost where it is paid: one `StateMachine.apply` (one LMDB commit) per batch, with
    the product's per-commit fdatasync against `sync=False`, alternating, 3 rounds each."""
    import lmdb

    from kvstore.consensus.types import Entry
    from kvstore.storage.commands import encode_put, encode_register
    from kvstore.storage.state_machine import StateMachine

    value = b"v" * 100
    times: dict[str, list[float]] = {"safe": [], "nosync": []}
    real_open = lmdb.open

    def one_round(arm: str, directory: Path) -> float:
        def open_arm(*args: Any, **kwargs: Any) -> lmdb.Environment:
            if arm == "nosync":
                kwargs["sync"] = False
            return real_open(*args, **kwargs)

        lmdb.open = open_arm
        try:
            with StateMachine(directory) as sm:
                sm.apply([Entry(1, 1, data=encode_register(1))])  # session id 1
                index = 1
                start = time.perf_counter()
                for _ in range(APPLY_BATCHES):
                    batch = []
                    for _ in range(batch_entries):
                        index += 1
                        data = encode_put(1, index - 1, b"key-%012d" % index, value)
                        batch.append(Entry(1, index, data=data))
                    sm.apply(batch)
                return (time.perf_counter() - start) / APPLY_BATCHES
        finally:
            lmdb.open = real_open

    def run() -> None:
        for round_number in range(3):
            for arm in ("safe", "nosync"):
                times[arm].append(one_round(arm, tmp_path / f"{arm}-{round_number}"))

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    for arm, values in times.items():
        benchmark.extra_info[f"{arm}_us_per_batch_min"] = round(min(values) * 1e6, 1)
        benchmark.extra_info[f"{arm}_us_per_batch_median"] = round(
            statistics.median(values) * 1e6, 1
        )
    print(
        f"\napply, {batch_entries} entries per batch, us per batch (min/median): "
        + ", ".join(
            f"{arm} {min(v) * 1e6:.0f}/{statistics.median(v) * 1e6:.0f}" for arm, v in times.items()
        )
    )

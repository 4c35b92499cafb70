"""Speed of the linearizability checker (kvstore.testing.linearizability).

The target: 10,000 operations over 50 keys from 10 clients checked in under 10 seconds. The
baseline in the same run is the least any checker must do: read every operation once, group
by key and sort each key's events (`test_bench_linearizability_baseline_sort`).
"""

from __future__ import annotations

from typing import Any

import pytest

from kvstore.testing.history import Operation, synthetic_history
from kvstore.testing.linearizability import check_history

TARGET_S = 10.0


def _baseline(history: list[Operation]) -> int:
    by_key: dict[bytes, list[tuple[int, int]]] = {}
    for op in history:
        events = by_key.setdefault(op.key, [])
        events.append((op.invoke_ns, 0))
        if op.complete_ns is not None:
            events.append((op.complete_ns, 1))
    return sum(len(sorted(events)) for events in by_key.values())


@pytest.fixture(scope="module")
def target_history() -> list[Operation]:
    return synthetic_history(11, operations=10_000, keys=50, clients=10, unknown_fraction=0.02)


def test_bench_linearizability_baseline_sort(
    benchmark: Any, target_history: list[Operation]
) -> None:
    assert benchmark(_baseline, target_history) > 10_000


def test_bench_linearizability_check_target(
    benchmark: Any, target_history: list[Operation]
) -> None:
    """10,000 operations, 50 keys, 10 clients, 2% of writes with an unknown outcome."""
    result = benchmark(check_history, target_history)
    assert result.ok, result.report()
    assert benchmark.stats.stats.max < TARGET_S


@pytest.mark.parametrize(
    ("operations", "keys", "unknown_fraction"),
    [(10_000, 5, 0.0), (10_000, 5, 0.05), (4_000, 1, 0.0), (2_000, 1, 0.05)],
)
def test_bench_linearizability_check_contended(
    benchmark: Any, operations: int, keys: int, unknown_fraction: float
) -> None:
    """Few keys, 10 clients: about ten calls in flight on each key at any moment."""
    history = synthetic_history(
        12, operations=operations, keys=keys, clients=10, unknown_fraction=unknown_fraction
    )
    result = benchmark.pedantic(check_history, args=(history,), rounds=3, iterations=1)
    assert result.ok, result.report()

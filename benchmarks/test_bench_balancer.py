"""Cost of one balancer pick (plus its observe, for the adaptive ones), against a bare baseline.

The baseline is the least any balancer could do: the next item of `itertools.cycle`. Each test
times a batch of 1000 picks over three endpoints, so the per-pick cost is the mean / 1000.
Run with `make bench` or `pytest benchmarks/test_bench_balancer.py --benchmark-only`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest

from kvstore.client.balancer import (
    Balancer,
    LeastLatency,
    RandomBalancer,
    RoundRobin,
    WeightedRoundRobin,
)

ENDPOINTS = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
PICKS = 1000


def test_bench_balancer_pick_baseline(benchmark: pytest.FixtureDef) -> None:  # type: ignore[type-arg]
    cycle = itertools.cycle(ENDPOINTS)

    def picks() -> None:
        for _ in range(PICKS):
            next(cycle)

    benchmark(picks)


BALANCERS: dict[str, Callable[[], Balancer]] = {
    "round_robin": RoundRobin,
    "random": lambda: RandomBalancer(random.Random(1)),
    "weighted": lambda: WeightedRoundRobin(dict(zip(ENDPOINTS, (5, 1, 1), strict=True))),
    "latency": lambda: LeastLatency(random.Random(1)),
}


@pytest.mark.parametrize("name", list(BALANCERS))
def test_bench_balancer_pick(benchmark: pytest.FixtureDef, name: str) -> None:  # type: ignore[type-arg]
    balancer = BALANCERS[name]()
    pick = balancer.pick

    def picks() -> None:
        for _ in range(PICKS):
            pick(ENDPOINTS)

    benchmark(picks)


@pytest.mark.parametrize("name", ["weighted", "latency"])
def test_bench_balancer_pick_observe(benchmark: pytest.FixtureDef, name: str) -> None:  # type: ignore[type-arg]
    balancer = BALANCERS[name]()
    pick, observe = balancer.pick, balancer.observe

    def picks() -> None:
        for i in range(PICKS):
            endpoint = pick(ENDPOINTS)
            observe(endpoint, 0.001, i % 100 != 0)  # one failure in a hundred

    benchmark(picks)

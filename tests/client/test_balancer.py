"""Balancers: the order and spread of picks, and how they react to failures and latency."""

from __future__ import annotations

import collections
import itertools
import os
import random
import threading

import pytest

from kvstore.client.balancer import (
    Balancer,
    LeastLatency,
    RandomBalancer,
    RoundRobin,
    WeightedRoundRobin,
    make_balancer,
)
from kvstore.errors import InvalidArgumentError

SEED = int(os.environ.get("KVSTORE_TEST_SEED", "20240611"))


@pytest.fixture(autouse=True)
def _print_seed() -> None:
    print(f"KVSTORE_TEST_SEED={SEED}")  # shown by pytest when a test fails


def test_round_robin_cycles_through_every_endpoint_in_order() -> None:
    balancer = RoundRobin()
    endpoints = ["a", "b", "c"]
    picks = [balancer.pick(endpoints) for _ in range(9)]
    assert picks == endpoints * 3


def test_round_robin_copes_with_a_shorter_list() -> None:
    balancer = RoundRobin()
    for _ in range(5):
        balancer.pick(["a", "b", "c"])
    picks = {balancer.pick(["x", "y"]) for _ in range(4)}
    assert picks == {"x", "y"}


def test_smooth_weighted_5_1_1_gives_the_nginx_sequence() -> None:
    # The sequence nginx documents for weights 5, 1, 1 in ngx_http_upstream_round_robin.c.
    balancer = WeightedRoundRobin({"a": 5, "b": 1, "c": 1})
    one_period = [balancer.pick(["a", "b", "c"]) for _ in range(7)]
    assert one_period == ["a", "a", "b", "a", "c", "a", "a"]


def test_smooth_weighted_never_picks_the_heavy_endpoint_five_times_in_a_row() -> None:
    balancer = WeightedRoundRobin({"a": 5, "b": 1, "c": 1})
    picks = "".join(balancer.pick(["a", "b", "c"]) for _ in range(700))
    assert "aaaaa" not in picks
    # A plain weighted rotation would give "aaaaabc"; the smooth one interleaves b and c.
    assert picks.count("b") == picks.count("c") == 100


@pytest.mark.parametrize(
    "weights", [{"a": 5, "b": 1, "c": 1}, {"a": 3, "b": 2}, {"a": 0.5, "b": 1.5}]
)
def test_smooth_weighted_proportions_match_the_weights(weights: dict[str, float]) -> None:
    balancer = WeightedRoundRobin(weights)
    total = sum(weights.values())
    picks = 4000
    counts = collections.Counter(balancer.pick(list(weights)) for _ in range(picks))
    for endpoint, weight in weights.items():
        assert counts[endpoint] == pytest.approx(picks * weight / total, abs=2)


def test_failures_reduce_the_share_and_it_recovers_gradually() -> None:
    balancer = WeightedRoundRobin({"a": 1, "b": 1}, max_fails=2, recovery_picks=10)
    endpoints = ["a", "b"]
    balancer.observe("a", None, False)
    balancer.observe("a", None, False)
    assert balancer.effective_weight("a") == 0
    # Right after the failures "a" gets (almost) nothing...
    first = collections.Counter(balancer.pick(endpoints) for _ in range(6))
    assert first["a"] <= 1
    # ...its weight climbs back pick by pick, never in one jump...
    seen = [balancer.effective_weight("a")]
    for _ in range(12):
        balancer.pick(endpoints)
        seen.append(balancer.effective_weight("a"))
    assert all(later >= earlier for earlier, later in itertools.pairwise(seen))
    assert len(set(seen)) > 3
    # ...and then it is back to an even split.
    assert balancer.effective_weight("a") == 1
    later = collections.Counter(balancer.pick(endpoints) for _ in range(100))
    assert later["a"] == pytest.approx(50, abs=1)


def test_a_success_does_not_change_the_weight() -> None:
    balancer = WeightedRoundRobin({"a": 2})
    balancer.observe("a", 0.001, True)
    assert balancer.effective_weight("a") == 2


def test_random_with_a_seed_is_reproducible_and_roughly_uniform() -> None:
    endpoints = ["a", "b", "c", "d"]
    first = RandomBalancer(random.Random(SEED))
    second = RandomBalancer(random.Random(SEED))
    picks = [first.pick(endpoints) for _ in range(4000)]
    assert picks == [second.pick(endpoints) for _ in range(4000)]
    counts = collections.Counter(picks)
    for endpoint in endpoints:
        # 1000 expected; 5 standard deviations (~27 each) of slack.
        assert 860 <= counts[endpoint] <= 1140, counts


def test_least_latency_prefers_the_faster_endpoint() -> None:
    balancer = LeastLatency(random.Random(SEED), explore=0.0)
    endpoints = ["slow", "fast", "medium"]
    for _ in range(5):
        balancer.observe("slow", 0.050, True)
        balancer.observe("medium", 0.010, True)
        balancer.observe("fast", 0.001, True)
    counts = collections.Counter(balancer.pick(endpoints) for _ in range(3000))
    # Power of two choices: the slowest never wins a comparison, the fastest always does.
    assert counts["slow"] == 0
    assert counts["fast"] == pytest.approx(2000, rel=0.1)


def test_least_latency_tries_unmeasured_endpoints_and_avoids_failing_ones() -> None:
    balancer = LeastLatency(random.Random(SEED), explore=0.0)
    balancer.observe("a", 0.010, True)
    assert balancer.pick(["a", "new"]) == "new"
    balancer.observe("new", None, False)
    assert balancer.latency_s("new") == pytest.approx(1.0)
    assert balancer.pick(["a", "new"]) == "a"


def test_least_latency_explores_the_slower_one_sometimes() -> None:
    balancer = LeastLatency(random.Random(SEED), explore=0.1)
    balancer.observe("slow", 0.5, True)
    balancer.observe("fast", 0.001, True)
    counts = collections.Counter(balancer.pick(["slow", "fast"]) for _ in range(2000))
    assert 100 <= counts["slow"] <= 300


def test_make_balancer_builds_by_name_and_passes_instances_through() -> None:
    assert isinstance(make_balancer("weighted", {"a": 2}), WeightedRoundRobin)
    assert isinstance(make_balancer("round_robin"), RoundRobin)
    assert isinstance(make_balancer("random"), RandomBalancer)
    assert isinstance(make_balancer("latency"), LeastLatency)
    mine = RoundRobin()
    assert make_balancer(mine) is mine
    with pytest.raises(InvalidArgumentError):
        make_balancer("fastest")
    with pytest.raises(InvalidArgumentError):
        make_balancer(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        WeightedRoundRobin({"a": 0})
    with pytest.raises(InvalidArgumentError):
        RoundRobin().pick([])


@pytest.mark.parametrize(
    "balancer",
    [RoundRobin(), WeightedRoundRobin({"a": 3, "b": 1}), RandomBalancer(random.Random(SEED))],
    ids=["round_robin", "weighted", "random"],
)
def test_balancers_are_thread_safe(balancer: Balancer) -> None:
    endpoints = ["a", "b"]
    per_thread = 2000
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def work() -> None:
        mine = collections.Counter(balancer.pick(endpoints) for _ in range(per_thread))
        with lock:
            counts.update(mine)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts.values()) == 8 * per_thread
    if not isinstance(balancer, RandomBalancer):
        # Deterministic balancers keep their exact proportions under contention.
        expected_a = 8 * per_thread * (3 / 4 if isinstance(balancer, WeightedRoundRobin) else 1 / 2)
        assert counts["a"] == pytest.approx(expected_a, abs=1)

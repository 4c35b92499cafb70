"""The benchmark's own machinery: percentiles, the recorder, the runners, the failover timing.

If these are wrong, every figure `kvstore bench` prints is wrong, and so is every figure of the
comparison with its peers (`benchmarks/compare.py`), which times them with the same code.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from kvstore.bench.recorder import (
    FAILOVER,
    BenchSettings,
    OperationError,
    QuietProgress,
    Recorder,
    bench_key,
    bench_value,
    percentile,
    run_async,
    run_sequential,
    run_threaded,
)
from kvstore.bench.workloads import FAILOVER_TRIALS, measure_failover
from kvstore.errors import UnavailableError
from kvstore.options import Status


def _recorder(ops: int, *, errors_max: int = 10, duration_s_max: float = 30.0) -> Recorder:
    return Recorder(ops_max=ops, errors_max=errors_max, duration_s_max=duration_s_max)


def test_percentile_is_the_nearest_rank(seed: int) -> None:
    """The result is a sample, at least `fraction` of the samples are <= it, and fewer than
    that are below it: the definition of the nearest-rank percentile, checked on random data."""
    rng = random.Random(seed)
    for _ in range(300):
        values = sorted(rng.randrange(1000) for _ in range(rng.randrange(1, 60)))
        fraction = rng.choice([0.5, 0.99, 0.01, 0.25, 1.0, rng.random() or 0.5])
        result = percentile(values, fraction)
        at_or_below = sum(1 for v in values if v <= result)
        below = sum(1 for v in values if v < result)
        assert result in values, f"seed {seed}"
        assert at_or_below >= fraction * len(values) - 1e-9, f"seed {seed}: {values} {fraction}"
        assert below < fraction * len(values), f"seed {seed}: {values} {fraction}"


def test_percentile_edges() -> None:
    assert percentile([], 0.5) == 0
    assert percentile([7], 0.99) == 7
    # 100 samples: p99 is the 99th smallest, p50 the 50th (not an interpolation).
    values = list(range(1, 101))
    assert percentile(values, 0.99) == 99
    assert percentile(values, 0.50) == 50
    with pytest.raises(ValueError):
        percentile(values, 0.0)


def test_keys_and_values_have_the_benchmark_sizes() -> None:
    keys = {bench_key(n) for n in (0, 1, 9_999_999_999)}
    assert {len(k) for k in keys} == {16} and len(keys) == 3
    assert len(bench_value()) == 100 and len(bench_value(1000)) == 1000


def test_sequential_runs_each_number_once_in_order_and_times_them() -> None:
    seen: list[int] = []
    recorder = _recorder(50)
    run_sequential(seen.append, recorder)
    result = recorder.result("s", "w", concurrency=1)
    assert seen == list(range(50))
    assert (result.ops, result.errors, result.note) == (50, 0, "")
    assert 0 < result.p50_ms <= result.p99_ms
    assert result.ops_per_s == pytest.approx(50 / result.elapsed_s)


def test_errors_are_counted_and_a_broken_workload_stops() -> None:
    def fails_on_thirds(number: int) -> None:
        if number % 3 == 0:
            raise UnavailableError("no leader")

    recorder = _recorder(30)
    run_sequential(fails_on_thirds, recorder)
    result = recorder.result("s", "w", concurrency=1)
    assert (result.ops, result.errors) == (20, 10)
    assert "no leader" in result.note

    def always_fails(_number: int) -> None:
        raise OperationError("HTTP 500")

    recorder = _recorder(1000, errors_max=5)
    run_sequential(always_fails, recorder)
    result = recorder.result("s", "w", concurrency=1)
    assert result.errors == 6 and result.ops == 0
    assert "stopped after 6 errors" in result.note


def test_unexpected_exceptions_are_not_swallowed() -> None:
    def buggy(_number: int) -> None:
        raise KeyError("a bug in the harness")

    with pytest.raises(KeyError):
        run_sequential(buggy, _recorder(5))


def test_time_limit_stops_the_workload_and_says_so() -> None:
    stop_after = threading.Event()

    def slow(number: int) -> None:
        # Each operation takes at least 5 ms; the limit is 50 ms, so far fewer than 10**6 run.
        stop_after.wait(0.005)

    recorder = _recorder(10**6, duration_s_max=0.05)
    run_sequential(slow, recorder)
    result = recorder.result("s", "w", concurrency=1)
    assert 0 < result.ops < 100
    assert "limit" in result.note


def test_threaded_runner_keeps_concurrency_in_flight() -> None:
    """All `concurrency` operations must be in flight together: a barrier of that size only
    opens then (it raises BrokenBarrierError, failing the run, if fewer ever arrive)."""
    concurrency = 8
    barrier = threading.Barrier(concurrency, timeout=10)
    seen: list[int] = []
    lock = threading.Lock()

    def op(number: int) -> None:
        if number < concurrency:
            barrier.wait()
        with lock:
            seen.append(number)

    recorder = _recorder(200)
    run_threaded(op, recorder, concurrency=concurrency)
    assert sorted(seen) == list(range(200))
    assert recorder.result("s", "w", concurrency=concurrency).ops == 200


def test_async_runner_keeps_concurrency_in_flight() -> None:
    concurrency = 16
    seen: list[int] = []

    async def main() -> None:
        in_flight = 0
        all_in = asyncio.Event()

        async def op(number: int) -> None:
            nonlocal in_flight
            in_flight += 1
            if in_flight == concurrency:
                all_in.set()
            if number < concurrency:
                await asyncio.wait_for(all_in.wait(), timeout=10)
            in_flight -= 1
            seen.append(number)

        await run_async(op, recorder, concurrency=concurrency)

    recorder = _recorder(500)
    asyncio.run(main())
    assert sorted(seen) == list(range(500))
    assert recorder.result("s", "w", concurrency=concurrency).ops == 500


class _FakeCluster:
    """Stands in for LocalCluster + Client: writes fail for `outage_s` after a kill."""

    def __init__(self, outage_s: float) -> None:
        self.outage_s = outage_s
        self.down_until = 0.0
        self.kills = 0
        self.restarts = 0
        self.pause = threading.Event()  # never set: wait(t) paces the writer without a busy loop

    def statuses(self, _client: object) -> dict[str, Status]:
        return {
            node_id: Status(node_id, "follower", 1, "n1", 10, 10, {}) for node_id in ("n1", "n2")
        }

    def leader(self, _client: object) -> str | None:
        # The new leader is elected halfway through the outage; writes resume at its end.
        elected = time.monotonic() >= self.down_until - self.outage_s / 2
        return f"n{self.kills % 3 + 1}" if elected else None

    def wait_for_leader(self, _client: object, *, timeout_s: float) -> str:
        return f"n{self.kills % 3 + 1}"

    def kill(self, _node_id: str) -> None:
        self.kills += 1
        self.down_until = time.monotonic() + self.outage_s

    def restart(self, _node_id: str) -> None:
        self.restarts += 1

    def put(self, _key: bytes, _value: bytes, *, timeout_s: float) -> None:
        self.pause.wait(0.0005)
        if time.monotonic() < self.down_until:
            raise UnavailableError("no leader")


def test_failover_is_timed_from_the_kill_to_the_first_ack_after_it() -> None:
    outage_s = 0.2
    fake = _FakeCluster(outage_s)
    result = measure_failover(fake, fake, BenchSettings(ops=100), QuietProgress())
    assert (fake.kills, fake.restarts) == (FAILOVER_TRIALS, FAILOVER_TRIALS)
    assert result.ops == FAILOVER_TRIALS and result.workload == FAILOVER
    # Writes acknowledged before the kill never count; the first one after the outage does.
    assert outage_s * 1000 <= result.p50_ms <= result.p99_ms < outage_s * 1000 + 500
    # The election is seen before the first write: at about half the outage, not later.
    elected_ms = result.note.split("answered status after ")[1].split(" ms")[0].split(", ")
    assert all(100 <= int(ms) < 200 for ms in elected_ms), result.note

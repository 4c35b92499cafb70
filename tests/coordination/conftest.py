"""The `store` fixture the coordination tests run against."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import kvstore
from kvstore.coordination import Compare, KeyValue, Op, RangeResult, TxnResult
from kvstore.testing.local_cluster import free_ports
from tests.coordination.fake_store import FakeStore, FakeWatch

JITTER_S_MAX = 0.0005


class JitteryStore(FakeStore):
    """The fake with a short random pause before each call: other threads run in between, so
    the recipes meet the interleavings a network would give them (seeded)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    def _pause(self) -> None:
        with self._rng_lock:
            pause_s = self._rng.random() * JITTER_S_MAX
        time.sleep(pause_s)

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout_s: float = 5.0,
    ) -> TxnResult:
        self._pause()
        return super().txn(compare, success, failure, timeout_s=timeout_s)

    def range(self, start: bytes, end: bytes | None = None, **kwargs: Any) -> RangeResult:
        self._pause()
        return super().range(start, end, **kwargs)

    def get_kv(self, key: bytes, *, revision: int | None = None) -> KeyValue | None:
        self._pause()
        return super().get_kv(key, revision=revision)

    def watch(self, key: bytes, **kwargs: Any) -> FakeWatch:
        self._pause()
        return super().watch(key, **kwargs)


NODE_OPTIONS = kvstore.Options(tick_s=0.025, election_ticks=12)
"""Short ticks: a single member elects itself within a fraction of a second."""


def _node_lacks(request: pytest.FixtureRequest) -> list[str]:
    """The §2b methods the test calls on its store (names it reads, `store.watch` among them;
    every later one for a recipe test) that `kvstore.Node` does not have yet."""
    names = set(request.function.__code__.co_names)
    if not request.module.__name__.endswith("test_store_contract"):
        names.update(_NODE_LATER)  # the recipes watch and keep leases alive
    return [name for name in _NODE_LATER if name in names and not hasattr(kvstore.Node, name)]


_NODE_LATER = ("watch", "keepalive", "time_to_live", "lease", "compact")
"""Coordination methods the embedded node gains in later steps of issue 13."""


@pytest.fixture(params=["fake", "jittery", "node"])
def store(request: pytest.FixtureRequest, seed: int, tmp_path: Path) -> Iterator[Any]:
    """A store with the §2b coordination methods: the in-memory fake, plain and jittery, and a
    started single-member `kvstore.Node` (a test that needs a method the node lacks yet is
    skipped for it); a `kvstore.Client` to one is one more parameter here."""
    if request.param == "fake":
        yield FakeStore()
    elif request.param == "jittery":
        yield JitteryStore(seed)
    else:
        lacking = _node_lacks(request)
        if lacking:
            pytest.skip(f"kvstore.Node has no {', '.join(lacking)} yet")
        (port,) = free_ports(1)
        with kvstore.Node(
            "n1", tmp_path / "n1", {"n1": f"127.0.0.1:{port}"}, options=NODE_OPTIONS
        ) as node:
            node.wait_for_leader()
            yield node

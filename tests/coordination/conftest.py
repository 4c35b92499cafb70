"""The `store` fixture the coordination tests run against."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from kvstore.coordination import Compare, KeyValue, Op, RangeResult, TxnResult
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


@pytest.fixture(params=["fake", "jittery"])
def store(request: pytest.FixtureRequest, seed: int) -> Iterator[Any]:
    """A store with the §2b coordination methods: the in-memory fake, plain and jittery (a
    started single-member `kvstore.Node`, or a `kvstore.Client` to one, is one more parameter
    here)."""
    if request.param == "fake":
        yield FakeStore()
    elif request.param == "jittery":
        yield JitteryStore(seed)

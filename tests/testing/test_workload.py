"""The workload runner, against in-memory fake clients, end to end with the checker."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from kvstore.errors import OperationTimeoutError, UnavailableError
from kvstore.testing.history import HistoryWriter, read_history
from kvstore.testing.linearizability import check_history
from kvstore.testing.workload import Workload, WorkloadConfig, final_reads


class FakeStore:
    """One copy of the data behind a lock: linearizable by construction. Optionally a lagging
    replica answers reads (`stale_reads`), which is not."""

    def __init__(self, *, stale_reads: bool = False) -> None:
        self.lock = threading.Lock()
        self.data: dict[bytes, bytes] = {}
        self.replica: dict[bytes, bytes] = {}
        self.stale_reads = stale_reads
        self.writes = 0

    def apply(self, kind: str, key: bytes, a: bytes | None, b: bytes | None) -> object:
        with self.lock:
            current = self.data.get(key)
            if kind == "get":
                source = self.replica if self.stale_reads else self.data
                return source.get(key)
            if kind == "put":
                assert a is not None
                self.data[key] = a
                result: object = None
            elif kind == "delete":
                result = self.data.pop(key, None) is not None
            else:
                result = current == a
                if result:
                    if b is None:
                        self.data.pop(key, None)
                    else:
                        self.data[key] = b
            self.writes += 1
            if self.writes % 7 == 0:  # the replica catches up now and then
                self.replica = dict(self.data)
            return result


class FakeClient:
    """Calls the store after a random latency; sometimes times out (applied or not) or fails."""

    def __init__(self, store: FakeStore, rng: random.Random, faults: bool) -> None:
        self.store = store
        self.rng = rng
        self.faults = faults
        self.closed = False

    def _call(
        self, kind: str, key: bytes, a: bytes | None = None, b: bytes | None = None
    ) -> object:
        time.sleep(self.rng.random() * 0.002)  # simulated network latency, not synchronisation
        roll = self.rng.random() if self.faults else 1.0
        if roll < 0.03:
            raise UnavailableError("no leader")  # nothing done
        if roll < 0.06:
            raise OperationTimeoutError("lost before")  # never applied
        result = self.store.apply(kind, key, a, b)
        time.sleep(self.rng.random() * 0.002)
        if roll < 0.09:
            raise OperationTimeoutError("lost after")  # applied, answer lost
        return result

    def put(self, key: bytes, value: bytes, *, timeout_s: float = 1.0) -> None:
        self._call("put", key, value)

    def get(
        self, key: bytes, *, consistency: str = "linearizable", timeout_s: float = 1.0
    ) -> bytes | None:
        return self._call("get", key)  # type: ignore[return-value]

    def delete(self, key: bytes, *, timeout_s: float = 1.0) -> bool:
        return bool(self._call("delete", key))

    def cas(
        self, key: bytes, expected: bytes | None, new: bytes | None, *, timeout_s: float = 1.0
    ) -> bool:
        return bool(self._call("cas", key, expected, new))

    def close(self) -> None:
        self.closed = True


def run(tmp_path: Path, store: FakeStore, *, faults: bool, s: int, ops: int = 1500) -> Path:
    config = WorkloadConfig(clients=6, keys=4, ops_max=ops)
    clients: list[FakeClient] = []

    def factory(number: int) -> FakeClient:
        client = FakeClient(store, random.Random(s * 100 + number), faults)
        clients.append(client)
        return client

    path = tmp_path / "history.jsonl"
    with HistoryWriter(path) as history:
        workload = Workload(factory, config, history, seed=s).start()
        workload.run_for(60.0)  # ends early: at ops_max
        assert sum(workload.counts.values()) == ops
        assert all(client.closed for client in clients)
        final_reads(FakeClient(store, random.Random(s), False), config, history, client_id=99)
    return path


def test_history_of_a_linearizable_store_passes(tmp_path: Path, seed: int) -> None:
    s = seed
    path = run(tmp_path, FakeStore(), faults=True, s=s)
    history = read_history(path)
    assert len(history) == 1500 + 4  # every call, then one final read per key
    outcomes = {op.outcome for op in history}
    assert outcomes == {"ok", "fail", "unknown"}, f"seed {s}"
    assert len({op.op_id for op in history}) == len(history)
    # Every written value is unique, so reads are unambiguous.
    written = [op.value for op in history if op.kind in ("put", "cas") and op.value is not None]
    assert len(written) == len(set(written))
    result = check_history(history)
    assert result.ok, f"seed {s}: {result.report()}"


def test_history_of_a_store_with_stale_reads_fails(tmp_path: Path, seed: int) -> None:
    s = seed
    path = run(tmp_path, FakeStore(stale_reads=True), faults=False, s=s)
    result = check_history(read_history(path))
    assert result.linearizable is False, f"seed {s}"
    assert "not linearizable" in result.report()


def test_bad_configuration_is_refused() -> None:
    with HistoryWriter(None) as history:
        with pytest.raises(ValueError, match="linearizable"):
            Workload(
                lambda n: FakeClient(FakeStore(), random.Random(n), False),  # type: ignore[arg-type,return-value]
                WorkloadConfig(consistency="stale"),
                history,
                seed=1,
            )
        with pytest.raises(ValueError, match="at least one"):
            Workload(
                lambda n: FakeClient(FakeStore(), random.Random(n), False),  # type: ignore[arg-type,return-value]
                WorkloadConfig(clients=0),
                history,
                seed=1,
            )


def test_a_bug_in_a_client_is_raised_by_stop() -> None:
    class Broken(FakeClient):
        def get(self, key: bytes, **_: object) -> bytes | None:  # type: ignore[override]
            raise KeyError("a bug, not an operating error")

    with HistoryWriter(None) as history:
        workload = Workload(
            lambda n: Broken(FakeStore(), random.Random(n), False),
            WorkloadConfig(clients=2, mix={"get": 1.0}),
            history,
            seed=1,
        ).start()
        with pytest.raises(RuntimeError, match="a bug"):
            workload.run_for(10.0)

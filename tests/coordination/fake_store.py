"""An in-memory store with etcd's coordination semantics, for testing the recipes.

Small and honest: one revision counter that each write or transaction bumps once; per-key
create/mod revision and version; every change kept as a `WatchEvent` in one history list, from
which watches read and past revisions are rebuilt; leases that expire only when a test says so
(`expire()`), deleting their keys at one revision as a committed expiry would. One lock guards
everything; watches wait on its condition. It implements the methods of
`kvstore.recipes.CoordinationStore` with the §2b signatures, plus put/grant/keepalive/revoke.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from kvstore.coordination import (
    Compare,
    KeyValue,
    Lease,
    Op,
    OpResult,
    RangeResult,
    TxnResult,
    Watch,
    WatchEvent,
    check_lease_ttl,
    check_txn,
    normalize_range,
)
from kvstore.errors import CompactedError, LeaseNotFoundError

__all__ = ["FakeStore", "FakeWatch"]


class FakeWatch(Watch):
    """Reads the store's history from `start_revision` on; `close()` wakes a blocked reader."""

    def __init__(
        self, store: FakeStore, start: bytes, end: bytes | None, start_revision: int, prev_kv: bool
    ) -> None:
        self._store = store
        self._start = start
        self._end = end
        self._next_revision = start_revision
        self._prev_kv = prev_kv
        self._position = 0  # index into the store's history
        self._closed = False

    def _matches(self, key: bytes) -> bool:
        if self._end is None:
            return key == self._start
        return self._start <= key < self._end

    def __next__(self) -> WatchEvent:
        with self._store.changed:
            while True:
                if self._closed:
                    raise StopIteration
                history = self._store.history
                while self._position < len(history):
                    event, prev = history[self._position]
                    self._position += 1
                    if event.kv.mod_revision >= self._next_revision and self._matches(event.kv.key):
                        self._next_revision = event.kv.mod_revision
                        return WatchEvent(event.type, event.kv, prev if self._prev_kv else None)
                self._store.changed.wait()

    def close(self) -> None:
        with self._store.changed:
            self._closed = True
            self._store.changed.notify_all()

    @property
    def revision(self) -> int:
        with self._store.changed:
            return self._store.revision


class FakeStore:
    """See the module docstring."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.revision = 0
        self.compacted_revision = 0
        self._kvs: dict[bytes, KeyValue] = {}
        self.history: list[tuple[WatchEvent, KeyValue | None]] = []
        self._leases: dict[int, tuple[float, set[bytes]]] = {}
        self._lease_ids = itertools.count(1)
        self.txn_count = 0
        self.watches_opened = 0

    # --- reads ----------------------------------------------------------------------------------

    def _state_at(self, revision: int | None) -> dict[bytes, KeyValue]:
        if revision is None or revision >= self.revision:
            return self._kvs
        if revision < self.compacted_revision:
            raise CompactedError(self.compacted_revision)
        state: dict[bytes, KeyValue] = {}
        for event, _ in self.history:
            if event.kv.mod_revision > revision:
                break
            if event.type == "put":
                state[event.kv.key] = event.kv
            else:
                state.pop(event.kv.key, None)
        return state

    def get_kv(self, key: bytes, *, revision: int | None = None) -> KeyValue | None:
        with self.changed:
            return self._state_at(revision).get(key)

    def range(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        prefix: bool = False,
        limit: int | None = None,
        revision: int | None = None,
        keys_only: bool = False,
        count_only: bool = False,
    ) -> RangeResult:
        start, stop = normalize_range(start, end, prefix)
        with self.changed:
            return self._range(self._state_at(revision), start, stop, limit, keys_only, count_only)

    def _range(
        self,
        state: dict[bytes, KeyValue],
        start: bytes,
        end: bytes | None,
        limit: int | None,
        keys_only: bool = False,
        count_only: bool = False,
    ) -> RangeResult:
        if end is None:
            matches = [state[start]] if start in state else []
        else:
            matches = sorted((kv for k, kv in state.items() if start <= k < end), key=_key)
        page = [] if count_only else matches[:limit]
        if keys_only:
            page = [
                KeyValue(kv.key, b"", kv.create_revision, kv.mod_revision, kv.version, kv.lease)
                for kv in page
            ]
        more = not count_only and limit is not None and len(matches) > limit
        return RangeResult(page, more, len(matches), self.revision)

    # --- writes ---------------------------------------------------------------------------------

    def _put(self, key: bytes, value: bytes, lease: int | None, revision: int) -> None:
        if lease is not None and lease not in self._leases:
            raise LeaseNotFoundError(lease)
        prev = self._kvs.get(key)
        if prev is not None and prev.lease is not None and prev.lease in self._leases:
            self._leases[prev.lease][1].discard(key)
        if prev is None:
            kv = KeyValue(key, value, revision, revision, 1, lease)
        else:
            kv = KeyValue(key, value, prev.create_revision, revision, prev.version + 1, lease)
        self._kvs[key] = kv
        if lease is not None:
            self._leases[lease][1].add(key)
        self.history.append((WatchEvent("put", kv), prev))

    def _delete(self, key: bytes, revision: int) -> bool:
        prev = self._kvs.pop(key, None)
        if prev is None:
            return False
        if prev.lease is not None and prev.lease in self._leases:
            self._leases[prev.lease][1].discard(key)
        self.history.append((WatchEvent("delete", KeyValue(key, b"", 0, revision, 0)), prev))
        return True

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout_s: float = 5.0,
    ) -> TxnResult:
        compare, success, failure = check_txn(compare, success, failure)
        with self.changed:
            self.txn_count += 1
            succeeded = all(c.holds(self._kvs.get(c.key)) for c in compare)
            ops = success if succeeded else failure
            for op in ops:  # etcd checks a put's lease before anything is applied
                if op.kind == "put" and op.lease is not None and op.lease not in self._leases:
                    raise LeaseNotFoundError(op.lease)
            # As etcd: the revision grows once per transaction that changed something.
            revision = self.revision + 1
            changes_before = len(self.history)
            results: list[OpResult] = []
            for op in ops:
                if op.kind == "put":
                    self._put(op.key, op.value, op.lease, revision)
                    results.append(None)
                elif op.kind == "delete":
                    results.append(self._delete(op.key, revision))
                elif op.kind == "delete_range":
                    assert op.end is not None
                    doomed = [k for k in sorted(self._kvs) if op.key <= k < op.end]
                    results.append(sum(self._delete(k, revision) for k in doomed))
                elif op.kind == "get":
                    results.append(self._kvs.get(op.key))
                else:
                    results.append(self._range(self._kvs, op.key, op.end, op.limit))
            if len(self.history) > changes_before:
                self.revision = revision
                self.changed.notify_all()
            return TxnResult(succeeded, results, self.revision)

    def put(self, key: bytes, value: bytes, *, lease: int | None = None) -> None:
        self.txn([], [Op.put(key, value, lease=lease)])

    def delete(self, key: bytes) -> bool:
        result = self.txn([], [Op.delete(key)])
        return bool(result.results[0])

    def compact(self, revision: int) -> None:
        """Forget history below `revision` (watches and reads there raise CompactedError)."""
        with self.changed:
            self.compacted_revision = revision

    # --- watches --------------------------------------------------------------------------------

    def watch(
        self,
        key: bytes,
        *,
        prefix: bool = False,
        start_revision: int | None = None,
        prev_kv: bool = False,
    ) -> FakeWatch:
        start, end = normalize_range(key, None, prefix)
        with self.changed:
            self.watches_opened += 1
            if start_revision is None:
                start_revision = self.revision + 1
            elif start_revision < self.compacted_revision:
                raise CompactedError(self.compacted_revision)
            return FakeWatch(self, start, end, start_revision, prev_kv)

    # --- leases ---------------------------------------------------------------------------------

    def grant(self, ttl_s: float, *, timeout_s: float = 5.0) -> Lease:
        ttl_s = check_lease_ttl(ttl_s)
        with self.changed:
            lease_id = next(self._lease_ids)
            self._leases[lease_id] = (ttl_s, set())
            return Lease(lease_id, ttl_s)

    def keepalive(self, lease_id: int) -> float:
        with self.changed:
            if lease_id not in self._leases:
                raise LeaseNotFoundError(lease_id)
            return self._leases[lease_id][0]

    def time_to_live(self, lease_id: int) -> float | None:
        with self.changed:
            entry = self._leases.get(lease_id)
            return None if entry is None else entry[0]

    def revoke(self, lease_id: int) -> None:
        """Delete the lease and its keys at one revision (what an expiry commits too)."""
        with self.changed:
            entry = self._leases.pop(lease_id, None)
            if entry is None:
                raise LeaseNotFoundError(lease_id)
            keys = sorted(entry[1])
            if keys:
                revision = self.revision + 1
                for key in keys:
                    self._delete(key, revision)
                self.revision = revision
                self.changed.notify_all()

    def expire(self, lease_id: int) -> None:
        """The lease's TTL ran out without a keepalive (the test decides when)."""
        self.revoke(lease_id)

    def lease_ids(self) -> list[int]:
        with self.changed:
            return sorted(self._leases)

    @contextmanager
    def lease(self, ttl_s: float) -> Iterator[Lease]:
        """A lease "kept alive" while the context lasts (time only passes through `expire()`),
        revoked at its end unless it already expired."""
        lease = self.grant(ttl_s)
        try:
            yield lease
        finally:
            try:
                self.revoke(lease.id)
            except LeaseNotFoundError:
                pass


def _key(kv: KeyValue) -> bytes:
    return kv.key

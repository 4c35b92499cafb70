"""Coordination recipes on top of transactions, leases and watches: `Lock`, `Election`,
`Semaphore`, `Barrier`.

They follow etcd's `concurrency` package (and kazoo's recipes): every participant holds a
**session**, a lease kept alive in the background (`store.lease(ttl_s)`), and queues by
creating one key under the recipe's prefix, attached to that lease, in a transaction that
creates it only if absent. The key's `create_revision` is its place in the queue, so the queue
is fair (first come, first served, in revision order) and survives any member failure. The head
of the queue (the lowest `create_revision`) holds the lock or leads. A waiter for a lock or a
leadership watches only the deletion of the key just ahead of it (no thundering herd) and then
checks again. A participant
that dies stops renewing its lease; the lease expires, the store deletes its key, and the next
one moves up.

They run against anything with the methods of `CoordinationStore`: `kvstore.Node` and
`kvstore.Client` (and test fakes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from types import TracebackType
from typing import Protocol, Self

from kvstore.coordination import (
    Compare,
    KeyValue,
    Lease,
    Op,
    RangeResult,
    TxnResult,
    Watch,
    check_lease_ttl,
    range_end_of_prefix,
)
from kvstore.errors import (
    CompactedError,
    InvalidArgumentError,
    LeaseNotFoundError,
    OperationTimeoutError,
)
from kvstore.options import KEY_BYTES_MAX, check_timeout

__all__ = [
    "BARRIER_PREFIX",
    "ELECTION_PREFIX",
    "LOCK_PREFIX",
    "SEMAPHORE_PREFIX",
    "Barrier",
    "CoordinationStore",
    "Election",
    "Lock",
    "Semaphore",
]

LOCK_PREFIX = b"_kvstore/lock/"
"""Where `Lock` keeps its queues: `LOCK_PREFIX + <len(name)>/<name>/ + <lease id, 16 hex>`."""
ELECTION_PREFIX = b"_kvstore/election/"
"""Where `Election` keeps its candidates, laid out as under `LOCK_PREFIX`."""
SEMAPHORE_PREFIX = b"_kvstore/semaphore/"
"""Where `Semaphore` keeps its queues, laid out as under `LOCK_PREFIX`."""
BARRIER_PREFIX = b"_kvstore/barrier/"
"""Where `Barrier` keeps its keys: `BARRIER_PREFIX + <len(name)>/<name>`."""

_LEASE_HEX_CHARS = 16
_PAGE_KEYS = 1000


class CoordinationStore(Protocol):
    """The part of the coordination API (DESIGN.md §2b) the recipes use; `kvstore.Node` and
    `kvstore.Client` have it."""

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout_s: float = 5.0,
    ) -> TxnResult:
        """Apply `success` if every compare holds, else `failure`, atomically."""
        ...

    def range(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        limit: int | None = None,
        revision: int | None = None,
        keys_only: bool = False,
    ) -> RangeResult:
        """One page of the keys in `[start, end)`, in key order."""
        ...

    def get_kv(self, key: bytes) -> KeyValue | None:
        """`key` with its metadata, or None."""
        ...

    def watch(
        self, key: bytes, *, prefix: bool = False, start_revision: int | None = None
    ) -> Watch:
        """The changes of `key` (or of every key under it) from `start_revision` on."""
        ...

    def lease(self, ttl_s: float) -> AbstractContextManager[Lease]:
        """A lease kept alive in the background while the context lasts, revoked at its end."""
        ...

    def delete(self, key: bytes) -> bool:
        """Delete `key`; True if it existed."""
        ...


def _name_prefix(base: bytes, name: bytes) -> bytes:
    """`base + <len>/<name>/`: one name's queue never lies inside another's (the length makes
    the encoding prefix-free, whatever bytes the names hold)."""
    if not isinstance(name, bytes) or not name:
        raise InvalidArgumentError(f"a recipe name must be non-empty bytes, got {name!r:.60}")
    prefix = base + str(len(name)).encode() + b"/" + name + b"/"
    if len(prefix) + _LEASE_HEX_CHARS > KEY_BYTES_MAX:
        raise InvalidArgumentError(f"recipe name of {len(name)} bytes is too long")
    return prefix


def _deadline(timeout_s: float | None) -> float | None:
    """The monotonic deadline of a wait of `timeout_s` (None: none; 0: try once)."""
    if timeout_s is None:
        return None
    if timeout_s == 0 and not isinstance(timeout_s, bool):
        return time.monotonic()
    return time.monotonic() + check_timeout(timeout_s)


def _remaining_s(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _list_queue(
    store: CoordinationStore, prefix: bytes, *, keys_only: bool
) -> tuple[list[KeyValue], int]:
    """Every key under `prefix`, read page by page at one revision, and that revision."""
    end = range_end_of_prefix(prefix)
    start = prefix
    revision: int | None = None
    kvs: list[KeyValue] = []
    while True:
        page = store.range(start, end, limit=_PAGE_KEYS, revision=revision, keys_only=keys_only)
        revision = page.revision
        kvs.extend(page.kvs)
        if not page.more or not page.kvs:
            return kvs, revision
        start = page.kvs[-1].key + b"\x00"


@contextmanager
def _watch_until(
    store: CoordinationStore,
    key: bytes,
    *,
    prefix: bool,
    after_revision: int,
    remaining_s: float | None,
) -> Iterator[Watch]:
    """A watch of `key` (or the `prefix`) from after `after_revision` that closes itself after
    `remaining_s` (None: never): close() ends a blocked iteration, so no polling."""
    watch = store.watch(key, prefix=prefix, start_revision=after_revision + 1)
    timer = None
    if remaining_s is not None:
        timer = threading.Timer(remaining_s, watch.close)
        timer.daemon = True
        timer.start()
    try:
        yield watch
    finally:
        if timer is not None:
            timer.cancel()
        watch.close()


def _wait_deleted(
    store: CoordinationStore, key: bytes, after_revision: int, deadline: float | None
) -> bool:
    """Wait until `key` is deleted at a revision after `after_revision`; False on the deadline.

    Returns True early when the watch cannot start there (compacted) or ends by itself: the
    caller reads the queue again either way."""
    remaining = _remaining_s(deadline)
    if remaining is not None and remaining <= 0:
        return False
    try:
        with _watch_until(
            store, key, prefix=False, after_revision=after_revision, remaining_s=remaining
        ) as watch:
            for event in watch:
                if event.type == "delete":
                    return True
    except CompactedError:
        return True
    return deadline is None or time.monotonic() < deadline


def _wait_deletes(
    store: CoordinationStore,
    prefix: bytes,
    ahead: set[bytes],
    needed: int,
    own_key: bytes,
    after_revision: int,
    deadline: float | None,
) -> bool:
    """Wait until `needed` of the keys `ahead` (under `prefix`) or `own_key` are deleted after
    `after_revision`; False on the deadline. Other keys' events are skipped without a read."""
    remaining = _remaining_s(deadline)
    if remaining is not None and remaining <= 0:
        return False
    try:
        with _watch_until(
            store, prefix, prefix=True, after_revision=after_revision, remaining_s=remaining
        ) as watch:
            for event in watch:
                if event.type != "delete":
                    continue
                if event.kv.key == own_key:
                    return True
                if event.kv.key in ahead:
                    ahead.discard(event.kv.key)
                    needed -= 1
                    if needed <= 0:
                        return True
    except CompactedError:
        return True
    return deadline is None or time.monotonic() < deadline


class _Candidate:
    """One place in a queue: a key under `prefix` attached to this participant's own lease."""

    def __init__(self, store: CoordinationStore, prefix: bytes, ttl_s: float) -> None:
        self._store = store
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._session = ExitStack()
        self.key = b""
        self.lease_id = 0
        self.create_revision = 0

    def join(self, value: bytes) -> None:
        """Take a session and queue up with `value`."""
        try:
            lease = self._session.enter_context(self._store.lease(self._ttl_s))
            self.lease_id = lease.id
            self.key = self._prefix + b"%016x" % lease.id
            result = self._store.txn(
                [Compare(self.key, "create_revision", "==", 0)],
                [Op.put(self.key, value, lease=lease.id)],
                [Op.get(self.key)],
            )
            if result.succeeded:
                self.create_revision = result.revision
            else:  # a fresh lease's key cannot exist yet, but keep what is there if it does
                existing = result.results[0]
                if not isinstance(existing, KeyValue):
                    raise LeaseNotFoundError(lease.id)
                self.create_revision = existing.create_revision
        except BaseException:
            self.leave()
            raise

    def wait_head(self, deadline: float | None) -> bool:
        """Wait until no key ahead of ours is left; False on the deadline.

        Raises `LeaseNotFoundError` when our own key is gone (our lease expired)."""
        while True:
            queue, revision = _list_queue(self._store, self._prefix, keys_only=True)
            if not any(kv.key == self.key for kv in queue):
                raise LeaseNotFoundError(self.lease_id, "our session's lease expired")
            ahead = [kv for kv in queue if kv.create_revision < self.create_revision]
            if not ahead:
                return True
            # Only the one just ahead: its delete is the only one that can make us the head.
            predecessor = max(ahead, key=lambda kv: kv.create_revision)
            if not _wait_deleted(self._store, predecessor.key, revision, deadline):
                return False

    def wait_rank(self, slots: int, deadline: float | None) -> bool:
        """Wait until fewer than `slots` keys are ahead of ours; False on the deadline.

        Watches the whole queue, but reads it again only once enough of the keys ahead are
        gone (or ours is): the others' events cost no read. `LeaseNotFoundError` when our own
        key is gone."""
        while True:
            queue, revision = _list_queue(self._store, self._prefix, keys_only=True)
            if not any(kv.key == self.key for kv in queue):
                raise LeaseNotFoundError(self.lease_id, "our session's lease expired")
            ahead = {kv.key for kv in queue if kv.create_revision < self.create_revision}
            if len(ahead) < slots:
                return True
            needed = len(ahead) - slots + 1
            # Our own delete (an expired lease) ends the wait at once, too.
            if not _wait_deletes(
                self._store, self._prefix, ahead, needed, self.key, revision, deadline
            ):
                return False

    def is_head(self) -> bool:
        """Whether our key exists and none is ahead of it (a linearizable read)."""
        queue, _ = _list_queue(self._store, self._prefix, keys_only=True)
        mine = [kv for kv in queue if kv.key == self.key]
        return bool(mine) and min(kv.create_revision for kv in queue) == self.create_revision

    def leave(self) -> None:
        """Delete our key and revoke our lease (the revoke alone would do; the delete makes
        the next one move up even if the revoke is lost)."""
        try:
            if self.key:
                self._store.delete(self.key)
        finally:
            self.key = b""
            self._session.close()


class _QueuePlace:
    """One participant's place in a fair queue under `prefix` (what Lock, Election and
    Semaphore share): join, wait for a turn or leave, and give the place up."""

    def __init__(self, store: CoordinationStore, prefix: bytes, ttl_s: float) -> None:
        self._store = store
        self._prefix = prefix
        self._ttl_s = check_lease_ttl(ttl_s)
        self._candidate: _Candidate | None = None

    def _take_turn(
        self,
        value: bytes,
        wait: Callable[[_Candidate, float | None], bool],
        timeout_s: float | None,
        busy: str,
    ) -> _Candidate | None:
        """Join the queue with `value` and `wait` for a turn; the candidate once it has one,
        None (having left the queue) when `timeout_s` ran out. Any error leaves the queue."""
        if self._candidate is not None:
            raise InvalidArgumentError(busy)
        deadline = _deadline(timeout_s)
        candidate = _Candidate(self._store, self._prefix, self._ttl_s)
        candidate.join(value)
        try:
            turn = wait(candidate, deadline)
        except BaseException:
            candidate.leave()
            raise
        if not turn:
            candidate.leave()
            return None
        self._candidate = candidate
        return candidate

    def _give_up(self) -> None:
        candidate, self._candidate = self._candidate, None
        if candidate is not None:
            candidate.leave()


class _HeldInside(_QueuePlace):
    """`with` acquires on entry and releases on exit."""

    def acquire(self, timeout_s: float | None = None) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        """Give the place up (a no-op when not held)."""
        self._give_up()

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Lock(_HeldInside):
    """A distributed mutual-exclusion lock, fair (first come, first served by revision) and
    freed when its holder dies (its session lease expires).

        with Lock(node, b"jobs") as lock:
            write_with_token(lock.fencing_token)

    `fencing_token` is the `create_revision` of the holder's queue key: it grows with every
    grant of this lock, so a resource that remembers the highest token it has seen can refuse
    a holder that lost the lock (a pause longer than `ttl_s`) and came back; `is_held()` asks
    the store whether this object still holds it. A waiter whose own session expired finds out
    when the key ahead of it goes (`acquire` then raises `LeaseNotFoundError`). One `Lock` object
    is one participant; it is not reentrant and not for sharing between threads."""

    def __init__(self, store: CoordinationStore, name: bytes, *, ttl_s: float = 10.0) -> None:
        super().__init__(store, _name_prefix(LOCK_PREFIX, name), ttl_s)
        self.fencing_token = 0
        """The token of the latest grant to this object (0 before the first)."""

    def acquire(self, timeout_s: float | None = None) -> bool:
        """Queue up and wait for the lock; True once held, False after `timeout_s` (None: no
        limit; 0: take it only if free now), having left the queue. `LeaseNotFoundError` if
        the session expired while waiting."""
        candidate = self._take_turn(
            b"", _Candidate.wait_head, timeout_s, "this Lock is already held or being acquired"
        )
        if candidate is None:
            return False
        self.fencing_token = candidate.create_revision
        return True

    def release(self) -> None:
        """Give the lock up (a no-op when not held)."""
        self._give_up()

    def is_held(self) -> bool:
        """Whether this object still holds the lock (a read: False once its lease expired)."""
        return self._candidate is not None and self._candidate.is_head()

    @property
    def key(self) -> bytes | None:
        """The holder's queue key while held (its lease id in hex at the end), else None."""
        return None if self._candidate is None else self._candidate.key

    @property
    def lease_id(self) -> int | None:
        """The id of the session lease the lock is held under, else None."""
        return None if self._candidate is None else self._candidate.lease_id


class Election(_QueuePlace):
    """Leader election among processes: candidates queue fairly by revision; the head of the
    queue leads until it resigns or its session lease expires, then the next one leads.

        election = Election(node, b"scheduler")
        election.campaign(b"host-a")   # returns once leader
        ...
        election.resign()

    `leader()` and `observe()` work for anyone, candidate or not. One `Election` object is one
    candidate."""

    def __init__(self, store: CoordinationStore, name: bytes, *, ttl_s: float = 10.0) -> None:
        super().__init__(store, _name_prefix(ELECTION_PREFIX, name), ttl_s)

    def campaign(self, value: bytes, timeout_s: float | None = None) -> None:
        """Stand with `value` and return once leader. On `timeout_s` (None: no limit) withdraw
        and raise `OperationTimeoutError`; `LeaseNotFoundError` if the session expired."""
        if not isinstance(value, bytes):
            raise InvalidArgumentError(f"value must be bytes, got {type(value).__name__}")
        busy = "already campaigning: resign first"
        if self._take_turn(value, _Candidate.wait_head, timeout_s, busy) is None:
            raise OperationTimeoutError(f"not elected within {timeout_s} s")

    def proclaim(self, value: bytes) -> None:
        """As leader, announce a new `value` (observers see it). `InvalidArgumentError` when
        not campaigning; `LeaseNotFoundError` when the leadership was lost."""
        candidate = self._candidate
        if candidate is None:
            raise InvalidArgumentError("not the leader: campaign first")
        result = self._store.txn(
            [Compare(candidate.key, "create_revision", "==", candidate.create_revision)],
            [Op.put(candidate.key, value, lease=candidate.lease_id)],
        )
        if not result.succeeded:
            raise LeaseNotFoundError(candidate.lease_id, "leadership lost: the session expired")

    def resign(self) -> None:
        """Stop leading (or campaigning); the next candidate leads. A no-op otherwise."""
        self._give_up()

    def is_leader(self) -> bool:
        """Whether this candidate leads now (a read)."""
        return self._candidate is not None and self._candidate.is_head()

    def leader(self) -> bytes | None:
        """The current leader's value, or None when nobody leads."""
        queue, _ = _list_queue(self._store, self._prefix, keys_only=False)
        head = _head(queue)
        return None if head is None else head.value

    def observe(self) -> Iterator[bytes | None]:
        """The leader's value now, then again at each change of leader or value (None while
        nobody leads). A new leader with the same value as the last is reported too. Close
        the iterator (or leave the loop) to stop watching."""
        queue, revision = _list_queue(self._store, self._prefix, keys_only=False)
        return self._observe(queue, revision)

    def _observe(self, queue: list[KeyValue], revision: int) -> Iterator[bytes | None]:
        candidates = {kv.key: kv for kv in queue}
        head = _head(list(candidates.values()))
        yield None if head is None else head.value
        with self._store.watch(self._prefix, prefix=True, start_revision=revision + 1) as watch:
            for event in watch:
                if event.type == "put":
                    candidates[event.kv.key] = event.kv
                else:
                    candidates.pop(event.kv.key, None)
                new_head = _head(list(candidates.values()))
                if _identity(new_head) != _identity(head):
                    head = new_head
                    yield None if head is None else head.value


def _head(queue: list[KeyValue]) -> KeyValue | None:
    return min(queue, key=lambda kv: kv.create_revision, default=None)


def _identity(kv: KeyValue | None) -> tuple[bytes, int, bytes] | None:
    return None if kv is None else (kv.key, kv.create_revision, kv.value)


class Semaphore(_HeldInside):
    """A counting semaphore: at most `limit` holders at once, the others queued fairly by
    revision; a holder that dies (its session lease expires) frees its slot.

        with Semaphore(node, b"downloads", limit=4):
            download()

    Every participant must pass the same `limit`. A waiter watches the queue's prefix and reads
    it again only when enough keys ahead of it are gone. One `Semaphore` object is one
    participant; it is not reentrant."""

    def __init__(
        self, store: CoordinationStore, name: bytes, *, limit: int, ttl_s: float = 10.0
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1 << 20:
            raise InvalidArgumentError(f"limit must be an int in 1..2**20, got {limit!r:.60}")
        super().__init__(store, _name_prefix(SEMAPHORE_PREFIX, name), ttl_s)
        self._limit = limit

    def acquire(self, timeout_s: float | None = None) -> bool:
        """Queue up and wait for a slot; True once held, False after `timeout_s` (None: no
        limit; 0: only if a slot is free now), having left the queue."""
        limit = self._limit
        candidate = self._take_turn(
            b"",
            lambda candidate, deadline: candidate.wait_rank(limit, deadline),
            timeout_s,
            "this Semaphore is already held or being acquired",
        )
        return candidate is not None

    def release(self) -> None:
        """Give the slot up (a no-op when not held)."""
        self._give_up()


class Barrier:
    """A barrier (kazoo's): while someone holds it, `wait()` blocks; it falls when the holder
    removes it or its session lease expires.

        Barrier(node, b"deploy").hold()      # one process
        Barrier(node, b"deploy").wait()      # the others, until it is removed"""

    def __init__(self, store: CoordinationStore, name: bytes, *, ttl_s: float = 10.0) -> None:
        self._store = store
        self._key = _name_prefix(BARRIER_PREFIX, name)[:-1]
        self._ttl_s = check_lease_ttl(ttl_s)
        self._session: ExitStack | None = None

    def hold(self) -> bool:
        """Raise the barrier; False if it is already up (held by someone else)."""
        if self._session is not None:
            raise InvalidArgumentError("this Barrier is already held")
        session = ExitStack()
        try:
            lease = session.enter_context(self._store.lease(self._ttl_s))
            result = self._store.txn(
                [Compare(self._key, "create_revision", "==", 0)],
                [Op.put(self._key, b"", lease=lease.id)],
            )
        except BaseException:
            session.close()
            raise
        if not result.succeeded:
            session.close()
            return False
        self._session = session
        return True

    def remove(self) -> None:
        """Take the barrier down (a no-op unless this object holds it)."""
        session, self._session = self._session, None
        if session is not None:
            try:
                self._store.delete(self._key)
            finally:
                session.close()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the barrier is down; False after `timeout_s` (None: no limit)."""
        deadline = _deadline(timeout_s)
        while True:
            page = self._store.range(self._key, keys_only=True)
            if not page.kvs:
                return True
            if not _wait_deleted(self._store, self._key, page.revision, deadline):
                return False

"""The recipes (Lock, Election, Barrier) against a store with etcd's semantics.

Every test takes the `store` fixture, so that running them against a real node is one more
parameter. Threads stand for processes; a lease "expires" when the test revokes it (what an
expiry commits: the lease and its keys deleted at one revision).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from kvstore import Compare, Op
from kvstore.errors import InvalidArgumentError, LeaseNotFoundError, OperationTimeoutError
from kvstore.recipes import (
    ELECTION_PREFIX,
    LOCK_PREFIX,
    SEMAPHORE_PREFIX,
    Barrier,
    Election,
    Lock,
    Semaphore,
)
from tests.coordination.fake_store import FakeStore

DEADLINE_S = 10.0


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


class Background:
    """Runs `fn` on a thread; `result()` joins with a deadline and re-raises its exception."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self._value: object = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            self._value = fn()
        except BaseException as e:
            self._error = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout_s: float = DEADLINE_S) -> object:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError("background call did not finish")
        if self._error is not None:
            raise self._error
        return self._value


def queue_length(store: Any, base: bytes, name: bytes) -> int:
    prefix = base + str(len(name)).encode() + b"/" + name + b"/"
    return int(store.range(prefix, prefix=True, count_only=True).count)


def lease_of_key(key: bytes) -> int:
    return int(key[-16:], 16)


# --- Lock ---------------------------------------------------------------------------------------


def test_lock_excludes_many_threads_and_tokens_grow(store: Any, seed: int) -> None:
    rng = random.Random(seed)
    threads = 6
    rounds = [rng.randint(2, 5) for _ in range(threads)]
    guard = threading.Lock()
    inside = 0
    overlaps = 0
    grants: list[int] = []

    def worker(index: int) -> None:
        nonlocal inside, overlaps
        local = random.Random(seed * 1000 + index)
        for _ in range(rounds[index]):
            with Lock(store, b"shared", ttl_s=5) as lock:
                with guard:
                    inside += 1
                    overlaps += inside > 1
                    grants.append(lock.fencing_token)
                # Work that yields to the others while the lock is held.
                for _ in range(local.randint(0, 3)):
                    store.get_kv(b"work")
                    time.sleep(0)
                with guard:
                    inside -= 1

    workers = [Background(lambda i=i: worker(i)) for i in range(threads)]
    for w in workers:
        w.result()
    assert overlaps == 0
    assert len(grants) == sum(rounds)
    assert all(a < b for a, b in itertools.pairwise(grants)), grants
    assert queue_length(store, LOCK_PREFIX, b"shared") == 0


def test_waiters_get_the_lock_in_arrival_order(store: Any) -> None:
    holder = Lock(store, b"fifo")
    assert holder.acquire()
    order: list[int] = []
    waiters = []
    for i in range(5):

        def wait_turn(i: int = i) -> None:
            with Lock(store, b"fifo"):
                order.append(i)

        waiters.append(Background(wait_turn))
        # The next one arrives only once this one is queued: arrival order = revision order.
        wait_until(lambda i=i: queue_length(store, LOCK_PREFIX, b"fifo") == i + 2, "queued")
    holder.release()
    for w in waiters:
        w.result()
    assert order == [0, 1, 2, 3, 4]


def test_waiters_watch_only_their_predecessor() -> None:
    store = FakeStore()
    holder = Lock(store, b"herd")
    assert holder.acquire()
    waiters = []
    for i in range(6):
        waiters.append(Background(lambda: Lock(store, b"herd").__enter__().release()))
        wait_until(lambda i=i: queue_length(store, LOCK_PREFIX, b"herd") == i + 2, "queued")
    wait_until(lambda: store.watches_opened == 6, "every waiter watching")
    holder.release()
    for w in waiters:
        w.result()
    # One watch per waiter, each woken once: no waiter re-reads on another's release.
    assert store.watches_opened == 6


def test_fencing_token_is_the_holders_create_revision(store: Any) -> None:
    tokens = []
    for name in (b"a", b"a", b"b", b"a"):
        with Lock(store, name) as lock:
            assert lock.key is not None
            kv = store.get_kv(lock.key)
            assert kv is not None and kv.create_revision == lock.fencing_token
            assert lock.is_held()
            tokens.append(lock.fencing_token)
        assert not lock.is_held()
    assert tokens == sorted(set(tokens))


def test_an_expired_holder_loses_the_lock_to_the_next_waiter(store: Any) -> None:
    first = Lock(store, b"job")
    assert first.acquire()
    second = Lock(store, b"job")
    waiting = Background(second.acquire)
    wait_until(lambda: queue_length(store, LOCK_PREFIX, b"job") == 2, "second queued")
    assert not waiting.done()
    assert first.lease_id is not None
    store.revoke(first.lease_id)  # the holder's process stopped renewing: its lease expires
    assert waiting.result() is True
    assert second.fencing_token > first.fencing_token
    assert not first.is_held() and second.is_held()
    first.release()  # giving up a lock already lost is harmless
    assert second.is_held()
    second.release()
    assert queue_length(store, LOCK_PREFIX, b"job") == 0


def test_a_waiter_whose_lease_expired_gives_up(store: Any) -> None:
    holder = Lock(store, b"w")
    assert holder.acquire()
    waiter = Lock(store, b"w")
    waiting = Background(waiter.acquire)
    wait_until(lambda: queue_length(store, LOCK_PREFIX, b"w") == 2, "waiter queued")
    page = store.range(LOCK_PREFIX, prefix=True)
    waiter_key = max(page.kvs, key=lambda kv: kv.create_revision).key
    store.revoke(lease_of_key(waiter_key))
    holder.release()
    with pytest.raises(LeaseNotFoundError):
        waiting.result()
    assert queue_length(store, LOCK_PREFIX, b"w") == 0


def test_acquire_times_out_and_leaves_the_queue(store: Any) -> None:
    holder = Lock(store, b"t")
    assert holder.acquire()
    other = Lock(store, b"t")
    assert other.acquire(timeout_s=0.05) is False
    assert queue_length(store, LOCK_PREFIX, b"t") == 1
    holder.release()
    assert other.acquire(timeout_s=1.0) is True
    other.release()


def test_names_that_prefix_each_other_are_separate_locks(store: Any) -> None:
    with Lock(store, b"a") as outer, Lock(store, b"a/b") as inner:
        assert outer.is_held() and inner.is_held()
    with Lock(store, b"1/x") as one, Lock(store, b"1") as two:
        assert one.is_held() and two.is_held()


@pytest.mark.parametrize(
    "build",
    [
        lambda s: Lock(s, b""),
        lambda s: Lock(s, "name"),
        lambda s: Lock(s, b"x" * 480),
        lambda s: Lock(s, b"x", ttl_s=0),
        lambda s: Lock(s, b"x", ttl_s=float("nan")),
        lambda s: Election(s, b""),
        lambda s: Election(s, b"x", ttl_s=-1),
        lambda s: Barrier(s, b"x", ttl_s=365 * 86400.0),
        lambda s: Semaphore(s, b"x", limit=0),
        lambda s: Semaphore(s, b"x", limit=True),
        lambda s: Semaphore(s, b"x", limit=2.0),
    ],
)
def test_recipes_refuse_bad_arguments(store: Any, build: Callable[[Any], object]) -> None:
    with pytest.raises(InvalidArgumentError):
        build(store)


def test_a_lock_object_is_not_reentrant(store: Any) -> None:
    lock = Lock(store, b"r")
    with lock, pytest.raises(InvalidArgumentError):
        lock.acquire()
    with pytest.raises(InvalidArgumentError):
        Lock(store, b"r").acquire(timeout_s=-1)


def test_a_zero_timeout_tries_once(store: Any) -> None:
    holder = Lock(store, b"try")
    assert holder.acquire(timeout_s=0) is True
    assert Lock(store, b"try").acquire(timeout_s=0) is False
    assert queue_length(store, LOCK_PREFIX, b"try") == 1
    holder.release()


# --- Election -----------------------------------------------------------------------------------


def test_campaign_resign_expiry_and_observe(store: Any) -> None:
    name = b"leader"
    watcher = Election(store, name)
    assert watcher.leader() is None
    seen = watcher.observe()
    assert next(seen) is None

    first = Election(store, name)
    first.campaign(b"a")
    assert first.is_leader() and watcher.leader() == b"a"
    assert next(seen) == b"a"

    second, third = Election(store, name), Election(store, name)
    second_won = Background(lambda: second.campaign(b"b"))
    wait_until(lambda: queue_length(store, ELECTION_PREFIX, name) == 2, "second standing")
    third_won = Background(lambda: third.campaign(b"c"))
    wait_until(lambda: queue_length(store, ELECTION_PREFIX, name) == 3, "third standing")
    assert not second_won.done() and not second.is_leader()

    first.proclaim(b"a2")
    assert next(seen) == b"a2"
    first.resign()
    second_won.result()
    assert second.is_leader() and not first.is_leader()
    assert next(seen) == b"b"

    queue = store.range(ELECTION_PREFIX, prefix=True).kvs
    second_key = min(queue, key=lambda kv: kv.create_revision).key
    store.revoke(lease_of_key(second_key))  # the leader's process died
    third_won.result()
    assert next(seen) == b"c"
    assert watcher.leader() == b"c"
    with pytest.raises(LeaseNotFoundError):
        second.proclaim(b"late")  # a deposed leader cannot speak for the group

    third.resign()
    assert next(seen) is None
    assert watcher.leader() is None
    seen.close()  # type: ignore[attr-defined]


def test_campaign_times_out_and_withdraws(store: Any) -> None:
    leader = Election(store, b"e")
    leader.campaign(b"x")
    challenger = Election(store, b"e")
    with pytest.raises(OperationTimeoutError):
        challenger.campaign(b"y", timeout_s=0.05)
    assert queue_length(store, ELECTION_PREFIX, b"e") == 1
    assert leader.leader() == b"x"
    with pytest.raises(InvalidArgumentError):
        leader.campaign(b"again")
    with pytest.raises(InvalidArgumentError):
        challenger.proclaim(b"y")
    with pytest.raises(InvalidArgumentError):
        challenger.campaign("text")  # type: ignore[arg-type]
    leader.resign()
    leader.resign()  # twice is harmless


# --- Semaphore ----------------------------------------------------------------------------------


def test_semaphore_admits_up_to_its_limit_in_arrival_order(store: Any) -> None:
    first, second = Semaphore(store, b"s", limit=2), Semaphore(store, b"s", limit=2)
    assert first.acquire(timeout_s=0) and second.acquire(timeout_s=0)
    assert Semaphore(store, b"s", limit=2).acquire(timeout_s=0) is False
    order: list[int] = []
    holders: list[Semaphore] = []
    waiters = []
    for i in range(3):

        def take(i: int = i) -> None:
            semaphore = Semaphore(store, b"s", limit=2)
            semaphore.acquire()
            order.append(i)
            holders.append(semaphore)

        waiters.append(Background(take))
        wait_until(lambda i=i: queue_length(store, SEMAPHORE_PREFIX, b"s") == i + 3, "queued")
    second.release()  # one slot: the first waiter, and only it
    waiters[0].result()
    assert order == [0] and not waiters[1].done()
    first.release()
    waiters[1].result()
    holders[0].release()
    waiters[2].result()
    assert order == [0, 1, 2]
    for semaphore in holders:
        semaphore.release()
    assert queue_length(store, SEMAPHORE_PREFIX, b"s") == 0


def test_semaphore_holds_its_limit_under_many_threads(store: Any, seed: int) -> None:
    limit = 3
    guard = threading.Lock()
    inside = 0
    most = 0

    def worker(index: int) -> None:
        nonlocal inside, most
        for _ in range(random.Random(seed * 1000 + index).randint(2, 4)):
            with Semaphore(store, b"pool", limit=limit):
                with guard:
                    inside += 1
                    most = max(most, inside)
                store.get_kv(b"work")
                with guard:
                    inside -= 1

    workers = [Background(lambda i=i: worker(i)) for i in range(8)]
    for w in workers:
        w.result()
    assert 1 <= most <= limit


def test_a_semaphore_waiter_learns_at_once_that_its_lease_expired(store: Any) -> None:
    holder = Semaphore(store, b"x", limit=1)
    assert holder.acquire()
    waiting = Background(lambda: Semaphore(store, b"x", limit=1).acquire())
    wait_until(lambda: queue_length(store, SEMAPHORE_PREFIX, b"x") == 2, "waiter queued")
    queue = store.range(SEMAPHORE_PREFIX, prefix=True).kvs
    store.revoke(lease_of_key(max(queue, key=lambda kv: kv.create_revision).key))
    with pytest.raises(LeaseNotFoundError):
        waiting.result()  # while the holder still holds
    holder.release()


# --- Barrier ------------------------------------------------------------------------------------


def test_barrier_blocks_until_removed_or_expired(store: Any) -> None:
    up = Barrier(store, b"deploy")
    assert Barrier(store, b"deploy").wait(timeout_s=0.01) is True  # nothing held: no wait
    assert up.hold() is True
    assert Barrier(store, b"deploy").hold() is False
    assert Barrier(store, b"deploy").wait(timeout_s=0.05) is False
    waiting = Background(lambda: Barrier(store, b"deploy").wait())
    up.remove()
    assert waiting.result() is True

    again = Barrier(store, b"deploy")
    assert again.hold() is True
    waiting = Background(lambda: Barrier(store, b"deploy").wait())
    kv = store.range(b"_kvstore/barrier/", prefix=True).kvs[0]
    store.revoke(kv.lease)  # the holder died
    assert waiting.result() is True


# --- the lock workload of the torture schedules, in miniature -----------------------------------


def test_fenced_writes_under_lease_expiries(store: Any, seed: int) -> None:
    """Holders write their fencing token into one key with a compare on the last token, while
    a chaos thread expires random sessions. Only a holder whose lease expired may overlap
    another or see its write refused; the accepted tokens only grow."""
    store.put(b"fence", (0).to_bytes(8, "big"))
    guard = threading.Lock()
    inside: set[int] = set()
    overlaps: list[set[int]] = []
    refused: list[int] = []
    expired: set[int] = set()
    done = threading.Event()

    def worker(index: int) -> None:
        local = random.Random(seed * 1000 + index)
        for _ in range(local.randint(3, 5)):
            lock = Lock(store, b"fenced")
            try:
                lock.acquire()
            except LeaseNotFoundError:
                continue  # expired while waiting: never held
            assert lock.lease_id is not None
            lease_id = lock.lease_id
            with guard:
                if inside:
                    overlaps.append({*inside, lease_id})
                inside.add(lease_id)
            token = lock.fencing_token.to_bytes(8, "big")
            for _ in range(local.randint(0, 2)):
                time.sleep(0)
            written = store.txn([Compare(b"fence", "value", "<", token)], [Op.put(b"fence", token)])
            if not written.succeeded:
                refused.append(lease_id)
            with guard:
                inside.discard(lease_id)
            lock.release()

    def chaos() -> None:
        rng = random.Random(seed)
        while not done.is_set():
            queue = store.range(LOCK_PREFIX, prefix=True).kvs
            if queue and rng.random() < 0.3:
                lease_id = lease_of_key(rng.choice(queue).key)
                try:
                    store.revoke(lease_id)
                    expired.add(lease_id)
                except LeaseNotFoundError:
                    pass
            time.sleep(0.0005)

    chaos_thread = Background(chaos)
    workers = [Background(lambda i=i: worker(i)) for i in range(5)]
    try:
        for w in workers:
            w.result()
    finally:
        done.set()
        chaos_thread.result()
    assert set(refused) <= expired, "a live holder's fenced write was refused"
    for group in overlaps:
        assert len(group - expired) <= 1, f"two live holders at once: {group}"

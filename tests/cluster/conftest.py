"""Fixtures for tests of real `kvstore serve` processes (through `LocalCluster`).

Every member is a child process with its own data directory, on a free loopback port, syncing
its log for real. Tests wait on conditions with deadlines (`wait_until`), never on bare sleeps.
Clusters that tests leave healthy are shared (`secured_cluster`, one per package run); a test
that kills, pauses or reconfigures members starts its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

import kvstore
from kvstore.testing.local_cluster import LocalCluster, wait_until

DEFAULTS = kvstore.Options()
ELECTION_TIMEOUT_MAX_S = 2 * DEFAULTS.election_ticks * DEFAULTS.tick_s
"""The longest randomised election timeout of a `kvstore serve` member (default options)."""

WAIT_S = 30.0
"""Deadline of waits that should take a second or two: generous, the machine may be loaded."""

SECRET = b"cluster-tests-secret\x00\xff"


@contextlib.contextmanager
def running_cluster(
    size: int = 3,
    *,
    secret: bytes | None = None,
    checkpoint_entries: int | None = None,
    log_level: str = "WARNING",
) -> Iterator[LocalCluster]:
    """Start `size` members, wait until one leads, and stop them all afterwards."""
    cluster = LocalCluster(size, secret=secret, log_level=log_level)
    if checkpoint_entries is not None:
        for member in cluster:
            member.extra_args += ["--checkpoint-entries", str(checkpoint_entries)]
    try:
        cluster.start()
        with client_for(cluster) as client:
            cluster.wait_for_leader(client, timeout_s=WAIT_S)
        yield cluster
    finally:
        cluster.close()


def client_for(
    cluster: LocalCluster, *, only: Iterable[str] | None = None, **kwargs: Any
) -> kvstore.Client:
    """A client of every member (or of the members in `only`), with the cluster's secret."""
    secret = cluster.secret_file.read_bytes() if cluster.secret_file is not None else None
    kwargs.setdefault("timeout_s", 10.0)
    addresses = [m.address for m in cluster if only is None or m.node_id in set(only)]
    return kvstore.Client(addresses, secret=secret, **kwargs)


def member_status(client: kvstore.Client, address: str) -> kvstore.Status | None:
    """The status of the member at `address`, or None if it does not answer."""
    try:
        return client.status(address, timeout_s=2.0)
    except (kvstore.KVStoreError, OSError):
        return None


def wait_caught_up(client: kvstore.Client, address: str, index: int) -> None:
    """Wait until the member at `address` has applied through `index`."""

    def caught_up() -> bool:
        status = member_status(client, address)
        return status is not None and status.applied_index >= index

    wait_until(caught_up, timeout_s=WAIT_S, what=f"{address} to apply through {index}")


def find_leader(
    cluster: LocalCluster, client: kvstore.Client, *, exclude: Iterable[str] = ()
) -> str:
    """Wait until a member (not in `exclude`) says it leads; return its id. Members in
    `exclude` are not even asked: a paused one would hold each status call to its timeout."""
    skipped = set(exclude)

    def leader() -> str | None:
        for member in cluster:
            if member.node_id in skipped or not member.running:
                continue
            status = member_status(client, member.address)
            if status is not None and status.role == "leader":
                return member.node_id
        return None

    found = wait_until(leader, timeout_s=WAIT_S, what="a leader")
    assert found is not None
    return found


def leader_commit(
    cluster: LocalCluster, client: kvstore.Client, *, exclude: Iterable[str] = ()
) -> int:
    """The commit index of the current leader."""
    leader = find_leader(cluster, client, exclude=exclude)
    status = member_status(client, cluster.members[leader].address)
    assert status is not None
    return status.commit_index


class Writer(threading.Thread):
    """Writes unique keys (`prefix` + number) in a loop until `stop()`, remembering which were
    acknowledged and how many had an unknown outcome."""

    def __init__(self, client: kvstore.Client, prefix: bytes, *, timeout_s: float = 3.0) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.acknowledged: dict[bytes, bytes] = {}
        self.unknown = 0
        self.errors: list[BaseException] = []
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        number = 0
        while not self._stop_event.is_set():
            key, value = self.prefix + b"%06d" % number, b"value-%d" % number
            number += 1
            try:
                self.client.put(key, value, timeout_s=self.timeout_s)
            except (kvstore.OperationTimeoutError, kvstore.UnavailableError):
                self.unknown += 1
            except BaseException as error:  # anything else fails the test
                self.errors.append(error)
                return
            else:
                with self._lock:
                    self.acknowledged[key] = value

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def wait_for(self, count: int) -> None:
        """Wait until at least `count` writes were acknowledged in total."""
        wait_until(
            lambda: self.count >= count or bool(self.errors) or not self.is_alive(),
            timeout_s=WAIT_S,
            what=f"{count} acknowledged writes",
        )
        assert not self.errors, self.errors
        assert self.count >= count

    def request_stop(self) -> None:
        """Ask the writer to stop after its current write (see `stop`)."""
        self._stop_event.set()

    def stop(self) -> dict[bytes, bytes]:
        """Stop, wait for the write in flight, and return the acknowledged pairs."""
        self._stop_event.set()
        self.join(WAIT_S)
        assert not self.is_alive(), "the writer did not stop"
        assert not self.errors, self.errors
        return dict(self.acknowledged)


def assert_member_holds(
    cluster: LocalCluster, client: kvstore.Client, node_id: str, expected: dict[bytes, bytes]
) -> None:
    """The member `node_id` holds every pair of `expected` (read from its own state)."""
    secret = cluster.secret_file.read_bytes() if cluster.secret_file is not None else None
    with kvstore.Client([cluster.members[node_id].address], secret=secret) as own:
        held = dict(own.scan(b"", consistency="stale", timeout_s=10))
    missing = {key for key, value in expected.items() if held.get(key) != value}
    assert not missing, f"{node_id} lost {len(missing)} acknowledged writes: {sorted(missing)[:5]}"


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


@pytest.fixture(scope="package")
def secured_cluster() -> Iterator[LocalCluster]:
    """Three members with a secret, shared by the tests that leave them healthy."""
    with running_cluster(secret=SECRET) as cluster:
        yield cluster

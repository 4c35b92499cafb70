"""The thread rules of kvstore/node/THREADS.md, checked on a real cluster.

The rule that matters most: nothing but the node's loop thread touches the consensus core. Every
node's core is wrapped in a proxy that records any attribute reached from another thread; a
workload of embedded and remote puts and reads (every consistency), a member added after the
log was compacted (so it gets a snapshot), a leadership transfer and a removal must leave no
record. And a remote scan without a small limit reads LMDB off the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvstore
from kvstore.node import runtime
from kvstore.testing.local_cluster import free_ports, wait_until

from .conftest import FAST, WAIT_S, EmbeddedCluster

OPTIONS = kvstore.Options(
    tick_s=FAST.tick_s,
    election_ticks=FAST.election_ticks,
    checkpoint_entries=20,
    snapshot_chunk_bytes=2048,
)
"""Checkpoints every 20 entries, so the log is compacted early and a joiner needs a snapshot."""


class _LoopOnlyCore:
    """Wraps a core; records every attribute reached from a thread other than its node's loop
    thread (`kvstore-<node id>`, the thread `Node.start` runs the loop on)."""

    def __init__(self, core: Any, node_id: str, violations: list[str]) -> None:
        self._core = core
        self._owner_name = f"kvstore-{node_id}"
        self._owner_ident: int | None = None
        self._violations = violations
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        thread = threading.current_thread()
        if thread.name != self._owner_name:
            self._violations.append(f"{self._owner_name}: core.{name} from {thread.name}")
        else:
            # The loop thread is one thread for the node's life: the same ident every time.
            if self._owner_ident is None:
                self._owner_ident = threading.get_ident()
            elif threading.get_ident() != self._owner_ident:
                self._violations.append(f"{self._owner_name}: core.{name} from a second loop")
        self.calls += 1
        return getattr(self._core, name)


@pytest.fixture
def guarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[EmbeddedCluster, list[str], dict[str, _LoopOnlyCore]]]:
    violations: list[str] = []
    proxies: dict[str, _LoopOnlyCore] = {}
    real_make_core = runtime.make_core

    def make_core(consensus: Any, config: Any, *args: Any) -> Any:
        proxy = _LoopOnlyCore(real_make_core(consensus, config, *args), config.node_id, violations)
        proxies[config.node_id] = proxy
        return proxy

    monkeypatch.setattr(runtime, "make_core", make_core)
    cluster = EmbeddedCluster(tmp_path, options=OPTIONS)
    try:
        yield cluster.start(), violations, proxies
    finally:
        cluster.stop()


def test_the_proxy_sees_a_call_from_another_thread(
    guarded: tuple[EmbeddedCluster, list[str], dict[str, _LoopOnlyCore]],
) -> None:
    _cluster, violations, proxies = guarded
    proxies["n1"].status()  # from the test's thread: exactly what the rule forbids
    assert violations == ["kvstore-n1: core.status from MainThread"]


def test_only_the_loop_thread_touches_the_core(
    guarded: tuple[EmbeddedCluster, list[str], dict[str, _LoopOnlyCore]],
) -> None:
    cluster, violations, proxies = guarded
    leader = cluster.leader()
    for number in range(60):
        leader.put(b"key/%03d" % number, b"v" * 64)
    assert leader.cas(b"key/000", b"v" * 64, b"new")
    assert leader.delete(b"key/001")
    follower = cluster.followers()[0]
    for consistency in ("linearizable", "lease", "stale"):
        follower.get(b"key/002", consistency=consistency)  # type: ignore[arg-type]
        assert len(leader.scan(b"key/", consistency=consistency)) == 59  # type: ignore[arg-type]
    with kvstore.Client(list(cluster.peers.values()), timeout_s=WAIT_S) as client:
        client.put(b"remote", b"1")
        assert client.get(b"remote") == b"1"
        assert len(client.scan(b"key/")) == 59
        assert client.status().leader_id == leader.node_id
    assert leader._runtime._wal is not None
    wait_until(
        lambda: leader._runtime._wal is not None and leader._runtime._wal.first_index() > 1,
        timeout_s=WAIT_S,
        what="the leader's log to be compacted",
    )

    # A member added now needs a snapshot: streamed, verified, installed.
    address = f"127.0.0.1:{free_ports(1)[0]}"
    joiner = cluster.start_node("n4", join=True, peers={**cluster.peers, "n4": address})
    leader.add_member("n4", joiner.address)
    wait_until(
        lambda: joiner.status().applied_index >= leader.status().commit_index,
        timeout_s=WAIT_S,
        what="n4 to catch up",
    )
    assert joiner._runtime._wal is not None and joiner._runtime._wal.snapshot_meta().index > 0, (
        "no snapshot"
    )
    assert joiner.get(b"key/059", consistency="stale") == b"v" * 64

    # Leadership moves, and the joiner leaves again.
    target = cluster.followers()[0].node_id
    if target == "n4":
        target = cluster.followers()[1].node_id
    leader.transfer_leadership(target)
    new_leader = cluster.nodes[target]
    new_leader.remove_member("n4")
    new_leader.put(b"after", b"1")

    assert all(proxy.calls > 0 for proxy in proxies.values())
    assert violations == []


def test_a_remote_scan_without_a_small_limit_reads_lmdb_off_the_loop(
    guarded: tuple[EmbeddedCluster, list[str], dict[str, _LoopOnlyCore]],
) -> None:
    cluster, _violations, _proxies = guarded
    leader = cluster.leader()
    for number in range(10):
        leader.put(b"scan/%d" % number, b"v")
    threads: list[str] = []
    for node in cluster.nodes.values():
        assert node._runtime._sm is not None
        real_scan = node._runtime._sm.scan

        def scan(*args: Any, real_scan: Any = real_scan) -> Any:
            threads.append(threading.current_thread().name)
            return real_scan(*args)

        node._runtime._sm.scan = scan  # type: ignore[method-assign]
    with kvstore.Client(list(cluster.peers.values()), timeout_s=WAIT_S) as client:
        assert len(client.scan(b"scan/")) == 10
        assert threads and all(name.startswith("kvstore-work-") for name in threads), threads
        threads.clear()
        assert len(client.scan(b"scan/", limit=3)) == 3  # bounded: read on the loop
        assert threads and all(not name.startswith("kvstore-work-") for name in threads)

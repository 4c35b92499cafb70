"""Fixtures for tests of `kvstore.Node` embedded in the test process.

`EmbeddedCluster` runs several `Node`s of one cluster in this process, on free loopback ports,
each with its own data directory; tests wait on conditions with deadlines (`wait_until`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvstore
from kvstore.testing.local_cluster import free_ports, wait_until

FAST = kvstore.Options(tick_s=0.025, election_ticks=12, max_value_bytes=4096)
"""Short ticks (elections in 0.3 to 0.6 s) and a small value limit (cheap oversized values)."""

WAIT_S = 15.0
"""Deadline of every wait on a condition: generous, because the machine may be loaded."""


class EmbeddedCluster:
    """`size` founding members n1..n<size> running in this process; more may join."""

    def __init__(self, base_dir: Path, size: int = 3, *, options: kvstore.Options = FAST) -> None:
        self.base_dir = base_dir
        self.options = options
        ports = free_ports(size)
        self.peers = {f"n{i}": f"127.0.0.1:{port}" for i, port in enumerate(ports, 1)}
        self.nodes: dict[str, kvstore.Node] = {}

    def start(self) -> EmbeddedCluster:
        """Start every founding member that is not running; wait for a leader."""
        for node_id in self.peers:
            if node_id not in self.nodes:
                self.start_node(node_id)
        self.leader()
        return self

    def start_node(
        self,
        node_id: str,
        *,
        join: bool = False,
        options: kvstore.Options | None = None,
        peers: dict[str, str] | None = None,
    ) -> kvstore.Node:
        """Start (or restart, from its data directory) one member."""
        node = kvstore.Node(
            node_id,
            self.base_dir / node_id,
            peers if peers is not None else self.peers,
            options=options or self.options,
            join=join,
        )
        node.start()
        self.nodes[node_id] = node
        return node

    def stop_node(self, node_id: str) -> None:
        self.nodes.pop(node_id).stop()

    def leader(self, *, exclude: str | None = None) -> kvstore.Node:
        """The running member that says it leads (waits for one)."""

        def find() -> kvstore.Node | None:
            for node in self.nodes.values():
                if node.node_id == exclude:
                    continue
                with contextlib.suppress(kvstore.KVStoreError):
                    if node.status().role == "leader":
                        return node
            return None

        return wait_until(find, timeout_s=WAIT_S, what="a leader")

    def followers(self) -> list[kvstore.Node]:
        leader = self.leader()
        return [node for node in self.nodes.values() if node is not leader]

    def wait_applied(self, index: int, nodes: list[kvstore.Node] | None = None) -> None:
        """Wait until each of `nodes` (default: all) has applied through `index`."""
        for node in nodes if nodes is not None else list(self.nodes.values()):
            wait_until(
                lambda node=node: node.status().applied_index >= index,
                timeout_s=WAIT_S,
                what=f"{node.node_id} to apply through {index}",
            )

    def stop(self) -> None:
        for node in list(self.nodes.values()):
            node.stop()
        self.nodes.clear()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A fresh 3-node embedded cluster for a test that changes or damages it."""
    embedded = EmbeddedCluster(tmp_path)
    try:
        yield embedded.start()
    finally:
        embedded.stop()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A 3-node embedded cluster shared by the tests of one module that leave it healthy."""
    embedded = EmbeddedCluster(tmp_path_factory.mktemp("shared"))
    try:
        yield embedded.start()
    finally:
        embedded.stop()

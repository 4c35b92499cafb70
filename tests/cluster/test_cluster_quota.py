"""A full store in a real 3-member cluster (issue 11: "A full LMDB map takes the whole cluster
down"). With a tiny quota, the write that would pass it is refused with `StorageFullError` on
every member alike, nothing stops serving, reads and deletes work, writes resume once deletes
free room, and a restarted member replays the refused entries the same way.

On the old code the store had no quota and a full map failed `apply` on every member at once:
these tests fail there (no StorageFullError; with a tiny map, every member stops serving)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvstore
from kvstore.testing.local_cluster import LocalCluster, free_ports, wait_until

from .conftest import WAIT_S, client_for, find_leader, member_status, wait_caught_up

QUOTA_BYTES = 64 << 10
VALUE = b"v" * 1000
"""1000 bytes of value plus a short key and 16 bytes of overhead: about 64 of them fit."""


def fill(put: object, prefix: bytes) -> list[bytes]:
    """Put keys until the store refuses one; return the keys that were stored."""
    stored = []
    for number in range(QUOTA_BYTES // len(VALUE) + 5):
        key = prefix + b"%04d" % number
        try:
            put(key, VALUE)  # type: ignore[operator]
        except kvstore.StorageFullError:
            return stored
        stored.append(key)
    pytest.fail(f"no StorageFullError after {len(stored)} puts of {len(VALUE)} bytes")


@contextlib.contextmanager
def quota_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(3)
    for member in cluster:
        member.extra_args += ["--quota-bytes", "64K"]
    try:
        cluster.start()
        with client_for(cluster) as client:
            cluster.wait_for_leader(client, timeout_s=WAIT_S)
        yield cluster
    finally:
        cluster.close()


def test_a_full_store_refuses_writes_on_every_member_and_recovers_after_deletes() -> None:
    with quota_cluster() as cluster, client_for(cluster) as client:
        stored = fill(client.put, b"fill/")
        assert len(stored) >= 50
        leader = find_leader(cluster, client)
        for member in cluster:
            with client_for(cluster, only=[member.node_id]) as one:
                # Through this member (a follower redirects the client to the leader)...
                with pytest.raises(kvstore.StorageFullError, match="quota"):
                    one.put(b"over/" + member.node_id.encode(), VALUE)
                with pytest.raises(kvstore.StorageFullError):
                    one.cas(stored[0], VALUE, VALUE * 2)
                # ...while reads go on, linearizable and local.
                assert one.get(stored[-1]) == VALUE
                assert one.get(stored[0], consistency="stale") is not None
        # Deletes and cas-to-delete work at the quota; then writes resume.
        assert client.delete(stored[0]) is True
        assert client.cas(stored[1], VALUE, None) is True
        client.put(b"after/1", VALUE)
        client.put(b"after/2", VALUE)
        with pytest.raises(kvstore.StorageFullError):
            client.put(b"after/3", VALUE)
        commit = member_status(client, cluster.members[leader].address)
        assert commit is not None
        for member in cluster:  # nobody stopped serving, and all hold the same
            assert member.running
            wait_caught_up(client, member.address, commit.commit_index)
            with client_for(cluster, only=[member.node_id]) as one:
                assert one.get(b"after/2", consistency="stale") == VALUE
                assert one.get(b"after/3", consistency="stale") is None
                assert one.get(b"over/n1", consistency="stale") is None
                assert one.get(stored[0], consistency="stale") is None
        # A follower killed and restarted replays the log, refused entries included, into the
        # same state.
        follower = next(m.node_id for m in cluster if m.node_id != leader)
        cluster.kill(follower)
        cluster.restart(follower)
        wait_caught_up(client, cluster.members[follower].address, commit.commit_index)
        with client_for(cluster, only=[follower]) as one:
            assert one.get(b"after/2", consistency="stale") == VALUE
            assert one.get(b"over/" + follower.encode(), consistency="stale") is None
            assert one.get(stored[-1], consistency="stale") == VALUE
        client.delete(b"after/1")
        client.put(b"after/4", VALUE)  # the restarted member is part of the quorum again


def test_embedded_nodes_raise_storage_full_on_every_member(tmp_path: Path) -> None:
    options = kvstore.Options(quota_bytes=QUOTA_BYTES, max_value_bytes=4096)
    peers = {f"n{i}": f"127.0.0.1:{port}" for i, port in enumerate(free_ports(3), 1)}
    nodes = [kvstore.Node(node_id, tmp_path / node_id, peers, options=options) for node_id in peers]
    try:
        for node in nodes:
            node.start()
        leader_id = nodes[0].wait_for_leader(timeout_s=WAIT_S)
        leader = next(node for node in nodes if node.node_id == leader_id)
        stored = fill(leader.put, b"fill/")
        for node in nodes:  # the leader, and followers that forward the write
            with pytest.raises(kvstore.StorageFullError):
                node.put(b"over/" + node.node_id.encode(), VALUE)
            assert node.get(stored[-1]) == VALUE
        follower = next(node for node in nodes if node is not leader)
        assert follower.delete(stored[0]) is True
        follower.put(b"after", VALUE)
        wait_until(
            lambda: all(node.get(b"after", consistency="stale") == VALUE for node in nodes),
            timeout_s=WAIT_S,
            what="every member to apply the put after the delete",
        )
    finally:
        for node in nodes:
            node.stop()

"""Membership of `kvstore serve` processes whose logs compact early (`--checkpoint-entries`):
a member added after compaction gets a snapshot and then serves stale reads with the right
data; a removed member stops receiving traffic; leadership can be handed over."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import kvstore
from kvstore.testing.local_cluster import LocalCluster, wait_until

from .conftest import (
    WAIT_S,
    client_for,
    find_leader,
    leader_commit,
    member_status,
    running_cluster,
    wait_caught_up,
)

CHECKPOINT_ENTRIES = 20
KEYS = 150


@pytest.fixture(scope="module")
def compacting_cluster() -> Iterator[LocalCluster]:
    with running_cluster(checkpoint_entries=CHECKPOINT_ENTRIES, log_level="INFO") as cluster:
        yield cluster


def _log(cluster: LocalCluster, node_id: str) -> str:
    path = cluster.members[node_id].log_path
    assert path is not None
    return path.read_text(errors="replace")


def test_member_added_after_compaction_gets_a_snapshot_then_is_removed(
    compacting_cluster: LocalCluster,
) -> None:
    cluster = compacting_cluster
    expected = {b"member/%04d" % n: b"v%d" % n for n in range(KEYS)}
    with client_for(cluster) as client:
        for key, value in expected.items():
            client.put(key, value)
        leader = find_leader(cluster, client)
        wait_until(
            lambda: "log compacted through" in _log(cluster, leader),
            timeout_s=WAIT_S,
            what="the leader to compact its log",
        )

        joiner = cluster.add_joiner("n4")  # `kvstore serve --join`
        client.add_member("n4", joiner.address, timeout_s=WAIT_S)

        def promoted() -> bool:
            status = member_status(client, joiner.address)
            return status is not None and status.role == "follower"

        wait_until(promoted, timeout_s=WAIT_S, what="n4 to become a voter")
        wait_caught_up(client, joiner.address, leader_commit(cluster, client))
        assert "installed snapshot" in _log(cluster, "n4"), "n4 caught up without a snapshot"
        with kvstore.Client([joiner.address]) as own:
            assert dict(own.scan(b"member/", consistency="stale")) == expected
            assert own.get(b"member/0042", consistency="stale") == b"v42"
        statuses = {m.node_id: member_status(client, m.address) for m in cluster}
        for status in statuses.values():
            assert status is not None and set(status.members) == {"n1", "n2", "n3", "n4"}

        # Removing it: the others stop sending it anything, so it stops advancing.
        client.remove_member("n4", timeout_s=WAIT_S)

        # It learns of its removal when the change commits, and applies that entry last.
        def knows_removed() -> bool:
            status = member_status(client, joiner.address)
            return (
                status is not None
                and status.role == "learner"
                and status.applied_index == status.commit_index
            )

        wait_until(knows_removed, timeout_s=WAIT_S, what="n4 to learn it was removed")
        removed_applied = member_status(client, joiner.address)
        assert removed_applied is not None
        with client_for(cluster, only=["n1", "n2", "n3"]) as members:
            for number in range(30):
                members.put(b"member/after-remove/%d" % number, b"x")
            commit = leader_commit(cluster, members, exclude=["n4"])
            for node_id in ("n1", "n2", "n3"):
                wait_caught_up(members, cluster.members[node_id].address, commit)
                status = member_status(members, cluster.members[node_id].address)
                assert status is not None and "n4" not in status.members
        after = member_status(client, joiner.address)
        assert after is not None
        assert after.applied_index == removed_applied.applied_index
        with kvstore.Client([joiner.address]) as own:
            assert own.get(b"member/after-remove/0", consistency="stale") is None
    cluster.stop("n4")
    del cluster.members["n4"]


def test_transfer_leadership_to_each_follower(compacting_cluster: LocalCluster) -> None:
    cluster = compacting_cluster
    with client_for(cluster) as client:
        for _ in range(2):
            leader = find_leader(cluster, client)
            target = next(m.node_id for m in cluster if m.node_id != leader)
            client.transfer_leadership(target, timeout_s=WAIT_S)
            assert find_leader(cluster, client) == target
            client.put(b"transfer/%s" % target.encode(), b"1")
            assert client.get(b"transfer/%s" % target.encode()) == b"1"
        with pytest.raises(kvstore.InvalidArgumentError):
            client.transfer_leadership("nobody")

"""Writes and reads against three `kvstore serve` processes: every balancer, every consistency
level, every member's status. The cluster is shared (these tests leave it healthy)."""

from __future__ import annotations

import pytest

import kvstore
from kvstore.testing.local_cluster import LocalCluster, wait_until

from .conftest import SECRET, WAIT_S, client_for, leader_commit, wait_caught_up

LEVELS = ("linearizable", "lease", "stale")


@pytest.mark.parametrize("balancer", ["weighted", "round_robin", "random", "latency"])
def test_writes_and_reads_through_each_balancer(
    secured_cluster: LocalCluster, balancer: str
) -> None:
    prefix = b"rw/%s/" % balancer.encode()
    expected = {prefix + b"%03d" % n: b"%s-%d" % (balancer.encode(), n) for n in range(40)}
    with client_for(secured_cluster, balancer=balancer) as client:
        for key, value in expected.items():
            client.put(key, value)
        for level in ("linearizable", "lease"):
            for key, value in expected.items():
                assert client.get(key, consistency=level) == value
            assert dict(client.scan(prefix, consistency=level)) == expected
        # A stale read may come from a member still behind: wait until every one caught up.
        commit = leader_commit(secured_cluster, client)
        for address in secured_cluster.addresses:
            wait_caught_up(client, address, commit)
        for key, value in expected.items():
            assert client.get(key, consistency="stale") == value
        assert client.cas(prefix + b"000", expected[prefix + b"000"], b"swapped")
        assert client.get(prefix + b"000") == b"swapped"
        assert client.delete(prefix + b"001")
        assert client.get(prefix + b"001") is None


def test_weighted_endpoints_given_as_a_mapping(secured_cluster: LocalCluster) -> None:
    weights = dict(zip(secured_cluster.addresses, (5.0, 1.0, 1.0), strict=True))
    with kvstore.Client(weights, secret=SECRET, balancer="weighted") as client:
        client.put(b"rw/weighted-map", b"1")
        for level in LEVELS[:2]:
            assert client.get(b"rw/weighted-map", consistency=level) == b"1"


def test_every_member_reads_at_every_level(secured_cluster: LocalCluster) -> None:
    """Each member answers each consistency level itself (clients pinned to one member)."""
    with client_for(secured_cluster) as writer:
        writer.put(b"rw/each", b"x")
        commit = leader_commit(secured_cluster, writer)
    for address in secured_cluster.addresses:
        with kvstore.Client([address], secret=SECRET) as pinned:
            for level in ("linearizable", "lease"):
                assert pinned.get(b"rw/each", consistency=level) == b"x"
            wait_caught_up(pinned, address, commit)
            assert pinned.get(b"rw/each", consistency="stale") == b"x"


def test_status_of_each_member(secured_cluster: LocalCluster) -> None:
    with client_for(secured_cluster) as client:

        def agreed() -> dict[str, kvstore.Status] | None:
            # Taken one by one, statuses may straddle an election: wait for a quiet moment.
            statuses = {m.node_id: client.status(m.address) for m in secured_cluster}
            leaders = {s.leader_id for s in statuses.values()}
            roles = [s.role for s in statuses.values()]
            return statuses if len(leaders) == 1 and roles.count("leader") == 1 else None

        statuses = wait_until(agreed, timeout_s=WAIT_S, what="the members to agree on a leader")
    expected_members = {m.node_id: m.address for m in secured_cluster}
    leader = next(node_id for node_id, s in statuses.items() if s.role == "leader")
    for node_id, status in statuses.items():
        assert status.node_id == node_id
        assert status.members == expected_members
        assert status.applied_index <= status.commit_index
        assert status.leader_id == leader
    assert len({s.term for s in statuses.values()}) == 1

"""Idle unauthenticated connections lock nobody out (issue 11: "slowloris").

On the old code 64 idle TCP connections filled the handshake slots: every new client and every
reconnecting member was dropped until they timed out (5 s), and each node wrote a warning per
refusal (53k lines in 15 s). Here an attacker keeps 200 idle connections open against the
leader, reopening each one the node closes, from the same address as the clients and members;
on the old code the client's write below fails within its timeout and the log lines are
unbounded.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import kvstore
from kvstore.testing.local_cluster import LocalCluster, wait_until

from .conftest import MEMBER_SECRET, Slowloris

pytestmark = pytest.mark.slow

REFUSAL_WORDS = ("evicting", "timed out", "refused", "bad handshake", "turning")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3, secret=MEMBER_SECRET) as local:
        yield local


def test_clients_and_a_reconnecting_member_get_in_under_slowloris(cluster: LocalCluster) -> None:
    with kvstore.Client(cluster.addresses, secret=MEMBER_SECRET, timeout_s=10) as admin:
        leader_id = cluster.wait_for_leader(admin, timeout_s=30)
        leader = cluster.members[leader_id]
        term = admin.status(leader.address).term
        log_lines_before = len(cluster.log_tail(leader_id, lines=100_000).splitlines())
        follower_id = next(m for m in cluster.members if m != leader_id)
        with Slowloris([leader.address], 200) as attacker:
            wait_until(lambda: attacker.opened >= 200, timeout_s=30, what="200 idle connections")
            # A new client connects and writes within its (short) timeout.
            with kvstore.Client([leader.address], secret=MEMBER_SECRET, timeout_s=3) as client:
                for i in range(20):
                    client.put(b"slowloris/%d" % i, b"v")
            # A member that restarts reconnects to the leader and catches up.
            cluster.kill(follower_id)
            admin.put(b"slowloris/while-down", b"v")
            commit = admin.status(leader.address).commit_index
            cluster.restart(follower_id)
            follower = cluster.members[follower_id]

            def caught_up() -> bool:
                try:
                    return admin.status(follower.address, timeout_s=2).applied_index >= commit
                except kvstore.KVStoreError:
                    return False

            wait_until(caught_up, timeout_s=30, what=f"{follower_id} to catch up")
            assert attacker.opened > 200, "the node never closed an idle connection"
        status = admin.status(leader.address)
        assert status.role == "leader" and status.term == term, "the leader lost its term"
    lines = cluster.log_tail(leader_id, lines=100_000).splitlines()[log_lines_before:]
    refusals = [line for line in lines if any(word in line for word in REFUSAL_WORDS)]
    # One token bucket per reason: a burst of 5 lines, then one per 5 s, for the few reasons.
    assert len(refusals) <= 40, f"{len(refusals)} refusal lines; first: {refusals[:3]}"
    print(f"attacker opened {attacker.opened} connections; {len(refusals)} refusal lines logged")

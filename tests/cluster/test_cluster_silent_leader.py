"""A client whose leader is paused (SIGSTOP, its connection still open) finds the new leader
within one call's timeout: each attempt waits at most `ATTEMPT_TIMEOUT_S`, then the client
forgets that leader and asks the others (found by the cluster tests: it used to keep sending
every write to the paused leader until it came back)."""

from __future__ import annotations

import time

from kvstore.client.aio_client import ATTEMPT_TIMEOUT_S

from .conftest import ELECTION_TIMEOUT_MAX_S, client_for, find_leader, running_cluster

WRITES = 20
"""Writes after the pause; each must succeed within its own timeout."""


def test_writes_through_a_client_that_knew_the_paused_leader() -> None:
    with running_cluster() as cluster, client_for(cluster) as client:
        old_leader = find_leader(cluster, client)
        client.put(b"silent/before", b"0", timeout_s=5.0)
        assert client.leader_address == cluster.members[old_leader].address
        cluster.pause(old_leader)
        try:
            call_timeout_s = ATTEMPT_TIMEOUT_S + 2 * ELECTION_TIMEOUT_MAX_S + 1.0
            started = time.monotonic()
            for number in range(WRITES):
                client.put(b"silent/%d" % number, b"%d" % number, timeout_s=call_timeout_s)
            took_s = time.monotonic() - started
            print(f"{WRITES} writes around a paused leader took {took_s:.2f}s")
            assert client.leader_address != cluster.members[old_leader].address
            others = [m.node_id for m in cluster if m.node_id != old_leader]
            with client_for(cluster, only=others) as survivors:
                for number in range(WRITES):
                    got = survivors.get(b"silent/%d" % number, consistency="linearizable")
                    assert got == b"%d" % number
        finally:
            cluster.resume(old_leader)

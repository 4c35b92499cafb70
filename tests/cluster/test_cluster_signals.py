"""`kvstore serve` shuts down cleanly on SIGTERM and SIGINT: it exits 0 within a few seconds
and keeps what it acknowledged (it restarts from its data directory with it)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from kvstore.testing.local_cluster import LocalCluster

from .conftest import WAIT_S, client_for, find_leader, running_cluster

EXIT_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def pair() -> Iterator[LocalCluster]:
    """Two members: a stopped one leaves the other without a quorum, so each test restarts
    what it stopped before it checks anything."""
    with running_cluster(2) as cluster:
        yield cluster


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_exits_zero_promptly_on_signal(pair: LocalCluster, sig: signal.Signals) -> None:
    with client_for(pair) as client:
        key = b"signal/%s" % sig.name.encode()
        client.put(key, b"kept")
        leader = find_leader(pair, client)
        for node_id in [m.node_id for m in pair if m.node_id != leader] + [leader]:
            process = pair.members[node_id].process
            assert process is not None
            sent_at = time.monotonic()
            process.send_signal(sig)
            code = process.wait(timeout=WAIT_S)
            took_s = time.monotonic() - sent_at
            assert code == 0, f"{node_id} exited with {code} on {sig.name}"
            assert took_s < EXIT_WITHIN_S, f"{node_id} took {took_s:.1f}s to exit"
            pair.kill(node_id)  # reaps and forgets the process (already gone)
        pair.start()
        find_leader(pair, client)
        assert client.get(key) == b"kept"
        client.put(key, b"still writable")
        assert client.get(key, consistency="lease") == b"still writable"
    assert all(m.running for m in pair)

"""Nothing before authentication costs more than a few KiB (issue 11: "one unauthenticated frame
knocks a leader over").

On the old code one unauthenticated 8 MiB frame of empty msgpack arrays grew the leader by
600 MB, froze its loop and cost it the leadership; the node waited for the whole body (its
pre-auth limit was the 64 MiB peer limit), so the first check below already fails there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import kvstore
from kvstore.testing.local_cluster import LocalCluster

from .conftest import MEMBER_SECRET, RssSampler, bomb, rss_bytes

RSS_GROWTH_MAX_BYTES = 8 << 20
"""What the whole barrage may add to the leader's RSS (transient peaks included)."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3, secret=MEMBER_SECRET) as local:
        yield local


def _leader(cluster: LocalCluster, client: kvstore.Client) -> tuple[str, int]:
    leader_id = cluster.wait_for_leader(client, timeout_s=30)
    status = client.status(cluster.members[leader_id].address)
    return leader_id, status.term


def test_preauth_bombs_are_refused_from_the_header_and_cost_the_leader_nothing(
    cluster: LocalCluster,
) -> None:
    with kvstore.Client(cluster.addresses, secret=MEMBER_SECRET, timeout_s=10) as client:
        leader_id, term = _leader(cluster, client)
        client.put(b"bomb/before", b"1")
        leader = cluster.members[leader_id]
        assert leader.process is not None
        pid = leader.process.pid
        baseline = rss_bytes(pid)
        with RssSampler(pid) as rss:
            # The header of an 8 MiB frame and the first 64 KiB of its body: closed at once,
            # without waiting for (or buffering) the rest.
            assert bomb(leader.address, 8 << 20, send_bytes=64 << 10)
            # A whole 8 MiB frame, then a stream of 4 MiB frames: each closed from its header.
            assert bomb(leader.address, 8 << 20)
            for _ in range(10):
                assert bomb(leader.address, 4 << 20)
        grown = rss.max_bytes - baseline
        assert grown <= RSS_GROWTH_MAX_BYTES, f"leader RSS grew by {grown >> 10} KiB"
        # The leader kept its leadership and its term, and serves.
        client.put(b"bomb/after", b"2")
        assert client.get(b"bomb/after") == b"2"
        assert _leader(cluster, client) == (leader_id, term)
    log = cluster.log_tail(leader_id, lines=10_000)
    lines = [line for line in log.splitlines() if "bad handshake" in line]
    # A token bucket per reason: a burst of LOG_BURST (5) lines, then one per 5 s.
    assert len(lines) <= 7, f"{len(lines)} log lines for 12 refusals: not rate limited"
    print(f"leader RSS baseline {baseline >> 20} MiB, peak growth {grown >> 10} KiB")

"""Three `kvstore.Node`s in this process: the API end to end, and `kvstore.aio.Client` from
asyncio. The cluster is shared by the module: no test here damages it."""

from __future__ import annotations

import asyncio
import threading

import pytest

import kvstore
import kvstore.aio
from kvstore.testing.local_cluster import wait_until

from .conftest import WAIT_S, EmbeddedCluster

CONSISTENCY = ("linearizable", "lease", "stale")


def test_writes_on_any_member_are_read_on_every_member(shared_cluster: EmbeddedCluster) -> None:
    """A write returns once applied on the member that took it; linearizable and lease reads
    see it anywhere at once, stale reads once that member has applied it."""
    for number, writer in enumerate(shared_cluster.nodes.values()):
        key = b"emb/%d" % number
        writer.put(key, b"from-" + writer.node_id.encode())
        assert writer.get(key, consistency="stale") == b"from-" + writer.node_id.encode()
        for reader in shared_cluster.nodes.values():
            for level in ("linearizable", "lease"):
                assert reader.get(key, consistency=level) == b"from-" + writer.node_id.encode()
    commit = shared_cluster.leader().status().commit_index
    shared_cluster.wait_applied(commit)
    for reader in shared_cluster.nodes.values():
        assert reader.get(b"emb/0", consistency="stale") == b"from-n1"
        assert reader.get(b"emb/missing", consistency="stale") is None


def test_delete_cas_and_scan_semantics(shared_cluster: EmbeddedCluster) -> None:
    leader = shared_cluster.leader()
    follower = shared_cluster.followers()[0]
    assert follower.cas(b"cas/k", None, b"one")  # absent -> set
    assert not leader.cas(b"cas/k", None, b"two")  # not absent any more
    assert not follower.cas(b"cas/k", b"wrong", b"two")
    assert leader.cas(b"cas/k", b"one", b"two")
    assert follower.get(b"cas/k") == b"two"
    assert leader.cas(b"cas/k", b"two", None)  # swap to "absent" deletes
    assert follower.get(b"cas/k") is None
    follower.put(b"del/k", b"v")
    assert leader.delete(b"del/k") is True
    assert follower.delete(b"del/k") is False
    assert leader.get(b"del/k") is None

    for key in (b"scan/b", b"scan/a", b"scan/c", b"scam", b"scan"):
        follower.put(key, key.upper())
    for node in shared_cluster.nodes.values():
        for level in CONSISTENCY:
            if level == "stale":
                shared_cluster.wait_applied(leader.status().commit_index, [node])
            pairs = node.scan(b"scan/", consistency=level)
            assert pairs == [(b"scan/a", b"SCAN/A"), (b"scan/b", b"SCAN/B"), (b"scan/c", b"SCAN/C")]
            assert node.scan(b"scan/", limit=2, consistency=level) == pairs[:2]
    everything = leader.scan()
    assert [k for k, _ in everything] == sorted(k for k, _ in everything)


def test_status_names_one_leader_and_the_members(shared_cluster: EmbeddedCluster) -> None:
    expected_members = {node.node_id: node.address for node in shared_cluster.nodes.values()}

    def agreed() -> list[kvstore.Status] | None:
        # Taken one by one, statuses may straddle an election: wait for a quiet moment.
        statuses = [node.status() for node in shared_cluster.nodes.values()]
        leaders = {s.leader_id for s in statuses}
        roles = [s.role for s in statuses]
        return statuses if len(leaders) == 1 and roles.count("leader") == 1 else None

    statuses = wait_until(agreed, timeout_s=WAIT_S, what="the members to agree on a leader")
    leader_id = next(s.node_id for s in statuses if s.role == "leader")
    for status in statuses:
        assert status.members == expected_members
        assert status.role in ("leader", "follower")
        assert status.leader_id == leader_id
        assert status.applied_index <= status.commit_index
    assert all(node.wait_for_leader() == leader_id for node in shared_cluster.nodes.values())


def test_concurrent_writers_share_fsyncs(shared_cluster: EmbeddedCluster) -> None:
    """Group commit: many writers in flight share the leader's fsyncs, and every write that
    returned is there."""
    leader = shared_cluster.leader()
    assert leader._runtime._wal is not None
    syncs_before = leader._runtime._wal.stats().fdatasyncs
    threads_n, writes_n = 8, 40
    errors: list[BaseException] = []

    def write(thread: int) -> None:
        try:
            for number in range(writes_n):
                leader.put(b"group/%d/%d" % (thread, number), b"x" * 100)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    syncs = leader._runtime._wal.stats().fdatasyncs - syncs_before
    writes = threads_n * writes_n
    print(f"{syncs} fsyncs for {writes} concurrent writes")
    assert syncs < writes * 0.75, f"{syncs} fsyncs for {writes} concurrent writes"
    assert len(leader.scan(b"group/")) == writes


def test_transfer_leadership_and_back(shared_cluster: EmbeddedCluster) -> None:
    leader = shared_cluster.leader()
    target = shared_cluster.followers()[0]
    leader.transfer_leadership(target.node_id)
    assert target.status().role == "leader"
    new_leader = shared_cluster.leader()
    assert new_leader is target
    target.put(b"transfer/after", b"1")
    assert leader.get(b"transfer/after") == b"1"
    # The old leader asked about a transfer redirects to the new one.
    with pytest.raises(kvstore.NotLeaderError) as info:
        leader.transfer_leadership(leader.node_id)
    assert info.value.leader_id == target.node_id
    assert info.value.leader_address == target.address
    target.transfer_leadership(leader.node_id)
    assert shared_cluster.leader() is leader


def test_aio_client_from_asyncio(shared_cluster: EmbeddedCluster) -> None:
    addresses = [node.address for node in shared_cluster.nodes.values()]

    async def main() -> None:
        async with kvstore.aio.Client(addresses, balancer="round_robin") as client:
            await asyncio.gather(*(client.put(b"aio/%02d" % i, b"%d" % i) for i in range(50)))
            for level in CONSISTENCY:
                values = await asyncio.gather(
                    *(client.get(b"aio/%02d" % i, consistency=level) for i in range(50))
                )
                if level != "stale":  # a stale read may come from a member still behind
                    assert values == [b"%d" % i for i in range(50)]
            assert await client.cas(b"aio/00", b"0", b"zero")
            assert not await client.cas(b"aio/00", b"0", b"again")
            assert await client.delete(b"aio/01")
            assert await client.get(b"aio/01") is None
            pairs = await client.scan(b"aio/", limit=3)
            assert pairs == [(b"aio/00", b"zero"), (b"aio/02", b"2"), (b"aio/03", b"3")]
            statuses = [await client.status(address) for address in addresses]
            assert sorted(s.node_id for s in statuses) == sorted(shared_cluster.nodes)
            with pytest.raises(kvstore.InvalidArgumentError):
                await client.put(b"", b"v")

    asyncio.run(main())


def test_timed_out_call_says_its_outcome_is_unknown(
    shared_cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member that never answers: the blocking client reports the call's own timeout (the
    outcome is unknown), not that its private event loop hung."""
    node = shared_cluster.followers()[0]

    async def never(consistency: str, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s + 5)

    monkeypatch.setattr(node._runtime, "read_barrier", never)
    with (
        kvstore.Client([node.address]) as client,
        pytest.raises(kvstore.OperationTimeoutError, match="outcome is unknown"),
    ):
        client.get(b"k", timeout_s=0.3)

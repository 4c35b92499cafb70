"""A client credential can never speak the peer protocol (issue 11: "a client credential can
speak Raft").

On the old code a client holding the (single) secret connected claiming member id "n2" and
sent a forged APPEND that the follower applied; connecting under n2's id also dropped the real
n2's connection. These tests fail there: `PeerTransport` had no `client_secret`, and with one
secret the forged peer handshake succeeded.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

import kvstore
from kvstore.consensus.types import Entry, Message, MessageType
from kvstore.errors import AuthenticationError, RemoteProtocolError
from kvstore.testing.local_cluster import LocalCluster
from kvstore.transport.codec import FrameKind, encode_message
from kvstore.transport.tcp import connect_client, connect_peer

from .conftest import CLIENT_SECRET, MEMBER_SECRET, heartbeat, members, run, wait_until

FORGED_TERM = 99


def forged_append() -> Message:
    """What the attacker sends as "n2": a higher term, one entry, a commit index covering it."""
    return Message(
        MessageType.APPEND,
        "n1",
        "n2",
        term=FORGED_TERM,
        log_term=0,
        index=0,
        entries=(Entry(FORGED_TERM, 1, data=b"forged put"),),
        commit=1,
    )


def test_a_client_secret_holder_cannot_pose_as_a_member_nor_send_peer_frames(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with members("n1", "n2") as nodes:
            n1, n2 = nodes["n1"], nodes["n2"]
            n2.transport.send([heartbeat("n2", "n1", 1)])
            await wait_until(lambda: n1.received and "n2" in n1.transport._inbound)
            real = n1.transport._inbound["n2"]

            # 1. The peer handshake under n2's id with the client secret: refused.
            with pytest.raises(AuthenticationError):
                await connect_peer(
                    n1.transport.address,
                    node_id="n2",
                    target_id="n1",
                    secret=CLIENT_SECRET,
                    member_ids=["n1", "n2"],
                    timeout_s=5,
                )
            # 2. Authenticated as a client, it sends the forged APPEND: the connection closes.
            conn = await connect_client(n1.transport.address, secret=CLIENT_SECRET, timeout_s=5)
            await conn.send(FrameKind.RAFT, [encode_message(forged_append())])
            with pytest.raises((ConnectionError, RemoteProtocolError)):
                async with asyncio.timeout(5):
                    await conn.receive()
            conn.abort()

            # Nothing reached consensus, and the real n2 kept its connection and still delivers.
            assert all(m.term != FORGED_TERM for m in n1.received)
            assert n1.transport._inbound.get("n2") is real and not real.closed
            n2.transport.send([heartbeat("n2", "n1", 2)])
            await wait_until(lambda: any(m.term == 2 for m in n1.received))
            assert n1.requests == []

    with caplog.at_level(logging.WARNING, logger="kvstore.transport"):
        run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert any("did not prove" in m for m in messages)
    assert any("client connection may not send RAFT" in m for m in messages)


def test_with_one_secret_a_client_connection_still_cannot_send_peer_frames() -> None:
    """Without a separate client secret, clients prove the member secret; a connection that
    authenticated as a client is still never allowed a RAFT or SNAPSHOT_CHUNK frame."""

    async def main() -> None:
        async with members("n1", client_secret=None) as nodes:
            n1 = nodes["n1"]
            for kind, body in (
                (FrameKind.RAFT, [encode_message(forged_append())]),
                (FrameKind.SNAPSHOT_CHUNK, {"seq": 0, "data": b"x"}),
            ):
                conn = await connect_client(n1.transport.address, secret=MEMBER_SECRET, timeout_s=5)
                await conn.send(kind, body)
                with pytest.raises((ConnectionError, RemoteProtocolError)):
                    async with asyncio.timeout(5):
                        await conn.receive()
                conn.abort()
            assert n1.received == []

    run(main())


def test_the_member_secret_still_connects_members() -> None:
    async def main() -> None:
        async with members("n1", "n2", "n3") as nodes:
            for sender in nodes:
                nodes[sender].transport.send(
                    [heartbeat(sender, other, 5) for other in nodes if other != sender]
                )
            await wait_until(lambda: all(len(n.received) == 2 for n in nodes.values()))

    run(main())


@pytest.mark.slow
def test_serve_with_a_client_secret_file_end_to_end(tmp_path: Path) -> None:
    """Three `kvstore serve --secret-file M --client-secret-file C` processes: clients with C
    read and write, a client with M is refused (it is not the client secret), and C forges no
    peer connection to a follower: the cluster's terms do not move."""
    client_secret_file = tmp_path / "client-secret"
    client_secret_file.write_bytes(CLIENT_SECRET)
    client_secret_file.chmod(0o600)
    cluster = LocalCluster(3, secret=MEMBER_SECRET)
    for member in cluster:
        member.extra_args += ["--client-secret-file", str(client_secret_file)]
    with cluster:
        with kvstore.Client(cluster.addresses, secret=CLIENT_SECRET, timeout_s=10) as client:
            leader_id = cluster.wait_for_leader(client, timeout_s=30)
            client.put(b"forged/key", b"honest")
            terms = {m.node_id: client.status(m.address).term for m in cluster}
            follower = next(m for m in cluster if m.node_id != leader_id)

            async def forge() -> None:
                with pytest.raises(AuthenticationError):
                    await connect_peer(
                        follower.address,
                        node_id=leader_id,
                        target_id=follower.node_id,
                        secret=CLIENT_SECRET,
                        member_ids=list(cluster.members),
                        timeout_s=5,
                    )
                conn = await connect_client(follower.address, secret=CLIENT_SECRET, timeout_s=5)
                append = forged_append()._replace(
                    recipient=follower.node_id, sender=leader_id, term=terms[leader_id] + 5
                )
                await conn.send(FrameKind.RAFT, [encode_message(append)])
                with pytest.raises((ConnectionError, RemoteProtocolError)):
                    async with asyncio.timeout(5):
                        await conn.receive()
                conn.abort()

            run(forge())
            assert client.get(b"forged/key") == b"honest"
            # The forged APPEND carried the leader's term + 5: had any member taken it, its term
            # would have jumped there. (An ordinary election under load moves terms by one or
            # two, so equality would be a flaky proxy for "nothing was accepted".)
            forged_term = terms[leader_id] + 5
            after = {m.node_id: client.status(m.address).term for m in cluster}
            assert all(term < forged_term for term in after.values()), (terms, after)
        with (
            kvstore.Client(cluster.addresses, secret=MEMBER_SECRET, timeout_s=3) as member_secret,
            pytest.raises(AuthenticationError),
        ):
            member_secret.get(b"forged/key", timeout_s=3)

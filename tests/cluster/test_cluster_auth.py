"""Authentication and hostile bytes against `kvstore serve` processes that hold a secret.

A client or a node without the right secret is refused and learns nothing; garbage and an
oversized frame close only their own connection, and the member keeps serving."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from pathlib import Path

import pytest

import kvstore
from kvstore.testing.local_cluster import LocalCluster, free_ports, wait_until
from kvstore.transport.codec import PROTOCOL_VERSION, FrameKind
from kvstore.transport.tcp import connect_client

from .conftest import SECRET, WAIT_S, client_for, member_status


def _statuses(cluster: LocalCluster) -> dict[str, tuple[str, int, str | None]]:
    with client_for(cluster) as client:
        result = {}
        for member in cluster:
            status = member_status(client, member.address)
            assert status is not None
            result[member.node_id] = (status.role, status.term, status.leader_id)
        return result


@pytest.mark.parametrize("secret", [b"wrong-secret", None], ids=["wrong-secret", "no-secret"])
def test_client_without_the_secret_is_refused_at_once(
    secured_cluster: LocalCluster, secret: bytes | None
) -> None:
    with client_for(secured_cluster) as good:
        good.put(b"auth/hidden", b"classified")
    started = time.monotonic()
    with kvstore.Client(secured_cluster.addresses, secret=secret, timeout_s=5) as bad:
        with pytest.raises(kvstore.AuthenticationError):
            bad.get(b"auth/hidden", consistency="stale")
        with pytest.raises(kvstore.AuthenticationError):
            bad.put(b"auth/intruder", b"x")
        with pytest.raises(kvstore.AuthenticationError):
            bad.status(secured_cluster.addresses[0])
    assert time.monotonic() - started < 5, "a refusal should not wait for a timeout"
    with client_for(secured_cluster) as good:
        assert good.get(b"auth/intruder") is None


def test_node_with_the_wrong_secret_is_refused_and_learns_nothing(
    secured_cluster: LocalCluster, tmp_path: Path
) -> None:
    """A node posing as member n3 with a wrong secret dials the others: they refuse it, so it
    never hears of a leader or of any data, and the cluster's term does not move."""
    with client_for(secured_cluster) as client:
        client.put(b"auth/data", b"members only")
    before = _statuses(secured_cluster)
    peers = {m.node_id: m.address for m in secured_cluster}
    peers["n3"] = f"127.0.0.1:{free_ports(1)[0]}"
    logs = [m.log_path for m in secured_cluster if m.node_id != "n3"]
    refusals_before = sum(
        path.read_text(errors="replace").count("refused") for path in logs if path is not None
    )
    options = kvstore.Options(tick_s=0.02)  # campaigns early and often
    with kvstore.Node("n3", tmp_path / "rogue", peers, secret=b"wrong", options=options) as rogue:
        wait_until(
            lambda: (
                sum(
                    path.read_text(errors="replace").count("refused")
                    for path in logs
                    if path is not None
                )
                >= refusals_before + 2
            ),
            timeout_s=WAIT_S,
            what="the members to refuse the rogue node",
        )
        status = rogue.status()
        assert status.leader_id is None
        assert rogue.get(b"auth/data", consistency="stale") is None
        assert rogue.scan(consistency="stale") == []
    assert _statuses(secured_cluster) == before


def _connection_closed(sock: socket.socket) -> bool:
    """Whether the node closed `sock` (EOF or reset); anything it sends first is discarded."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (TimeoutError, BlockingIOError):
        return False
    except ConnectionError:
        return True


def _assert_closes(address: str, payload: bytes) -> None:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendall(payload)
        except ConnectionError:
            return  # closed while we were still sending: just as good
        wait_until(
            lambda: _connection_closed(sock),
            timeout_s=WAIT_S,
            what="the node to close a connection that sent garbage",
        )


def test_garbage_and_oversized_frames_do_not_crash_a_member(
    secured_cluster: LocalCluster, seed: int
) -> None:
    rng = random.Random(seed)
    target = secured_cluster.members["n1"]
    before = target.process.pid if target.process is not None else None
    _assert_closes(target.address, rng.randbytes(4096))
    # A length prefix far above any limit, before any handshake.
    _assert_closes(target.address, struct.pack(">IBB", 0xFFFFFFF0, PROTOCOL_VERSION, 1))
    # Complete frames: of an unknown version and kind, and a HELLO that is not msgpack.
    _assert_closes(target.address, struct.pack(">IBB", 5, 99, 200) + b"\xc1\xc1\xc1")
    _assert_closes(
        target.address,
        struct.pack(">IBB", 10, PROTOCOL_VERSION, FrameKind.HELLO) + b"\xc1" * 8,
    )

    async def oversized_after_handshake() -> bool:
        # An authenticated client sends a REQUEST frame announced above the client limit.
        conn = await connect_client(target.address, secret=SECRET, timeout_s=5)
        try:
            header = struct.pack(">IBB", (64 << 20) + 2, PROTOCOL_VERSION, FrameKind.REQUEST)
            conn._write_bytes(header + b"\x00" * 1024)
            try:
                async with asyncio.timeout(WAIT_S):
                    while True:
                        await conn.receive()  # an ERROR frame may come first
            except (OSError, kvstore.KVStoreError, EOFError):
                return True
        finally:
            conn.abort()

    assert asyncio.run(oversized_after_handshake())
    assert target.running and target.process is not None and target.process.pid == before
    with kvstore.Client([target.address], secret=SECRET) as client:
        client.put(b"auth/after-garbage", b"fine")
        assert client.get(b"auth/after-garbage") == b"fine"

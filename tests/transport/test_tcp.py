"""The asyncio TCP layer over real sockets on 127.0.0.1 (ephemeral ports).

Each test runs its own event loop with `asyncio.run` and a deadline; waits are on conditions
with deadlines, never bare sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from kvstore.consensus.types import Entry, Message, MessageType
from kvstore.errors import AuthenticationError, RemoteProtocolError
from kvstore.transport.codec import PROTOCOL_VERSION, FrameKind, encode_frame, encode_message
from kvstore.transport.tcp import (
    ERROR_BUSY,
    FramedConnection,
    PeerTransport,
    connect_client,
    connect_peer,
    parse_address,
)
from tests.transport.peers import started

SECRET = b"s3cret"
TEST_DEADLINE_S = 20.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, TEST_DEADLINE_S))


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.005)


def heartbeat(sender: str, recipient: str, term: int = 1, context: bytes = b"") -> Message:
    return Message(MessageType.HEARTBEAT, recipient, sender, term=term, context=context)


class Node:
    """One PeerTransport and everything it delivered."""

    def __init__(self, node_id: str, *, secret: bytes | None = SECRET, **kw: Any) -> None:
        self.node_id = node_id
        self.received: list[Message] = []
        self.unreachable: list[str] = []
        self.chunks: list[tuple[str, object]] = []
        self.clients: list[FramedConnection] = []
        self.transport = PeerTransport(
            node_id,
            kw.pop("listen_address", "127.0.0.1:0"),
            kw.pop("peers", {}),
            secret=secret,
            on_message=self.received.append,
            on_unreachable=self.unreachable.append,
            on_client_connection=self.echo,
            on_snapshot_chunk=lambda peer, body: self.chunks.append((peer, body)),
            **kw,
        )

    async def echo(self, conn: FramedConnection) -> None:
        # A stand-in for the node's client service: answers each REQUEST with its body.
        self.clients.append(conn)
        while True:
            _kind, body = await conn.receive()
            await conn.send(FrameKind.RESPONSE, body)

    def from_peer(self, sender: str) -> list[Message]:
        return [m for m in self.received if m.sender == sender]


@contextlib.asynccontextmanager
async def cluster(*ids: str, **kw: Any) -> AsyncIterator[dict[str, Node]]:
    """Started nodes that know each other's (ephemeral) addresses."""
    nodes = {node_id: Node(node_id, **kw) for node_id in ids}
    async with started(nodes):
        yield nodes


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """A listener that accepts TCP connections and never says a word; yields its address."""
    writers: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: writers.append(w), "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def raw_connection(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = parse_address(address)
    return await asyncio.open_connection(host, port)


async def closed_by_other_side(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bool:
    """Read until EOF or a reset; True if the other side closed the connection in time."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return True


# --- messages both ways -----------------------------------------------------------------------


def test_three_transports_exchange_messages_both_ways_in_order() -> None:
    async def main() -> None:
        async with cluster("n1", "n2", "n3") as nodes:
            for term in range(1, 21):
                for sender in nodes:
                    nodes[sender].transport.send(
                        [heartbeat(sender, other, term) for other in nodes if other != sender]
                    )
            await wait_until(lambda: all(len(n.received) == 40 for n in nodes.values()))
            for node_id, node in nodes.items():
                for sender in nodes:
                    if sender != node_id:
                        got = node.from_peer(sender)
                        assert [m.term for m in got] == list(range(1, 21))  # FIFO per peer
                        assert all(m.recipient == node_id for m in got)
                assert node.unreachable == []

    run(main())


def test_append_with_entries_and_a_batch_per_recipient() -> None:
    async def main() -> None:
        async with cluster("n1", "n2", "n3") as nodes:
            entries = tuple(Entry(3, i, data=bytes([i]) * 100) for i in range(1, 65))
            append = Message(MessageType.APPEND, "n2", "n1", 3, 2, 0, entries, 10)
            # Mixed recipients in one call: each gets its own, in call order.
            nodes["n1"].transport.send(
                [append, heartbeat("n1", "n3"), heartbeat("n1", "n2", context=b"r1")]
            )
            await wait_until(lambda: len(nodes["n2"].received) == 2 and nodes["n3"].received)
            assert nodes["n2"].received == [append, heartbeat("n1", "n2", context=b"r1")]
            assert nodes["n3"].received == [heartbeat("n1", "n3")]

    run(main())


def test_snapshot_chunks_reach_the_handler() -> None:
    async def main() -> None:
        async with cluster("n1", "n2", snapshot_queue_bytes_max=1 << 16) as nodes:
            chunks = [{"seq": i, "data": bytes([i]) * 20_000} for i in range(10)]
            accepted = []
            for chunk in chunks:
                accepted.append(nodes["n1"].transport.send_snapshot_chunk("n2", chunk))
            # Some fit, the rest are refused (not blocked) once the queue is full.
            assert accepted[0] and not all(accepted)
            sent = [c for c, ok in zip(chunks, accepted, strict=True) if ok]
            await wait_until(lambda: len(nodes["n2"].chunks) == len(sent))
            assert nodes["n2"].chunks == [("n1", c) for c in sent]
            assert not nodes["n1"].transport.send_snapshot_chunk("nobody", {"seq": 0})

    run(main())


# --- failures ---------------------------------------------------------------------------------


def test_a_peer_that_goes_away_and_comes_back_is_reconnected() -> None:
    async def main() -> None:
        async with cluster("n1", "n2") as nodes:
            n1 = nodes["n1"].transport
            n2_address = nodes["n2"].transport.address
            n1.send([heartbeat("n1", "n2", 1)])
            await wait_until(lambda: nodes["n2"].received)
            await nodes["n2"].transport.close()
            # n1 notices: the connection drops, redials fail; each is reported.
            await wait_until(lambda: "n2" in nodes["n1"].unreachable, what="unreachable")
            n1.send([heartbeat("n1", "n2", 2)])
            # n2 restarts on the same address.
            back = Node("n2", listen_address=n2_address, peers={"n1": n1.address})
            await back.transport.start()
            try:
                # Raft keeps sending (heartbeats); one soon gets through the new connection.
                term = 3
                deadline = time.monotonic() + 8
                while not back.received and time.monotonic() < deadline:
                    n1.send([heartbeat("n1", "n2", term)])
                    term += 1
                    await wait_until(lambda: back.received or n1.queued_bytes("n2") == 0, 1)
                    await asyncio.sleep(0.02)  # send cadence, like a heartbeat tick
                assert back.received and back.received[0].sender == "n1"
                # And the other direction works too.
                back.transport.send([heartbeat("n2", "n1", 99)])
                await wait_until(lambda: any(m.term == 99 for m in nodes["n1"].received))
            finally:
                await back.transport.close()

    run(main())


def test_unreachable_peer_is_reported_and_send_never_blocks() -> None:
    async def main() -> None:
        node = Node("n1", peers={"n2": f"127.0.0.1:{free_port()}"})
        await node.transport.start()
        try:
            started = time.monotonic()
            for term in range(1000):
                node.transport.send([heartbeat("n1", "n2", term)])
            elapsed_s = time.monotonic() - started
            assert elapsed_s < 0.5, f"1000 sends took {elapsed_s:.3f} s"
            await wait_until(lambda: "n2" in node.unreachable)
            assert not node.transport.is_connected("n2")
            # A recipient nobody knows is reported as well (not raised).
            node.transport.send([heartbeat("n1", "ghost")])
            await wait_until(lambda: "ghost" in node.unreachable)
        finally:
            await node.transport.close()

    run(main())


def test_full_queue_drops_and_reports_without_blocking() -> None:
    async def main() -> None:
        # A "peer" that accepts TCP but never answers the handshake: the link stays stuck
        # dialing, so everything sent piles up in the queue.
        async with silent_server() as address:
            node = Node(
                "n1",
                peers={"n2": address},
                send_queue_bytes_max=4096,
                handshake_timeout_s=10,
            )
            await node.transport.start()
            try:
                big = Message(
                    MessageType.APPEND, "n2", "n1", entries=(Entry(1, 1, data=b"x" * 500),)
                )
                for _ in range(100):
                    node.transport.send([big])
                assert node.transport.queued_bytes("n2") <= 4096
                assert node.transport.dropped_messages >= 90
                await wait_until(lambda: node.unreachable == ["n2"])
                # Reports are coalesced: a burst of drops is one report, not one per message.
                assert node.unreachable.count("n2") == 1
            finally:
                await node.transport.close()

    run(main())


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x05\x07\x01hello",  # bad version
        b"\x00\x00\x00\x03\x01\x63\x90",  # unknown kind
        struct.pack(">IBB", 0xFFFFFF00, PROTOCOL_VERSION, 1),  # oversized length prefix
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # somebody else's protocol
        encode_frame(FrameKind.RAFT, []),  # a RAFT frame before any handshake
        struct.pack(">IBB", 4, PROTOCOL_VERSION, 1) + b"\xc1\xc1",  # HELLO that is not msgpack
    ],
    ids=["version", "kind", "oversized", "http", "raft-first", "bad-msgpack"],
)
def test_garbage_closes_that_connection_and_the_node_keeps_serving(
    garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with cluster("n1", "n2") as nodes:
            reader, writer = await raw_connection(nodes["n2"].transport.address)
            writer.write(garbage)
            assert await closed_by_other_side(reader)
            writer.close()
            await writer.wait_closed()
            nodes["n1"].transport.send([heartbeat("n1", "n2")])
            await wait_until(lambda: len(nodes["n2"].received) == 1)

    with caplog.at_level(logging.WARNING, logger="kvstore.transport"):
        run(main())
    assert any("n2:" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_garbage_from_an_authenticated_peer_closes_only_its_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with cluster("n1", "n2", "n3") as nodes:
            n2 = nodes["n2"].transport
            conn = await connect_peer(
                n2.address,
                node_id="n3",
                target_id="n2",
                secret=SECRET,
                member_ids=["n1", "n2", "n3"],
                timeout_s=5,
            )
            # A message claiming another sender is dropped; the connection stays.
            forged = encode_message(heartbeat("n1", "n2", 50))
            honest = encode_message(heartbeat("n3", "n2", 51))
            await conn.send(FrameKind.RAFT, [forged, honest])
            await wait_until(lambda: nodes["n2"].from_peer("n3"))
            assert [m.term for m in nodes["n2"].received] == [51]
            # A field of the wrong type: the whole connection goes.
            bad = encode_message(heartbeat("n3", "n2", 52))
            bad[3] = "fifty-two"
            await conn.send(FrameKind.RAFT, [bad])
            with pytest.raises(ConnectionError):
                async with asyncio.timeout(5):
                    await conn.receive()
            conn.close()
            # n1 still gets through.
            nodes["n1"].transport.send([heartbeat("n1", "n2", 53)])
            await wait_until(lambda: nodes["n2"].from_peer("n1"))
            assert all(m.term != 52 for m in nodes["n2"].received)

    with caplog.at_level(logging.WARNING, logger="kvstore.transport"):
        run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert any("dropped HEARTBEAT from n1" in m for m in messages)
    assert any("closing connection from peer n3" in m for m in messages)


def test_handshake_timeout_and_eviction_of_the_oldest_unauthenticated_connection() -> None:
    async def main() -> None:
        node = Node("n1", handshake_timeout_s=1.0, handshakes_max=2)
        await node.transport.start()
        try:
            address = node.transport.address
            silent = [await raw_connection(address) for _ in range(2)]
            await wait_until(lambda: node.transport._handshakes == 2)
            # A third unauthenticated connection takes the slot of the OLDEST one, which is
            # closed at once (idle connections cannot lock newcomers out).
            reader, writer = await raw_connection(address)
            assert await closed_by_other_side(silent[0][0], timeout_s=0.8)
            assert node.transport._handshakes == 2
            # The others are cut when their handshake time runs out.
            for silent_reader, _ in (silent[1], (reader, writer)):
                assert await closed_by_other_side(silent_reader, timeout_s=3)
            for _, silent_writer in (*silent, (reader, writer)):
                silent_writer.close()
                with contextlib.suppress(OSError):
                    await silent_writer.wait_closed()
            # Then a real client gets in.
            conn = await connect_client(address, secret=SECRET, timeout_s=5)
            await conn.send(FrameKind.REQUEST, [1, b"ping"])
            assert await conn.receive() == (FrameKind.RESPONSE, [1, b"ping"])
            conn.close()
        finally:
            await node.transport.close()

    run(main())


# --- clients and authentication ---------------------------------------------------------------


def test_client_with_the_secret_is_served() -> None:
    async def main() -> None:
        async with cluster("n1") as nodes:
            conn = await connect_client(nodes["n1"].transport.address, secret=SECRET, timeout_s=5)
            assert conn.peer_id == "n1"
            for i in range(5):
                conn.send_nowait(FrameKind.REQUEST, [i, b"v" * i])
            got = [await conn.receive() for _ in range(5)]
            assert got == [(FrameKind.RESPONSE, [i, b"v" * i]) for i in range(5)]
            assert nodes["n1"].clients[0].role == "client"
            assert nodes["n1"].clients[0].peer_id is None
            conn.close()
            await conn.wait_closed()

    run(main())


@pytest.mark.parametrize("client_secret", [b"wrong", None], ids=["wrong-secret", "no-secret"])
def test_client_without_the_right_secret_gets_authentication_error_and_is_logged(
    client_secret: bytes | None, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with cluster("n1") as nodes:
            with pytest.raises(AuthenticationError):
                await connect_client(
                    nodes["n1"].transport.address, secret=client_secret, timeout_s=5
                )
            assert nodes["n1"].clients == []  # the handler never saw it

    with caplog.at_level(logging.WARNING, logger="kvstore.transport"):
        run(main())
    assert any("n1: refused" in r.getMessage() for r in caplog.records)


def test_client_with_a_secret_refuses_a_node_without_one() -> None:
    async def main() -> None:
        async with cluster("n1", secret=None) as nodes:
            with pytest.raises(AuthenticationError):
                await connect_client(nodes["n1"].transport.address, secret=SECRET, timeout_s=5)
            # Without a secret on either side it works.
            conn = await connect_client(nodes["n1"].transport.address, secret=None, timeout_s=5)
            await conn.send(FrameKind.REQUEST, [7])
            assert await conn.receive() == (FrameKind.RESPONSE, [7])
            conn.close()

    run(main())


def test_connect_client_errors_for_unreachable_and_silent_nodes() -> None:
    async def main() -> None:
        with pytest.raises(OSError):
            await connect_client(f"127.0.0.1:{free_port()}", secret=None, timeout_s=5)
        async with silent_server() as address:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await connect_client(address, secret=None, timeout_s=0.3)
            assert time.monotonic() - started < 2
        with pytest.raises(ValueError):
            await connect_client("no-port", secret=None, timeout_s=1)

    run(main())


def test_peers_with_different_secrets_never_deliver(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        a = Node("n1", secret=b"one")
        b = Node("n2", secret=b"two")
        await a.transport.start()
        await b.transport.start()
        try:
            peers = {"n1": a.transport.address, "n2": b.transport.address}
            a.transport.set_peers(peers)
            b.transport.set_peers(peers)
            a.transport.send([heartbeat("n1", "n2")])
            await wait_until(lambda: "n2" in a.unreachable)
            assert b.received == []
        finally:
            await a.transport.close()
            await b.transport.close()

    with caplog.at_level(logging.WARNING, logger="kvstore.transport"):
        run(main())
    assert any("n2: refused" in r.getMessage() for r in caplog.records)


def test_a_peer_whose_proven_id_differs_from_the_one_dialed_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with cluster("n1", "n2", "n3") as nodes:
            n1 = nodes["n1"].transport
            # n1's map is wrong: it believes n2 lives at n3's address.
            n1.set_peers(
                {"n1": n1.address, "n2": nodes["n3"].transport.address, "n3": "127.0.0.1:1"}
            )
            n1.send([heartbeat("n1", "n2")])
            await wait_until(lambda: "n2" in nodes["n1"].unreachable)
            assert nodes["n3"].received == [] and nodes["n2"].received == []
            # With the right address the message gets through (the address changed: redial).
            n1.set_peers({"n1": n1.address, "n2": nodes["n2"].transport.address})
            deadline = time.monotonic() + 8
            while not nodes["n2"].received and time.monotonic() < deadline:
                n1.send([heartbeat("n1", "n2")])
                await asyncio.sleep(0.05)  # heartbeat cadence
            assert nodes["n2"].received

    with caplog.at_level(logging.WARNING, logger="kvstore.transport"):
        run(main())
    assert any("wants node 'n2'" in r.getMessage() for r in caplog.records)


def test_is_member_decides_at_handshake_time() -> None:
    async def main() -> None:
        members = {"n1"}
        async with cluster("n1", "n2", is_member=lambda peer_id: peer_id in members) as nodes:
            # n1 does not count n2 as a member (yet): n2 cannot connect to n1.
            nodes["n2"].transport.send([heartbeat("n2", "n1", 1)])
            await wait_until(lambda: "n1" in nodes["n2"].unreachable)
            assert nodes["n1"].received == []
            members.add("n2")  # membership changed at run time
            deadline = time.monotonic() + 8
            while not nodes["n1"].received and time.monotonic() < deadline:
                nodes["n2"].transport.send([heartbeat("n2", "n1", 2)])
                await asyncio.sleep(0.05)  # heartbeat cadence
            assert nodes["n1"].received and nodes["n1"].received[0].sender == "n2"

    run(main())


def test_default_membership_is_the_peer_map() -> None:
    async def main() -> None:
        async with cluster("n1", "n2") as nodes:
            stranger = await asyncio.wait_for(
                _refused_peer(nodes["n2"].transport.address, "n9"), 10
            )
            assert isinstance(stranger, AuthenticationError)
            assert "not a member" in str(stranger)

    run(main())


async def _refused_peer(address: str, node_id: str) -> Exception | None:
    try:
        conn = await connect_peer(
            address, node_id=node_id, target_id="n2", secret=SECRET, member_ids=[], timeout_s=5
        )
    except AuthenticationError as exc:
        return exc
    conn.close()
    return None


def test_send_nowait_refuses_when_the_write_buffer_is_over_its_limit() -> None:
    async def main() -> None:
        # A node whose client handler never reads: our writes pile up in the buffers.
        async def never_read(conn: FramedConnection) -> None:
            await asyncio.Event().wait()

        node = PeerTransport(
            "n1",
            "127.0.0.1:0",
            {},
            secret=None,
            on_message=lambda m: None,
            on_unreachable=lambda p: None,
            on_client_connection=never_read,
        )
        await node.start()
        try:
            host, port = parse_address(node.address)
            reader, writer = await asyncio.open_connection(host, port)
            conn = FramedConnection(reader, writer, frame_bytes_max=1 << 20)
            conn._write_buffer_bytes_max = 1 << 16
            from kvstore.transport.auth import DialerHandshake
            from kvstore.transport.tcp import _run_handshake

            hs = DialerHandshake(role="client", node_id=None, target_id=None, secret=None)
            await _run_handshake(conn, hs, hs.start())
            with pytest.raises(BufferError):
                for _ in range(10_000):  # 1 GB: the kernel buffers fill long before
                    conn.send_nowait(FrameKind.REQUEST, b"x" * 100_000)
            conn.abort()
        finally:
            await node.close()

    run(main())


def test_close_is_idempotent_and_closes_client_connections() -> None:
    async def main() -> None:
        node = Node("n1")
        await node.transport.start()
        conn = await connect_client(node.transport.address, secret=SECRET, timeout_s=5)
        await conn.send(FrameKind.REQUEST, [1])
        assert await conn.receive() == (FrameKind.RESPONSE, [1])
        await node.transport.close()
        await node.transport.close()
        with pytest.raises((ConnectionError, RemoteProtocolError)):
            async with asyncio.timeout(5):
                await conn.receive()
        node.transport.send([heartbeat("n1", "n2")])  # after close: silently nothing
        assert node.unreachable == []

    run(main())


def test_redials_back_off_exponentially_with_jitter() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        accepted_at: list[float] = []

        def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Accepts and drops every connection: each dial fails in the handshake.
            accepted_at.append(loop.time())
            writer.transport.abort()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        node = Node("n1", peers={"n2": f"127.0.0.1:{port}"})
        await node.transport.start()

        async def heartbeats() -> None:
            while True:  # the core keeps sending while the peer is down
                node.transport.send([heartbeat("n1", "n2")])
                await asyncio.sleep(0.01)

        sender = asyncio.create_task(heartbeats())
        try:
            await wait_until(lambda: len(accepted_at) >= 5, timeout_s=10, what="5 dials")
            gaps = [b - a for a, b in itertools.pairwise(accepted_at[:5])]
            for i, gap in enumerate(gaps):
                # Backoff 50 ms doubling, +-50% jitter; generous slack above for a busy machine.
                assert 0.05 * 2**i * 0.5 <= gap <= 0.05 * 2**i * 1.5 + 0.5, gaps
            assert "n2" in node.unreachable
        finally:
            sender.cancel()
            await node.transport.close()
            server.close()

    run(main())


def test_removed_peer_is_disconnected_and_reported() -> None:
    async def main() -> None:
        async with cluster("n1", "n2") as nodes:
            n1 = nodes["n1"].transport
            n1.send([heartbeat("n1", "n2")])
            await wait_until(lambda: n1.is_connected("n2"))
            await wait_until(lambda: "n1" in nodes["n2"].transport._inbound)
            n1.set_peers({"n1": n1.address})
            # n1 hangs up its link; n2 sees its inbound connection from n1 go.
            await wait_until(lambda: "n1" not in nodes["n2"].transport._inbound)
            n1.send([heartbeat("n1", "n2", 2)])
            await wait_until(lambda: "n2" in nodes["n1"].unreachable)
            assert [m.term for m in nodes["n2"].received] == [1]

    run(main())


def test_clients_beyond_the_limit_are_turned_away_with_busy() -> None:
    async def main() -> None:
        async with cluster("n1", client_connections_max=2) as nodes:
            address = nodes["n1"].transport.address
            first = [await connect_client(address, secret=SECRET, timeout_s=5) for _ in range(2)]
            for conn in first:
                await conn.send(FrameKind.REQUEST, [0])
                assert await conn.receive() == (FrameKind.RESPONSE, [0])
            extra = await connect_client(address, secret=SECRET, timeout_s=5)
            assert await extra.receive() == (
                FrameKind.ERROR,
                {"code": ERROR_BUSY, "message": "too many client connections"},
            )
            extra.close()
            # When one leaves, there is room again.
            first[0].close()
            await wait_until(lambda: nodes["n1"].transport._client_connections == 1)
            again = await connect_client(address, secret=SECRET, timeout_s=5)
            await again.send(FrameKind.REQUEST, [1])
            assert await again.receive() == (FrameKind.RESPONSE, [1])
            again.close()
            first[1].close()

    run(main())


# --- pre-auth limits ----------------------------------------------------------------------------


def test_a_full_address_evicts_its_own_oldest_connection_not_another_addresss() -> None:
    async def main() -> None:
        node = Node("n1", handshakes_max=10, handshakes_per_address_max=2)
        await node.transport.start()
        try:
            host, port = parse_address(node.transport.address)
            other = await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0))
            await wait_until(lambda: node.transport._handshakes == 1)
            mine = [await raw_connection(node.transport.address) for _ in range(2)]
            await wait_until(lambda: node.transport._handshakes == 3)
            newest = await raw_connection(node.transport.address)
            # 127.0.0.1 had its 2: its oldest goes, 127.0.0.2's connection stays.
            assert await closed_by_other_side(mine[0][0], timeout_s=2)
            assert not await closed_by_other_side(other[0], timeout_s=0.2)
            assert node.transport._handshakes == 3
            for _, writer in (other, *mine, newest):
                writer.close()
        finally:
            await node.transport.close()

    run(main())


def test_an_oversized_frame_before_the_handshake_is_refused_from_its_header() -> None:
    async def main() -> None:
        node = Node("n1")
        await node.transport.start()
        try:
            reader, writer = await raw_connection(node.transport.address)
            # The header of a 4 KiB + 1 frame, and not one byte of its body: closed at once.
            writer.write(struct.pack(">IBB", (4 << 10) + 1, PROTOCOL_VERSION, FrameKind.HELLO))
            assert await closed_by_other_side(reader, timeout_s=1)
            writer.close()
        finally:
            await node.transport.close()

    run(main())


def test_the_client_cap_follows_rlimit_nofile_with_a_reserve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kvstore.transport import tcp

    node = Node("n1", peers={"n2": "127.0.0.1:1", "n3": "127.0.0.1:2"}, client_connections_max=900)
    reserve = tcp.FD_RESERVE + 2 * tcp.FD_RESERVE_PER_PEER + tcp.HANDSHAKES_MAX + tcp.ACCEPT_BACKLOG
    limits = {"soft": 1024}
    monkeypatch.setattr(
        tcp.resource, "getrlimit", lambda which: (limits["soft"], tcp.resource.RLIM_INFINITY)
    )
    assert node.transport.client_connection_cap() == 1024 - reserve
    limits["soft"] = 100_000
    assert node.transport.client_connection_cap() == 900  # never above the configured maximum
    limits["soft"] = 64
    assert node.transport.client_connection_cap() == 1  # at least one
    limits["soft"] = tcp.resource.RLIM_INFINITY
    assert node.transport.client_connection_cap() == 900


def test_rate_limited_log_bursts_then_counts_what_it_suppressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kvstore.transport.tcp import RateLimitedLog

    now = [0.0]
    limited = RateLimitedLog(
        logging.getLogger("kvstore.test"), burst=3, lines_per_s=0.5, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="kvstore.test"):
        logged = [limited.log("refused", logging.WARNING, "refused %d", i) for i in range(10)]
        assert logged == [True] * 3 + [False] * 7
        assert limited.log("other", logging.WARNING, "another reason") is True
        assert limited.suppressed("refused") == 7
        now[0] = 2.0  # one token back
        assert limited.log("refused", logging.WARNING, "refused %d", 10)
        assert not limited.log("refused", logging.WARNING, "refused %d", 11)
        limited.flush()
        limited.flush()  # nothing left to say
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused 0",
        "refused 1",
        "refused 2",
        "another reason",
        "refused 10 (suppressed 7 similar)",
        "suppressed 1 similar lines (refused) since the last one",
    ]

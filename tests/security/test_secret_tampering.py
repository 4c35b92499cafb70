"""A man in the middle without the secret can neither alter, replay nor reorder frames
(issue 11: "the secret protects only the handshake").

On the old code a relay that rewrote `good-value-1` into `evil-value-1` in a client's PUT got
the altered value stored, and replayed or reordered frames were served: these tests fail there.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvstore
from kvstore.errors import RemoteProtocolError
from kvstore.testing.local_cluster import free_ports
from kvstore.transport.codec import FrameKind, encode_frame
from kvstore.transport.tcp import connect_client

from .conftest import CLIENT_SECRET, MEMBER_SECRET, members, run, wait_until

GOOD = b"good-value-1"
EVIL = b"evil-value-1"


class TamperingRelay:
    """A TCP relay on 127.0.0.1 that forwards both ways and, from the dialer to the target,
    rewrites every `GOOD` into `EVIL` (same length, so the framing stays intact)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self.rewrites = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._server.accept()
            except OSError:
                return
            up = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [down, up]
            threading.Thread(target=self._pump, args=(down, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, tamper: bool) -> None:
        try:
            while data := source.recv(65536):
                if tamper and GOOD in data:
                    with self._lock:
                        self.rewrites += data.count(GOOD)
                    data = data.replace(GOOD, EVIL)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[kvstore.Node]:
    (port,) = free_ports(1)
    options = kvstore.Options(tick_s=0.025, election_ticks=12)
    node = kvstore.Node(
        "n1",
        tmp_path / "n1",
        {"n1": f"127.0.0.1:{port}"},
        options=options,
        secret=MEMBER_SECRET,
        client_secret=CLIENT_SECRET,
    )
    node.start()
    try:
        node.wait_for_leader(timeout_s=15)
        yield node
    finally:
        node.stop()


@pytest.mark.slow
def test_a_rewritten_put_is_never_stored(node: kvstore.Node) -> None:
    relay = TamperingRelay(node.address)
    try:
        # Every attempt is rewritten in transit, so every one is refused: the client gives up
        # with an error rather than having stored the altered value.
        with (
            kvstore.Client([relay.address], secret=CLIENT_SECRET, timeout_s=1.0) as client,
            pytest.raises(kvstore.KVStoreError),
        ):
            client.put(b"tamper/key", GOOD, timeout_s=1.0)
    finally:
        relay.close()
    assert relay.rewrites > 0, "the relay never saw the value: the test proves nothing"
    assert node.get(b"tamper/key") is None
    # Without the relay the same write goes through unchanged.
    with kvstore.Client([node.address], secret=CLIENT_SECRET, timeout_s=5.0) as client:
        client.put(b"tamper/key", GOOD)
        assert client.get(b"tamper/key") == GOOD


def _record_writes(conn: object) -> list[bytes]:
    """Everything `conn` writes from now on, as it went to the socket."""
    writer = conn._writer  # type: ignore[attr-defined]
    written: list[bytes] = []
    original = writer.write

    def write(data: bytes) -> None:
        written.append(bytes(data))
        original(data)

    writer.write = write
    return written


@pytest.mark.parametrize("attack", ["replay", "reorder", "drop"])
def test_replayed_reordered_and_dropped_frames_close_the_connection(attack: str) -> None:
    async def main() -> None:
        async with members("n1") as nodes:
            n1 = nodes["n1"]
            conn = await connect_client(n1.transport.address, secret=CLIENT_SECRET, timeout_s=5)
            written = _record_writes(conn)
            await conn.send(FrameKind.REQUEST, [1, b"first"])
            assert await conn.receive() == (FrameKind.RESPONSE, [1, b"first"])
            mac = conn._mac
            assert mac is not None
            first = b"".join(written)
            second = encode_frame(FrameKind.REQUEST, [2, b"second"])
            second_sealed = second + mac.seal(second)
            third = encode_frame(FrameKind.REQUEST, [3, b"third"])
            third_sealed = third + mac.seal(third)
            stream = {
                "replay": first,  # frame 0 again, where frame 1 is due
                "reorder": third_sealed + second_sealed,
                "drop": third_sealed,  # frame 1 never arrives, frame 2 does
            }[attack]
            conn._write_bytes(stream)
            with pytest.raises((ConnectionError, RemoteProtocolError)):
                async with asyncio.timeout(5):
                    await conn.receive()
            conn.abort()
            await wait_until(lambda: n1.transport._client_connections == 0)
            assert n1.requests == [[1, b"first"]]

    run(main())

"""Transport costs: the RAFT frame codec, and loopback throughput between two PeerTransports.

Codec: encode + decode of one RAFT frame holding an APPEND of 64 entries of 100 bytes, through
`encode_raft_frame`, `FrameDecoder` and `decode_batch` (with full validation), against plain
`msgpack.packb` + `unpackb` of the same data as the baseline.

Loopback: a round sends `FRAMES` RAFT frames from one PeerTransport to another over 127.0.0.1 and
waits until the receiver's `on_message` has seen them all. The baseline writes the same encoded
bytes over a bare asyncio stream and reads them on the other side without decoding.

Run with `make bench` or `pytest benchmarks/test_bench_transport.py --benchmark-only`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from kvstore.consensus.types import Entry, Message, MessageType
from kvstore.transport.codec import (
    NEED_DATA,
    FrameDecoder,
    FrameKind,
    decode_batch,
    encode_frame,
    encode_message,
    encode_raft_frame,
)
from kvstore.transport.tcp import FramedConnection, PeerTransport

ENTRIES = tuple(Entry(7, 1000 + i, data=os.urandom(100)) for i in range(64))
APPEND = Message(MessageType.APPEND, "n2", "n1", 7, 7, 999, ENTRIES, 990)
HEARTBEAT = Message(MessageType.HEARTBEAT, "n2", "n1", 7, commit=990)
FRAMES = 500


def test_bench_transport_codec_baseline(benchmark: Any) -> None:
    data = [encode_message(APPEND)]

    def round_trip() -> object:
        return msgpack.unpackb(msgpack.packb(data, use_bin_type=True), raw=False)

    benchmark(round_trip)


def test_bench_transport_codec_raft_frame(benchmark: Any) -> None:
    decoder = FrameDecoder(64 << 20)

    def round_trip() -> list[Message]:
        decoder.receive_data(encode_raft_frame([APPEND]))
        frame = decoder.next_frame()
        assert frame is not NEED_DATA
        return decode_batch(frame[1])

    assert round_trip() == [APPEND]
    benchmark(round_trip)


def test_bench_transport_codec_encode_only(benchmark: Any) -> None:
    benchmark(encode_raft_frame, [APPEND])


# --- loopback -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class Pair:
    """Two started PeerTransports, n1 -> n2, and a counter of what n2 received."""

    def __init__(self) -> None:
        self.received = 0
        self.target = 0
        self.done: asyncio.Event | None = None

        def on_message(msg: Message) -> None:
            self.received += 1
            if self.received >= self.target and self.done is not None:
                self.done.set()

        async def no_clients(conn: FramedConnection) -> None:
            conn.close()

        def make(node_id: str) -> PeerTransport:
            return PeerTransport(
                node_id,
                "127.0.0.1:0",
                {},
                secret=b"bench",
                on_message=on_message,
                on_unreachable=lambda peer: None,
                on_client_connection=no_clients,
            )

        self.n1, self.n2 = make("n1"), make("n2")

    async def start(self) -> None:
        await self.n1.start()
        await self.n2.start()
        peers = {"n1": self.n1.address, "n2": self.n2.address}
        self.n1.set_peers(peers)
        self.n2.set_peers(peers)
        await self.send_round(HEARTBEAT, 1)  # connect and handshake outside the timing

    async def send_round(self, msg: Message, frames: int) -> None:
        self.done = asyncio.Event()
        self.target = self.received + frames
        for _ in range(frames):
            self.n1.send([msg])  # one RAFT frame per call
            if self.n1.queued_bytes("n2") > 4 << 20:
                await asyncio.sleep(0)  # let the writer drain, as the node's loop would
        await asyncio.wait_for(self.done.wait(), 30)

    async def close(self) -> None:
        await self.n1.close()
        await self.n2.close()


@pytest.fixture(scope="module")
def pair(loop: asyncio.AbstractEventLoop) -> Iterator[Pair]:
    pair = Pair()
    loop.run_until_complete(pair.start())
    yield pair
    loop.run_until_complete(pair.close())


class RawPipe:
    """The baseline: bare asyncio streams over 127.0.0.1, bytes in, bytes counted out."""

    def __init__(self) -> None:
        self.received = 0
        self.target = 0
        self.done: asyncio.Event | None = None

    async def start(self) -> None:
        async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(256 << 10):
                self.received += len(data)
                if self.received >= self.target and self.done is not None:
                    self.done.set()
            writer.close()

        self.server = await asyncio.start_server(on_accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        _, self.writer = await asyncio.open_connection("127.0.0.1", port)

    async def send_round(self, frame: bytes, frames: int) -> None:
        self.done = asyncio.Event()
        self.target = self.received + len(frame) * frames
        for _ in range(frames):
            self.writer.write(frame)
        await self.writer.drain()
        await asyncio.wait_for(self.done.wait(), 30)

    async def close(self) -> None:
        self.writer.close()
        self.server.close()


@pytest.fixture(scope="module")
def raw_pipe(loop: asyncio.AbstractEventLoop) -> Iterator[RawPipe]:
    pipe = RawPipe()
    loop.run_until_complete(pipe.start())
    yield pipe
    loop.run_until_complete(pipe.close())


def _record(benchmark: Any, msg: Message) -> None:
    frame_bytes = len(encode_frame(FrameKind.RAFT, [msg]))
    benchmark.extra_info["frames_per_round"] = FRAMES
    benchmark.extra_info["frame_bytes"] = frame_bytes
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats is not None and stats.mean > 0:
        benchmark.extra_info["frames_per_s"] = round(FRAMES / stats.mean)
        benchmark.extra_info["mb_per_s"] = round(FRAMES * frame_bytes / stats.mean / 1e6, 1)


MESSAGES = {"append64x100": APPEND, "heartbeat": HEARTBEAT}


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_bench_transport_loopback_baseline(
    benchmark: Any, loop: asyncio.AbstractEventLoop, raw_pipe: RawPipe, kind: str
) -> None:
    frame = encode_frame(FrameKind.RAFT, [MESSAGES[kind]])

    def run() -> None:
        loop.run_until_complete(raw_pipe.send_round(frame, FRAMES))

    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    _record(benchmark, MESSAGES[kind])


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_bench_transport_loopback_peer(
    benchmark: Any, loop: asyncio.AbstractEventLoop, pair: Pair, kind: str
) -> None:
    msg = MESSAGES[kind]

    def run() -> None:
        loop.run_until_complete(pair.send_round(msg, FRAMES))

    benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    _record(benchmark, msg)

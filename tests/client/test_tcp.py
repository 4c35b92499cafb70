"""The client and the request service over real TCP on 127.0.0.1, behind `PeerTransport`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import socket
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest

import kvstore.aio
from kvstore.client.client import Client
from kvstore.errors import AuthenticationError, UnavailableError
from kvstore.node.service import serve_client_connection
from kvstore.transport.tcp import FramedConnection, PeerTransport
from tests.client.fakes import FakeBackend, wait_for

SECRET = b"correct horse battery staple"


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=30))


class Member:
    """A FakeBackend served by a real PeerTransport listening on an ephemeral port."""

    def __init__(self, backend: FakeBackend, secret: bytes | None) -> None:
        self.backend = backend
        self.connections = 0

        async def on_client(conn: FramedConnection) -> None:
            self.connections += 1
            await serve_client_connection(conn, backend)

        self.transport = PeerTransport(
            backend.node_id,
            "127.0.0.1:0",
            {backend.node_id: "127.0.0.1:0"},
            secret=secret,
            on_message=lambda _m: None,
            on_unreachable=lambda _p: None,
            on_client_connection=on_client,
        )

    @property
    def address(self) -> str:
        return self.transport.address


@contextlib.asynccontextmanager
async def members(
    n: int, *, leader: int = 0, secret: bytes | None = SECRET
) -> AsyncIterator[list[Member]]:
    started = [Member(FakeBackend(f"n{i + 1}", leader=i == leader), secret) for i in range(n)]
    try:
        for member in started:
            await member.transport.start()
        for member in started:
            member.backend.leader_id = started[leader].backend.node_id
            member.backend.leader_address = started[leader].address
        yield started
    finally:
        await asyncio.gather(*(m.transport.close() for m in started))


def unused_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_round_trip_with_a_secret_and_redirect_to_the_leader() -> None:
    async def main() -> None:
        async with members(3, leader=2) as ms:
            endpoints = [m.address for m in ms]
            async with kvstore.aio.Client(endpoints, secret=SECRET) as client:
                await client.put(b"k", b"v")
                assert client.leader_address == ms[2].address
                assert await client.get(b"k", consistency="stale") in (b"v", None)
                assert await client.cas(b"k", b"v", b"w") is True
                assert ms[2].backend.data == {b"k": b"w"}
                status = await client.status(ms[1].address)
                assert (status.node_id, status.leader_id) == ("n2", "n3")
                big = random.Random(1).randbytes(1 << 20)
                await client.put(b"big", big)
                assert await client.get(b"big", consistency="stale", timeout_s=5) in (big, None)
                assert ms[2].backend.data[b"big"] == big

    run(main())


def test_pipelined_requests_share_one_tcp_connection() -> None:
    async def main() -> None:
        async with members(1) as (m,):
            rng = random.Random(7)
            m.backend.delay_s = lambda: rng.random() * 0.002
            async with kvstore.aio.Client([m.address], secret=SECRET) as client:
                n = 500
                await asyncio.gather(*(client.put(b"%d" % i, b"v%d" % i) for i in range(n)))
                got = await asyncio.gather(*(client.get(b"%d" % i) for i in range(n)))
            assert got == [b"v%d" % i for i in range(n)]
            assert m.connections == 1
            assert m.backend.inflight_max > 10

    run(main())


def test_a_wrong_secret_fails_at_once_with_authentication_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        async with members(1) as (m,):
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with kvstore.aio.Client([m.address], secret=b"wrong") as client:
                with pytest.raises(AuthenticationError):
                    await client.put(b"k", b"v", timeout_s=10)
            assert loop.time() - started < 5
            assert m.connections == 0
            assert sum(m.backend.calls.values()) == 0

    with caplog.at_level(logging.WARNING):
        run(main())


def test_nothing_listening_is_unavailable() -> None:
    async def main() -> None:
        async with kvstore.aio.Client([unused_address(), unused_address()]) as client:
            with pytest.raises(UnavailableError):
                await client.get(b"k", timeout_s=0.5)
            with pytest.raises(UnavailableError):
                await client.status(unused_address())

    run(main())


def test_a_member_going_away_fails_over_to_the_new_leader() -> None:
    async def main() -> None:
        async with (
            members(3, leader=0) as ms,
            kvstore.aio.Client([m.address for m in ms], secret=SECRET) as client,
        ):
            await client.put(b"k", b"1")
            assert client.leader_address == ms[0].address
            await ms[0].transport.close()
            for m in ms[1:]:
                m.backend.is_leader = m is ms[1]
                m.backend.leader_id = "n2"
                m.backend.leader_address = ms[1].address
            await client.put(b"k", b"2", timeout_s=5)
            assert client.leader_address == ms[1].address
            assert ms[1].backend.data == {b"k": b"2"}

    run(main())


def test_sync_client_from_many_threads_over_tcp() -> None:
    ready = threading.Event()
    stop: asyncio.Event | None = None
    addresses: list[str] = []
    backends: list[FakeBackend] = []
    loop_holder: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        loop_holder.append(asyncio.get_running_loop())
        async with members(3, leader=1) as ms:
            addresses.extend(m.address for m in ms)
            backends.extend(m.backend for m in ms)
            ready.set()
            await stop.wait()

    server = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    server.start()
    assert ready.wait(10)
    errors: list[BaseException] = []
    counts: collections.Counter[int] = collections.Counter()
    try:
        with Client(addresses, secret=SECRET, balancer="round_robin") as client:

            def work(t: int) -> None:
                try:
                    for i in range(50):
                        key = b"t%d-%d" % (t, i)
                        client.put(key, key)
                        assert client.delete(key) is True
                        counts[t] += 1
                except BaseException as e:
                    errors.append(e)

            threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
        assert not errors, errors
        assert sum(counts.values()) == 8 * 50
        leader = backends[1]
        assert len(leader.applied) == 2 * 8 * 50
        assert leader.duplicates == [] and leader.stale == []
    finally:
        assert stop is not None
        loop_holder[0].call_soon_threadsafe(stop.set)
        server.join(timeout=10)


def test_the_service_survives_garbage_from_one_client(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with members(1, secret=None) as (m,), kvstore.aio.Client([m.address]) as good:
            await good.put(b"k", b"v")
            # A raw socket: a valid handshake is not even attempted, just junk bytes.
            host, port = m.address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"\xff" * 64)
            await writer.drain()
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(), timeout=5)  # closed by the node
            writer.close()
            assert await good.get(b"k") == b"v"
            await wait_for(lambda: m.connections == 1)

    with caplog.at_level(logging.WARNING):
        run(main())

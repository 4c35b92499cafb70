"""A member that stops answering (paused, cut off) costs a call one attempt, not the call:
the client gives up on it after `ATTEMPT_TIMEOUT_S`, forgets it as leader and finds the new one
within the caller's timeout. In-memory fakes; tests/cluster has the same with SIGSTOP."""

from __future__ import annotations

import asyncio
import random

import pytest

import kvstore
import kvstore.aio
from kvstore.client import aio_client
from tests.client.fakes import FakeCluster

SEED = 20240611
ATTEMPT_S = 0.2


@pytest.fixture(autouse=True)
def _short_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aio_client, "ATTEMPT_TIMEOUT_S", ATTEMPT_S)


def _client(cluster: FakeCluster) -> aio_client.Client:
    return kvstore.aio.Client(cluster.addresses, connect=cluster.connect, rng=random.Random(SEED))


def test_writes_leave_a_silent_leader_for_the_new_one() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(3, leader=0)
        old, new = cluster.addresses[0], cluster.addresses[1]
        async with _client(cluster) as client:
            await client.put(b"before", b"1")
            assert client.leader_address == old
            # The old leader goes silent with its connection open; the others elected n2.
            cluster.backends[old].gate = asyncio.Event()  # never set
            cluster.make_leader(new)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await client.put(b"after", b"2", timeout_s=3.0)
            took_s = loop.time() - started
            # One attempt lost to the silent member, then the new leader at once.
            assert ATTEMPT_S <= took_s < ATTEMPT_S + 1.0
            assert client.leader_address == new
            assert cluster.backends[new].data[b"after"] == b"2"
            # Later writes go straight to the new leader.
            started = loop.time()
            await client.put(b"later", b"3", timeout_s=3.0)
            assert loop.time() - started < ATTEMPT_S

    asyncio.run(asyncio.wait_for(main(), timeout=30))


def test_every_member_silent_is_still_an_operation_timeout() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(2, leader=0)
        async with _client(cluster) as client:
            await client.put(b"k", b"v")
            for backend in cluster.backends.values():
                backend.gate = asyncio.Event()  # never set
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(kvstore.OperationTimeoutError):
                await client.put(b"k", b"w", timeout_s=1.0)
            assert 1.0 <= loop.time() - started < 2.0

    asyncio.run(asyncio.wait_for(main(), timeout=30))

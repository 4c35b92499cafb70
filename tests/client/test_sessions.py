"""The client's side of sessions (Raft thesis §6.3), against fake members over in-memory
connections: lazy registration, a write refused as expired on its first attempt sent again
under a new session, and a retry refused as expired raised as `SessionExpiredError`."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

import pytest

import kvstore.aio
from kvstore.client import aio_client
from kvstore.errors import SessionExpiredError
from tests.client.fakes import FakeCluster

SEED = 20261208


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=30))


def aio(cluster: FakeCluster) -> aio_client.Client:
    return kvstore.aio.Client(cluster.addresses, connect=cluster.connect, rng=random.Random(SEED))


def test_a_session_is_registered_once_for_concurrent_first_writes() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(1)
        backend = cluster.backends[cluster.addresses[0]]
        backend.delay_s = lambda: 0.001  # the registration is still running as writes pile up
        async with aio(cluster) as client:
            await asyncio.gather(*(client.put(b"k%d" % i, b"v") for i in range(50)))
            await client.put(b"later", b"v")
        assert len(backend.registered) == 1
        (session_id,) = backend.registered
        assert {session for session, _ in backend.applied} == {
            (session_id, seq) for seq in range(1, 52)
        }

    run(main())


def test_a_first_attempt_refused_as_expired_is_sent_again_under_a_new_session() -> None:
    """It never ran (nothing of it was sent before), so resending it cannot apply it twice."""

    async def main() -> None:
        cluster = FakeCluster.with_leader(1)
        backend = cluster.backends[cluster.addresses[0]]
        async with aio(cluster) as client:
            await client.put(b"k", b"v1")
            (old,) = backend.registered
            backend.expired.add(old)  # idle for longer than the cluster's session timeout
            await client.put(b"k", b"v2")  # no error reaches the caller
            assert await client.get(b"k") == b"v2"
        new = backend.registered[1]
        assert backend.refused_expired == [(old, 2)]
        assert [session for session, _ in backend.applied] == [(old, 1), (new, 1)]

    run(main())


def test_a_retry_refused_as_expired_raises_and_is_not_applied_again() -> None:
    """The first attempt was applied but its answer lost; by the retry the session expired.
    The client cannot tell whether the write ran: SessionExpiredError, and no second apply
    under a new session."""

    async def main() -> None:
        cluster = FakeCluster.with_leader(1)
        address = cluster.addresses[0]
        backend = cluster.backends[address]
        async with aio(cluster) as client:
            await client.put(b"k", b"v1")
            (session_id,) = backend.registered

            async def lose_the_answer_then_expire() -> None:
                backend.expired.add(session_id)
                cluster.drop_connections(address)
                await asyncio.Event().wait()

            backend.after_apply = lose_the_answer_then_expire
            with pytest.raises(SessionExpiredError, match="outcome is unknown"):
                await client.put(b"k", b"v2", timeout_s=5.0)
            assert backend.data[b"k"] == b"v2"  # applied exactly once, by the first attempt
            assert backend.refused_expired == [(session_id, 2)]  # the retry, refused
            assert [s for s, _ in backend.applied] == [(session_id, 1), (session_id, 2)]
            # The client goes on under a new session.
            backend.after_apply = None
            await client.put(b"k", b"v3")
        assert len(backend.registered) == 2
        assert backend.data[b"k"] == b"v3"

    run(main())

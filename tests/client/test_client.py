"""The client against fake members over in-memory connections (real frames, real service)."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import kvstore.aio
from kvstore.client import aio_client
from kvstore.client.client import Client
from kvstore.errors import (
    AuthenticationError,
    InvalidArgumentError,
    NotLeaderError,
    OperationTimeoutError,
    UnavailableError,
)
from kvstore.storage.commands import SESSION_WINDOW
from tests.client.fakes import FakeBackend, FakeCluster, wait_for

SEED = int(os.environ.get("KVSTORE_TEST_SEED", "20240611"))


@pytest.fixture(autouse=True)
def _print_seed() -> None:
    print(f"KVSTORE_TEST_SEED={SEED}")


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=30))


def aio(cluster: FakeCluster, endpoints: Any = None, **kw: Any) -> aio_client.Client:
    return kvstore.aio.Client(
        endpoints if endpoints is not None else cluster.addresses,
        connect=cluster.connect,
        rng=random.Random(SEED),
        **kw,
    )


def test_every_operation_round_trips() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(1)
        async with aio(cluster) as client:
            assert await client.get(b"k") is None
            await client.put(b"k", b"v1")
            assert await client.get(b"k") == b"v1"
            assert await client.get(b"k", consistency="stale") == b"v1"
            assert await client.cas(b"k", b"wrong", b"v2") is False
            assert await client.cas(b"k", b"v1", b"v2") is True
            assert await client.cas(b"new", None, b"n") is True
            await client.put(b"k2", b"")
            assert await client.scan(b"k") == [(b"k", b"v2"), (b"k2", b"")]
            assert await client.scan(limit=1) == [(b"k", b"v2")]
            assert await client.delete(b"k") is True
            assert await client.delete(b"k") is False
            assert await client.cas(b"new", b"n", None) is True
            assert await client.scan() == [(b"k2", b"")]
            status = await client.status()
            assert (status.node_id, status.role, status.leader_id) == ("n1", "leader", "n1")
            await client.add_member("n4", "127.0.0.1:7004")
            await client.remove_member("n4")
            await client.transfer_leadership("n2")
        backend = cluster.backends[cluster.addresses[0]]
        assert backend.calls["add_member"] == backend.calls["transfer_leadership"] == 1

    run(main())


def test_many_concurrent_requests_share_one_pipelined_connection() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(1)
        backend = cluster.backends[cluster.addresses[0]]
        rng = random.Random(SEED)
        backend.delay_s = lambda: rng.random() * 0.005  # answers finish out of order
        async with aio(cluster) as client:
            n = 300
            await asyncio.gather(*(client.put(b"k%d" % i, b"v%d" % i) for i in range(n)))
            values = await asyncio.gather(*(client.get(b"k%d" % i) for i in range(n)))
        assert values == [b"v%d" % i for i in range(n)]
        assert cluster.dials[cluster.addresses[0]] == 1
        assert backend.inflight_max > 10  # many requests were in flight at once
        (server_end,) = cluster.connections[cluster.addresses[0]]
        assert len(server_end.sent) < 2 * n  # responses were coalesced into fewer frames

    run(main())


def test_writes_follow_redirects_and_remember_the_leader() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(3, leader=2)
        a, _b, c = cluster.addresses
        async with aio(cluster) as client:
            await client.put(b"k", b"v")
            assert client.leader_address == c
            calls_before = {addr: sum(b.calls.values()) for addr, b in cluster.backends.items()}
            for i in range(5):
                await client.put(b"k%d" % i, b"v")
            for address, backend in cluster.backends.items():
                extra = sum(backend.calls.values()) - calls_before[address]
                assert extra == (5 if address == c else 0)
            # The leader moves: the old one redirects, the client follows and remembers.
            cluster.make_leader(a)
            await client.put(b"moved", b"v")
            assert client.leader_address == a
            assert cluster.backends[a].data[b"moved"] == b"v"

    run(main())


def test_a_redirect_to_an_unlisted_address_is_followed() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(2, leader=1)
        listed, hidden = cluster.addresses
        async with aio(cluster, [listed]) as client:
            assert await client.delete(b"nothing") is False
            assert client.leader_address == hidden
            assert cluster.backends[hidden].calls["delete"] == 1

    run(main())


def test_without_a_known_leader_the_client_asks_the_next_member() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(3, leader=1)
        _a, b, _c = cluster.addresses
        for backend in cluster.backends.values():
            backend.leader_address = backend.leader_id = None  # nobody tells where it is
        async with aio(cluster) as client:
            await client.put(b"k", b"v", timeout_s=2)
            assert client.leader_address == b
            assert cluster.backends[b].data == {b"k": b"v"}

    run(main())


def test_reads_spread_over_members_and_fall_back_to_the_leader() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(3, leader=0)
        async with aio(cluster, balancer="round_robin") as client:
            for _ in range(30):
                await client.get(b"k", consistency="stale")
            assert [b.calls["get"] for b in cluster.backends.values()] == [10, 10, 10]
            # Followers that cannot serve a linearizable read redirect it to the leader.
            for backend in cluster.backends.values():
                backend.reads_need_leader = True
            leader = cluster.backends[cluster.addresses[0]]
            before = leader.calls["get"]
            for _ in range(6):
                assert await client.get(b"k") is None
            assert leader.calls["get"] - before == 6

    run(main())


def test_weighted_reads_follow_the_weights() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(2)
        a, b = cluster.addresses
        async with aio(cluster, {a: 3, b: 1}) as client:
            for _ in range(40):
                await client.get(b"k", consistency="stale")
        assert (cluster.backends[a].calls["get"], cluster.backends[b].calls["get"]) == (30, 10)

    run(main())


def test_a_retried_write_keeps_its_session_and_is_applied_once() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(1)
        address = cluster.addresses[0]
        backend = cluster.backends[address]
        async with aio(cluster) as client:
            await client.put(b"first", b"1")

            async def lose_the_answer() -> None:
                cluster.drop_connections(address)  # the write is applied, its answer lost
                await asyncio.Event().wait()

            backend.after_apply = lose_the_answer
            assert await client.cas(b"k", None, b"v") is True  # the first result, not False
        first, retry = backend.sessions_seen[1:]
        assert first == retry  # same client id, same seq
        assert first[1] > backend.sessions_seen[0][1] or first[0] != backend.sessions_seen[0][0]
        assert backend.duplicates == [first]
        assert [name for _, name in backend.applied] == ["put", "cas"]
        assert cluster.dials[address] == 2  # reconnected after the drop

    run(main())


def test_pipelined_writes_keep_each_session_within_the_window() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(1)
        backend = cluster.backends[cluster.addresses[0]]
        rng = random.Random(SEED)
        backend.delay_s = lambda: rng.random() * 0.003  # writes finish out of order
        async with aio(cluster) as client:
            await client.put(b"alone", b"v")
            for round_ in range(2):
                await asyncio.gather(
                    *(client.put(b"k%d-%d" % (round_, i), b"v") for i in range(400))
                )
        sessions = [s for s, _ in backend.applied]
        assert len(set(sessions)) == 801  # every write its own (client id, seq)
        assert backend.stale == []
        assert backend.session_span_max <= aio_client.SEQS_IN_FLIGHT_MAX
        assert aio_client.SEQS_IN_FLIGHT_MAX < SESSION_WINDOW
        # 400 writes at once need ceil(400 / SEQS_IN_FLIGHT_MAX) sessions, not 400; the second
        # round reuses them.
        client_ids = {client_id for client_id, _ in sessions}
        assert len(client_ids) == -(-400 // aio_client.SEQS_IN_FLIGHT_MAX)

    run(main())


def test_no_answer_in_time_is_an_operation_timeout() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(1)
        cluster.backends[cluster.addresses[0]].gate = asyncio.Event()  # never answers
        async with aio(cluster) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(OperationTimeoutError) as info:
                await client.put(b"k", b"v", timeout_s=0.2)
            assert isinstance(info.value, TimeoutError)
            assert 0.2 <= loop.time() - started < 2.0

    run(main())


def test_in_flight_requests_per_connection_are_bounded_and_waiting_obeys_the_deadline() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(1)
        backend = cluster.backends[cluster.addresses[0]]
        backend.gate = asyncio.Event()  # never answers
        async with aio(cluster, max_inflight=2) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            results = await asyncio.gather(
                *(client.get(b"k", timeout_s=0.3) for _ in range(3)), return_exceptions=True
            )
            assert loop.time() - started < 2.5
        assert backend.inflight_max == 2
        # Two were sent and never answered; the third never left the client.
        assert sorted(type(r).__name__ for r in results) == [
            "OperationTimeoutError",
            "OperationTimeoutError",
            "UnavailableError",
        ]

    run(main())


def test_nothing_reachable_is_unavailable() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(3)
        cluster.down = set(cluster.addresses)
        async with aio(cluster) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UnavailableError):
                await client.put(b"k", b"v", timeout_s=0.3)
            with pytest.raises(UnavailableError):
                await client.get(b"k", timeout_s=0.3)
            assert loop.time() - started < 3.0
        assert all(cluster.dials[a] >= 2 for a in cluster.addresses)  # it did retry
        assert cluster.total_calls == 0

    run(main())


def test_a_member_without_quorum_gives_unavailable_not_timeout() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(1)
        cluster.backends[cluster.addresses[0]].fail_with = UnavailableError("no quorum")
        async with aio(cluster) as client:
            with pytest.raises(UnavailableError):
                await client.put(b"k", b"v", timeout_s=0.3)
        # Retried: the put's first step, registering its session, was.
        assert cluster.backends[cluster.addresses[0]].calls["register_session"] >= 2

    run(main())


def test_the_client_survives_a_member_going_down() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(3, leader=0)
        a, b, _ = cluster.addresses
        async with aio(cluster) as client:
            await client.put(b"k", b"1")
            cluster.down.add(a)
            cluster.drop_connections(a)
            cluster.make_leader(b)
            await client.put(b"k", b"2", timeout_s=3)
            assert client.leader_address == b
            for _ in range(6):
                assert await client.get(b"k", consistency="stale", timeout_s=3) in (None, b"2")
        assert cluster.backends[b].data[b"k"] == b"2"

    run(main())


def test_authentication_failure_is_raised_at_once() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(3)
        cluster.connect_error = AuthenticationError("wrong secret")
        async with aio(cluster) as client:
            with pytest.raises(AuthenticationError):
                await client.put(b"k", b"v", timeout_s=5)
        assert sum(cluster.dials.values()) == 1

    run(main())


def test_status_of_a_named_member_and_of_a_down_one() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(3, leader=1)
        a, b, c = cluster.addresses
        async with aio(cluster) as client:
            assert (await client.status(c)).node_id == "n3"
            assert (await client.status(b)).role == "leader"
            cluster.down.add(a)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UnavailableError):
                await client.status(a)
            assert loop.time() - started < 2.5  # fails fast rather than using all 5 s
            # A member not in the endpoint list can be asked too.
            cluster.backends["127.0.0.1:7999"] = FakeBackend("n9")
            assert (await client.status("127.0.0.1:7999")).node_id == "n9"

    run(main())


BAD_CALLS: list[tuple[str, Callable[[aio_client.Client], Coroutine[Any, Any, Any]]]] = [
    ("str key", lambda c: c.put("k", b"v")),  # type: ignore[arg-type]
    ("empty key", lambda c: c.get(b"")),
    ("long key", lambda c: c.delete(b"k" * 512)),
    ("big value", lambda c: c.put(b"k", b"v" * 101)),
    ("str value", lambda c: c.put(b"k", "v")),  # type: ignore[arg-type]
    ("cas expected", lambda c: c.cas(b"k", 1, None)),  # type: ignore[arg-type]
    ("cas new", lambda c: c.cas(b"k", None, b"n" * 101)),
    ("consistency", lambda c: c.get(b"k", consistency="strong")),
    ("timeout", lambda c: c.get(b"k", timeout_s=0)),
    ("timeout type", lambda c: c.put(b"k", b"v", timeout_s="1")),  # type: ignore[arg-type]
    ("limit", lambda c: c.scan(limit=0)),
    ("prefix", lambda c: c.scan("p")),  # type: ignore[arg-type]
    ("node id", lambda c: c.remove_member("")),
    ("address", lambda c: c.add_member("n4", "nowhere")),
    ("status address", lambda c: c.status("host:")),
]


@pytest.mark.parametrize("call", [c for _, c in BAD_CALLS], ids=[n for n, _ in BAD_CALLS])
def test_bad_input_is_refused_before_anything_is_sent(
    call: Callable[[aio_client.Client], Coroutine[Any, Any, Any]],
) -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(1)
        async with aio(cluster, max_value_bytes=100) as client:
            with pytest.raises(InvalidArgumentError):
                await call(client)
        assert sum(cluster.dials.values()) == 0

    run(main())


@pytest.mark.parametrize(
    ("endpoints", "kw"),
    [
        ([], {}),
        (["localhost"], {}),
        (["h:0"], {}),
        ({"h:1": 0}, {}),
        (42, {}),
        (["h:1"], {"balancer": "nope"}),
        (["h:1"], {"timeout_s": -1}),
        (["h:1"], {"secret": "text"}),
        (["h:1"], {"max_value_bytes": 0}),
    ],
)
def test_bad_constructor_arguments(endpoints: Any, kw: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        kvstore.aio.Client(endpoints, **kw)


def test_endpoints_may_be_one_comma_separated_string() -> None:
    assert aio_client.parse_endpoints("a:1, b:2") == {"a:1": 1.0, "b:2": 1.0}


def test_calls_after_close_are_unavailable() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(1)
        client = aio(cluster)
        await client.put(b"k", b"v")
        await client.close()
        await client.close()
        with pytest.raises(UnavailableError):
            await client.get(b"k")

    run(main())


def test_close_fails_calls_in_progress() -> None:
    async def main() -> None:
        cluster = FakeCluster.with_leader(1)
        backend = cluster.backends[cluster.addresses[0]]
        backend.gate = asyncio.Event()
        client = aio(cluster)
        pending = asyncio.create_task(client.get(b"k", timeout_s=10))
        await wait_for(lambda: backend.inflight == 1)
        await client.close()
        with pytest.raises(UnavailableError):
            await pending

    run(main())


# --- the blocking client -------------------------------------------------------------------------


def test_sync_client_from_many_threads() -> None:
    cluster = FakeCluster.with_leader(3, leader=1)
    rng = random.Random(SEED)
    for backend in cluster.backends.values():
        backend.delay_s = lambda: rng.random() * 0.002
    errors: list[BaseException] = []
    threads_n, per_thread = 8, 40

    with Client(cluster.addresses, connect=cluster.connect, rng=random.Random(SEED)) as client:

        def work(t: int) -> None:
            try:
                for i in range(per_thread):
                    key = b"t%d-%d" % (t, i)
                    client.put(key, key)
                    assert client.get(key) in (key, None)  # followers in the fake lag behind
                    assert client.cas(key, key, b"x") is True
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors
        leader = cluster.backends[cluster.addresses[1]]
        assert len(leader.data) == threads_n * per_thread
        assert set(leader.data.values()) == {b"x"}
        assert leader.session_span_max <= aio_client.SEQS_IN_FLIGHT_MAX
        assert leader.stale == []
    # close() stopped the loop thread.
    assert not any(t.name == "kvstore-client" and t.is_alive() for t in threading.enumerate())


def test_sync_client_errors_and_close() -> None:
    cluster = FakeCluster.with_leader(1)
    client = Client(cluster.addresses, connect=cluster.connect)
    with pytest.raises(InvalidArgumentError):
        client.put(b"", b"v")
    cluster.backends[cluster.addresses[0]].fail_with = NotLeaderError("nobody leads")
    # Retries run until the deadline; if the last one is still in flight then, its outcome is
    # honestly unknown (OperationTimeoutError), otherwise nothing was done (UnavailableError).
    # Either way the refusal that caused it is named.
    with pytest.raises((UnavailableError, OperationTimeoutError), match="nobody leads"):
        client.put(b"k", b"v", timeout_s=0.2)
    cluster.backends[cluster.addresses[0]].fail_with = None
    assert client.status().node_id == "n1"
    client.close()
    client.close()
    with pytest.raises(UnavailableError):
        client.get(b"k")


def test_sync_close_releases_a_thread_stuck_in_a_call() -> None:
    cluster = FakeCluster.with_leader(1)
    cluster.backends[cluster.addresses[0]].gate = asyncio.Event()  # never answers
    client = Client(cluster.addresses, connect=cluster.connect)
    outcome: list[BaseException] = []
    started = threading.Event()

    def call() -> None:
        started.set()
        try:
            client.get(b"k", timeout_s=30)
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=call)
    thread.start()
    started.wait(5)
    deadline = time.monotonic() + 5
    while cluster.backends[cluster.addresses[0]].inflight == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    client.close()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], UnavailableError)

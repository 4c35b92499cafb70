"""The request service, driven frame by frame over an in-memory connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from kvstore.client import protocol as p
from kvstore.errors import (
    InvalidArgumentError,
    KVStoreError,
    NotLeaderError,
    OperationTimeoutError,
    UnavailableError,
)
from kvstore.node import service
from kvstore.node.service import serve_client_connection
from kvstore.transport.codec import FrameKind
from tests.client.fakes import FakeBackend, FakeConnection, wait_for

CID = 7


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=20))


class Harness:
    """A client end talking raw frames to `serve_client_connection` over a fake connection."""

    def __init__(self, backend: FakeBackend, **options: Any) -> None:
        self.backend = backend
        self.client, self.server = FakeConnection.pair()
        self.task = asyncio.create_task(serve_client_connection(self.server, backend, **options))

    async def send(self, *requests: p.Request) -> None:
        await self.client.send(FrameKind.REQUEST, [p.encode_request(r) for r in requests])

    async def responses(self, n: int) -> tuple[list[p.Response], int]:
        """The next `n` responses, and how many RESPONSE frames carried them."""
        got: list[p.Response] = []
        frames = 0
        while len(got) < n:
            kind, body = await self.client.receive()
            assert kind == FrameKind.RESPONSE
            frames += 1
            got.extend(p.decode_responses(body))
        assert len(got) == n
        return got, frames

    async def close(self) -> None:
        self.client.close()
        await asyncio.wait_for(self.task, timeout=5)


def get(rid: int, key: bytes = b"k", timeout_s: float = 5.0) -> p.GetRequest:
    return p.GetRequest(rid, timeout_s, key, "linearizable")


def test_requests_run_concurrently_and_are_answered_out_of_order() -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.data = {b"a": b"1", b"b": b"2", b"c": b"3"}
        gates = {key: asyncio.Event() for key in backend.data}
        original_get = backend.get

        async def gated_get(key: bytes, **kw: Any) -> bytes | None:
            await gates[key].wait()
            return await original_get(key, **kw)

        backend.get = gated_get  # type: ignore[method-assign]
        h = Harness(backend)
        await h.send(get(1, b"a"), get(2, b"b"), get(3, b"c"))
        answered = []
        for key in (b"c", b"a", b"b"):  # release in an order unlike the request order
            gates[key].set()
            (response,), _ = await h.responses(1)
            answered.append((response.request_id, p.parse_optional_bytes(response.result)))
        assert answered == [(3, b"3"), (1, b"1"), (2, b"2")]
        await h.close()

    run(main())


def test_answers_ready_together_share_one_frame() -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.gate = asyncio.Event()
        h = Harness(backend)
        n = 50
        await h.send(*(get(i) for i in range(n)))
        await wait_for(lambda: backend.inflight == n)
        backend.gate.set()
        responses, frames = await h.responses(n)
        assert sorted(r.request_id for r in responses) == list(range(n))
        assert frames < n / 5
        await h.close()

    run(main())


def test_reading_stops_at_max_inflight() -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.gate = asyncio.Event()
        h = Harness(backend, max_inflight=4)
        for i in range(10):  # one frame each, so the reader could take them one by one
            await h.send(get(i))
        await wait_for(lambda: backend.inflight == 4)
        for _ in range(20):  # give the service every chance to read more than it should
            await asyncio.sleep(0)
        assert backend.inflight == 4
        assert backend.calls["get"] == 4
        backend.gate.set()
        responses, _ = await h.responses(10)
        assert sorted(r.request_id for r in responses) == list(range(10))
        assert backend.inflight_max == 4
        await h.close()

    run(main())


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (NotLeaderError("no", leader_id="n2", leader_address="h:2"), NotLeaderError),
        (UnavailableError("no quorum"), UnavailableError),
        (OperationTimeoutError("slow"), OperationTimeoutError),
        (RuntimeError("a bug"), KVStoreError),
    ],
)
def test_backend_errors_become_error_responses_and_the_connection_lives_on(
    error: BaseException, expected: type[KVStoreError], caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.fail_with = error
        h = Harness(backend)
        await h.send(p.PutRequest(1, 5.0, (CID, 1), b"k", b"v"))
        (response,), _ = await h.responses(1)
        assert type(response.error) is expected
        if isinstance(error, NotLeaderError):
            assert isinstance(response.error, NotLeaderError)
            assert (response.error.leader_id, response.error.leader_address) == ("n2", "h:2")
        backend.fail_with = None
        await h.send(p.StatusRequest(2, 1.0))
        (response,), _ = await h.responses(1)
        assert p.parse_status(response.result).node_id == "n1"
        await h.close()

    with caplog.at_level(logging.ERROR):
        run(main())


@pytest.mark.parametrize(
    "request_",
    [
        p.GetRequest(1, 1.0, b"", "stale"),
        p.GetRequest(1, 1.0, b"k" * 512, "stale"),
        p.PutRequest(1, 1.0, (CID, 1), b"k", b"v" * 101),
        p.CasRequest(1, 1.0, (CID, 1), b"k", b"e" * 101, None),
        p.DeleteRequest(1, 1.0, (CID, 1), b""),
    ],
)
def test_bad_arguments_are_refused_before_the_backend_sees_them(request_: p.Request) -> None:
    async def main() -> None:
        backend = FakeBackend()
        h = Harness(backend, max_value_bytes=100)
        await h.send(request_)
        (response,), _ = await h.responses(1)
        assert isinstance(response.error, InvalidArgumentError)
        assert sum(backend.calls.values()) == 0
        await h.close()

    run(main())


def test_a_stuck_backend_is_answered_with_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "BACKEND_GRACE_S", 0.01)

    async def main() -> None:
        backend = FakeBackend()
        backend.gate = asyncio.Event()  # never set
        h = Harness(backend)
        await h.send(get(1, timeout_s=0.05))
        (response,), _ = await h.responses(1)
        assert isinstance(response.error, OperationTimeoutError)
        await h.close()

    run(main())


def test_an_answer_over_the_frame_budget_is_refused() -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.data = {bytes([i]) * 4: b"x" * 1000 for i in range(1, 20)}
        h = Harness(backend, response_bytes_max=5000)
        await h.send(p.ScanRequest(1, 1.0, b"", None, "stale"))
        (response,), _ = await h.responses(1)
        assert isinstance(response.error, InvalidArgumentError)
        await h.send(p.ScanRequest(2, 1.0, b"", 3, "stale"))
        (response,), _ = await h.responses(1)
        assert len(p.parse_pairs(response.result)) == 3
        await h.close()

    run(main())


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (FrameKind.REQUEST, "not a list"),
        (FrameKind.REQUEST, [[1, 99, 1.0]]),
        (FrameKind.RAFT, []),
        (FrameKind.RESPONSE, [[1, 0, None]]),
    ],
)
def test_a_protocol_error_closes_only_that_connection(
    kind: FrameKind, body: object, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        backend = FakeBackend()
        bad = Harness(backend)
        good = Harness(backend)
        await bad.client.send(kind, body)
        kind_back, error = await bad.client.receive()
        assert kind_back == FrameKind.ERROR
        assert isinstance(error, dict) and error["code"] == "protocol"
        await asyncio.wait_for(bad.task, timeout=5)  # the service gave up on that connection
        assert bad.server.closed
        with pytest.raises(ConnectionError):
            await bad.client.receive()
        # The other connection to the same backend is unaffected.
        await good.send(p.StatusRequest(7, 1.0))
        (response,), _ = await good.responses(1)
        assert response.request_id == 7 and response.error is None
        await good.close()

    with caplog.at_level(logging.WARNING):
        run(main())
    assert "client connection closed" in caplog.text


def test_a_dropped_connection_cancels_its_requests() -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.gate = asyncio.Event()
        h = Harness(backend)
        await h.send(get(1), get(2))
        await wait_for(lambda: backend.inflight == 2)
        h.client.close()
        await asyncio.wait_for(h.task, timeout=5)
        assert h.server.closed

    run(main())

"""The node's side of the client protocol: read REQUEST frames, call the backend, answer.

One `serve_client_connection()` coroutine runs per client connection. Each request becomes its
own task, so a slow linearizable read does not hold up the writes behind it; answers go back in
whatever order they finish, matched by request id. Answers that are ready together leave in one
RESPONSE frame (one socket write for many answers).

Back-pressure: a request holds one of `max_inflight` slots from the moment it is read until its
answer has been written. When every slot is taken the reader stops reading, so a client that
sends faster than the node answers (or stops reading its answers) fills its own TCP window
rather than this process's memory.

Errors the backend raises become ERROR responses; the connection carries on. A frame that
breaks the protocol gets an ERROR frame and the connection is closed; nothing else is affected.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Protocol

from kvstore.client.protocol import (
    REQUESTS_PER_FRAME_MAX,
    AddMemberRequest,
    CasRequest,
    DeleteRequest,
    FrameConnection,
    GetRequest,
    PutRequest,
    RegisterSessionRequest,
    RemoveMemberRequest,
    Request,
    ScanRequest,
    Session,
    StatusRequest,
    TransferLeaderRequest,
    decode_requests,
    encode_error,
    encode_ok,
    op_of,
)
from kvstore.errors import (
    InvalidArgumentError,
    KVStoreError,
    OperationTimeoutError,
    RemoteProtocolError,
)
from kvstore.options import Status, check_key, check_optional_value, check_value
from kvstore.transport.codec import FrameKind

__all__ = ["ServiceBackend", "serve_client_connection"]

log = logging.getLogger(__name__)

BACKEND_GRACE_S = 0.5
"""How long past a request's own timeout the service waits for the backend before it answers
TIMEOUT itself (the backend is expected to give up on time; this is a safety net)."""

_RESPONSE_OVERHEAD_BYTES = 64
"""Rough msgpack size of a response apart from its keys and values."""


class ServiceBackend(Protocol):
    """What the node provides to serve clients. Raise `NotLeaderError` (with the leader's id and
    address when known) when the request must go to the leader; any `KVStoreError` reaches the
    client as the same exception class."""

    async def register_session(self, *, timeout_s: float) -> int:
        """Register a client session through the log and return its id; `UnavailableError`
        when too many sessions are live."""
        ...

    async def put(self, key: bytes, value: bytes, *, session: Session, timeout_s: float) -> None:
        """Set `key` to `value` once committed and applied; `session` deduplicates retries.
        Raise `SessionExpiredError` when the session is unknown or expired (not applied)."""
        ...

    async def get(self, key: bytes, *, consistency: str, timeout_s: float) -> bytes | None:
        """The value of `key`, or None when absent, read at `consistency`."""
        ...

    async def delete(self, key: bytes, *, session: Session, timeout_s: float) -> bool:
        """Remove `key`; True if it existed."""
        ...

    async def cas(
        self,
        key: bytes,
        expected: bytes | None,
        new: bytes | None,
        *,
        session: Session,
        timeout_s: float,
    ) -> bool:
        """Set `key` to `new` (None: delete) if its value is `expected` (None: absent)."""
        ...

    async def scan(
        self, prefix: bytes, *, limit: int | None, consistency: str, timeout_s: float
    ) -> list[tuple[bytes, bytes]]:
        """The pairs whose key starts with `prefix`, sorted by key, at most `limit` of them."""
        ...

    def status(self) -> Status:
        """This member's status."""
        ...

    async def add_member(self, node_id: str, address: str, *, timeout_s: float) -> None:
        """Add a member to the cluster."""
        ...

    async def remove_member(self, node_id: str, *, timeout_s: float) -> None:
        """Remove a member from the cluster."""
        ...

    async def transfer_leadership(self, node_id: str, *, timeout_s: float) -> None:
        """Hand leadership to `node_id`."""
        ...


async def serve_client_connection(
    conn: FrameConnection,
    backend: ServiceBackend,
    *,
    max_inflight: int = 1024,
    max_value_bytes: int = 1 << 20,
    response_bytes_max: int = 8 << 20,
) -> None:
    """Serve one client connection until it closes; never raises (except when cancelled).

    `max_inflight` bounds the requests read but not yet answered; `max_value_bytes` is the
    largest value accepted; `response_bytes_max` bounds one RESPONSE frame (an answer bigger
    than that, such as an unlimited scan of a large range, is refused with INVALID_ARGUMENT; it
    must stay below the client's frame limit, 16 MiB by default).
    """
    if max_inflight < 1 or max_value_bytes < 1 or response_bytes_max < 1:
        raise InvalidArgumentError("max_inflight, max_value_bytes and response_bytes_max >= 1")
    await _ConnectionService(conn, backend, max_inflight, max_value_bytes, response_bytes_max).run()


def _approx_bytes(result: object) -> int:
    """Roughly how many bytes `result` takes in a response (keys and values dominate)."""
    if isinstance(result, bytes):
        return len(result) + _RESPONSE_OVERHEAD_BYTES
    if isinstance(result, list):
        return _RESPONSE_OVERHEAD_BYTES + sum(len(k) + len(v) + 8 for k, v in result)
    return _RESPONSE_OVERHEAD_BYTES


class _ConnectionService:
    def __init__(
        self,
        conn: FrameConnection,
        backend: ServiceBackend,
        max_inflight: int,
        max_value_bytes: int,
        response_bytes_max: int,
    ) -> None:
        self._conn = conn
        self._backend = backend
        self._max_value_bytes = max_value_bytes
        self._response_bytes_max = response_bytes_max
        # Slots: a counter and one waiter (only the reader ever waits) rather than
        # asyncio.Semaphore, whose acquire() scans its waiters on every request.
        self._free_slots = max_inflight
        self._slot_waiter: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._expired: set[asyncio.Task[None]] = set()
        """Tasks cancelled by their deadline timer (not by the connection closing)."""
        # Answers ready to be written: (encoded response, approximate size). Never longer than
        # max_inflight, because each holds a slot until written.
        self._ready: list[tuple[list[object], int]] = []
        self._ready_event = asyncio.Event()

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_loop())
        try:
            await self._read_loop(writer)
        finally:
            writer.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(writer, *self._tasks, return_exceptions=True)
            self._conn.close()
            try:
                await self._conn.wait_closed()
            except Exception:  # already closing: nothing more to do
                pass

    async def _read_loop(self, writer: asyncio.Task[None]) -> None:
        while not writer.done():
            try:
                kind, body = await self._conn.receive()
            except (ConnectionError, OSError):
                return
            except RemoteProtocolError as e:
                log.warning("client connection closed: %s", e)
                return
            try:
                if kind != FrameKind.REQUEST:
                    raise RemoteProtocolError(f"unexpected {kind!r} frame from a client")
                requests = decode_requests(body)
            except RemoteProtocolError as e:
                log.warning("client connection closed: %s", e)
                await self._send_error_frame(str(e))
                return
            loop = asyncio.get_running_loop()
            for request in requests:
                # Stop reading while every slot is taken: this is the back-pressure.
                if self._free_slots > 0:
                    self._free_slots -= 1
                else:
                    await self._wait_slot()
                task = loop.create_task(self._serve(request))
                # The safety net for a backend that overruns the request's timeout: a bare
                # timer rather than asyncio.timeout() in the task, which cost several times
                # more per request (measured).
                timer = loop.call_at(
                    loop.time() + request.timeout_s + BACKEND_GRACE_S, self._expire, task
                )
                self._tasks.add(task)
                task.add_done_callback(functools.partial(self._task_done, timer))

    def _expire(self, task: asyncio.Task[None]) -> None:
        self._expired.add(task)
        task.cancel()

    def _task_done(self, timer: asyncio.TimerHandle, task: asyncio.Task[None]) -> None:
        timer.cancel()
        self._tasks.discard(task)
        self._expired.discard(task)

    async def _wait_slot(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiter = waiter
        try:
            await waiter
        finally:
            self._slot_waiter = None

    def _release_slots(self, count: int) -> None:
        waiter = self._slot_waiter
        if waiter is not None and not waiter.done():
            # The reader waits for one slot: hand it over directly.
            waiter.set_result(None)
            count -= 1
        self._free_slots += count

    async def _send_error_frame(self, message: str) -> None:
        try:
            await asyncio.wait_for(
                self._conn.send(FrameKind.ERROR, {"code": "protocol", "message": message}),
                timeout=1.0,
            )
        except Exception:  # best effort before closing
            pass

    async def _serve(self, request: Request) -> None:
        released = False
        try:
            try:
                try:
                    result = await self._call(request)
                except asyncio.CancelledError:
                    if asyncio.current_task() not in self._expired:
                        raise  # the connection is closing
                    raise TimeoutError() from None
                size = _approx_bytes(result)
                if size > self._response_bytes_max:
                    raise InvalidArgumentError(
                        f"the answer is about {size} bytes, more than the limit of "
                        f"{self._response_bytes_max}; ask for less (a scan limit or prefix)"
                    )
                response = encode_ok(request.request_id, op_of(request), result)
            except TimeoutError:
                response = encode_error(
                    request.request_id, OperationTimeoutError("the request timed out")
                )
                size = _RESPONSE_OVERHEAD_BYTES
            except KVStoreError as e:
                response = encode_error(request.request_id, e)
                size = _RESPONSE_OVERHEAD_BYTES + len(str(e))
            except Exception as e:  # the backend failed unexpectedly: a bug, but answer anyway
                log.exception("client request %r failed", op_of(request))
                response = encode_error(request.request_id, e)
                size = _RESPONSE_OVERHEAD_BYTES + len(str(e))
            self._ready.append((response, size))
            self._ready_event.set()
            released = True  # the writer releases the slot once the answer is written
        finally:
            if not released:
                self._release_slots(1)

    async def _call(self, request: Request) -> object:
        backend = self._backend
        vmax = self._max_value_bytes
        match request:
            case PutRequest(timeout_s=t, session=session, key=key, value=value):
                check_key(key)
                check_value(value, vmax)
                await backend.put(key, value, session=session, timeout_s=t)
                return None
            case GetRequest(timeout_s=t, key=key, consistency=consistency):
                check_key(key)
                return await backend.get(key, consistency=consistency, timeout_s=t)
            case DeleteRequest(timeout_s=t, session=session, key=key):
                check_key(key)
                return await backend.delete(key, session=session, timeout_s=t)
            case CasRequest(timeout_s=t, session=session, key=key, expected=exp, new=new):
                check_key(key)
                check_optional_value(exp, vmax, name="expected")
                check_optional_value(new, vmax, name="new")
                return await backend.cas(key, exp, new, session=session, timeout_s=t)
            case ScanRequest(timeout_s=t, prefix=prefix, limit=limit, consistency=consistency):
                return await backend.scan(prefix, limit=limit, consistency=consistency, timeout_s=t)
            case StatusRequest():
                return backend.status()
            case AddMemberRequest(timeout_s=t, node_id=node_id, address=address):
                await backend.add_member(node_id, address, timeout_s=t)
                return None
            case RemoveMemberRequest(timeout_s=t, node_id=node_id):
                await backend.remove_member(node_id, timeout_s=t)
                return None
            case TransferLeaderRequest(timeout_s=t, node_id=node_id):
                await backend.transfer_leadership(node_id, timeout_s=t)
                return None
            case RegisterSessionRequest(timeout_s=t):
                return await backend.register_session(timeout_s=t)
        raise InvalidArgumentError(f"unknown request {request!r}")  # pragma: no cover

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._ready_event.wait()
                self._ready_event.clear()
                while self._ready:
                    batch, taken = self._take_batch()
                    try:
                        await self._conn.send(FrameKind.RESPONSE, batch)
                    finally:
                        self._release_slots(taken)
        except (ConnectionError, OSError) as e:
            log.debug("client connection lost while answering: %s", e)
            self._conn.close()  # wakes the reader, which ends the connection
        except Exception:
            log.exception("writing to a client failed; closing the connection")
            self._conn.close()

    def _take_batch(self) -> tuple[list[object], int]:
        """Pop the longest prefix of ready answers that fits one frame (at least one)."""
        total = 0
        n = 0
        for _, size in self._ready:
            if n and (n >= REQUESTS_PER_FRAME_MAX or total + size > self._response_bytes_max):
                break
            total += size
            n += 1
        batch: list[object] = [response for response, _ in self._ready[:n]]
        del self._ready[:n]
        return batch, n

"""The asyncio client: the one implementation behind `kvstore.aio.Client` and `kvstore.Client`.

Connections: one per member, opened on first use and shared by every call. Each is pipelined:
many requests in flight, answered in any order and matched by request id; requests issued
together leave in one REQUEST frame. A connection that fails is dropped and redialled by the next
call that needs it.

Routing: writes (and membership changes) go to the leader. The client learns who that is from
NotLeaderError redirects, remembers it, and forgets it when it stops answering. A redirect to an
address not in the configured list is followed too. Reads go where the balancer says (any
member can serve every consistency level), and to the leader after a NotLeaderError.

Retries: a call retries, with capped and jittered exponential backoff, until it succeeds, hits
an error that retrying cannot fix, or runs out of its `timeout_s`. At that point it raises
`OperationTimeoutError` if some attempt was sent and never answered (the write may or may not
have happened), and `UnavailableError` if nothing was ever delivered. `AuthenticationError` is
raised at once.

Exactly-once writes (Raft thesis §6.3): every write carries a session `(session_id, seq)` and
all retries of one write carry the same one, so the state machine answers a retry with the
first result instead of applying it twice. A session is registered through the log (a
REGISTER_SESSION request, answered with its id) the first time a write needs it. The state
machine remembers only the last `SESSION_WINDOW` seqs of each session and refuses anything
older as stale, so pipelined writes of one session must never span more than that window: if
they did, a slow or retried early write could arrive after the window moved past it and be
dropped. The client therefore lends sessions from a small pool: a write takes the newest
session whose oldest write in flight is less than `SEQS_IN_FLIGHT_MAX` seqs behind, or a new
session when none qualifies, and keeps its seq for every retry. Under light load one session
serves everything.

Expired sessions: a session without writes for the cluster's `session_timeout_s` expires, and
its writes are refused (`SessionExpiredError`), never applied. If no earlier attempt of the
refused write was sent with an unknown outcome, it cannot have run: the client registers a new
session and sends it once more, transparently. Otherwise its outcome is unknown and the caller
gets `SessionExpiredError`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import math
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from kvstore import wire
from kvstore.client.balancer import Balancer, BalancerName, make_balancer
from kvstore.client.protocol import (
    AddMemberRequest,
    CasRequest,
    DeleteRequest,
    FrameConnection,
    GetRequest,
    PutRequest,
    RegisterSessionRequest,
    RemoveMemberRequest,
    Request,
    Response,
    ResultParser,
    ScanRequest,
    Session,
    StatusRequest,
    TransferLeaderRequest,
    decode_responses,
    encode_request,
    parse_bool,
    parse_none,
    parse_optional_bytes,
    parse_pairs,
    parse_session_id,
    parse_status,
)
from kvstore.deadline import Deadline
from kvstore.errors import (
    AuthenticationError,
    InvalidArgumentError,
    NotLeaderError,
    OperationTimeoutError,
    RemoteProtocolError,
    SessionExpiredError,
    UnavailableError,
)
from kvstore.options import (
    Consistency,
    Status,
    check_consistency,
    check_key,
    check_limit,
    check_optional_value,
    check_timeout,
    check_value,
)
from kvstore.transport.codec import FrameKind
from kvstore.transport.tls import TLSConfig, client_context

__all__ = ["Client", "Connector", "parse_endpoints"]

log = logging.getLogger(__name__)

Connector = Callable[[str, float], Awaitable[FrameConnection]]
"""`connect(address, timeout_s)`: open an authenticated connection to one member."""

ENDPOINTS_MAX = 256
"""Most members the client knows of (configured plus learned from redirects)."""
CONNECTIONS_MAX = 256
"""Most open connections; beyond this, idle ones are closed."""
ATTEMPTS_MAX = 256
"""Most attempts of one call, whatever its timeout (at `BACKOFF_MAX_S` apart, more than the
default timeout lasts, so normally the timeout ends a call that cannot succeed)."""
ATTEMPT_TIMEOUT_S = 1.0
"""Longest wait for one attempt (connecting included), whatever is left of the call's timeout.
A member that does not answer within it (paused, cut off, stuck) is given up on for this call
and the next attempt goes elsewhere: a leader that fell silent is replaced by an election within
about one election timeout (0.3-0.6 s by default), and a client waiting on it for the whole
call would never find the new one. Retrying a write is safe: it keeps its session."""
PINNED_CONNECT_ATTEMPTS_MAX = 2
"""Connection attempts when a call names its member (`status(address)`): fail fast when down."""
BACKOFF_FIRST_S = 0.01
BACKOFF_MAX_S = 0.1
"""Longest pause between attempts. A call waiting out an election learns of the new leader at
most this long after it is elected, so this adds directly to failover time: measured with the
old 0.5 s cap, the client's share of a leader kill was 0.5-1.1 s on top of a 0.5-0.8 s
election. Ten tiny attempts a second per waiting call is a small price for that."""
_SERVER_MARGIN_S = 0.05
"""The member gets this much less time than the caller, so its TIMEOUT answer arrives first."""
_REQUEST_IDS = 1 << 64
SEQS_IN_FLIGHT_MAX = wire.SESSION_WINDOW // 2
"""Widest span of seqs one session may have in flight; half the state machine's window leaves
room for a write that is retried while later ones complete."""
_FRAME_REQUESTS_MAX = 1024
"""Requests per REQUEST frame sent (the protocol allows more; this keeps frames moderate)."""


def parse_endpoints(endpoints: object) -> dict[str, float]:
    """Validate `endpoints` ("host:port" strings or a {"host:port": weight} mapping).

    A single string may list several endpoints separated by commas. Returns address -> weight
    (1.0 when not given), in the order given.
    """
    if isinstance(endpoints, str):
        endpoints = [e.strip() for e in endpoints.split(",") if e.strip()]
    if isinstance(endpoints, Mapping):
        items = list(endpoints.items())
    elif isinstance(endpoints, Sequence):
        items = [(e, 1.0) for e in endpoints]
    else:
        raise InvalidArgumentError(
            f"endpoints must be a list of 'host:port' or a mapping, got {type(endpoints).__name__}"
        )
    if not items:
        raise InvalidArgumentError("endpoints must name at least one member")
    if len(items) > ENDPOINTS_MAX:
        raise InvalidArgumentError(f"at most {ENDPOINTS_MAX} endpoints, got {len(items)}")
    result: dict[str, float] = {}
    for address, weight in items:
        _check_address(address)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not 0 < weight < math.inf  # False for nan
        ):
            raise InvalidArgumentError(
                f"weight of {address} must be a finite number > 0, got {weight!r}"
            )
        result[address] = float(weight)
    return result


def _check_address(address: object) -> str:
    if not isinstance(address, str):
        raise InvalidArgumentError(f"an endpoint must be a 'host:port' str, got {address!r}")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"an endpoint must look like 'host:port', got {address!r}")
    return address


def _check_node_id(node_id: object) -> str:
    if not isinstance(node_id, str) or not node_id:
        raise InvalidArgumentError(f"node_id must be a non-empty str, got {node_id!r}")
    return node_id


def _expire(future: asyncio.Future[Response]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _approx_bytes(encoded: list[object]) -> int:
    """Roughly the msgpack size of an encoded request: its bytes and str fields dominate."""
    # A list comprehension over exact types: this runs once per request.
    return 32 + sum([len(x) for x in encoded if type(x) is bytes or type(x) is str])


class _ClientClosedError(UnavailableError):
    def __init__(self) -> None:
        super().__init__("the client is closed")


class _NeverSentError(SessionExpiredError):
    """A write refused because its session expired, with no earlier attempt whose outcome is
    unknown: it never ran, so it may be sent again under a new session."""


def _with_session(
    build: Callable[[int, float, Session], Request], session: Session, rid: int, ts: float
) -> Request:
    return build(rid, ts, session)


def _registered(session: _Session, task: asyncio.Task[int]) -> None:
    """Done-callback of a session's registration: keep the id, or allow another try."""
    if not task.cancelled() and task.exception() is None:
        session.session_id = task.result()
    else:
        session.registering = None


class _LostError(Exception):
    """The connection failed before the answer came; `sent` says whether the request left."""

    def __init__(self, sent: bool, cause: str) -> None:
        super().__init__(cause)
        self.sent = sent


class _Attempt:
    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


class _Channel:
    """One pipelined connection: a writer task that batches requests into frames and a reader
    task that routes answers to their waiting calls by request id."""

    def __init__(
        self, address: str, conn: FrameConnection, max_inflight: int, batch_bytes_max: int
    ) -> None:
        self.address = address
        self._conn = conn
        self._batch_bytes_max = batch_bytes_max
        # Slots in flight: a counter and a queue of waiters rather than asyncio.Semaphore, whose
        # locked() scans its waiters on every call (measured: 6% of a pipelined put's cost).
        self._free_slots = max_inflight
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._pending: dict[int, tuple[asyncio.Future[Response], _Attempt]] = {}
        # Requests not yet handed to the socket, in order; bounded by the slots.
        self._outbox: dict[int, tuple[list[object], int]] = {}  # id -> (request, bytes)
        self._wakeup = asyncio.Event()
        self.closed = False
        self._close_reason = "closed"
        self._tasks = [
            asyncio.create_task(self._read_loop(), name=f"kvstore-client-read-{address}"),
            asyncio.create_task(self._write_loop(), name=f"kvstore-client-write-{address}"),
        ]

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    async def call(
        self, request_id: int, encoded: list[object], attempt: _Attempt, deadline: float
    ) -> Response:
        """Send one request and wait for its answer until the loop time `deadline`.

        Raises `TimeoutError` at the deadline and `_LostError` if the connection fails.
        """
        if self._free_slots > 0:
            self._free_slots -= 1
        else:
            await self._wait_slot(deadline)
        try:
            if self.closed:
                raise _LostError(False, self._close_reason)
            loop = asyncio.get_running_loop()
            if loop.time() >= deadline:
                # The slot came free just as time ran out: do not send what nobody awaits.
                raise TimeoutError()
            future: asyncio.Future[Response] = loop.create_future()
            # A bare timer on the future: far cheaper per request than asyncio.timeout().
            timer = loop.call_at(deadline, _expire, future)
            self._pending[request_id] = (future, attempt)
            self._outbox[request_id] = (encoded, _approx_bytes(encoded))
            self._wakeup.set()
            try:
                return await future
            finally:
                timer.cancel()
                # On timeout or cancellation, an unsent request is withdrawn.
                self._pending.pop(request_id, None)
                self._outbox.pop(request_id, None)
        finally:
            self._release_slot()

    async def _wait_slot(self, deadline: float) -> None:
        """Every slot is taken: wait for one, but not past the caller's deadline."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot just as we gave up: pass it on
            else:
                waiter.cancel()  # skipped by _release_slot
            raise

    def _release_slot(self) -> None:
        # Hand the slot straight to the oldest live waiter, else put it back.
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free_slots += 1

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._outbox:
                    await self._conn.send(FrameKind.REQUEST, self._take_batch())
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.close(f"sending to {self.address} failed: {e!r}")

    def _take_batch(self) -> list[object]:
        """Pop the oldest requests that fit one frame (at least one) and mark them sent."""
        batch: list[object] = []
        total = 0
        for request_id, (encoded, size) in self._outbox.items():
            if batch and (
                len(batch) >= _FRAME_REQUESTS_MAX or total + size > self._batch_bytes_max
            ):
                break
            batch.append(encoded)
            total += size
            entry = self._pending.get(request_id)
            if entry is not None:
                entry[1].sent = True
        for request_id in list(itertools.islice(self._outbox, len(batch))):
            del self._outbox[request_id]
        return batch

    async def _read_loop(self) -> None:
        try:
            while True:
                kind, body = await self._conn.receive()
                if kind == FrameKind.RESPONSE:
                    for response in decode_responses(body):
                        entry = self._pending.get(response.request_id)
                        # No entry: the caller gave up (timeout) before the answer came.
                        if entry is not None and not entry[0].done():
                            entry[0].set_result(response)
                elif kind == FrameKind.ERROR:
                    detail = body.get("message") if isinstance(body, dict) else body
                    raise RemoteProtocolError(f"{self.address} closed the connection: {detail!r}")
                else:
                    raise RemoteProtocolError(f"unexpected {kind!r} frame from {self.address}")
        except asyncio.CancelledError:
            raise
        except RemoteProtocolError as e:
            log.warning("dropping the connection to %s: %s", self.address, e)
            self.close(str(e))
        except Exception as e:
            self.close(f"connection to {self.address} lost: {e!r}")

    def close(self, reason: str = "the client closed the connection") -> None:
        """Fail every waiting call and close the connection; idempotent."""
        if self.closed:
            return
        self.closed = True
        self._close_reason = reason
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for future, attempt in self._pending.values():
            if not future.done():
                future.set_exception(_LostError(attempt.sent, reason))
        self._conn.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._conn.wait_closed()
        except Exception:  # already closed or broken: either way it is gone
            pass


class _Session:
    __slots__ = ("inflight", "last_seq", "order", "registering", "session_id")

    def __init__(self) -> None:
        self.session_id: int | None = None
        """Assigned by the cluster when the first write registers the session."""
        self.registering: asyncio.Task[int] | None = None
        """The registration in progress, shared by the writes that wait for it."""
        self.last_seq = 0
        self.inflight: set[int] = set()  # seqs lent and not yet given back
        self.order: collections.deque[int] = collections.deque()
        """Seqs in the order lent (ascending); those given back are dropped from the front
        lazily, so the oldest seq in flight is found in O(1) amortised (min() over the set
        was a tenth of the client's time with 256 writes in flight)."""

    def oldest(self) -> int | None:
        """The oldest seq still in flight, or None."""
        order, inflight = self.order, self.inflight
        while order and order[0] not in inflight:
            order.popleft()
        return order[0] if order else None


class _SessionPool:
    """Hands out (client_id, seq) pairs so that no session's writes in flight span more than
    `SEQS_IN_FLIGHT_MAX` seqs (see the module docstring). The pool grows only while that many
    writes are in flight at once, which the connections' slots bound."""

    def __init__(self) -> None:
        self._sessions: list[_Session] = []

    def lend(self) -> tuple[_Session, int]:
        for session in reversed(self._sessions):
            # Lending seq s keeps the span s - oldest within the window.
            oldest = session.oldest()
            if oldest is None or session.last_seq + 1 - oldest < SEQS_IN_FLIGHT_MAX:
                break
        else:
            session = _Session()
            self._sessions.append(session)
        seq = session.last_seq = session.last_seq + 1
        session.inflight.add(seq)
        session.order.append(seq)
        return session, seq

    def give_back(self, session: _Session, seq: int) -> None:
        session.inflight.discard(seq)

    def expire(self, session: _Session) -> None:
        """Lend no more seqs of `session` (the cluster refused it as expired)."""
        if session in self._sessions:
            self._sessions.remove(session)

    @property
    def size(self) -> int:
        return len(self._sessions)


class Client:
    """An asyncio client of a kvstore cluster. Every method is a coroutine; see `kvstore.Client`
    for the same calls from threads.

    `endpoints` lists members as "host:port" (or maps each to a weight for the "weighted"
    balancer). `balancer` picks the member for each read. `secret` is the client secret (the
    node's `client_secret`, or its `secret` if it has none): it authenticates each connection
    and every frame on it (a frame altered in transit closes the connection; the call retries).
    `tls` (a `kvstore.TLSConfig` with a client or member certificate) makes them mutual TLS
    instead (not both).
    `timeout_s` is the default for `status()` and `scan()` and for connecting. `max_value_bytes`
    bounds values. `max_inflight` bounds the requests in flight per connection. `connect`
    replaces the TCP connector (tests use in-memory connections); `rng` seeds the backoff
    jitter and the "random"/"latency" balancers.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | Mapping[str, float],
        *,
        balancer: BalancerName | Balancer = "weighted",
        secret: bytes | None = None,
        timeout_s: float = 5.0,
        max_value_bytes: int = 1 << 20,
        max_inflight: int = 1024,
        frame_bytes_max: int = 16 << 20,
        connect: Connector | None = None,
        rng: random.Random | None = None,
        tls: TLSConfig | None = None,
    ) -> None:
        weights = parse_endpoints(endpoints)
        self._endpoints = list(weights)
        """Configured members: where reads are spread."""
        self._known = list(weights)
        """Configured plus learned from redirects: where a leader is looked for."""
        self._timeout_s = check_timeout(timeout_s)
        if secret is not None and not isinstance(secret, bytes):
            raise InvalidArgumentError("secret must be bytes or None")
        # --- mutual TLS: one context, built once, shared by every connection ---
        self._tls_context: ssl.SSLContext | None = None
        if tls is not None:
            if not isinstance(tls, TLSConfig):
                raise InvalidArgumentError(f"tls must be a kvstore.TLSConfig, got {tls!r}")
            if secret is not None:
                raise InvalidArgumentError("give either tls or secret, not both")
            self._tls_context = client_context(tls)
        for name, value in (
            ("max_value_bytes", max_value_bytes),
            ("max_inflight", max_inflight),
            ("frame_bytes_max", frame_bytes_max),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
        if frame_bytes_max < 2 * max_value_bytes + (64 << 10):
            # A cas carries two values; its frame must still fit.
            raise InvalidArgumentError(
                "frame_bytes_max must exceed twice max_value_bytes by 64 KiB"
            )
        self._rng = rng if rng is not None else random.Random()
        self._balancer = make_balancer(balancer, weights, rng=random.Random(self._rng.random()))
        self._secret = secret
        self._max_value_bytes = max_value_bytes
        self._max_inflight = max_inflight
        self._frame_bytes_max = frame_bytes_max
        self._connect = connect if connect is not None else self._connect_tcp
        self._channels: dict[str, _Channel] = {}
        self._connecting: dict[str, asyncio.Task[_Channel]] = {}
        self._leader: str | None = None
        self._write_cursor = 0
        self._request_ids = itertools.count(self._rng.randrange(1 << 32))
        self._sessions = _SessionPool()
        self._calls: set[asyncio.Task[Any]] = set()
        self._closed = False

    # --- public API ----------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes, *, timeout_s: float = 5.0) -> None:
        """Set `key` to `value`; returns once the write is committed and applied."""
        check_key(key)
        check_value(value, self._max_value_bytes)
        t = check_timeout(timeout_s)
        await self._write(lambda rid, ts, s: PutRequest(rid, ts, s, key, value), parse_none, t)

    async def get(
        self, key: bytes, *, consistency: Consistency = "linearizable", timeout_s: float = 5.0
    ) -> bytes | None:
        """The value of `key`, or None when it is absent."""
        check_key(key)
        level = check_consistency(consistency)
        t = check_timeout(timeout_s)
        result: bytes | None = await self._read(
            lambda rid, ts: GetRequest(rid, ts, key, level), parse_optional_bytes, t
        )
        return result

    async def delete(self, key: bytes, *, timeout_s: float = 5.0) -> bool:
        """Remove `key`; True if it existed."""
        check_key(key)
        t = check_timeout(timeout_s)
        result: bool = await self._write(
            lambda rid, ts, s: DeleteRequest(rid, ts, s, key), parse_bool, t
        )
        return result

    async def cas(
        self, key: bytes, expected: bytes | None, new: bytes | None, *, timeout_s: float = 5.0
    ) -> bool:
        """Set `key` to `new` if its value is `expected`; True if it did.

        `expected` None means "must be absent"; `new` None deletes the key.
        """
        check_key(key)
        check_optional_value(expected, self._max_value_bytes, name="expected")
        check_optional_value(new, self._max_value_bytes, name="new")
        t = check_timeout(timeout_s)
        result: bool = await self._write(
            lambda rid, ts, s: CasRequest(rid, ts, s, key, expected, new), parse_bool, t
        )
        return result

    async def scan(
        self,
        prefix: bytes = b"",
        *,
        limit: int | None = None,
        consistency: Consistency = "linearizable",
        timeout_s: float | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """The pairs whose key starts with `prefix`, sorted by key, at most `limit` of them."""
        if not isinstance(prefix, bytes):
            raise InvalidArgumentError(f"prefix must be bytes, got {type(prefix).__name__}")
        checked_limit = check_limit(limit)
        level = check_consistency(consistency)
        t = self._timeout_s if timeout_s is None else check_timeout(timeout_s)
        result: list[tuple[bytes, bytes]] = await self._read(
            lambda rid, ts: ScanRequest(rid, ts, prefix, checked_limit, level), parse_pairs, t
        )
        return result

    async def status(self, address: str | None = None, *, timeout_s: float | None = None) -> Status:
        """The status of the member at `address`, or of one the balancer picks."""
        if address is not None:
            _check_address(address)
        t = self._timeout_s if timeout_s is None else check_timeout(timeout_s)
        result: Status = await self._read(
            lambda rid, ts: StatusRequest(rid, ts), parse_status, t, address=address
        )
        return result

    async def add_member(self, node_id: str, address: str, *, timeout_s: float = 10.0) -> None:
        """Add `node_id`, reachable at `address`, to the cluster."""
        _check_node_id(node_id)
        _check_address(address)
        t = check_timeout(timeout_s)
        await self._admin(lambda rid, ts: AddMemberRequest(rid, ts, node_id, address), t)

    async def remove_member(self, node_id: str, *, timeout_s: float = 10.0) -> None:
        """Remove `node_id` from the cluster."""
        _check_node_id(node_id)
        t = check_timeout(timeout_s)
        await self._admin(lambda rid, ts: RemoveMemberRequest(rid, ts, node_id), t)

    async def transfer_leadership(self, node_id: str, *, timeout_s: float = 10.0) -> None:
        """Ask the leader to hand leadership to `node_id`."""
        _check_node_id(node_id)
        t = check_timeout(timeout_s)
        await self._admin(lambda rid, ts: TransferLeaderRequest(rid, ts, node_id), t)

    @property
    def leader_address(self) -> str | None:
        """The address of the member this client currently takes for the leader, if any."""
        return self._leader

    async def close(self) -> None:
        """Close every connection; calls in progress fail with `UnavailableError`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in self._connecting.values():
            task.cancel()
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            channel.close()
        calls = [task for task in self._calls if task is not asyncio.current_task()]
        if calls:
            await asyncio.wait(calls, timeout=2.0)
        await asyncio.gather(
            *(channel.wait_closed() for channel in channels),
            *self._connecting.values(),
            return_exceptions=True,
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # --- calls ---------------------------------------------------------------------------------

    async def _write(
        self, build: Callable[[int, float, Session], Request], parse: ResultParser, timeout_s: float
    ) -> Any:
        deadline = Deadline.on_loop(timeout_s)
        renewed = False
        while True:
            session, seq = self._sessions.lend()
            try:
                session_id = session.session_id
                if session_id is None:
                    session_id = await self._register(session, deadline.remaining_s())
                pair: Session = (session_id, seq)  # every retry below reuses this seq
                return await self._execute(
                    functools.partial(_with_session, build, pair),
                    parse,
                    deadline.left_s(),
                    to_leader=True,
                )
            except SessionExpiredError as error:
                self._sessions.expire(session)
                # Refused as expired at its first delivery, it never ran: once more, under a
                # new session. Otherwise its outcome is unknown: the caller must decide.
                if renewed or not isinstance(error, _NeverSentError):
                    raise
                renewed = True
            finally:
                self._sessions.give_back(session, seq)

    async def _register(self, session: _Session, timeout_s: float) -> int:
        """The id of `session`, registering it first; concurrent writes share one request."""
        task = session.registering
        if task is None:
            task = session.registering = asyncio.ensure_future(
                self._execute(
                    RegisterSessionRequest, parse_session_id, max(timeout_s, 1e-3), to_leader=True
                )
            )
            task.add_done_callback(functools.partial(_registered, session))
        try:
            # A little longer than the registration's own timeout, so that its own error (it
            # may be an OperationTimeoutError, also a TimeoutError) is the one that arrives.
            return await asyncio.wait_for(asyncio.shield(task), max(timeout_s, 1e-3) + 0.1)
        except TimeoutError as error:
            if task.done():
                raise
            raise UnavailableError(
                f"no client session was registered within {timeout_s:.2f}s; the write was not sent"
            ) from error

    async def _admin(self, build: Callable[[int, float], Request], timeout_s: float) -> None:
        await self._execute(build, parse_none, timeout_s, to_leader=True)

    async def _read(
        self,
        build: Callable[[int, float], Request],
        parse: ResultParser,
        timeout_s: float,
        *,
        address: str | None = None,
    ) -> Any:
        return await self._execute(build, parse, timeout_s, to_leader=False, address=address)

    async def _execute(
        self,
        build: Callable[[int, float], Request],
        parse: ResultParser,
        timeout_s: float,
        *,
        to_leader: bool,
        address: str | None = None,
    ) -> Any:
        if self._closed:
            raise _ClientClosedError()
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
        try:
            return await self._attempts(build, parse, timeout_s, to_leader, address)
        finally:
            if task is not None:
                self._calls.discard(task)

    async def _attempts(
        self,
        build: Callable[[int, float], Request],
        parse: ResultParser,
        timeout_s: float,
        to_leader: bool,
        pinned: str | None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = Deadline.on_loop(timeout_s)
        unknown = False  # some attempt was sent and its outcome never learned
        last_error: BaseException | None = None
        refusal: UnavailableError | None = None  # the last member that refused, e.g. "too
        # many client sessions": redirects that follow must not hide why
        failed: set[str] = set()  # members that failed during this call
        hinted: set[str] = set()  # leader addresses redirects named during this call
        redirect: str | None = None
        backoffs = 0
        connect_failures = 0
        for _ in range(ATTEMPTS_MAX):
            if self._closed:
                raise _ClientClosedError()
            remaining = deadline.remaining_s()
            if remaining <= 0:
                break
            target = pinned or redirect or self._target(to_leader, failed)
            redirect = None
            backoff = True
            attempt_s = min(remaining, ATTEMPT_TIMEOUT_S)
            try:
                channel = self._channels.get(target)
                if channel is None or channel.closed:
                    channel = await self._channel(target, attempt_s)
            except AuthenticationError:
                raise
            except (OSError, TimeoutError, RemoteProtocolError) as e:
                log.debug("cannot reach %s: %r", target, e)
                last_error = e
                self._member_failed(target, failed)
                connect_failures += 1
                if pinned is not None and connect_failures >= PINNED_CONNECT_ATTEMPTS_MAX:
                    break
            else:
                request_id = next(self._request_ids) % _REQUEST_IDS
                server_timeout_s = max(attempt_s - min(_SERVER_MARGIN_S, attempt_s / 10), 1e-3)
                request = build(request_id, server_timeout_s)
                attempt = _Attempt()
                started = loop.time()
                try:
                    response = await channel.call(
                        request_id, encode_request(request), attempt, started + attempt_s
                    )
                except TimeoutError:
                    unknown = unknown or attempt.sent
                    if attempt_s >= remaining:
                        # Cut short by the call's own deadline (asyncio may wake a hair before
                        # it), not a silent member: stop, and keep the error that made us retry.
                        self._balancer.observe(target, None, False)
                        break
                    # Silent for a whole attempt: try another member now (see
                    # ATTEMPT_TIMEOUT_S); the one we took for the leader is forgotten.
                    last_error = TimeoutError(f"{target} did not answer within {attempt_s:.2f} s")
                    self._member_failed(target, failed)
                    continue
                except _LostError as e:
                    unknown = unknown or e.sent
                    last_error = e
                    self._member_failed(target, failed)
                else:
                    error = response.error
                    if error is None:
                        self._balancer.observe(target, loop.time() - started, True)
                        if to_leader:
                            self._leader = target
                        return parse(response.result)
                    last_error = error
                    if isinstance(error, NotLeaderError):
                        self._balancer.observe(target, loop.time() - started, True)
                        to_leader = True  # a read refused by a follower goes to the leader
                        redirect, backoff = self._follow(error, target, failed, hinted)
                    elif isinstance(error, UnavailableError):
                        # Up but without a quorum or leader (an election?): try elsewhere.
                        refusal = error
                        self._balancer.observe(target, None, False)
                        failed.add(target)
                        if self._leader == target:
                            self._leader = None
                    elif isinstance(error, OperationTimeoutError):
                        unknown = True
                    elif isinstance(error, SessionExpiredError):
                        if not unknown:
                            raise _NeverSentError(str(error))
                        raise SessionExpiredError(
                            f"{error}; an earlier attempt was sent and never answered, so the "
                            "write may have been applied: its outcome is unknown"
                        )
                    else:
                        raise error  # invalid argument, authentication, internal: final
                    if pinned is not None:
                        raise error
            if backoff:
                backoffs += 1
                await self._backoff(backoffs, deadline)
        if unknown:
            raise OperationTimeoutError(
                f"no answer within {timeout_s:g} s; the outcome is unknown (last error: "
                f"{last_error!r})"
            )
        why = f"last error: {last_error!r}"
        if refusal is not None and refusal is not last_error:
            why += f"; last refusal: {refusal!r}"
        raise UnavailableError(f"no member could serve the request within {timeout_s:g} s ({why})")

    def _target(self, to_leader: bool, failed: set[str]) -> str:
        """The member to try next: the leader for writes, the balancer's pick for reads."""
        if to_leader:
            if self._leader is not None and self._leader not in failed:
                return self._leader
            # Leader unknown: walk the known members in turn, skipping those that just failed.
            candidates = [e for e in self._known if e not in failed] or self._known
            self._write_cursor = (self._write_cursor + 1) % len(candidates)
            return candidates[self._write_cursor]
        candidates = [e for e in self._endpoints if e not in failed] or self._endpoints
        return self._balancer.pick(candidates)

    def _follow(
        self, error: NotLeaderError, target: str, failed: set[str], hinted: set[str]
    ) -> tuple[str | None, bool]:
        """Act on a redirect; returns (where to go next or None, whether to back off first).

        The first redirect of a call to a given leader goes there at once, even to a member
        that failed earlier in the call: after an election the surviving members name the new
        leader, which may well have refused us while the election ran. Only a hint heard
        before (members still naming a leader that is gone) is followed after a pause."""
        failed.add(target)
        address = error.leader_address
        if address is None or address == target:
            # No leader known there (an election is running): back off, then ask another member.
            if self._leader == target:
                self._leader = None
            return None, True
        try:
            _check_address(address)
        except InvalidArgumentError:
            log.warning("ignoring a redirect from %s to a bad address %r", target, address)
            return None, True
        if address not in self._known and len(self._known) < ENDPOINTS_MAX:
            self._known.append(address)
        self._leader = address
        news = address not in hinted
        hinted.add(address)
        return address, address in failed and not news

    def _member_failed(self, address: str, failed: set[str]) -> None:
        failed.add(address)
        self._balancer.observe(address, None, False)
        if self._leader == address:
            self._leader = None

    async def _backoff(self, n: int, deadline: Deadline) -> None:
        delay_s = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * (2 ** min(n - 1, 16)))
        # Jitter spreads the retries of many clients that failed together.
        delay_s *= 0.5 + self._rng.random() / 2
        delay_s = min(delay_s, max(0.0, deadline.remaining_s()))
        if delay_s > 0:
            await asyncio.sleep(delay_s)

    # --- connections ---------------------------------------------------------------------------

    async def _connect_tcp(self, address: str, timeout_s: float) -> FrameConnection:
        from kvstore.transport.tcp import connect_client

        return await connect_client(
            address,
            secret=self._secret,
            timeout_s=timeout_s,
            frame_bytes_max=self._frame_bytes_max,
            tls_context=self._tls_context,
        )

    async def _channel(self, address: str, timeout_s: float) -> _Channel:
        """The open connection to `address`, dialling it (once, for all callers) if needed."""
        channel = self._channels.get(address)
        if channel is not None and not channel.closed:
            return channel
        task = self._connecting.get(address)
        if task is None:
            task = asyncio.create_task(self._open(address, max(timeout_s, self._timeout_s)))
            self._connecting[address] = task
            task.add_done_callback(self._connect_done)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(task)
        except asyncio.CancelledError:
            if self._closed:
                raise _ClientClosedError() from None
            raise

    def _connect_done(self, task: asyncio.Task[_Channel]) -> None:
        for address, pending in list(self._connecting.items()):
            if pending is task:
                del self._connecting[address]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have timed out already

    async def _open(self, address: str, timeout_s: float) -> _Channel:
        conn = await self._connect(address, timeout_s)
        if self._closed:
            conn.close()
            raise _ClientClosedError()
        old = self._channels.get(address)
        if old is not None:
            old.close()
        elif len(self._channels) >= CONNECTIONS_MAX:
            self._evict_idle()
        # Half the frame limit per batch leaves room for msgpack's framing of each item.
        channel = _Channel(address, conn, self._max_inflight, self._frame_bytes_max // 2)
        self._channels[address] = channel
        return channel

    def _evict_idle(self) -> None:
        for address, channel in list(self._channels.items()):
            if channel.closed or not channel.busy:
                channel.close()
                del self._channels[address]
                return

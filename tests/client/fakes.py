"""In-memory stand-ins for the transport and the node, for client and service tests.

`FakeConnection.pair()` gives two connected ends that carry real frames (the transport's codec
encodes and decodes every frame), so what crosses them is exactly what would cross a socket.
`FakeBackend` is a dict-backed `ServiceBackend` with the state machine's session rule and knobs
for redirects, errors and stalls. `FakeCluster` maps addresses to backends and serves each
dialled connection with the real `serve_client_connection`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable
from typing import Any

from kvstore.client.protocol import Session
from kvstore.errors import NotLeaderError, SessionExpiredError, UnavailableError
from kvstore.node.service import serve_client_connection
from kvstore.options import Status
from kvstore.storage.commands import SESSION_WINDOW
from kvstore.transport.codec import NEED_DATA, FrameDecoder, FrameKind, encode_frame

FRAME_BYTES_MAX = 16 << 20

_SESSION_IDS = itertools.count(1)
"""Session ids for every fake member: unique, like log indices of one cluster."""


class FakeConnection:
    """One end of an in-memory framed connection."""

    def __init__(self) -> None:
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._decoder = FrameDecoder(FRAME_BYTES_MAX)
        self.peer: FakeConnection | None = None
        self.closed = False
        self.sent: list[tuple[FrameKind, object]] = []

    @classmethod
    def pair(cls) -> tuple[FakeConnection, FakeConnection]:
        a, b = cls(), cls()
        a.peer, b.peer = b, a
        return a, b

    async def send(self, kind: FrameKind, body: object) -> None:
        if self.closed:
            raise ConnectionResetError("connection closed")
        data = encode_frame(kind, body)
        self.sent.append((kind, body))
        assert self.peer is not None
        if not self.peer.closed:
            self.peer._inbox.put_nowait(data)

    def send_raw(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer._inbox.put_nowait(data)

    async def receive(self) -> tuple[FrameKind, object]:
        while True:
            frame = self._decoder.next_frame()
            if frame is not NEED_DATA:
                return frame  # type: ignore[return-value]
            if self.closed:
                raise ConnectionResetError("connection closed")
            data = await self._inbox.get()
            if data is None:
                raise ConnectionResetError("connection closed")
            self._decoder.receive_data(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._inbox.put_nowait(None)
        if self.peer is not None and not self.peer.closed:
            self.peer._inbox.put_nowait(None)

    async def wait_closed(self) -> None:
        return None


class FakeBackend:
    """A dict-backed member. Writes follow the state machine's session rule: a seq applied
    before (within the last `SESSION_WINDOW` seqs of its client) answers with the stored
    result; one older than the window is refused as stale."""

    def __init__(self, node_id: str = "n1", *, leader: bool = True) -> None:
        self.node_id = node_id
        self.is_leader = leader
        self.leader_id: str | None = node_id if leader else None
        self.leader_address: str | None = None
        self.data: dict[bytes, bytes] = {}
        self.sessions: dict[int, dict[int, object]] = {}  # session id -> seq -> result
        self.registered: list[int] = []  # session ids this member registered
        self.expired: set[int] = set()  # sessions whose writes are refused as expired
        self.refused_expired: list[Session] = []
        self.applied: list[tuple[Session, str]] = []  # writes that changed state, in order
        self.duplicates: list[Session] = []  # retries answered from the session table
        self.stale: list[Session] = []
        self.calls: collections.Counter[str] = collections.Counter()
        self.sessions_seen: list[Session] = []  # every write attempt's session
        self.inflight = 0
        self.inflight_max = 0
        self.inflight_per_session: dict[int, set[int]] = collections.defaultdict(set)
        self.session_span_max = 0  # widest span of seqs one session had in flight here
        self.gate: asyncio.Event | None = None  # when set up, every call waits on it
        self.delay_s: Callable[[], float] | None = None
        self.fail_with: BaseException | None = None  # raised by every call
        self.reads_need_leader = False
        self.after_apply: Callable[[], Any] | None = None  # e.g. drop the connection once
        self.statuses = 0

    def _not_leader(self) -> NotLeaderError:
        return NotLeaderError(
            f"{self.node_id} is not the leader",
            leader_id=self.leader_id,
            leader_address=self.leader_address,
        )

    async def _enter(self, name: str, session: Session | None = None) -> None:
        self.calls[name] += 1
        if session is not None:
            self.sessions_seen.append(session)
        self.inflight += 1
        self.inflight_max = max(self.inflight_max, self.inflight)
        if session is not None:
            seqs = self.inflight_per_session[session[0]]
            seqs.add(session[1])
            self.session_span_max = max(self.session_span_max, max(seqs) - min(seqs) + 1)
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s is not None:
            await asyncio.sleep(self.delay_s())
        if self.fail_with is not None:
            raise self.fail_with

    def _exit(self, session: Session | None = None) -> None:
        self.inflight -= 1
        if session is not None:
            self.inflight_per_session[session[0]].discard(session[1])

    async def _write(self, name: str, session: Session, apply: Callable[[], object]) -> object:
        await self._enter(name, session)
        try:
            if not self.is_leader:
                raise self._not_leader()
            client_id, seq = session
            if client_id in self.expired:
                self.refused_expired.append(session)
                raise SessionExpiredError("the client session is unknown or expired")
            seen = self.sessions.setdefault(client_id, {})
            if seq in seen:
                self.duplicates.append(session)
                return seen[seq]
            top = max(seen, default=seq)
            if seq <= top - SESSION_WINDOW:
                self.stale.append(session)
                raise UnavailableError("stale request")
            result = apply()
            seen[seq] = result
            if len(seen) > 2 * SESSION_WINDOW:  # forget what the window has passed
                floor = max(top, seq) - SESSION_WINDOW
                for old in [s for s in seen if s <= floor]:
                    del seen[old]
            self.applied.append((session, name))
        finally:
            self._exit(session)
        if self.after_apply is not None:
            hook, self.after_apply = self.after_apply, None
            await hook()
        return result

    async def _read(self, name: str, consistency: str) -> None:
        await self._enter(name)
        self._exit()
        if self.reads_need_leader and consistency != "stale" and not self.is_leader:
            raise self._not_leader()

    async def register_session(self, *, timeout_s: float) -> int:
        await self._enter("register_session")
        try:
            if not self.is_leader:
                raise self._not_leader()
            session_id = next(_SESSION_IDS)
            self.registered.append(session_id)
            return session_id
        finally:
            self._exit()

    async def put(self, key: bytes, value: bytes, *, session: Session, timeout_s: float) -> None:
        def apply() -> None:
            self.data[key] = value

        await self._write("put", session, apply)

    async def get(self, key: bytes, *, consistency: str, timeout_s: float) -> bytes | None:
        await self._read("get", consistency)
        return self.data.get(key)

    async def delete(self, key: bytes, *, session: Session, timeout_s: float) -> bool:
        return bool(
            await self._write("delete", session, lambda: self.data.pop(key, None) is not None)
        )

    async def cas(
        self,
        key: bytes,
        expected: bytes | None,
        new: bytes | None,
        *,
        session: Session,
        timeout_s: float,
    ) -> bool:
        def apply() -> bool:
            if self.data.get(key) != expected:
                return False
            if new is None:
                self.data.pop(key, None)
            else:
                self.data[key] = new
            return True

        return bool(await self._write("cas", session, apply))

    async def scan(
        self, prefix: bytes, *, limit: int | None, consistency: str, timeout_s: float
    ) -> list[tuple[bytes, bytes]]:
        await self._read("scan", consistency)
        pairs = sorted((k, v) for k, v in self.data.items() if k.startswith(prefix))
        return pairs if limit is None else pairs[:limit]

    def status(self) -> Status:
        self.statuses += 1
        return Status(
            node_id=self.node_id,
            role="leader" if self.is_leader else "follower",
            term=3,
            leader_id=self.leader_id,
            commit_index=10,
            applied_index=9,
            members={self.node_id: "127.0.0.1:1"},
        )

    async def add_member(self, node_id: str, address: str, *, timeout_s: float) -> None:
        await self._enter("add_member")
        self._exit()
        if not self.is_leader:
            raise self._not_leader()

    async def remove_member(self, node_id: str, *, timeout_s: float) -> None:
        await self._enter("remove_member")
        self._exit()
        if not self.is_leader:
            raise self._not_leader()

    async def transfer_leadership(self, node_id: str, *, timeout_s: float) -> None:
        await self._enter("transfer_leadership")
        self._exit()
        if not self.is_leader:
            raise self._not_leader()


class FakeCluster:
    """Addresses -> backends, and a connector that serves each dialled connection in-process."""

    def __init__(self, backends: dict[str, FakeBackend], **service_options: Any) -> None:
        self.backends = backends
        self.down: set[str] = set()
        self.dials: collections.Counter[str] = collections.Counter()
        self.connections: dict[str, list[FakeConnection]] = collections.defaultdict(list)
        self.connect_error: BaseException | None = None
        self._service_options = service_options
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def with_leader(cls, n: int = 3, leader: int = 0, **service_options: Any) -> FakeCluster:
        addresses = [f"127.0.0.1:{7001 + i}" for i in range(n)]
        backends = {}
        for i, address in enumerate(addresses):
            backend = FakeBackend(f"n{i + 1}", leader=i == leader)
            backend.leader_id = f"n{leader + 1}"
            backend.leader_address = addresses[leader]
            backends[address] = backend
        return cls(backends, **service_options)

    @property
    def addresses(self) -> list[str]:
        return list(self.backends)

    def make_leader(self, address: str) -> None:
        for a, backend in self.backends.items():
            backend.is_leader = a == address
            backend.leader_id = self.backends[address].node_id
            backend.leader_address = address

    async def connect(self, address: str, timeout_s: float) -> FakeConnection:
        self.dials[address] += 1
        if self.connect_error is not None:
            raise self.connect_error
        if address in self.down or address not in self.backends:
            raise ConnectionRefusedError(f"{address} refused the connection")
        client_end, server_end = FakeConnection.pair()
        self.connections[address].append(server_end)
        task = asyncio.create_task(
            serve_client_connection(server_end, self.backends[address], **self._service_options)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client_end

    def drop_connections(self, address: str) -> None:
        for conn in self.connections[address]:
            conn.close()

    @property
    def total_calls(self) -> int:
        return sum(sum(b.calls.values()) + b.statuses for b in self.backends.values())


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition` on the loop until it holds; fail after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)

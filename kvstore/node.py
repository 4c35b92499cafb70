"""`kvstore.Node`: one member of a cluster, and the one place where the parts meet.

The Raft core (pure), the redo log (C), the LMDB state machine and the TCP transport are joined
here, on one asyncio loop that runs in a background thread. The application's threads hand work
to that loop and wait on futures with their own timeouts.

The Ready loop (`_run_ready`) is the heart of it, in the order the core's `Ready` demands:

1. send `messages` (the leader's APPENDs go out before its own fsync, thesis §10.2.1);
2. install a received snapshot, then append `entries` and `hard_state` to the log;
3. one fsync if `must_sync`, off the loop: while it runs the loop keeps stepping messages and
   proposals into the core, so the next batch grows by itself (natural group commit);
4. send `persisted_messages` (votes and acks: only once durable);
5. apply `committed_entries` to LMDB in one transaction and answer the waiting callers;
6. `advance()`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kvstore.client.service import serve_client_connection
from kvstore.errors import (
    InvalidArgumentError,
    KVStoreError,
    NotLeaderError,
    OperationTimeoutError,
    ProposalDroppedError,
    UnavailableError,
)
from kvstore.options import (
    Options,
    Status,
    check_consistency,
    check_key,
    check_limit,
    check_optional_value,
    check_timeout,
    check_value,
)
from kvstore.raft.config import Config
from kvstore.raft.core import RaftCore
from kvstore.raft.types import (
    ConfChange,
    ConfChangeType,
    Entry,
    EntryType,
    Message,
    MessageType,
    Ready,
    Role,
    SnapshotMeta,
)
from kvstore.storage import commands
from kvstore.storage.snapshot import SnapshotWriter, file_sha256, iter_chunks
from kvstore.storage.state_machine import StateMachine
from kvstore.storage.wal import WriteAheadLog
from kvstore.transport.codec import decode_message, encode_message
from kvstore.transport.tcp import FramedConnection, PeerTransport

log = logging.getLogger("kvstore.node")

T = TypeVar("T")

LOOP_GRACE_S = 1.0
"""Extra time a synchronous call waits for the loop beyond the operation's own timeout."""
PROMOTION_LAG_ENTRIES = 64
"""A learner is promoted to voter once it is at most this far behind the leader's commit."""
SNAPSHOT_CHUNK_RETRY_S = 0.005
"""Pause before retrying a snapshot chunk that found the peer's send queue full."""


def _role_name(role: Role, is_learner: bool) -> str:
    if is_learner:
        return "learner"
    if role is Role.PRE_CANDIDATE:
        return "candidate"
    return str(role.value)


class _PendingWrite:
    """A proposal waiting to be applied, keyed by its session (client id, sequence number)."""

    __slots__ = ("data", "future", "proposed")

    def __init__(self, data: bytes, future: asyncio.Future[object]) -> None:
        self.data = data
        self.future = future
        self.proposed = False


class Node:
    """One member of a kvstore cluster, running inside this process.

    `peers` maps node id -> "host:port" for every voting member, this node included; this node
    listens on its own entry (peers and clients share that address). With `join=True` the node
    starts with no configuration and waits for an existing cluster to add it
    (`add_member` on the leader). Use `start()`/`stop()` or `with Node(...) as node:`.
    """

    def __init__(
        self,
        node_id: str,
        data_dir: str | os.PathLike[str],
        peers: Mapping[str, str],
        *,
        options: Options | None = None,
        secret: bytes | None = None,
        join: bool = False,
    ) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise InvalidArgumentError(f"node_id must be a non-empty str, got {node_id!r}")
        if not isinstance(peers, Mapping) or not peers:
            raise InvalidArgumentError("peers must map every member's node id to host:port")
        for peer_id, address in peers.items():
            if not isinstance(peer_id, str) or not peer_id:
                raise InvalidArgumentError(f"peer id must be a non-empty str, got {peer_id!r}")
            _check_address(address)
        if node_id not in peers:
            raise InvalidArgumentError(f"peers must include this node's own id {node_id!r}")
        if secret is not None and (not isinstance(secret, bytes) or not secret):
            raise InvalidArgumentError("secret must be non-empty bytes or None")
        self.options = options or Options()
        self.options.validate()
        self.node_id = node_id
        self.data_dir = Path(data_dir)
        self._peers = dict(peers)
        self._secret = secret
        self._join = join
        self._thread_sessions = threading.local()
        self._read_ids = itertools.count(1)
        self._state = "new"
        self._lifecycle = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sync_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._work_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._wal: WriteAheadLog | None = None
        self._sm: StateMachine | None = None
        self._core: RaftCore | None = None
        self._transport: PeerTransport | None = None
        self._failure: BaseException | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Node:
        """Open the data directory, recover, start listening and join the cluster."""
        with self._lifecycle:
            if self._state != "new":
                raise KVStoreError(f"node {self.node_id} was already started")
            self._state = "starting"
            try:
                self._open_storage()
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name=f"kvstore-{self.node_id}", daemon=True
                )
                self._thread.start()
                self._run_on_loop(self._async_start(), timeout_s=30.0)
            except BaseException:
                self._shutdown()
                self._state = "stopped"
                raise
            self._state = "running"
        return self

    def stop(self) -> None:
        """Stop serving and close everything; safe to call twice."""
        with self._lifecycle:
            if self._state in ("new", "stopped"):
                self._state = "stopped"
                return
            self._state = "stopping"
            self._shutdown()
            self._state = "stopped"

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """The "host:port" this node listens on (its entry in `peers`, port 0 resolved)."""
        if self._transport is None:
            return self._peers[self.node_id]
        return self._transport.address

    def _open_storage(self) -> None:
        (self.data_dir / "snapshots").mkdir(parents=True, exist_ok=True)
        self._wal = WriteAheadLog(self.data_dir / "wal", segment_bytes=self.options.segment_bytes)
        self._sm = StateMachine(
            self.data_dir / "state",
            map_size_bytes=self.options.map_size_bytes,
            sessions_max=self.options.sessions_max,
        )
        hard_state, _ = self._wal.initial_state()
        applied = self._sm.applied_index()
        fresh = hard_state.term == 0 and self._wal.last_index() == 0 and applied == 0
        voters: tuple[str, ...] = ()
        if fresh and not self._join:
            voters = tuple(sorted(self._peers))
        # The log is the source of truth: LMDB may lag (it is synced only at checkpoints), in
        # which case the core hands out committed entries again from `applied + 1`.
        self._config = Config(
            node_id=self.node_id,
            initial_voters=voters,
            election_ticks=self.options.election_ticks,
            heartbeat_ticks=self.options.heartbeat_ticks,
            pre_vote=self.options.pre_vote,
            check_quorum=self.options.check_quorum,
            max_inflight_msgs=self.options.max_inflight_appends,
            max_append_bytes=self.options.append_bytes_max,
            applied=min(applied, self._wal.last_index()),
        )
        self._config.validate()
        self._last_checkpoint = applied
        self._core = RaftCore(self._config, self._wal, random.Random(os.urandom(16)))
        for node_id, (address, _role) in self._sm.members().items():
            if address:
                self._peers[node_id] = address

    async def _async_start(self) -> None:
        assert self._core is not None
        self._wake = asyncio.Event()
        self._leader_changed = asyncio.Event()
        self._pending_writes: dict[tuple[bytes, int], _PendingWrite] = {}
        self._pending_reads: dict[bytes, tuple[asyncio.Future[int], bool]] = {}
        self._applied_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()
        self._incoming_snapshots: dict[str, SnapshotWriter] = {}
        self._received_snapshots: dict[tuple[int, int], Path] = {}
        self._outgoing_snapshots: set[str] = set()
        self._leader_id: str | None = None
        self._role = Role.FOLLOWER
        self._sync_executor = concurrent.futures.ThreadPoolExecutor(
            1, f"kvstore-sync-{self.node_id}"
        )
        self._work_executor = concurrent.futures.ThreadPoolExecutor(
            1, f"kvstore-work-{self.node_id}"
        )
        self._transport = PeerTransport(
            self.node_id,
            self._peers[self.node_id],
            {peer: address for peer, address in self._peers.items() if peer != self.node_id},
            secret=self._secret,
            on_message=self._on_message,
            on_unreachable=self._on_unreachable,
            on_client_connection=self._on_client_connection,
            on_snapshot_chunk=self._on_snapshot_chunk,
            is_member=self._is_member,
            frame_bytes_max=self.options.frame_bytes_max,
        )
        await self._transport.start()
        self._tasks = [
            asyncio.create_task(self._run_ticker(), name="kvstore-ticker"),
            asyncio.create_task(self._run_ready(), name="kvstore-ready"),
        ]
        self._kick()

    def _shutdown(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._async_stop(), loop).result(10.0)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10.0)
        if loop is not None and not loop.is_running():
            loop.close()
        for executor in (self._sync_executor, self._work_executor):
            if executor is not None:
                executor.shutdown(wait=True)
        if self._wal is not None:
            self._wal.close()
        if self._sm is not None:
            self._sm.close()

    async def _async_stop(self) -> None:
        self._fail_everything(UnavailableError(f"node {self.node_id} is stopping"))
        for task in getattr(self, "_tasks", []):
            task.cancel()
        for task in getattr(self, "_tasks", []):
            with contextlib.suppress(BaseException):
                await task
        if self._transport is not None:
            await self._transport.close()

    # --- calling into the loop ------------------------------------------------------------------

    def _run_on_loop(self, coro: Coroutine[Any, Any, T], *, timeout_s: float) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise UnavailableError(f"node {self.node_id} is not running")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout_s + LOOP_GRACE_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise OperationTimeoutError(
                f"no answer from node {self.node_id} within {timeout_s:.2f}s"
            ) from None

    def _check_running(self) -> None:
        if self._state != "running":
            raise UnavailableError(f"node {self.node_id} is not running (state: {self._state})")
        if self._failure is not None:
            raise UnavailableError(f"node {self.node_id} failed: {self._failure}")

    # --- public API -----------------------------------------------------------------------------

    def wait_for_leader(self, timeout_s: float = 10.0) -> str:
        """Block until some member is known as leader; return its node id."""
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        return self._run_on_loop(self._wait_for_leader(timeout_s), timeout_s=timeout_s)

    def put(self, key: bytes, value: bytes, *, timeout_s: float = 5.0) -> None:
        """Write `value` under `key`; returns once committed and applied here."""
        check_key(key)
        check_value(value, self.options.max_value_bytes)
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        session = self._next_session()
        data = commands.encode_put(*session, key, value)
        self._run_on_loop(self.propose_command(data, session, timeout_s), timeout_s=timeout_s)

    def delete(self, key: bytes, *, timeout_s: float = 5.0) -> bool:
        """Delete `key`; True if it existed."""
        check_key(key)
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        session = self._next_session()
        data = commands.encode_delete(*session, key)
        result = self._run_on_loop(
            self.propose_command(data, session, timeout_s), timeout_s=timeout_s
        )
        return bool(result)

    def cas(
        self, key: bytes, expected: bytes | None, new: bytes | None, *, timeout_s: float = 5.0
    ) -> bool:
        """Set `key` to `new` (None: delete) if it holds `expected` (None: absent)."""
        check_key(key)
        check_optional_value(expected, self.options.max_value_bytes, name="expected")
        check_optional_value(new, self.options.max_value_bytes, name="new")
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        session = self._next_session()
        data = commands.encode_cas(*session, key, expected, new)
        result = self._run_on_loop(
            self.propose_command(data, session, timeout_s), timeout_s=timeout_s
        )
        return bool(result)

    def get(
        self, key: bytes, *, consistency: str = "linearizable", timeout_s: float = 5.0
    ) -> bytes | None:
        """Read `key`. Stale reads never leave this thread; the others wait for a read index."""
        check_key(key)
        consistency = check_consistency(consistency)
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        if consistency != "stale":
            self._run_on_loop(self.read_barrier(consistency, timeout_s), timeout_s=timeout_s)
        assert self._sm is not None
        return self._sm.get(key)

    def scan(
        self,
        prefix: bytes = b"",
        *,
        limit: int | None = None,
        consistency: str = "linearizable",
        timeout_s: float = 5.0,
    ) -> list[tuple[bytes, bytes]]:
        """Pairs whose key starts with `prefix`, sorted by key, at most `limit` of them."""
        if not isinstance(prefix, bytes):
            raise InvalidArgumentError(f"prefix must be bytes, got {type(prefix).__name__}")
        limit = check_limit(limit)
        consistency = check_consistency(consistency)
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        if consistency != "stale":
            self._run_on_loop(self.read_barrier(consistency, timeout_s), timeout_s=timeout_s)
        assert self._sm is not None
        return self._sm.scan(prefix, limit)

    def status(self) -> Status:
        """This member's role, term, leader, commit and applied indices, and the members."""
        self._check_running()
        return self._run_on_loop(_as_coroutine(self.status_now), timeout_s=5.0)

    def add_member(self, node_id: str, address: str, *, timeout_s: float = 30.0) -> None:
        """Add a member: it joins as a learner and is promoted to voter once caught up.

        Call on the leader; start the new node with `join=True` first.
        """
        if not isinstance(node_id, str) or not node_id:
            raise InvalidArgumentError(f"node_id must be a non-empty str, got {node_id!r}")
        _check_address(address)
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        self._run_on_loop(self.add_member_async(node_id, address, timeout_s), timeout_s=timeout_s)

    def remove_member(self, node_id: str, *, timeout_s: float = 10.0) -> None:
        """Remove a voter or learner (the leader itself included). Call on the leader."""
        if not isinstance(node_id, str) or not node_id:
            raise InvalidArgumentError(f"node_id must be a non-empty str, got {node_id!r}")
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        self._run_on_loop(self.remove_member_async(node_id, timeout_s), timeout_s=timeout_s)

    def transfer_leadership(self, node_id: str, *, timeout_s: float = 10.0) -> None:
        """Hand leadership to `node_id`; returns once it leads. Call on the leader."""
        if not isinstance(node_id, str) or not node_id:
            raise InvalidArgumentError(f"node_id must be a non-empty str, got {node_id!r}")
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        self._run_on_loop(self.transfer_leadership_async(node_id, timeout_s), timeout_s=timeout_s)

    def _next_session(self) -> tuple[bytes, int]:
        # One session per application thread: a thread has one write in flight at a time, so
        # its sequence numbers commit in order and never fall out of the session's window.
        local = self._thread_sessions
        if not hasattr(local, "session_id"):
            local.session_id = os.urandom(16)
            local.sequence = itertools.count(1)
        return local.session_id, next(local.sequence)

    # --- loop side: writes ----------------------------------------------------------------------

    async def propose_command(
        self, data: bytes, session: tuple[bytes, int], timeout_s: float
    ) -> object:
        """Propose an encoded command and wait until it is applied here; return its result.

        A proposal that finds no leader waits for one; after a leader change, every pending
        proposal is proposed again (the session table applies each at most once).
        """
        self._raise_if_failed()
        pending = self._pending_writes.get(session)
        if pending is None:
            if len(self._pending_writes) >= self.options.max_pending_proposals:
                raise UnavailableError("too many proposals waiting; try again later")
            pending = _PendingWrite(data, asyncio.get_running_loop().create_future())
            self._pending_writes[session] = pending
            self._submit(pending)
        try:
            result = await asyncio.wait_for(asyncio.shield(pending.future), timeout_s)
        except TimeoutError:
            if not pending.proposed:
                raise UnavailableError(
                    f"no leader accepted the write within {timeout_s:.2f}s; it was not applied"
                ) from None
            raise OperationTimeoutError(
                f"the write was not applied within {timeout_s:.2f}s; its outcome is unknown"
            ) from None
        finally:
            if pending.future.done():
                self._pending_writes.pop(session, None)
        if isinstance(result, commands.CommandRejected):
            # STALE: the session moved more than a window past this seq, so the state machine
            # cannot tell whether it ran; MALFORMED: the data was not a command. Neither applied.
            raise UnavailableError(f"the write was not applied: {result.reason}")
        return result

    def _submit(self, pending: _PendingWrite) -> None:
        assert self._core is not None
        try:
            self._core.propose(pending.data)
        except ProposalDroppedError as error:
            log.debug("proposal waits for a leader: %s", error.reason)
            return
        pending.proposed = True
        self._kick()

    def _repropose_pending(self) -> None:
        for pending in list(self._pending_writes.values()):
            if not pending.future.done():
                self._submit(pending)

    # --- loop side: reads -----------------------------------------------------------------------

    async def read_barrier(self, consistency: str, timeout_s: float) -> None:
        """Return once this node's state machine reflects every write acknowledged before the
        call (linearizable: ReadIndex confirmed by a quorum; lease: the leader's lease)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._raise_if_failed()
            assert self._core is not None
            request_ctx = b"r%d" % next(self._read_ids)
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._pending_reads[request_ctx] = (future, consistency == "lease")
            self._core.read_index(request_ctx, lease=consistency == "lease")
            self._kick()
            remaining = deadline - time.monotonic()
            try:
                read_index = await asyncio.wait_for(future, max(remaining, 0.001))
            except TimeoutError:
                raise OperationTimeoutError(
                    f"no read index within {timeout_s:.2f}s (is a quorum reachable?)"
                ) from None
            except ProposalDroppedError:
                # No leader to confirm the read: wait for one, then ask again.
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UnavailableError("no leader to confirm the read") from None
                await self._wait_leader_change(min(remaining, self.options.tick_s * 4))
                continue
            finally:
                self._pending_reads.pop(request_ctx, None)
            await self._wait_applied(read_index, deadline)
            return

    async def _wait_applied(self, index: int, deadline: float) -> None:
        assert self._sm is not None
        if self._sm.applied_index() >= index:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._applied_waiters, (index, next(self._waiter_ids), future))
        try:
            await asyncio.wait_for(future, max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            raise OperationTimeoutError("this member did not catch up in time") from None

    def _release_applied_waiters(self, applied: int) -> None:
        waiters = self._applied_waiters
        while waiters and waiters[0][0] <= applied:
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(None)

    # --- loop side: leader, status, membership --------------------------------------------------

    async def _wait_leader_change(self, timeout_s: float) -> None:
        self._leader_changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._leader_changed.wait(), timeout_s)

    async def _wait_for_leader(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while self._leader_id is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UnavailableError(f"no leader was elected within {timeout_s:.2f}s")
            await self._wait_leader_change(remaining)
        return self._leader_id

    def status_now(self) -> Status:
        """The status, computed on the loop thread."""
        assert self._core is not None and self._sm is not None
        core = self._core.status()
        members = dict(self._peers)
        return Status(
            node_id=self.node_id,
            role=_role_name(core.role, self._core.is_learner),
            term=core.term,
            leader_id=core.leader_id,
            commit_index=core.commit,
            applied_index=self._sm.applied_index(),
            members=members,
        )

    def leader_hint(self) -> NotLeaderError:
        """A NotLeaderError naming the leader this node knows of, if any."""
        leader = self._leader_id
        address = self._peers.get(leader) if leader is not None else None
        return NotLeaderError(
            f"{self.node_id} is not the leader"
            + (f"; the leader is {leader} at {address}" if leader else "; no leader is known"),
            leader_id=leader,
            leader_address=address,
        )

    def _require_leader(self) -> RaftCore:
        assert self._core is not None
        if self._role is not Role.LEADER:
            raise self.leader_hint()
        return self._core

    async def _propose_conf_change(self, change: ConfChange, timeout_s: float) -> None:
        core = self._require_leader()
        try:
            index = core.propose_conf_change(change)
        except ProposalDroppedError as error:
            raise UnavailableError(f"membership change refused: {error.reason}") from None
        self._kick()
        await self._wait_applied(index, time.monotonic() + timeout_s)

    async def add_member_async(self, node_id: str, address: str, timeout_s: float) -> None:
        """Loop side of `add_member`."""
        deadline = time.monotonic() + timeout_s
        core = self._require_leader()
        conf = core.status().conf_state
        if node_id in conf.voters:
            return
        if node_id not in conf.learners:
            await self._propose_conf_change(
                ConfChange(ConfChangeType.ADD_LEARNER, node_id, address.encode()), timeout_s
            )
        # Promote only once the learner is nearly caught up, so the quorum never waits on it.
        while True:
            core = self._require_leader()
            status = core.status()
            progress = status.progress.get(node_id)
            if progress is not None and progress.match + PROMOTION_LAG_ENTRIES >= status.commit:
                break
            if time.monotonic() >= deadline:
                raise OperationTimeoutError(f"{node_id} did not catch up within {timeout_s:.1f}s")
            await asyncio.sleep(self.options.tick_s)
        await self._propose_conf_change(
            ConfChange(ConfChangeType.ADD_VOTER, node_id, address.encode()),
            max(deadline - time.monotonic(), 0.001),
        )

    async def remove_member_async(self, node_id: str, timeout_s: float) -> None:
        """Loop side of `remove_member`."""
        core = self._require_leader()
        conf = core.status().conf_state
        if node_id not in conf.voters and node_id not in conf.learners:
            raise InvalidArgumentError(f"{node_id} is not a member")
        await self._propose_conf_change(ConfChange(ConfChangeType.REMOVE, node_id), timeout_s)

    async def transfer_leadership_async(self, node_id: str, timeout_s: float) -> None:
        """Loop side of `transfer_leadership`."""
        deadline = time.monotonic() + timeout_s
        if self._leader_id == node_id:
            return
        core = self._require_leader()
        if node_id not in core.status().conf_state.voters:
            raise InvalidArgumentError(f"{node_id} is not a voting member")
        core.transfer_leadership(node_id)
        self._kick()
        while self._leader_id != node_id:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OperationTimeoutError(f"{node_id} did not take over within {timeout_s:.1f}s")
            await self._wait_leader_change(remaining)

    def _is_member(self, node_id: str) -> bool:
        return node_id in self._peers

    # --- loop side: the Ready loop --------------------------------------------------------------

    def _kick(self) -> None:
        self._wake.set()

    async def _run_ticker(self) -> None:
        assert self._core is not None
        interval = self.options.tick_s
        next_tick = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(next_tick - time.monotonic(), 0))
            next_tick += interval
            self._core.tick()
            self._kick()

    async def _run_ready(self) -> None:
        assert self._core is not None
        core = self._core
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while core.has_ready():
                    ready = core.ready()
                    await self._handle_ready(ready)
                    core.advance(ready)
            except asyncio.CancelledError:
                raise
            except BaseException as error:  # a storage failure: stop serving, never limp on
                log.critical("node %s stops serving: %s", self.node_id, error, exc_info=True)
                self._failure = error
                self._fail_everything(UnavailableError(f"node {self.node_id} failed: {error}"))
                if self._transport is not None:
                    await self._transport.close()
                return

    async def _handle_ready(self, ready: Ready) -> None:
        assert self._wal is not None and self._sm is not None and self._transport is not None
        loop = asyncio.get_running_loop()
        if ready.soft_state is not None:
            self._on_soft_state(ready.soft_state.leader_id, ready.soft_state.role)
        if ready.messages:
            self._send(ready.messages)
        if ready.snapshot is not None:
            await self._install_snapshot(ready.snapshot)
        if ready.entries or ready.hard_state is not None:
            position = self._wal.append(ready.entries, ready.hard_state)
            if ready.must_sync:
                await loop.run_in_executor(self._sync_executor, self._wal.sync, position)
        elif ready.must_sync:
            await loop.run_in_executor(self._sync_executor, self._wal.sync)
        if ready.persisted_messages:
            self._send(ready.persisted_messages)
        if ready.committed_entries:
            self._apply(ready.committed_entries)
        for read_state in ready.read_states:
            entry = self._pending_reads.get(read_state.request_ctx)
            if entry is not None and not entry[0].done():
                entry[0].set_result(read_state.index)
        for dropped in ready.dropped:
            read = self._pending_reads.get(dropped.context)
            if read is not None and not read[0].done():
                read[0].set_exception(ProposalDroppedError(dropped.reason))
        if self._sm.applied_index() - self._last_checkpoint >= self.options.checkpoint_entries:
            await self._checkpoint()

    def _on_soft_state(self, leader_id: str | None, role: Role) -> None:
        changed = leader_id != self._leader_id
        self._leader_id = leader_id
        self._role = role
        if changed:
            log.info("node %s: leader is now %s (role %s)", self.node_id, leader_id, role.value)
            self._leader_changed.set()
            if leader_id is not None:
                self._repropose_pending()

    def _apply(self, entries: list[Entry] | Any) -> None:
        assert self._sm is not None
        results = self._sm.apply(entries)
        if self._pending_writes:
            pending = self._pending_writes
            for entry, result in zip(entries, results, strict=True):
                if entry.type != EntryType.NORMAL or not entry.data:
                    continue
                session = commands.decode_session(entry.data)
                waiter = pending.get(session) if session is not None else None
                if waiter is not None and not waiter.future.done():
                    waiter.future.set_result(result)
        if any(entry.type == EntryType.CONF_CHANGE for entry in entries):
            self._refresh_members()
        self._release_applied_waiters(self._sm.applied_index())

    def _refresh_members(self) -> None:
        """Follow the configuration: learn new members' addresses, forget removed ones."""
        assert self._sm is not None and self._transport is not None and self._core is not None
        for node_id, (address, _role) in self._sm.members().items():
            if address:  # founders are bootstrapped without one: keep the address we were given
                self._peers[node_id] = address
        conf = self._core.status().conf_state
        present = set(conf.voters) | set(conf.learners)
        if present:  # a joining node knows no configuration yet: keep what it was given
            for node_id in list(self._peers):
                if node_id not in present and node_id != self.node_id:
                    del self._peers[node_id]
        self._transport.set_peers(
            {peer: address for peer, address in self._peers.items() if peer != self.node_id}
        )

    async def _checkpoint(self) -> None:
        assert self._sm is not None and self._wal is not None
        loop = asyncio.get_running_loop()
        term = self._sm.applied_term()
        conf = self._sm.conf_state()
        index = await loop.run_in_executor(self._work_executor, self._sm.checkpoint)
        if index > self._last_checkpoint:
            self._wal.compact_through(SnapshotMeta(index, term, conf))
            self._last_checkpoint = index
            log.info("node %s: checkpoint at %d, log compacted", self.node_id, index)

    def _fail_everything(self, error: KVStoreError) -> None:
        for pending in getattr(self, "_pending_writes", {}).values():
            if not pending.future.done():
                pending.future.set_exception(error)
        for future, _lease in getattr(self, "_pending_reads", {}).values():
            if not future.done():
                future.set_exception(error)
        for _, _, future in getattr(self, "_applied_waiters", []):
            if not future.done():
                future.set_exception(error)

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise UnavailableError(f"node {self.node_id} failed: {self._failure}")

    # --- loop side: messages and snapshots ------------------------------------------------------

    def _send(self, messages: Iterable[Message]) -> None:
        assert self._transport is not None
        outgoing = []
        for message in messages:
            if message.type == MessageType.SNAPSHOT:
                if message.recipient not in self._outgoing_snapshots:
                    self._outgoing_snapshots.add(message.recipient)
                    asyncio.get_running_loop().create_task(self._send_snapshot(message))
                continue
            outgoing.append(message)
        if outgoing:
            self._transport.send(outgoing)

    def _on_message(self, message: Message) -> None:
        assert self._core is not None
        if message.type == MessageType.SNAPSHOT:
            return  # snapshots arrive only through the chunk stream, with their data
        self._core.step(message)
        self._kick()

    def _on_unreachable(self, peer_id: str) -> None:
        assert self._core is not None
        self._core.report_unreachable(peer_id)

    async def _on_client_connection(self, connection: FramedConnection) -> None:
        await serve_client_connection(
            connection, _ClientBackend(self), max_value_bytes=self.options.max_value_bytes
        )

    async def _send_snapshot(self, message: Message) -> None:
        """Copy LMDB to a file and stream it to the follower in chunks, then report."""
        assert self._sm is not None and self._transport is not None and self._core is not None
        peer = message.recipient
        path = self.data_dir / "snapshots" / f"out-{peer}-{time.monotonic_ns()}"
        loop = asyncio.get_running_loop()
        success = False
        try:
            meta = await loop.run_in_executor(self._work_executor, self._sm.snapshot, path)
            # The copy may be newer than the compaction point the core chose: that is allowed,
            # and the follower's APPEND_RESPONSE tells the core where it really stands.
            message = message._replace(snapshot=meta)
            total = path.stat().st_size
            snapshot_id = f"{self.node_id}-{meta.index}-{meta.term}-{time.monotonic_ns()}"
            offset = 0
            for offset, chunk in iter_chunks(path, self.options.snapshot_chunk_bytes):
                body = {"id": snapshot_id, "offset": offset, "total": total, "data": chunk}
                while not self._transport.send_snapshot_chunk(peer, body):
                    await asyncio.sleep(SNAPSHOT_CHUNK_RETRY_S)
            done = {
                "id": snapshot_id,
                "offset": total,
                "total": total,
                "data": b"",
                "checksum": file_sha256(path),
                "message": encode_message(message),
            }
            while not self._transport.send_snapshot_chunk(peer, done):
                await asyncio.sleep(SNAPSHOT_CHUNK_RETRY_S)
            success = True
            log.info("node %s: sent snapshot at %d to %s", self.node_id, meta.index, peer)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("node %s: snapshot to %s failed", self.node_id, peer, exc_info=True)
        finally:
            self._outgoing_snapshots.discard(peer)
            with contextlib.suppress(OSError):
                path.unlink()
            self._core.report_snapshot(peer, success)
            self._kick()

    def _on_snapshot_chunk(self, peer: str, body: object) -> None:
        """Reassemble a snapshot from its chunks; step the SNAPSHOT message once complete."""
        assert self._core is not None
        try:
            if not isinstance(body, dict):
                raise ValueError("snapshot chunk is not a map")
            snapshot_id = str(body["id"])
            writer = self._incoming_snapshots.get(peer)
            if writer is None or writer.snapshot_id != snapshot_id:
                if writer is not None:
                    writer.abort()
                writer = SnapshotWriter(
                    self.data_dir / "snapshots", snapshot_id, int(body["total"])
                )
                self._incoming_snapshots[peer] = writer
            data = body["data"]
            if data:
                writer.write_chunk(int(body["offset"]), bytes(data))
            if "message" not in body:
                return
            path = writer.finish(bytes(body["checksum"]))
            del self._incoming_snapshots[peer]
            message = decode_message(body["message"])
            if message.snapshot is None or message.sender != peer:
                raise ValueError("snapshot message does not match its sender")
            key = (message.snapshot.index, message.snapshot.term)
            old = self._received_snapshots.pop(key, None)
            if old is not None and old != path:
                with contextlib.suppress(OSError):
                    old.unlink()
            self._received_snapshots[key] = path
            self._core.step(message)
            self._kick()
        except Exception:
            log.warning("node %s: bad snapshot chunk from %s", self.node_id, peer, exc_info=True)
            writer = self._incoming_snapshots.pop(peer, None)
            if writer is not None:
                writer.abort()

    async def _install_snapshot(self, meta: SnapshotMeta) -> None:
        assert self._sm is not None and self._wal is not None
        path = self._received_snapshots.pop((meta.index, meta.term), None)
        if path is None:
            raise KVStoreError(f"the core installs snapshot {meta.index} that was never received")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._work_executor, self._sm.restore, path)
        self._wal.install_snapshot(meta)
        await loop.run_in_executor(self._sync_executor, self._wal.sync)
        self._last_checkpoint = meta.index
        for stale in self._received_snapshots.values():
            with contextlib.suppress(OSError):
                stale.unlink()
        self._received_snapshots.clear()
        self._refresh_members()
        self._release_applied_waiters(self._sm.applied_index())
        log.info("node %s: installed snapshot at %d", self.node_id, meta.index)


class _ClientBackend:
    """Serves `kvstore.Client` requests from this node (the service's `ServiceBackend`).

    Writes sent to a follower are redirected to the leader when one is known, so clients learn
    where to write; with no leader known they wait here for one, like the node's own writes.
    """

    def __init__(self, node: Node) -> None:
        self._node = node

    def _redirect_writes(self) -> None:
        node = self._node
        if node._role is not Role.LEADER and node._leader_id is not None:
            raise node.leader_hint()

    async def put(
        self, key: bytes, value: bytes, *, session: tuple[bytes, int], timeout_s: float
    ) -> None:
        self._redirect_writes()
        data = commands.encode_put(*session, key, value)
        await self._node.propose_command(data, session, timeout_s)

    async def delete(self, key: bytes, *, session: tuple[bytes, int], timeout_s: float) -> bool:
        self._redirect_writes()
        data = commands.encode_delete(*session, key)
        return bool(await self._node.propose_command(data, session, timeout_s))

    async def cas(
        self,
        key: bytes,
        expected: bytes | None,
        new: bytes | None,
        *,
        session: tuple[bytes, int],
        timeout_s: float,
    ) -> bool:
        self._redirect_writes()
        data = commands.encode_cas(*session, key, expected, new)
        return bool(await self._node.propose_command(data, session, timeout_s))

    async def get(self, key: bytes, *, consistency: str, timeout_s: float) -> bytes | None:
        node = self._node
        if consistency != "stale":
            await node.read_barrier(consistency, timeout_s)
        assert node._sm is not None
        return node._sm.get(key)

    async def scan(
        self, prefix: bytes, *, limit: int | None, consistency: str, timeout_s: float
    ) -> list[tuple[bytes, bytes]]:
        node = self._node
        if consistency != "stale":
            await node.read_barrier(consistency, timeout_s)
        assert node._sm is not None
        return node._sm.scan(prefix, limit)

    def status(self) -> Status:
        return self._node.status_now()

    async def add_member(self, node_id: str, address: str, *, timeout_s: float) -> None:
        await self._node.add_member_async(node_id, address, timeout_s)

    async def remove_member(self, node_id: str, *, timeout_s: float) -> None:
        await self._node.remove_member_async(node_id, timeout_s)

    async def transfer_leadership(self, node_id: str, *, timeout_s: float) -> None:
        await self._node.transfer_leadership_async(node_id, timeout_s)


async def _as_coroutine(function: Callable[[], T]) -> T:
    return function()


def _check_address(address: object) -> str:
    if not isinstance(address, str):
        raise InvalidArgumentError(f"address must be 'host:port', got {address!r}")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgumentError(f"address must be 'host:port', got {address!r}")
    return address


__all__ = ["Node"]

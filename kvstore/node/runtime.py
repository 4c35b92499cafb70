"""The node's runtime: everything that runs on the node's asyncio loop.

`kvstore.Node` (facade.py) checks arguments, owns the lifecycle and hops onto the loop; this
object does the work there. It owns the core, the redo log, the state machine and the
transport (THREADS.md says which thread may touch which).

The Raft core (pure), the redo log (C), the LMDB state machine and the TCP transport are joined
here, on one asyncio loop that runs in a background thread. The application's threads hand work
to that loop and wait on futures with their own timeouts.

The Ready path (`_ready_steps`, the one copy of the steps) is the heart of it, in the order the
core's `Ready` demands:

1. send `messages` (the leader's APPENDs go out before its own fsync, thesis §10.2.1);
2. install a received snapshot, then append `entries` and `hard_state` to the log;
3. one fsync if `must_sync`, placed by the one rule in `kvstore/node/ready.py`: a small batch
   while fsyncs are fast runs on the loop thread (the thread hop costs more than such an
   fsync); anything else runs in the sync executor while the loop keeps stepping messages and
   proposals into the core, so the next batch grows by itself (natural group commit);
4. send `persisted_messages` (votes and acks: only once durable);
5. apply `committed_entries` to LMDB in one transaction and answer the waiting callers;
6. `advance()`.

A peer's message is stepped and its Readies handled in the same callback when none of them has
to wait (`_run_ready_inline`); otherwise the Ready task takes over.

Around it:

- Checkpoints run beside the loop, not in it: every `checkpoint_entries` applied entries LMDB is
  synced in a worker thread, and the log is then compacted through the checkpoint BEFORE it.
  The log so keeps at least `checkpoint_entries` applied entries, so a follower that fell a
  little behind catches up from the log instead of needing a whole snapshot.
- Snapshots stream with flow control (the protocol, sans I/O: snapshot_transfer.py): the
  sender keeps at most `SNAPSHOT_WINDOW_CHUNKS` chunks unacknowledged; the receiver
  acknowledges every chunk with the next offset it needs (over its own link to the sender), so
  a lost chunk or a dropped connection resumes from there rather than from zero. A stream
  without progress for `SNAPSHOT_STALL_S` resends from the last
  acknowledged offset, and gives up (the core retries later) after `SNAPSHOT_STALLS_MAX`.
- Pending writes survive leader changes: each is proposed again to the new leader (the session
  table applies a command at most once), and again after a leader refused it or the link to
  the leader dropped messages. Reads ask again after a leader change or an election timeout.
- Client sessions (Raft thesis §6.3, kvstore.storage.commands): each application thread's
  writes use a session registered through the log on first use. Only a leading node stamps
  its proposals with its wall clock, which is all the time the state machine knows (expiry).
- Any storage failure (a failed write or fsync of the log, a failed LMDB sync) stops the node:
  it closes its transport (so the others elect a leader without it), fails every waiting call
  and refuses every later one with `UnavailableError`. It never limps on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import itertools
import logging
import os
import random
import time
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from kvstore.consensus import ConsensusCore, make_core
from kvstore.consensus.config import Config
from kvstore.consensus.types import (
    ConfState,
    DropReason,
    Entry,
    EntryType,
    Message,
    MessageType,
    Ready,
    Role,
    SnapshotMeta,
)
from kvstore.deadline import Deadline
from kvstore.errors import (
    InvalidArgumentError,
    KVStoreError,
    LeaseNotFoundError,
    NotLeaderError,
    OperationTimeoutError,
    ProposalDroppedError,
    SessionExpiredError,
    StorageFullError,
    UnavailableError,
    invariant,
)
from kvstore.identity import IdentityStore, cluster_id_for
from kvstore.node import membership
from kvstore.node.membership import check_address
from kvstore.node.ready import FsyncPlacement, Placement
from kvstore.node.service import serve_client_connection
from kvstore.node.snapshot_transfer import (
    ACK_DONE,
    ACK_FAILED,
    Ack,
    SendChunk,
    SnapshotReceiverState,
    SnapshotSender,
    parse_chunk,
)
from kvstore.node.waiters import AppliedWaiters, LeaderWaiters
from kvstore.node.waiters import wake as _wake
from kvstore.options import (
    Options,
    Status,
)
from kvstore.storage import commands
from kvstore.storage.snapshot import (
    SnapshotTransferError,
    SnapshotWriter,
    file_sha256,
    private_dir,
)
from kvstore.storage.state_machine import (
    StateMachine,
    check_state_covers_log,
    create_directory_durably,
)
from kvstore.storage.wal import WriteAheadLog
from kvstore.transport.codec import decode_message, encode_message
from kvstore.transport.identity import IdentityExchange
from kvstore.transport.tcp import FramedConnection, PeerTransport
from kvstore.transport.tls import TLSConfig

log = logging.getLogger("kvstore.node")

T = TypeVar("T")


class NodeFailedError(UnavailableError):
    """This member stopped serving after a storage failure (a failed write or fsync of the redo
    log, a full disk, too many open files, a failed LMDB sync). Raised by every call after the
    failure; the message names the cause (e.g. "No space left on device (ENOSPC)") and the
    original error is chained as `__cause__`. Restart the node once the cause is fixed."""


def describe_failure(error: BaseException) -> str:
    """One line naming what failed and why, with the system's reason and errno name when an
    `OSError` lies anywhere in the chain (so a full disk reads "No space left on device
    (ENOSPC)", not an I/O error)."""
    text = str(error) or type(error).__name__
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno:
            reason = os.strerror(cause.errno)
            name = errno.errorcode.get(cause.errno, str(cause.errno))
            if name in text:  # the redo log's messages name it already ("ENOSPC 28 (...)")
                return text
            named = f"{reason} ({name})"
            return text.replace(reason, named, 1) if reason in text else f"{text}: {named}"
        cause = cause.__cause__ or cause.__context__
    return text


LOOP_GRACE_S = 1.0
"""Extra time a synchronous call waits for the loop beyond the operation's own timeout."""
SCAN_ON_LOOP_PAIRS_MAX = 64
"""A client's scan limited to at most this many pairs reads LMDB on the loop thread (a bounded
read costs less than the hop); any other scan reads in the work executor."""
RECEIVED_SNAPSHOTS_MAX = 2
"""Complete snapshots a receiver keeps until the core installs one (the newest by index)."""


def _role_name(role: Role, voter: bool) -> str:
    if role is Role.LEADER:
        return "leader"
    if not voter:
        # A learner, a node waiting to be added (join) or one that was removed: none may vote.
        return "learner"
    if role is Role.PRE_CANDIDATE:
        return "candidate"
    return str(role.value)


class _PendingWrite:
    """A proposal waiting to be applied, keyed by its session (session id, sequence number;
    (0, nonce) for a session registration)."""

    __slots__ = ("data", "future", "proposed", "submissions", "waiters", "wakers")

    def __init__(self, data: bytes, future: asyncio.Future[object]) -> None:
        self.data = data
        self.future = future
        self.proposed = False
        """Whether the core ever took it (then it may be applied even if we stop waiting)."""
        self.submissions = 0
        """How often the core took it: with one copy proposed, the first result seen here is
        that copy's, so a SESSION_EXPIRED answer proves the write never ran."""
        self.waiters = 0
        """Callers waiting for it (a client may retry a write while its first try waits)."""
        self.wakers: list[asyncio.Future[None]] = []
        """The waiting callers' private futures, woken directly when the write is applied."""


class _OutgoingSnapshot:
    """The driver's side of one outgoing stream: the protocol's state and the event that
    wakes the driver on each acknowledgement."""

    __slots__ = ("event", "sender")

    def __init__(self, sender: SnapshotSender) -> None:
        self.sender = sender
        self.event = asyncio.Event()


class NodeRuntime:
    """The loop side of one member (see the module docstring). Built by `Node.__init__` with
    its checked arguments. `open_storage` runs in `Node.start()` before the loop exists and
    `close` after it stopped; `address`, `cluster_id`, `incarnation`, `failure_cause` and
    `state_machine` may be read from any thread; every other method runs on the loop thread."""

    def __init__(
        self,
        node_id: str,
        data_dir: Path,
        peers: Mapping[str, str],
        *,
        options: Options,
        secret: bytes | None,
        client_secret: bytes | None,
        tls: TLSConfig | None,
        join: bool,
    ) -> None:
        self.options = options
        self.node_id = node_id
        self.data_dir = data_dir
        self._tls = tls
        self.stopping = False
        """Set by `Node.stop()` before it stops the loop: a write proposed then would wait
        forever, so it is refused."""
        self.node_id = node_id
        self.data_dir = Path(data_dir)
        self._given_peers = dict(peers)
        """The addresses we were given: they win over those recorded in the state machine."""
        self._peers = dict(peers)
        """The members this node talks to: node id -> address."""
        self._secret = secret
        self._client_secret = client_secret
        self._join = join
        self._read_ids = itertools.count(1)
        self._sync_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._work_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._wal: WriteAheadLog | None = None
        self._sm: StateMachine | None = None
        self._core: ConsensusCore | None = None
        self._transport: PeerTransport | None = None
        self.failure_cause: BaseException | None = None
        """The storage failure that stopped this node, or None. Set once, on the loop; read
        by any thread (a late reader reaches the loop, which checks again)."""
        self._failure_text = ""
        """`describe_failure(self.failure_cause)`, computed once."""
        self._election_timeout_s = self.options.election_ticks * self.options.tick_s
        # --- storage state, set by `open_storage` in `Node.start()` ---
        self._identity: IdentityStore | None = None
        self._applied_index = 0
        """Written on the loop thread only (after `start()`); `status` reads it there."""
        self._last_checkpoint = 0
        self._checkpoint_meta: SnapshotMeta | None = None
        """The latest checkpoint: the log is compacted through it at the next one."""
        # --- loop state: created here, touched only on the loop thread (THREADS.md) ---
        self._wake = asyncio.Event()
        self._ready_busy = False
        """A Ready is being handled (by the task, across its awaits, or inline)."""
        self._parked_ready: Ready | None = None
        """A Ready taken inline that had to wait: the Ready task handles it first."""
        self._fsync_placement = FsyncPlacement()
        """Where each Ready's fsync runs (kvstore/node/ready.py); loop thread only."""
        self._leader_waiters = LeaderWaiters()
        self._pending_writes: dict[tuple[int, int], _PendingWrite] = {}
        self._unsubmitted: dict[tuple[int, int], _PendingWrite] = {}
        """Pending writes no leader has taken yet (or that one refused): retried every tick."""
        self._pending_reads: dict[bytes, asyncio.Future[int]] = {}
        self._applied_waiters = AppliedWaiters()
        self._incoming_snapshots: dict[str, SnapshotWriter] = {}
        """peer -> the file of the stream being received from it."""
        self._snapshot_receivers: dict[str, SnapshotReceiverState] = {}
        """peer -> the receiving protocol's state for its streams (snapshot_transfer.py)."""
        self._received_snapshots: dict[tuple[int, int], Path] = {}
        self._outgoing_snapshots: dict[str, _OutgoingSnapshot | None] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._last_repropose = 0.0
        self._leader_id: str | None = None
        self._role = Role.FOLLOWER
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------------------------------

    def open_storage(self) -> None:
        """Open the data directory and recover (in `Node.start`, before the loop exists)."""
        # Durably (a power cut soon after the first start must not lose the directories) and
        # privately (DESIGN §4: the data directory and everything below it is 0700/0600).
        create_directory_durably(self.data_dir / "snapshots")
        private_dir(self.data_dir)
        private_dir(self.data_dir / "snapshots")
        self._wal = WriteAheadLog(self.data_dir / "wal", segment_bytes=self.options.segment_bytes)
        self._sm = StateMachine(
            self.data_dir / "state",
            map_size_bytes=self.options.map_size_bytes,
            sessions_max=self.options.sessions_max,
            quota_bytes=self.options.quota_bytes,
            session_timeout_s=self.options.session_timeout_s,
            history_revisions_max=self.options.history_revisions_max,
            history_bytes_max=self.options.history_bytes_max,
        )
        hard_state, _ = self._wal.initial_state()
        applied = self._sm.applied_index()
        # A state older than the compacted log was lost: refuse now, not at the first apply.
        check_state_covers_log(applied, self._wal.first_index(), self._sm.directory)
        fresh = hard_state.term == 0 and self._wal.last_index() == 0 and applied == 0
        voters: tuple[str, ...] = ()
        if fresh and not self._join:
            voters = tuple(sorted(self._peers))
        # The log is the source of truth: LMDB may lag (a crash between the log's fsync and
        # the apply's commit), in which case the core hands out committed entries again from
        # `applied + 1`.
        config = Config(
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
        config.validate()
        self._open_identity(fresh)
        self._applied_index = applied
        self._last_checkpoint = applied
        self._checkpoint_meta = None
        # The one place the protocol matters: which core to build. Everything else talks to
        # the ConsensusCore interface.
        self._core = make_core(
            self.options.consensus, config, self._wal, random.Random(os.urandom(16))
        )
        # Members added after this node's `peers` were written: dial them where they said.
        for node_id, (address, _role) in self._sm.members().items():
            if address and node_id not in self._given_peers:
                self._peers[node_id] = address
        # Snapshots received but not installed, or being sent, before a crash are useless now.
        for pattern in ("*.snap", "out-*"):
            for stale in (self.data_dir / "snapshots").glob(pattern):
                with contextlib.suppress(OSError):
                    stale.unlink()

    # --- identity (kvstore/identity.py) ----------------------------------------------------------

    def _open_identity(self, fresh: bool) -> None:
        """Read DATA_DIR/identity, or create it: a new incarnation, and for a founding member of
        a new cluster the cluster id (a joining member learns it from the cluster)."""
        cluster_id = None
        if fresh and not self._join:
            cluster_id = cluster_id_for(self.options.cluster_name, self._peers)
        self._identity = IdentityStore.open(
            self.data_dir, node_id=self.node_id, cluster_id=cluster_id
        )

    @property
    def address(self) -> str:
        """The "host:port" this node listens on (port 0 resolved once listening)."""
        if self._transport is None:
            return self._peers[self.node_id]
        return self._transport.address

    @property
    def cluster_id(self) -> str | None:
        """The cluster's id (None until known)."""
        identity = self._identity
        return None if identity is None else identity.cluster_id

    @property
    def incarnation(self) -> str | None:
        """This member's incarnation (None before `open_storage`)."""
        identity = self._identity
        return None if identity is None else identity.incarnation

    def close(self) -> None:
        """After the loop stopped: wait for the executors, then close the files."""
        # An fsync or LMDB sync still running in a worker finishes before the files close.
        for executor in (self._sync_executor, self._work_executor):
            if executor is not None:
                executor.shutdown(wait=True)
        if self._wal is not None:
            self._wal.close()
        if self._sm is not None:
            self._sm.close()

    async def start(self) -> None:
        """On the loop: start the executors, the transport, the ticker and the Ready task."""
        assert self._core is not None
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
            tls=self._tls,
            client_secret=self._client_secret,
            on_message=self._on_message,
            on_unreachable=self._on_unreachable,
            on_client_connection=self._on_client_connection,
            on_snapshot_chunk=self._on_snapshot_chunk,
            is_member=self._is_member,
            frame_bytes_max=self.options.frame_bytes_max,
            consensus=self.options.consensus,
        )
        assert self._identity is not None
        identity = IdentityExchange(self.node_id, self._identity)
        identity.dial_at_start = not self._join
        self._transport.identity = identity
        await self._transport.start()
        self._tasks = [
            asyncio.create_task(self._run_ticker(), name="kvstore-ticker"),
            asyncio.create_task(self._run_ready(), name="kvstore-ready"),
        ]
        self.kick()

    async def stop(self) -> None:
        """On the loop: fail what waits, cancel the tasks, close the transport."""
        self._fail_everything(f"node {self.node_id} is stopping")
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._transport is not None:
            await self._transport.close()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run `coro` beside the Ready loop; `stop()` cancels it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- failure ------------------------------------------------------------------------------

    @property
    def state_machine(self) -> StateMachine:
        """The LMDB state machine, for reads in any thread (LMDB readers never block the
        writer; THREADS.md). Only after `open_storage`."""
        sm = self._sm
        assert sm is not None
        return sm

    def failure_message(self) -> str:
        """What every call says once this node failed (the cause in words)."""
        return f"node {self.node_id} failed and stopped serving: {self._failure_text}"

    def _fail(self, error: BaseException) -> None:
        """A storage failure: stop serving for good (the log may be poisoned), never limp on."""
        if self.failure_cause is not None:
            return
        self._failure_text = describe_failure(error)
        # An operating error (the disk, the fd table) is one line; anything else is a bug.
        trace = None if isinstance(error, OSError | KVStoreError) else error
        log.critical("node %s stops serving: %s", self.node_id, self._failure_text, exc_info=trace)
        self.failure_cause = error
        self._fail_everything(self.failure_message())
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if self._transport is not None:
            # Without its transport the node is silent: the others elect a leader without it.
            self._spawn(self._transport.close(), "kvstore-close-transport")

    # --- loop side: sessions (Raft thesis §6.3; see kvstore.storage.commands) -------------------

    def stamp_ms(self) -> int:
        """The time stamp for a command proposed now: this node's wall clock if it leads, else
        0. Only leaders' clocks drive session expiry (see kvstore.storage.state_machine)."""
        return time.time_ns() // 1_000_000 if self._role is Role.LEADER else 0

    async def register_session(self, timeout_s: float) -> int:
        """Register a client session through the log; return its id (the entry's index).

        Raises `UnavailableError` when the state machine holds `sessions_max` live sessions.
        A registration proposed twice (after a leader change) may register two sessions; the
        one nobody uses expires after `session_timeout_s`.
        """
        nonce = int.from_bytes(os.urandom(8), "little") or 1
        data = commands.encode_register(nonce, self.stamp_ms())
        result = await self.propose_command(data, (0, nonce), timeout_s)
        if type(result) is not int:
            # Matched to an entry the state machine skipped as applied already (it came in a
            # snapshot): the id is not known here. An unused registration just expires.
            raise UnavailableError("the session registration was not seen applied; try again")
        return result

    async def session_write(
        self, session: _EmbeddedSession, build: Callable[[int, int, int], bytes], timeout_s: float
    ) -> object:
        """Propose the write `build(session_id, seq, stamp_ms)` under `session`, registering the
        session first if it has none. A write refused because the session expired, and proven
        never applied (`_NeverAppliedError`), is sent once more under a new session; one that
        may have run raises `SessionExpiredError` (outcome unknown)."""
        deadline = Deadline.on_loop(timeout_s)
        renewed = False
        while True:
            session_id = session.session_id
            if session_id is None:
                session_id = await self.register_session(deadline.left_s())
                session.session_id, session.last_seq = session_id, 0
            seq = session.last_seq = session.last_seq + 1
            data = build(session_id, seq, self.stamp_ms())
            try:
                return await self.propose_command(data, (session_id, seq), deadline.left_s())
            except _NeverAppliedError:
                if session.session_id == session_id:
                    session.session_id = None
                if renewed:
                    raise
                renewed = True

    # --- loop side: writes ----------------------------------------------------------------------

    async def propose_command(
        self, data: bytes, session: tuple[int, int], timeout_s: float
    ) -> object:
        """Propose an encoded command and wait until it is applied here; return its result.

        A proposal that finds no leader waits for one; after a leader change, a refusal or
        lost messages to the leader it is proposed again (the session table applies each
        command at most once). Raises `UnavailableError` if no leader ever took it in time,
        `OperationTimeoutError` if one did but it was not applied here in time.
        """
        self.raise_if_failed()
        pending = self._pending_writes.get(session)
        if pending is None:
            if self.stopping:
                # stop() fails the writes waiting when it begins; one proposed after that (say,
                # a write whose session registration just completed) would wait forever.
                raise UnavailableError(f"node {self.node_id} is stopping; the write was not sent")
            if len(self._pending_writes) >= self.options.max_pending_proposals:
                raise UnavailableError("too many proposals waiting; try again later")
            assert self._sm is not None
            if self._sm.quota_refuses(data):  # one comparison unless near the quota
                raise _storage_full(self._sm)
            pending = _PendingWrite(data, asyncio.get_running_loop().create_future())
            self._pending_writes[session] = pending
            self._submit(session, pending)
        pending.waiters += 1
        future = pending.future
        try:
            if not future.done():
                # Wait on a private future that the write's completion or this caller's timer
                # wakes: the shared future must outlive this caller (a client's retry may wait
                # on it too), and this costs a loop iteration and several objects less per
                # write than wait_for(shield(...)) (measured on pipelined puts).
                loop = asyncio.get_running_loop()
                waiter = loop.create_future()
                wake = functools.partial(_wake, waiter)
                # `_apply` wakes `waiter` itself, in the same callback: a done-callback would
                # run one loop iteration later. The done-callback stays for every other way
                # the write ends (failures, refusals).
                pending.wakers.append(waiter)
                future.add_done_callback(wake)
                timer = loop.call_at(loop.time() + timeout_s, wake)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    future.remove_done_callback(wake)
                    pending.wakers.remove(waiter)
                if not future.done():
                    if not pending.proposed:
                        raise UnavailableError(
                            f"no leader accepted the write within {timeout_s:.2f}s; "
                            "it was not applied"
                        )
                    raise OperationTimeoutError(
                        f"the write was not applied within {timeout_s:.2f}s; its outcome is unknown"
                    )
            result = future.result()
        finally:
            # The last caller to stop waiting (done or given up) takes the write out of the
            # retries; a client's retry of the same session may still be waiting on it.
            pending.waiters -= 1
            if pending.waiters == 0 and self._pending_writes.get(session) is pending:
                del self._pending_writes[session]
                self._unsubmitted.pop(session, None)
        if isinstance(result, commands.CommandRejected) and result.code == _STORAGE_FULL:
            raise _storage_full(self._sm)
        if result is False and data[0] == commands.Op.PUT:
            # A put is True unless refused: this is a retry of a put the quota refused.
            raise _storage_full(self._sm)
        if isinstance(result, commands.CommandRejected):
            raise _rejection_error(result, pending.submissions)
        return result

    def _submit(self, session: tuple[int, int], pending: _PendingWrite) -> None:
        assert self._core is not None
        try:
            self._core.propose(pending.data)
        except ProposalDroppedError as error:
            # No leader, a transfer in progress, too much uncommitted: try again next tick.
            log.debug("proposal waits: %s", error.reason)
            self._unsubmitted[session] = pending
            return
        self._unsubmitted.pop(session, None)
        pending.proposed = True
        pending.submissions += 1
        self.kick()

    def _retry_unsubmitted(self) -> None:
        for session, pending in list(self._unsubmitted.items()):
            if pending.future.done():
                del self._unsubmitted[session]
            else:
                self._submit(session, pending)

    def _repropose_pending(self) -> None:
        """Propose every waiting write again (after a leader change or lost messages)."""
        self._last_repropose = time.monotonic()
        for session, pending in list(self._pending_writes.items()):
            if not pending.future.done():
                self._submit(session, pending)

    def _on_dropped_write(self, data: bytes) -> None:
        """The leader refused a write we forwarded (e.g. during a transfer): retry it."""
        session = commands.decode_session(data)
        pending = self._pending_writes.get(session) if session is not None else None
        if session is not None and pending is not None and not pending.future.done():
            self._unsubmitted[session] = pending

    # --- loop side: reads -----------------------------------------------------------------------

    async def read_barrier(self, consistency: str, timeout_s: float) -> None:
        """Return once this node's state machine reflects every write acknowledged before the
        call (linearizable: ReadIndex confirmed by a quorum; lease: the leader's lease).

        The read index is asked of the leader again after a leader change, a refusal, or an
        election timeout without an answer (a lost message): reads are safe to repeat.
        """
        deadline = Deadline(timeout_s)
        lease = consistency == "lease"
        while True:
            self.raise_if_failed()
            assert self._core is not None
            remaining = deadline.remaining_s()
            if remaining <= 0:
                raise OperationTimeoutError(
                    f"no read index within {timeout_s:.2f}s (is a quorum reachable?)"
                )
            if self._leader_id is None:
                await self._leader_waiters.wait_change(remaining)
                if self._leader_id is None:
                    raise UnavailableError(f"no leader to confirm the read within {timeout_s}s")
                continue
            request_ctx = b"r%d" % next(self._read_ids)
            loop = asyncio.get_running_loop()
            future: asyncio.Future[int] = loop.create_future()
            changed = self._leader_waiters.shared_change()
            self._pending_reads[request_ctx] = future
            # Woken by the answer, a leader change or the timer, whichever comes first: a
            # private future and bare callbacks cost far less per read than asyncio.wait()
            # with a leader-change future of its own (measured on pipelined reads).
            waiter: asyncio.Future[None] = loop.create_future()
            wake = functools.partial(_wake, waiter)
            future.add_done_callback(wake)
            changed.add_done_callback(wake)
            timer = loop.call_at(loop.time() + min(remaining, self._election_timeout_s), wake)
            try:
                self._core.read_index(request_ctx, lease=lease)
                self.kick()
                await waiter
            finally:
                timer.cancel()
                self._pending_reads.pop(request_ctx, None)
                future.remove_done_callback(wake)
                changed.remove_done_callback(wake)
            if not future.done():
                future.cancel()
                continue  # a new leader, or the request or its answer was lost: ask again
            error = future.exception()
            if error is None:
                await self.wait_applied(future.result(), deadline)
                return
            if isinstance(error, ProposalDroppedError) and error.reason != DropReason.NO_LEADER:
                # The leader refused (too many reads, or it is no longer sure it leads).
                await asyncio.sleep(min(self.options.tick_s, max(remaining, 0)))
            elif not isinstance(error, ProposalDroppedError):
                raise error

    async def wait_applied(self, index: int, deadline: Deadline) -> None:
        """Return once this node applied through `index` (`OperationTimeoutError` at the
        deadline)."""
        if self._applied_index >= index:
            return
        await self._applied_waiters.wait(index, deadline)

    def lookup(self, key: bytes) -> bytes | None:
        """The value of `key` in LMDB as applied here (a point read: cheap on the loop)."""
        assert self._sm is not None
        return self._sm.get(key)

    async def scan(self, prefix: bytes, limit: int | None) -> list[tuple[bytes, bytes]]:
        """Pairs under `prefix` as applied here. A range without a small limit may be the whole
        store: it is read in the work executor (one LMDB read transaction, so still one
        consistent view), never on the loop."""
        assert self._sm is not None
        if limit is not None and limit <= SCAN_ON_LOOP_PAIRS_MAX:
            return self._sm.scan(prefix, limit)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._work_executor, self._sm.scan, prefix, limit)

    # --- loop side: leader, status, membership --------------------------------------------------

    async def wait_for_leader(self, timeout_s: float) -> str:
        deadline = Deadline(timeout_s)
        while self._leader_id is None:
            self.raise_if_failed()
            remaining = deadline.remaining_s()
            if remaining <= 0:
                raise UnavailableError(f"no leader was elected within {timeout_s:.2f}s")
            await self._leader_waiters.wait_change(remaining)
        return self._leader_id

    def status(self) -> Status:
        """The status, computed on the loop thread."""
        assert self._core is not None
        core = self._core.status()
        conf = core.conf_state
        members = {
            node_id: self._peers.get(node_id, "") for node_id in (*conf.voters, *conf.learners)
        }
        if self.failure_cause is not None:
            # It serves nothing and has closed its transport: it leads no one, knows no leader.
            role, leader_id, failure = "follower", None, self.failure_message()
        else:
            role = _role_name(core.role, self.node_id in conf.voters)
            leader_id, failure = core.leader_id, None
        return Status(
            node_id=self.node_id,
            role=role,
            term=core.term,
            leader_id=leader_id,
            commit_index=core.commit,
            applied_index=self._applied_index,
            members=members,
            failure=failure,
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

    def redirect_writes(self) -> None:
        """Refuse a client's write on a follower that knows the leader (`NotLeaderError`
        naming it), so clients learn where to write; with no leader known the write waits
        here for one, like the node's own writes."""
        self.raise_if_failed()
        if self._role is not Role.LEADER and self._leader_id is not None:
            raise self.leader_hint()

    def require_leader(self) -> ConsensusCore:
        """The core, if this node leads; else `NotLeaderError` naming the leader."""
        assert self._core is not None
        self.raise_if_failed()
        if self._role is not Role.LEADER:
            raise self.leader_hint()
        return self._core

    def conf_state(self) -> ConfState:
        """The core's configuration (voters and learners) as of now."""
        assert self._core is not None
        return self._core.conf_state

    @property
    def tick_s(self) -> float:
        """The node's tick (`Options.tick_s`)."""
        return self.options.tick_s

    @property
    def leader_id(self) -> str | None:
        """The leader this node knows of, or None."""
        return self._leader_id

    @property
    def is_leader(self) -> bool:
        """Whether this node leads."""
        return self._role is Role.LEADER

    @property
    def members(self) -> Mapping[str, str]:
        """The members this node talks to: node id -> address."""
        return self._peers

    async def wait_leader_change(self, timeout_s: float) -> None:
        """Return at the next change of leader, or after `timeout_s`."""
        await self._leader_waiters.wait_change(timeout_s)

    async def add_member(self, node_id: str, address: str, timeout_s: float) -> None:
        """Loop side of `Node.add_member` (kvstore/node/membership.py)."""
        await membership.add_member(self, node_id, address, timeout_s)

    async def remove_member(self, node_id: str, timeout_s: float) -> None:
        """Loop side of `Node.remove_member` (kvstore/node/membership.py)."""
        await membership.remove_member(self, node_id, timeout_s)

    async def transfer_leadership(self, node_id: str, timeout_s: float) -> None:
        """Loop side of `Node.transfer_leadership` (kvstore/node/membership.py)."""
        await membership.transfer_leadership(self, node_id, timeout_s)

    def _is_member(self, node_id: str) -> bool:
        return node_id in self._peers

    # --- loop side: the Ready loop --------------------------------------------------------------

    def kick(self) -> None:
        """Wake the Ready task: the core may have something to do."""
        self._wake.set()

    async def _run_ticker(self) -> None:
        assert self._core is not None
        interval = self.options.tick_s
        next_tick = time.monotonic() + interval
        while True:
            await asyncio.sleep(max(next_tick - time.monotonic(), 0))
            # After a stall (a paused process) the missed ticks follow in a burst: time did
            # pass, and a leader must not believe its lease is younger than it is.
            next_tick += interval
            self._core.tick()
            if self._unsubmitted and self._leader_id is not None:
                self._retry_unsubmitted()
            self.kick()

    async def _run_ready(self) -> None:
        """The Ready task: wakes on `_kick` (a tick, a proposal, a read) and handles every
        Ready the core has, a parked one first."""
        assert self._core is not None
        core = self._core
        placement = self._fsync_placement
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._ready_busy:
                continue  # cannot happen (inline handling never awaits); kept as a guard
            self._ready_busy = True
            try:
                ready = self._parked_ready
                self._parked_ready = None
                while ready is not None or core.has_ready():
                    if ready is None:
                        ready = core.ready()
                    where = placement.decide(ready)
                    if where is Placement.INLINE:
                        self._handle_ready_now(ready)  # no coroutine for a Ready that never waits
                    else:
                        await self._handle_ready(ready, where)
                    core.advance(ready)
                    ready = None
            except asyncio.CancelledError:
                raise
            except BaseException as error:  # a storage failure: stop serving, never limp on
                self._fail(error)
                return
            finally:
                self._ready_busy = False

    def _run_ready_inline(self) -> None:
        """Handle the core's Readies now, in the caller's callback, when none needs to wait.

        Called right after a peer's message was stepped: going through `_kick` would cost one
        more loop iteration (the Event wakes the Ready task only on the next one) on the path
        of every write, on the follower (APPEND -> fsync -> ack) and on the leader (ack ->
        commit -> apply -> answer). A Ready that must wait (a snapshot to install, an fsync
        that goes to the executor) is parked for the Ready task, which takes it first.
        """
        assert self._core is not None
        core = self._core
        if self._ready_busy or self._parked_ready is not None or self.failure_cause is not None:
            self.kick()
            return
        self._ready_busy = True
        try:
            while core.has_ready():
                ready = core.ready()
                if self._fsync_placement.decide(ready) is not Placement.INLINE:
                    self._parked_ready = ready
                    self.kick()
                    return
                self._handle_ready_now(ready)
                core.advance(ready)
        except BaseException as error:  # a storage failure: stop serving, never limp on
            self._fail(error)
        finally:
            self._ready_busy = False

    def _ready_steps(
        self, ready: Ready, placement: Placement
    ) -> Generator[Awaitable[Any], Any, None]:
        """THE Ready path: every Ready is handled by these steps, in this order (the order is
        the core's contract, see `Ready`). Yields only what must be awaited (a snapshot
        install, an fsync in the sync executor) and gets its result back; with
        `Placement.INLINE` (which `FsyncPlacement.decide` gives only to a Ready without a
        snapshot) it yields nothing, so a callback can run it to the end without awaiting.
        """
        assert self._wal is not None
        if ready.soft_state is not None:
            self._on_soft_state(ready.soft_state.leader_id, ready.soft_state.role)
        if ready.messages:
            self._send(ready.messages)  # before the fsync: thesis section 10.2.1
        if ready.snapshot is not None:
            yield self._install_snapshot(ready.snapshot)
        position = None
        if ready.entries or ready.hard_state is not None:
            position = self._wal.append(ready.entries, ready.hard_state)
        if ready.must_sync:
            if placement is Placement.INLINE:
                elapsed_s = self._timed_sync(position)
            else:
                loop = asyncio.get_running_loop()
                elapsed_s = yield loop.run_in_executor(
                    self._sync_executor, self._timed_sync, position
                )
            # Folded in here, on the loop thread: the average has one owner (THREADS.md).
            self._fsync_placement.record(elapsed_s)
        self._finish_ready(ready)

    def _handle_ready_now(self, ready: Ready) -> None:
        """Run `_ready_steps` for an INLINE Ready to the end, without leaving the loop thread."""
        for _awaitable in self._ready_steps(ready, Placement.INLINE):
            invariant(False, "an inline Ready had something to await")

    async def _handle_ready(self, ready: Ready, placement: Placement) -> None:
        """Run `_ready_steps` for `ready`, awaiting what it yields."""
        steps = self._ready_steps(ready, placement)
        result: Any = None
        while True:
            try:
                awaitable = steps.send(result)
            except StopIteration:
                return
            result = await awaitable

    def _timed_sync(self, position: int | None) -> float:
        """fsync the log (through `position`, or all of it); return how long it took. Runs on
        the loop thread or in the sync executor and touches nothing else."""
        assert self._wal is not None
        started = time.perf_counter()
        if position is None:
            self._wal.sync()
        else:
            self._wal.sync(position)
        return time.perf_counter() - started

    def _finish_ready(self, ready: Ready) -> None:
        """The steps after the fsync: acks, apply, answers."""
        if ready.persisted_messages:
            self._send(ready.persisted_messages)
        if ready.committed_entries:
            self._apply(ready.committed_entries)
        for read_state in ready.read_states:
            read = self._pending_reads.get(read_state.request_ctx)
            if read is not None and not read.done():
                read.set_result(read_state.index)
        for dropped in ready.dropped:
            read = self._pending_reads.get(dropped.context)
            if read is not None:
                if not read.done():
                    read.set_exception(ProposalDroppedError(dropped.reason))
            else:
                self._on_dropped_write(dropped.context)
        if self._applied_index - self._last_checkpoint >= self.options.checkpoint_entries:
            self._start_checkpoint()

    def _on_soft_state(self, leader_id: str | None, role: Role) -> None:
        changed = leader_id != self._leader_id
        self._leader_id = leader_id
        self._role = role
        if changed:
            log.info("node %s: leader is now %s (role %s)", self.node_id, leader_id, role.value)
            self._leader_waiters.notify()
            if leader_id is not None:
                # Writes forwarded to the old leader may be lost, and the new leader may have
                # cut ours from its log: propose them all again (each applies at most once).
                self._repropose_pending()

    def _apply(self, entries: Sequence[Entry]) -> None:
        assert self._sm is not None
        results = self._sm.apply(entries)
        self._applied_index = max(self._applied_index, entries[-1].index)
        if self._pending_writes:
            pending = self._pending_writes
            for entry, result in zip(entries, results, strict=True):
                if entry.type != EntryType.NORMAL or not entry.data:
                    continue
                session = commands.decode_session(entry.data)
                waiter = pending.get(session) if session is not None else None
                if waiter is not None and not waiter.future.done():
                    waiter.future.set_result(result)
                    for waker in waiter.wakers:
                        _wake(waker)
        if any(entry.type == EntryType.CONF_CHANGE for entry in entries):
            self._refresh_members()
        self._applied_waiters.release(self._applied_index)

    def _refresh_members(self) -> None:
        """Follow the configuration: dial new members, forget removed ones.

        An address given to this node in `peers` wins over the one a member was added with
        (members may reach each other through different addresses); founders were bootstrapped
        without one, so for them only the given address exists.
        """
        assert self._sm is not None and self._transport is not None
        conf = self.conf_state()
        present = set(conf.voters) | set(conf.learners)
        if not present:
            return  # a joining node knows no configuration yet: keep what it was given
        # A removed member's incarnation is forgotten: it may come back with new data once it
        # is added again (remove, wipe, add).
        assert self._identity is not None
        self._identity.forget_except(present)
        recorded = self._sm.members()
        peers = {self.node_id: self._peers[self.node_id]}
        for node_id in present:
            address = self._given_peers.get(node_id) or recorded.get(node_id, ("", ""))[0]
            if node_id != self.node_id and address:
                peers[node_id] = address
        if peers != self._peers:
            log.info("node %s: members are now %s", self.node_id, sorted(peers))
            self._peers = peers
            self._transport.set_peers(
                {peer: address for peer, address in peers.items() if peer != self.node_id}
            )

    def _start_checkpoint(self) -> None:
        """Checkpoint beside the Ready loop (LMDB's sync may take long); one at a time."""
        assert self._sm is not None
        if self._checkpoint_task is not None:
            return
        # Read on the loop thread, where entries are applied: index, term and configuration
        # agree, and the sync that follows covers at least this index.
        index, term = self._sm.applied()
        meta = SnapshotMeta(index, term, self._sm.conf_state())
        self._last_checkpoint = index
        self._checkpoint_task = self._spawn(self._checkpoint(meta), "kvstore-checkpoint")

    async def _checkpoint(self, meta: SnapshotMeta) -> None:
        assert self._sm is not None
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._work_executor, self._sm.checkpoint)
            previous, self._checkpoint_meta = self._checkpoint_meta, meta
            # Compact through the checkpoint before this one, so the log keeps at least
            # `checkpoint_entries` entries for followers that are a little behind. The sync
            # executor orders it with the Ready loop's fsyncs and snapshot installs.
            if previous is not None and await loop.run_in_executor(
                self._sync_executor, self._compact_log, previous
            ):
                log.info("node %s: log compacted through %d", self.node_id, previous.index)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # LMDB could not sync, or the log failed
            self._fail(error)
        finally:
            self._checkpoint_task = None

    def _compact_log(self, meta: SnapshotMeta) -> bool:
        """In the sync executor: compact the log through `meta` unless a snapshot covers it."""
        assert self._wal is not None
        if meta.index <= self._wal.snapshot_meta().index:
            return False
        self._wal.compact_through(meta)
        return True

    def _fail_everything(self, reason: str) -> None:
        cause = self.failure_cause  # None when stopping: then there is nothing to chain

        def error(kind: type[KVStoreError], text: str) -> KVStoreError:
            raised = kind(text)
            raised.__cause__ = cause
            return raised

        for pending in self._pending_writes.values():
            if not pending.future.done():
                if pending.proposed:
                    pending.future.set_exception(
                        error(OperationTimeoutError, f"{reason}; the write's outcome is unknown")
                    )
                else:
                    pending.future.set_exception(
                        error(UnavailableError, f"{reason}; the write was not applied")
                    )
        for future in self._pending_reads.values():
            if not future.done():
                future.set_exception(error(UnavailableError, reason))
        self._applied_waiters.fail_all(lambda: error(UnavailableError, reason))
        self._leader_waiters.notify()

    def raise_if_failed(self) -> None:
        if self.failure_cause is not None:
            raise NodeFailedError(self.failure_message()) from self.failure_cause

    # --- loop side: messages --------------------------------------------------------------------

    def _send(self, messages: Iterable[Message]) -> None:
        assert self._transport is not None
        outgoing = []
        for message in messages:
            if message.type == MessageType.SNAPSHOT:
                if message.recipient not in self._outgoing_snapshots:
                    self._outgoing_snapshots[message.recipient] = None
                    self._spawn(
                        self._send_snapshot(message), f"kvstore-snapshot-{message.recipient}"
                    )
                continue
            outgoing.append(message)
        if outgoing:
            self._transport.send(outgoing)

    def _on_message(self, message: Message) -> None:
        assert self._core is not None
        if message.type == MessageType.SNAPSHOT:
            return  # snapshots arrive only through the chunk stream, with their data
        self._core.step(message)
        self._run_ready_inline()

    def _on_unreachable(self, peer_id: str) -> None:
        assert self._core is not None
        self._core.report_unreachable(peer_id)
        if (
            peer_id == self._leader_id
            and self._role is not Role.LEADER
            and self._pending_writes
            and time.monotonic() - self._last_repropose >= self._election_timeout_s
        ):
            # Messages to the leader were dropped, our forwarded writes perhaps among them.
            # At most once per election timeout: a flapping link must not flood the log.
            self._repropose_pending()
        self.kick()

    async def _on_client_connection(self, connection: FramedConnection) -> None:
        await serve_client_connection(
            connection, _ClientBackend(self), max_value_bytes=self.options.max_value_bytes
        )

    # --- loop side: sending a snapshot ----------------------------------------------------------

    async def _send_snapshot(self, message: Message) -> None:
        """Copy LMDB to a file, stream it to the follower with flow control, then report."""
        assert self._sm is not None and self._core is not None
        peer = message.recipient
        path = self.data_dir / "snapshots" / f"out-{peer}-{time.monotonic_ns()}"
        loop = asyncio.get_running_loop()
        success = False
        try:
            meta = await loop.run_in_executor(self._work_executor, self._sm.snapshot, path)
            checksum = await loop.run_in_executor(self._work_executor, file_sha256, path)
            # The copy may be newer than the compaction point the core chose: that is allowed,
            # and the follower's APPEND_RESPONSE tells the core where it really stands.
            message = message._replace(snapshot=meta)
            snapshot_id = f"{self.node_id}-{meta.index}-{meta.term}-{time.monotonic_ns()}"
            with open(path, "rb") as file:
                total = os.fstat(file.fileno()).st_size
                stream = _OutgoingSnapshot(
                    SnapshotSender(
                        snapshot_id,
                        total,
                        chunk_bytes=self.options.snapshot_chunk_bytes,
                        now=time.monotonic(),
                    )
                )
                self._outgoing_snapshots[peer] = stream
                success = await self._stream_snapshot(peer, stream, file, checksum, message)
            if success:
                log.info("node %s: sent snapshot at %d to %s", self.node_id, meta.index, peer)
            else:
                log.warning("node %s: snapshot to %s abandoned", self.node_id, peer)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("node %s: snapshot to %s failed", self.node_id, peer, exc_info=True)
        finally:
            self._outgoing_snapshots.pop(peer, None)
            with contextlib.suppress(OSError):
                path.unlink()
            if self.failure_cause is None:
                self._core.report_snapshot(peer, success)
                self.kick()

    async def _stream_snapshot(
        self,
        peer: str,
        stream: _OutgoingSnapshot,
        file: BinaryIO,
        checksum: bytes,
        message: Message,
    ) -> bool:
        """The asyncio driver of `SnapshotSender` (snapshot_transfer.py): read and send what it
        asks for, wait for acknowledgements, until it reports an outcome. True once the
        receiver reports the snapshot complete and handed to its core."""
        assert self._transport is not None
        transport = self._transport
        sender = stream.sender
        total = sender.total_bytes
        while True:
            stream.event.clear()
            if sender.outcome is not None:
                return sender.outcome
            if self._role is not Role.LEADER or self.failure_cause is not None:
                return False  # deposed: the new leader decides what the follower needs
            sender.begin_round()
            while (action := sender.next_send()) is not None:
                if isinstance(action, SendChunk):
                    data = os.pread(file.fileno(), action.length, action.offset)
                    body = {
                        "id": sender.snapshot_id,
                        "offset": action.offset,
                        "total": total,
                        "data": data,
                    }
                    sender.sent(transport.send_snapshot_chunk(peer, body), len(data))
                else:
                    end = {
                        "id": sender.snapshot_id,
                        "offset": total,
                        "total": total,
                        "data": b"",
                        "checksum": checksum,
                        "message": encode_message(message),
                    }
                    sender.sent(transport.send_snapshot_chunk(peer, end))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.event.wait(), sender.wait_s())
            sender.after_wait(time.monotonic())

    def _on_snapshot_ack(self, peer: str, body: dict[Any, Any]) -> None:
        """An acknowledgement of a snapshot stream this node sends to `peer`."""
        stream = self._outgoing_snapshots.get(peer)
        if stream is None or body.get("id") != stream.sender.snapshot_id:
            return  # a late answer to an earlier stream
        stream.sender.on_ack(body.get("status"), body.get("next_offset"))
        stream.event.set()

    # --- loop side: receiving a snapshot --------------------------------------------------------

    def _ack_snapshot(self, peer: str, ack: Ack | None) -> None:
        if ack is None:
            return
        assert self._transport is not None
        # Best effort: a lost ack makes the sender resend, which the writer takes in its stride.
        self._transport.send_snapshot_chunk(peer, ack.body())

    def _on_snapshot_chunk(self, peer: str, body: object) -> None:
        """A frame of a snapshot stream: a chunk or end from a leader, or an acknowledgement
        from a follower we stream to. Reassembles and acknowledges chunks (the decisions are
        `SnapshotReceiverState`'s); the end frame starts verification, after which the
        SNAPSHOT message is stepped into the core."""
        receiver = self._snapshot_receivers.get(peer)
        if receiver is None:
            # Frames come only over authenticated member links: one entry per member.
            receiver = self._snapshot_receivers[peer] = SnapshotReceiverState()
        try:
            if not isinstance(body, dict):
                raise ValueError("snapshot frame is not a map")
            if "status" in body:
                self._on_snapshot_ack(peer, body)
                return
            chunk = parse_chunk(body)
            repeat = receiver.already_done(chunk.snapshot_id, chunk.total_bytes)
            if repeat is not None:
                self._ack_snapshot(peer, repeat)  # the sender missed our "done": say it again
                return
            writer = self._incoming_snapshots.get(peer)
            if receiver.starts_new_stream(chunk.snapshot_id) or writer is None:
                if writer is not None:
                    writer.abort()  # the leader started over: drop the old stream
                    del self._incoming_snapshots[peer]
                writer = SnapshotWriter(
                    self.data_dir / "snapshots",
                    chunk.snapshot_id,
                    chunk.total_bytes,
                    # A compacted copy of a store at its quota, B-tree pages included.
                    total_bytes_max=max(
                        self.options.map_size_bytes, 2 * self.options.quota_bytes + (64 << 20)
                    ),
                )
                self._incoming_snapshots[peer] = writer
            if chunk.data:
                try:
                    next_offset = writer.write_chunk(chunk.offset, chunk.data)
                except SnapshotTransferError as error:
                    # Chunks after a lost one all find the same gap: one report is enough,
                    # the sender rewinds once (and its stall timer covers a lost report).
                    self._ack_snapshot(peer, receiver.gap(error.next_offset))
                    return
                self._ack_snapshot(peer, receiver.stored(next_offset))
            if not chunk.end:
                return
            if writer.next_offset != writer.total_bytes:
                self._ack_snapshot(peer, receiver.gap(writer.next_offset))
                return
            del self._incoming_snapshots[peer]
            receiver.complete()
            self._spawn(self._finish_snapshot(peer, writer, body), "kvstore-snapshot-finish")
        except Exception as error:
            _log_remote_error(f"node {self.node_id}: bad snapshot frame from {peer}", error)
            dropped = self._incoming_snapshots.pop(peer, None)
            if dropped is not None:
                dropped.abort()
            self._ack_snapshot(peer, receiver.dropped())

    async def _finish_snapshot(
        self, peer: str, writer: SnapshotWriter, body: dict[Any, Any]
    ) -> None:
        """Verify a complete snapshot (off the loop), keep it, step its SNAPSHOT message."""
        assert self._core is not None
        snapshot_id = writer.snapshot_id
        loop = asyncio.get_running_loop()
        try:
            checksum = body["checksum"]
            if not isinstance(checksum, bytes):
                raise ValueError("snapshot checksum is not bytes")
            path = await loop.run_in_executor(self._work_executor, writer.finish, checksum)
        except asyncio.CancelledError:
            writer.close()
            raise
        except Exception as error:
            _log_remote_error(f"node {self.node_id}: snapshot from {peer} failed", error)
            writer.abort()
            self._ack_snapshot(peer, Ack(snapshot_id, 0, ACK_FAILED))
            return
        try:
            message = decode_message(body["message"])
            if message.snapshot is None or message.sender != peer:
                raise ValueError("the snapshot message does not match its sender")
        except Exception as error:
            _log_remote_error(f"node {self.node_id}: bad snapshot message from {peer}", error)
            with contextlib.suppress(OSError):
                path.unlink()
            self._ack_snapshot(peer, Ack(snapshot_id, 0, ACK_FAILED))
            return
        self._keep_received_snapshot((message.snapshot.index, message.snapshot.term), path)
        receiver = self._snapshot_receivers.get(peer)
        if receiver is not None:
            receiver.finished(snapshot_id)
        self._core.step(message)
        self.kick()
        self._ack_snapshot(peer, Ack(snapshot_id, writer.total_bytes, ACK_DONE))

    def _keep_received_snapshot(self, key: tuple[int, int], path: Path) -> None:
        """Remember a verified snapshot file for `_install_snapshot`; keep the newest few.

        The core installs the newest snapshot it accepted, so dropping the oldest is safe.
        """
        received = self._received_snapshots
        old = received.pop(key, None)
        if old is not None and old != path:
            with contextlib.suppress(OSError):
                old.unlink()
        received[key] = path
        while len(received) > RECEIVED_SNAPSHOTS_MAX:
            oldest = min(received)
            with contextlib.suppress(OSError):
                received.pop(oldest).unlink()

    async def _install_snapshot(self, meta: SnapshotMeta) -> None:
        assert self._sm is not None and self._wal is not None
        path = self._received_snapshots.pop((meta.index, meta.term), None)
        invariant(path is not None, f"the core installs snapshot {meta.index} never received")
        assert path is not None
        loop = asyncio.get_running_loop()
        restored = await loop.run_in_executor(self._work_executor, self._sm.restore, path)
        invariant(
            (restored.index, restored.term) == (meta.index, meta.term),
            f"snapshot file holds {restored.index}/{restored.term}, not {meta.index}/{meta.term}",
        )
        # LMDB first, then the log: a crash in between leaves LMDB ahead of the log, which the
        # restart handles (entries at or below the applied index are skipped).
        await loop.run_in_executor(self._sync_executor, self._wal.install_snapshot, meta)
        self._applied_index = meta.index
        self._last_checkpoint = meta.index
        self._checkpoint_meta = meta
        for stale in [path, *self._received_snapshots.values()]:
            with contextlib.suppress(OSError):
                stale.unlink()
        self._received_snapshots.clear()
        self._refresh_members()
        self._applied_waiters.release(self._applied_index)
        log.info("node %s: installed snapshot at %d", self.node_id, meta.index)


class _ClientBackend:
    """Serves `kvstore.Client` requests from this node (the service's `ServiceBackend`).

    Writes sent to a follower are redirected to the leader when one is known, so clients learn
    where to write; with no leader known they wait here for one, like the node's own writes.
    """

    def __init__(self, node: NodeRuntime) -> None:
        self._node = node

    def _redirect_writes(self) -> None:
        self._node.redirect_writes()

    async def register_session(self, *, timeout_s: float) -> int:
        self._redirect_writes()
        return await self._node.register_session(timeout_s)

    async def _propose(self, data: bytes, session: tuple[int, int], timeout_s: float) -> object:
        try:
            return await self._node.propose_command(data, session, timeout_s)
        except _NeverAppliedError:
            raise  # the client may send it again under a new session
        except SessionExpiredError as error:
            # This node proposed it more than once: an earlier copy may have run unseen (say,
            # inside a snapshot). The client must not resend it under a new session, so report
            # the outcome as unknown; its retry under the same session gets the plain refusal.
            raise OperationTimeoutError(f"{error}; the outcome is unknown") from error

    async def put(
        self, key: bytes, value: bytes, *, session: tuple[int, int], timeout_s: float
    ) -> None:
        self._redirect_writes()
        data = commands.encode_put(*session, key, value, self._node.stamp_ms())
        await self._propose(data, session, timeout_s)

    async def delete(self, key: bytes, *, session: tuple[int, int], timeout_s: float) -> bool:
        self._redirect_writes()
        data = commands.encode_delete(*session, key, self._node.stamp_ms())
        return bool(await self._propose(data, session, timeout_s))

    async def cas(
        self,
        key: bytes,
        expected: bytes | None,
        new: bytes | None,
        *,
        session: tuple[int, int],
        timeout_s: float,
    ) -> bool:
        self._redirect_writes()
        data = commands.encode_cas(*session, key, expected, new, self._node.stamp_ms())
        return bool(await self._propose(data, session, timeout_s))

    async def get(self, key: bytes, *, consistency: str, timeout_s: float) -> bytes | None:
        node = self._node
        node.raise_if_failed()
        if consistency != "stale":
            await node.read_barrier(consistency, timeout_s)
        return node.lookup(key)

    async def scan(
        self, prefix: bytes, *, limit: int | None, consistency: str, timeout_s: float
    ) -> list[tuple[bytes, bytes]]:
        node = self._node
        node.raise_if_failed()
        if consistency != "stale":
            await node.read_barrier(consistency, timeout_s)
        return await node.scan(prefix, limit)

    def status(self) -> Status:
        return self._node.status()

    async def add_member(self, node_id: str, address: str, *, timeout_s: float) -> None:
        check_address(address)
        await self._node.add_member(node_id, address, timeout_s)

    async def remove_member(self, node_id: str, *, timeout_s: float) -> None:
        await self._node.remove_member(node_id, timeout_s)

    async def transfer_leadership(self, node_id: str, *, timeout_s: float) -> None:
        await self._node.transfer_leadership(node_id, timeout_s)


_REMOTE_ERRORS = (KeyError, TypeError, ValueError, OSError, KVStoreError)
"""What garbage from a peer (or a full disk) raises while handling a snapshot frame."""


_STORAGE_FULL = commands.ResultCode.STORAGE_FULL


def _storage_full(sm: StateMachine | None) -> StorageFullError:
    """The error for a write refused at the quota (nothing was written)."""
    quota = f" of {sm.quota_bytes} bytes" if sm is not None else ""
    return StorageFullError(
        f"the store is at its quota{quota}: the write was refused (not applied); delete keys "
        "to make room"
    )


def _log_remote_error(what: str, error: Exception) -> None:
    # A peer's garbage is an operating condition: one line. Anything else is a bug: the trace.
    if isinstance(error, _REMOTE_ERRORS):
        log.warning("%s: %r", what, error)
    else:
        log.error("%s", what, exc_info=error)


class _EmbeddedSession:
    """The client session of one application thread's writes (registered on first use)."""

    __slots__ = ("last_seq", "session_id")

    def __init__(self) -> None:
        self.session_id: int | None = None
        self.last_seq = 0


class _NeverAppliedError(SessionExpiredError):
    """A write refused because its session expired, proven never applied: this node proposed
    one copy of it and that copy was the one refused. It may be sent again under a new
    session."""


def _lease_id_in(reason: str) -> int:
    # The state machine names the lease in its reason ("lease N is not held ..."); 0 if not.
    words = reason.split()
    return int(words[1]) if len(words) > 1 and words[0] == "lease" and words[1].isdigit() else 0


def _rejection_error(rejected: commands.CommandRejected, submissions: int) -> KVStoreError:
    """The error a caller gets for a command the state machine refused (none was applied)."""
    code = rejected.code
    if code == commands.ResultCode.SESSION_EXPIRED:
        if submissions == 1:
            return _NeverAppliedError(rejected.reason)
        return SessionExpiredError(
            f"{rejected.reason}; an earlier copy of it may have been applied: outcome unknown"
        )
    if code == commands.ResultCode.SEQ_TOO_FAR:
        return InvalidArgumentError(f"the write was not applied: {rejected.reason}")
    if code == commands.ResultCode.LEASE_NOT_FOUND:
        return LeaseNotFoundError(_lease_id_in(rejected.reason), rejected.reason)
    # SESSIONS_FULL: try later; STALE: the session moved more than a window past this seq, so
    # the state machine cannot tell whether it ran; MALFORMED: the data was not a command.
    return UnavailableError(f"the write was not applied: {rejected.reason}")


__all__ = ["NodeFailedError", "NodeRuntime", "describe_failure"]

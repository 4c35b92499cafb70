"""`kvstore.Node`: the public API of one member.

Argument checks, the lifecycle (`start`/`stop`), and the calls that hop onto the node's loop,
where `NodeRuntime` (runtime.py) does the work. Stale reads, and the LMDB read after a
linearizable read's barrier, run in the caller's own thread (THREADS.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kvstore.errors import (
    InvalidArgumentError,
    KVStoreError,
    OperationTimeoutError,
    UnavailableError,
)
from kvstore.eventloop import new_event_loop
from kvstore.node.membership import check_address, check_distinct_addresses
from kvstore.node.runtime import (
    NodeFailedError,
    NodeRuntime,
    _EmbeddedSession,
    describe_failure,
)
from kvstore.options import (
    CONSISTENCY_LEVELS,
    KEY_BYTES_MAX,
    TIMEOUT_S_MAX,
    Consistency,
    Options,
    Status,
    check_consistency,
    check_key,
    check_limit,
    check_optional_value,
    check_timeout,
    check_value,
)
from kvstore.storage import commands
from kvstore.storage.state_machine import StateMachine
from kvstore.transport.tls import TLSConfig, check_own_certificate

T = TypeVar("T")

LOOP_GRACE_S = 1.0
"""Extra time a synchronous call waits for the loop beyond the operation's own timeout."""


async def _as_coroutine(function: Callable[[], T]) -> T:
    return function()


class Node:
    """One member of a kvstore cluster, running inside this process.

    `peers` maps node id -> "host:port" for every voting member, this node included; this node
    listens on its own entry (peers and clients share that address) and dials each peer at the
    address given here (members added later are dialled at the address they were added with,
    unless `peers` names them too). With `join=True` the node starts with no configuration and
    waits for an existing cluster to add it (`add_member` on the leader). Use
    `start()`/`stop()` or `with Node(...) as node:`.

    `secret` turns on the shared-secret mode: members prove it, and every frame after the
    handshake is authenticated (not encrypted). Clients prove `client_secret` when it is given
    (`kvstore.Client(secret=client_secret)`), else `secret`; a connection that proved the client
    secret can never send peer messages, and with separate secrets a client cannot pose as a
    member.

    After a storage failure (a failed write or fsync of the redo log) the node stops serving:
    `failure` holds a `NodeFailedError` naming the cause, `status().failure` says it, every
    other call raises it (an `UnavailableError`); `stop()` still works.

    The data directory carries the member's identity (`kvstore.identity`): a node started on a
    directory of another member id is refused, and peers refuse each other when they belong to
    other clusters, when a second process claims a connected member's id, or when a member
    comes back with wiped data (`Options.cluster_name` names the cluster at its creation).

    `tls` (a `kvstore.TLSConfig` holding this member's certificate, which must name member
    `node_id`) makes every peer and client connection mutual TLS; `secret` is the shared-secret
    mode instead. Giving both raises `InvalidArgumentError`.
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
        tls: TLSConfig | None = None,
        client_secret: bytes | None = None,
    ) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise InvalidArgumentError(f"node_id must be a non-empty str, got {node_id!r}")
        if not isinstance(data_dir, str | os.PathLike):
            raise InvalidArgumentError(f"data_dir must be a path, got {data_dir!r}")
        if not isinstance(peers, Mapping) or not peers:
            raise InvalidArgumentError("peers must map every member's node id to host:port")
        for peer_id, address in peers.items():
            if not isinstance(peer_id, str) or not peer_id:
                raise InvalidArgumentError(f"peer id must be a non-empty str, got {peer_id!r}")
            check_address(address)
        if node_id not in peers:
            raise InvalidArgumentError(f"peers must include this node's own id {node_id!r}")
        check_distinct_addresses(peers)
        if secret is not None and (not isinstance(secret, bytes) or not secret):
            raise InvalidArgumentError("secret must be non-empty bytes or None")
        # --- mutual TLS ---
        if tls is not None:
            if not isinstance(tls, TLSConfig):
                raise InvalidArgumentError(f"tls must be a kvstore.TLSConfig, got {tls!r}")
            if secret is not None:
                raise InvalidArgumentError("give either tls or secret, not both")
            check_own_certificate(tls, node_id)
        self._tls = tls
        # --- secret: members prove `secret`; clients prove `client_secret` (else `secret`) ---
        if client_secret is not None and (
            not isinstance(client_secret, bytes) or not client_secret
        ):
            raise InvalidArgumentError("client_secret must be non-empty bytes or None")
        if client_secret is not None and secret is None:
            raise InvalidArgumentError("client_secret needs a member secret (secret=)")
        if options is not None and not isinstance(options, Options):
            raise InvalidArgumentError(f"options must be an Options, got {options!r}")
        self.options = options or Options()
        self.options.validate()
        self.node_id = node_id
        self.data_dir = Path(data_dir)
        self._thread_sessions = threading.local()
        self._state = "new"
        self._lifecycle = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._state_machine: StateMachine | None = None
        """LMDB, for reads in the caller's thread (set once by `start()`)."""
        self._runtime = NodeRuntime(
            node_id,
            self.data_dir,
            peers,
            options=self.options,
            secret=secret,
            client_secret=client_secret,
            tls=tls,
            join=join,
        )
        """Everything on the loop: the core, storage, transport, waiters (runtime.py)."""

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Node:
        """Open the data directory, recover, start listening and join the cluster."""
        with self._lifecycle:
            if self._state != "new":
                raise KVStoreError(f"node {self.node_id} was already started")
            self._state = "starting"
            try:
                self._runtime.open_storage()
                self._state_machine = self._runtime.state_machine
                self._loop = new_event_loop()  # uvloop when installed: kvstore.eventloop
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name=f"kvstore-{self.node_id}", daemon=True
                )
                self._thread.start()
                self._run_on_loop(self._runtime.start(), timeout_s=30.0)
            except BaseException:
                self._shutdown()
                self._state = "stopped"
                raise
            self._state = "running"
        return self

    def stop(self) -> None:
        """Stop serving and close everything; safe to call twice.

        Waiting calls fail: a write that was already proposed with `OperationTimeoutError` (it
        may still be committed by the others), anything else with `UnavailableError`.
        """
        with self._lifecycle:
            if self._state in ("new", "stopped"):
                self._state = "stopped"
                return
            self._state = "stopping"
            self._runtime.stopping = True
            self._shutdown()
            self._state = "stopped"

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """The "host:port" this node listens on (its entry in `peers`, port 0 resolved)."""
        return self._runtime.address

    # --- identity (kvstore/identity.py) ----------------------------------------------------------

    @property
    def cluster_id(self) -> str | None:
        """The id of the cluster this member belongs to (None until a joining member learns it,
        or before `start()`)."""
        return self._runtime.cluster_id

    @property
    def incarnation(self) -> str | None:
        """This member's incarnation: random, minted with its data directory (None before
        `start()`). Peers refuse the same id coming back with another one (wiped data)."""
        return self._runtime.incarnation

    def _shutdown(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runtime.stop(), loop).result(10.0)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10.0)
        if loop is not None and not loop.is_running():
            loop.close()
        self._runtime.close()

    # --- failure ------------------------------------------------------------------------------

    @property
    def failure(self) -> NodeFailedError | None:
        """Why this node stopped serving (its cause chained as `__cause__`), or None.

        Set once, by a storage failure; from then on every call raises an error like this one
        and `status().failure` names it. `kvstore serve` exits non-zero when it is set."""
        runtime = self._runtime
        if runtime.failure_cause is None:
            return None
        error = NodeFailedError(runtime.failure_message())
        error.__cause__ = runtime.failure_cause
        return error

    # --- calling into the loop ------------------------------------------------------------------

    def _run_on_loop(self, coro: Coroutine[Any, Any, T], *, timeout_s: float) -> T:
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            raise UnavailableError(f"node {self.node_id} is not running")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        # Wait first, then take the result: `concurrent.futures.TimeoutError` is the builtin
        # `TimeoutError`, so catching it around `result()` would also swallow the call's own
        # `OperationTimeoutError` (and its message saying whether the outcome is known).
        done, _ = concurrent.futures.wait((future,), timeout_s + LOOP_GRACE_S)
        if not done:
            future.cancel()
            raise OperationTimeoutError(
                f"no answer from node {self.node_id} within {timeout_s:.2f}s"
            )
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise UnavailableError(f"node {self.node_id} stopped during the call") from None

    def _check_running(self) -> None:
        if self._runtime.failure_cause is not None:
            raise NodeFailedError(self._runtime.failure_message()) from self._runtime.failure_cause
        if self._state != "running":
            raise UnavailableError(f"node {self.node_id} is not running (state: {self._state})")

    # --- public API -----------------------------------------------------------------------------

    def wait_for_leader(self, timeout_s: float = 10.0) -> str:
        """Block until some member is known as leader; return its node id."""
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        return self._run_on_loop(self._runtime.wait_for_leader(timeout_s), timeout_s=timeout_s)

    def put(self, key: bytes, value: bytes, *, timeout_s: float = 5.0) -> None:
        """Write `value` under `key`; returns once committed and applied here."""
        check_key(key)
        check_value(value, self.options.max_value_bytes)
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        self._run_on_loop(
            self._runtime.session_write(
                self._thread_session(),
                lambda sid, seq, stamp: commands.encode_put(sid, seq, key, value, stamp),
                timeout_s,
            ),
            timeout_s=timeout_s,
        )

    def delete(self, key: bytes, *, timeout_s: float = 5.0) -> bool:
        """Delete `key`; True if it existed."""
        check_key(key)
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        result = self._run_on_loop(
            self._runtime.session_write(
                self._thread_session(),
                lambda sid, seq, stamp: commands.encode_delete(sid, seq, key, stamp),
                timeout_s,
            ),
            timeout_s=timeout_s,
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
        result = self._run_on_loop(
            self._runtime.session_write(
                self._thread_session(),
                lambda sid, seq, stamp: commands.encode_cas(sid, seq, key, expected, new, stamp),
                timeout_s,
            ),
            timeout_s=timeout_s,
        )
        return bool(result)

    def get(
        self, key: bytes, *, consistency: Consistency = "linearizable", timeout_s: float = 5.0
    ) -> bytes | None:
        """Read `key`. Stale reads never leave this thread; the others wait for a read index."""
        # The same checks in the same order as ever, with the common case inline: an in-process
        # stale read is a few hundred nanoseconds of LMDB, and each helper call costs about a
        # tenth of that (the check_* functions run only to raise, or for unusual types).
        if type(key) is not bytes or not 0 < len(key) <= KEY_BYTES_MAX:
            check_key(key)
        if consistency not in CONSISTENCY_LEVELS:
            check_consistency(consistency)
        if type(timeout_s) is not float or not 0 < timeout_s <= TIMEOUT_S_MAX:
            timeout_s = check_timeout(timeout_s)
        if self._runtime.failure_cause is not None or self._state != "running":
            self._check_running()
        if consistency != "stale":
            self._run_on_loop(
                self._runtime.read_barrier(consistency, timeout_s), timeout_s=timeout_s
            )
        sm = self._state_machine
        assert sm is not None
        return sm.lookup(key)

    def scan(
        self,
        prefix: bytes = b"",
        *,
        limit: int | None = None,
        consistency: Consistency = "linearizable",
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
            self._run_on_loop(
                self._runtime.read_barrier(consistency, timeout_s), timeout_s=timeout_s
            )
        return self._runtime.state_machine.scan(prefix, limit)

    def status(self) -> Status:
        """This member's role, term, leader, commit and applied indices, and the members.

        `role` is "learner" for any member that may not vote: a learner, a node started with
        `join=True` that was not added yet (its `members` is empty), or a removed member.
        After a storage failure `failure` names it (the role is then "follower" and no leader
        is known); every other call raises `NodeFailedError`.
        """
        if self._runtime.failure_cause is None or self._state != "running":
            self._check_running()
        return self._run_on_loop(_as_coroutine(self._runtime.status), timeout_s=5.0)

    def add_member(self, node_id: str, address: str, *, timeout_s: float = 30.0) -> None:
        """Add a member: it joins as a learner and is promoted to voter once caught up.

        Call on the leader; start the new node with `join=True` first. If it does not catch up
        within `timeout_s` it stays a learner (`OperationTimeoutError`); calling again resumes
        from there. Adding a voter again does nothing (its address is not changed).
        """
        if not isinstance(node_id, str) or not node_id:
            raise InvalidArgumentError(f"node_id must be a non-empty str, got {node_id!r}")
        check_address(address)
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        self._run_on_loop(
            self._runtime.add_member(node_id, address, timeout_s), timeout_s=timeout_s
        )

    def remove_member(self, node_id: str, *, timeout_s: float = 10.0) -> None:
        """Remove a voter or learner (the leader itself included). Call on the leader."""
        if not isinstance(node_id, str) or not node_id:
            raise InvalidArgumentError(f"node_id must be a non-empty str, got {node_id!r}")
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        self._run_on_loop(self._runtime.remove_member(node_id, timeout_s), timeout_s=timeout_s)

    def transfer_leadership(self, node_id: str, *, timeout_s: float = 10.0) -> None:
        """Hand leadership to `node_id`; returns once it leads. Call on the leader."""
        if not isinstance(node_id, str) or not node_id:
            raise InvalidArgumentError(f"node_id must be a non-empty str, got {node_id!r}")
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        self._run_on_loop(
            self._runtime.transfer_leadership(node_id, timeout_s), timeout_s=timeout_s
        )

    def _thread_session(self) -> _EmbeddedSession:
        # One session per application thread: a thread has one write in flight at a time, so
        # its sequence numbers commit in order and never fall out of the session's window.
        local = self._thread_sessions
        session: _EmbeddedSession | None = getattr(local, "session", None)
        if session is None:
            session = local.session = _EmbeddedSession()
        return session


__all__ = ["LOOP_GRACE_S", "Node", "NodeFailedError", "describe_failure"]

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
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kvstore.coordination import (
    Compare,
    KeyValue,
    Lease,
    Op,
    RangeResult,
    TxnResult,
    check_lease_id,
    check_lease_ttl,
    check_range_limit,
    check_revision,
    check_txn,
    normalize_range,
)
from kvstore.errors import (
    InvalidArgumentError,
    KVStoreError,
    OperationTimeoutError,
    UnavailableError,
)
from kvstore.eventloop import new_event_loop
from kvstore.node import coordination
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

    def put(
        self, key: bytes, value: bytes, *, lease: int | None = None, timeout_s: float = 5.0
    ) -> None:
        """Write `value` under `key`; returns once committed and applied here.

        With `lease` (a lease id from `grant`) the key is attached to that lease and deleted
        with it; `LeaseNotFoundError` (nothing written) if the lease is not held."""
        check_key(key)
        check_value(value, self.options.max_value_bytes)
        if lease is not None:
            check_lease_id(lease)
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        if lease is not None:
            # A put with a lease travels as a one-op TXN (commands.py, "Leases").
            self._run_on_loop(
                self._runtime.session_write(
                    self._thread_session(),
                    lambda sid, seq, stamp: commands.encode_txn(
                        sid, seq, (), (commands.txn_put(key, value, lease),), (), stamp
                    ),
                    timeout_s,
                ),
                timeout_s=timeout_s,
            )
            return
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
        return self._read_state(consistency, timeout_s).scan(prefix, limit)

    # --- coordination (issue 13; DESIGN.md §2b) ------------------------------------------------

    def _read_state(self, consistency: Consistency, timeout_s: float) -> StateMachine:
        """Wait for the read barrier `consistency` asks for; return LMDB to read in this
        thread (as `get`)."""
        self._check_running()
        if consistency != "stale":
            self._run_on_loop(
                self._runtime.read_barrier(consistency, timeout_s), timeout_s=timeout_s
            )
        sm = self._state_machine
        assert sm is not None
        return sm

    def get_kv(
        self,
        key: bytes,
        *,
        consistency: Consistency = "linearizable",
        revision: int | None = None,
        timeout_s: float = 5.0,
    ) -> KeyValue | None:
        """`key` with its metadata (`kvstore.KeyValue`), or None if absent; at `revision` (a
        past revision still held in history) when given, else the latest.

        Raises `CompactedError` for a revision already compacted, `InvalidArgumentError` for
        one after the store's revision."""
        check_key(key)
        consistency = check_consistency(consistency)
        if revision is not None:
            check_revision(revision)
        timeout_s = check_timeout(timeout_s)
        kv = self._read_state(consistency, timeout_s).get_kv(key, revision)
        return None if kv is None else coordination.key_value(kv)

    def range(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        prefix: bool = False,
        limit: int | None = None,
        revision: int | None = None,
        keys_only: bool = False,
        count_only: bool = False,
        consistency: Consistency = "linearizable",
        timeout_s: float = 5.0,
    ) -> RangeResult:
        """One page of the keys in `[start, end)` (`end` None: just `start`; `prefix=True`:
        every key starting with `start`), sorted, at most `limit` of them, at `revision` (None:
        the latest). `more` says whether matching keys follow (ask again from the last key +
        b"\\0" at the result's `revision`); `count` counts every match. `keys_only` leaves
        values empty, `count_only` returns no kvs.

        Raises `CompactedError` for a revision already compacted."""
        start, stop = normalize_range(start, end, prefix)
        limit = check_range_limit(limit)
        if revision is not None:
            check_revision(revision)
        for name, flag in (("keys_only", keys_only), ("count_only", count_only)):
            if not isinstance(flag, bool):
                raise InvalidArgumentError(f"{name} must be True or False, got {flag!r:.60}")
        consistency = check_consistency(consistency)
        timeout_s = check_timeout(timeout_s)
        page = self._read_state(consistency, timeout_s).range(
            start,
            stop,
            limit=limit,
            revision=revision,
            keys_only=keys_only,
            count_only=count_only,
        )
        return coordination.range_result(page)

    def scan_iter(
        self,
        prefix: bytes = b"",
        *,
        page_size: int = 1000,
        consistency: Consistency = "linearizable",
    ) -> Iterator[KeyValue]:
        """Every key starting with `prefix`, sorted, as `KeyValue`s, all at one revision (the
        one the first page read), read `page_size` keys at a time: constant memory for any
        number of keys. The arguments are checked (and the read barrier taken) at the call;
        the pages are read as the iterator advances. Raises `CompactedError` if the history
        is compacted past that revision before the last page is read."""
        if not isinstance(prefix, bytes):
            raise InvalidArgumentError(f"prefix must be bytes, got {type(prefix).__name__}")
        normalize_range(prefix, None, True)
        page_size = check_limit(page_size)  # type: ignore[assignment]  # None is refused next
        if page_size is None:
            raise InvalidArgumentError("page_size must be an int >= 1, got None")
        consistency = check_consistency(consistency)
        sm = self._read_state(consistency, 5.0)
        return (
            coordination.key_value(kv)
            for kv in sm.range_iter(prefix, prefix=True, page_size=page_size)
        )

    def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        *,
        timeout_s: float = 5.0,
    ) -> TxnResult:
        """If every compare holds, run the `success` ops, else the `failure` ops: atomically,
        at one revision (none if the branch only reads), exactly once like any write. Returns
        which branch ran, one result per op (`kvstore.Op` lists their types) and the revision.

        Raises `InvalidArgumentError` (nothing written) for bad compares or ops, too many of
        them or too many bytes; `LeaseNotFoundError` (nothing written) if a put names a lease
        that is not held."""
        compare, success, failure = check_txn(compare, success, failure)
        value_bytes_max = self.options.max_value_bytes
        compares = coordination.txn_compares(compare)
        success_ops = coordination.txn_ops(success, value_bytes_max)
        failure_ops = coordination.txn_ops(failure, value_bytes_max)
        timeout_s = check_timeout(timeout_s)
        # Encode once here for its checks (the byte limit): a refusal must come before a
        # session is registered or a sequence number spent.
        commands.encode_txn(1, 1, compares, success_ops, failure_ops)
        self._check_running()
        outcome = self._run_on_loop(
            self._runtime.session_write(
                self._thread_session(),
                lambda sid, seq, stamp: commands.encode_txn(
                    sid, seq, compares, success_ops, failure_ops, stamp
                ),
                timeout_s,
            ),
            timeout_s=timeout_s,
        )
        sm = self._state_machine
        assert sm is not None
        revision_now = 0 if isinstance(outcome, commands.TxnOutcome) else sm.revision()
        return coordination.txn_result(outcome, revision_now)

    def grant(self, ttl_s: float, *, timeout_s: float = 5.0) -> Lease:
        """Grant a lease of `ttl_s` seconds (0 < ttl_s <= a day); keys put with its id are
        deleted when it is revoked or expires."""
        ttl_s = check_lease_ttl(ttl_s)
        timeout_s = check_timeout(timeout_s)
        ttl_ms = max(1, round(ttl_s * 1000))
        self._check_running()
        granted = self._run_on_loop(
            self._runtime.session_write(
                self._thread_session(),
                lambda sid, seq, stamp: commands.encode_lease_grant(sid, seq, ttl_ms, 0, stamp),
                timeout_s,
            ),
            timeout_s=timeout_s,
        )
        if not isinstance(granted, commands.LeaseGranted):
            # A retried grant answered from its session's window: the id is not kept there.
            raise UnavailableError("the lease was granted but its id was lost; grant another")
        return Lease(granted.lease_id, ttl_s)

    def revoke(self, lease_id: int, *, timeout_s: float = 5.0) -> None:
        """Revoke a lease and delete its keys (all at one revision). `LeaseNotFoundError` if
        it is not held (never granted, revoked or expired)."""
        check_lease_id(lease_id)
        timeout_s = check_timeout(timeout_s)
        self._check_running()
        self._run_on_loop(
            self._runtime.session_write(
                self._thread_session(),
                lambda sid, seq, stamp: commands.encode_lease_revoke(sid, seq, lease_id, stamp),
                timeout_s,
            ),
            timeout_s=timeout_s,
        )

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

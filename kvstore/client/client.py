"""`kvstore.Client`: the blocking client, for threads.

It owns a private asyncio loop on a daemon thread and runs the asyncio client
(`kvstore.client.aio_client.Client`) there; each call hands its coroutine to that loop with
`asyncio.run_coroutine_threadsafe` and waits. Any number of application threads may share one
`Client`: their calls meet on the loop and share its pipelined connections.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from kvstore.client import aio_client
from kvstore.client.aio_client import Connector
from kvstore.client.balancer import Balancer, BalancerName
from kvstore.closing import ClosingContext
from kvstore.errors import OperationTimeoutError, UnavailableError
from kvstore.eventloop import new_event_loop
from kvstore.options import Consistency, Status, check_timeout
from kvstore.transport.tls import TLSConfig

__all__ = ["Client"]

_T = TypeVar("_T")

_WAIT_GRACE_S = 5.0
"""How long past a call's own timeout a thread waits for the loop before it gives up (the loop
enforces every timeout itself; this only guards against a wedged loop)."""


class Client(ClosingContext):
    """A client of a kvstore cluster; thread-safe. Use `close()` or a `with` block.

    `endpoints` lists members as "host:port", or maps each to a weight for the "weighted"
    balancer. `balancer` is "weighted", "round_robin", "random", "latency" or a `Balancer`;
    it spreads reads (writes always go to the leader). `secret` is the client secret (the
    node's `client_secret`, or its `secret` if it has none): it authenticates every connection
    and every frame on it.
    `tls` (a `kvstore.TLSConfig`) makes every connection mutual TLS instead (not both).
    `timeout_s` is the default of `scan()` and `status()` and the connect timeout. See
    `kvstore.client.aio_client.Client` for the other keywords.
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
        # Built (and validated) here, in the caller's thread: it needs no running loop.
        self._client = aio_client.Client(
            endpoints,
            balancer=balancer,
            secret=secret,
            timeout_s=timeout_s,
            max_value_bytes=max_value_bytes,
            max_inflight=max_inflight,
            frame_bytes_max=frame_bytes_max,
            connect=connect,
            rng=rng,
            tls=tls,
        )
        self._timeout_s = check_timeout(timeout_s)
        self._lock = threading.Lock()
        self._closed = False
        # Calls in progress (one per waiting thread), so close() can release them all.
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._loop = new_event_loop()  # uvloop when installed: see kvstore.eventloop
        self._thread = threading.Thread(target=self._run_loop, name="kvstore-client", daemon=True)
        self._thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, _T], timeout_s: float) -> _T:
        with self._lock:
            if self._closed:
                coro.close()
                raise UnavailableError("the client is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._futures.add(future)
        try:
            return future.result(timeout=timeout_s + _WAIT_GRACE_S)
        except concurrent.futures.TimeoutError:
            if future.done() and not future.cancelled():
                raise  # the call's own OperationTimeoutError (concurrent's is the builtin)
            future.cancel()
            raise OperationTimeoutError("the client's event loop did not answer in time") from None
        except concurrent.futures.CancelledError:
            raise UnavailableError("the client was closed during the call") from None
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt in this thread: stop the work on the loop
            raise
        finally:
            with self._lock:
                self._futures.discard(future)

    @staticmethod
    def _t(timeout_s: object) -> float:
        # Checked here, in the caller's thread, before the coroutine is handed to the loop: a
        # bad timeout (nan, inf, negative) must fail before anything is sent, and must not
        # reach the thread's own wait (inf overflows it).
        return check_timeout(timeout_s)

    def put(self, key: bytes, value: bytes, *, timeout_s: float = 5.0) -> None:
        """Set `key` to `value`; returns once the write is committed and applied."""
        t = self._t(timeout_s)
        self._call(self._client.put(key, value, timeout_s=t), t)

    def get(
        self, key: bytes, *, consistency: Consistency = "linearizable", timeout_s: float = 5.0
    ) -> bytes | None:
        """The value of `key`, or None when it is absent."""
        t = self._t(timeout_s)
        return self._call(self._client.get(key, consistency=consistency, timeout_s=t), t)

    def delete(self, key: bytes, *, timeout_s: float = 5.0) -> bool:
        """Remove `key`; True if it existed."""
        t = self._t(timeout_s)
        return self._call(self._client.delete(key, timeout_s=t), t)

    def cas(
        self, key: bytes, expected: bytes | None, new: bytes | None, *, timeout_s: float = 5.0
    ) -> bool:
        """Set `key` to `new` if its value is `expected` (None: absent; `new` None: delete)."""
        t = self._t(timeout_s)
        return self._call(self._client.cas(key, expected, new, timeout_s=t), t)

    def scan(
        self,
        prefix: bytes = b"",
        *,
        limit: int | None = None,
        consistency: Consistency = "linearizable",
        timeout_s: float | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """The pairs whose key starts with `prefix`, sorted by key, at most `limit` of them."""
        t = self._timeout_s if timeout_s is None else self._t(timeout_s)
        return self._call(
            self._client.scan(prefix, limit=limit, consistency=consistency, timeout_s=t), t
        )

    def status(self, address: str | None = None, *, timeout_s: float | None = None) -> Status:
        """The status of the member at `address`, or of one the balancer picks."""
        t = self._timeout_s if timeout_s is None else self._t(timeout_s)
        return self._call(self._client.status(address, timeout_s=t), t)

    def add_member(self, node_id: str, address: str, *, timeout_s: float = 10.0) -> None:
        """Add `node_id`, reachable at `address`, to the cluster."""
        t = self._t(timeout_s)
        self._call(self._client.add_member(node_id, address, timeout_s=t), t)

    def remove_member(self, node_id: str, *, timeout_s: float = 10.0) -> None:
        """Remove `node_id` from the cluster."""
        t = self._t(timeout_s)
        self._call(self._client.remove_member(node_id, timeout_s=t), t)

    def transfer_leadership(self, node_id: str, *, timeout_s: float = 10.0) -> None:
        """Ask the leader to hand leadership to `node_id`."""
        t = self._t(timeout_s)
        self._call(self._client.transfer_leadership(node_id, timeout_s=t), t)

    @property
    def leader_address(self) -> str | None:
        """The address of the member this client currently takes for the leader, if any."""
        return self._client.leader_address

    def close(self) -> None:
        """Close every connection and stop the loop thread. Idempotent; calls still running in
        other threads fail with `UnavailableError`."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("Client.close() called from the client's own loop")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(
                timeout=_WAIT_GRACE_S
            )
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=_WAIT_GRACE_S)
            with self._lock:
                leftovers = list(self._futures)
            for future in leftovers:
                future.cancel()  # their threads get UnavailableError instead of waiting on
            if not self._thread.is_alive():
                self._loop.close()

    def __del__(self) -> None:
        # A forgotten client must not keep its thread and sockets: stop the loop at least.
        if not getattr(self, "_closed", True) and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)

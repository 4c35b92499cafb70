"""Deadlines and waiting, on the node's loop: for an index to be applied, for a leader change.

Everything here belongs to the loop thread (THREADS.md): the futures are created, completed
and awaited there. Application threads wait on them only through a coroutine handed to the
loop (`Node._run_on_loop`). The deadline arithmetic itself is `kvstore.deadline.Deadline`,
which the client uses too.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from kvstore.deadline import Deadline
from kvstore.errors import OperationTimeoutError


def wake(waiter: asyncio.Future[None], *_args: object) -> None:
    """Done-callback and timer callback: wake whoever awaits `waiter` (once)."""
    if not waiter.done():
        waiter.set_result(None)


class AppliedWaiters:
    """Callers waiting until this node has applied through an index, cheapest first."""

    __slots__ = ("_heap", "_ids")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()

    async def wait(self, index: int, deadline: Deadline) -> None:
        """Return once `release` reached `index`; `OperationTimeoutError` at the deadline.
        The caller checks first whether `index` is applied already."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (index, next(self._ids), future))
        try:
            await asyncio.wait_for(future, deadline.left_s())
        except TimeoutError:
            raise OperationTimeoutError(
                f"this member did not apply through index {index} in time"
            ) from None

    def release(self, applied: int) -> None:
        """Everything through `applied` is applied: wake those waiting for it."""
        heap = self._heap
        while heap and heap[0][0] <= applied:
            _, _, future = heapq.heappop(heap)
            if not future.done():
                future.set_result(None)

    def fail_all(self, make_error: Callable[[], BaseException]) -> None:
        """Fail every waiter (the node stops or failed)."""
        for _, _, future in self._heap:
            if not future.done():
                future.set_exception(make_error())


class LeaderWaiters:
    """Callers waiting for the next change of leader (or of knowing none)."""

    __slots__ = ("_shared", "_waiters")

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()
        self._shared: asyncio.Future[None] | None = None

    def change(self) -> asyncio.Future[None]:
        """A future that completes at the next change of leader."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(future)
        return future

    def shared_change(self) -> asyncio.Future[None]:
        """One leader-change future shared by every read waiting now (never cancel it)."""
        future = self._shared
        if future is None or future.done():
            future = self._shared = self.change()
        return future

    async def wait_change(self, timeout_s: float) -> None:
        """Return at the next change of leader, or after `timeout_s`."""
        future = self.change()
        try:
            await asyncio.wait((future,), timeout=timeout_s)
        finally:
            self._waiters.discard(future)
            future.cancel()

    def notify(self) -> None:
        """The leader changed (or the node stops): wake every waiter."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


__all__ = ["AppliedWaiters", "Deadline", "LeaderWaiters", "wake"]

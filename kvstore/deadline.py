"""`Deadline`: the time by which a call must be done, and what is left of it.

Shared by the node (`kvstore.node.waiters`) and the client (`kvstore.client.aio_client`), so
both do the same arithmetic: a call's timeout becomes a deadline once, at its start, and every
retry, wait or backoff inside the call takes what is left of it rather than a fresh timeout.
This module imports nothing of the server or the client: both sides may use it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

LEFT_S_MIN = 1e-3
"""The least time `Deadline.left_s` hands to a step: a step given zero would not even start."""


class Deadline:
    """A point in time on one clock (`time.monotonic` by default, or an asyncio loop's)."""

    __slots__ = ("_clock", "at")

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.at = clock() + timeout_s
        """The deadline, in the clock's seconds (for `loop.call_at` and `asyncio.timeout_at`
        when the clock is the running loop's)."""

    @classmethod
    def on_loop(cls, timeout_s: float) -> Deadline:
        """A deadline on the running asyncio loop's clock (`loop.time()`)."""
        return cls(timeout_s, asyncio.get_running_loop().time)

    def remaining_s(self) -> float:
        """Seconds left; zero or negative once the deadline passed."""
        return self.at - self._clock()

    def left_s(self) -> float:
        """Seconds left for the next step, at least `LEFT_S_MIN` (the step then times out
        itself, with its own message)."""
        return max(self.at - self._clock(), LEFT_S_MIN)

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self._clock() >= self.at


__all__ = ["LEFT_S_MIN", "Deadline"]

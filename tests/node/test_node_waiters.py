"""Deadlines and waiters (`kvstore.deadline`, `kvstore.node.waiters`), on a real asyncio loop."""

from __future__ import annotations

import asyncio

import pytest

from kvstore.deadline import LEFT_S_MIN, Deadline
from kvstore.errors import OperationTimeoutError, UnavailableError
from kvstore.node.waiters import AppliedWaiters, LeaderWaiters


def test_a_deadline_counts_down_on_its_own_clock() -> None:
    now = [100.0]
    deadline = Deadline(2.0, lambda: now[0])
    assert deadline.at == 102.0
    assert deadline.remaining_s() == 2.0 and not deadline.expired()
    now[0] = 103.0
    assert deadline.remaining_s() == -1.0 and deadline.expired()
    assert deadline.left_s() == LEFT_S_MIN


def test_applied_waiters_wake_in_index_order_and_time_out_at_the_deadline() -> None:
    async def scenario() -> None:
        waiters = AppliedWaiters()
        early = asyncio.create_task(waiters.wait(3, Deadline.on_loop(5.0)))
        late = asyncio.create_task(waiters.wait(7, Deadline.on_loop(5.0)))
        await asyncio.sleep(0)
        waiters.release(5)
        await early
        assert not late.done()
        waiters.release(7)
        await late
        with pytest.raises(OperationTimeoutError, match="through index 9"):
            await waiters.wait(9, Deadline.on_loop(0.01))
        failing = asyncio.create_task(waiters.wait(11, Deadline.on_loop(5.0)))
        await asyncio.sleep(0)
        waiters.fail_all(lambda: UnavailableError("stopping"))
        with pytest.raises(UnavailableError, match="stopping"):
            await failing

    asyncio.run(scenario())


def test_leader_waiters_share_one_future_until_the_leader_changes() -> None:
    async def scenario() -> None:
        waiters = LeaderWaiters()
        shared = waiters.shared_change()
        assert waiters.shared_change() is shared
        waiting = asyncio.create_task(waiters.wait_change(5.0))
        await asyncio.sleep(0)
        waiters.notify()
        await asyncio.wait_for(waiting, 1.0)
        assert shared.done()
        assert waiters.shared_change() is not shared
        await waiters.wait_change(0.01)  # no change: returns after its timeout

    asyncio.run(scenario())

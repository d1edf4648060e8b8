"""transport.Activity.idle: a future driven by a timer, not a sleeping task (the idle timeout)."""

from __future__ import annotations

import asyncio

from streamsrv.transport import Activity

HANG = 30  # a generous bound: these wait for timers of a few tens of milliseconds


async def test_it_is_done_once_nothing_moved_for_the_time() -> None:
    activity = Activity()
    idle = activity.idle(0.05)
    assert not idle.done()
    await asyncio.wait_for(idle, HANG)


async def test_each_touch_puts_it_off() -> None:
    activity = Activity()
    idle = activity.idle(0.2)
    loop = asyncio.get_running_loop()
    end = loop.time() + 0.5
    while loop.time() < end:  # touched every 20 ms for 0.5 s: never idle for 0.2 s
        activity.touch()
        await asyncio.sleep(0.02)
        assert not idle.done()
    await asyncio.wait_for(idle, HANG)
    assert loop.time() - activity.last >= 0.2


async def test_cancelling_it_leaves_no_timer() -> None:
    activity = Activity()
    idle = activity.idle(3600)
    assert activity._timer is not None
    timer = activity._timer
    idle.cancel()
    await asyncio.sleep(0)
    assert timer.cancelled() and activity._timer is None

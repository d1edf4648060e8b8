"""runtime.base.wait_event never loses a cancellation (asyncio.wait_for on Python 3.11 can)."""

from __future__ import annotations

import asyncio

import pytest

from streamsrv.runtime.base import wait_event


async def test_a_cancellation_that_comes_with_the_event_is_kept() -> None:
    """The race soak/fuzz.py hit: the task is cancelled in the same turn that sets the event.
    A tty exec swallowed that cancellation in asyncio.wait_for and ran on with no client."""
    event = asyncio.Event()
    task = asyncio.create_task(wait_event(event, 10))
    await asyncio.sleep(0)  # the task is waiting
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_that_comes_with_the_timeout_is_kept() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(wait_event(event, 0.05))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_answer() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
    await asyncio.sleep(0)  # the cancelled waiter finishes in the next turn
    assert not [t for t in asyncio.all_tasks() if "Event.wait" in repr(t.get_coro())]

"""Resizes.follow: the client's sizes applied one call at a time, the newest first, with no task
between calls (a runtime's tty exec follows its session's sizes for the session's life)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from streamsrv.protocol.resize import TerminalSize
from streamsrv.runtime.base import Resizes

HANG = 10


class Applier:
    """Records each size applied and how many calls ran at once; each call waits for a go."""

    def __init__(self) -> None:
        self.applied: list[TerminalSize] = []
        self.running = 0
        self.most = 0
        self.go = asyncio.Event()
        self.go.set()

    async def __call__(self, size: TerminalSize) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.go.wait()
            self.applied.append(size)
        finally:
            self.running -= 1


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def size(n: int) -> TerminalSize:
    return TerminalSize(width=n, height=n)


async def test_sizes_that_come_during_a_call_coalesce_to_the_newest() -> None:
    sizes, apply = Resizes(), Applier()
    apply.go.clear()
    follower = sizes.follow(apply)
    sizes.put(size(1))
    await settle()
    assert apply.running == 1
    for n in (2, 3, 4):
        sizes.put(size(n))
    await settle()
    apply.go.set()
    await settle()
    assert apply.applied == [size(1), size(4)]
    assert apply.most == 1
    assert follower.task is None  # no task while no size waits
    follower.stop()


async def test_no_task_waits_between_sizes() -> None:
    sizes, apply = Resizes(), Applier()
    before = len(asyncio.all_tasks())
    follower = sizes.follow(apply)
    await settle()
    assert len(asyncio.all_tasks()) == before
    sizes.put(size(5))
    await settle()
    assert apply.applied == [size(5)]
    assert len(asyncio.all_tasks()) == before
    assert follower.stop() is None


async def test_a_size_put_before_is_applied_and_a_delivered_one_is_not() -> None:
    sizes, apply = Resizes(), Applier()
    sizes.put(size(7))
    follower = sizes.follow(apply)
    await settle()
    assert apply.applied == [size(7)]
    follower.stop()

    sizes, apply = Resizes(), Applier()
    sizes.put(size(8))
    sizes.delivered(size(8))  # applied when the process started
    follower = sizes.follow(apply)
    await settle()
    assert apply.applied == []
    sizes.put(size(9))
    await settle()
    assert apply.applied == [size(9)]
    follower.stop()


async def test_stop_cancels_the_running_call_and_ends_the_following() -> None:
    sizes, apply = Resizes(), Applier()
    apply.go.clear()
    follower = sizes.follow(apply)
    sizes.put(size(1))
    await settle()
    running = follower.stop()
    assert running is not None
    await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), HANG)
    assert running.cancelled() and apply.running == 0
    apply.go.set()
    sizes.put(size(2))
    await settle()
    assert apply.applied == []
    # and the sizes can be followed again
    again = sizes.follow(apply)
    await settle()
    assert apply.applied == [size(2)]
    again.stop()


async def test_a_failing_call_is_logged_and_the_next_size_still_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sizes, seen = Resizes(), []

    async def apply(s: TerminalSize) -> None:
        seen.append(s)
        if s == size(1):
            raise RuntimeError("a runtime bug")

    follower = sizes.follow(apply)
    with caplog.at_level(logging.ERROR):
        sizes.put(size(1))
        await settle()
        sizes.put(size(2))
        await settle()
    assert seen == [size(1), size(2)]
    assert "applying a terminal size failed" in caplog.text
    follower.stop()

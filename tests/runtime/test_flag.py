"""runtime.base.Flag behaves as asyncio.Event does, in less memory (every session makes several)."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsrv.runtime.base import Flag, wait_event

# One step of a run: set, clear, a new waiter (a task in wait(), or a waiter() future:
# asyncio.Event's is a task in wait() too), cancel the waiter at that index (if any), or let the
# loop run one turn.
STEPS = st.lists(
    st.one_of(
        st.just(("set",)),
        st.just(("clear",)),
        st.just(("wait",)),
        st.just(("future",)),
        st.tuples(st.just("cancel"), st.integers(0, 20)),
        st.just(("turn",)),
    ),
    max_size=40,
)


async def _run(
    make: type[asyncio.Event] | type[Flag], steps: list[tuple[object, ...]]
) -> list[object]:
    """What an observer sees after each step: whether it is set, and each waiter's state."""
    flag = make()
    waiters: list[asyncio.Future[Any]] = []
    seen: list[object] = []
    for step in steps:
        if step[0] == "set":
            flag.set()
        elif step[0] == "clear":
            flag.clear()
        elif step[0] == "wait":
            waiters.append(asyncio.create_task(flag.wait()))
        elif step[0] == "future":
            if isinstance(flag, Flag):
                waiters.append(flag.waiter())
            else:
                waiters.append(asyncio.create_task(flag.wait()))
        elif step[0] == "cancel":
            index = step[1]
            assert isinstance(index, int)
            if index < len(waiters):
                waiters[index].cancel()
        await asyncio.sleep(0)
        seen.append((flag.is_set(), [_state(w) for w in waiters]))
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    return seen


def _state(task: asyncio.Future[Any]) -> object:
    if not task.done():
        return "waiting"
    if task.cancelled():
        return "cancelled"
    task.result()  # raises, if it failed
    return "woken"


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_it_does_what_asyncio_event_does(steps: list[tuple[object, ...]]) -> None:
    """Any run of sets, clears, waits, cancels and loop turns looks the same to an observer."""

    async def both() -> tuple[list[object], list[object]]:
        return await _run(asyncio.Event, steps), await _run(Flag, steps)

    theirs, ours = asyncio.run(both())
    assert ours == theirs


async def test_a_set_wakes_every_waiter_even_if_cleared_before_they_run() -> None:
    flag = Flag()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    flag.set()
    flag.clear()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert not flag.is_set()


async def test_a_cancelled_waiter_is_forgotten() -> None:
    flag = Flag()
    waiter = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert flag._waiters == []  # nothing left for a set to wake (or to keep alive)


async def test_a_waiter_future_is_done_at_once_if_set_and_forgotten_once_cancelled() -> None:
    flag = Flag()
    shared = [flag.waiter() for _ in range(3)]
    shared[1].cancel()
    await asyncio.sleep(0)
    assert flag._waiters is not None and len(flag._waiters) == 2  # the others still wait
    flag.set()
    await asyncio.sleep(0)
    assert [f.done() and not f.cancelled() for f in (shared[0], shared[2])] == [True, True]
    assert flag.waiter().done()


async def test_waiter_futures_cancelled_by_many_sessions_leave_nothing_behind() -> None:
    """A flag every session waits on (the server's stop) keeps no trace of ended sessions."""
    flag = Flag()
    for _ in range(1000):
        flag.waiter().cancel()
    await asyncio.sleep(0)
    assert flag._waiters == []


@pytest.mark.parametrize("make", [asyncio.Event, Flag])
async def test_wait_event_takes_either(make: type[asyncio.Event] | type[Flag]) -> None:
    flag = make()
    assert await wait_event(flag, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, flag.set)
    assert await wait_event(flag, 10) is True


def test_it_costs_a_fraction_of_an_asyncio_event() -> None:
    """The reason it exists: measured, not assumed (1000 of each, as they sit unused)."""

    def cost(make: type[asyncio.Event] | type[Flag]) -> int:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = [make() for _ in range(1000)]
            size = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(kept) == 1000
        return size

    assert cost(Flag) * 4 < cost(asyncio.Event)

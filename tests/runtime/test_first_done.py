"""runtime.base.first_done waits as asyncio.wait does (FIRST_COMPLETED and FIRST_EXCEPTION), in
less memory: each session holds several such waits for its whole life."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streamsrv.runtime.base import first_done

FUTURES = 4
# One step: a future's result, failure or cancellation, the waiting task cancelled, or a
# turn of the loop.
STEPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["result", "fail", "cancel"]), st.integers(0, FUTURES - 1)),
        st.just(("cancel-waiting",)),
        st.just(("turn",)),
    ),
    max_size=12,
)
TURNS = 4  # loop turns after each step: both ways settle within them


def _state(fut: asyncio.Future[Any]) -> str:
    if not fut.done():
        return "pending"
    return "cancelled" if fut.cancelled() else "done"


async def _run(
    slim: bool, on_failure: bool, count: int, steps: list[tuple[Any, ...]]
) -> list[object]:
    """The waiting task's state after each step, seen after the loop has settled."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(count)]

    async def waiting() -> None:
        if slim:
            await first_done(futures, on_failure=on_failure)
        else:
            when = asyncio.FIRST_EXCEPTION if on_failure else asyncio.FIRST_COMPLETED
            await asyncio.wait(futures, return_when=when)

    task = asyncio.create_task(waiting())
    seen: list[object] = []
    for step in steps:
        if step[0] == "cancel-waiting":
            task.cancel()
        elif step[0] != "turn" and step[1] < count and not futures[step[1]].done():
            fut = futures[step[1]]
            if step[0] == "result":
                fut.set_result(None)
            elif step[0] == "fail":
                fut.set_exception(RuntimeError("failed"))
            else:
                fut.cancel()
        for _ in range(TURNS):
            await asyncio.sleep(0)
        seen.append(_state(task))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for fut in futures:
        if fut.done() and not fut.cancelled():
            fut.exception()  # retrieved
        if slim:  # its callbacks left with it (asyncio.wait's own do too)
            assert not fut._callbacks, fut._callbacks  # type: ignore[attr-defined]
    return seen


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.integers(1, FUTURES), STEPS)
def test_it_ends_when_asyncio_wait_would(on_failure: bool, count: int, steps: Any) -> None:
    async def both() -> tuple[list[object], list[object]]:
        return (
            await _run(False, on_failure, count, steps),
            await _run(True, on_failure, count, steps),
        )

    expected, got = asyncio.run(both())
    assert got == expected


async def test_futures_already_done_end_it_at_once_and_none_is_at_once() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    done.set_result(None)
    pending: asyncio.Future[None] = loop.create_future()
    await asyncio.wait_for(first_done([pending, done]), 5)
    await asyncio.wait_for(first_done([]), 5)
    failed: asyncio.Future[None] = loop.create_future()
    failed.set_exception(RuntimeError("x"))
    await asyncio.wait_for(first_done([pending, failed], on_failure=True), 5)
    assert not pending.done() and not pending._callbacks  # type: ignore[attr-defined]
    failed.exception()


async def test_a_held_wait_costs_less_than_asyncio_wait() -> None:
    """Measured as a session holds it: a task suspended in the wait, over 500 of each."""
    loop = asyncio.get_running_loop()
    n = 500

    async def held(slim: bool, futures: list[asyncio.Future[None]]) -> None:
        if slim:
            await first_done(futures)
        else:
            await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)

    async def cost(slim: bool) -> float:
        futures = [[loop.create_future() for _ in range(3)] for _ in range(n)]
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            tasks = [asyncio.create_task(held(slim, f)) for f in futures]
            await asyncio.sleep(0)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        for f in futures:
            f[0].set_result(None)
        await asyncio.gather(*tasks)
        return sum(s.size_diff for s in after.compare_to(before, "filename")) / n

    slim, full = await cost(True), await cost(False)
    # about 0.6 KiB less per wait (Python 3.11); the margin is what the test holds to
    assert slim < full - 256, (slim, full)

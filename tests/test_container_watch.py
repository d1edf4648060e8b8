"""An exec ends when its container stops (context.ContainerWatch, remotecommand._exec)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from streamsrv.context import ContainerWatch
from streamsrv.errors import BackendError
from streamsrv.limits import Limits
from streamsrv.server import ExecRequest
from tests.conftest import stream_server
from tests.test_remotecommand import FakeRuntime, collect, path

HANG = 30


class CountingRuntime(FakeRuntime):
    def __init__(self) -> None:
        super().__init__()
        self.polls = 0
        self.fail = False

    async def container_stopped(self, container_id: str) -> str | None:
        self.polls += 1
        if self.fail:
            raise BackendError("engine down")
        return await super().container_stopped(container_id)


async def test_one_poll_per_container_however_many_sessions_wait() -> None:
    runtime = CountingRuntime()
    watch = ContainerWatch(runtime, 0.01)  # type: ignore[arg-type]
    waiters = [asyncio.create_task(watch.stopped("c1")) for _ in range(50)]
    await asyncio.sleep(0.2)
    assert watch.watched == 1
    assert 0 < runtime.polls < 50  # 50 waiters would make >= 50 calls each round otherwise
    runtime.stopped["c1"] = 'container "main" exited with code 0'
    results = await asyncio.wait_for(asyncio.gather(*waiters), HANG)
    assert set(results) == {'container "main" exited with code 0'}
    assert watch.watched == 0


async def test_the_poll_ends_with_its_last_waiter() -> None:
    runtime = CountingRuntime()
    watch = ContainerWatch(runtime, 0.01)  # type: ignore[arg-type]
    waiters = [asyncio.create_task(watch.stopped("c1")) for _ in range(3)]
    await asyncio.sleep(0.05)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert watch.watched == 0
    polls = runtime.polls
    await asyncio.sleep(0.1)
    assert runtime.polls == polls  # nothing polls any more


async def test_an_engine_that_cannot_answer_is_not_a_stop() -> None:
    runtime = CountingRuntime()
    runtime.fail = True
    watch = ContainerWatch(runtime, 0.01)  # type: ignore[arg-type]
    waiter = asyncio.create_task(watch.stopped("c1"))
    await asyncio.sleep(0.1)
    assert not waiter.done() and runtime.polls > 1
    runtime.fail = False
    runtime.stopped["c1"] = "gone"
    assert await asyncio.wait_for(waiter, HANG) == "gone"


async def test_exec_ends_with_the_containers_state_when_it_stops() -> None:
    runtime = FakeRuntime()
    async with stream_server(runtime, Limits(container_poll=0.02)) as (server, ts):
        url = await server.get_exec(ExecRequest("c1", ("sleep",), stdout=True))
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(ts.make_url(path(url)), protocols=["v5.channel.k8s.io"]) as ws,
        ):
            await asyncio.wait_for(runtime.started.wait(), HANG)
            runtime.stopped["c1"] = 'container "main" exited with code 143'
            frames = await asyncio.wait_for(collect(ws), HANG)
    assert runtime.cancelled == 1  # the runtime was told to kill the process
    channel, body = frames[-1]
    assert channel == 3
    st = json.loads(body)
    assert st["reason"] == "NonZeroExitCode"
    assert st["details"]["causes"] == [{"reason": "ExitCode", "message": "137"}]
    assert 'container "main" exited with code 143' in st["message"]


async def test_exec_of_a_running_container_is_left_alone() -> None:
    runtime = FakeRuntime()
    async with stream_server(runtime, Limits(container_poll=0.01)) as (server, ts):
        url = await server.get_exec(ExecRequest("c1", ("exit", "3"), stdout=True))
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(ts.make_url(path(url)), protocols=["v5.channel.k8s.io"]) as ws,
        ):
            frames = await asyncio.wait_for(collect(ws), HANG)
    assert runtime.cancelled == 0
    st = json.loads(frames[-1][1])
    assert st["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


async def test_a_watch_is_a_future_of_its_own_and_cancelling_it_ends_only_it() -> None:
    """Sessions wait on watch() futures, not tasks: one cancelled leaves the others watching,
    and the poll stops with the last one."""
    runtime = CountingRuntime()
    watch = ContainerWatch(runtime, 0.01)  # type: ignore[arg-type]
    first, second = watch.watch("c1"), watch.watch("c1")
    await asyncio.sleep(0.05)
    first.cancel()
    await asyncio.sleep(0.05)
    assert watch.watched == 1 and not second.done()
    runtime.stopped["c1"] = "gone"
    assert await asyncio.wait_for(second, HANG) == "gone"
    await asyncio.sleep(0)
    assert watch.watched == 0


async def test_a_poll_that_fails_tells_its_watchers() -> None:
    """A runtime bug (not a BackendError) in the poll reaches every watcher as its exception."""

    class Broken(CountingRuntime):
        async def container_stopped(self, container_id: str) -> str | None:
            raise RuntimeError("a bug")

    watch = ContainerWatch(Broken(), 0.01)  # type: ignore[arg-type]
    watchers = [watch.watch("c1") for _ in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*watchers, return_exceptions=True), HANG)
    assert all(isinstance(r, RuntimeError) for r in results), results
    assert watch.watched == 0

"""`stdinOnce` on attach, both runtimes, through the runtime API (no wire protocol).

The Docker engine's rule, which the process runtime follows: the end of an attached client's
input (or that client leaving) closes the container's stdin only for a container made with
stdinOnce; with a tty it ends that client's attach instead and the terminal stays open.
Without stdinOnce stdin stays open for the next client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from streamsrv.podmanager import PodManager
from streamsrv.pods import parse_pod
from streamsrv.runtime.base import BackendError, Pipe, StdIO, StreamingRuntime
from tests.conftest import BUSYBOX, pod_manifest, unique

HANG = 30  # seconds: only a hang takes this long


class Buffer:
    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        self.data += data

    async def wait_for(
        self, needle: bytes, within: float = HANG, why: Callable[[], Awaitable[str]] | None = None
    ) -> None:
        deadline = time.monotonic() + within
        while needle not in self.data:
            if time.monotonic() > deadline:
                extra = await why() if why is not None else ""
                raise AssertionError(f"{needle!r} not in {bytes(self.data[-500:])!r}; {extra}")
            await asyncio.sleep(0.02)


@pytest.fixture
def runtime(any_runtime: StreamingRuntime) -> StreamingRuntime:
    return any_runtime


async def start(runtime: StreamingRuntime, script: str, **flags: Any) -> str:
    """One container running ``sh -c script`` with ``flags`` (stdin, stdinOnce, tty)."""
    spec = {"name": "main", "image": BUSYBOX, "command": ["sh", "-c", script], **flags}
    pod = await PodManager(runtime).create(parse_pod(pod_manifest(unique("once"), spec)))
    cid = pod.container_id("main")
    assert cid
    return cid


async def running(runtime: StreamingRuntime, cid: str) -> bool:
    return await runtime.container_stopped(cid) is None


async def ends(runtime: StreamingRuntime, cid: str, within: float = HANG) -> None:
    deadline = time.monotonic() + within
    while await running(runtime, cid):
        assert time.monotonic() < deadline, "the container still runs"
        await asyncio.sleep(0.05)


async def attached_output(
    runtime: StreamingRuntime, cid: str, stdin: Pipe, *, tty: bool = False
) -> tuple[asyncio.Task[None], Buffer]:
    out = Buffer()
    io = StdIO(stdin=stdin, stdout=out, stderr=None if tty else out)
    task = asyncio.create_task(runtime.attach(cid, io, tty=tty))
    await asyncio.sleep(0.3)  # attached (the engine's attach is set up after its 101)
    return task, out


async def test_end_of_input_closes_stdin_once(runtime: StreamingRuntime) -> None:
    cid = await start(runtime, "cat; echo bye", stdin=True, stdinOnce=True)
    stdin = Pipe()
    task, out = await attached_output(runtime, cid, stdin)
    await stdin.feed(b"data\n")
    stdin.close()
    # The attach lasts until the container ends, with everything it wrote.
    await asyncio.wait_for(task, HANG)
    assert bytes(out.data) == b"data\nbye\n"
    await ends(runtime, cid)
    # A second attach finds the container ended (the gateway refuses before: the pod has
    # completed).
    with pytest.raises(BackendError):
        await asyncio.wait_for(
            runtime.attach(cid, StdIO(stdin=Pipe(), stdout=Buffer()), tty=False), HANG
        )


async def test_a_client_that_leaves_closes_stdin_once(runtime: StreamingRuntime) -> None:
    cid = await start(runtime, "cat; echo bye; exit 3", stdin=True, stdinOnce=True)
    stdin = Pipe()
    task, out = await attached_output(runtime, cid, stdin)
    await stdin.feed(b"data\n")
    await out.wait_for(b"data\n")
    task.cancel()  # the client's connection is gone, its stdin never ended
    with pytest.raises(asyncio.CancelledError):
        await task
    await ends(runtime, cid)
    [state] = [c for c in await runtime.list_containers() if c.id == cid]
    assert state.exit_code == 3


async def test_without_stdin_once_stdin_stays_open(runtime: StreamingRuntime) -> None:
    cid = await start(runtime, "cat", stdin=True)
    for word in (b"first", b"second", b"third"):
        stdin = Pipe()
        task, out = await attached_output(runtime, cid, stdin)
        await stdin.feed(word + b"\n")
        await out.wait_for(word + b"\n")
        if word == b"second":
            stdin.close()  # the end of this client's input goes nowhere
            await asyncio.sleep(0.5)
            assert await running(runtime, cid)
        task.cancel()  # the client leaves
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)
        assert await running(runtime, cid), f"stdin was closed after {word!r}"


async def test_tty_end_of_input_ends_that_attach_only(runtime: StreamingRuntime) -> None:
    cid = await start(runtime, "exec sh", stdin=True, stdinOnce=True, tty=True)
    stdin = Pipe()
    task, out = await attached_output(runtime, cid, stdin, tty=True)
    await stdin.feed(b"echo one-$((40+1))\r")
    await out.wait_for(b"one-41")
    stdin.close()
    await asyncio.wait_for(task, HANG)  # this client's attach ended ...
    await asyncio.sleep(0.3)
    assert await running(runtime, cid)  # ... and the shell goes on, its terminal open
    stdin = Pipe()
    task, out = await attached_output(runtime, cid, stdin, tty=True)
    await stdin.feed(b"echo two-$((40+2)); exit 5\r")

    async def why() -> str:
        return f"attach ended: {task.done()}, container: {await runtime.container_stopped(cid)}"

    await out.wait_for(b"two-42", why=why)
    await asyncio.wait_for(task, HANG)
    await ends(runtime, cid)
    [state] = [c for c in await runtime.list_containers() if c.id == cid]
    assert state.exit_code == 5


async def test_a_client_without_stdin_changes_nothing(runtime: StreamingRuntime) -> None:
    cid = await start(runtime, "cat; echo bye", stdin=True, stdinOnce=True)
    watcher = Buffer()
    task = asyncio.create_task(runtime.attach(cid, StdIO(stdout=watcher), tty=False))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)
    assert await running(runtime, cid)
    stdin = Pipe()
    task, out = await attached_output(runtime, cid, stdin)
    await stdin.feed(b"later\n")
    stdin.close()
    await asyncio.wait_for(task, HANG)
    assert bytes(out.data) == b"later\nbye\n"

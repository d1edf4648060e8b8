"""Exec on both runtimes through the runtime API (no wire protocol involved)."""

from __future__ import annotations

import asyncio
import os

import docker
import pytest

from streamsrv.podmanager import PodManager
from streamsrv.pods import parse_pod
from streamsrv.protocol.resize import TerminalSize
from streamsrv.runtime.base import ContainerNotFound, Pipe, Resizes, StdIO, StreamingRuntime
from streamsrv.runtime.docker import DockerRuntime
from tests.conftest import (
    BUSYBOX,
    host_processes,
    pod_manifest,
    sleeper,
    unique,
)


@pytest.fixture
def runtime(any_runtime: StreamingRuntime) -> StreamingRuntime:
    return any_runtime


def running(runtime: StreamingRuntime, container: str, pattern: str) -> bool:
    """Whether a process whose command line holds ``pattern`` runs in the container."""
    if isinstance(runtime, DockerRuntime):
        client = docker.from_env()
        try:
            _, out = client.containers.get(container).exec_run(["ps", "-o", "args"])
            return pattern.encode() in out
        finally:
            client.close()
    return bool(host_processes(pattern))


class Buffer:
    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        self.data += data


@pytest.fixture
async def container(runtime: StreamingRuntime) -> str:
    console = {"name": "console", "image": BUSYBOX, "command": ["sh"], "stdin": True, "tty": True}
    pod = await PodManager(runtime).create(parse_pod(pod_manifest(unique("x"), sleeper(), console)))
    cid = pod.container_id("main")
    assert cid
    return cid


async def test_output_and_exit_code(runtime: StreamingRuntime, container: str) -> None:
    out, err = Buffer(), Buffer()
    code = await runtime.exec(
        container,
        ["sh", "-c", "echo hello; echo oops >&2; exit 42"],
        StdIO(stdout=out, stderr=err),
        tty=False,
    )
    assert (bytes(out.data), bytes(err.data), code) == (b"hello\n", b"oops\n", 42)


async def test_first_output_is_not_lost(runtime: StreamingRuntime, container: str) -> None:
    for _ in range(20):
        out = Buffer()
        assert await runtime.exec(container, ["echo", "hello"], StdIO(stdout=out), tty=False) == 0
        assert out.data == b"hello\n"


async def test_stdin_eof_reaches_the_process(runtime: StreamingRuntime, container: str) -> None:
    data = os.urandom(8 * 1024 * 1024)
    stdin, out = Pipe(), Buffer()

    async def feed() -> None:
        for i in range(0, len(data), 32768):
            await stdin.feed(data[i : i + 32768])
        stdin.close()

    feeder = asyncio.create_task(feed())
    code = await asyncio.wait_for(
        runtime.exec(container, ["wc", "-c"], StdIO(stdin=stdin, stdout=out), tty=False), 60
    )
    await feeder
    assert code == 0 and out.data.split() == [str(len(data)).encode()]


async def test_input_goes_on_after_the_output_has_closed(
    runtime: StreamingRuntime, container: str
) -> None:
    """A process that closes its stdout and stderr and then reads its stdin to the end (`sh -c
    'dd of=/dev/null 2>/dev/null'` does) still gets all of it and its end: the exec ends when
    the process does, not when its output does (it hung on containerd)."""
    data = os.urandom(4 * 1024 * 1024)
    stdin, out = Pipe(), Buffer()

    async def feed() -> None:
        await asyncio.sleep(0.3)  # after the process has closed its output
        for i in range(0, len(data), 32768):
            await stdin.feed(data[i : i + 32768])
        stdin.close()

    feeder = asyncio.create_task(feed())
    script = "exec >/dev/null 2>&1; n=$(wc -c); [ $n = 4194304 ] && exit 7; exit 1"
    code = await asyncio.wait_for(
        runtime.exec(container, ["sh", "-c", script], StdIO(stdin=stdin, stdout=out), tty=False),
        60,
    )
    await feeder
    assert (code, bytes(out.data)) == (7, b"")


async def test_tty_resize_applies(runtime: StreamingRuntime, container: str) -> None:
    stdin, out, resize = Pipe(), Buffer(), Resizes()
    resize.put(TerminalSize(100, 30))
    task = asyncio.create_task(
        runtime.exec(container, ["sh"], StdIO(stdin=stdin, stdout=out, resize=resize), tty=True)
    )
    await asyncio.sleep(0.5)
    await stdin.feed(b"stty size\r")
    for _ in range(100):
        if b"30 100" in out.data:
            break
        await asyncio.sleep(0.05)
    assert b"30 100" in out.data
    resize.put(TerminalSize(120, 40))
    await asyncio.sleep(0.3)
    await stdin.feed(b"stty size; exit 5\r")
    assert await asyncio.wait_for(task, 15) == 5
    assert b"40 120" in out.data


async def test_cancel_kills_the_exec_process(runtime: StreamingRuntime, container: str) -> None:
    task = asyncio.create_task(
        runtime.exec(container, ["sleep", "54321"], StdIO(stdout=Buffer()), tty=False)
    )
    for _ in range(100):
        if await asyncio.to_thread(running, runtime, container, "sleep 54321"):
            break
        await asyncio.sleep(0.05)
    assert await asyncio.to_thread(running, runtime, container, "sleep 54321")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await asyncio.to_thread(running, runtime, container, "sleep 54321")


async def test_exec_in_missing_container(runtime: StreamingRuntime) -> None:
    with pytest.raises(ContainerNotFound):
        await runtime.exec("0" * 64, ["true"], StdIO(stdout=Buffer()), tty=False)

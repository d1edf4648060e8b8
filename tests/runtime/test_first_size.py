"""A tty exec's process starts at the client's first terminal size, on both runtimes.

The first part drives :class:`DockerRuntime` against a fake engine (a unix-socket HTTP server
that records what it was asked) whose exec "process" reports the size its terminal had when
it started: the size the start carried (``ConsoleSize``, API 1.42+), the size its command set
before becoming the real one (older engines), else 0x0, as a real engine's process that reads
its size at once sees it. The client's size arrives only some time after the session began.
The second part runs `stty size` on the real engine and the process runtime.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from docker.utils import version_gte

import streamsrv.runtime.docker as docker_runtime
from streamsrv.podmanager import PodManager
from streamsrv.pods import parse_pod
from streamsrv.protocol.resize import TerminalSize
from streamsrv.runtime.base import Pipe, Resizes, StdIO, StreamingRuntime
from streamsrv.runtime.docker import SHELL, DockerRuntime
from tests.conftest import (
    pod_manifest,
    sleeper,
    unique,
)
from tests.runtime.fake_engine import FakeEngine, Request

HANG = 30  # seconds: only a hang takes this long
SIZE = TerminalSize(width=123, height=45)


class Buffer:
    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        self.data += data


async def size_later(resize: Resizes, size: TerminalSize, delay: float) -> None:
    await asyncio.sleep(delay)
    resize.put(size)


# ------------------------------------------------------------------------------ fake engine


class Engine(FakeEngine):
    """The few engine calls a tty exec makes; what each was asked is kept."""

    def __init__(self, api: str, has_shell: bool = True) -> None:
        super().__init__()
        self.api = api
        self.has_shell = has_shell
        self.creates: list[dict[str, Any]] = []  # exec create bodies
        self.starts: list[dict[str, Any]] = []  # exec start bodies
        self.resizes: list[tuple[int, int]] = []  # (h, w) of exec resizes
        self.shell_stats = 0

    async def answer(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        method, path, query, body = request.method, request.path, request.query, request.body
        if path == "/version":
            return self.reply(writer, 200, {"ApiVersion": self.api, "Version": "fake"})
        if method == "POST" and re.fullmatch(r"/containers/[^/]+/exec", path):
            self.creates.append(json.loads(body))
            return self.reply(writer, 201, {"Id": f"{len(self.creates):064x}"})
        if method == "HEAD" and path.endswith("/archive"):
            self.shell_stats += 1
            found = self.has_shell and query.get("path") == [SHELL]
            return self.reply(writer, 200 if found else 404)
        if method == "POST" and path.endswith("/start"):
            start = json.loads(body)
            self.starts.append(start)
            writer.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
            rows, cols = self.started_at(self.creates[-1]["Cmd"], start)
            writer.write(f"{rows} {cols}\r\n".encode())
            return False  # the process ended: the engine closes the stream
        if method == "POST" and path.endswith("/resize"):
            self.resizes.append((int(query["h"][0]), int(query["w"][0])))
            return self.reply(writer, 201)
        if method == "GET" and path.endswith("/json"):
            return self.reply(writer, 200, {"Running": False, "ExitCode": 0, "Pid": 0})
        return self.reply(writer, 404, {"message": f"fake engine: no {method} {path}"})

    def started_at(self, cmd: list[str], start: dict[str, Any]) -> tuple[int, int]:
        """The size the exec's terminal had when the process started."""
        if "ConsoleSize" in start and version_gte(self.api, docker_runtime.CONSOLE_SIZE_API):
            rows, cols = start["ConsoleSize"]
            return rows, cols
        m = re.fullmatch(r"stty rows (\d+) cols (\d+) .*", cmd[2]) if cmd[0] == SHELL else None
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@pytest.fixture
async def fake(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    engine = Engine(api=request.param)
    await engine.start(tmp_path / "engine.sock")
    yield engine
    await engine.close()


@pytest.fixture
async def fake_rt(fake: Engine, tmp_path: Path) -> AsyncIterator[DockerRuntime]:
    # built in a thread: the SDK asks the (fake, same loop) engine for its version there
    rt = await asyncio.to_thread(DockerRuntime, base_url=f"unix://{tmp_path / 'engine.sock'}")
    yield rt
    await rt.close()


async def fake_exec(rt: DockerRuntime, cmd: list[str], delay: float | None) -> bytes:
    resize, out = Resizes(), Buffer()
    later = asyncio.create_task(size_later(resize, SIZE, delay if delay is not None else 1e9))
    try:
        code = await asyncio.wait_for(
            rt.exec("c1", cmd, StdIO(stdin=Pipe(), stdout=out, resize=resize), tty=True), HANG
        )
    finally:
        later.cancel()
    assert code == 0
    return bytes(out.data)


@pytest.mark.parametrize("fake", ["1.42", "1.45"], indirect=True)
async def test_the_start_carries_the_size_that_came_later(
    fake: Engine, fake_rt: DockerRuntime
) -> None:
    assert await fake_exec(fake_rt, ["stty", "size"], delay=0.3) == b"45 123\r\n"
    assert fake.creates[0]["Cmd"] == ["stty", "size"]  # the command as it was
    assert fake.starts[0]["ConsoleSize"] == [45, 123]
    assert fake.resizes == []  # applied once, at the start
    assert fake.shell_stats == 0


@pytest.mark.parametrize("fake", ["1.41"], indirect=True)
async def test_older_engines_get_a_command_that_sizes_first(
    fake: Engine, fake_rt: DockerRuntime
) -> None:
    for _ in range(2):
        assert await fake_exec(fake_rt, ["stty", "size"], delay=0.3) == b"45 123\r\n"
    for create in fake.creates:
        assert create["Cmd"][:2] == [SHELL, "-c"]
        assert create["Cmd"][3:] == ["sh", "stty", "size"]  # $0, then the command as it was
    assert all("ConsoleSize" not in start for start in fake.starts)
    assert fake.shell_stats == 1  # asked once per container


@pytest.mark.parametrize("fake", ["1.41"], indirect=True)
async def test_older_engines_without_a_shell_resize_after_the_start(
    fake: Engine, fake_rt: DockerRuntime
) -> None:
    fake.has_shell = False
    # As a real engine's process would: it read its size before the resize reached it.
    assert await fake_exec(fake_rt, ["stty", "size"], delay=0.3) == b"0 0\r\n"
    assert fake.creates[0]["Cmd"] == ["stty", "size"]


@pytest.mark.parametrize("fake", ["1.41", "1.42"], indirect=True)
async def test_a_client_that_never_sends_a_size_gets_its_session(
    fake: Engine, fake_rt: DockerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docker_runtime, "FIRST_SIZE_WAIT", 0.5)
    began = time.monotonic()
    assert await fake_exec(fake_rt, ["stty", "size"], delay=None) == b"0 0\r\n"
    assert time.monotonic() - began >= 0.5  # it waited for the size, bounded
    assert fake.creates[0]["Cmd"] == ["stty", "size"]
    assert "ConsoleSize" not in fake.starts[0]


@pytest.mark.parametrize("fake", ["1.41", "1.42"], indirect=True)
async def test_a_session_without_a_tty_never_waits(
    fake: Engine, fake_rt: DockerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docker_runtime, "FIRST_SIZE_WAIT", HANG * 2)
    out = Buffer()
    code = await asyncio.wait_for(fake_rt.exec("c1", ["true"], StdIO(stdout=out), tty=False), HANG)
    assert code == 0 and fake.creates[0]["Cmd"] == ["true"]
    assert fake.shell_stats == 0


# ------------------------------------------------------------------------------ real runtimes


@pytest.fixture
def runtime(any_runtime: StreamingRuntime) -> StreamingRuntime:
    return any_runtime


@pytest.mark.docker
@pytest.mark.parametrize("cmd", [["stty", "size"], ["sh", "-c", "stty size"]], ids=" ".join)
async def test_stty_size_reads_the_size_that_came_later(
    runtime: StreamingRuntime, cmd: list[str]
) -> None:
    pod = await PodManager(runtime).create(parse_pod(pod_manifest(unique("size"), sleeper())))
    cid = pod.container_id("main")
    assert cid
    for i in range(10):
        size = TerminalSize(width=60 + 7 * i, height=20 + 3 * i)
        resize, out = Resizes(), Buffer()
        later = asyncio.create_task(size_later(resize, size, 0.05 * (i % 4)))
        io = StdIO(stdin=Pipe(), stdout=out, resize=resize)
        code = await asyncio.wait_for(runtime.exec(cid, cmd, io, tty=True), HANG)
        await later
        assert (code, bytes(out.data)) == (0, f"{size.height} {size.width}\r\n".encode()), i

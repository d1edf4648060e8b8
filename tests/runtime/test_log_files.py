"""Containers' CRI log files (ContainerSpec.log_path) on both runtimes."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from streamsrv.pods import ContainerSpec, InvalidPod, PodSpec, parse_pod
from streamsrv.protocol.crilog import MAX_LINE, STDERR, STDOUT, LogLine, parse_lines
from streamsrv.runtime.base import BackendError
from streamsrv.runtime.docker import DockerRuntime
from streamsrv.runtime.process import ProcessRuntime
from tests.conftest import BUSYBOX, PAUSE, pod_manifest, require_runtime, unique

Runtime = DockerRuntime | ProcessRuntime


@pytest.fixture(params=[pytest.param("docker", marks=pytest.mark.docker), pytest.param("process")])
async def rt(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runtime]:
    kind = request.param
    require_runtime(kind)
    runtime: Runtime
    if kind == "docker":
        request.getfixturevalue("docker_engine")  # removes every pod afterwards
        runtime = DockerRuntime(pause_image=PAUSE)
    else:
        runtime = ProcessRuntime(tmp_path / "pods")
    try:
        yield runtime
    finally:
        await runtime.close()


def pod_with(name: str, script: str, log_path: Path | str, **extra: Any) -> PodSpec:
    spec = parse_pod(
        pod_manifest(name, {"name": "main", "image": BUSYBOX, "command": ["sh", "-c", script]})
    )
    main = dataclasses.replace(spec.containers[0], log_path=str(log_path), **extra)
    return dataclasses.replace(spec, containers=(main,))


async def run(rt: Runtime, pod: PodSpec) -> tuple[str, str]:
    """Sandbox and container made and started: (sandbox id, container id)."""
    if isinstance(rt, DockerRuntime):
        await rt.ensure_image(BUSYBOX)
    sandbox = await rt.run_pod_sandbox(pod)
    cid = await rt.create_container(sandbox, pod, pod.containers[0])
    await rt.start_container(cid)
    return sandbox, cid


def logs_under(directory: Path) -> list[Path]:
    return list(directory.glob("**/*.log"))


def read_lines(path: Path) -> list[LogLine]:
    return parse_lines(path.read_bytes()) if path.exists() else []


async def lines_when(path: Path, done: Any, within: float = 20) -> list[LogLine]:
    """The file's lines once ``done(lines)`` holds."""
    deadline = time.monotonic() + within
    while True:
        lines = read_lines(path)
        if done(lines):
            return lines
        assert time.monotonic() < deadline, lines[-5:]
        await asyncio.sleep(0.05)


async def exited(rt: Runtime, cid: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while await rt.container_stopped(cid) is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_three_lines_with_streams_tags_and_times(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "logs" / "main" / "0.log"
    path.parent.mkdir(parents=True)
    before = time.time_ns()
    pod = pod_with(unique("log"), "echo one; echo two >&2; printf partial", path)
    _, cid = await run(rt, pod)
    lines = await lines_when(path, lambda x: len(x) >= 3)
    await exited(rt, cid)
    await asyncio.sleep(0.3)  # nothing more comes
    lines = parse_lines(path.read_bytes())
    assert sorted((x.stream, x.partial, x.content) for x in lines) == [
        (STDERR, False, b"two"),
        (STDOUT, False, b"one"),
        # containerd writes what is left without a newline at the end as a partial line
        (STDOUT, True, b"partial"),
    ]
    stdout = [x for x in lines if x.stream == STDOUT]
    assert [x.content for x in stdout] == [b"one", b"partial"]  # in order
    assert before - 10**9 <= stdout[0].ns <= stdout[1].ns <= time.time_ns()
    assert all(before - 10**9 <= x.ns <= time.time_ns() for x in lines)
    # the file is the CRI's: 0640 (less the umask), and the container reports its path
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 & ~umask
    [state] = [c for c in await rt.list_containers() if c.id == cid]
    assert state.log_path == str(path)


async def test_a_long_line_is_cut_into_partial_pieces(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "long.log"
    script = "head -c 40000 /dev/zero | tr '\\0' a; echo; echo after"
    _, cid = await run(rt, pod_with(unique("long"), script, path))
    lines = await lines_when(path, lambda x: bool(x) and x[-1].content == b"after")
    assert [(x.partial, len(x.content)) for x in lines] == [
        (True, MAX_LINE),
        (True, MAX_LINE),
        (False, 40000 - 2 * MAX_LINE),
        (False, 5),
    ]
    assert b"".join(x.output for x in lines[:3]) == b"a" * 40000 + b"\n"


async def test_a_tty_container_logs_lines_without_cr(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "tty.log"
    pod = pod_with(unique("tty"), "echo hello; echo world", path, tty=True)
    _, cid = await run(rt, pod)
    lines = await lines_when(path, lambda x: len(x) >= 2)
    assert [(x.stream, x.partial, x.content) for x in lines] == [
        (STDOUT, False, b"hello"),
        (STDOUT, False, b"world"),
    ]


async def test_appends_to_a_file_that_exists(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "kept.log"
    old = b"2016-10-06T00:17:09.669794202Z stdout F from before\n"
    path.write_bytes(old)
    _, cid = await run(rt, pod_with(unique("append"), "echo new", path))
    lines = await lines_when(path, lambda x: len(x) >= 2)
    assert [x.content for x in lines] == [b"from before", b"new"]


async def test_bad_log_paths(rt: Runtime, tmp_path: Path) -> None:
    with pytest.raises(InvalidPod, match=r"spec.containers\[0\].logPath: Invalid value"):
        await run(rt, pod_with(unique("rel"), "echo x", "relative/0.log"))
    pod = pod_with(unique("nodir"), "echo x > /dev/null", tmp_path / "missing" / "0.log")
    sandbox = await rt.run_pod_sandbox(pod)
    cid = await rt.create_container(sandbox, pod, pod.containers[0])
    with pytest.raises(BackendError, match="failed to create and open log file"):
        await rt.start_container(cid)
    [state] = [c for c in await rt.list_containers() if c.id == cid]
    assert state.state == "created"  # the start failed before the container ran


async def test_no_log_path_writes_nothing(rt: Runtime, tmp_path: Path) -> None:
    pod = pod_with(unique("nolog"), "echo quiet", "")
    assert pod.containers[0].log_path == ""
    _, cid = await run(rt, pod)
    await exited(rt, cid)
    [state] = [c for c in await rt.list_containers() if c.id == cid]
    assert state.log_path == ""
    assert logs_under(tmp_path) == []


async def test_stop_returns_with_the_output_in_the_file(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "stop.log"
    script = "trap 'echo bye; exit 0' TERM; echo hi; while true; do sleep 0.1; done"
    _, cid = await run(rt, pod_with(unique("stop"), script, path))
    await lines_when(path, lambda x: len(x) >= 1)
    await rt.stop_container(cid, 10)
    lines = parse_lines(path.read_bytes())  # (the process runtime's shell may say Terminated)
    assert [x.content for x in lines if x.stream == STDOUT] == [b"hi", b"bye"]


def test_container_spec_defaults() -> None:
    assert ContainerSpec("c", "i").log_path == ""

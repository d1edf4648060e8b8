"""A Docker container's log file across server restarts and engine trouble: no line lost,
none written twice."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from streamsrv.pods import PodSpec, parse_pod
from streamsrv.protocol.crilog import STDERR, STDOUT, LogLine, parse_lines
from streamsrv.runtime import docker as docker_runtime
from streamsrv.runtime.docker import DockerRuntime
from tests.conftest import BUSYBOX, PAUSE, pod_manifest, unique

pytestmark = pytest.mark.docker

# a line on stdout and one on stderr every 20 ms, numbered, for ``seconds``
COUNTER = (
    "i=0; end=$(( $(date +%s) + {seconds} )); "
    "while [ $(date +%s) -lt $end ]; do echo out$i; echo err$i >&2; i=$((i+1)); sleep 0.02; "
    "done; echo done"
)


def pod_with(script: str, path: Path) -> PodSpec:
    spec = parse_pod(
        pod_manifest(
            unique("resume"), {"name": "main", "image": BUSYBOX, "command": ["sh", "-c", script]}
        )
    )
    main = dataclasses.replace(spec.containers[0], log_path=str(path))
    return dataclasses.replace(spec, containers=(main,))


async def start(rt: DockerRuntime, pod: PodSpec) -> str:
    await rt.ensure_image(BUSYBOX)
    sandbox = await rt.run_pod_sandbox(pod)
    cid = await rt.create_container(sandbox, pod, pod.containers[0])
    await rt.start_container(cid)
    return cid


def read_lines(path: Path) -> list[LogLine]:
    return parse_lines(path.read_bytes()) if path.exists() else []


async def lines_when(path: Path, done: Any, within: float = 30) -> list[LogLine]:
    deadline = time.monotonic() + within
    while True:
        lines = read_lines(path)
        if done(lines):
            return lines
        assert time.monotonic() < deadline, lines[-5:]
        await asyncio.sleep(0.05)


def numbered(lines: list[LogLine], stream: str, prefix: bytes) -> list[int]:
    return [
        int(x.content[len(prefix) :])
        for x in lines
        if x.stream == stream and re.fullmatch(prefix + rb"\d+", x.content)
    ]


def assert_complete(lines: list[LogLine]) -> None:
    """Every numbered line once, in order, on each stream, and the last one."""
    assert all(not x.partial for x in lines)
    out, err = numbered(lines, STDOUT, b"out"), numbered(lines, STDERR, b"err")
    assert out == list(range(len(out))) and len(out) > 20, out
    assert err == list(range(len(err))) and abs(len(err) - len(out)) <= 1, err
    assert [x.content for x in lines if x.stream == STDOUT][-1] == b"done"


def has_done(lines: list[LogLine]) -> bool:
    # stdout's last line; stderr's may come after it (the engine has a copier per stream)
    return any(x.content == b"done" for x in lines)


async def test_a_new_runtime_goes_on_after_the_last_line(
    docker_engine: None, tmp_path: Path
) -> None:
    path = tmp_path / "0.log"
    first = DockerRuntime(pause_image=PAUSE)
    try:
        cid = await start(first, pod_with(COUNTER.format(seconds=3), path))
        await lines_when(path, lambda x: len(x) >= 20)
    finally:
        await first.close()  # the server goes away; the container writes on
    written = len(parse_lines(path.read_bytes()))
    await asyncio.sleep(0.5)
    assert len(parse_lines(path.read_bytes())) == written  # nobody follows now
    # a server killed while writing leaves a line cut short: it is cut off
    with path.open("ab") as f:
        f.write(b"2030-01-01T00:00:00.000000000Z stdout F cut sho")
    second = DockerRuntime(pause_image=PAUSE)
    try:
        assert await second.resume_logs() == 1
        assert await second.resume_logs() == 0  # already followed
        lines = await lines_when(path, has_done)
        assert [c.log_path for c in await second.list_containers() if c.id == cid] == [str(path)]
    finally:
        await second.close()
    assert_complete(lines)
    assert b"cut sho" not in path.read_bytes()


async def test_a_container_that_ended_while_no_server_ran_is_caught_up(
    docker_engine: None, tmp_path: Path
) -> None:
    path = tmp_path / "0.log"
    first = DockerRuntime(pause_image=PAUSE)
    try:
        cid = await start(first, pod_with(COUNTER.format(seconds=2), path))
        await lines_when(path, lambda x: len(x) >= 10)
    finally:
        await first.close()
    second = DockerRuntime(pause_image=PAUSE)
    try:
        deadline = time.monotonic() + 20
        while await second.container_stopped(cid) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert await second.recover() == 0  # recover resumes logs (no exec to kill)
        lines = await lines_when(path, has_done)
        await asyncio.sleep(0.3)
    finally:
        await second.close()
    assert_complete(parse_lines(path.read_bytes()))
    assert lines == parse_lines(path.read_bytes())
    # complete now: a third server has nothing to catch up
    third = DockerRuntime(pause_image=PAUSE)
    try:
        assert await third.resume_logs() == 0
    finally:
        await third.close()


async def test_a_finished_log_is_not_read_again(docker_engine: None, tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    rt = DockerRuntime(pause_image=PAUSE)
    try:
        cid = await start(rt, pod_with("echo once", path))
        await lines_when(path, lambda x: len(x) == 1)
        deadline = time.monotonic() + 10
        while cid in rt._log_followers:  # the follower ends with the container
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await rt.close()
    again = DockerRuntime(pause_image=PAUSE)
    try:
        assert await again.resume_logs() == 0
    finally:
        await again.close()
    assert [x.content for x in parse_lines(path.read_bytes())] == [b"once"]


async def test_removing_a_running_container_ends_its_follower(
    docker_engine: None, tmp_path: Path
) -> None:
    path = tmp_path / "0.log"
    rt = DockerRuntime(pause_image=PAUSE)
    try:
        cid = await start(rt, pod_with("echo up; exec sleep 1000", path))
        await lines_when(path, lambda x: len(x) == 1)
        assert cid in rt._log_followers
        await rt.remove_container(cid)
        assert cid not in rt._log_followers
    finally:
        await rt.close()
    fd_dir = Path(f"/proc/{os.getpid()}/fd")
    assert not any(
        os.readlink(fd_dir / fd) == str(path)
        for fd in os.listdir(fd_dir)
        if (fd_dir / fd).is_symlink()
    )


@pytest.mark.parametrize("tail", [1000, 3])
async def test_catching_up_from_the_end_or_from_the_start(
    docker_engine: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tail: int
) -> None:
    """A stopped container's missing lines are read as the engine's last messages when they
    reach back far enough (tail 1000), else as its whole log since the file's last line."""
    monkeypatch.setattr(docker_runtime, "LOG_CATCHUP_TAIL", tail)
    path = tmp_path / "0.log"
    batch = "for i in $(seq {0} {1}); do echo out$i; echo err$i >&2; done"
    script = f"{batch.format(0, 29)}; sleep 1; {batch.format(30, 59)}; echo done"
    first = DockerRuntime(pause_image=PAUSE)
    try:
        cid = await start(first, pod_with(script, path))
        await lines_when(path, lambda x: len(x) >= 60)
    finally:
        await first.close()
    second = DockerRuntime(pause_image=PAUSE)
    try:
        deadline = time.monotonic() + 20
        while await second.container_stopped(cid) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert await second.resume_logs() == 1
        await lines_when(path, lambda x: len(x) >= 121)
        await asyncio.sleep(0.3)
    finally:
        await second.close()
    lines = read_lines(path)
    assert_complete(lines)
    assert len(lines) == 121

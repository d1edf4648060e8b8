"""What only the process runtime does: process groups, no leftovers, attach fan-out."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamsrv.podmanager import PodManager
from streamsrv.pods import parse_pod
from streamsrv.protocol.resize import TerminalSize
from streamsrv.runtime.base import BackendError, Pipe, Resizes, StdIO
from streamsrv.runtime.process import ProcessRuntime
from tests.conftest import Server, host_processes, pod_manifest, unique


class Buffer:
    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        self.data += data

    async def wait_for(self, needle: bytes, within: float = 10) -> None:
        deadline = time.monotonic() + within
        while needle not in self.data:
            assert time.monotonic() < deadline, bytes(self.data[-500:])
            await asyncio.sleep(0.02)


async def gone(pattern: str, within: float = 5) -> bool:
    deadline = time.monotonic() + within
    while host_processes(pattern):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    runtime = ProcessRuntime(tmp_path / "pods")
    yield runtime
    await runtime.close()


def container(name: str, *command: str, **extra: object) -> dict[str, object]:
    return {"name": name, "image": "recorded/only", "command": list(command), **extra}


async def test_deleting_a_pod_kills_its_whole_process_group(rt: ProcessRuntime) -> None:
    marker = str(70000 + int.from_bytes(os.urandom(2), "big"))
    manager = PodManager(rt)
    name = unique("grp")
    script = f"sleep {marker}1 & sleep {marker}2 & wait"
    await manager.create(parse_pod(pod_manifest(name, container("main", "sh", "-c", script))))
    deadline = time.monotonic() + 5
    while len(host_processes(f"sleep {marker}")) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await manager.delete("default", name, grace=5)
    assert await gone(f"sleep {marker}")
    assert await manager.get("default", name) is None


async def test_stop_sends_term_first_and_records_the_exit(rt: ProcessRuntime) -> None:
    manager = PodManager(rt)
    name = unique("term")
    script = 'trap "echo bye > term.txt; exit 0" TERM; while true; do sleep 0.05; done'
    pod = await manager.create(parse_pod(pod_manifest(name, container("main", "sh", "-c", script))))
    cid = pod.container_id("main")
    assert cid
    await asyncio.sleep(0.2)  # let the shell set its trap
    await rt.stop_container(cid, 10)
    [state] = await rt.list_containers({"io.kubernetes.pod.name": name})
    assert (state.state, state.exit_code) == ("exited", 0)
    [sandbox] = await rt.list_pod_sandboxes({"io.kubernetes.pod.name": name})
    found = list((rt.root).glob(f"default_{name}_*/term.txt"))
    assert found and found[0].read_text() == "bye\n", sandbox


async def test_container_without_command_is_refused_and_nothing_is_left(
    rt: ProcessRuntime,
) -> None:
    manager = PodManager(rt)
    ok = container("ok", "sleep", "1000")
    bad = {"name": "bad", "image": "busybox"}
    with pytest.raises(BackendError, match="give the container a command"):
        await manager.create(parse_pod(pod_manifest(unique("bad"), ok, bad)))
    assert await rt.list_pod_sandboxes() == []
    assert await rt.list_containers() == []
    assert list(rt.root.iterdir()) == []


async def test_container_whose_program_is_missing_is_refused_and_nothing_is_left(
    rt: ProcessRuntime,
) -> None:
    manager = PodManager(rt)
    ok = container("ok", "sleep", "1000")
    bad = container("bad", "no-such-program-x")
    with pytest.raises(BackendError, match='"no-such-program-x": executable file not found'):
        await manager.create(parse_pod(pod_manifest(unique("nf"), ok, bad)))
    assert await rt.list_pod_sandboxes() == []
    assert await rt.list_containers() == []


async def test_exec_runs_in_the_pod_directory_with_its_env(rt: ProcessRuntime) -> None:
    env = [{"name": "GREETING", "value": "hi there"}]
    pod = await PodManager(rt).create(
        parse_pod(pod_manifest(unique("env"), container("main", "sleep", "1000", env=env)))
    )
    cid = pod.container_id("main")
    assert cid
    out = Buffer()
    code = await rt.exec(cid, ["sh", "-c", 'echo "$GREETING"; pwd'], StdIO(stdout=out), tty=False)
    lines = out.data.decode().splitlines()
    assert code == 0 and lines[0] == "hi there"
    assert Path(lines[1]).parent == rt.root


async def test_missing_command_exits_127_with_a_message(rt: ProcessRuntime) -> None:
    pod = await PodManager(rt).create(
        parse_pod(pod_manifest(unique("nf"), container("main", "sleep", "1000")))
    )
    cid = pod.container_id("main")
    assert cid
    out, err = Buffer(), Buffer()
    code = await rt.exec(cid, ["no-such-command-x"], StdIO(stdout=out, stderr=err), tty=False)
    assert code == 127
    assert b'"no-such-command-x": executable file not found' in err.data


async def test_two_attached_clients_share_a_tty_container(rt: ProcessRuntime) -> None:
    console = container("console", "sh", stdin=True, tty=True)
    pod = await PodManager(rt).create(parse_pod(pod_manifest(unique("att"), console)))
    cid = pod.container_id("console")
    assert cid
    a_in, a_out, b_out, b_resize = Pipe(), Buffer(), Buffer(), Resizes()
    a = asyncio.create_task(rt.attach(cid, StdIO(stdin=a_in, stdout=a_out), tty=True))
    b = asyncio.create_task(rt.attach(cid, StdIO(stdout=b_out, resize=b_resize), tty=True))
    await asyncio.sleep(0.2)
    b_resize.put(TerminalSize(91, 19))
    await asyncio.sleep(0.2)
    await a_in.feed(b"stty size; echo mark-$((40+2))\n")
    await a_out.wait_for(b"19 91")
    await a_out.wait_for(b"mark-42")
    await b_out.wait_for(b"mark-42")  # the other client sees the same terminal
    b.cancel()  # one client leaves; the container and the other client go on
    with pytest.raises(asyncio.CancelledError):
        await b
    await a_in.feed(b"exit 4\n")
    await asyncio.wait_for(a, 10)  # attach ends when the container ends
    [state] = await rt.list_containers()
    assert (state.state, state.exit_code) == ("exited", 4)


async def test_a_killed_server_leaves_no_pod_process(tmp_path: Path) -> None:
    marker = str(80000 + int.from_bytes(os.urandom(2), "big"))
    server = Server(tmp_path / "state", runtime="process")
    server.start()
    try:
        manifest = tmp_path / "pod.yaml"
        manifest.write_text(
            f"""apiVersion: v1
kind: Pod
metadata: {{name: orphan}}
spec:
  containers:
  - {{name: main, image: none, command: ["sleep", "{marker}"]}}
"""
        )
        assert server.cli("pod", "run", "-f", str(manifest)).returncode == 0
        assert host_processes(f"sleep {marker}")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel does it
        server.proc.wait()
        assert await gone(f"sleep {marker}"), host_processes(f"sleep {marker}")
    finally:
        server.stop()


class Failing:
    async def write(self, data: bytes) -> None:
        raise ConnectionResetError("the client is gone")


class Held:
    """A sink that takes its time (a slow client), until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def write(self, data: bytes) -> None:
        await self.release.wait()


async def test_an_exec_that_fails_stops_every_copy_before_its_fds_are_reused(
    rt: ProcessRuntime,
) -> None:
    """Old main left exec A's stderr copy running after its stdout sink failed and its fds
    were closed; exec B's pipe got the same numbers, and A's copy then read B's pipe (a
    blocking read that froze the whole server under soak/fuzz.py)."""
    pod = await PodManager(rt).create(
        parse_pod(pod_manifest("p", container("main", "sleep", "1000")))
    )
    cid = pod.container_id("main")
    assert cid is not None
    held = Held()
    with pytest.raises(ConnectionResetError):
        await rt.exec(cid, ["sh", "-c", "echo err >&2; sleep 0.3; echo out"],
                      StdIO(stdout=Failing(), stderr=held), tty=False)  # fmt: skip
    assert not [t for t in asyncio.all_tasks() if "_exec_io.<locals>.copy" in repr(t.get_coro())]
    out = Buffer()
    b = asyncio.create_task(
        rt.exec(
            cid, ["sh", "-c", "sleep 0.3; echo B"], StdIO(stdout=out, stderr=Buffer()), tty=False
        )  # fmt: skip
    )
    await asyncio.sleep(0.05)
    held.release.set()
    assert await asyncio.wait_for(b, 10) == 0
    assert out.data == b"B\n"


async def test_a_tty_exec_ended_before_its_first_size_leaves_no_terminal_open(
    rt: ProcessRuntime,
) -> None:
    pod = await PodManager(rt).create(
        parse_pod(pod_manifest("p", container("main", "sleep", "1000")))
    )
    cid = pod.container_id("main")
    assert cid is not None

    def terminals() -> int:
        return sum(
            os.readlink(f"/proc/self/fd/{fd}").startswith("/dev/pts")
            for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")
        )

    before = terminals()
    for _ in range(5):
        task = asyncio.create_task(
            rt.exec(cid, ["cat"], StdIO(stdout=Buffer(), resize=Resizes()), tty=True)
        )
        await asyncio.sleep(0.05)  # waiting for the client's first size
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert terminals() == before  # old main: one more /dev/pts fd per session


async def test_an_exec_with_no_output_streams_runs(rt: ProcessRuntime) -> None:
    """stdin only (kubectl's `exec -i` with stdout and stderr off): no output to copy. Found
    by soak/fuzz.py: waiting on an empty set of copies raised ValueError."""
    pod = await PodManager(rt).create(
        parse_pod(pod_manifest("p", container("main", "sleep", "1000")))
    )
    cid = pod.container_id("main")
    assert cid is not None
    stdin = Pipe()
    stdin.close()
    assert await rt.exec(cid, ["sh", "-c", "exit 5"], StdIO(stdin=stdin), tty=False) == 5
    # ... and its input reaches the process, end of file included (`cat` ends with it)
    stdin = Pipe()
    task = asyncio.create_task(
        rt.exec(cid, ["sh", "-c", "wc -c > count"], StdIO(stdin=stdin), tty=False)
    )
    await stdin.feed(b"12345")
    stdin.close()
    assert await asyncio.wait_for(task, 10) == 0

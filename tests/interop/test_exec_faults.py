"""Exec sessions that end in a fault, with real kubectl on both runtimes: the process in the
pod never outlives its session, and the client always learns why its session ended.

- A client killed while its command writes (the server's write to it fails rather than the
  session being cancelled) and a pipeline that stops reading (`kubectl exec … | head`).
- A container that stops under a live exec: the exec ends at once, its process is killed,
  kubectl exits 137 (as with the kubelet) and the status's message names the container's state.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import (
    BUSYBOX,
    RUNTIMES,
    Server,
    engine_container,
    server_with_pod,
)
from tests.interop.test_exec_kubectl import Kubectl, Transport

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]

POD = "faultpod"
# The two transports: 1.27 speaks SPDY only, 1.33 WebSocket v5.
CLIENTS = [Kubectl("1.27", "spdy"), Kubectl("1.33", "websocket")]
VERSIONS = pytest.mark.parametrize("kc", CLIENTS, ids=str)
HANG = 30  # a generous bound: a session that should end and does not is a hang


@pytest.fixture(scope="module", params=RUNTIMES)
def srv(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    victims = "".join(
        f"""
  - name: victim{i}
    image: {BUSYBOX}
    command: ["sleep", "{200000 + i}"]"""
        for i in range(len(CLIENTS))
    )
    with server_with_pod(
        tmp_path_factory.mktemp("faults"),
        f"""apiVersion: v1
kind: Pod
metadata: {{name: {POD}}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sleep", "100000"]{victims}
""",
        request.param,
    ) as server:
        yield server


def marker() -> str:
    return str(100000 + int.from_bytes(os.urandom(2), "big"))


def wait_for(srv: Server, pattern: str, container: str = "main") -> None:
    deadline = time.monotonic() + HANG
    while not srv.processes(pattern, container):
        assert time.monotonic() < deadline, f"{pattern!r} never started"
        time.sleep(0.1)


def wait_gone(srv: Server, pattern: str, container: str = "main") -> None:
    deadline = time.monotonic() + HANG
    while left := srv.processes(pattern, container):
        assert time.monotonic() < deadline, f"left running in the pod: {left}"
        time.sleep(0.2)


@VERSIONS
def test_client_killed_while_output_flows_leaves_no_process(srv: Server, kc: Kubectl) -> None:
    """The session ends on a failed write to the client, not on a cancellation."""
    t = Transport(srv, kc)
    word = f"flood{marker()}"
    cmd = srv.kubectl_cmd(kc.version, "exec", POD, "-c", "main", "--", "yes", word)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=kc.env)
    try:
        assert proc.stdout is not None
        got = 0
        while got < 4 << 20:  # output is flowing through the server
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            assert chunk, "the exec produced no output"
            got += len(chunk)
        wait_for(srv, f"yes {word}")
        proc.kill()
        proc.wait()
        wait_gone(srv, f"yes {word}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    t.check()


@VERSIONS
def test_pipeline_that_stops_reading_ends_the_exec(srv: Server, kc: Kubectl) -> None:
    """`kubectl exec POD -- yes | head -c 10M`: head exits, kubectl dies of SIGPIPE, and the
    `yes` in the pod must end with it."""
    word = f"pipe{marker()}"
    cmd = " ".join(srv.kubectl_cmd(kc.version, "exec", POD, "-c", "main", "--", "yes", word))
    r = subprocess.run(
        ["sh", "-c", f"{cmd} | head -c 10000000 | wc -c"],
        capture_output=True,
        timeout=HANG * 2,
        env=kc.env,
    )
    assert r.stdout.strip() == b"10000000", r
    wait_gone(srv, f"yes {word}")


def stop_container(srv: Server, container: str) -> None:
    """Stop one container of the pod from outside, as `docker kill` or a crash would."""
    if srv.runtime == "docker":
        with engine_container(POD, container) as c:
            c.kill()
        return
    index = int(container.removeprefix("victim"))
    [line] = srv.processes(f"sleep {200000 + index}", container)
    os.kill(int(line.split()[0]), signal.SIGKILL)


@VERSIONS
def test_exec_ends_when_its_container_stops(srv: Server, kc: Kubectl) -> None:
    container = f"victim{CLIENTS.index(kc)}"
    t = Transport(srv, kc)
    word = marker()
    cmd = srv.kubectl_cmd(kc.version, "exec", POD, "-c", container, "--", "sleep", word)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kc.env)
    try:
        wait_for(srv, f"sleep {word}")  # every container of the pod sees the pod's processes
        stop_container(srv, container)
        _, err = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # What the kubelet gives: the process was killed (128 + SIGKILL); kubectl prints its own
    # "command terminated with exit code 137". The status's message (which API clients see)
    # and the server's log say why.
    assert proc.returncode == 137, (proc.returncode, err)
    assert b"exit code 137" in err, err
    assert f'ended: container "{container}" exited with code' in srv.log.read_text()
    wait_gone(srv, f"sleep {word}")
    t.check()

"""`stdinOnce` with real kubectl (1.27 over SPDY, 1.33 over WebSocket v5), on both runtimes.

`echo data | kubectl attach -i POD` into a pod made with `kubectl create -f`: the first
client's end of input closes a stdinOnce container's stdin, so `cat` ends, the container
writes `bye` and exits, and kubectl ends with all of it. Without stdinOnce, stdin stays open
for the next client.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import BUSYBOX, RUNTIMES, Server, require_runtime, stop_process, unique

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]

VERSIONS = pytest.mark.parametrize("version", ["1.27", "1.33"])
# kubectl 1.27 wants a protobuf OpenAPI v2 schema to validate `create` (tests/interop/
# test_kubectl_pods.py says why); 1.33 validates on the server.
CREATE_FLAGS = {"1.27": ["--validate=false"], "1.33": []}
HANG = 60  # seconds: only a hang takes this long


@pytest.fixture(scope="module", params=RUNTIMES)
def srv(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    require_runtime(request.param)
    server = Server(tmp_path_factory.mktemp("once") / "state", runtime=request.param)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if request.param == "docker":
            from tests.conftest import _remove_everything

            _remove_everything()


def create(srv: Server, version: str, name: str, script: str, *, once: bool) -> None:
    """A pod of one container running ``sh -c script`` with stdin (and stdinOnce), Running."""
    manifest = srv.state_dir / f"{name}.yaml"
    manifest.write_text(
        f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sh", "-c", {script!r}]
    stdin: true
    stdinOnce: {"true" if once else "false"}
"""
    )
    r = srv.kubectl(version, "create", *CREATE_FLAGS[version], "-f", str(manifest))
    assert r.returncode == 0, r.stderr
    assert phase(srv, name, version) == "Running"


def phase(srv: Server, name: str, version: str = "1.33") -> str:
    r = srv.kubectl(version, "get", "pod", name, "-o", "jsonpath={.status.phase}")
    assert r.returncode == 0, r.stderr
    return r.stdout


def wait_phase(srv: Server, name: str, wanted: str) -> None:
    deadline = time.monotonic() + HANG
    while (now := phase(srv, name)) != wanted:
        assert time.monotonic() < deadline, now
        time.sleep(0.2)


@VERSIONS
def test_end_of_input_closes_stdin_once(srv: Server, version: str) -> None:
    name = unique("once")
    create(srv, version, name, "cat; echo bye", once=True)
    r = srv.kubectl(version, "attach", "-i", name, input="data\n", timeout=HANG)
    assert (r.returncode, r.stdout) == (0, "data\nbye\n"), r.stderr
    wait_phase(srv, name, "Succeeded")
    # A second attach: the container has exited with its stdin, so the pod has completed,
    # and kubectl itself refuses (as against a kubelet).
    r = srv.kubectl(version, "attach", "-i", name, input="more\n", timeout=HANG)
    assert r.returncode != 0
    assert "cannot attach a container in a completed pod; current phase is Succeeded" in r.stderr


@VERSIONS
def test_end_of_input_with_more_to_do(srv: Server, version: str) -> None:
    """The container outlives its stdin: the attach lasts until the container ends."""
    name = unique("more")
    create(srv, version, name, "wc -l; sleep 1; echo done", once=True)
    r = srv.kubectl(version, "attach", "-i", name, input="a\nb\nc\n", timeout=HANG)
    assert (r.returncode, r.stdout.split()) == (0, ["3", "done"]), r.stderr


def attach_and_type(srv: Server, version: str, name: str, word: str) -> subprocess.Popen[bytes]:
    """`kubectl attach -i` with ``word`` typed, once the container echoed it back."""
    proc = srv.kubectl_popen(
        version,
        "attach",
        "-i",
        name,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + HANG
    while word.encode() not in seen:
        assert time.monotonic() < deadline, seen
        # typed again until it comes back: the attach may not be set up at the first write
        proc.stdin.write(f"{word}\n".encode())
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"kubectl ended: {proc.wait()}"
            seen += chunk
    return proc


@VERSIONS
def test_without_stdin_once_stdin_stays_open(srv: Server, version: str) -> None:
    name = unique("open")
    create(srv, version, name, "cat", once=False)
    for word in ("first", "second"):
        proc = attach_and_type(srv, version, name, word)
        stop_process(proc, signal.SIGKILL)  # the client is gone, its input never ended
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()
        time.sleep(0.5)
        assert phase(srv, name) == "Running", f"stdin was closed after {word}"
    r = srv.kubectl(version, "delete", "pod", name, "--grace-period=1", timeout=HANG)
    assert r.returncode == 0, r.stderr


@VERSIONS
def test_kubectl_run_i_rm(srv: Server, version: str) -> None:
    """The whole user-visible case: `kubectl run -i` makes the pod with stdinOnce, waits for
    it (a watch), attaches; the end of input ends `cat`, and `--rm` deletes the pod."""
    name = unique("run")
    r = srv.kubectl(
        version,
        "run",
        "-i",
        "--rm",
        name,
        f"--image={BUSYBOX}",
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "cat; echo bye",
        input="data\n",
        timeout=HANG,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f'data\nbye\npod "{name}" deleted\n'
    r = srv.kubectl(version, "get", "pod", name)
    assert r.returncode != 0 and "not found" in r.stderr

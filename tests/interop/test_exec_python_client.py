"""exec and attach with the official `kubernetes` Python client (kubernetes.stream)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator

import pytest
from kubernetes import client, config
from kubernetes.stream import stream

from tests.conftest import BUSYBOX, RUNTIMES, Server, _remove_everything, require_runtime
from tests.interop.test_exec_kubectl import sessions

pytestmark = pytest.mark.docker
POD = "pyexec"


@pytest.fixture(scope="module", params=RUNTIMES)
def api(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[client.CoreV1Api, Server]]:
    runtime = request.param
    require_runtime(runtime)
    if runtime == "docker":
        _remove_everything()  # a module that failed before may have left pods behind
    server = Server(tmp_path_factory.mktemp("py") / "state", runtime=runtime)
    server.start()
    api_client = config.new_client_from_config(config_file=str(server.kubeconfig))
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(
        "default",
        {  # type: ignore[arg-type]
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": POD},
            "spec": {
                "containers": [
                    {"name": "main", "image": BUSYBOX, "command": ["sleep", "100000"]},
                    {
                        "name": "console",
                        "image": BUSYBOX,
                        "command": ["sh"],
                        "stdin": True,
                        "tty": True,
                    },
                ],
            },
        },
    )
    yield core, server
    api_client.close()
    server.stop()
    if runtime == "docker":
        _remove_everything()


def run(
    core: client.CoreV1Api,
    command: list[str],
    *,
    stdin: bytes | None = None,
    echo: bool = False,
    container: str = "main",
) -> tuple[bytes, bytes, int | None]:
    resp = stream(
        core.connect_get_namespaced_pod_exec, POD, "default", command=command,
        container=container, stderr=True, stdin=stdin is not None, stdout=True, tty=False,
        _preload_content=False, binary=True,
    )  # fmt: skip
    out, err = b"", b""
    try:
        assert resp.subprotocol == "v5.channel.k8s.io"
        if stdin is not None:
            # One thread (the TLS socket is not safe to share): write a chunk, then read what
            # is there, never more than `window` ahead of an echoing command such as `cat`,
            # or both sides would block on full buffers.
            view, window, chunk = memoryview(stdin), 4 << 20, 256 << 10
            for i in range(0, len(view), chunk):
                resp.write_stdin(bytes(view[i : i + chunk]))
                deadline = time.monotonic() + 60
                while echo and len(out) < i - window and time.monotonic() < deadline:
                    resp.update(timeout=1)
                    out += resp.read_stdout(timeout=0)
                resp.update(timeout=0)
                out += resp.read_stdout(timeout=0)
                err += resp.read_stderr(timeout=0)
            resp.close_channel(0)
        deadline = time.monotonic() + 120
        while resp.is_open() and time.monotonic() < deadline:
            resp.update(timeout=1)
            out += resp.read_stdout(timeout=0)
            err += resp.read_stderr(timeout=0)
        assert not resp.is_open(), "the server never closed the session"
        # The client reads frames inside read_stderr too (it updates to peek): the last
        # stdout frames can arrive there with the close, after the loop's last read_stdout.
        # Without this, the tail of a large output went missing now and then (CI saw 64 KiB
        # to 640 KiB short; the server had sent every byte before its status).
        out += resp.read_stdout(timeout=0)
        err += resp.read_stderr(timeout=0)
        return out, err, resp.returncode
    finally:
        resp.close()
        resp.sock.shutdown()  # the client leaves the socket open after a server close


def test_echo_hello(api: tuple[client.CoreV1Api, Server]) -> None:
    core, server = api
    before = sessions(server)
    out, err, code = run(core, ["echo", "hello"])
    assert (out, err, code) == (b"hello\n", b"", 0)
    assert sessions(server) == before + 1


def test_exit_42(api: tuple[client.CoreV1Api, Server]) -> None:
    out, err, code = run(api[0], ["sh", "-c", "echo e >&2; exit 42"])
    assert (out, err, code) == (b"", b"e\n", 42)


def test_stdin_64mib_round_trip(api: tuple[client.CoreV1Api, Server]) -> None:
    data = os.urandom(64 * 1024 * 1024)
    out, _, code = run(api[0], ["cat"], stdin=data, echo=True)
    assert code == 0
    assert len(out) == len(data)
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()


def test_stdin_counted_by_wc(api: tuple[client.CoreV1Api, Server]) -> None:
    data = os.urandom(64 * 1024 * 1024)
    out, _, code = run(api[0], ["wc", "-c"], stdin=data)
    assert code == 0 and out.split() == [str(len(data)).encode()]


def test_default_container_without_container_parameter(
    api: tuple[client.CoreV1Api, Server],
) -> None:
    # Two containers and no annotation: the apiserver's error, before any upgrade.
    core, _ = api
    with pytest.raises(Exception, match="a container name must be specified"):
        stream(core.connect_get_namespaced_pod_exec, POD, "default", command=["true"],
               stderr=True, stdin=False, stdout=True, tty=False)  # fmt: skip


def test_attach_echoes_what_is_written(api: tuple[client.CoreV1Api, Server]) -> None:
    core, server = api
    before = sessions(server, "attach")
    resp = stream(
        core.connect_get_namespaced_pod_attach, POD, "default", container="console",
        stdin=True, stdout=True, stderr=False, tty=True, _preload_content=False, binary=True,
    )  # fmt: skip
    try:
        resp.write_stdin(b"echo py-$((40+2))\n")
        out, deadline = b"", time.monotonic() + 15
        while b"py-42" not in out and time.monotonic() < deadline:
            resp.update(timeout=1)
            out += resp.read_stdout(timeout=0)
        assert b"py-42" in out
    finally:
        resp.close()
        resp.sock.shutdown()
    assert sessions(server, "attach") == before + 1


def test_client_gone_mid_command_leaves_no_process(api: tuple[client.CoreV1Api, Server]) -> None:
    core, server = api
    marker = str(200000 + int.from_bytes(os.urandom(2), "big"))
    resp = stream(
        core.connect_get_namespaced_pod_exec, POD, "default", container="main",
        command=["sh", "-c", f"sleep {marker}"], stdout=True, stderr=True, stdin=False, tty=False,
        _preload_content=False,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while not server.processes(f"sleep {marker}"):
        assert time.monotonic() < deadline, "the exec never started"
        time.sleep(0.1)
    resp.sock.sock.close()  # vanish without a close frame, like a killed process
    deadline = time.monotonic() + 5
    while server.processes(f"sleep {marker}"):
        assert time.monotonic() < deadline, server.processes(f"sleep {marker}")
        time.sleep(0.1)

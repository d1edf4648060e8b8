"""exec and attach over WebSocket with real kubectl (1.30-1.33) and the real Docker engine.

kubectl 1.30+ silently falls back to SPDY when a WebSocket upgrade is refused, so every test
also proves the transport: no fallback line in `-v=6` output, and the server counted a
WebSocket session.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import docker
import pytest

from tests.conftest import BUSYBOX, Server, _remove_everything, kubectl_path, require_docker, unique
from tests.ptyproc import PtyProcess

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]

VERSIONS = ["1.30", "1.31", "1.32", "1.33"]
POD = "execpod"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_docker()
    server = Server(tmp_path_factory.mktemp("exec") / "state")
    server.start()
    manifest = server.state_dir / "pod.yaml"
    manifest.write_text(
        f"""apiVersion: v1
kind: Pod
metadata: {{name: {POD}}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sleep", "100000"]
  - name: console
    image: {BUSYBOX}
    command: ["sh"]
    stdin: true
    tty: true
"""
    )
    r = server.cli("pod", "run", "-f", str(manifest))
    assert r.returncode == 0, r.stderr
    yield server
    server.stop()
    _remove_everything()


def sessions(server: Server, kind: str = "exec", transport: str = "websocket") -> int:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with urllib.request.urlopen(f"{server.url}/metrics", context=ctx, timeout=10) as resp:
        text = resp.read().decode()
    m = re.search(rf'streamsrv_sessions_total{{kind="{kind}",transport="{transport}"}} (\d+)', text)
    return int(m.group(1)) if m else 0


def kubectl(server: Server, version: str, *args: str, stdin: bytes | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    cmd = [kubectl_path(version), "--kubeconfig", str(server.kubeconfig), "--cache-dir",
           str(server.state_dir / f"kc-{version}"), "-v=6", *args]  # fmt: skip
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)


def assert_websocket(r: subprocess.CompletedProcess[bytes]) -> None:
    log = r.stderr.decode(errors="replace")
    assert "fallback" not in log.lower(), log[-3000:]


@pytest.mark.parametrize("version", VERSIONS)
def test_echo_hello_exact(srv: Server, version: str) -> None:
    before = sessions(srv)
    r = kubectl(srv, version, "exec", POD, "-c", "main", "--", "echo", "hello")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == b"hello\n"
    assert_websocket(r)
    assert sessions(srv) == before + 1


@pytest.mark.parametrize("version", VERSIONS)
def test_exit_code_42_reaches_kubectl(srv: Server, version: str) -> None:
    r = kubectl(
        srv, version, "exec", POD, "-c", "main", "--", "sh", "-c", "echo out; echo err >&2; exit 42"
    )
    assert r.returncode == 42, r.stderr[-3000:]
    assert r.stdout == b"out\n"
    assert b"err\n" in r.stderr
    assert_websocket(r)


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return os.urandom(64 * 1024 * 1024)


@pytest.mark.parametrize("version", VERSIONS)
def test_stdin_64mib_through_cat_is_identical(srv: Server, version: str, payload: bytes) -> None:
    r = kubectl(srv, version, "exec", "-i", POD, "-c", "main", "--", "cat", stdin=payload)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout) == len(payload)
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(payload).digest()
    assert_websocket(r)


@pytest.mark.parametrize("version", VERSIONS)
def test_stdin_64mib_counted_by_wc(srv: Server, version: str, payload: bytes) -> None:
    r = kubectl(srv, version, "exec", "-i", POD, "-c", "main", "--", "wc", "-c", stdin=payload)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == [str(len(payload)).encode()]
    assert_websocket(r)


@pytest.mark.parametrize("version", VERSIONS)
def test_16mib_written_just_before_exit_all_arrives(srv: Server, version: str) -> None:
    script = "dd if=/dev/zero bs=65536 count=256 2>/dev/null | tr '\\0' x; exit 3"
    start = time.monotonic()
    r = kubectl(srv, version, "exec", POD, "-c", "main", "--", "sh", "-c", script)
    elapsed = time.monotonic() - start
    assert r.returncode == 3, r.stderr[-3000:]
    assert len(r.stdout) == 16 * 1024 * 1024
    assert r.stdout.count(b"x") == len(r.stdout)
    # Generous: the process itself takes well under a second; other servers linger 10 s.
    assert elapsed < 8, elapsed
    assert_websocket(r)


@pytest.mark.parametrize("version", VERSIONS)
def test_kubectl_returns_promptly_after_the_process_ends(srv: Server, version: str) -> None:
    start = time.monotonic()
    r = kubectl(srv, version, "exec", POD, "-c", "main", "--", "true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.monotonic() - start < 3
    assert_websocket(r)


def pty_kubectl(
    server: Server, version: str, *args: str, rows: int = 24, cols: int = 80
) -> PtyProcess:
    return PtyProcess(
        [kubectl_path(version), "--kubeconfig", str(server.kubeconfig), "--cache-dir",
         str(server.state_dir / f"kc-{version}"), *args],
        rows=rows, cols=cols, env={**os.environ, "TERM": "xterm"},
    )  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
def test_interactive_shell_sees_terminal_size_changes(srv: Server, version: str) -> None:
    before = sessions(srv)
    p = pty_kubectl(srv, version, "exec", "-it", POD, "-c", "main", "--", "sh", rows=30, cols=100)
    try:
        p.write("stty size; echo mark-$((6*7))\r")
        p.expect(r"30 100\r?\n(.*\n)?mark-42", timeout=15)
        p.resize(45, 132)
        time.sleep(0.5)  # SIGWINCH -> kubectl -> resize channel -> engine
        p.write("stty size; echo mark-$((6*8))\r")
        p.expect(r"45 132\r?\n(.*\n)?mark-48", timeout=15)
        p.write("exit 7\r")
        assert p.wait(15) == 7
    finally:
        p.close()
    assert sessions(srv) == before + 1


@pytest.mark.parametrize("version", VERSIONS)
def test_attach_echoes_what_is_typed(srv: Server, version: str) -> None:
    before = sessions(srv, "attach")
    p = pty_kubectl(srv, version, "attach", "-it", POD, "-c", "console")
    try:
        word = unique("typed")
        time.sleep(1)
        p.write(f"echo {word}-$((1+1))\r")
        p.expect(f"{word}-2", timeout=15)
    finally:
        p.close()
    assert sessions(srv, "attach") == before + 1


def pod_processes(pattern: str) -> list[str]:
    client = docker.from_env()
    try:
        [main] = client.containers.list(filters={"label": "io.kubernetes.container.name=main"})
        _, out = main.exec_run(["ps", "-o", "pid,args"])
        assert isinstance(out, bytes)
        return [
            line for line in out.decode().splitlines() if pattern in line and "ps -o" not in line
        ]
    finally:
        client.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_killed_client_leaves_no_exec_process(srv: Server, version: str) -> None:
    marker = str(100000 + int.from_bytes(os.urandom(2), "big"))
    cmd = [kubectl_path(version), "--kubeconfig", str(srv.kubeconfig), "--cache-dir",
           str(srv.state_dir / f"kc-{version}"), "exec", POD, "-c", "main", "--",
           "sh", "-c", f"sleep {marker}; echo never"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not pod_processes(f"sleep {marker}"):
            assert time.monotonic() < deadline, "the exec never started"
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 5
        while pod_processes(f"sleep {marker}"):
            assert time.monotonic() < deadline, pod_processes(f"sleep {marker}")
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_exec_into_unknown_pod_or_container_is_refused(srv: Server) -> None:
    r = kubectl(srv, "1.33", "exec", "ghost", "--", "true")
    assert r.returncode != 0
    assert b'pods "ghost" not found' in r.stderr
    r = kubectl(srv, "1.33", "exec", POD, "-c", "nope", "--", "true")
    assert r.returncode != 0
    assert b"container nope is not valid for pod execpod" in r.stderr

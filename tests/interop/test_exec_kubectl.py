"""exec and attach with real kubectl (1.27-1.33) on both transports and the real engine.

kubectl 1.27-1.29 speak SPDY only; 1.30+ speak WebSocket (v5) first and silently fall back to
SPDY when the upgrade is refused, or go straight to SPDY with
KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false. Every test proves which transport carried the session:
no fallback line in `-v=6` output, and the server counted a session of that transport.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import (
    RUNTIMES,
    Server,
    console_pod,
    kubectl_path,
    metric,
    server_with_pod,
    unique,
)
from tests.ptyproc import PtyProcess

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]

POD = "execpod"


@dataclass(frozen=True)
class Kubectl:
    version: str
    transport: str  # "websocket" | "spdy"
    forced: bool = False  # SPDY chosen with KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false

    def __str__(self) -> str:
        return f"{self.version}-{self.transport}{'-forced' if self.forced else ''}"

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "TERM": "xterm"}
        if self.forced:
            env["KUBECTL_REMOTE_COMMAND_WEBSOCKETS"] = "false"
        return env


CLIENTS = (
    [Kubectl(v, "spdy") for v in ("1.27", "1.28", "1.29")]
    + [Kubectl(v, "websocket") for v in ("1.30", "1.31", "1.32", "1.33")]
    + [Kubectl(v, "spdy", forced=True) for v in ("1.30", "1.31", "1.32", "1.33")]
)
VERSIONS = pytest.mark.parametrize("kc", CLIENTS, ids=str)


@pytest.fixture(scope="module", params=RUNTIMES)
def srv(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    with server_with_pod(
        tmp_path_factory.mktemp("exec"),
        console_pod(POD),
        request.param,
    ) as server:
        yield server


def sessions(server: Server, kind: str = "exec", transport: str = "websocket") -> int:
    text = server.metrics()
    return int(metric(text, "streamsrv_sessions_total", kind=kind, transport=transport))


def kubectl(server: Server, kc: Kubectl | str, *args: str, stdin: bytes | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    if isinstance(kc, str):
        kc = Kubectl(kc, "websocket")
    cmd = [kubectl_path(kc.version), "--kubeconfig", str(server.kubeconfig), "--cache-dir",
           str(server.state_dir / f"kc-{kc.version}"), "-v=6", *args]  # fmt: skip
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, env=kc.env)


class Transport:
    """Proves a kubectl run used the expected transport, and that it did so exactly once."""

    def __init__(self, server: Server, kc: Kubectl, kind: str = "exec") -> None:
        self.server, self.kc, self.kind = server, kc, kind
        self.before = {t: sessions(server, kind, t) for t in ("websocket", "spdy")}

    def check(self, r: subprocess.CompletedProcess[bytes] | None = None) -> None:
        if r is not None:
            log = r.stderr.decode(errors="replace")
            assert "fallback" not in log.lower(), log[-3000:]
        after = {t: sessions(self.server, self.kind, t) for t in ("websocket", "spdy")}
        other = "spdy" if self.kc.transport == "websocket" else "websocket"
        assert after[self.kc.transport] == self.before[self.kc.transport] + 1, after
        assert after[other] == self.before[other], after


@VERSIONS
def test_echo_hello_exact(srv: Server, kc: Kubectl) -> None:
    t = Transport(srv, kc)
    r = kubectl(srv, kc, "exec", POD, "-c", "main", "--", "echo", "hello")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == b"hello\n"
    t.check(r)


@VERSIONS
def test_exit_code_42_reaches_kubectl(srv: Server, kc: Kubectl) -> None:
    t = Transport(srv, kc)
    r = kubectl(
        srv, kc, "exec", POD, "-c", "main", "--", "sh", "-c", "echo out; echo err >&2; exit 42"
    )
    assert r.returncode == 42, r.stderr[-3000:]
    assert r.stdout == b"out\n"
    assert b"err\n" in r.stderr
    t.check(r)


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return os.urandom(64 * 1024 * 1024)


@VERSIONS
def test_stdin_64mib_through_cat_is_identical(srv: Server, kc: Kubectl, payload: bytes) -> None:
    t = Transport(srv, kc)
    r = kubectl(srv, kc, "exec", "-i", POD, "-c", "main", "--", "cat", stdin=payload)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout) == len(payload)
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(payload).digest()
    t.check(r)


@VERSIONS
def test_stdin_64mib_counted_by_wc(srv: Server, kc: Kubectl, payload: bytes) -> None:
    t = Transport(srv, kc)
    r = kubectl(srv, kc, "exec", "-i", POD, "-c", "main", "--", "wc", "-c", stdin=payload)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == [str(len(payload)).encode()]
    t.check(r)


@VERSIONS
def test_16mib_written_just_before_exit_all_arrives(srv: Server, kc: Kubectl) -> None:
    t = Transport(srv, kc)
    script = "dd if=/dev/zero bs=65536 count=256 2>/dev/null | tr '\\0' x; exit 3"
    start = time.monotonic()
    r = kubectl(srv, kc, "exec", POD, "-c", "main", "--", "sh", "-c", script)
    elapsed = time.monotonic() - start
    assert r.returncode == 3, r.stderr[-3000:]
    assert len(r.stdout) == 16 * 1024 * 1024
    assert r.stdout.count(b"x") == len(r.stdout)
    # Generous: the process itself takes well under a second; other servers linger 10 s.
    assert elapsed < 8, elapsed
    t.check(r)


@VERSIONS
def test_kubectl_returns_promptly_after_the_process_ends(srv: Server, kc: Kubectl) -> None:
    t = Transport(srv, kc)
    start = time.monotonic()
    r = kubectl(srv, kc, "exec", POD, "-c", "main", "--", "true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.monotonic() - start < 3
    t.check(r)


def pty_kubectl(
    server: Server, kc: Kubectl, *args: str, rows: int = 24, cols: int = 80
) -> PtyProcess:
    return PtyProcess(
        [kubectl_path(kc.version), "--kubeconfig", str(server.kubeconfig), "--cache-dir",
         str(server.state_dir / f"kc-{kc.version}"), *args],
        rows=rows, cols=cols, env=kc.env,
    )  # fmt: skip


@VERSIONS
def test_interactive_shell_sees_terminal_size_changes(srv: Server, kc: Kubectl) -> None:
    t = Transport(srv, kc)
    p = pty_kubectl(srv, kc, "exec", "-it", POD, "-c", "main", "--", "sh", rows=30, cols=100)
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
    t.check()


@VERSIONS
def test_attach_echoes_what_is_typed(srv: Server, kc: Kubectl) -> None:
    t = Transport(srv, kc, "attach")
    p = pty_kubectl(srv, kc, "attach", "-it", POD, "-c", "console")
    try:
        word = unique("typed")
        time.sleep(1)
        p.write(f"echo {word}-$((1+1))\r")
        p.expect(f"{word}-2", timeout=15)
    finally:
        p.close()
    t.check()


@VERSIONS
def test_killed_client_leaves_no_exec_process(srv: Server, kc: Kubectl) -> None:
    t = Transport(srv, kc)
    marker = str(100000 + int.from_bytes(os.urandom(2), "big"))
    cmd = [kubectl_path(kc.version), "--kubeconfig", str(srv.kubeconfig), "--cache-dir",
           str(srv.state_dir / f"kc-{kc.version}"), "exec", POD, "-c", "main", "--",
           "sh", "-c", f"sleep {marker}; echo never"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=kc.env)
    try:
        # Hang bounds, not times to meet: under a full test run's load containerd has taken
        # more than 15 s to start an exec, and a process whose session ended before Start
        # answered is killed once the answer comes (docs/containerd.md, "The data path").
        deadline = time.monotonic() + 30
        while not srv.processes(f"sleep {marker}"):
            if proc.poll() is not None:
                pytest.fail(f"kubectl exited {proc.returncode}: {proc.communicate()[1]!r}")
            assert time.monotonic() < deadline, "the exec never started"
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while srv.processes(f"sleep {marker}"):
            assert time.monotonic() < deadline, srv.processes(f"sleep {marker}")
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    t.check()


def test_exec_into_unknown_pod_or_container_is_refused(srv: Server) -> None:
    r = kubectl(srv, "1.33", "exec", "ghost", "--", "true")
    assert r.returncode != 0
    assert b'pods "ghost" not found' in r.stderr
    r = kubectl(srv, "1.33", "exec", POD, "-c", "nope", "--", "true")
    assert r.returncode != 0
    assert b"container nope is not valid for pod execpod" in r.stderr

"""kubectl port-forward (SPDY and the SPDY-in-WebSocket tunnel) and the Python client's
channel protocol, against services in a real pod on the real engine.

kubectl 1.31+ falls back to plain SPDY silently when the tunnel upgrade is refused, so each
test proves its transport: the server's session counter, and kubectl's own `-v=6` lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import (
    BUSYBOX,
    RUNTIMES,
    Server,
    free_port,
    kubectl_path,
    metric,
    server_with_pod,
    stop_process,
    wait_forwarding,
)
from tests.interop.test_exec_kubectl import sessions

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]


POD = "pfpod"
# Free ports on this host: on the process runtime the pod's services listen on its loopback.
ECHO, BLOB, RUDE, RESET, NOTHING = (free_port() for _ in range(5))
BLOB_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Client:
    version: str
    transport: str  # "spdy" | "tunnel"
    forced: bool = False

    def __str__(self) -> str:
        return f"{self.version}-{self.transport}{'-forced' if self.forced else ''}"


CLIENTS = [
    Client("1.27", "spdy"),
    Client("1.30", "spdy"),
    Client("1.31", "tunnel"),
    Client("1.33", "tunnel"),
    Client("1.33", "spdy", forced=True),
]


# The process runtime's echo: a threaded Python echo with a real backlog. busybox `nc -ll`
# listens with a backlog of 1: a burst of connects overflows it, the kernel answers with SYN
# cookies, and a data segment that is not the first to reach a cookie-only connection fails
# the cookie check and is answered with a reset (TcpExtSyncookiesFailed, TcpOutRsts). By hand,
# in a fresh network namespace: 20 connects at once, each sending 1 MiB at once, to
# `busybox nc -ll -p P -e cat` reset connections in 30 of 30 rounds (260 resets); connected one
# after another, each proven served by one echoed byte, 0 of 30. In containers (Docker,
# containerd) the echo is that `nc`, so test_20_parallel_connections connects one by one there.
PY_ECHO = (
    "import socket,sys,threading\n"
    "s=socket.create_server(('127.0.0.1',int(sys.argv[1])),backlog=128)\n"
    "def echo(c):\n"
    "    with c:\n"
    "        while d:=c.recv(65536): c.sendall(d)\n"
    "while True: threading.Thread(target=echo,args=(s.accept()[0],),daemon=True).start()\n"
)


def manifest(name: str = POD, echo: int = ECHO, runtime: str = "docker") -> str:
    """`busybox nc`: the image's applet on Docker, Debian's busybox-static on the host (the
    echo on the host is Python's: PY_ECHO)."""
    if runtime == "process":
        echo_command = json.dumps(["python3", "-c", PY_ECHO, str(echo)])
    else:
        echo_command = json.dumps(["busybox", "nc", "-ll", "-p", str(echo), "-e", "cat"])
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  containers:
  - name: echo
    image: {BUSYBOX}
    command: {echo_command}
  - name: blob
    image: {BUSYBOX}
    command: ["sh", "-c", "dd if=/dev/urandom of=blob.tmp bs=1048576 count=64 2>/dev/null;
      mv blob.tmp blob; sha256sum blob > blob.sha; exec busybox nc -ll -p {BLOB} -e cat blob"]
  - name: rude
    image: {BUSYBOX}
    command: ["busybox", "nc", "-ll", "-p", "{RUDE}", "-e", "true"]
  - name: reset
    image: {BUSYBOX}
    # reads nothing and exits after a second: closing a socket with unread data sends a RST
    command: ["busybox", "nc", "-ll", "-p", "{RESET}", "-e", "sleep", "1"]
"""


@pytest.fixture(scope="module", params=RUNTIMES)
def srv(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    runtime = request.param
    with server_with_pod(
        tmp_path_factory.mktemp("pf"), manifest(runtime=runtime), runtime
    ) as server:
        yield server


def blob_sha(server: Server) -> str:
    for _ in range(100):
        out = server.read_pod_file(POD, "blob", "blob.sha")
        if out.strip():
            return out.split()[0].decode()
        time.sleep(0.1)
    raise AssertionError("the blob was never written")


class Forward:
    """A running `kubectl port-forward` with local ports for the pod's services."""

    def __init__(
        self, server: Server, client: Client, ports: list[int], log: Path, pod: str = POD
    ) -> None:
        env = dict(os.environ)
        if client.forced:
            env["KUBECTL_PORT_FORWARD_WEBSOCKETS"] = "false"
        cmd = [kubectl_path(client.version), "--kubeconfig", str(server.kubeconfig),
               "--cache-dir", str(server.state_dir / f"kc-{client.version}"), "-v=6",
               "port-forward", "--address", "127.0.0.1", pod,
               *[f":{remote}" for remote in ports]]  # fmt: skip
        self.log_path = log
        self.logf = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=env)
        try:
            self.local = wait_forwarding(self.proc, log, ports)
        except BaseException:
            self.stop()
            raise

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def connect(self, port: int) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.local[port]), timeout=30)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)
        self.logf.close()


@pytest.fixture
def forward(srv: Server, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Forward]:
    client: Client = request.param
    before = {t: sessions(srv, "portforward", t) for t in ("spdy", "tunnel")}
    fwd = Forward(srv, client, [ECHO, BLOB, RUDE, RESET, NOTHING], tmp_path / "kubectl.log")
    yield fwd
    fwd.stop()
    # Which transport carried it, proven twice: the server's count and kubectl's own log.
    after = {t: sessions(srv, "portforward", t) for t in ("spdy", "tunnel")}
    other = "spdy" if client.transport == "tunnel" else "tunnel"
    assert after[client.transport] == before[client.transport] + 1, after
    assert after[other] == before[other], after
    assert "fallback to secondary dialer" not in fwd.log
    if client.transport == "tunnel":
        assert re.search(r"negotiated protocol: portforward\.k8s\.io", fwd.log), fwd.log[-2000:]


def echo_round_trip(fwd: Forward, data: bytes, port: int = ECHO) -> bytes:
    with fwd.connect(port) as sock:
        return echo_over(sock, data)


def echo_over(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` (then end the sending side) while reading as much back."""

    def send() -> None:
        view = memoryview(data)
        for i in range(0, len(view), 1 << 16):
            sock.sendall(view[i : i + (1 << 16)])
        sock.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=send)
    writer.start()
    got = bytearray()
    while len(got) < len(data):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    writer.join(30)
    return bytes(got)


CASES = pytest.mark.parametrize("forward", CLIENTS, ids=str, indirect=True)


@CASES
def test_64mib_echo_is_identical(forward: Forward) -> None:
    data = os.urandom(64 * 1024 * 1024)
    got = echo_round_trip(forward, data)
    assert len(got) == len(data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


@CASES
def test_64mib_download_matches_the_pods_checksum(srv: Server, forward: Forward) -> None:
    expected = blob_sha(srv)
    digest, total = hashlib.sha256(), 0
    with forward.connect(BLOB) as sock:
        while chunk := sock.recv(1 << 20):
            digest.update(chunk)
            total += len(chunk)
    assert total == BLOB_SIZE
    assert digest.hexdigest() == expected


@CASES
def test_20_parallel_connections(srv: Server, forward: Forward) -> None:
    """20 connections open at once, all transferring at once. On the process runtime they are
    also opened at once; `nc` in a container takes no burst of connects (see PY_ECHO), so
    there each is proven served by one echoed byte before the next is opened."""
    payloads = [os.urandom(1024 * 1024 + i) for i in range(20)]
    with contextlib.ExitStack() as stack:
        if srv.runtime == "process":
            with ThreadPoolExecutor(20) as pool:
                socks = list(pool.map(lambda _: forward.connect(ECHO), payloads))
        else:
            socks = []
            for _ in payloads:
                socks.append(forward.connect(ECHO))
                socks[-1].sendall(b"!")
                assert socks[-1].recv(1) == b"!"
        for sock in socks:
            stack.enter_context(sock)
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(echo_over, socks, payloads))
    assert [len(r) for r in results] == [len(p) for p in payloads]  # a short one: its length
    assert results == payloads


@CASES
def test_failed_dial_ends_only_that_connection(forward: Forward) -> None:
    with forward.connect(NOTHING) as sock:
        sock.settimeout(15)
        with contextlib.suppress(ConnectionResetError):  # EOF or a reset: both end it
            assert sock.recv(10) == b""
    time.sleep(0.3)
    assert forward.alive(), forward.log[-2000:]
    assert echo_round_trip(forward, b"still forwarding") == b"still forwarding"
    assert "lost connection to pod" not in forward.log


@CASES
def test_service_closing_without_reading_keeps_the_forward(forward: Forward) -> None:
    for _ in range(3):
        with forward.connect(RUDE) as sock:
            sock.settimeout(15)
            with pytest.raises(OSError):  # the pod closed; kubectl closes our socket too
                sock.sendall(b"x" * 1024 * 1024)
                while sock.recv(65536):
                    pass
                raise OSError("closed")
    time.sleep(0.3)
    assert forward.alive(), forward.log[-2000:]
    assert echo_round_trip(forward, b"after rude") == b"after rude"


@CASES
def test_service_resetting_the_connection_keeps_the_forward(forward: Forward) -> None:
    for _ in range(2):
        with forward.connect(RESET) as sock:
            sock.settimeout(15)
            with contextlib.suppress(OSError):  # EOF or a reset reach us; both are fine
                sock.sendall(b"y" * 256 * 1024)
                while sock.recv(65536):
                    pass
    time.sleep(0.3)
    assert forward.alive(), forward.log[-2000:]
    assert "lost connection to pod" not in forward.log
    assert echo_round_trip(forward, b"after reset") == b"after reset"


def server_tasks(server: Server) -> int:
    text = server.metrics()
    assert "\nstreamsrv_tasks " in text, text
    return int(metric(text, "streamsrv_tasks"))


def server_fds(server: Server) -> int:
    assert server.proc is not None
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def test_client_killed_mid_transfer_leaves_nothing_open(srv: Server, tmp_path: Path) -> None:
    blob_sha(srv)  # the blob's server listens once the blob is written (alone, the dial raced it)
    baseline, tasks = server_fds(srv), server_tasks(srv)
    fwd = Forward(srv, Client("1.33", "tunnel"), [BLOB], tmp_path / "k.log")
    try:
        sock = fwd.connect(BLOB)
        assert len(sock.recv(1 << 20)) > 0
        during = server_fds(srv)
        assert during > baseline  # the forward and the pod connection are open
        assert server_tasks(srv) > tasks
        fwd.proc.kill()
        fwd.proc.wait()
        sock.close()
        deadline = time.monotonic() + 10
        while server_fds(srv) > baseline and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server_fds(srv) <= baseline, (baseline, server_fds(srv))
        # a bound of its own: in one CI run the tasks were still going, 10 -> 8, as the shared
        # 10 s ran out (a leaked task never goes; this is a hang bound, not a time to meet)
        deadline = time.monotonic() + 20
        while server_tasks(srv) > tasks and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (now := server_tasks(srv)) <= tasks, (tasks, now)
    finally:
        fwd.stop()


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("client", [Client("1.27", "spdy"), Client("1.33", "tunnel")], ids=str)
def test_deleting_the_pod_ends_the_forward(tmp_path: Path, client: Client, runtime: str) -> None:
    name = f"doomed-{client.version.replace('.', '')}"
    echo = free_port()  # the module's pod may hold ECHO on this host (process runtime)
    with server_with_pod(tmp_path, manifest(name, echo, runtime), runtime) as server:
        if runtime == "process":
            # the pod runs once its processes are started, before python3 listens (CI saw the
            # first dial refused, "Stream reset", under load): wait for the host's listener
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", echo), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the echo server never listened"
                    time.sleep(0.1)
        fwd = Forward(server, client, [echo], tmp_path / "k.log", pod=name)
        try:
            assert echo_round_trip(fwd, b"hi", echo) == b"hi"
            deleted = time.monotonic()
            assert server.cli("pod", "rm", name).returncode == 0
            code = fwd.proc.wait(15)
            assert code != 0
            assert time.monotonic() - deleted < 15
        finally:
            fwd.stop()

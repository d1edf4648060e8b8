"""kubectl through `streamsrv serve --cri-endpoint`: the gateway fronts a CRI runtime and proxies
each session to the runtime's stream server, as the kubelet and apiserver do (docs/cri.md).

The same tests run against containerd's CRI plugin (its Go stream server, the kubelet's
library) and against `streamsrv cri` on the Docker and the process runtime, with kubectl 1.27
(SPDY only) and 1.33 (WebSocket v5 first). Every session proves which transport reached the
node: the gateway counts proxied sessions by transport, and kubectl's `-v=6` output shows no
fallback where none is expected. Against containerd 1.6, whose stream server speaks WebSocket
only up to v4, kubectl 1.33 (which offers v5 alone) falls back to SPDY, as it does behind an
apiserver that does not translate; the browser page (v5 and v4) gets v4 there.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, free_port, metric, require_docker, unique
from tests.cri_env import CriTarget, cri_target
from tests.ptyproc import PtyProcess

pytestmark = [pytest.mark.docker, pytest.mark.kubectl, pytest.mark.timeout(900)]

VERSIONS = ("1.27", "1.33")
POD = "cripod"


class Node:
    def __init__(self, target: CriTarget, server: Server, port: int) -> None:
        self.target = target
        self.server = server
        self.port = port  # where the pod's web server listens

    def kubectl(
        self, version: str, *args: str, stdin: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        cmd = self.server.kubectl_cmd(version, *args)
        env = {**os.environ, "TERM": "xterm"}
        return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, env=env)

    def proxied(self, kind: str) -> dict[str, int]:
        text = self.server.metrics()
        return {
            transport: int(metric(text, "streamsrv_sessions_total", kind=kind, transport=transport))
            for transport in ("websocket", "spdy")
        }


def expected_transport(node: Node, version: str, kind: str, stdin_ends: bool) -> str:
    if version == "1.27":
        return "spdy"
    if node.target.kind == "containerd":
        # its stream server has WebSocket up to v4 only, and none for port-forward; kubectl
        # 1.30+ offers v5 alone (seen with -v=9), so it is refused and falls back to SPDY
        return "spdy"
    return "websocket"


class Proof:
    def __init__(self, node: Node, version: str, kind: str, stdin_ends: bool = False) -> None:
        self.node, self.version, self.kind = node, version, kind
        self.stdin_ends = stdin_ends
        self.before = node.proxied(kind)

    def check(self) -> None:
        after = self.node.proxied(self.kind)
        want = expected_transport(self.node, self.version, self.kind, self.stdin_ends)
        other = "spdy" if want == "websocket" else "websocket"
        assert after[want] == self.before[want] + 1, (self.before, after)
        assert after[other] == self.before[other], (self.before, after)


def manifest(image: str, port: int) -> str:
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {POD}}}
spec:
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "mkdir -p /tmp/w-{port} && echo web-{port} > /tmp/w-{port}/index.html && exec busybox httpd -f -p 127.0.0.1:{port} -h /tmp/w-{port}"]
  - name: console
    image: {image}
    command: ["sh"]
    stdin: true
    tty: true
"""  # noqa: E501


@pytest.fixture(scope="module", params=["containerd", "docker", "process"])
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:  # noqa: E501
    require_docker()
    directory = tmp_path_factory.mktemp(f"crinode-{request.param}")
    with cri_target(request.param, directory) as target:
        extra = ["--cri-endpoint", target.endpoint]
        if target.stream_ca is not None:
            extra += ["--cri-stream-ca", str(target.stream_ca)]
        server = Server(directory / "gateway", extra=extra)
        server.start()
        try:
            port = free_port()
            path = directory / "pod.yaml"
            path.write_text(manifest(target.image, port))
            if target.kind == "process":  # its images are names it was asked to pull
                pass  # the gateway pulls what a pod needs (ensure_image)
            r = server.cli("pod", "run", "-f", str(path))
            assert r.returncode == 0, r.stderr
            n = Node(target, server, port)
            wait_running(n)
            yield n
            r = server.cli("pod", "rm", POD)
            assert r.returncode == 0, r.stderr
        finally:
            server.stop()


def wait_running(node: Node) -> None:
    deadline = time.monotonic() + 120
    out = ""
    while time.monotonic() < deadline:
        r = node.kubectl("1.33", "get", "pod", POD, "-o", "jsonpath={.status.phase}")
        out = r.stdout.decode()
        if out == "Running":
            return
        time.sleep(0.2)
    raise AssertionError(f"pod not running: {out} {r.stderr.decode()}")


def test_pod_shows_its_node(node: Node) -> None:
    r = node.kubectl("1.33", "get", "pods", "-o", "wide")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.decode().splitlines() if x.startswith(POD))
    want = "containerd" if node.target.kind == "containerd" else "streamsrv"
    assert f" {want} " in f" {line} ", line


@pytest.mark.parametrize("version", VERSIONS)
def test_exec_exit_code(node: Node, version: str) -> None:
    proof = Proof(node, version, "exec")
    r = node.kubectl(version, "exec", POD, "-c", "main", "--", "sh", "-c", "echo hi; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout == b"hi\n"
    proof.check()


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(64 << 20)


@pytest.mark.parametrize("version", VERSIONS)
def test_exec_stdin_64mib_checksum(node: Node, version: str, payload: bytes) -> None:
    proof = Proof(node, version, "exec", stdin_ends=True)
    r = node.kubectl(version, "exec", "-i", POD, "-c", "main", "--", "md5sum", stdin=payload)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.md5(payload).hexdigest()
    proof.check()


@pytest.mark.parametrize("version", VERSIONS)
def test_attach_it(node: Node, version: str) -> None:
    proof = Proof(node, version, "attach")
    p = PtyProcess(
        node.server.kubectl_cmd(version, "attach", "-it", POD, "-c", "console"),
        rows=24,
        cols=80,
        env={**os.environ, "TERM": "xterm"},
    )
    try:
        word = unique("typed")
        time.sleep(1)
        p.write(f"echo {word}-$((1+1))\r")
        p.expect(f"{word}-2", timeout=30)
    finally:
        p.close()
    proof.check()


@pytest.mark.parametrize("version", VERSIONS)
def test_port_forward(node: Node, version: str) -> None:
    proof = Proof(node, version, "portforward")
    local = free_port()
    cmd = node.server.kubectl_cmd(version, "port-forward", f"pod/{POD}", f"{local}:{node.port}")
    errors = node.server.state_dir / f"pf-{version}.err"
    with errors.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        body = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{local}/index.html", timeout=10
                ) as r:
                    body = r.read()
                break
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        assert body == f"web-{node.port}\n".encode(), errors.read_text()
        big = b""
        with socket.create_connection(("127.0.0.1", local), timeout=30) as s:
            s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
            while chunk := s.recv(65536):
                big += chunk
        assert big.endswith(f"web-{node.port}\n".encode())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proof.check()


def test_unknown_container_is_refused(node: Node) -> None:
    r = node.kubectl("1.33", "exec", POD, "-c", "nope", "--", "true")
    assert r.returncode != 0
    assert b"nope" in r.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_logs_and_restarts_through_the_node(node: Node, version: str) -> None:
    """The node writes each instance's CRI log file where the gateway said (the sandbox's
    log_directory); the gateway restarts a failed container on the node (CreateContainer with
    the next attempt) and reads both files, as a kubelet would."""
    name = unique("crilogs")
    path = node.server.state_dir / f"{name}.yaml"
    path.write_text(f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: OnFailure
  containers:
  - name: main
    image: {node.target.image}
    command: ["sh", "-c", "echo run-$(cat /proc/sys/kernel/random/uuid); sleep 1; exit 1"]
""")
    r = node.kubectl(version, "create", "-f", str(path))
    assert r.returncode == 0, r.stderr
    try:
        deadline = time.monotonic() + 120
        while True:
            r = node.kubectl(version, "get", "pod", name, "-o",
                             "jsonpath={.status.containerStatuses[0].restartCount}")  # fmt: skip
            if r.stdout.decode() not in ("", "0"):
                break
            assert time.monotonic() < deadline, r
            time.sleep(0.5)
        previous = node.kubectl(version, "logs", name, "-p")
        assert previous.returncode == 0, previous.stderr
        assert re.fullmatch(rb"run-[0-9a-f-]+\n", previous.stdout), previous.stdout
        deadline = time.monotonic() + 60
        while not (current := node.kubectl(version, "logs", name)).stdout:
            assert time.monotonic() < deadline, current
            time.sleep(0.2)
        assert (
            re.fullmatch(rb"run-[0-9a-f-]+\n", current.stdout) and current.stdout != previous.stdout
        )
    finally:
        node.kubectl(version, "delete", "pod", name, "--grace-period=1")


def test_node_listing_survives_gateway_restart(node: Node, tmp_path: Path) -> None:
    """The gateway holds no pod state: restarted, it finds the pod on the node again."""
    node.server.stop()
    node.server.start()
    r = node.kubectl("1.33", "get", "pod", POD, "-o", "jsonpath={.status.phase}")
    assert r.stdout == b"Running", r.stderr


async def test_browser_session_through_the_node(node: Node) -> None:
    """The web page's way in: a session URL from the gateway, then a WebSocket (v5, v4
    offered, as terminal.js does); the gateway relays it to the node like kubectl's."""
    import ssl

    import aiohttp

    ctx = ssl.create_default_context(cafile=str(node.server.ca_file))
    headers = {"Authorization": f"Bearer {node.server.token}"}
    before = node.proxied("exec")
    path = f"/api/streamsrv/v1/namespaces/default/pods/{POD}/sessions"
    body = {"container": "main", "command": ["sh", "-c", "echo hi-$((1+2))"], "tty": True}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(node.server.url + path, json=body, ssl=ctx) as resp:
            assert resp.status == 200, await resp.text()
            url = (await resp.json())["url"]
        got = b""
        async with http.ws_connect(
            node.server.url + url,
            protocols=["v5.channel.k8s.io", "v4.channel.k8s.io"],
            ssl=ctx,
        ) as ws:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    break
                if msg.data[:1] == b"\x01":
                    got += msg.data[1:]
    assert got.replace(b"\r\n", b"\n") == b"hi-3\n"
    assert node.proxied("exec")["websocket"] == before["websocket"] + 1


def test_two_endpoints_are_two_nodes(tmp_path: Path) -> None:
    """Each --cri-endpoint is a node: pods go where spec.nodeName says (else to the node with
    fewer pods), `get pods -o wide` shows where, and exec reaches the right one."""
    require_docker()
    with cri_target("process", tmp_path / "a") as a, cri_target("docker", tmp_path / "b") as b:
        extra = ["--cri-endpoint", f"proc={a.endpoint}", "--cri-endpoint", f"dock={b.endpoint}",
                 "--cri-stream-ca", str(a.stream_ca)]  # fmt: skip
        # both streamsrv cri use their own state dir's CA: give the gateway one that signs both
        assert a.stream_ca is not None and b.stream_ca is not None
        bundle = tmp_path / "cas.pem"
        bundle.write_bytes(a.stream_ca.read_bytes() + b.stream_ca.read_bytes())
        extra[-1] = str(bundle)
        server = Server(tmp_path / "gateway", extra=extra)
        server.start()
        try:
            for name, node in (("on-proc", "proc"), ("on-dock", "dock")):
                path = tmp_path / f"{name}.yaml"
                path.write_text(
                    f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n"
                    f"  nodeName: {node}\n  containers:\n  - name: main\n    image: {b.image}\n"
                    '    command: ["sleep", "3600"]\n'
                )
                r = server.cli("pod", "run", "-f", str(path))
                assert r.returncode == 0, r.stderr
            bad = tmp_path / "bad.yaml"
            bad.write_text(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: nowhere}\nspec:\n  nodeName: mars\n"
                f"  containers:\n  - name: main\n    image: {b.image}\n"
                '    command: ["sleep", "3600"]\n'
            )
            r = server.cli("pod", "run", "-f", str(bad))
            assert r.returncode != 0 and "mars" in r.stderr, r.stderr
            deadline = time.monotonic() + 120
            wide = ""
            while time.monotonic() < deadline:
                r2 = server.kubectl("1.33", "get", "pods", "-o", "wide", "--no-headers")
                wide = r2.stdout
                if wide.count("Running") == 2:
                    break
                time.sleep(0.2)
            rows = {line.split()[0]: line.split() for line in wide.splitlines()}
            assert "proc" in rows["on-proc"] and "dock" in rows["on-dock"], wide
            assert "nowhere" not in rows
            # the process runtime's "container" is a process of this host; Docker's is not
            here = os.readlink("/proc/self/ns/pid")
            for name, same in (("on-proc", True), ("on-dock", False)):
                r3 = server.kubectl("1.33", "exec", name, "--", "readlink", "/proc/self/ns/pid")
                assert r3.returncode == 0, r3.stderr
                assert (r3.stdout.strip() == here) is same, (name, r3.stdout, here)
            for name in ("on-proc", "on-dock"):
                assert server.cli("pod", "rm", name).returncode == 0
        finally:
            server.stop()

"""Shared fixtures: the real Docker engine, real kubectl binaries, a running streamsrv.

`scripts/test` starts a private dockerd and exports DOCKER_HOST and the test image names.
Without an engine (or kubectl) the tests that need it skip on a developer's machine, and fail
under CI (CI=true), where a missing tool is never a silent skip.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from soak.common import free_port as soak_free_port
from streamsrv.pods import LABEL_TYPE
from streamsrv.runtime.docker import DockerRuntime

IN_CI = os.environ.get("CI", "").lower() == "true"
BUSYBOX = os.environ.get("STREAMSRV_TEST_BUSYBOX_IMAGE", "streamsrv/busybox:local")
PAUSE = os.environ.get("STREAMSRV_TEST_PAUSE_IMAGE", "streamsrv/pause:local")
# Every exec/attach/port-forward test runs on both runtimes: the real Docker engine, and the
# built-in process runtime (the pod's commands run on this host; `busybox nc` comes from
# Debian's busybox-static, which scripts/test installs).
# The containerd runtime too: a private containerd (tests/ctd_runtime.py), with a containerd
# namespace of its own for each server or runtime a test makes.
RUNTIMES = ("docker", "process", "containerd")


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect garbage after each test, so an unclosed socket or transport is reported (as a
    ResourceWarning, an error under our filterwarnings) against the test that leaked it rather
    than whichever later test the collector happens to run in."""
    yield
    gc.collect()


def missing(what: str) -> None:
    """Skip for a developer, fail in CI."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: a missing tool is a failure)")
    pytest.skip(what)


_docker_checked: str | None = None


def require_docker() -> None:
    global _docker_checked
    if _docker_checked is None:
        try:
            client = docker.from_env(timeout=10)
            try:
                client.ping()
                client.images.get(BUSYBOX)
                client.images.get(PAUSE)
            finally:
                client.close()
            _docker_checked = ""
        except Exception as exc:
            _docker_checked = f"no Docker engine with the test images ({exc}); run scripts/test"
        if _docker_checked:
            # The SDK (a plain docker.from_env(), not our runtime's client) leaves the socket
            # of the failed probe to the collector: collect it here, where its ResourceWarning
            # is known and harmless, rather than in whichever test comes next.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
    if _docker_checked:
        missing(_docker_checked)


def kubectl_path(version: str) -> str:
    """`kubectl.<version>` beside the `kubectl` on PATH (following its symlink)."""
    found = shutil.which("kubectl")
    if found:
        candidate = Path(os.path.realpath(found)).parent / f"kubectl.{version}"
        if candidate.exists():
            return str(candidate)
        candidate = Path(found).parent / f"kubectl.{version}"
        if candidate.exists():
            return str(candidate)
    missing(f"kubectl.{version} not found beside kubectl on PATH")
    raise AssertionError("unreachable")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _remove_everything() -> None:
    client = docker.from_env(timeout=60)
    for c in client.containers.list(all=True, filters={"label": LABEL_TYPE}):
        c.remove(force=True)
    client.close()


def proc_table() -> dict[int, tuple[int, str]]:
    """Every process on this host: pid -> (parent pid, command line with spaces)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_bytes()
                raw = Path(f"/proc/{entry}/cmdline").read_bytes()
                ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
                table[int(entry)] = (ppid, raw.replace(b"\0", b" ").decode(errors="replace"))
    return table


def host_processes(pattern: str) -> list[int]:
    """Pids of this host's processes whose command line holds ``pattern``."""
    return [pid for pid, (_, args) in proc_table().items() if pattern in args]


_HANDED_OUT: set[int] = set()


def until(what: str, check: Callable[[], Any], bound: float = 60.0) -> Any:
    """Poll ``check`` until it returns something true (returned); fail after ``bound`` s."""
    deadline = time.monotonic() + bound
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` in Prometheus text whose labels include
    ``labels`` (0 when there is none): ``metric(t, "streamsrv_sessions_total", kind="exec")``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def free_port() -> int:
    """A loopback port for a service that a test starts later (in a pod, or on this host):
    below the kernel's ephemeral range (``soak.common.free_port``), never twice in one run."""
    port = soak_free_port(exclude=_HANDED_OUT)
    _HANDED_OUT.add(port)
    return port


FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)")


def wait_forwarding(
    proc: subprocess.Popen[Any], log: Path, ports: list[int], timeout: float = 30
) -> dict[int, int]:
    """Wait until a `kubectl port-forward :PORT...` logs a local port for every remote one.

    kubectl picks each local port itself: a port chosen by the test and closed again can be
    taken before kubectl binds it (CI once saw "address already in use").
    """
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text()
        local = {int(remote): int(port) for port, remote in FORWARDING.findall(text)}
        if set(local) >= set(ports):
            return local
        assert proc.poll() is None, text[-3000:]
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[Any], sig: int, grace: float = 10) -> None:
    """Ask ``proc`` to stop with ``sig``; SIGKILL it if it has not within ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def require_runtime(runtime: str) -> None:
    if runtime == "docker":
        require_docker()
    elif runtime == "containerd":
        from tests.containerd_env import require_containerd

        require_containerd()
    elif not shutil.which("busybox"):
        missing("busybox not on PATH (Debian busybox-static); run scripts/test")


@pytest.fixture
def docker_engine() -> Iterator[None]:
    """A real engine; every pod a test leaves behind is removed afterwards."""
    require_docker()
    yield
    _remove_everything()


@pytest.fixture
async def runtime(docker_engine: None) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(pause_image=PAUSE)
    yield rt
    await rt.close()


@pytest.fixture(params=RUNTIMES)
async def any_runtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """Each runtime in turn (Docker, process, containerd), closed after; on
    Docker every pod is removed after."""
    from streamsrv.runtime.process import ProcessRuntime

    require_runtime(request.param)
    rt: Any
    if request.param == "docker":
        rt = DockerRuntime(pause_image=PAUSE)
    elif request.param == "containerd":
        from streamsrv.runtime.containerd import ContainerdRuntime
        from streamsrv.runtime.volumes import VolumeHost
        from tests import ctd_runtime

        ns = ctd_runtime.namespace()
        rt = ContainerdRuntime(
            tmp_path / "ctd-io",
            address=ns.address,
            namespace=ns.name,
            snapshotter=ns.cri.snapshotter,
            pause_image=PAUSE,
            volumes=VolumeHost(tmp_path / "volumes"),
        )
        await rt.start()
    else:
        rt = ProcessRuntime(tmp_path / "pods")
    yield rt
    await rt.close()
    if request.param == "docker":
        _remove_everything()


def engine_sh(container_id: str, script: str) -> tuple[int, str]:
    """Run ``sh -c script`` in a container through the engine (not through streamsrv):
    (exit code, stdout and stderr)."""
    client = docker.from_env()
    try:
        code, out = client.containers.get(container_id).exec_run(["sh", "-c", script])
    finally:
        client.close()
    assert isinstance(out, bytes)
    return int(code or 0), out.decode()


async def engine_run(container_id: str, script: str) -> str:
    """:func:`engine_sh` from a test's event loop; its output, the command having succeeded."""
    import asyncio

    code, out = await asyncio.to_thread(engine_sh, container_id, script)
    assert code == 0, out
    return out


def engine_pod_containers(pod: str) -> list[Any]:
    """Every container (running or not) the engine has for pod ``pod``, sandbox included."""
    client = docker.from_env()
    try:
        return list(
            client.containers.list(all=True, filters={"label": f"io.kubernetes.pod.name={pod}"})
        )
    finally:
        client.close()


@contextlib.contextmanager
def engine_container(pod: str, container: str) -> Iterator[Any]:
    """The Docker SDK's object for one container of a pod (the engine's own view)."""
    client = docker.from_env()
    try:
        [c] = client.containers.list(
            filters={
                "label": [
                    f"io.kubernetes.container.name={container}",
                    f"io.kubernetes.pod.name={pod}",
                ]
            }
        )
        yield c
    finally:
        client.close()


class Server:
    """`streamsrv serve` as a subprocess, the way a user runs it."""

    def __init__(
        self,
        state_dir: Path,
        extra: list[str] | None = None,
        runtime: str = "docker",
        env: dict[str, str] | None = None,
    ) -> None:
        self.runtime = runtime
        self.env = env
        self.state_dir = state_dir
        self.kubeconfig = state_dir / "kubeconfig"
        self.extra = extra or []
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log = state_dir / "server.log"
        self.containerd: Any = None  # its tests.ctd_runtime.Namespace (runtime containerd)

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.kubeconfig.exists():
            self.kubeconfig.unlink()
        cmd = [sys.executable, "-m", "streamsrv", "--state-dir", str(self.state_dir), "serve",
               "--listen", "127.0.0.1:0", "--pause-image", PAUSE, "--runtime", self.runtime,
               *self.extra]  # fmt: skip
        if self.runtime == "containerd":
            from tests import ctd_runtime

            if self.containerd is None:  # kept across restarts: the pods are in it
                self.containerd = ctd_runtime.namespace()
            cmd += self.containerd.args()
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("a") as logf:
            self.proc = subprocess.Popen(
                cmd, stdout=logf, stderr=subprocess.STDOUT, text=True, env=self.env
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log.read_text()}")
            m = re.search(r"listening on (\S+)", self.log.read_text()[offset:])
            if m and self.kubeconfig.exists():
                self.url = m.group(1)
                return
            time.sleep(0.05)
        stop_process(self.proc, signal.SIGKILL)
        raise RuntimeError(f"server did not start: {self.log.read_text()}")

    @property
    def token(self) -> str:
        import yaml

        doc = yaml.safe_load(self.kubeconfig.read_text())
        return str(doc["users"][0]["user"]["token"])

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "ca.crt"

    def get(self, path: str, token: str | None = None) -> tuple[int, str]:
        """GET ``path`` over the server's TLS with the kubeconfig's token (or ``token``)."""
        import ssl
        import urllib.error
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(
            f"{self.url}{path}",
            headers={"Authorization": f"Bearer {self.token if token is None else token}"},
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()

    def metrics(self) -> str:
        code, text = self.get("/metrics")
        assert code == 200, (code, text)
        return text

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, signal.SIGTERM)
        self.proc = None

    def processes(self, pattern: str, container: str = "main") -> list[str]:
        """Command lines of the pod's processes (in ``container`` on Docker) matching pattern."""
        if self.runtime == "docker":
            client = docker.from_env()
            try:
                [c] = client.containers.list(
                    filters={"label": f"io.kubernetes.container.name={container}"}
                )
                _, out = c.exec_run(["ps", "-o", "pid,args"])
                assert isinstance(out, bytes)
                lines = out.decode().splitlines()
            finally:
                client.close()
        elif self.runtime == "containerd":
            lines = []
            for pid in self.containerd.pids(container):
                with contextlib.suppress(OSError):
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    lines.append(f"{pid} {argv.decode(errors='replace').strip()}")
        else:  # the process runtime's pods are the server's descendants on this host
            assert self.proc is not None
            table = proc_table()
            lines = []
            for pid, (_, args) in table.items():
                ancestor = table.get(pid, (0, ""))[0]
                while ancestor > 1 and ancestor != self.proc.pid:
                    ancestor = table.get(ancestor, (0, ""))[0]
                if ancestor == self.proc.pid:
                    lines.append(f"{pid} {args.strip()}")
        return [line for line in lines if pattern in line and "ps -o" not in line]

    def read_pod_file(self, pod: str, container: str, path: str) -> bytes:
        """A file from a container: ``path`` is relative to its working directory."""
        if self.runtime == "docker":
            with engine_container(pod, container) as c:
                code, out = c.exec_run(["cat", f"/{path}"])
                return out if code == 0 and isinstance(out, bytes) else b""
        if self.runtime == "containerd":
            root = Path(f"/proc/{self.containerd.pid(pod, container)}/root")
            with contextlib.suppress(OSError):
                return (root / path).read_bytes()
            return b""
        found = list((self.state_dir / "process-pods").glob(f"default_{pod}_*/{path}"))
        return found[0].read_bytes() if found else b""

    def kubectl_cmd(self, version: str, *args: str) -> list[str]:
        """The command line of ``kubectl.<version>`` against this server."""
        return [kubectl_path(version), "--kubeconfig", str(self.kubeconfig),
                "--cache-dir", str(self.state_dir / f"kcache-{version}"), *args]  # fmt: skip

    def kubectl(
        self, version: str, *args: str, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = self.kubectl_cmd(version, *args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)

    def kubectl_popen(self, version: str, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        """``kubectl.<version>`` started in the background (a session held open)."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(self.kubectl_cmd(version, *args), **kw)
        return proc

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "streamsrv", "--state-dir", str(self.state_dir), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, input=input)


@pytest.fixture
def server(docker_engine: None, tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "state")
    srv.start()
    yield srv
    srv.stop()


def pod_manifest(name: str, *containers: Any, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"test": "streamsrv"}},
        "spec": {"containers": list(containers), **spec},
    }


def echo_pod(name: str, port: int) -> str:
    """A pod whose one container sleeps beside a `busybox nc` echo listener on ``port``."""
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sh", "-c", "busybox nc -ll -p {port} -e cat & exec sleep 100000"]
"""


def console_pod(name: str) -> str:
    """A pod with a sleeping ``main`` container and a ``console`` shell on a terminal."""
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
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


def sleeper(name: str = "main", seconds: int = 100000) -> dict[str, Any]:
    return {"name": name, "image": BUSYBOX, "command": ["sleep", str(seconds)]}


@contextlib.contextmanager
def server_with_pod(
    directory: Path, manifest: str, runtime: str = "docker", extra: list[str] | None = None
) -> Iterator[Server]:
    """A fresh engine state, `streamsrv serve [extra]`, and one pod from ``manifest``; all
    removed after."""
    require_runtime(runtime)
    if runtime == "docker":
        _remove_everything()  # a module that failed before may have left pods behind
    server = Server(directory / "state", runtime=runtime, extra=extra)
    server.start()
    try:
        path = server.state_dir / "pod.yaml"
        path.write_text(manifest)
        r = server.cli("pod", "run", "-f", str(path))
        assert r.returncode == 0, r.stderr
        yield server
    finally:
        server.stop()
        if runtime == "docker":
            _remove_everything()


@contextlib.asynccontextmanager
async def stream_server(runtime: Any, limits: Any = None) -> AsyncIterator[tuple[Any, Any]]:
    """A StreamServer on its own aiohttp test server (fake runtimes): (server, TestServer)."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from streamsrv.limits import Limits
    from streamsrv.server import Config, StreamServer

    server = StreamServer(runtime, Config(limits=limits or Limits()))
    app = web.Application()
    server.add_routes(app)
    ts = TestServer(app)
    await ts.start_server()
    server.base_url = f"http://{ts.host}:{ts.port}"
    try:
        yield server, ts
    finally:
        await ts.close()

"""What only the containerd runtime has: its namespace is its own, its FIFOs are cleaned up,
images are not pulled, its containers' output reaches their CRI log files (docs/containerd.md).
The exec/attach/port-forward behaviour every runtime shares is tested with ``any_runtime``."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from streamsrv.podmanager import PodManager
from streamsrv.pods import parse_pod
from streamsrv.runtime.base import KILLED, EngineUnavailable, ImageNotFound, Pipe, StdIO
from streamsrv.runtime.containerd import ContainerdImages, ContainerdRuntime
from streamsrv.runtime.ctdapi import task_pb2, tasks_pb2
from streamsrv.runtime.ctdclient import NotFound
from streamsrv.runtime.volumes import VolumeHost, mounts_under
from tests.conftest import BUSYBOX, PAUSE, pod_manifest, proc_table, sleeper, unique

pytestmark = pytest.mark.docker  # the test images come from the Docker engine


class Buffer:
    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        self.data += data


async def until(what: str, check: Callable[[], object], bound: float = 60.0) -> None:
    """Poll ``check`` without blocking the event loop (the runtime's tasks run meanwhile); a
    check that asks containerd returns an awaitable, awaited each time."""
    deadline = asyncio.get_running_loop().time() + bound
    while not await _settled(check()):
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.05)


async def _settled(got: object) -> object:
    return await got if inspect.isawaitable(got) else got


def make(ns: object, root: Path, volumes: VolumeHost | None = None) -> ContainerdRuntime:
    from tests.ctd_runtime import Namespace

    assert isinstance(ns, Namespace)
    return ContainerdRuntime(
        root, address=ns.address, namespace=ns.name, snapshotter=ns.cri.snapshotter,
        pause_image=PAUSE, volumes=volumes,
    )  # fmt: skip


@pytest.fixture
async def ctd(tmp_path: Path) -> AsyncIterator[tuple[ContainerdRuntime, object]]:
    from tests import ctd_runtime

    ns = ctd_runtime.namespace()
    rt = make(ns, tmp_path / "io")
    await rt.start()
    yield rt, ns
    await rt.close()


async def test_an_image_not_in_the_namespace_is_not_pulled(ctd: tuple) -> None:
    rt, ns = ctd
    with pytest.raises(ImageNotFound) as caught:
        await rt.ensure_image("example.invalid/nothing:here")
    assert ns.name in str(caught.value) and "does not pull" in str(caught.value)


async def test_fifos_are_removed_after_each_exec(ctd: tuple, tmp_path: Path) -> None:
    rt, _ = ctd
    pod = await PodManager(rt).create(parse_pod(pod_manifest(unique("fifo"), sleeper())))
    cid = pod.container_id("main")
    assert cid
    before = sorted(p.name for p in (tmp_path / "io" / cid).iterdir())
    for _ in range(3):
        stdin, out = Pipe(), Buffer()
        await stdin.feed(b"abc")
        stdin.close()
        assert await rt.exec(cid, ["cat"], StdIO(stdin=stdin, stdout=out), tty=False) == 0
        assert out.data == b"abc"

    # the container's own FIFOs stay while it runs; the execs' directories go, once each
    # session has its status (they are removed after it, with the exec's process)
    def listed() -> list[str]:
        return sorted(p.name for p in (tmp_path / "io" / cid).iterdir())

    await until("the execs' FIFO directories are removed", lambda: listed() == before, 10)


async def test_an_execs_wait_goes_out_before_start_and_its_process_is_deleted_after(
    ctd: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exit of an exec is waited for from before ``Tasks.Start`` returns, so a short
    command's exit needs no call after Start; the exec's process is still deleted from
    containerd afterwards (``DeleteProcess``, once the session has its status)."""
    rt, _ = ctd
    pod = await PodManager(rt).create(parse_pod(pod_manifest(unique("wait"), sleeper())))
    cid = pod.container_id("main")
    assert cid
    order: list[str] = []
    exec_ids: list[str] = []
    real_wait, real_task = rt.api.wait_future, rt.api.task

    def wait(container_id: str, exec_id: str = "") -> asyncio.Future[int]:
        if exec_id:
            order.append("wait")
            exec_ids.append(exec_id)
        return real_wait(container_id, exec_id)

    async def task(name: str, request: object, response: type, **kw: object) -> object:
        got = await real_task(name, request, response, **kw)
        if isinstance(request, tasks_pb2.StartRequest) and request.exec_id:
            order.append("started")
        return got

    monkeypatch.setattr(rt.api, "wait_future", wait)
    monkeypatch.setattr(rt.api, "task", task)
    out = Buffer()
    assert await rt.exec(cid, ["sh", "-c", "echo hi; exit 3"], StdIO(stdout=out), tty=False) == 3
    assert out.data == b"hi\n"
    assert order == ["wait", "started"]

    async def known() -> bool:
        try:
            await real_task(
                "Get", tasks_pb2.GetRequest(container_id=cid, exec_id=exec_ids[0]),
                tasks_pb2.GetResponse,
            )  # fmt: skip
        except NotFound:
            return False
        return True

    deadline = asyncio.get_running_loop().time() + 30
    while await known():
        assert asyncio.get_running_loop().time() < deadline, "the exec's process was never deleted"
        await asyncio.sleep(0.05)


def _host_processes(marker: str) -> list[str]:
    """Command lines on this host that contain ``marker``."""
    return [f"{pid} {args.strip()}" for pid, (_, args) in proc_table().items() if marker in args]


async def test_an_exec_cancelled_before_its_start_answered_is_killed(
    ctd: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process runs before ``Tasks.Start`` has answered. A session that ends in between
    (its client killed) must still kill it and its children: before, the exec was cancelled
    with no pid known and the process stayed (CI, a killed kubectl's ``sh -c "sleep N"``)."""
    rt, _ = ctd
    pod = await PodManager(rt).create(parse_pod(pod_manifest(unique("late"), sleeper())))
    cid = pod.container_id("main")
    assert cid
    real_task = rt.api.task
    answered = asyncio.Event()

    async def task(name: str, request: object, response: type, **kw: object) -> object:
        got = await real_task(name, request, response, **kw)
        if isinstance(request, tasks_pb2.StartRequest) and request.exec_id:
            answered.set()
            await asyncio.sleep(3)  # the answer on its way to us, slowly
        return got

    monkeypatch.setattr(rt.api, "task", task)
    marker = str(200000 + int.from_bytes(os.urandom(2), "big"))
    work = asyncio.ensure_future(
        rt.exec(cid, ["sh", "-c", f"sleep {marker}; echo never"], StdIO(stdout=Buffer()), tty=False)
    )
    await asyncio.wait_for(answered.wait(), 30)
    await until("the exec's child runs", lambda: any(
        f"sleep {marker}" in p and "sh -c" not in p for p in _host_processes(marker)
    ), 10)  # fmt: skip
    work.cancel()
    with pytest.raises(asyncio.CancelledError):
        await work
    await until("the exec and its child are killed", lambda: not _host_processes(marker), 10)


async def test_an_exec_cancelled_before_its_create_answered_is_deleted(
    ctd: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session that ends while ``Tasks.Exec`` is on the way: the process that Exec created
    (never started) is deleted once Exec answers. Before, nothing deleted it, and the shim kept
    it until its container ended."""
    rt, _ = ctd
    pod = await PodManager(rt).create(parse_pod(pod_manifest(unique("late"), sleeper())))
    cid = pod.container_id("main")
    assert cid
    real_task = rt.api.task
    created: list[str] = []

    async def task(name: str, request: object, response: type, **kw: object) -> object:
        got = await real_task(name, request, response, **kw)
        if isinstance(request, tasks_pb2.ExecProcessRequest):
            created.append(request.exec_id)
            await asyncio.sleep(3)  # the answer on its way to us, slowly
        return got

    monkeypatch.setattr(rt.api, "task", task)
    work = asyncio.ensure_future(rt.exec(cid, ["true"], StdIO(stdout=Buffer()), tty=False))
    await until("the exec is created", lambda: bool(created), 30)
    get = tasks_pb2.GetRequest(container_id=cid, exec_id=created[0])
    got = await real_task("Get", get, tasks_pb2.GetResponse)
    assert got.process.status == task_pb2.CREATED, got
    work.cancel()
    with pytest.raises(asyncio.CancelledError):
        await work

    async def gone() -> bool:
        try:
            await real_task("Get", get, tasks_pb2.GetResponse)
        except NotFound:
            return True
        return False

    await until("the created exec is deleted", gone, 15)  # a hang bound: Exec answers 3 s late


async def test_a_running_exec_waits_for_its_exit_with_no_task(ctd: tuple) -> None:
    """An exec's Tasks.Wait is a future settled by the connection (``wait_future``), not a
    task held for as long as the process runs (docs/benchmarks.md, idle memory); it still
    tells the exit, and a Wait for a missing task is NotFound."""
    rt, _ = ctd
    pod = await PodManager(rt).create(parse_pod(pod_manifest(unique("held"), sleeper())))
    cid = pod.container_id("main")
    assert cid
    out = Buffer()
    cmd = ["sh", "-c", "echo up; read line; exit 5"]
    stdin = Pipe(1 << 16)
    run = asyncio.ensure_future(rt.exec(cid, cmd, StdIO(stdin=stdin, stdout=out), tty=False))
    try:
        await until("the exec runs", lambda: out.data == b"up\n" or run.done())
        waiting = {getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks()}
        assert not waiting & {"Containerd.wait", "Channel.unary"}, waiting
        await stdin.feed(b"go\n")
        assert await asyncio.wait_for(run, 60) == 5
    finally:
        run.cancel()
    with pytest.raises(NotFound):
        await asyncio.wait_for(rt.api.wait_future("no-such-container"), 30)


async def test_an_exec_killed_with_its_container_tells_how_the_container_ended_at_once(
    ctd: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """containerd's shim kills a container's execs with it, and an exec can end before our
    own wait on the container's task has returned. The exec then asks containerd how the
    container ended (``stop_seen``), so that ``container_stopped`` already says it and the
    session's status names the container's end rather than a bare 137."""
    rt, _ = ctd
    real_wait = rt.api.wait
    released = asyncio.Event()

    async def wait(container_id: str, exec_id: str = "") -> int:
        if not exec_id:  # the containers' own waits return only once the test is done
            await released.wait()
        return await real_wait(container_id, exec_id)

    monkeypatch.setattr(rt.api, "wait", wait)
    try:
        pod = await PodManager(rt).create(parse_pod(pod_manifest(unique("kill"), sleeper())))
        cid = pod.container_id("main")
        assert cid
        out = Buffer()
        cmd = ["sh", "-c", "echo up; exec sleep 100000"]
        run = asyncio.ensure_future(rt.exec(cid, cmd, StdIO(stdout=out), tty=False))
        await until("the exec runs", lambda: out.data == b"up\n" or run.done())
        assert await rt.container_stopped(cid) is None
        await rt.api.kill(cid, signal.SIGKILL)
        assert await asyncio.wait_for(run, 60) == KILLED
        why = await rt.container_stopped(cid)
        assert why is not None and "exited with code 137" in why, why
    finally:
        released.set()


async def test_output_reaches_the_log_file_and_stop_waits_for_it(
    ctd: tuple, tmp_path: Path
) -> None:
    rt, _ = ctd
    spec = parse_pod(
        pod_manifest(
            unique("logs"),
            {"name": "main", "image": BUSYBOX,
             "command": ["sh", "-c", "echo out-line; echo err-line >&2; exec sleep 100000"]},
        )
    )  # fmt: skip
    manager = PodManager(rt, tmp_path / "state")
    pod = await manager.create(spec)
    cid = pod.container_id("main")
    assert cid
    [state] = [c for c in await rt.list_containers() if c.id == cid]
    path = Path(state.log_path)
    await until("both lines logged", lambda: path.exists() and b"err-line" in path.read_bytes())
    await rt.stop_container(cid, 0)
    lines = (await asyncio.to_thread(path.read_bytes)).decode().splitlines()
    assert any(" stdout F out-line" in line for line in lines), lines
    assert any(" stderr F err-line" in line for line in lines), lines
    [state] = [c for c in await rt.list_containers() if c.id == cid]
    assert (state.state, state.exit_code) == ("exited", 137)


async def test_the_next_server_removes_what_a_killed_one_left(ctd: tuple, tmp_path: Path) -> None:
    """A namespace is one server's: a new runtime on it starts by removing every container,
    task and snapshot an earlier one left (its FIFOs died with it)."""
    _, ns = ctd
    volumes = VolumeHost(tmp_path / "volumes")
    rt = make(ns, tmp_path / "io1", volumes)
    mounted = {**sleeper(), "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}
    manifest = pod_manifest(unique("left"), mounted, volumes=[{"name": "scratch", "emptyDir": {}}])
    pod = await PodManager(rt).create(parse_pod(manifest))
    cid = pod.container_id("main")
    assert cid
    assert await rt.exec(cid, ["touch", "/scratch/x"], StdIO(), tty=False) == 0
    assert list(volumes.root.glob("*/scratch/x"))  # the emptyDir is on this host
    listed = ns.ctr("containers", "ls", "-q").stdout.split()
    assert len(listed) == 2  # pause + main
    labels = json.loads(ns.ctr("containers", "info", listed[0]).stdout)["Labels"]
    assert labels["io.streamsrv.kind"] in ("sandbox", "container")
    # no close(): as if that server had been killed
    assert mounts_under(tmp_path / "io1")  # the pod's /dev/shm
    successor = make(ns, tmp_path / "io1", volumes)  # the same state directory
    try:
        assert await successor.start() == 2
        assert list(volumes.root.iterdir()) == []  # the dead pod's volumes too
        assert mounts_under(tmp_path / "io1") == []  # and its /dev/shm
        assert ns.ctr("containers", "ls", "-q").stdout.split() == []
        assert ns.ctr("tasks", "ls", "-q").stdout.split() == []
        assert await successor.list_pod_sandboxes() == []
    finally:
        await successor.close()
        for task in list(rt._tasks):  # the "killed" one's waits, and its channel
            task.cancel()
        await rt.api.close()


async def test_pods_end_with_the_runtime(tmp_path: Path) -> None:
    from tests import ctd_runtime

    ns = ctd_runtime.namespace()
    rt = make(ns, tmp_path / "io")
    await rt.start()
    await PodManager(rt).create(parse_pod(pod_manifest(unique("end"), sleeper())))
    assert len(ns.ctr("tasks", "ls", "-q").stdout.split()) == 2
    await asyncio.wait_for(rt.close(), 60)
    assert ns.ctr("containers", "ls", "-q").stdout.split() == []
    assert ns.ctr("tasks", "ls", "-q").stdout.split() == []


async def test_containerd_restarting_is_not_an_exit(tmp_path: Path) -> None:
    """containerd killed and started again (its shims keep the containers running): our
    containers stay running, not "exited 255", and sessions work again once it is back; the
    exit that comes after is the real one. A containerd of this test's own: it is killed."""
    import os
    import signal
    import subprocess
    import time

    from tests.containerd_env import containerd_cri, read_env
    from tests.ctd_runtime import Namespace, _image_tar

    again: subprocess.Popen[bytes] | None = None
    with containerd_cri(tmp_path) as cri:
        ns = Namespace(cri, "restart")
        ns.ctr("images", "import", "--snapshotter", cri.snapshotter, _image_tar())
        rt = make(ns, tmp_path / "io")
        await rt.start()
        try:
            pod = await PodManager(rt).create(parse_pod(pod_manifest(unique("rs"), sleeper())))
            cid = pod.container_id("main")
            assert cid
            os.kill(cri.pid, signal.SIGKILL)
            await until("containerd gone", lambda: not cri.socket.exists() or _dead(cri.pid))
            await asyncio.sleep(2.5)  # our waits fail meanwhile, and are made again
            [state] = [c for c in await rt.list_containers() if c.id == cid]
            assert state.state == "running"
            with cri.log_path.open("a") as log:
                again = subprocess.Popen(  # noqa: ASYNC220 (it returns at once)
                    ["setsid", *cri.nsenter_args(), "containerd", "--config",
                     str(cri.config_path)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            env = cri.directory / "containerd.env"  # so that the stop finds the new one
            text = env.read_text().replace(
                f"CONTAINERD_PID={cri.pid}", f"CONTAINERD_PID={again.pid}"
            )
            env.write_text(text)
            assert read_env(env)["CONTAINERD_PID"] == str(again.pid)
            deadline = time.monotonic() + 30
            while True:  # the runtime's channel reconnects within a second of containerd's
                try:
                    await rt.version()
                    break
                except EngineUnavailable:
                    assert time.monotonic() < deadline, cri.log_tail()
                    await asyncio.sleep(0.2)
            out = Buffer()
            code = await rt.exec(cid, ["echo", "back"], StdIO(stdout=out), tty=False)
            assert (code, bytes(out.data)) == (0, b"back\n")
            await rt.stop_container(cid, 0)
            [state] = [c for c in await rt.list_containers() if c.id == cid]
            assert (state.state, state.exit_code) == ("exited", 137)
        finally:
            await rt.close()
    if again is not None:  # the stop killed it
        again.wait(30)


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


async def test_pods_get_their_network_from_cni(ctd: tuple, tmp_path: Path) -> None:
    """Two pods on a bridge + host-local network (its plugins in a namespace of the test's,
    tests/cni_env.py): each gets an address on its own eth0, one reaches the other's server by
    it, the leases go with the pods; and a port-forward dial reaches the pod's loopback."""
    from streamsrv.runtime.cni import CniNetwork
    from tests.cni_env import CNI_BIN, pod_network

    _, ns = ctd
    with pod_network(tmp_path / "net") as net:
        network = CniNetwork(
            tmp_path / "cni", conf_dir=net.conf_dir, bin_dirs=[CNI_BIN], plugin_netns=net.netns
        )
        rt = ContainerdRuntime(
            tmp_path / "io-net", address=ns.address, namespace=ns.name,
            snapshotter=ns.cri.snapshotter, pause_image=PAUSE, network=network,
        )  # fmt: skip
        try:
            manager = PodManager(rt)
            served = {
                "name": "web", "image": BUSYBOX,
                "command": ["sh", "-c", "echo by-a > /tmp/i; exec httpd -f -p 8080 -h /tmp"],
            }  # fmt: skip
            a = await manager.create(parse_pod(pod_manifest(unique("neta"), served)))
            b = await manager.create(parse_pod(pod_manifest(unique("netb"), sleeper("client"))))
            ip_a, ip_b = a.sandbox.ip, b.sandbox.ip
            assert ip_a and ip_b and ip_a != ip_b
            web_id, client_id = a.container_id("web"), b.container_id("client")
            assert web_id and client_id
            out = Buffer()
            await rt.exec(
                web_id, ["ip", "-o", "addr", "show", "dev", "eth0"], StdIO(stdout=out), tty=False
            )
            assert f"inet {ip_a}/24".encode() in out.data
            for _ in range(50):  # httpd may not listen yet
                got = Buffer()
                cmd = ["wget", "-qO-", f"http://{ip_a}:8080/i"]
                if await rt.exec(client_id, cmd, StdIO(stdout=got), tty=False) == 0:
                    break
                await asyncio.sleep(0.1)
            assert got.data == b"by-a\n"
            sock = await rt.dial(a.sandbox.id, 8080)  # the pod's own loopback
            try:
                loop = asyncio.get_running_loop()
                await loop.sock_sendall(sock, b"GET /i HTTP/1.0\r\n\r\n")
                reply = b""
                while chunk := await loop.sock_recv(sock, 4096):
                    reply += chunk
            finally:
                sock.close()
            assert reply.endswith(b"by-a\n"), reply
            assert len(net.leases()) == 2
            await manager.delete("default", a.spec.name, grace=0)
            await manager.delete("default", b.spec.name, grace=0)
            assert net.leases() == []
        finally:
            await rt.close()


async def test_cri_images_are_containerds(ctd: tuple) -> None:
    """The CRI image service of `streamsrv cri --runtime containerd`: containerd's images in
    the namespace, one item an image id with all its names; a pull of a missing one is
    ImageNotFound (nothing is pulled); removal removes the name."""
    rt, ns = ctd
    images = ContainerdImages(rt)
    listed = await images.list_images()
    names = {tag for info in listed for tag in info.repo_tags}
    assert ns.cri.busybox_ref in names and ns.cri.pause_ref in names
    busybox = await images.image_status(BUSYBOX)
    assert busybox is not None and busybox.id.startswith("sha256:") and busybox.size > 0
    assert await images.image_status(busybox.id) == busybox
    assert await images.pull_image(BUSYBOX) == busybox
    with pytest.raises(ImageNotFound, match="does not pull"):
        await images.pull_image("example.invalid/none:1")
    ns.ctr("images", "tag", ns.cri.busybox_ref, "docker.io/streamsrv/extra:1")
    again = await images.image_status(busybox.id)
    assert again is not None and "docker.io/streamsrv/extra:1" in again.repo_tags
    await images.remove_image("streamsrv/extra:1")
    assert "docker.io/streamsrv/extra:1" not in ns.ctr("images", "ls", "-q").stdout.split()
    assert await images.image_status("streamsrv/extra:1") is None

"""The containerd runtime: pods on containerd through its own gRPC API (docs/containerd.md).

No CRI plugin in between, and no engine process between the container and us: each process's
stdio are FIFOs that this runtime makes, and containerd's shim writes and reads them directly
(shim -> FIFO -> streamsrv), one hop fewer than Docker's shim -> dockerd -> hijacked HTTP.

The pod model is the one the Docker runtime draws: a sandbox is a pause container with its own
network, IPC, UTS and PID namespaces (or the host's, as the pod asks), networked by CNI; app
containers join its namespaces by path (``/proc/PID/ns/...`` of the pause process) and get the
pod's volumes as bind mounts. Images are containerd's: present and unpacked in the namespace
(``ctr -n streamsrv images import``); this runtime does not pull.

Everything this runtime makes lives in its containerd namespace (``streamsrv`` by default) and
in its memory: the FIFOs of a container's output belong to the server that started it. So, as
with the process runtime, pods do not outlive the server: :meth:`ContainerdRuntime.start`
removes what an earlier server left in the namespace, and :meth:`close` removes what this one
made.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import sys
import termios
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2

from ..files import own_dir
from ..pods import (
    LABEL_CONTAINER_NAME,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
    PID_CONTAINER,
    PID_NODE,
    ContainerSpec,
    ContainerState,
    InvalidPod,
    PodSpec,
    SandboxState,
)
from ..protocol.resize import TerminalSize
from . import ctdclient
from .base import (
    KILLED,
    BackendError,
    ByteSink,
    ContainerNotFound,
    EngineUnavailable,
    FdWriter,
    Flag,
    ImageNotFound,
    Listeners,
    LogFile,
    Resizes,
    StdIO,
    attach_until_exit,
    check_container,
    connect_first,
    first_done,
    kill_tree,
    pump_output,
    sockets_in_netns,
    wait_event,
    wait_fd,
)
from .cni import CniNetwork
from .ctdapi import containers_pb2, snapshots_pb2, task_pb2, tasks_pb2
from .ctdclient import Containerd, ImageConfig, NotFound
from .images import FsUsage, ImageInfo, config_user, normalize_ref
from .volumes import VolumeHost, mounts_under

log = logging.getLogger(__name__)

FIRST_SIZE_WAIT = 1.0  # seconds a tty exec waits for the client's first size before it starts
CHUNK = 1 << 18  # one read from an output FIFO
PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ of each FIFO: fewer wake-ups per MiB (pipe-max-size)
#: Seconds from an exec's end to DeleteProcess (``_forget_exec``): after its session's status.
FORGET_DELAY = 0.1
OUTPUT_DRAIN_WAIT = 5.0  # seconds a container's output may run on after its process exited
RETRY_WAIT = 1.0  # seconds between waits for a task's exit while containerd does not answer
_F_SETPIPE_SZ = 1031
_LABEL_KIND = "io.streamsrv.kind"  # sandbox | container, on our containerd containers
_NAMES = (LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID, LABEL_CONTAINER_NAME)


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def _exec_spec(
    base: dict[str, Any], cmd: Sequence[str], tty: bool, first: TerminalSize | None
) -> Any:
    """An exec's OCI process: the container's, with ``cmd``, the terminal and its first size.
    Made here, not in :meth:`ContainerdRuntime.exec`, whose frame lasts as long as the session
    (docs/benchmarks.md, idle memory)."""
    process = dict(base)
    process["args"] = list(cmd)
    process["terminal"] = tty
    if tty:
        env = list(process["env"])
        if not any(e.startswith("TERM=") for e in env):
            process["env"] = [*env, "TERM=xterm"]
        if first is not None:
            process["consoleSize"] = {"height": first.height, "width": first.width}
    return ctdclient.any_json(ctdclient.PROCESS_TYPE, process)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


@dataclass(eq=False)
class _Sandbox:
    id: str
    pod: PodSpec
    labels: dict[str, str]
    created: datetime = field(default_factory=_now)
    pid: int = 0
    running: bool = False
    ip: str | None = None
    shm: str | None = None  # the pod's /dev/shm on this host, bound into each container
    exited: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Container:
    id: str
    sandbox: _Sandbox
    spec: ContainerSpec
    labels: dict[str, str]
    image: ImageConfig
    process: dict[str, Any]  # its OCI process: what an exec starts from
    created: datetime = field(default_factory=_now)
    state: str = "created"  # created | running | exited
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    stdin_fd: int | None = None  # our end of its stdin FIFO (stdin containers)
    stdin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    listeners: Listeners = field(default_factory=list)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None
    log: LogFile | None = None
    closing: asyncio.Task[None] | None = None
    #: its exit code as containerd reported it to an exec killed with it, before our own
    #: wait has recorded the exit (``container_stopped``)
    stop_seen: int | None = None


class FifoReader:
    """Reads one FIFO on the event loop. Until the FIFO has once polled readable, each read
    waits for readiness first: a FIFO whose writer has not opened it yet polls as neither
    readable nor hung up, while ``read`` would return end-of-file at once (Linux's pipe_poll).
    From then on the writer has opened it, so a read tries the FIFO first and waits only when
    it is empty: with the shim writing as fast as we read, most reads find data and skip the
    two epoll_ctl calls of a wait (exec stdout, 1 GiB from ``dd`` into the FIFO, by hand:
    0.11-0.12 CPU-seconds against 0.17 with a wait before every read; docs/benchmarks.md).
    End-of-file is the writer's either way."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._opened = False  # the FIFO polled readable once: its writer has opened it

    async def read(self, n: int = CHUNK) -> bytes:
        while True:
            if self._opened:
                try:
                    return os.read(self.fd, n)
                except BlockingIOError:
                    pass
            await wait_fd(self.fd, readable=True)
            self._opened = True


class _Fifos:
    """The FIFOs of one process (``stdin``, ``stdout``, ``stderr``: paths for containerd, ""
    for none) and our ends of them, in a directory of their own that :meth:`close` removes."""

    def __init__(self, directory: Path, *, stdin: bool, stdout: bool, stderr: bool) -> None:
        self.directory = directory
        self.paths = {"stdin": "", "stdout": "", "stderr": ""}
        self.fds: dict[str, int] = {}
        try:
            os.mkdir(directory, 0o700)
        except FileNotFoundError:  # its parent first: rare, the container's directory exists
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:
            pass
        try:
            for name, wanted in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
                if not wanted:
                    continue
                path = directory / name
                os.mkfifo(path, 0o600)
                # stdin: read-write, so that opening does not wait for the shim and writes
                # never fail before it reads; outputs: read-only, non-blocking.
                flags = os.O_RDWR if name == "stdin" else os.O_RDONLY
                fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
                self.fds[name] = fd
                with contextlib.suppress(OSError):
                    fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
                self.paths[name] = str(path)
        except BaseException:
            self.close()
            raise

    def take(self, name: str) -> int | None:
        """Our end of ``name``, now the caller's to close."""
        return self.fds.pop(name, None)

    def close(self) -> None:
        """Our ends closed, the FIFOs and their directory removed."""
        self.close_ends()
        self.remove()

    def close_ends(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    def remove(self) -> None:
        """The FIFOs and their directory gone: an unlink each and an rmdir, not a tree walk
        (the walk costs a few times more; docs/containerd.md, "Where the FIFOs live")."""
        try:
            for path in self.paths.values():
                if path:
                    os.unlink(path)
            os.rmdir(self.directory)
        except OSError:  # one never opened, or gone already
            shutil.rmtree(self.directory, ignore_errors=True)


class ContainerdRuntime:
    """Pods on containerd (see the module docstring)."""

    name = "containerd"

    def __init__(
        self,
        root: Path,
        *,
        address: str = ctdclient.DEFAULT_ADDRESS,
        namespace: str = ctdclient.DEFAULT_NAMESPACE,
        snapshotter: str = "overlayfs",
        pause_image: str = "registry.k8s.io/pause:3.9",
        volumes: VolumeHost | None = None,
        network: CniNetwork | None = None,
    ) -> None:
        """``root``: where the FIFOs live (the runtime's own: emptied at start)."""
        self.api = Containerd(address, namespace)
        self.root = root
        self.snapshotter = snapshotter
        self.pause_image = pause_image
        self._volumes = volumes
        self._network = network
        self._sandboxes: dict[str, _Sandbox] = {}
        self._containers: dict[str, _Container] = {}
        self._images: dict[str, ImageConfig] = {}
        self._execs: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> int:
        """Check that containerd answers, and remove whatever an earlier server left in the
        namespace (its pods died with it); returns how many containers that was."""
        await self.api.version()
        await asyncio.to_thread(_own_empty_dir, self.root)
        left = [c for c in await self.api.containers() if _LABEL_KIND in c.labels]
        for c in left:
            await self._destroy(c.id, c.snapshot_key or c.id)
        # what those pods held outside containerd: their CNI attachments (addresses leased)
        # and their volumes; the directories are this runtime's own (cli.pick_runtime)
        if self._network is not None:
            for cid in self._network.recorded():
                try:
                    await self._network.delete(cid, netns="")
                except BackendError as exc:
                    log.warning("pod sandbox %s: no CNI DEL: %s", cid[:12], exc)
        if self._volumes is not None:
            await asyncio.to_thread(self._volumes.sweep, set())
        return len(left)

    async def version(self) -> str:
        return await self.api.version()

    async def close(self) -> None:
        """Remove every pod this runtime made (each step goes on when containerd fails)."""
        for cid, exec_id in list(self._execs):
            with contextlib.suppress(BackendError):
                await self.api.kill(cid, signal.SIGKILL, exec_id)
        for c in list(self._containers.values()):
            with contextlib.suppress(BackendError):
                await self._kill(c)
            await self._destroy(c.id, c.id)
        self._containers.clear()
        for s in list(self._sandboxes.values()):
            with contextlib.suppress(BackendError):
                await self.remove_pod_sandbox(s.id)
        for task in list(self._tasks):
            task.cancel()
        await self.api.close()
        await asyncio.to_thread(_remove_dir, self.root)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ----------------------------------------------------------------------------- images

    async def image(self, image: str) -> ImageConfig:
        """What the runtime knows of ``image`` (read once from containerd, then kept).

        Raises:
            ImageNotFound: not in this runtime's namespace, or not a reference at all.
        """
        try:
            ref = normalize_ref(image)
        except ValueError as exc:
            raise ImageNotFound(image, str(exc)) from None
        known = self._images.get(ref)
        if known is None:
            try:
                known = await ctdclient.image_config(self.api, ref)
            except NotFound:
                raise ImageNotFound(
                    image,
                    f"not in containerd namespace {self.api.namespace} (this runtime does not "
                    f"pull: ctr -n {self.api.namespace} images pull or import it)",
                ) from None
            self._images[ref] = known
        return known

    def forget_image(self, ref: str) -> None:
        """``ref`` was removed (or retagged): read it again when next asked."""
        self._images.pop(ref, None)

    async def ensure_image(self, image: str) -> bool:
        await self.image(image)
        return False

    # ----------------------------------------------------------------------------- sandboxes

    async def run_pod_sandbox(self, pod: PodSpec) -> str:
        if pod.volumes and self._volumes is None:
            raise InvalidPod(
                pod.name, [("spec.volumes", "Forbidden: this runtime has no volume directory")]
            )
        image = await self.image(self.pause_image)
        sandbox = _Sandbox(_new_id(), pod, pod.sandbox_labels())
        namespaces = [{"type": "mount"}]
        if not pod.host_network:
            namespaces += [{"type": "network"}, {"type": "uts"}]
        if not pod.host_ipc:
            namespaces.append({"type": "ipc"})
        if not pod.host_pid:
            namespaces.append({"type": "pid"})
        process = ctdclient.process_spec(
            [*image.entrypoint, *image.cmd] or ["/pause"],
            image.env,
            image.working_dir,
            image.user,
            terminal=False,
        )
        if pod.host_ipc:
            sandbox.shm = "/dev/shm"
        else:
            sandbox.shm = await asyncio.to_thread(_make_shm, self.root / "shm" / sandbox.id)
        spec = ctdclient.oci_spec(
            process,
            cgroup=f"/{self.api.namespace}/{sandbox.id}",
            hostname=None if pod.host_network else pod.name[:63],
            namespaces=namespaces,
            own_network=not pod.host_network,
            shm=sandbox.shm,
        )
        if self._volumes is not None:
            await asyncio.to_thread(self._volumes.prepare, pod)
        made = False
        try:
            await self._create(sandbox.id, image, spec, "sandbox", sandbox.labels)
            made = True
            got = await self.api.task(
                "Create",
                tasks_pb2.CreateTaskRequest(
                    container_id=sandbox.id, rootfs=await self._mounts(sandbox.id)
                ),
                tasks_pb2.CreateTaskResponse,
            )
            await self.api.task(
                "Start", tasks_pb2.StartRequest(container_id=sandbox.id), tasks_pb2.StartResponse
            )
            sandbox.pid, sandbox.running = got.pid, True
            self._sandboxes[sandbox.id] = sandbox
            self._spawn(self._watch_sandbox(sandbox), f"sandbox {sandbox.id[:12]}")
            if not pod.host_network and self._network is not None:
                attachment = await self._network.add(
                    sandbox.id,
                    f"/proc/{sandbox.pid}/ns/net",
                    pod_name=pod.name,
                    pod_namespace=pod.namespace,
                    pod_uid=pod.uid,
                )
                if attachment is not None and attachment.ips:
                    sandbox.ip = attachment.ips[0]
        except BaseException:
            self._sandboxes.pop(sandbox.id, None)
            if made:
                await asyncio.shield(self._undo_sandbox(sandbox))
            else:
                await asyncio.to_thread(_remove_shm, self.root / "shm" / sandbox.id)
                if self._volumes is not None:
                    await asyncio.to_thread(self._volumes.remove, pod.uid)
            raise
        return sandbox.id

    async def _undo_sandbox(self, sandbox: _Sandbox) -> None:
        with contextlib.suppress(BackendError):
            if self._network is not None:
                await self._network.delete(sandbox.id, netns="")
        await self._destroy(sandbox.id, sandbox.id)
        await asyncio.to_thread(_remove_shm, self.root / "shm" / sandbox.id)
        if self._volumes is not None:
            await asyncio.to_thread(self._volumes.remove, sandbox.pod.uid)

    async def _watch_sandbox(self, sandbox: _Sandbox) -> None:
        with contextlib.suppress(BackendError):
            await self._wait_exit(sandbox.id, f"pod sandbox {sandbox.pod.name}")
        sandbox.running = False
        sandbox.exited.set()

    async def _wait_exit(self, cid: str, what: str) -> int:
        """The exit status of a container's task. containerd going away is not an exit (its
        shims keep the containers running while it restarts): the wait is made again, every
        second, until containerd answers.

        Raises:
            BackendError: containerd answered with an error (``NotFound``: no such task).
        """
        told = False
        while True:
            try:
                return await self.api.wait(cid)
            except EngineUnavailable as exc:
                if not told:
                    log.warning("%s: containerd went away, waiting for it: %s", what, exc)
                    told = True
                await asyncio.sleep(RETRY_WAIT)

    async def _create(
        self,
        cid: str,
        image: ImageConfig,
        spec: dict[str, Any],
        kind: str,
        labels: Mapping[str, str],
    ) -> None:
        """The container record and its snapshot. ``labels``: the pod's and container's names,
        so that ``ctr containers ls`` tells them apart (not the manifest: containerd takes at
        most 4 KiB a label)."""
        await self.api.prepare(self.snapshotter, cid, image.chain)
        try:
            await self.api.create_container(
                containers_pb2.Container(
                    id=cid,
                    labels={**{k: labels[k] for k in _NAMES if k in labels}, _LABEL_KIND: kind},
                    image=image.ref,
                    runtime=containers_pb2.Container.Runtime(name=ctdclient.RUNC),
                    spec=ctdclient.any_json(ctdclient.SPEC_TYPE, spec),
                    snapshotter=self.snapshotter,
                    snapshot_key=cid,
                )
            )
        except BaseException:
            await asyncio.shield(self.api.remove_snapshot(self.snapshotter, cid))
            raise

    async def _mounts(self, cid: str) -> Any:
        got = await self.api.call(
            "/containerd.services.snapshots.v1.Snapshots/Mounts",
            snapshots_pb2.MountsRequest(snapshotter=self.snapshotter, key=cid),
            snapshots_pb2.MountsResponse,
        )
        return list(got.mounts)

    async def _destroy(self, cid: str, snapshot: str) -> None:
        """Kill, then delete its task, its container record and its snapshot (all that
        exists of them)."""
        with contextlib.suppress(BackendError):
            await self.api.kill(cid, signal.SIGKILL, all=True)
        with contextlib.suppress(BackendError), contextlib.suppress(NotFound, TimeoutError):
            await asyncio.wait_for(self.api.wait(cid), 10)
        with contextlib.suppress(BackendError):
            await self.api.delete_task(cid)
        with contextlib.suppress(BackendError):
            await self.api.delete_container(cid)
        with contextlib.suppress(BackendError):
            await self.api.remove_snapshot(self.snapshotter, snapshot)

    def _sandbox(self, sandbox_id: str) -> _Sandbox:
        try:
            return self._sandboxes[sandbox_id]
        except KeyError:
            raise ContainerNotFound(sandbox_id) from None

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        sandbox = self._sandbox(sandbox_id)
        for c in self._of(sandbox):
            await self._kill(c)
        if self._network is not None and sandbox.running:
            await self._network.delete(sandbox.id, netns=f"/proc/{sandbox.pid}/ns/net")
        await self.api.kill(sandbox.id, signal.SIGKILL, all=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sandbox.exited.wait(), 10)

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            return
        for c in self._of(sandbox):
            await self.remove_container(c.id)
        if self._network is not None:
            await self._network.delete(
                sandbox.id, netns=f"/proc/{sandbox.pid}/ns/net" if sandbox.running else ""
            )
        await self._destroy(sandbox.id, sandbox.id)
        self._sandboxes.pop(sandbox_id, None)
        await asyncio.to_thread(_remove_shm, self.root / "shm" / sandbox.id)
        if self._volumes is not None:
            await asyncio.to_thread(self._volumes.remove, sandbox.pod.uid)

    def _of(self, sandbox: _Sandbox) -> list[_Container]:
        return [c for c in self._containers.values() if c.sandbox is sandbox]

    async def list_pod_sandboxes(
        self, labels: Mapping[str, str] | None = None
    ) -> list[SandboxState]:
        out = [
            SandboxState(s.id, s.pod, s.running, s.created, s.ip)
            for s in self._sandboxes.values()
            if _matches(s.labels, labels)
        ]
        out.sort(key=lambda s: (s.pod.namespace, s.pod.name))
        return out

    async def sandbox_ready(self, sandbox_id: str) -> bool:
        sandbox = self._sandboxes.get(sandbox_id)
        return sandbox is not None and sandbox.running

    def pod_ip(self, sandbox_id: str) -> str | None:
        sandbox = self._sandboxes.get(sandbox_id)
        return sandbox.ip if sandbox is not None else None

    # ----------------------------------------------------------------------------- containers

    async def create_container(
        self, sandbox_id: str, pod: PodSpec, container: ContainerSpec
    ) -> str:
        sandbox = self._sandbox(sandbox_id)
        if not sandbox.running:
            raise BackendError(f"pod sandbox {sandbox_id[:12]} is not running")
        check_container(pod, container)
        image = await self.image(container.image)
        if container.command:
            argv = [*container.command, *container.args]
        else:
            argv = [*image.entrypoint, *(container.args or image.cmd)]
        if not argv:
            raise BackendError(f"container {container.name}: no command and none in its image")
        env = [*image.env, ("HOSTNAME", pod.name[:63]), *container.env]
        process = ctdclient.process_spec(
            argv,
            env,
            container.working_dir or image.working_dir,
            image.user,
            terminal=container.tty,
        )
        ns = f"/proc/{sandbox.pid}/ns"
        namespaces = [{"type": "mount"}, {"type": "network", "path": f"{ns}/net"}]
        if not pod.host_network:
            namespaces.append({"type": "uts", "path": f"{ns}/uts"})
        if not pod.host_ipc:
            namespaces.append({"type": "ipc", "path": f"{ns}/ipc"})
        if container.pid_namespace == PID_CONTAINER:
            namespaces.append({"type": "pid"})
        elif container.pid_namespace != PID_NODE and not pod.host_pid:
            namespaces.append({"type": "pid", "path": f"{ns}/pid"})
        binds = []
        for mount in container.volume_mounts:
            if self._volumes is None:
                raise InvalidPod(
                    pod.name, [("spec.volumes", "Forbidden: this runtime has no volume directory")]
                )
            source = await asyncio.to_thread(self._volumes.mount_source, pod, container, mount)
            binds.append((str(source), mount.mount_path, mount.read_only))
        cid = _new_id()
        spec = ctdclient.oci_spec(
            process,
            cgroup=f"/{self.api.namespace}/{cid}",
            hostname=None,
            namespaces=namespaces,
            binds=binds,
            own_network=not pod.host_network,
            shm=sandbox.shm,
        )
        labels = pod.container_labels(container)
        await self._create(cid, image, spec, "container", labels)
        self._containers[cid] = _Container(cid, sandbox, container, labels, image, process)
        return cid

    def _container(self, container_id: str) -> _Container:
        try:
            return self._containers[container_id]
        except KeyError:
            raise ContainerNotFound(container_id) from None

    async def start_container(self, container_id: str) -> None:
        c = self._container(container_id)
        if c.state != "created":
            raise BackendError(f"container {container_id[:12]} was already started")
        spec = c.spec
        if spec.log_path and c.log is None:
            c.log = await LogFile.open_async(spec.log_path)
        fifos = _Fifos(self.root / c.id, stdin=spec.stdin, stdout=True, stderr=not spec.tty)
        try:
            await self.api.task(
                "Create",
                tasks_pb2.CreateTaskRequest(
                    container_id=c.id,
                    rootfs=await self._mounts(c.id),
                    stdin=fifos.paths["stdin"],
                    stdout=fifos.paths["stdout"],
                    stderr=fifos.paths["stderr"],
                    terminal=spec.tty,
                ),
                tasks_pb2.CreateTaskResponse,
            )
            await self.api.task(
                "Start", tasks_pb2.StartRequest(container_id=c.id), tasks_pb2.StartResponse
            )
        except BaseException:
            fifos.close()
            if c.log is not None:
                c.log.close()
                c.log = None
            await asyncio.shield(self._stop_task(c.id))
            raise
        c.stdin_fd = fifos.take("stdin")
        outputs = [(FifoReader(fd), 1 if name == "stdout" else 2) for name, fd in fifos.fds.items()]
        c.state, c.started_at = "running", _now()
        c.pump = self._spawn(self._pump(c, outputs, fifos), f"container {spec.name}")
        log.info(
            "started %s/%s container %s (containerd %s)",
            c.sandbox.pod.namespace,
            c.sandbox.pod.name,
            spec.name,
            c.id[:12],
        )

    async def _stop_task(self, cid: str) -> None:
        with contextlib.suppress(BackendError):
            await self.api.kill(cid, signal.SIGKILL, all=True)
            await self.api.delete_task(cid)

    async def _pump(
        self, c: _Container, outputs: list[tuple[FifoReader, int]], fifos: _Fifos
    ) -> None:
        """Hand the container's output to whoever is attached and to its log file until its
        process exits and the output ends; then record the exit and delete the task."""
        copies = asyncio.ensure_future(pump_output(outputs, c.listeners, c.log))
        try:
            try:
                code = await self._wait_exit(c.id, f"container {c.spec.name}")
            except BackendError as exc:
                log.warning("container %s: waiting for its exit failed: %s", c.spec.name, exc)
                code = 255
            c.state, c.exit_code, c.finished_at = "exited", code, _now()
            try:
                await asyncio.wait_for(asyncio.shield(copies), OUTPUT_DRAIN_WAIT)
            except TimeoutError:
                log.warning(
                    "container %s: output still open %.0f s after its exit (a child holds it)",
                    c.spec.name,
                    OUTPUT_DRAIN_WAIT,
                )
            log.info("container %s exited with %d", c.spec.name, code)
        finally:
            copies.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await copies
            if c.log is not None:
                c.log.close()
            fifos.close()
            self._close_stdin_now(c)
            c.exited.set()
            # Shielded: a cancel (the runtime closing) leaves the delete running; its failure
            # then (the channel closed under it) is retrieved here, not logged as unretrieved.
            delete = asyncio.ensure_future(self.api.delete_task(c.id))
            delete.add_done_callback(_retrieve)
            with contextlib.suppress(BackendError):
                await asyncio.shield(delete)

    async def _kill(self, c: _Container, grace: float = 0.0) -> None:
        """Stop the container (SIGTERM, ``grace`` seconds, SIGKILL to all its processes) and
        wait until its output is in its log file (bounded)."""
        if c.pump is None:  # never started
            if c.state == "created":
                c.state, c.exit_code, c.finished_at = "exited", KILLED, _now()
            return
        if c.state == "running" and grace > 0:
            await self.api.kill(c.id, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(c.exited.wait()), grace)
        if c.state == "running":
            await self.api.kill(c.id, signal.SIGKILL, all=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(c.exited.wait(), 10 + OUTPUT_DRAIN_WAIT)

    async def stop_container(self, container_id: str, grace_period: float) -> None:
        await self._kill(self._container(container_id), grace_period)

    async def remove_container(self, container_id: str) -> None:
        c = self._containers.get(container_id)
        if c is None:
            return
        await self._kill(c)
        if c.pump is not None:
            c.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await c.pump
        await self._destroy(c.id, c.id)
        self._containers.pop(container_id, None)

    async def list_containers(
        self, labels: Mapping[str, str] | None = None
    ) -> list[ContainerState]:
        return [
            ContainerState(
                id=c.id,
                name=c.labels[LABEL_CONTAINER_NAME],
                image=c.spec.image,
                image_id=c.image.id,
                state=c.state,
                exit_code=c.exit_code,
                started_at=c.started_at,
                finished_at=c.finished_at,
                runtime="containerd",
                labels=dict(c.labels),
                log_path=c.spec.log_path,
            )
            for c in self._containers.values()
            if _matches(c.labels, labels)
        ]

    async def container_stopped(self, container_id: str) -> str | None:
        c = self._containers.get(container_id)
        if c is None:
            return f"container {container_id[:12]} was removed"
        name = c.labels.get(LABEL_CONTAINER_NAME, c.spec.name)
        if c.state == "running":
            # From memory: this is on the way to every CRI exec, and our wait on the task
            # says when it ends. An exec killed with its container asks before that wait
            # has returned; exec() asked containerd then (stop_seen).
            if c.stop_seen is None:
                return None
            return f'container "{name}" exited with code {c.stop_seen}'
        if c.state == "exited":
            return f'container "{name}" exited with code {c.exit_code}'
        return f'container "{name}" is {c.state}'

    def _running(self, container_id: str) -> _Container:
        c = self._container(container_id)
        if c.state != "running":
            raise BackendError(f"container {c.spec.name} is not running")
        return c

    # ----------------------------------------------------------------------------- streaming

    async def exec(self, container_id: str, cmd: Sequence[str], io: StdIO, *, tty: bool) -> int:
        c = self._running(container_id)
        exec_id = "exec-" + uuid.uuid4().hex[:20]
        first: TerminalSize | None = None
        if tty and io.resize is not None:
            first = await io.resize.first(FIRST_SIZE_WAIT)
        fifos = _Fifos(
            self.root / c.id / exec_id,
            stdin=io.stdin is not None,
            # the shim wants both outputs, or none: what no client asked for is read and dropped
            stdout=True,
            stderr=not tty,
        )
        started = False
        pid = 0
        waiter: asyncio.Future[int] | None = None
        try:
            create = asyncio.ensure_future(
                self.api.task(
                    "Exec",
                    tasks_pb2.ExecProcessRequest(
                        container_id=c.id,
                        exec_id=exec_id,
                        stdin=fifos.paths["stdin"],
                        stdout=fifos.paths["stdout"],
                        stderr=fifos.paths["stderr"],
                        terminal=tty,
                        spec=_exec_spec(c.process, cmd, tty, first),
                    ),
                    empty_pb2.Empty,
                )
            )
            try:
                # shielded: a session that ends while Exec is on the way must still delete the
                # process it created, or the shim keeps it until the container ends
                await asyncio.shield(create)
            except asyncio.CancelledError:
                if not create.done():
                    self._spawn(self._delete_late_exec(c.id, exec_id, create), f"exec {exec_id}")
                elif not create.cancelled() and create.exception() is None:
                    self._execs.add((c.id, exec_id))  # deleted below, as a created one
                raise
            self._execs.add((c.id, exec_id))
            # The wait goes out before Start, as containerd's own client orders them: a short
            # command has often exited by the time Start returns, and its exit then needs no
            # call of ours after Start (docs/containerd.md, "The data path").
            waiter = self.api.wait_future(c.id, exec_id)  # a future: no task while it runs
            start = asyncio.ensure_future(
                self.api.task(
                    "Start",
                    tasks_pb2.StartRequest(container_id=c.id, exec_id=exec_id),
                    tasks_pb2.StartResponse,
                )
            )
            try:
                # shielded: the process runs before Start answers, so a session that ends
                # meanwhile must still learn the pid to kill it (_kill_late_start)
                pid = (await asyncio.shield(start)).pid
            except asyncio.CancelledError:
                if not start.done():
                    self._spawn(self._kill_late_start(c.id, exec_id, start), f"exec {exec_id}")
                elif not start.cancelled() and start.exception() is None:
                    pid, started = start.result().pid, True  # killed below, as a started one
                raise
            except BackendError as exc:
                code = _start_failure(str(exc))
                if code is None:
                    raise
                sink = io.stderr or io.stdout
                if sink is not None:
                    with contextlib.suppress(ConnectionError, OSError):
                        await sink.write(f"streamsrv: {exc}\r\n".encode())
                return code
            started = True
            if first is not None and io.resize is not None:
                io.resize.delivered(first)
            await self._exec_io(c, exec_id, io, tty, fifos, waiter)
            code = waiter.result()
            if code == KILLED:  # with its container? (the shim kills a container's execs)
                await self._note_stop(c)
            return code
        except BaseException:
            if started:  # the process and whatever it started (the shim kills only its own)
                await asyncio.shield(asyncio.to_thread(kill_tree, pid))
                with contextlib.suppress(BackendError):
                    await asyncio.shield(self.api.kill(c.id, signal.SIGKILL, exec_id))
            raise
        finally:
            if waiter is not None and not waiter.cancel() and not waiter.cancelled():
                waiter.exception()  # retrieved: when Start failed too, its failure is the one told
            fifos.close_ends()
            if (c.id, exec_id) in self._execs:
                self._execs.discard((c.id, exec_id))
                self._spawn(self._forget_exec(c.id, exec_id, fifos), f"exec {exec_id}")
            else:
                fifos.remove()

    async def _delete_late_exec(
        self, cid: str, exec_id: str, create: asyncio.Future[empty_pb2.Empty]
    ) -> None:
        """An exec whose session ended while its ``Tasks.Exec`` was on the way: once Exec
        answers, the process it created (never started) is deleted (docs/containerd.md, "The
        data path")."""
        with contextlib.suppress(BackendError):  # Exec failed: there is nothing to delete
            await create
            await self.api.delete_process(cid, exec_id)

    async def _kill_late_start(
        self, cid: str, exec_id: str, start: asyncio.Future[tasks_pb2.StartResponse]
    ) -> None:
        """An exec whose session ended while its ``Tasks.Start`` was on the way: once Start
        answers, its process and whatever it started are killed and it is deleted, as a
        started exec's would be (docs/containerd.md, "The data path")."""
        try:
            pid = (await start).pid
        except BackendError:
            return  # it never started
        try:
            await asyncio.to_thread(kill_tree, pid)
        finally:
            with contextlib.suppress(BackendError):
                await self.api.kill(cid, signal.SIGKILL, exec_id)
            with contextlib.suppress(BackendError, TimeoutError):  # deletable once it exited
                await asyncio.wait_for(self.api.wait(cid, exec_id), 10)
            with contextlib.suppress(BackendError):
                await self.api.delete_process(cid, exec_id)

    async def _note_stop(self, c: _Container) -> None:
        """Ask containerd whether the container has stopped, for ``container_stopped`` to
        answer before our own wait on it has returned."""
        with contextlib.suppress(BackendError):  # NotFound: deleted, our pump records it
            got = await self.api.task(
                "Get", tasks_pb2.GetRequest(container_id=c.id), tasks_pb2.GetResponse
            )
            if got.process.status == task_pb2.STOPPED:
                c.stop_seen = got.process.exit_status

    async def _forget_exec(self, cid: str, exec_id: str, fifos: _Fifos) -> None:
        # Not in the loop iteration the exit came in: a gRPC call started there runs before
        # the session's own steps to its status and delays the status by the call's setup.
        # So do the FIFOs' removal (a few file system calls).
        try:
            await asyncio.sleep(FORGET_DELAY)
            with contextlib.suppress(BackendError):
                await self.api.delete_process(cid, exec_id)
        finally:
            fifos.remove()

    async def _end_input(self, cid: str, exec_id: str, fd: int) -> None:
        """End a process's stdin: once the shim has read what is in the FIFO, CloseIO (the
        shim holds the FIFO open itself, so our closing it is no end of file)."""
        delay = 0.001
        while _unread(fd):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        with contextlib.suppress(NotFound):
            await self.api.task(
                "CloseIO",
                tasks_pb2.CloseIORequest(container_id=cid, exec_id=exec_id, stdin=True),
                empty_pb2.Empty,
            )

    async def _exec_io(
        self,
        c: _Container,
        exec_id: str,
        io: StdIO,
        tty: bool,
        fifos: _Fifos,
        exited: asyncio.Future[int],
    ) -> None:
        """Copy stdin in, sizes and output out until the process has exited and its output
        has ended. Input goes on after the output ended: a process may close its stdout and
        read on (`sh -c 'dd of=/dev/null 2>/dev/null'`), and would wait forever for the end
        of an input nobody copies any more."""
        inp = fifos.fds.get("stdin")
        outputs: list[tuple[FifoReader, ByteSink | None]] = []
        if "stdout" in fifos.fds:
            outputs.append((FifoReader(fifos.fds["stdout"]), io.stdout or io.stderr))
        if "stderr" in fifos.fds:
            outputs.append((FifoReader(fifos.fds["stderr"]), io.stderr))

        async def stdin() -> None:
            assert io.stdin is not None and inp is not None
            writer = FdWriter(inp)
            with contextlib.suppress(BrokenPipeError):
                while chunks := await io.stdin.read_chunks():
                    await writer.write_chunks(chunks)
                if tty:
                    await writer.write(b"\x04")  # a terminal has no half-close: EOT
                else:
                    await self._end_input(c.id, exec_id, inp)
                    os.close(fifos.fds.pop("stdin"))

        async def copy(reader: FifoReader, sink: ByteSink | None) -> None:
            while data := await reader.read():
                if sink is not None:
                    await sink.write(data)

        async def resize(size: TerminalSize) -> None:
            if size.width and size.height:
                with contextlib.suppress(BackendError):
                    await self.api.resize(c.id, exec_id, size.width, size.height)

        feeder = asyncio.create_task(stdin()) if inp is not None else None
        # a follower, not a task iterating the sizes: no task while none is being applied
        sizes = io.resize.follow(resize) if tty and io.resize is not None else None
        copies = [asyncio.create_task(copy(r, s)) for r, s in outputs]
        waits: list[asyncio.Future[Any]] = [*copies, exited]
        everything = [*copies, *([feeder] if feeder is not None else [])]
        try:
            if waits:
                await first_done(waits, on_failure=True)
                for task in waits:
                    if task.done():
                        task.result()
        finally:
            if sizes is not None and (applying := sizes.stop()) is not None:
                everything.append(applying)
            for task in everything:
                task.cancel()
            for task in everything:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def attach(self, container_id: str, io: StdIO, *, tty: bool) -> None:
        """Share the container's output, and its terminal or stdin, until it ends (the
        process runtime's rules: ``stdinOnce`` closes stdin when this client's input ends)."""
        c = self._running(container_id)
        sized = Flag()
        sizes = None
        if io.resize is not None and c.spec.tty:
            sizes = self._attach_sizes(c, io.resize, sized)
        else:
            sized.set()
        stdin = None
        if io.stdin is not None and c.stdin_fd is not None:
            stdin = self._attach_stdin(c, c.stdin_fd, io, sized)
        await attach_until_exit(
            c.listeners, io, c.exited, sizes, stdin, stdin_ends_it=c.spec.stdin_once and c.spec.tty
        )

    async def _attach_sizes(self, c: _Container, sizes: Resizes, sized: Flag) -> None:
        try:
            async for size in sizes:
                if size.width and size.height and c.state == "running":
                    with contextlib.suppress(BackendError):
                        await self.api.resize(c.id, "", size.width, size.height)
                sized.set()
        finally:
            sized.set()

    async def _attach_stdin(self, c: _Container, fd: int, io: StdIO, sized: Flag) -> None:
        assert io.stdin is not None
        # the container's pump closes this fd when the container ends
        writer = FdWriter(fd, lambda: c.stdin_fd == fd)
        try:
            await wait_event(sized, FIRST_SIZE_WAIT)
            with contextlib.suppress(BrokenPipeError):
                while chunks := await io.stdin.read_chunks():
                    async with c.stdin_lock:
                        await writer.write_chunks(chunks)
        finally:
            if c.spec.stdin_once and not c.spec.tty and fd == c.stdin_fd:
                self._close_stdin(c)

    def _close_stdin_now(self, c: _Container) -> None:
        if c.stdin_fd is not None:
            with contextlib.suppress(OSError):
                os.close(c.stdin_fd)
            c.stdin_fd = None

    def _close_stdin(self, c: _Container) -> None:
        """End a container's stdin (stdinOnce), after a chunk another client is writing."""

        async def close() -> None:
            async with c.stdin_lock:
                fd = c.stdin_fd
                if fd is not None and c.state == "running":
                    with contextlib.suppress(BackendError):
                        await self._end_input(c.id, "", fd)
                self._close_stdin_now(c)

        if c.closing is None:
            c.closing = self._spawn(close(), f"close stdin {c.spec.name}")

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or not sandbox.running:
            raise BackendError(f"pod sandbox {sandbox_id[:12]} is not running")
        try:
            candidates = await asyncio.to_thread(sockets_in_netns, sandbox.pid)
        except OSError as exc:
            raise BackendError(f"pod sandbox {sandbox_id[:12]}: {exc}") from exc
        return await connect_first(candidates, port)


_MS_NOSUID_NODEV_NOEXEC = 2 | 4 | 8
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _make_shm(path: Path) -> str | None:
    """A pod's /dev/shm: a tmpfs on this host that every container of the pod binds (as the
    CRI plugin does; joining the IPC namespace alone shares no files). None when no tmpfs can
    be mounted here: each container then has its own."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    rc = _libc.mount(
        b"shm", os.fsencode(path), b"tmpfs", _MS_NOSUID_NODEV_NOEXEC, b"mode=1777,size=65536k"
    )
    if rc != 0:
        log.warning("no pod /dev/shm at %s: %s", path, os.strerror(ctypes.get_errno()))
        with contextlib.suppress(OSError):
            path.rmdir()
        return None
    return str(path)


def _remove_shm(path: Path) -> None:
    if os.path.ismount(path):
        _libc.umount2(os.fsencode(path), _MNT_DETACH)
    with contextlib.suppress(OSError):
        path.rmdir()


def _unmount_all(directory: Path) -> None:
    for point in mounts_under(directory):
        _libc.umount2(os.fsencode(point), _MNT_DETACH)


def _own_empty_dir(root: Path) -> None:
    """``root`` as an empty directory of ours, mode 0700: made, or emptied of what an earlier
    server left (its pods' /dev/shm mounts detached first). One that exists must be a real
    directory owned by us: the root may be on a shared tmpfs (cli.pick_runtime)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        if not own_dir(root):
            raise BackendError(f"{root} is not a directory of ours") from None
        _unmount_all(root)
        for entry in os.scandir(root):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        os.chmod(root, 0o700)


def _remove_dir(root: Path) -> None:
    """``root`` and everything in it, mounts detached first (at close: nothing is left).
    Only a real directory of ours, as :func:`_own_empty_dir` demands: mounts are found by the
    resolved path, so a symlink must not lead the detaching anywhere else, and a directory
    that start refused is not ours to remove."""
    if not own_dir(root):
        return
    with contextlib.suppress(OSError):
        _unmount_all(root)
    shutil.rmtree(root, ignore_errors=True)


def _unread(fd: int) -> int:
    """Bytes in a FIFO that its reader has not taken yet."""
    try:
        got = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(got, sys.byteorder)


def _start_failure(message: str) -> int | None:
    """The shell's exit code for a command that cannot start (runc's message), else None."""
    text = message.lower()
    if "executable file not found" in text or "no such file or directory" in text:
        return 127
    if "permission denied" in text:
        return 126
    return None


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str] | None) -> bool:
    return all(labels.get(k) == v for k, v in (wanted or {}).items())


class ContainerdImages:
    """containerd's images in the containerd runtime's namespace. They are there or not: this
    runtime does not pull (docs/containerd.md), so a pull of a missing image is ImageNotFound."""

    def __init__(self, runtime: ContainerdRuntime) -> None:
        self.runtime = runtime

    async def _info(self, ref: str) -> ImageInfo | None:
        try:
            config = await self.runtime.image(ref)
        except ImageNotFound:
            return None
        uid, username = config_user(config.user)
        return ImageInfo(config.id, (config.ref,), (), config.size, uid, username)

    async def list_images(self) -> list[ImageInfo]:
        """One item an image id, with every name that points at it."""
        by_id: dict[str, ImageInfo] = {}
        for image in await self.runtime.api.images():
            if image.name.startswith("sha256:"):
                continue  # containerd's id-only records (`ctr images import` makes them)
            with contextlib.suppress(BackendError):  # removed in between, or not an image
                info = await self._info(image.name)
                if info is not None:
                    seen = by_id.get(info.id)
                    tags = (*seen.repo_tags, *info.repo_tags) if seen else info.repo_tags
                    by_id[info.id] = ImageInfo(
                        info.id, tags, (), info.size, info.uid, info.username
                    )
        return list(by_id.values())

    async def image_status(self, ref: str) -> ImageInfo | None:
        if not ref:
            return None
        if ref.startswith("sha256:"):
            return next((i for i in await self.list_images() if i.id == ref), None)
        return await self._info(ref)

    async def pull_image(self, ref: str) -> ImageInfo:
        info = await self.image_status(ref)
        if info is None:
            namespace = self.runtime.api.namespace
            raise ImageNotFound(
                ref,
                f"not in containerd namespace {namespace}, and the containerd runtime does not "
                f"pull (ctr -n {namespace} images pull)",
            )
        return info

    async def remove_image(self, ref: str) -> None:
        info = await self.image_status(ref)
        if info is None:
            return
        for name in info.repo_tags:
            await self.runtime.api.delete_image(name)
            self.runtime.forget_image(name)

    async def fs_usage(self) -> FsUsage:
        images = await self.list_images()
        return FsUsage(str(self.runtime.root), sum(i.size for i in images), 0)

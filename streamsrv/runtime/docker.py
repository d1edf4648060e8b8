"""The Docker engine backend: pods as a pause container plus app containers joining it.

The docker SDK is blocking, so every call runs in a worker thread of the runtime's own bounded
pool (``api_workers`` threads, never the event loop's default executor, so an embedding daemon's
own ``to_thread`` calls and ours do not wait on each other); the event loop never waits on the
engine. Every failure of a runtime call is a :class:`~streamsrv.errors.BackendError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import socket
import struct
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import docker
import docker.errors
import docker.transport.unixconn
import docker.types
import docker.utils
import requests

from ..pods import (
    LABEL_CONTAINER_NAME,
    LABEL_LOG_PATH,
    LABEL_POD_UID,
    LABEL_TYPE,
    PID_CONTAINER,
    PID_NODE,
    PID_POD,
    TYPE_CONTAINER,
    TYPE_SANDBOX,
    ContainerSpec,
    ContainerState,
    InvalidPod,
    PodSpec,
    SandboxState,
    pod_from_labels,
)
from ..protocol import crilog
from ..protocol.dockermux import STDERR, STDOUT, Demuxer
from ..protocol.resize import TerminalSize
from .base import (
    BackendError,
    ContainerNotFound,
    EngineUnavailable,
    Flag,
    ImageNotFound,
    LogFile,
    StdIO,
    check_container,
    connect_first,
    kill_tree,
    loopback_sockets,
    sockets_in_netns,
    wait_event,
)
from .cni import CniNetwork
from .volumes import VolumeHost

log = logging.getLogger(__name__)


class _UnixConnection(docker.transport.unixconn.UnixHTTPConnection):
    """The SDK's unix-socket connection, but a failed connect closes its socket (the SDK's
    leaves it to the collector: with the engine down, every API call would hold a descriptor
    for a while and warn)."""

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_socket)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _UnixPool(docker.transport.unixconn.UnixHTTPConnectionPool):
    def _new_conn(self) -> Any:
        timeout: Any = self.timeout
        return _UnixConnection(self.base_url, self.socket_path, timeout)


def _close_failed_connects(api: docker.APIClient) -> None:
    """Make ``api`` (ours only: nothing process-wide changes) use :class:`_UnixConnection`."""
    adapter = getattr(api, "_custom_adapter", None)
    if not isinstance(adapter, docker.transport.unixconn.UnixHTTPAdapter):
        return

    def get_connection(url: Any, proxies: Any = None) -> Any:
        with adapter.pools.lock:
            pool = adapter.pools.get(url)
            if pool is None:
                pool = _UnixPool(
                    url, adapter.socket_path, adapter.timeout, maxsize=adapter.max_pool_size
                )
                adapter.pools[url] = pool
        return pool

    adapter.get_connection = get_connection  # type: ignore[method-assign]
    adapter.pools.clear()  # the version probe's pool goes; new ones are ours


T = TypeVar("T")

DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.9"
LOCAL_PAUSE_IMAGE = "streamsrv/pause:local"
FIRST_SIZE_WAIT = 1.0  # seconds a tty session waits for the client's first size
#: The engine API that takes an exec's first terminal size with its start (``ConsoleSize``).
CONSOLE_SIZE_API = "1.42"
#: Older engines size an exec's terminal only once its process runs, which a program that
#: asks at once (``stty size``) loses to: there a tty exec runs as ``/bin/sh -c SIZED cmd...``
#: when the container has ``/bin/sh``, which sizes the terminal and then becomes ``cmd``.
SIZED = 'stty rows {rows} cols {cols} 2>/dev/null; exec "$@"'
SHELL = "/bin/sh"
START_WAIT_POLLS = 40  # x 50 ms: how long a cancelled exec's start may take to show
INSPECT_CACHE_SIZE = 4096  # container inspections kept for pod lookups
ENGINE_JSON_MAX = 1 << 20  # bytes of a JSON answer read on our own connection (_engine_json)
#: Bytes of a container listing's answer: about 1.5 KiB per container with a pod's labels,
#: so some 20 000 containers.
ENGINE_LIST_MAX = 32 << 20
LOG_DRAIN_WAIT = 5.0  # seconds stop_container waits for the log file to have all the output
LOG_REMOVE_WAIT = 1.0  # seconds remove_container waits for it (stop waited already)
LOG_RETRY = (0.1, 5.0)  # first and longest wait before a log follower tries the engine again
LOG_CATCHUP_TAIL = 1000  # messages a stopped container's last read asks for beyond the file's
#: A log follower that resumes asks the engine for the output since this long before the
#: last line its file holds, and skips as many lines as its file has since then: the engine's
#: order (that of the file) is not quite the order of its timestamps between stdout and
#: stderr. Lines more than LOG_DISORDER apart are taken to be in order.
LOG_OVERLAP = 1_000_000_000  # ns
LOG_DISORDER = 5_000_000_000  # ns


def _parse_time(value: str | None) -> datetime | None:
    """Docker's RFC 3339 times with nanoseconds; the zero time means 'never'."""
    if not value or value.startswith("0001-01-01"):
        return None
    head, _, frac = value.rstrip("Z").partition(".")
    micro = (frac[:6] if frac else "0").ljust(6, "0")
    try:
        return datetime.fromisoformat(f"{head}.{micro}").replace(tzinfo=UTC)
    except ValueError:
        return None


class DockerRuntime:
    """Pods on a Docker engine (``DOCKER_HOST`` honoured)."""

    name = "docker"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        pause_image: str = DEFAULT_PAUSE_IMAGE,
        timeout: int = 120,
        api_workers: int = 16,
        exec_journal: Path | None = None,
        volumes: VolumeHost | None = None,
        network: CniNetwork | None = None,
    ) -> None:
        """``exec_journal``: a directory where every live exec leaves its id, so that the
        next server finds and kills what a killed one left running (:meth:`recover`).

        ``volumes``: where pods' emptyDirs live (without it, a pod with volumes is refused).
        ``network``: the CNI network manager for pods that are not ``hostNetwork`` (without
        it, or with no CNI config, such a pod has loopback only).
        """
        self._journal = ExecJournal(exec_journal) if exec_journal is not None else None
        self._volumes = volumes
        self._network = network
        self._pod_ips: dict[str, str | None] = {}  # sandbox id -> its CNI address
        kwargs: dict[str, Any] = dict(docker.utils.kwargs_from_env())
        if base_url:
            kwargs["base_url"] = base_url
        self._endpoint = str(kwargs.get("base_url") or "unix:///var/run/docker.sock")
        with self._engine_errors():  # the SDK asks the engine for its API version here
            self.api = docker.APIClient(timeout=timeout, **kwargs)
        self._timeout: float = timeout  # seconds an engine call may take
        _close_failed_connects(self.api)
        self._local = self._endpoint.startswith("unix://")
        self.pause_image = pause_image
        self._pause_resolved: str | None = None
        # container id -> (its listing's State and Status, its inspection); see _inspect_all
        self._inspected: dict[str, tuple[tuple[Any, Any], dict[str, Any]]] = {}
        self._pool = ThreadPoolExecutor(api_workers, thread_name_prefix="streamsrv-docker")
        # containers this runtime made and has not started yet: (log path, tty)
        self._created: dict[str, tuple[str, bool]] = {}
        self._log_followers: dict[str, asyncio.Task[None]] = {}  # container id -> its follower
        self._shells: dict[str, bool] = {}  # container id -> whether it has SHELL
        self.console_size = docker.utils.version_gte(self.api.api_version, CONSOLE_SIZE_API)

    async def _thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in the runtime's own thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    @contextlib.contextmanager
    def _engine_errors(self) -> Iterator[None]:
        """Every failure of the engine or the SDK inside becomes a BackendError.

        ContainerNotFound for a 404, the engine's own explanation for another API error, and
        the endpoint's name when the engine cannot be reached. A call site that gives some
        error a meaning of its own (an image not found, a container already gone) catches it
        inside this block.
        """
        try:
            yield
        except BackendError:
            raise
        except docker.errors.NotFound as exc:
            raise ContainerNotFound(str(exc.explanation or exc)) from exc
        except docker.errors.APIError as exc:
            raise BackendError(str(exc.explanation or exc)) from exc
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            if _unreachable(exc):
                raise self._unavailable(exc) from exc
            raise BackendError(f"docker engine at {self._endpoint}: {exc}") from exc

    def _unavailable(self, exc: BaseException) -> EngineUnavailable:
        return EngineUnavailable(f"the docker engine at {self._endpoint} is unavailable: {exc}")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """An engine API call in the runtime's pool; every failure is a BackendError."""
        with self._engine_errors():
            return await self._thread(fn, *args, **kwargs)

    async def ping(self) -> None:
        await self._call(self.api.ping)

    async def version(self) -> str:
        info = await self._call(self.api.version)
        return str(info.get("Version", "?"))

    async def close(self) -> None:
        """Stop following logs (a later server resumes them, :meth:`resume_logs`), close."""
        for container_id in list(self._log_followers):
            await self._stop_follower(container_id)
        await self._thread(self.api.close)
        self._pool.shutdown(wait=False)

    # ----------------------------------------------------------------------------- images

    async def _image_present(self, image: str) -> bool:
        with self._engine_errors():
            try:
                await self._thread(self.api.inspect_image, image)
            except docker.errors.ImageNotFound:
                return False
        return True

    async def ensure_image(self, image: str) -> bool:
        if await self._image_present(image):
            return False
        repo, tag = docker.utils.parse_repository_tag(image)
        with self._engine_errors():
            try:
                await self._thread(self.api.pull, repo, tag=tag or "latest")
            except docker.errors.APIError as exc:
                detail = f"not present and the pull failed: {exc.explanation}"
                raise ImageNotFound(image, detail) from exc
        if not await self._image_present(image):
            raise ImageNotFound(image, "not present after pull")
        return True

    async def resolve_pause_image(self) -> str:
        """The configured pause image, or the locally built one when no registry answers."""
        if self._pause_resolved:
            return self._pause_resolved
        try:
            await self.ensure_image(self.pause_image)
            self._pause_resolved = self.pause_image
        except ImageNotFound as exc:
            if self.pause_image == DEFAULT_PAUSE_IMAGE and await self._image_present(
                LOCAL_PAUSE_IMAGE
            ):
                log.info("%s; using the locally built %s", exc, LOCAL_PAUSE_IMAGE)
                self._pause_resolved = LOCAL_PAUSE_IMAGE
            else:
                raise
        return self._pause_resolved

    # ----------------------------------------------------------------------------- sandboxes

    async def run_pod_sandbox(self, pod: PodSpec) -> str:
        """The pause container, its volumes made first and its network (CNI) added after it
        starts; on any failure everything made so far is undone (no container, no lease)."""
        if pod.volumes and self._volumes is None:
            raise InvalidPod(
                pod.name, [("spec.volumes", "Forbidden: this runtime has no volume directory")]
            )
        image = await self.resolve_pause_image()
        host_config = self.api.create_host_config(
            network_mode="host" if pod.host_network else "none",
            ipc_mode="host" if pod.host_ipc else "shareable",
            pid_mode="host" if pod.host_pid else None,
            init=False,
        )
        if self._volumes is not None:
            await self._thread(self._volumes.prepare, pod)
        sandbox_id: str | None = None
        try:
            created = await self._call(
                self.api.create_container,
                image=image,
                name=f"k8s_POD_{pod.name}_{pod.namespace}_{pod.uid}_{pod.attempt}",
                labels=pod.sandbox_labels(),
                hostname=None if pod.host_network else pod.name[:63],
                host_config=host_config,
            )
            sandbox_id = str(created["Id"])
            await self._call(self.api.start, sandbox_id)
            if not pod.host_network:
                await self._add_network(sandbox_id, pod)
        except BaseException:
            await asyncio.shield(self._undo_sandbox(sandbox_id, pod.uid))
            raise
        return sandbox_id

    async def _add_network(self, sandbox_id: str, pod: PodSpec) -> None:
        """CNI ADD on the pause container's network namespace (the kubelet's SetUpPod)."""
        if self._network is None:
            return
        if not self._local:
            log.warning(
                "pod %s/%s: no CNI: the engine is not on this host", pod.namespace, pod.name
            )
            return
        info = await self._inspect(sandbox_id)
        pid = int(info.get("State", {}).get("Pid") or 0)
        if pid <= 0:
            raise BackendError(f"pod sandbox {sandbox_id[:12]} has no process to network")
        attachment = await self._network.add(
            sandbox_id,
            f"/proc/{pid}/ns/net",
            pod_name=pod.name,
            pod_namespace=pod.namespace,
            pod_uid=pod.uid,
        )
        if attachment is not None:
            self._pod_ips[sandbox_id] = attachment.ips[0] if attachment.ips else None

    async def _undo_sandbox(self, sandbox_id: str | None, uid: str) -> None:
        with contextlib.suppress(BackendError):
            if sandbox_id is not None:
                await self._remove_network(sandbox_id)
                await self._remove(sandbox_id)
        if self._volumes is not None:
            await self._thread(self._volumes.remove, uid)

    async def _remove_network(self, sandbox_id: str, info: dict[str, Any] | None = None) -> None:
        """CNI DEL (the kubelet's TearDownPod), into the pause container's namespace while it
        runs; once it does not, with no namespace (a recorded ``/proc/PID`` may be another
        process's by now): the plugins then release what they hold, such as the address."""
        self._pod_ips.pop(sandbox_id, None)
        if self._network is None:
            return
        try:
            if self._network.attachment(sandbox_id) is None:
                return
        except BackendError as exc:  # the pod must stay deletable all the same
            log.warning(
                "pod sandbox %s: no CNI DEL, its address may stay leased: %s", sandbox_id[:12], exc
            )
            return
        if info is None:
            with contextlib.suppress(ContainerNotFound):
                info = await self._inspect(sandbox_id)
        state = (info or {}).get("State", {})
        pid = int(state.get("Pid") or 0) if state.get("Running") else 0
        await self._network.delete(sandbox_id, netns=f"/proc/{pid}/ns/net" if pid > 0 else "")

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        await self._remove_network(sandbox_id)
        await self._call(self.api.stop, sandbox_id, timeout=10)

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        info: dict[str, Any] | None = None
        with contextlib.suppress(ContainerNotFound):
            info = await self._inspect(sandbox_id)
        await self._remove_network(sandbox_id, info)
        await self._remove(sandbox_id)
        uid = ((info or {}).get("Config", {}).get("Labels") or {}).get(LABEL_POD_UID)
        if uid and self._volumes is not None:
            await self._thread(self._volumes.remove, uid)

    def pod_ip(self, sandbox_id: str) -> str | None:
        """The pod's CNI address, from memory or from the network manager's record (an
        unreadable record costs that pod its address in listings, not the listing)."""
        if sandbox_id not in self._pod_ips:
            try:
                attachment = self._network.attachment(sandbox_id) if self._network else None
            except BackendError as exc:
                log.warning("pod sandbox %s: %s", sandbox_id[:12], exc)
                attachment = None
            self._pod_ips[sandbox_id] = (
                attachment.ips[0] if attachment is not None and attachment.ips else None
            )
        return self._pod_ips[sandbox_id]

    async def _remove(self, container_id: str) -> None:
        self._inspected.pop(container_id, None)
        self._shells.pop(container_id, None)
        with self._engine_errors(), contextlib.suppress(docker.errors.NotFound):
            await self._thread(self.api.remove_container, container_id, v=True, force=True)

    async def _list(self, kind: str, labels: Mapping[str, str] | None) -> list[dict[str, Any]]:
        """The engine's listing of our containers of ``kind`` with these labels, stopped ones
        too (each CRI list and pod lookup makes one: on our own connection, as
        :meth:`_engine_json` says why)."""
        selector = [f"{LABEL_TYPE}={kind}"] + [f"{k}={v}" for k, v in (labels or {}).items()]
        query = urllib.parse.urlencode({"all": "1", "filters": json.dumps({"label": selector})})
        found = await self._engine_json("GET", f"/containers/json?{query}", limit=ENGINE_LIST_MAX)
        if not isinstance(found, list):
            raise BackendError(f"docker listed containers as {type(found).__name__}, not a list")
        return found

    async def _inspect(self, container_id: str) -> dict[str, Any]:
        """The engine's inspection of a container (ContainerNotFound once it is gone)."""
        return await self._inspect_object("containers", container_id)

    async def _inspect_exec(self, exec_id: str) -> dict[str, Any]:
        """The engine's inspection of an exec (running, exit code, pid)."""
        return await self._inspect_object("exec", exec_id)

    async def _inspect_object(self, kind: str, object_id: str) -> dict[str, Any]:
        info = await self._engine_json("GET", f"{_at(kind, object_id)}/json")
        if not isinstance(info, dict):
            raise BackendError(f"docker inspected {object_id[:12]} as {type(info).__name__}")
        return info

    async def _resize(self, what: str, object_id: str, height: int, width: int) -> None:
        """Resize the terminal of an exec (``what`` "exec") or a container ("containers")."""
        query = urllib.parse.urlencode({"h": height, "w": width})
        await self._engine_answer("POST", f"{_at(what, object_id)}/resize?{query}", ok=(200, 201))

    async def _inspect_all(self, summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Inspect listed containers, reusing an inspection while the listing shows no change.

        Every pod lookup (each kubectl exec makes two) lists the pod's sandbox and containers
        and needs each one's inspection (exit code, start and finish times): for a
        three-container pod, 1.5-1.9 ms with the four inspections against 1.0 ms without
        (docs/benchmarks.md, "the Docker runtime's listings"). The listing's State and Status
        ("Up 2 minutes", "Exited (3) 5 seconds ago") change whenever a container starts,
        stops or ages, so an inspection is reused only while both read the same.
        """

        async def one(summary: dict[str, Any]) -> dict[str, Any] | None:
            cid = summary["Id"]
            seen = (summary.get("State"), summary.get("Status"))
            cached = self._inspected.get(cid)
            if cached is not None and cached[0] == seen:
                return cached[1]
            try:
                info = await self._inspect(cid)
            except ContainerNotFound:
                self._inspected.pop(cid, None)
                return None  # removed between list and inspect
            self._inspected[cid] = (seen, info)
            if len(self._inspected) > INSPECT_CACHE_SIZE:
                del self._inspected[next(iter(self._inspected))]  # the oldest
            return info

        results = await asyncio.gather(*(one(c) for c in summaries))
        return [r for r in results if r is not None]

    async def list_pod_sandboxes(
        self, labels: Mapping[str, str] | None = None
    ) -> list[SandboxState]:
        summaries = await self._list(TYPE_SANDBOX, labels)
        out: list[SandboxState] = []
        for info in await self._inspect_all(summaries):
            try:
                pod = pod_from_labels(info["Config"]["Labels"])
            except (KeyError, ValueError) as exc:
                log.warning("sandbox %s has unreadable labels: %s", info["Id"][:12], exc)
                continue
            state = info.get("State", {})
            networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
            ip = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
            ip = self.pod_ip(info["Id"]) or ip
            if pod.host_network:
                ip = "127.0.0.1"
            created = _parse_time(info.get("Created")) or datetime.now(UTC)
            out.append(SandboxState(info["Id"], pod, bool(state.get("Running")), created, ip))
        out.sort(key=lambda s: (s.pod.namespace, s.pod.name))
        return out

    # ----------------------------------------------------------------------------- containers

    async def create_container(
        self, sandbox_id: str, pod: PodSpec, container: ContainerSpec
    ) -> str:
        check_container(pod, container)
        joined = f"container:{sandbox_id}"
        # The network always joins the sandbox (which has the host's for hostNetwork); IPC
        # too, except the host's, which is not a shareable IPC namespace Docker can join.
        pid_mode = {PID_POD: joined, PID_NODE: "host", PID_CONTAINER: None}[container.pid_namespace]
        ipc_mode = "host" if pod.host_ipc else joined
        mounts = []
        if container.volume_mounts:
            if self._volumes is None:
                raise InvalidPod(
                    pod.name, [("spec.volumes", "Forbidden: this runtime has no volume directory")]
                )
            for mount in container.volume_mounts:
                source = await self._thread(self._volumes.mount_source, pod, container, mount)
                mounts.append(
                    docker.types.Mount(
                        mount.mount_path, str(source), type="bind", read_only=mount.read_only
                    )
                )
        host_config = self.api.create_host_config(
            network_mode=joined, ipc_mode=ipc_mode, pid_mode=pid_mode, mounts=mounts or None
        )
        args: Any = list(container.args) or None  # the stubs want one, the SDK takes None
        config = self.api.create_container_config(
            image=container.image,
            entrypoint=list(container.command) or None,
            command=args,
            environment=[f"{k}={v}" for k, v in container.env] or None,
            working_dir=container.working_dir,
            tty=container.tty,
            stdin_open=container.stdin,
            labels=pod.container_labels(container),
            host_config=host_config,
        )
        # The SDK sets StdinOnce for every container with stdin; the engine then closes its
        # stdin when the first attached client's input ends. Only stdinOnce asks for that.
        config["StdinOnce"] = container.stdin and container.stdin_once
        created = await self._call(
            self.api.create_container_from_config,
            config,
            f"k8s_{container.name}_{pod.name}_{pod.namespace}_{pod.uid}_{container.attempt}",
        )
        container_id = str(created["Id"])
        self._created[container_id] = (container.log_path, container.tty)
        return container_id

    async def start_container(self, container_id: str) -> None:
        """Start it; with a log path, its log file is opened first (a file that cannot be
        opened fails the start) and followed from then on (:meth:`_follow_log`)."""
        known = self._created.pop(container_id, None)
        if known is None:  # made by an earlier server
            info = await self._inspect(container_id)
            labels = info.get("Config", {}).get("Labels") or {}
            known = (str(labels.get(LABEL_LOG_PATH, "")), bool(info.get("Config", {}).get("Tty")))
        path, tty = known
        logfile: LogFile | None = None
        if path and container_id not in self._log_followers:
            logfile = await LogFile.open_async(path, self._pool)
        try:
            await self._call(self.api.start, container_id)
        except BaseException:
            if logfile is not None:
                logfile.close()
            raise
        if logfile is not None:
            self._start_follower(container_id, logfile, tty)

    async def stop_container(self, container_id: str, grace_period: float) -> None:
        await self._call(self.api.stop, container_id, timeout=int(grace_period))
        # Its log file has all the output once stop returns (the follower ends right after
        # the engine's log stream does), bounded: a stop never waits long on a log.
        await self._log_drained(container_id, LOG_DRAIN_WAIT)

    async def remove_container(self, container_id: str) -> None:
        self._created.pop(container_id, None)
        await self._log_drained(container_id, LOG_REMOVE_WAIT)
        try:
            await self._remove(container_id)
        finally:
            await self._stop_follower(container_id)

    async def list_containers(
        self, labels: Mapping[str, str] | None = None
    ) -> list[ContainerState]:
        summaries = await self._list(TYPE_CONTAINER, labels)
        out = []
        for info in await self._inspect_all(summaries):
            state = info.get("State", {})
            status = str(state.get("Status", "unknown"))
            kind = {"running": "running", "created": "created", "exited": "exited"}.get(
                status, "exited" if status == "dead" else "unknown"
            )
            out.append(
                ContainerState(
                    id=info["Id"],
                    name=info["Config"]["Labels"].get(LABEL_CONTAINER_NAME, ""),
                    image=info["Config"].get("Image", ""),
                    image_id=f"docker-pullable://{info.get('Image', '')}",
                    state=kind,
                    exit_code=state.get("ExitCode") if kind == "exited" else None,
                    started_at=_parse_time(state.get("StartedAt")),
                    finished_at=_parse_time(state.get("FinishedAt")),
                    reason="OOMKilled" if state.get("OOMKilled") else None,
                    labels=dict(info["Config"]["Labels"]),
                    log_path=str(info["Config"]["Labels"].get(LABEL_LOG_PATH, "")),
                )
            )
        return out

    # ----------------------------------------------------------------------------- log files

    def _start_follower(self, container_id: str, logfile: LogFile, tty: bool) -> None:
        task = asyncio.create_task(
            self._follow_log(container_id, logfile, tty), name=f"log {container_id[:12]}"
        )
        self._log_followers[container_id] = task
        task.add_done_callback(lambda t: self._follower_done(container_id, t))

    def _follower_done(self, container_id: str, task: asyncio.Task[None]) -> None:
        if self._log_followers.get(container_id) is task:
            del self._log_followers[container_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("container %s: following its log failed: %r", container_id[:12], exc)

    async def _log_drained(self, container_id: str, seconds: float) -> None:
        """Wait at most ``seconds`` for the container's log follower to finish."""
        task = self._log_followers.get(container_id)
        if task is not None:
            await asyncio.wait({task}, timeout=seconds)

    async def _stop_follower(self, container_id: str) -> None:
        task = self._log_followers.pop(container_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def resume_logs(self) -> int:
        """Follow again the log of every container with a log path that runs (a previous
        server followed it), or that ended after its log file was last complete: each goes
        on after the last line its file has, with no line twice. How many were resumed."""
        resumed = 0
        for summary in await self._list(TYPE_CONTAINER, None):
            container_id = summary["Id"]
            path = (summary.get("Labels") or {}).get(LABEL_LOG_PATH)
            if not path or container_id in self._log_followers:
                continue
            if summary.get("State") in ("created", "removing"):
                continue  # never started (start_container opens its log), or going
            try:
                info = await self._inspect(container_id)
                if not info.get("State", {}).get("Running"):
                    finished = _parse_ns(info.get("State", {}).get("FinishedAt"))
                    if finished is None or not await self._thread(_stale, path, finished):
                        continue
                logfile = await LogFile.open_async(path, self._pool)
            except BackendError as exc:  # removed meanwhile; a directory that is gone
                log.warning("container %s: log not resumed: %s", container_id[:12], exc)
                continue
            self._start_follower(container_id, logfile, bool(info.get("Config", {}).get("Tty")))
            resumed += 1
        if resumed:
            log.info("resumed following the logs of %d containers", resumed)
        return resumed

    async def _follow_log(self, container_id: str, logfile: LogFile, tty: bool) -> None:
        """Append the container's output to its log file until it has all of it.

        Follows the engine's log stream (``timestamps=1``: every message carries its time,
        which its lines keep) while the container runs. That stream ends when the container
        does, but not always with its last messages (Docker 20.10 closes it with the log
        driver, before it has read them all: 13 of 40 containers that ended with
        ``printf partial`` lost that line). So once the container is seen stopped, when the
        engine has all its output, one more read (:meth:`_catch_up`) writes what the file
        lacks. A stream that breaks while the container runs (an engine restart) is followed
        again, from what the file holds; an engine that does not answer is asked again after
        a wait. Cancelled by ``close``; ends when the container is removed.
        """
        delay = LOG_RETRY[0]
        short = False  # the last pass ended within a second: the next one waits first
        try:
            while True:
                try:
                    info = await self._inspect(container_id)
                except ContainerNotFound:
                    return
                except BackendError as exc:
                    log.debug("container %s: log: %s", container_id[:12], exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, LOG_RETRY[1])
                    continue
                running = bool(info.get("State", {}).get("Running"))
                if running and short:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, LOG_RETRY[1])
                created = _parse_ns(info.get("Created")) or 0
                began = time.monotonic()
                try:
                    if running:
                        since, skip = await self._resume_point(logfile, created)
                        await self._log_pass(container_id, logfile, tty, since, skip, follow=True)
                    else:
                        await self._catch_up(container_id, logfile, tty, created)
                except ContainerNotFound:
                    return
                except (BackendError, OSError) as exc:
                    log.debug("container %s: log stream broke: %s", container_id[:12], exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, LOG_RETRY[1])
                    continue
                if not running:
                    break  # read after it stopped: the file has all its output
                short = time.monotonic() - began < 1.0
                if not short:
                    delay = LOG_RETRY[0]
            # complete: a file touched after the container finished needs no catching up
            with contextlib.suppress(OSError):
                os.utime(logfile.fd)
        finally:
            logfile.close()

    async def _resume_point(self, logfile: LogFile, created: int) -> tuple[int, int]:
        """:func:`resume_point` in a worker, on a descriptor of its own: a follower cancelled
        meanwhile closes the file's, whose number the worker must not use after that."""
        fd = os.dup(logfile.fd)
        work = asyncio.ensure_future(self._thread(_resume_point_closing, fd, created))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # Cancelled (the container removed, the server closing): the worker still reads
            # on its descriptor; wait for it to close that, so nothing of the log stays open
            # once the follower has ended (a CI run saw it still open just after).
            with contextlib.suppress(Exception):
                await work
            raise

    async def _catch_up(self, container_id: str, logfile: LogFile, tty: bool, created: int) -> None:
        """Write what the file lacks of a stopped container's output.

        Asked as the last ``tail`` messages first (the engine reads those from the end of its
        log, where a ``since`` makes it decode all of it): when they reach back beyond
        ``since`` (by more than :data:`LOG_DISORDER`) or are the whole log, the same request
        is read again and its messages since then written; else the whole log since then.
        """
        since, skip = await self._resume_point(logfile, created)
        tail = skip + LOG_CATCHUP_TAIL
        stream = await self._log_stream(container_id, since, follow=False, tail=tail)
        count, first = 0, None
        try:
            reader = DockerLogReader(tty)
            while True:
                data = await stream.read()
                for _, ns, _, end in reader.feed(data) if data else reader.close():
                    if end:
                        count += 1
                        first = ns if first is None else first
                if not data:
                    break
        finally:
            stream.close()
        covers = count < tail or (first is not None and first < since - LOG_DISORDER)
        log.debug(
            "container %s: log catch-up: %s",
            container_id[:12],
            f"the last {tail} messages" if covers else "all messages since the file's last",
        )
        await self._log_pass(
            container_id, logfile, tty, since, skip, follow=False, tail=tail if covers else None
        )

    async def _log_stream(
        self, container_id: str, since: int, *, follow: bool, tail: int | None = None
    ) -> _EngineStream:
        """The engine's log of the container with timestamps: since ``since`` (ns), or its
        last ``tail`` messages (then all of them: ``since`` is not sent, the reader drops
        what is older)."""
        seconds, frac = divmod(since if tail is None else 0, 1_000_000_000)
        query = {
            "follow": int(follow),
            "stdout": 1,
            "stderr": 1,
            "timestamps": 1,
            "since": f"{seconds}.{frac:09d}",
            "tail": "all" if tail is None else str(tail),
        }
        path = f"{_at('containers', container_id)}/logs?{urllib.parse.urlencode(query)}"
        # HTTP/1.0: the engine sends the body as it is, no chunked encoding, and closes.
        return await self._engine_stream(self._request("GET", path, http="1.0"), (200,))

    async def _log_pass(
        self,
        container_id: str,
        logfile: LogFile,
        tty: bool,
        since: int,
        skip: int,
        *,
        follow: bool,
        tail: int | None = None,
    ) -> None:
        """Write the lines of one log request's messages since ``since``, less the first
        ``skip`` (the file has them), until the engine ends it. One read's worth at a time."""
        stream = await self._log_stream(container_id, since, follow=follow, tail=tail)
        try:
            reader = DockerLogReader(tty)
            writer = crilog.CriLogWriter()
            while True:
                data = await stream.read()
                out = _cri_lines(reader.feed(data) if data else reader.close(), writer, since)
                if skip and out:
                    out, skip = _drop_lines(out, skip)
                if out:
                    logfile.write(out)
                if not data:
                    return
        finally:
            stream.close()

    # ----------------------------------------------------------------------------- streaming

    async def _hijack(self, path: str, body: dict[str, Any] | None = None) -> _EngineStream:
        """POST ``path`` with ``Upgrade: tcp`` and return the raw connection after the 101.

        Done on our own connection rather than the SDK's ``socket=True``: the SDK reads the
        response headers through a buffered reader, and output that arrives with them
        (``echo hello`` does) would be lost when it hands over the raw socket.
        """
        request = self._request("POST", path, body or {}, upgrade=True)
        return await self._engine_stream(request, (101, 200))

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        http: str = "1.1",
        upgrade: bool = False,
    ) -> bytes:
        """A request for our own connection to the engine: ``path`` under the API version,
        ``body`` as JSON; the connection upgraded to the raw stream, else closed after."""
        lines = [f"{method} /v{self.api.api_version}{path} HTTP/{http}", "Host: docker"]
        lines += ["Connection: Upgrade", "Upgrade: tcp"] if upgrade else ["Connection: close"]
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        return "\r\n".join([*lines, "", ""]).encode() + payload

    async def _engine_stream(self, request: bytes, ok: tuple[int, ...]) -> _EngineStream:
        """Send ``request`` on a connection of our own and read the answer's head; a status
        not in ``ok`` raises (ContainerNotFound for 404, else BackendError)."""
        url = urllib.parse.urlsplit(self._endpoint)
        if url.scheme in ("unix", "http+unix"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = url.path
        elif url.scheme in ("tcp", "http"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (url.hostname, url.port or 2375)
        else:
            raise BackendError(f"streaming over {url.scheme}:// Docker endpoints is not supported")
        stream = _EngineStream(sock)
        try:
            try:
                await stream.loop.sock_connect(sock, address)
            except OSError as exc:
                raise self._unavailable(exc) from exc
            try:
                await stream.write(request)
                raw = await stream.read_head()
            except ConnectionError as exc:  # reset, or closed with no answer: an engine going
                raise self._unavailable(exc) from exc  # away (the SDK's ConnectionError too)
            try:
                status = int(raw.split(b" ", 2)[1])
            except (ValueError, IndexError):
                raise BackendError(f"docker answered with no HTTP status: {raw[:80]!r}") from None
            if status not in ok:
                rest = await asyncio.wait_for(stream.read(), 5)
                message = rest.decode(errors="replace").strip()
                with contextlib.suppress(ValueError):
                    message = json.loads(message.splitlines()[-1]).get("message", message)
                if status == 404:
                    raise ContainerNotFound(message)
                raise BackendError(f"docker answered {status}: {message}")
        except BaseException:
            stream.close()
            raise
        return stream

    async def _engine_answer(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        ok: tuple[int, ...] = (200,),
        limit: int = ENGINE_JSON_MAX,
    ) -> bytes:
        """One API call on a connection of our own from the event loop, its answer's body.

        For the calls made often: each exec's create and exit code, each pod lookup's and CRI
        list's listings and inspections, each resize. The SDK's call in a thread took 1.8-2.6
        ms p50 and 1.5-1.9 ms of our CPU per exec create and inspect, this 0.4-0.6 ms and
        0.2-0.3 ms (docs/benchmarks.md, "the Docker runtime's exec calls"). HTTP/1.0, so the
        engine answers without chunks: the body is its Content-Length's bytes, or without
        one what comes until the engine closes. Errors as :meth:`_engine_stream`'s; an
        engine that cannot be reached is EngineUnavailable; a body over ``limit`` bytes, or
        none in the runtime's timeout, is a BackendError.
        """
        request = self._request(method, path, body, http="1.0")
        try:
            async with asyncio.timeout(self._timeout):
                stream = await self._engine_stream(request, ok)
                try:
                    length = _content_length(stream.head)
                    answer = bytearray()
                    while length is None or len(answer) < length:
                        if not (chunk := await stream.read()):
                            break
                        answer += chunk
                        if len(answer) > limit:
                            raise BackendError(f"docker's answer to {path} is too large")
                finally:
                    stream.close()
        except TimeoutError as exc:
            raise BackendError(
                f"docker engine at {self._endpoint}: no answer to {path} in {self._timeout} s"
            ) from exc
        except OSError as exc:
            if _unreachable(exc):
                raise self._unavailable(exc) from exc
            raise BackendError(f"docker engine at {self._endpoint}: {exc}") from exc
        return bytes(answer)

    async def _engine_json(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        ok: int = 200,
        limit: int = ENGINE_JSON_MAX,
    ) -> Any:
        """:meth:`_engine_answer`'s body as JSON (one that is not is a BackendError)."""
        answer = await self._engine_answer(method, path, body, (ok,), limit)
        try:
            return json.loads(answer)
        except ValueError as exc:
            raise BackendError(f"docker answered {path} with no JSON: {answer[:200]!r}") from exc

    async def exec(self, container_id: str, cmd: Sequence[str], io: StdIO, *, tty: bool) -> int:
        argv = list(cmd)
        console: TerminalSize | None = None  # the size the engine starts the process at
        if tty and io.resize is not None:
            # The process starts at the client's first size (kubectl sends it right after
            # connecting), waited for at most FIRST_SIZE_WAIT: a program that asks for its
            # size at once (`stty size`) must not see 0x0.
            shell = None
            if not self.console_size and argv and not argv[0].startswith("-"):
                shell = asyncio.ensure_future(self._has_shell(container_id))
            try:
                size = await io.resize.first(FIRST_SIZE_WAIT)
                if size is not None and self.console_size:
                    console = size
                elif size is not None and shell is not None and await shell:
                    # The size goes through exec_resize too (as without it), in case the
                    # container has no stty.
                    rows, cols = size.height, size.width
                    argv = [SHELL, "-c", SIZED.format(rows=rows, cols=cols), "sh", *argv]
            finally:
                if shell is not None and not shell.done():
                    shell.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await shell
        created = await self._engine_json(
            "POST",
            f"{_at('containers', container_id)}/exec",
            {
                "User": "",
                "Privileged": False,
                "Tty": tty,
                "AttachStdin": io.stdin is not None,
                "AttachStdout": io.stdout is not None,
                "AttachStderr": io.stderr is not None,
                "Cmd": argv,
            },
            ok=201,
        )
        exec_id = str(created["Id"])
        if self._journal is not None:
            self._journal.add(exec_id)
        try:
            return await self._run_exec(exec_id, io, tty, console)
        finally:
            if self._journal is not None:
                self._journal.remove(exec_id)

    async def _has_shell(self, container_id: str) -> bool:
        """Whether the container has :data:`SHELL` (asked once per container: a stat of the
        path through the engine, no process)."""
        known = self._shells.get(container_id)
        if known is None:
            query = urllib.parse.urlencode({"path": SHELL})
            request = self._request("HEAD", f"{_at('containers', container_id)}/archive?{query}")
            try:
                (await self._engine_stream(request, (200,))).close()
                known = True
            except ContainerNotFound:  # 404: no such path (or no such container)
                known = False
            except (BackendError, OSError, ValueError, IndexError):
                return False  # the engine cannot tell now: no shell to trust, asked again later
            if len(self._shells) >= INSPECT_CACHE_SIZE:
                self._shells.clear()
            self._shells[container_id] = known
        return known

    async def _run_exec(
        self, exec_id: str, io: StdIO, tty: bool, console: TerminalSize | None = None
    ) -> int:
        """Start the exec and pump it; ``console``: its terminal's first size, which the
        engine applies before the process starts (``ConsoleSize``)."""
        stream: _EngineStream | None = None
        body: dict[str, Any] = {"Detach": False, "Tty": tty}
        if console is not None:
            body["ConsoleSize"] = [console.height, console.width]
        try:
            stream = await self._hijack(f"{_at('exec', exec_id)}/start", body)
            if console is not None and io.resize is not None:
                io.resize.delivered(console)
            await self._pump(
                stream,
                io,
                tty,
                functools.partial(self._resize, "exec", exec_id),
                eof=True,
                sized=console is not None,
            )
            return await self._exit_code(exec_id)
        except BaseException:
            # However the session ends before the process does (cancelled, a write to a client
            # that is gone failed, the engine connection broke), the process must not outlive
            # it: `cat /dev/zero` would go on writing into a closed pipe forever. That includes
            # a session cancelled while the start request was on its way: the engine starts
            # the process all the same (soak/kills.py found those).
            if stream is not None:
                stream.close()
            await asyncio.shield(self._kill_exec(exec_id, starting=stream is None))
            raise
        finally:
            if stream is not None:
                stream.close()

    async def attach(self, container_id: str, io: StdIO, *, tty: bool) -> None:
        """Attach to the container's stdio until it ends.

        The end of the client's input goes on to the engine only for a container made with
        stdinOnce (read from the engine, whichever server made it). The engine then closes
        the container's stdin (without a tty; the attach goes on until the container ends) or
        ends this attach (with a tty: its stdin stays open). Without stdinOnce the end goes
        nowhere and stdin stays open for the next client. A client that leaves closes our
        connection, which the engine takes for the same end.
        """
        info = await self._inspect(container_id)
        stopped = _stopped(container_id, info)
        if stopped is not None:  # the engine's attach would wait for output forever
            raise BackendError(f"cannot attach: {stopped}")
        once = bool((info.get("Config") or {}).get("StdinOnce"))
        query = urllib.parse.urlencode(
            {
                "stream": 1,
                "stdin": int(io.stdin is not None),
                "stdout": int(io.stdout is not None),
                "stderr": int(io.stderr is not None),
            }
        )
        stream = await self._hijack(f"{_at('containers', container_id)}/attach?{query}")
        try:
            await self._pump(
                stream,
                io,
                tty,
                functools.partial(self._resize, "containers", container_id),
                eof="half-close" if once else False,
            )
        finally:
            stream.close()

    async def _pump(
        self,
        stream: _EngineStream,
        io: StdIO,
        tty: bool,
        resize: Callable[[int, int], Awaitable[None]],
        *,
        eof: bool | Literal["half-close"],
        sized: bool = False,
    ) -> None:
        """Copy stdin in, output out, resizes through, until the engine ends the output.

        ``eof``: what the end of stdin does. True (an exec): it goes on to the process, as
        EOT on a terminal (it has no half-close), else as a half-close. ``"half-close"`` (an
        attach to a stdinOnce container): a half-close, and the engine decides. False: nothing.
        ``sized``: the terminal had its first size when the process started.
        """

        first = Flag()  # the terminal has its first size (or never will get one)
        if sized or not (tty and io.resize is not None):
            first.set()

        async def stdin() -> None:
            assert io.stdin is not None
            # Hold input until the first size is applied: a shell that reads `stty size`
            # before it would see a 0x0 terminal (kubectl sends the size right after connecting).
            await wait_event(first, FIRST_SIZE_WAIT)
            while data := await io.stdin.read():
                await stream.write(data)
            if eof is True and tty:
                await stream.write(b"\x04")  # a terminal has no half-close: EOT at a line start
            elif eof:
                stream.write_eof()

        async def apply(size: TerminalSize) -> None:
            try:
                if size.width and size.height:
                    with contextlib.suppress(BackendError, ContainerNotFound):
                        await resize(size.height, size.width)
            finally:
                first.set()

        helpers: list[asyncio.Task[None]] = []
        if io.stdin is not None:
            helpers.append(asyncio.create_task(stdin()))
        # a follower, not a task iterating the sizes: no task while none is being applied
        sizes = io.resize.follow(apply) if io.resize is not None and tty else None
        try:
            demux = None if tty else Demuxer()
            sinks = {STDOUT: io.stdout, STDERR: io.stderr}
            while data := await stream.read():
                if demux is None:
                    if io.stdout is not None:
                        await io.stdout.write(data)
                    continue
                for number, piece in demux.feed(data):
                    sink = sinks.get(number)
                    if sink is not None and piece:
                        await sink.write(piece)
        finally:
            if sizes is not None and (applying := sizes.stop()) is not None:
                helpers.append(applying)
            for t in helpers:
                t.cancel()
            for t in helpers:
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                    await t

    async def container_stopped(self, container_id: str) -> str | None:
        try:
            info = await self._inspect(container_id)
        except ContainerNotFound:
            return f"container {container_id[:12]} was removed"
        return _stopped(container_id, info)

    async def sandbox_ready(self, sandbox_id: str) -> bool:
        try:
            info = await self._inspect(sandbox_id)
        except ContainerNotFound:
            return False
        return bool(info.get("State", {}).get("Running"))

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        info = await self._inspect(sandbox_id)
        state = info.get("State", {})
        if not state.get("Running"):
            raise BackendError(f"pod sandbox {sandbox_id[:12]} is not running")
        if info.get("HostConfig", {}).get("NetworkMode") == "host":
            return await connect_first(loopback_sockets(), port)
        if not self._local:
            raise BackendError("port-forward needs the Docker engine on this host")
        # Only the sockets are made in the pod's namespace (a thread enters it for that); the
        # connect itself runs on the event loop and holds no thread (a listener that never
        # accepts cannot tie up a pool).
        try:
            candidates = await self._thread(sockets_in_netns, int(state["Pid"]))
        except OSError as exc:
            raise BackendError(f"pod sandbox {sandbox_id[:12]}: {exc}") from exc
        return await connect_first(candidates, port)

    async def _exit_code(self, exec_id: str) -> int:
        """The exit code once the process has really exited (never 0 for 'still running')."""
        delay = 0.002
        while True:
            info = await self._inspect_exec(exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def recover(self) -> int:
        """Kill the execs a previous server left running (it was killed before it could), as
        its journal lists them; returns how many were still running. Also release what pods
        removed behind our back (or by a killed server) still hold (:meth:`sweep`), and go on
        writing the log files of containers that have one (:meth:`resume_logs`)."""
        await self.sweep()
        try:
            await self.resume_logs()
        except BackendError as exc:  # the logs wait for the next start; the server serves
            log.warning("container logs not resumed: %s", exc)
        if self._journal is None:
            return 0
        killed = 0
        for exec_id in self._journal.entries():
            if await self._kill_exec(exec_id, "its server is gone"):
                killed += 1
            self._journal.remove(exec_id)
        return killed

    async def sweep(self) -> tuple[list[str], list[str]]:
        """CNI DEL for every network record whose pause container is gone (and CNI CHECK for
        those that run: a failure is logged), and remove the emptyDirs of every pod uid that
        has no sandbox; (sandbox ids, pod uids) released."""
        sandboxes = await self._list(TYPE_SANDBOX, None)
        live_ids = {s["Id"] for s in sandboxes}
        running = {s["Id"] for s in sandboxes if s.get("State") == "running"}
        released: list[str] = []
        if self._network is not None:
            for sandbox_id in self._network.recorded():
                if sandbox_id not in live_ids:
                    try:
                        await self._network.delete(sandbox_id, netns="")
                        released.append(sandbox_id)
                    except BackendError as exc:
                        log.warning("CNI DEL of gone sandbox %s: %s", sandbox_id[:12], exc)
                elif sandbox_id in running:
                    try:
                        await self._network.check(sandbox_id)
                    except BackendError as exc:
                        log.warning("pod sandbox %s: CNI CHECK failed: %s", sandbox_id[:12], exc)
        for sandbox_id in list(self._pod_ips):
            if sandbox_id not in live_ids:
                del self._pod_ips[sandbox_id]
        removed: list[str] = []
        if self._volumes is not None:
            uids = {(s.get("Labels") or {}).get(LABEL_POD_UID, "") for s in sandboxes}
            removed = await self._thread(self._volumes.sweep, uids)
        if released or removed:
            log.info(
                "released the network of %d and the volumes of %d pods whose sandbox is gone",
                len(released),
                len(removed),
            )
        return released, removed

    async def _kill_exec(
        self, exec_id: str, why: str = "its session ended first", *, starting: bool = False
    ) -> bool:
        """Stop an exec whose client went away: Docker has no API for it, so signal its pid.

        The pid from the exec's inspection is the host's; the process and everything it started are
        killed. Only possible where the engine runs on this host (a unix socket).
        """
        try:
            info = await self._inspect_exec(exec_id)
            # An exec that has just started shows as running with no pid yet (the engine
            # marks it running before the process exists), and one whose start request is on
            # its way shows as neither running nor exited: wait (bounded) for a pid to kill.
            # (soak/kills.py: 4 of 7 `yes` execs killed early were left running, pid 0.)
            for _ in range(START_WAIT_POLLS):
                if info.get("ExitCode") is not None or int(info.get("Pid") or 0) > 0:
                    break
                if not info.get("Running") and not starting:
                    break
                await asyncio.sleep(0.05)
                info = await self._inspect_exec(exec_id)
        except BackendError:
            return False
        pid = int(info.get("Pid") or 0)
        if not info.get("Running") or pid <= 0:
            return False
        if not self._local:
            log.warning("exec %s (pid %d) left running: the engine is not local", exec_id, pid)
            return False
        await self._thread(kill_tree, pid)
        log.info("killed exec %s (pid %d): %s", exec_id[:12], pid, why)
        return True


def _at(kind: str, object_id: str) -> str:
    """The engine API path of one container (``kind`` "containers") or exec ("exec"), its id
    quoted: an id from a client names that object and no other path."""
    return f"/{kind}/{urllib.parse.quote(object_id, safe='')}"


def _content_length(head: bytes) -> int | None:
    """A response head's Content-Length, None without one."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return int(value.strip())
            except ValueError:
                raise BackendError(f"docker sent a bad Content-Length: {value!r}") from None
    return None


def _stopped(container_id: str, info: dict[str, Any]) -> str | None:
    """None while the inspected container runs, else what became of it."""
    state = info.get("State", {})
    if state.get("Running"):  # a paused container still runs: its execs wait with it
        return None
    labels = info.get("Config", {}).get("Labels") or {}
    name = labels.get(LABEL_CONTAINER_NAME) or container_id[:12]
    reason = " (OOMKilled)" if state.get("OOMKilled") else ""
    return f'container "{name}" exited with code {state.get("ExitCode")}{reason}'


def _parse_ns(value: str | None) -> int | None:
    """Docker's RFC 3339 time in nanoseconds since the epoch; None for the zero time."""
    if not value or value.startswith("0001-01-01"):
        return None
    try:
        return crilog.parse_timestamp(value)
    except crilog.CriLogError:
        return None


def _stale(path: str, finished: int) -> bool:
    """Whether the log file at ``path`` was last written (or marked complete) before the
    container finished: it may lack the end of the output."""
    try:
        return os.stat(path).st_mtime_ns < finished
    except OSError:
        return False  # gone: nothing to resume into


# Docker's log stream --------------------------------------------------------------------------

#: Content bytes of a log message the engine cut from a longer line: its copier's buffer
#: (json-file's and the default: 16 KiB). With a tty (no frames) a message that is not a
#: line ends exactly there, or at the end of the stream.
DOCKER_PIECE = 16 * 1024
_DOCKER_TIMESTAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")
_HEAD_MAX = 64  # bytes a message's timestamp and its space may take
_FRAME = struct.Struct(">BxxxL")
_STREAM_NAMES = {STDOUT: crilog.STDOUT, STDERR: crilog.STDERR}

#: (stream, timestamp in ns, content, whether the message ends here)
LogPiece = tuple[str, int, bytes, bool]


class DockerLogReader:
    """The engine's log stream (``/containers/ID/logs?timestamps=1``), cut into its log
    messages, sans-IO: ``feed`` gives ``(stream, ns, content, end)`` pieces.

    Each message is ``<RFC3339Nano timestamp> <content>``: a line with its newline, or a
    piece of a longer line without (the engine cuts lines at its buffer, 16 KiB, and every
    piece of one line has the same timestamp), or what was left without a newline when the
    container ended. Without a tty every message is one frame (8-byte header, as attach's).
    With a tty the messages follow each other raw: one ends after its newline, or after
    :data:`DOCKER_PIECE` content bytes when a timestamp follows, or at the stream's end.

    Content is handed on as it comes (a piece never waits for the rest of its message); at
    most a frame header, a timestamp or the look-ahead for one (64 bytes) is held.
    """

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self._buf = b""
        self._stream = crilog.STDOUT
        self._remaining = 0  # frames: payload bytes of the current message still to come
        self._in_message = False  # its timestamp has been read
        self._ns = 0
        self._taken = 0  # tty: content bytes of the current message so far
        self._limited = True  # tty: the current message may end at DOCKER_PIECE

    def feed(self, data: bytes) -> list[LogPiece]:
        if self._buf:
            data, self._buf = self._buf + data, b""
        out: list[LogPiece] = []
        if self.tty:
            self._feed_raw(data, out)
        else:
            self._feed_frames(data, out)
        return out

    def close(self) -> list[LogPiece]:
        """The stream ended: the end of a message cut short (a tty's last one)."""
        out: list[LogPiece] = []
        if self.tty and (self._in_message or self._buf):
            if not self._in_message:  # only part of a timestamp came: keep it as content
                self._ns = time.time_ns()
            out.append((self._stream, self._ns, self._buf, True))
        self._buf = b""
        self._in_message = False
        return out

    def _head(self, data: bytes, pos: int, limit: int, *, final: bool) -> int | None:
        """Read a message's timestamp from ``data[pos:limit]``: the position after its space,
        or None when more bytes are needed (``final``: none will come for this message)."""
        space = data.find(b" ", pos, min(limit, pos + _HEAD_MAX))
        self._in_message = True
        if space < 0:
            if not final and limit - pos < _HEAD_MAX:
                self._in_message = False
                return None
            self._ns = time.time_ns()  # no timestamp where one must be: all is content
            return pos
        try:
            self._ns = crilog.parse_timestamp(data[pos:space])
        except crilog.CriLogError:
            self._ns = time.time_ns()
            return pos
        return space + 1

    def _feed_frames(self, data: bytes, out: list[LogPiece]) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._remaining == 0:
                if end - pos < _FRAME.size:
                    self._buf = data[pos:]
                    return
                number, length = _FRAME.unpack_from(data, pos)
                name = _STREAM_NAMES.get(number)
                if name is None:
                    raise BackendError(f"docker sent a log frame of unknown stream {number}")
                pos += _FRAME.size
                self._stream, self._remaining, self._in_message = name, length, False
                if length == 0:
                    continue
            if not self._in_message:
                limit = min(end, pos + self._remaining)
                start = self._head(data, pos, limit, final=limit == pos + self._remaining)
                if start is None:
                    self._buf = data[pos:]  # the frame's start, read again with what follows
                    return
                self._remaining -= start - pos
                pos = start
            take = min(self._remaining, end - pos)
            self._remaining -= take
            done = self._remaining == 0
            if take or done:
                out.append((self._stream, self._ns, data[pos : pos + take], done))
            pos += take
            if done:
                self._in_message = False

    def _feed_raw(self, data: bytes, out: list[LogPiece]) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if not self._in_message:
                start = self._head(data, pos, end, final=False)
                if start is None:
                    self._buf = data[pos:]
                    return
                pos, self._taken, self._limited = start, 0, True
                continue
            if self._limited and self._taken == DOCKER_PIECE:
                # a message cut from a long line ends here if a timestamp follows
                if end - pos < len("2016-10-06T00:17:09.669794202Z "):
                    self._buf = data[pos:]
                    return
                if _DOCKER_TIMESTAMP.match(data, pos):
                    out.append((self._stream, self._ns, b"", True))
                    self._in_message = False
                    continue
                self._limited = False  # another engine's piece size: read on to a newline
            stop = end
            if self._limited:
                stop = min(end, pos + DOCKER_PIECE - self._taken)
            newline = data.find(b"\n", pos, stop)
            if newline >= 0:
                out.append((self._stream, self._ns, data[pos : newline + 1], True))
                self._in_message = False
                pos = newline + 1
                continue
            out.append((self._stream, self._ns, data[pos:stop], False))
            self._taken += stop - pos
            pos = stop


def _cri_lines(pieces: list[LogPiece], writer: crilog.CriLogWriter, since: int = 0) -> bytes:
    """Log file lines for the engine's messages from ``since`` on (as the engine's own
    ``since``: none older): each keeps its message's timestamp, and a message without a
    newline (a piece of a long line, or the last output) is a ``P`` line, so every message
    makes the same lines whenever it is read again."""
    out: list[bytes] = []
    for stream, ns, content, end in pieces:
        if ns < since:
            continue
        if content:
            out.append(writer.feed(stream, content, ns))
        if end:
            out.append(writer.flush(stream, ns))
    return b"".join(out)


def _drop_lines(data: bytes, count: int) -> tuple[bytes, int]:
    """``data`` without its first ``count`` lines; how many are still to drop."""
    pos = 0
    while count:
        newline = data.find(b"\n", pos)
        if newline < 0:
            return b"", count
        pos = newline + 1
        count -= 1
    return data[pos:], 0


def _line_heads(fd: int, size: int, block: int = 1 << 16) -> Iterator[bytes]:
    """The first bytes (up to a timestamp's worth) of every line of the file, last first."""
    pos = size
    carry = b""  # the start of a line whose beginning is in the block before
    while pos > 0:
        n = min(block, pos)
        pos -= n
        data = os.pread(fd, n, pos) + carry
        lines = data.split(b"\n")
        carry = lines[0][:_HEAD_MAX]  # only its head is ever needed
        for line in reversed(lines[1:]):
            if line:
                yield line[:_HEAD_MAX]
    if carry:
        yield carry


def _head_ns(head: bytes) -> int | None:
    space = head.find(b" ")
    if space < 0:
        return None
    try:
        return crilog.parse_timestamp(head[:space])
    except crilog.CriLogError:
        return None


def resume_point(fd: int, created: int) -> tuple[int, int]:
    """Where a log follower goes on in the log file open at ``fd`` (blocking: a thread):
    ``(since, skip)``, the engine's output to ask for (ns since the epoch) and how many of
    the lines it makes the file has already.

    A line cut short (a server killed while writing it) is cut off. ``since`` is
    :data:`LOG_OVERLAP` before the last line's time (but not before ``created``, the
    container's: older lines are another container's), and ``skip`` counts the file's lines
    from then on: the engine gives its messages in the order the file has them, which
    between streams is not quite the order of their timestamps.
    """
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        last = -1
        for pos in range(size - 1, -1, -(1 << 16)):
            start = max(0, pos - (1 << 16) + 1)
            chunk = os.pread(fd, pos - start + 1, start)
            found = chunk.rfind(b"\n")
            if found >= 0:
                last = start + found
                break
        size = last + 1
        os.ftruncate(fd, size)
    heads = _line_heads(fd, size)
    newest = next((ns for ns in map(_head_ns, heads) if ns is not None), None)
    if newest is None or newest < created:
        return created, 0
    since = max(newest - LOG_OVERLAP, created)
    skip = 1  # the newest line itself
    for ns in map(_head_ns, heads):
        if ns is None:
            continue
        if ns >= since:
            skip += 1
        elif ns < since - LOG_DISORDER:
            break
    return since, skip


def _resume_point_closing(fd: int, created: int) -> tuple[int, int]:
    try:
        return resume_point(fd, created)
    finally:
        os.close(fd)


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the engine could not be reached at all."""
    seen: BaseException | None = exc
    for _ in range(8):  # the SDK wraps requests, which wraps urllib3, which wraps the OSError
        if seen is None:
            return False
        if isinstance(seen, requests.ConnectionError | ConnectionError | FileNotFoundError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class ExecJournal:
    """One empty file per live exec, named by its exec id: what a killed server left running.

    Files, not one log: the directory holds only the execs running now (it never grows with
    the number of execs served), and a create or unlink is one system call on the event loop.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def add(self, exec_id: str) -> None:
        if _EXEC_ID.fullmatch(exec_id):
            with contextlib.suppress(OSError):
                os.close(os.open(self.directory / exec_id, os.O_CREAT | os.O_WRONLY, 0o600))

    def remove(self, exec_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.directory / exec_id).unlink()

    def entries(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.directory) if _EXEC_ID.fullmatch(n)]
        except OSError:
            return []


_EXEC_ID = re.compile(r"[0-9a-f]{64}")


class _EngineStream:
    """A hijacked engine connection, used through the event loop's socket calls.

    No asyncio transport and StreamReader: those copy every byte of output twice more (into
    the reader's buffer and out of it again), and buffer what the socket could not take of a
    write. ``sock_recv`` hands over the bytes the kernel gave; ``sock_sendall`` waits until a
    write is out, which is the back-pressure stdin needs.
    """

    READ = 1 << 18  # bytes per read: larger reads, fewer messages to the client

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self._pending = b""  # output that came in with the response head
        self.head = b""  # the response head, once read

    async def read_head(self) -> bytes:
        """The HTTP response head; what follows it is kept for :meth:`read`. A connection
        that ends before the head is a ConnectionError, as a reset one is."""
        buf = b""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > 65536:
                raise BackendError("docker sent an oversized response head")
            chunk = await self.loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise ConnectionAbortedError("docker closed the connection before answering")
            buf += chunk
        self._pending = buf[end + 4 :]
        self.head = buf[: end + 4]
        return self.head

    async def read(self) -> bytes:
        """The next output bytes; ``b""`` at the end."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        return await self.loop.sock_recv(self.sock, self.READ)

    async def write(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    def write_eof(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

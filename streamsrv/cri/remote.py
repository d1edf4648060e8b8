"""The gateway's runtime when it fronts CRI endpoints (``serve --cri-endpoint``, docs/cri.md).

:class:`CriRuntime` is one endpoint (one node): the pod model's calls become CRI calls as the
kubelet makes them (RunPodSandbox, CreateContainer, StartContainer, ...), and a session's URL
comes from the endpoint's Exec/Attach/PortForward, which the gateway then proxies to. A pod's
manifest rides along as a sandbox annotation, so the gateway shows the pod it was given;
sandboxes someone else made (a kubelet, crictl) are shown from their CRI metadata.

:class:`NodeSet` puts several endpoints behind one runtime: listings are merged, each pod runs
on the node its manifest names (``spec.nodeName``) or on the one with the fewest pods, and
every later call about an object goes to the node that has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from ..errors import BackendError, EngineUnavailable
from ..pods import (
    EMPTY_DIR,
    LABEL_CONTAINER_ATTEMPT,
    LABEL_CONTAINER_NAME,
    ContainerSpec,
    ContainerState,
    InvalidPod,
    PodSpec,
    SandboxState,
    parse_pod,
    pod_filter,
)
from ..requests import AnyRequest, AttachRequest, ExecRequest, PortForwardRequest
from ..runtime.base import ContainerNotFound, ImageNotFound, StdIO
from . import api_pb2 as pb
from .client import CriClient, CriError

log = logging.getLogger(__name__)
_Item = TypeVar("_Item", SandboxState, ContainerState)
_V = TypeVar("_V")

#: The sandbox annotation that carries the manifest the gateway was given.
ANNOTATION_MANIFEST = "io.streamsrv.pod.manifest"

_PID = {"pod": pb.POD, "container": pb.CONTAINER, "node": pb.NODE}
_STATES = {
    pb.CONTAINER_CREATED: "created",
    pb.CONTAINER_RUNNING: "running",
    pb.CONTAINER_EXITED: "exited",
}


#: How many statuses a :class:`StatusCache` keeps at most; past it the oldest go (a node with
#: more objects than that is asked again, as before the cache).
STATUS_CACHE_MAX = 4096


class StatusCache(Generic[_V]):
    """Statuses an object keeps while its listed state does not change (docs/cri.md, "What
    the gateway asks a node").

    Every field the gateway reads from a ContainerStatus is fixed while the container stays in
    one CRI state: a running container's start time, image and log path until it exits, an
    exited one's code, reason and end for good (CRI never starts a container twice: a restart
    is a new container). A sandbox's IP is fixed while it stays ready. So a status is used again
    while ListContainers or ListPodSandbox still shows its object in the state the status was
    read in, and asked for again when that state changes: the kubelet keeps such a cache too
    (its pod cache), so that ``kubectl exec`` costs the node a list, not a status per
    container, as it did here before."""

    def __init__(self, limit: int = STATUS_CACHE_MAX) -> None:
        self.limit = limit
        self._entries: dict[str, tuple[int, _V]] = {}  # id -> (CRI state, value), oldest first

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, oid: object) -> bool:
        return oid in self._entries

    def get(self, oid: str, state: int) -> _V | None:
        entry = self._entries.get(oid)
        return entry[1] if entry is not None and entry[0] == state else None

    def put(self, oid: str, state: int, value: _V) -> None:
        self._entries.pop(oid, None)
        self._entries[oid] = (state, value)
        while len(self._entries) > self.limit:
            del self._entries[next(iter(self._entries))]

    def forget(self, oid: str) -> None:
        self._entries.pop(oid, None)

    def keep_only(self, ids: set[str]) -> None:
        """After a list with no filter: what it did not show is gone."""
        for oid in [o for o in self._entries if o not in ids]:
            del self._entries[oid]


@dataclass(frozen=True)
class _Status:
    """What the gateway reads from a ContainerStatus."""

    state: str
    image: str
    image_id: str
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime | None
    reason: str | None
    log_path: str

    @classmethod
    def of(cls, s: pb.ContainerStatus, listed_image: str) -> _Status:
        state = _STATES.get(s.state, "unknown")
        return cls(
            state=state,
            image=s.image.image or listed_image,
            image_id=s.image_ref,
            exit_code=s.exit_code if state == "exited" else None,
            started_at=_when(s.started_at),
            finished_at=_when(s.finished_at),
            reason=s.reason or None,
            log_path=s.log_path,
        )


#: The states whose status :class:`StatusCache` keeps (an unknown state is asked each time).
_CACHED_CONTAINER_STATES = frozenset(_STATES)


def _when(ns: int) -> datetime | None:
    return datetime.fromtimestamp(ns / 1e9, UTC) if ns > 0 else None


def _failure(exc: CriError, ref: str = "") -> BackendError:
    """A CRI error as the runtime error the gateway knows how to answer."""
    if exc.code == "NOT_FOUND":
        return ContainerNotFound(ref or exc.details)
    if exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return EngineUnavailable(f"CRI endpoint: {exc.details}")
    return BackendError(exc.details or exc.code)


@contextlib.contextmanager
def _errors(ref: str = "") -> Iterator[None]:
    """Every CriError inside becomes the runtime error :func:`_failure` makes of it."""
    try:
        yield
    except CriError as exc:
        raise _failure(exc, ref) from exc


class CriRuntime:
    """One CRI endpoint as a :class:`~streamsrv.runtime.base.Runtime` plus stream URLs."""

    def __init__(self, endpoint: str, node: str = "", *, stream_ssl: ssl.SSLContext | None = None):
        self.endpoint = endpoint
        self.client = CriClient(endpoint)
        self.node = node
        self.name = "cri"
        self.stream_ssl = stream_ssl
        self.container_statuses: StatusCache[_Status] = StatusCache()
        self.sandbox_ips: StatusCache[str] = StatusCache()  # ready sandboxes; "" for no IP

    async def identify(self) -> str:
        """``runtime_name runtime_version`` of the endpoint (and the node name, if unset)."""
        with _errors():
            v = await self.client.version()
        return f"{v.runtime_name} {v.runtime_version}"

    async def close(self) -> None:
        await self.client.close()

    # ------------------------------------------------------------------------------ configs

    @staticmethod
    def sandbox_config(pod: PodSpec) -> pb.PodSandboxConfig:
        pid = pb.NODE if pod.host_pid else pb.POD
        if not pod.host_pid and all(c.pid_namespace == "container" for c in pod.containers):
            pid = pb.CONTAINER
        cfg = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(
                name=pod.name, uid=pod.uid, namespace=pod.namespace, attempt=pod.attempt
            ),
            hostname="" if pod.host_network else pod.name[:63],
            log_directory=pod.log_directory,
            labels={**pod.labels, **pod_filter(pod.namespace, pod.name, pod.uid)},
            annotations={
                **pod.annotations,
                ANNOTATION_MANIFEST: json.dumps(
                    pod.manifest, separators=(",", ":"), sort_keys=True
                ),
            },
        )
        opts = cfg.linux.security_context.namespace_options
        opts.network = pb.NODE if pod.host_network else pb.POD
        opts.pid = pid
        opts.ipc = pb.NODE if pod.host_ipc else pb.POD
        return cfg

    @staticmethod
    def container_config(pod: PodSpec, c: ContainerSpec) -> pb.ContainerConfig:
        mounts = []
        for m in c.volume_mounts:
            volume = pod.volume(m.name)
            if volume is None or volume.kind == EMPTY_DIR or m.sub_path:
                raise InvalidPod(
                    pod.name,
                    [
                        (
                            "spec.volumes",
                            "Forbidden: through a CRI endpoint only hostPath volumes without "
                            "subPath can be mounted",
                        )
                    ],
                )
            mounts.append(
                pb.Mount(container_path=m.mount_path, host_path=volume.path, readonly=m.read_only)
            )
        cfg = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=c.name, attempt=c.attempt),
            image=pb.ImageSpec(image=c.image),
            command=c.command,
            args=c.args,
            working_dir=c.working_dir or "",
            envs=[pb.KeyValue(key=k, value=v.encode()) for k, v in c.env],
            mounts=mounts,
            labels={
                **pod_filter(pod.namespace, pod.name, pod.uid),
                LABEL_CONTAINER_NAME: c.name,
            },
            stdin=c.stdin,
            stdin_once=c.stdin_once,
            tty=c.tty,
        )
        if pod.log_directory and c.log_path:  # the node writes LOG_DIRECTORY/LOG_PATH
            cfg.log_path = os.path.relpath(c.log_path, pod.log_directory)
        opts = cfg.linux.security_context.namespace_options
        opts.network = pb.NODE if pod.host_network else pb.POD
        opts.pid = pb.NODE if pod.host_pid else _PID.get(c.pid_namespace, pb.POD)
        opts.ipc = pb.NODE if pod.host_ipc else pb.POD
        return cfg

    # ------------------------------------------------------------------------------ Runtime

    async def ensure_image(self, image: str) -> bool:
        try:
            status = await self.client.image_status(image)
            if status.HasField("image"):
                return False
            await self.client.pull_image(image)
        except CriError as exc:
            if exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                raise _failure(exc) from exc
            raise ImageNotFound(image, exc.details) from exc
        return True

    async def run_pod_sandbox(self, pod: PodSpec) -> str:
        with _errors():
            return await self.client.run_pod_sandbox(self.sandbox_config(pod))

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        with _errors(sandbox_id):
            await self.client.stop_pod_sandbox(sandbox_id)

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        with _errors(sandbox_id):
            await self.client.remove_pod_sandbox(sandbox_id)
        self.sandbox_ips.forget(sandbox_id)

    async def create_container(
        self, sandbox_id: str, pod: PodSpec, container: ContainerSpec
    ) -> str:
        cfg = self.container_config(pod, container)
        with _errors():
            return await self.client.create_container(sandbox_id, cfg, self.sandbox_config(pod))

    async def start_container(self, container_id: str) -> None:
        with _errors(container_id):
            await self.client.start_container(container_id)

    async def stop_container(self, container_id: str, grace_period: float) -> None:
        with _errors(container_id):
            await self.client.stop_container(container_id, int(grace_period))

    async def remove_container(self, container_id: str) -> None:
        with _errors(container_id):
            await self.client.remove_container(container_id)
        self.container_statuses.forget(container_id)

    def _pod(self, sandbox: pb.PodSandbox, containers: Sequence[pb.Container]) -> PodSpec:
        meta = sandbox.metadata
        raw = sandbox.annotations.get(ANNOTATION_MANIFEST)
        if raw:
            try:
                return parse_pod(json.loads(raw), uid=meta.uid)
            except (ValueError, InvalidPod) as exc:
                log.warning("sandbox %s: unreadable manifest annotation: %s", sandbox.id[:12], exc)
        mine = [c for c in containers if c.pod_sandbox_id == sandbox.id]
        return PodSpec(
            name=meta.name,
            namespace=meta.namespace,
            uid=meta.uid,
            attempt=meta.attempt,
            containers=tuple(ContainerSpec(c.metadata.name, c.image.image) for c in mine),
            labels=dict(sandbox.labels),
            annotations=dict(sandbox.annotations),
        )

    async def list_pod_sandboxes(
        self, labels: Mapping[str, str] | None = None
    ) -> list[SandboxState]:
        with _errors():
            sandboxes = await self.client.list_pod_sandbox(
                pb.PodSandboxFilter(label_selector=labels or {})
            )
            containers: list[pb.Container] = []
            if any(ANNOTATION_MANIFEST not in s.annotations for s in sandboxes):
                containers = await self.client.list_containers()
            ips = await self._sandbox_ips(sandboxes)
        if not labels:
            self.sandbox_ips.keep_only({s.id for s in sandboxes})
        return [
            SandboxState(
                id=s.id,
                pod=self._pod(s, containers),
                ready=s.state == pb.SANDBOX_READY,
                created_at=_when(s.created_at) or datetime.now(UTC),
                ip=ip,
                node=self.node,
            )
            for s, ip in zip(sandboxes, ips, strict=True)
        ]

    async def _sandbox_ips(self, sandboxes: Sequence[pb.PodSandbox]) -> list[str | None]:
        """Each sandbox's IP (None: it has none, or its status could not be read): a ready
        one's from the cache once read, the rest asked."""
        ips: list[str | None] = []
        ask: list[int] = []
        for i, s in enumerate(sandboxes):
            known = self.sandbox_ips.get(s.id, s.state) if s.state == pb.SANDBOX_READY else None
            ips.append(known or None)
            if known is None:
                ask.append(i)
        statuses = await asyncio.gather(
            *(self.client.pod_sandbox_status(sandboxes[i].id) for i in ask),
            return_exceptions=True,
        )
        for i, st in zip(ask, statuses, strict=True):
            if isinstance(st, pb.PodSandboxStatusResponse):
                ips[i] = st.status.network.ip or None
                if st.status.state == pb.SANDBOX_READY:
                    self.sandbox_ips.put(sandboxes[i].id, pb.SANDBOX_READY, st.status.network.ip)
        return ips

    async def list_containers(
        self, labels: Mapping[str, str] | None = None
    ) -> list[ContainerState]:
        with _errors():
            found = await self.client.list_containers(
                pb.ContainerFilter(label_selector=labels or {})
            )
            statuses = await self._container_statuses(found)
        if not labels:
            self.container_statuses.keep_only({c.id for c in found})
        return [
            ContainerState(
                id=c.id,
                name=c.metadata.name,
                image=st.image,
                image_id=st.image_id,
                state=st.state,
                exit_code=st.exit_code,
                started_at=st.started_at,
                finished_at=st.finished_at,
                reason=st.reason,
                runtime="cri",
                labels=dict(c.labels)
                | (
                    {LABEL_CONTAINER_ATTEMPT: str(c.metadata.attempt)} if c.metadata.attempt else {}
                ),
                log_path=st.log_path,
            )
            for c, st in zip(found, statuses, strict=True)
            if st is not None  # removed in between
        ]

    async def _container_statuses(self, found: Sequence[pb.Container]) -> list[_Status | None]:
        """Each listed container's status: from the cache while it is in the state it was read
        in, else asked (None: it was removed in between)."""
        out: list[_Status | None] = [self.container_statuses.get(c.id, c.state) for c in found]
        ask = [i for i, st in enumerate(out) if st is None]
        answers = await asyncio.gather(
            *(self.client.container_status(found[i].id) for i in ask), return_exceptions=True
        )
        for i, answer in zip(ask, answers, strict=True):
            if isinstance(answer, pb.ContainerStatusResponse):
                st = _Status.of(answer.status, found[i].image.image)
                out[i] = st
                if answer.status.state in _CACHED_CONTAINER_STATES:
                    self.container_statuses.put(found[i].id, answer.status.state, st)
        return out

    # ------------------------------------------------------------------------------ streams

    async def stream_url(self, req: AnyRequest) -> str:
        """The endpoint's one-time URL for ``req`` (its Exec, Attach or PortForward)."""
        with _errors():
            if isinstance(req, ExecRequest):
                return await self.client.exec(
                    pb.ExecRequest(
                        container_id=req.container_id,
                        cmd=req.cmd,
                        tty=req.tty,
                        stdin=req.stdin,
                        stdout=req.stdout,
                        stderr=req.stderr,
                    )
                )
            if isinstance(req, AttachRequest):
                return await self.client.attach(
                    pb.AttachRequest(
                        container_id=req.container_id,
                        tty=req.tty,
                        stdin=req.stdin,
                        stdout=req.stdout,
                        stderr=req.stderr,
                    )
                )
            assert isinstance(req, PortForwardRequest)
            return await self.client.port_forward(req.sandbox_id, req.ports)


class NodeSet:
    """Several CRI endpoints as one runtime; each is a node (``kubectl get pods -o wide``)."""

    name = "cri"

    def __init__(self, nodes: Sequence[CriRuntime]) -> None:
        if not nodes:
            raise ValueError("no CRI endpoint")
        self.nodes = list(nodes)
        self._where: dict[str, CriRuntime] = {}  # sandbox or container id -> its node
        self._lock = asyncio.Lock()

    @property
    def stream_ssl(self) -> ssl.SSLContext | None:
        return self.nodes[0].stream_ssl

    async def close(self) -> None:
        await asyncio.gather(*(n.close() for n in self.nodes))

    async def _node_of(self, oid: str) -> CriRuntime:
        node = self._where.get(oid)
        if node is None:  # not seen yet (made before we started): look
            await self.list_pod_sandboxes()
            await self.list_containers()
            node = self._where.get(oid)
        if node is None:
            raise ContainerNotFound(oid)
        return node

    def _choose(self, pod: PodSpec, counts: Mapping[str, int]) -> CriRuntime:
        wanted = (pod.manifest.get("spec") or {}).get("nodeName")
        if wanted:
            for n in self.nodes:
                if n.node == wanted:
                    return n
            raise InvalidPod(
                pod.name,
                [("spec.nodeName", f'Not found: "{wanted}" (nodes: {", ".join(self.names)})')],
            )
        return min(self.nodes, key=lambda n: counts.get(n.node, 0))

    @property
    def names(self) -> list[str]:
        return [n.node for n in self.nodes]

    async def ensure_image(self, image: str) -> None:
        """Nothing yet: the image is made present on the node the pod goes to."""

    async def run_pod_sandbox(self, pod: PodSpec) -> str:
        counts: dict[str, int] = {}
        for s in await self.list_pod_sandboxes():
            counts[s.node] = counts.get(s.node, 0) + 1
        node = self._choose(pod, counts)
        for image in dict.fromkeys(c.image for c in pod.containers):
            await node.ensure_image(image)
        sandbox_id = await node.run_pod_sandbox(pod)
        self._where[sandbox_id] = node
        return sandbox_id

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        await (await self._node_of(sandbox_id)).stop_pod_sandbox(sandbox_id)

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        await (await self._node_of(sandbox_id)).remove_pod_sandbox(sandbox_id)
        self._where.pop(sandbox_id, None)

    async def create_container(
        self, sandbox_id: str, pod: PodSpec, container: ContainerSpec
    ) -> str:
        node = await self._node_of(sandbox_id)
        cid = await node.create_container(sandbox_id, pod, container)
        self._where[cid] = node
        return cid

    async def start_container(self, container_id: str) -> None:
        await (await self._node_of(container_id)).start_container(container_id)

    async def stop_container(self, container_id: str, grace_period: float) -> None:
        await (await self._node_of(container_id)).stop_container(container_id, grace_period)

    async def remove_container(self, container_id: str) -> None:
        await (await self._node_of(container_id)).remove_container(container_id)
        self._where.pop(container_id, None)

    async def _merged(self, fetch: Callable[[CriRuntime], Awaitable[list[_Item]]]) -> list[_Item]:
        """Every node's answer, each object remembered with the node it is on."""
        found = await asyncio.gather(*(fetch(n) for n in self.nodes))
        out = []
        for node, items in zip(self.nodes, found, strict=True):
            for item in items:
                self._where[item.id] = node
                out.append(item)
        return out

    async def list_pod_sandboxes(
        self, labels: Mapping[str, str] | None = None
    ) -> list[SandboxState]:
        return await self._merged(lambda n: n.list_pod_sandboxes(labels))

    async def list_containers(
        self, labels: Mapping[str, str] | None = None
    ) -> list[ContainerState]:
        return await self._merged(lambda n: n.list_containers(labels))

    async def stream_url(self, req: AnyRequest) -> str:
        oid = req.sandbox_id if isinstance(req, PortForwardRequest) else req.container_id
        return await (await self._node_of(oid)).stream_url(req)

    # The gateway proxies every session to a node's stream server (stream_url); nothing is
    # streamed through this process's own runtime, so these only say so.

    async def exec(self, container_id: str, cmd: Sequence[str], io: StdIO, *, tty: bool) -> int:
        raise BackendError("sessions go through the node's stream server (stream_url)")

    async def attach(self, container_id: str, io: StdIO, *, tty: bool) -> None:
        raise BackendError("sessions go through the node's stream server (stream_url)")

    async def container_stopped(self, container_id: str) -> str | None:
        return None

    async def sandbox_ready(self, sandbox_id: str) -> bool:
        return True

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        raise BackendError("sessions go through the node's stream server (stream_url)")

"""CRI v1 over gRPC: RuntimeService and ImageService on a runtime (docs/cri.md).

The kubelet's view of a container runtime, served from the pod model streamsrv already has:
``RunPodSandbox`` is the runtime's sandbox (the infra container owning the network, IPC and
PID namespaces), ``CreateContainer`` an app container joining them per its
``NamespaceOption``, and ``Exec``/``Attach``/``PortForward`` return one-time URLs of the stream
server running in the same process. What CRI promises beyond what a runtime keeps (configs,
attempts, nanosecond times) is in :mod:`streamsrv.cri.store`.

Errors are status codes as containerd's CRI plugin gives them (NOT_FOUND for an unknown id,
INVALID_ARGUMENT for a config that cannot be run, ...) with a message for a person; nothing a
client sends gets a Python traceback back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from .. import __version__
from ..pods import (
    HOST_PATH,
    ContainerSpec,
    ContainerState,
    InvalidPod,
    PodSpec,
    SandboxState,
    Volume,
    VolumeMount,
)
from ..requests import AttachRequest, ExecRequest, InvalidRequest, Origin, PortForwardRequest
from ..rpc.http2 import Status
from ..runtime.base import (
    BackendError,
    ContainerNotFound,
    EngineUnavailable,
    ImageNotFound,
    StdIO,
    StreamingRuntime,
)
from ..runtime.images import ImageInfo, ImageStore, normalize_ref
from ..server import CacheFull, StreamServer
from . import api_pb2 as pb
from .grpcserver import GrpcServer, Handler, RpcFailure
from .store import ContainerRecord, SandboxRecord, Store

log = logging.getLogger(__name__)

RUNTIME_SERVICE = "runtime.v1.RuntimeService"
IMAGE_SERVICE = "runtime.v1.ImageService"
CRI_API_VERSION = "v1"
#: What ExecSync keeps of stdout and stderr together: the answer must fit the 16 MiB a kubelet
#: (and our client) takes in one message, so 16 MiB less room for the rest of it. More is cut
#: (logged), not a failure; two 16 MiB halves, as first written, made an answer no client
#: could read.
EXEC_SYNC_OUTPUT = (16 << 20) - 4096
#: Names become Docker container names and file names: the kubelet's (DNS-1123) and a bit more.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")


class CriFailure(Exception):
    """A call's answer as a gRPC status."""

    def __init__(self, code: Status, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(what: str, ref: str) -> CriFailure:
    return CriFailure(Status.NOT_FOUND, f'{what} "{ref}" not found')


def invalid(message: str) -> CriFailure:
    return CriFailure(Status.INVALID_ARGUMENT, message)


def _status_of(exc: BaseException) -> CriFailure:
    """A runtime's failure as the status code a CRI client expects."""
    if isinstance(exc, CriFailure):
        return exc
    if isinstance(exc, ContainerNotFound):
        return CriFailure(Status.NOT_FOUND, str(exc))
    if isinstance(exc, ImageNotFound):
        return CriFailure(Status.NOT_FOUND, str(exc))
    if isinstance(exc, (InvalidPod, InvalidRequest)):
        return CriFailure(Status.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, CacheFull):
        return CriFailure(Status.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, EngineUnavailable):
        return CriFailure(Status.UNAVAILABLE, str(exc))
    if isinstance(exc, BackendError):
        return CriFailure(Status.UNKNOWN, str(exc))
    return CriFailure(Status.INTERNAL, f"internal error: {type(exc).__name__}")


def _ns(when: datetime | None) -> int:
    return 0 if when is None else int(when.timestamp() * 1e9)


def _now_ns() -> int:
    return time.time_ns()


def _labels_match(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


#: A record the list calls keep a listing of.
_R = TypeVar("_R", SandboxRecord, ContainerRecord)


def _listing_of(
    listings: dict[str, _Listing],
    records: Mapping[str, _R],
    rec: _R,
    make_item: Callable[[_R], Any],
) -> _Listing:
    """The listing of ``rec``, made by ``make_item`` the first time and again for a record
    with another config object. Once ``listings`` holds twice as many as there are records
    (and 64 more), those of records that are gone are dropped first: bounded by the records,
    without a hook on every drop."""
    listing = listings.get(rec.id)
    if listing is None or listing.config is not rec.config:
        if len(listings) > 2 * len(records) + 64:
            for gone in [k for k in listings if k not in records]:
                del listings[gone]
        item = make_item(rec)
        listing = listings[rec.id] = _Listing(rec.config, dict(item.labels), item)
    return listing


def _sandbox_code(rec: SandboxRecord, state: SandboxState | None) -> pb.PodSandboxState:
    """READY while the runtime says so and StopPodSandbox was not called."""
    ready = state is not None and state.ready and not rec.stopped
    return pb.SANDBOX_READY if ready else pb.SANDBOX_NOTREADY


def _container_code(state: ContainerState | None) -> pb.ContainerState:
    """The runtime's container state as the CRI names it (UNKNOWN when it has none)."""
    if state is None:
        return pb.CONTAINER_UNKNOWN
    return _CONTAINER_STATES.get(state.state, pb.CONTAINER_UNKNOWN)


_NAMESPACE_MODES = {pb.POD: "pod", pb.CONTAINER: "container", pb.NODE: "node"}


class _Captured:
    """ExecSync's stdout and stderr, held within one bound together (:data:`EXEC_SYNC_OUTPUT`)."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.cut = False
        self.stdout = _Sink(self)
        self.stderr = _Sink(self)


class _Sink:
    """One stream of a :class:`_Captured`."""

    def __init__(self, owner: _Captured) -> None:
        self.owner = owner
        self.parts: list[bytes] = []

    async def write(self, data: bytes) -> None:
        owner = self.owner
        if len(data) > owner.left:
            data, owner.cut = data[: owner.left], True
        if data:
            self.parts.append(data)
            owner.left -= len(data)

    def value(self) -> bytes:
        return b"".join(self.parts)


@dataclass
class NetworkStatus:
    """What ``Status`` says of the pod network (the kubelet waits for NetworkReady)."""

    ready: bool = True
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class _Listing:
    """What the list calls need of one record, made once from its config (docs/cri.md, "List
    calls"): its labels, for the selector, and its list item without the state, which each
    call copies and completes. ``config`` is the record's config it was made from: a record
    with another config object gets a new listing."""

    config: bytes
    labels: dict[str, str]
    item: Any  # pb.PodSandbox or pb.Container


#: A runtime's container state, as the CRI names it.
_CONTAINER_STATES: dict[str, pb.ContainerState] = {
    "created": pb.CONTAINER_CREATED,
    "running": pb.CONTAINER_RUNNING,
    "exited": pb.CONTAINER_EXITED,
}


@dataclass
class CriService:
    """Both CRI services on one runtime, its image store and an embedded stream server."""

    runtime: StreamingRuntime
    images: ImageStore
    streams: StreamServer
    store: Store
    network: NetworkStatus = field(default_factory=NetworkStatus)
    supports_mounts: bool = True
    pod_cidr: str = ""
    #: Names being made right now (sandbox: name, namespace, uid, attempt; container: sandbox
    #: id, name, attempt): reserved without holding a lock across the runtime's call, so one
    #: slow create never holds up the others, and two creates of one name cannot both run.
    _making: set[tuple[str, ...]] = field(default_factory=set)
    #: Listings of sandboxes and of containers by record id (:class:`_Listing`).
    _sandbox_listings: dict[str, _Listing] = field(default_factory=dict)
    _container_listings: dict[str, _Listing] = field(default_factory=dict)

    # ------------------------------------------------------------------------------ lookup

    def _sandbox(self, ref: str) -> SandboxRecord:
        oid = self.store.resolve(self.store.sandboxes, ref)
        if oid is None:
            raise not_found("sandbox", ref)
        return self.store.sandboxes[oid]

    def _container(self, ref: str) -> ContainerRecord:
        oid = self.store.resolve(self.store.containers, ref)
        if oid is None:
            raise not_found("container", ref)
        return self.store.containers[oid]

    @staticmethod
    def _sandbox_config(rec: SandboxRecord) -> pb.PodSandboxConfig:
        return pb.PodSandboxConfig.FromString(rec.config)

    @staticmethod
    def _container_config(rec: ContainerRecord) -> pb.ContainerConfig:
        return pb.ContainerConfig.FromString(rec.config)

    async def _sandbox_states(self) -> dict[str, SandboxState]:
        return {s.id: s for s in await self.runtime.list_pod_sandboxes()}

    async def _container_states(self) -> dict[str, ContainerState]:
        return {c.id: c for c in await self.runtime.list_containers()}

    def _pod_spec(self, cfg: pb.PodSandboxConfig) -> PodSpec:
        ns = cfg.linux.security_context.namespace_options
        meta = cfg.metadata
        return PodSpec(
            name=meta.name,
            namespace=meta.namespace,
            uid=meta.uid,
            attempt=meta.attempt,
            containers=(),
            host_network=ns.network == pb.NODE,
            host_pid=ns.pid == pb.NODE,
            host_ipc=ns.ipc == pb.NODE,
            manifest={
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": meta.name, "namespace": meta.namespace},
                "spec": {
                    "containers": [],
                    "hostNetwork": ns.network == pb.NODE,
                    "hostPID": ns.pid == pb.NODE,
                    "hostIPC": ns.ipc == pb.NODE,
                },
            },
        )

    @contextlib.contextmanager
    def _reserved(self, key: tuple[str, str], shown: str, taken: str | None) -> Iterator[None]:
        """Hold ``key`` (a name being made) for the block; ALREADY_EXISTS when ``taken`` (the
        id of the object that has the name) or when another call is making it right now."""
        holder = f'"{taken}"' if taken is not None else None
        if key in self._making:
            holder = "one being made"
        if holder is not None:
            raise CriFailure(Status.ALREADY_EXISTS, f"{shown} is reserved for {holder}")
        self._making.add(key)  # the caller did not await since it looked: nobody got in between
        try:
            yield
        finally:
            self._making.discard(key)

    # ------------------------------------------------------------------------------ runtime

    async def version(self, req: pb.VersionRequest) -> pb.VersionResponse:
        return pb.VersionResponse(
            version="0.1.0",
            runtime_name="streamsrv",
            runtime_version=f"{__version__} ({self.runtime.name})",
            runtime_api_version=CRI_API_VERSION,
        )

    async def status(self, req: pb.StatusRequest) -> pb.StatusResponse:
        runtime_ready, reason, message = True, "", ""
        try:
            await self.runtime.list_pod_sandboxes({"io.streamsrv.cri.ping": "1"})
        except BackendError as exc:
            runtime_ready, reason, message = False, "RuntimeNotReady", str(exc)
        net = self.network
        return pb.StatusResponse(
            status=pb.RuntimeStatus(
                conditions=[
                    pb.RuntimeCondition(
                        type="RuntimeReady", status=runtime_ready, reason=reason, message=message
                    ),
                    pb.RuntimeCondition(
                        type="NetworkReady",
                        status=net.ready,
                        reason=net.reason,
                        message=net.message,
                    ),
                ]
            ),
            info={"runtime": self.runtime.name} if req.verbose else {},
        )

    async def update_runtime_config(
        self, req: pb.UpdateRuntimeConfigRequest
    ) -> pb.UpdateRuntimeConfigResponse:
        self.pod_cidr = req.runtime_config.network_config.pod_cidr
        return pb.UpdateRuntimeConfigResponse()

    # ------------------------------------------------------------------------------ sandboxes

    async def run_pod_sandbox(self, req: pb.RunPodSandboxRequest) -> pb.RunPodSandboxResponse:
        cfg = req.config
        if not req.HasField("config") or not cfg.HasField("metadata"):
            raise invalid("sandbox config must include metadata")
        meta = cfg.metadata
        for what, value in (("name", meta.name), ("namespace", meta.namespace)):
            if not _NAME.fullmatch(value):
                raise invalid(f"sandbox metadata {what} {value!r} is not a valid name")
        if not meta.uid or "/" in meta.uid or len(meta.uid) > 253:
            raise invalid(f"sandbox metadata uid {meta.uid!r} is not valid")
        if req.runtime_handler not in ("", self.runtime.name):
            raise invalid(f'no runtime for "{req.runtime_handler}" is configured')
        ns = cfg.linux.security_context.namespace_options
        if ns.network == pb.CONTAINER or ns.network == pb.TARGET:
            raise invalid("network namespace mode must be POD or NODE")
        if ns.pid == pb.TARGET or ns.ipc not in (pb.POD, pb.NODE):
            raise invalid("sandbox pid namespace must be POD, CONTAINER or NODE; ipc POD or NODE")
        taken = next(
            (
                other.id
                for other in self.store.sandboxes.values()
                if self._sandbox_config(other).metadata == meta
            ),
            None,
        )
        name = f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"
        with self._reserved(("sandbox", name), f'sandbox name "{name}"', taken):
            rec = SandboxRecord("", cfg.SerializeToString(), _now_ns(), req.runtime_handler)
            sandbox_id = await self.runtime.run_pod_sandbox(self._pod_spec(cfg))
            rec.id = sandbox_id
            try:
                self.store.put_sandbox(rec)
            except BaseException:
                await asyncio.shield(self._forget_sandbox(sandbox_id))
                raise
        return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def _forget_sandbox(self, sandbox_id: str) -> None:
        with contextlib.suppress(BackendError):
            await self.runtime.stop_pod_sandbox(sandbox_id)
        with contextlib.suppress(BackendError):
            await self.runtime.remove_pod_sandbox(sandbox_id)

    async def stop_pod_sandbox(self, req: pb.StopPodSandboxRequest) -> pb.StopPodSandboxResponse:
        rec = self._sandbox(req.pod_sandbox_id)
        states = await self._container_states()
        running = [
            c.id
            for c in self.store.containers.values()
            if c.sandbox_id == rec.id and (s := states.get(c.id)) and s.state == "running"
        ]
        await asyncio.gather(*(self._stop(cid, 0) for cid in running))
        with contextlib.suppress(ContainerNotFound):
            await self.runtime.stop_pod_sandbox(rec.id)
        rec.stopped = True
        self.store.put_sandbox(rec)
        return pb.StopPodSandboxResponse()

    async def _stop(self, cid: str, grace: float) -> None:
        with contextlib.suppress(ContainerNotFound):
            await self.runtime.stop_container(cid, grace)

    async def remove_pod_sandbox(
        self, req: pb.RemovePodSandboxRequest
    ) -> pb.RemovePodSandboxResponse:
        oid = self.store.resolve(self.store.sandboxes, req.pod_sandbox_id)
        if oid is None:  # already removed: not an error (CRI: RemovePodSandbox is idempotent)
            return pb.RemovePodSandboxResponse()
        mine = [c.id for c in self.store.containers.values() if c.sandbox_id == oid]
        for cid in mine:
            with contextlib.suppress(ContainerNotFound):
                await self.runtime.remove_container(cid)
            self.store.drop_container(cid)
        with contextlib.suppress(ContainerNotFound):
            await self.runtime.stop_pod_sandbox(oid)
        with contextlib.suppress(ContainerNotFound):
            await self.runtime.remove_pod_sandbox(oid)
        self.store.drop_sandbox(oid)
        return pb.RemovePodSandboxResponse()

    def _sandbox_status(
        self, rec: SandboxRecord, state: SandboxState | None
    ) -> pb.PodSandboxStatus:
        cfg = self._sandbox_config(rec)
        ns = cfg.linux.security_context.namespace_options
        status = pb.PodSandboxStatus(
            id=rec.id,
            metadata=cfg.metadata,
            state=_sandbox_code(rec, state),
            created_at=rec.created_at,
            labels=cfg.labels,
            annotations=cfg.annotations,
            runtime_handler=rec.runtime_handler,
        )
        status.linux.namespaces.options.CopyFrom(ns)
        if state is not None and state.ip and ns.network != pb.NODE:
            status.network.ip = state.ip
        return status

    async def pod_sandbox_status(
        self, req: pb.PodSandboxStatusRequest
    ) -> pb.PodSandboxStatusResponse:
        rec = self._sandbox(req.pod_sandbox_id)
        states = await self._sandbox_states()
        out = pb.PodSandboxStatusResponse(status=self._sandbox_status(rec, states.get(rec.id)))
        if req.verbose:
            out.info["runtime"] = self.runtime.name
        return out

    async def list_pod_sandbox(self, req: pb.ListPodSandboxRequest) -> pb.ListPodSandboxResponse:
        f = req.filter
        states = await self._sandbox_states()
        wanted = None
        if f.id:
            wanted = self.store.resolve(self.store.sandboxes, f.id)
            if wanted is None:
                return pb.ListPodSandboxResponse()
        selector = dict(f.label_selector)
        state_wanted = f.state.state if f.HasField("state") else None
        out = pb.ListPodSandboxResponse()
        for rec in sorted(self.store.sandboxes.values(), key=lambda r: r.created_at):
            if wanted is not None and rec.id != wanted:
                continue
            listing = _listing_of(
                self._sandbox_listings, self.store.sandboxes, rec, self._sandbox_item
            )
            if not _labels_match(listing.labels, selector):
                continue
            code = _sandbox_code(rec, states.get(rec.id))
            if state_wanted is not None and code != state_wanted:
                continue
            item = out.items.add()
            item.CopyFrom(listing.item)
            item.state = code
        return out

    def _sandbox_item(self, rec: SandboxRecord) -> pb.PodSandbox:
        """The sandbox's list item without its state (:class:`_Listing`)."""
        cfg = self._sandbox_config(rec)
        return pb.PodSandbox(
            id=rec.id,
            metadata=cfg.metadata,
            created_at=rec.created_at,
            labels=cfg.labels,
            annotations=cfg.annotations,
            runtime_handler=rec.runtime_handler,
        )

    # ------------------------------------------------------------------------------ containers

    async def create_container(self, req: pb.CreateContainerRequest) -> pb.CreateContainerResponse:
        sandbox = self._sandbox(req.pod_sandbox_id)
        cfg = req.config
        if not req.HasField("config") or not cfg.HasField("metadata"):
            raise invalid("container config must include metadata")
        meta = cfg.metadata
        if not _NAME.fullmatch(meta.name):
            raise invalid(f"container metadata name {meta.name!r} is not a valid name")
        if not cfg.image.image:
            raise invalid("container config must include an image")
        ns = cfg.linux.security_context.namespace_options
        if ns.pid not in _NAMESPACE_MODES:
            raise invalid("container pid namespace mode TARGET is not supported")
        if cfg.mounts and not self.supports_mounts:
            raise invalid(f"runtime {self.runtime.name} cannot mount into a container")
        for m in cfg.mounts:
            if not m.container_path.startswith("/") or not m.host_path.startswith("/"):
                raise invalid(
                    f"mount {m.host_path!r} -> {m.container_path!r}: paths must be absolute"
                )
        taken = next(
            (
                other.id
                for other in self.store.containers.values()
                if other.sandbox_id == sandbox.id and self._container_config(other).metadata == meta
            ),
            None,
        )
        shown = f'container name "{meta.name}" attempt {meta.attempt}'
        # reserved before anything is made (a log directory, a mount's host path): a refused
        # create leaves nothing behind
        with self._reserved(
            ("container", f"{sandbox.id}/{meta.name}/{meta.attempt}"), shown, taken
        ):
            pod, spec, image_ref = await self._container_spec(sandbox, cfg)
            cid = await self.runtime.create_container(sandbox.id, pod, spec)
            rec = ContainerRecord(
                cid, sandbox.id, cfg.SerializeToString(), _now_ns(), spec.log_path, image_ref
            )
            try:
                self.store.put_container(rec)
            except BaseException:
                with contextlib.suppress(BackendError):
                    await asyncio.shield(self.runtime.remove_container(cid))
                raise
        return pb.CreateContainerResponse(container_id=cid)

    async def _container_spec(
        self, sandbox: SandboxRecord, cfg: pb.ContainerConfig
    ) -> tuple[PodSpec, ContainerSpec, str]:
        """What the runtime is given for a validated config (its sandbox's pod with the mounts
        as hostPath volumes, the container), and the image's id; makes the log directory and
        the mounts' missing host paths, as containerd does."""
        meta = cfg.metadata
        ns = cfg.linux.security_context.namespace_options
        image = await self.images.image_status(cfg.image.image)
        if image is None:
            raise CriFailure(
                Status.NOT_FOUND, f'failed to resolve image "{cfg.image.image}": not found'
            )
        scfg = self._sandbox_config(sandbox)
        log_path = ""
        if cfg.log_path and scfg.log_directory:
            log_path = os.path.join(scfg.log_directory, cfg.log_path)
            await asyncio.to_thread(os.makedirs, os.path.dirname(log_path), exist_ok=True)
        pod = self._pod_spec(scfg)
        volumes: list[Volume] = []
        mounts: list[VolumeMount] = []
        for i, m in enumerate(cfg.mounts):
            # as containerd does: a host path that is missing is made, as a directory
            try:
                await asyncio.to_thread(os.makedirs, m.host_path, mode=0o755, exist_ok=True)
            except OSError as exc:
                raise invalid(f"mount host path {m.host_path!r}: {exc.strerror}") from None
            name = f"cri-mount-{i}"
            volumes.append(Volume(name=name, kind=HOST_PATH, path=m.host_path))
            mounts.append(VolumeMount(name=name, mount_path=m.container_path, read_only=m.readonly))
        pod = replace(pod, volumes=tuple(volumes))
        spec = ContainerSpec(
            name=meta.name,
            image=cfg.image.image,
            attempt=meta.attempt,
            command=tuple(cfg.command),
            args=tuple(cfg.args),
            env=tuple((kv.key, kv.value.decode(errors="replace")) for kv in cfg.envs),
            working_dir=cfg.working_dir or None,
            tty=cfg.tty,
            stdin=cfg.stdin,
            stdin_once=cfg.stdin_once,
            volume_mounts=tuple(mounts),
            pid_namespace="node" if pod.host_pid else _NAMESPACE_MODES[ns.pid],
            log_path=log_path,
        )
        return pod, spec, image.id

    async def start_container(self, req: pb.StartContainerRequest) -> pb.StartContainerResponse:
        rec = self._container(req.container_id)
        await self.runtime.start_container(rec.id)
        return pb.StartContainerResponse()

    async def stop_container(self, req: pb.StopContainerRequest) -> pb.StopContainerResponse:
        rec = self._container(req.container_id)
        state = (await self._container_states()).get(rec.id)
        if state is not None and state.state == "running":
            await self._stop(rec.id, max(0, req.timeout))
        return pb.StopContainerResponse()

    async def remove_container(self, req: pb.RemoveContainerRequest) -> pb.RemoveContainerResponse:
        oid = self.store.resolve(self.store.containers, req.container_id)
        if oid is None:  # already removed: not an error
            return pb.RemoveContainerResponse()
        with contextlib.suppress(ContainerNotFound):
            await self.runtime.remove_container(oid)
        self.store.drop_container(oid)
        return pb.RemoveContainerResponse()

    def _container_status(
        self, rec: ContainerRecord, state: ContainerState | None
    ) -> pb.ContainerStatus:
        cfg = self._container_config(rec)
        status = pb.ContainerStatus(
            id=rec.id,
            metadata=cfg.metadata,
            state=_container_code(state),
            created_at=rec.created_at,
            image=cfg.image,
            image_ref=rec.image_ref,
            labels=cfg.labels,
            annotations=cfg.annotations,
            mounts=cfg.mounts,
            log_path=rec.log_path,
        )
        if state is not None:
            if state.state != "created":
                status.started_at = _ns(state.started_at)
            if state.state == "exited":
                status.finished_at = _ns(state.finished_at)
                status.exit_code = state.exit_code or 0
                status.reason = state.reason or ("Completed" if not state.exit_code else "Error")
        return status

    async def container_status(self, req: pb.ContainerStatusRequest) -> pb.ContainerStatusResponse:
        rec = self._container(req.container_id)
        state = (await self._container_states()).get(rec.id)
        out = pb.ContainerStatusResponse(status=self._container_status(rec, state))
        if req.verbose:
            out.info["sandboxID"] = rec.sandbox_id
        return out

    async def list_containers(self, req: pb.ListContainersRequest) -> pb.ListContainersResponse:
        f = req.filter
        states = await self._container_states()
        wanted = sandbox = None
        if f.id:
            wanted = self.store.resolve(self.store.containers, f.id)
            if wanted is None:
                return pb.ListContainersResponse()
        if f.pod_sandbox_id:
            sandbox = self.store.resolve(self.store.sandboxes, f.pod_sandbox_id)
            if sandbox is None:
                return pb.ListContainersResponse()
        selector = dict(f.label_selector)
        state_wanted = f.state.state if f.HasField("state") else None
        out = pb.ListContainersResponse()
        for rec in sorted(self.store.containers.values(), key=lambda r: r.created_at):
            if (wanted is not None and rec.id != wanted) or (
                sandbox is not None and rec.sandbox_id != sandbox
            ):
                continue
            listing = _listing_of(
                self._container_listings, self.store.containers, rec, self._container_item
            )
            if not _labels_match(listing.labels, selector):
                continue
            code = _container_code(states.get(rec.id))
            if state_wanted is not None and code != state_wanted:
                continue
            item = out.containers.add()
            item.CopyFrom(listing.item)
            item.state = code
        return out

    def _container_item(self, rec: ContainerRecord) -> pb.Container:
        """The container's list item without its state (:class:`_Listing`)."""
        cfg = self._container_config(rec)
        return pb.Container(
            id=rec.id,
            pod_sandbox_id=rec.sandbox_id,
            metadata=cfg.metadata,
            image=cfg.image,
            image_ref=rec.image_ref,
            created_at=rec.created_at,
            labels=cfg.labels,
            annotations=cfg.annotations,
        )

    # ------------------------------------------------------------------------------ streaming

    async def _running(self, ref: str) -> ContainerRecord:
        """The container's record, if it runs: one question to the runtime, not a listing of
        every container (this is on the way to every exec's first byte)."""
        rec = self._container(ref)
        stopped = await self.runtime.container_stopped(rec.id)
        if stopped is not None:
            raise CriFailure(
                Status.FAILED_PRECONDITION,
                f"container {rec.id} is not running: {stopped}",
            )
        return rec

    async def exec_sync(self, req: pb.ExecSyncRequest) -> pb.ExecSyncResponse:
        rec = await self._running(req.container_id)
        if not req.cmd:
            raise invalid("cmd must not be empty")
        got = _Captured(EXEC_SYNC_OUTPUT)
        io = StdIO(stdout=got.stdout, stderr=got.stderr)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation that
            # comes as the time runs out (runtime/base.py, wait_event)
            async with asyncio.timeout(req.timeout if req.timeout > 0 else None):
                code = await self.runtime.exec(rec.id, list(req.cmd), io, tty=False)
        except TimeoutError:
            raise CriFailure(
                Status.DEADLINE_EXCEEDED,
                f"command {list(req.cmd)[:3]} timed out after {req.timeout} s",
            ) from None
        if got.cut:
            log.warning("ExecSync in %s: output beyond %d bytes was cut", rec.id, EXEC_SYNC_OUTPUT)
        return pb.ExecSyncResponse(
            stdout=got.stdout.value(), stderr=got.stderr.value(), exit_code=code
        )

    def _origin(self, sandbox_id: str, container: ContainerRecord | None) -> Origin:
        """What the audit log says of a CRI session: the pod and container names from the
        configs the kubelet sent (the CRI caller is not otherwise identified)."""
        sandbox = self.store.sandboxes.get(sandbox_id)
        meta = self._sandbox_config(sandbox).metadata if sandbox is not None else None
        name = self._container_config(container).metadata.name if container is not None else ""
        return Origin(
            user="cri",
            namespace=meta.namespace if meta is not None else "",
            pod=meta.name if meta is not None else "",
            container=name,
            via="cri",
        )

    async def exec(self, req: pb.ExecRequest) -> pb.ExecResponse:
        rec = await self._running(req.container_id)
        if not req.cmd:
            raise invalid("cmd must not be empty")
        url = await self.streams.get_exec(
            ExecRequest(
                rec.id,
                tuple(req.cmd),
                stdin=req.stdin,
                stdout=req.stdout,
                stderr=req.stderr,
                tty=req.tty,
                origin=self._origin(rec.sandbox_id, rec),
            )
        )
        return pb.ExecResponse(url=url)

    async def attach(self, req: pb.AttachRequest) -> pb.AttachResponse:
        rec = await self._running(req.container_id)
        url = await self.streams.get_attach(
            AttachRequest(
                rec.id,
                stdin=req.stdin,
                stdout=req.stdout,
                stderr=req.stderr,
                tty=req.tty,
                origin=self._origin(rec.sandbox_id, rec),
            )
        )
        return pb.AttachResponse(url=url)

    async def port_forward(self, req: pb.PortForwardRequest) -> pb.PortForwardResponse:
        rec = self._sandbox(req.pod_sandbox_id)
        if rec.stopped:
            raise CriFailure(Status.FAILED_PRECONDITION, f"sandbox {rec.id} is not ready")
        for port in req.port:
            if not 0 < port < 65536:
                raise invalid(f"port {port} is not a valid port")
        origin = self._origin(rec.id, None)
        url = await self.streams.get_port_forward(
            PortForwardRequest(rec.id, tuple(req.port), origin=origin)
        )
        return pb.PortForwardResponse(url=url)

    # ------------------------------------------------------------------------------ images

    @staticmethod
    def _image(info: ImageInfo) -> pb.Image:
        image = pb.Image(
            id=info.id,
            repo_tags=info.repo_tags,
            repo_digests=info.repo_digests,
            size=info.size,
            username=info.username,
        )
        if info.uid is not None:
            image.uid.value = info.uid
        return image

    async def list_images(self, req: pb.ListImagesRequest) -> pb.ListImagesResponse:
        images = await self.images.list_images()
        if req.filter.image.image:
            want = await self.images.image_status(req.filter.image.image)
            images = [i for i in images if want is not None and i.id == want.id]
        return pb.ListImagesResponse(images=[self._image(i) for i in images])

    async def image_status(self, req: pb.ImageStatusRequest) -> pb.ImageStatusResponse:
        info = await self.images.image_status(req.image.image)
        if info is None:  # CRI: an image that is not there is an empty answer, not an error
            return pb.ImageStatusResponse()
        return pb.ImageStatusResponse(image=self._image(info))

    async def pull_image(self, req: pb.PullImageRequest) -> pb.PullImageResponse:
        ref = req.image.image
        if not ref:
            raise invalid("image reference must not be empty")
        try:
            normalize_ref(ref)
        except ValueError as exc:
            raise invalid(f"image reference {ref!r}: {exc}") from None
        info = await self.images.pull_image(ref)
        return pb.PullImageResponse(image_ref=info.id)

    async def remove_image(self, req: pb.RemoveImageRequest) -> pb.RemoveImageResponse:
        await self.images.remove_image(req.image.image)
        return pb.RemoveImageResponse()

    async def image_fs_info(self, req: pb.ImageFsInfoRequest) -> pb.ImageFsInfoResponse:
        usage = await self.images.fs_usage()
        fs = pb.FilesystemUsage(timestamp=_now_ns())
        fs.fs_id.mountpoint = usage.mountpoint
        fs.used_bytes.value = usage.used_bytes
        fs.inodes_used.value = usage.inodes_used
        return pb.ImageFsInfoResponse(image_filesystems=[fs])

    # ------------------------------------------------------------------------------ startup

    async def reconcile(self) -> int:
        """Drop records whose sandbox or container the runtime no longer has (a restarted
        process runtime, an engine wiped); how many were dropped."""
        sandboxes = await self._sandbox_states()
        containers = await self._container_states()
        dropped = 0
        for cid in [c for c in self.store.containers if c not in containers]:
            self.store.drop_container(cid)
            dropped += 1
        for sid in [s for s in self.store.sandboxes if s not in sandboxes]:
            self.store.drop_sandbox(sid)
            dropped += 1
        return dropped


# ------------------------------------------------------------------------------------ gRPC

#: RPC name -> (request type, CriService method name)
RUNTIME_METHODS: dict[str, tuple[type[Message], str]] = {
    "Version": (pb.VersionRequest, "version"),
    "Status": (pb.StatusRequest, "status"),
    "UpdateRuntimeConfig": (pb.UpdateRuntimeConfigRequest, "update_runtime_config"),
    "RunPodSandbox": (pb.RunPodSandboxRequest, "run_pod_sandbox"),
    "StopPodSandbox": (pb.StopPodSandboxRequest, "stop_pod_sandbox"),
    "RemovePodSandbox": (pb.RemovePodSandboxRequest, "remove_pod_sandbox"),
    "PodSandboxStatus": (pb.PodSandboxStatusRequest, "pod_sandbox_status"),
    "ListPodSandbox": (pb.ListPodSandboxRequest, "list_pod_sandbox"),
    "CreateContainer": (pb.CreateContainerRequest, "create_container"),
    "StartContainer": (pb.StartContainerRequest, "start_container"),
    "StopContainer": (pb.StopContainerRequest, "stop_container"),
    "RemoveContainer": (pb.RemoveContainerRequest, "remove_container"),
    "ListContainers": (pb.ListContainersRequest, "list_containers"),
    "ContainerStatus": (pb.ContainerStatusRequest, "container_status"),
    "ExecSync": (pb.ExecSyncRequest, "exec_sync"),
    "Exec": (pb.ExecRequest, "exec"),
    "Attach": (pb.AttachRequest, "attach"),
    "PortForward": (pb.PortForwardRequest, "port_forward"),
}
IMAGE_METHODS: dict[str, tuple[type[Message], str]] = {
    "ListImages": (pb.ListImagesRequest, "list_images"),
    "ImageStatus": (pb.ImageStatusRequest, "image_status"),
    "PullImage": (pb.PullImageRequest, "pull_image"),
    "RemoveImage": (pb.RemoveImageRequest, "remove_image"),
    "ImageFsInfo": (pb.ImageFsInfoRequest, "image_fs_info"),
}


def _handler(rpc: str, fn: Callable[[Any], Awaitable[Message]], req_type: type[Message]) -> Handler:
    async def call(data: bytes) -> bytes:
        try:
            request = req_type.FromString(data)
        except DecodeError:  # as Go's gRPC answers it: never the decoder's exception
            raise RpcFailure(
                Status.INTERNAL,
                f"grpc: error unmarshalling request: not a {req_type.__name__}",
            ) from None
        try:
            return (await fn(request)).SerializeToString()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = _status_of(exc)
            if failure.code is Status.INTERNAL:
                log.exception("CRI %s failed", rpc)
            else:
                log.debug("CRI %s: %s %s", rpc, failure.code.name, failure.message)
            raise RpcFailure(int(failure.code), failure.message) from None

    return call


def handlers(service: CriService) -> dict[str, Handler]:
    """Every method served, by its path (``/runtime.v1.RuntimeService/Version``)."""
    return {
        f"/{name}/{rpc}": _handler(rpc, getattr(service, attr), req_type)
        for name, table in ((RUNTIME_SERVICE, RUNTIME_METHODS), (IMAGE_SERVICE, IMAGE_METHODS))
        for rpc, (req_type, attr) in table.items()
    }


MAX_MESSAGE = 16 << 20  # ExecSync output, as the kubelet's client allows


def make_server(service: CriService) -> GrpcServer:
    """The gRPC server of ``service``: a method it does not serve is UNIMPLEMENTED, with a
    message that names it."""
    return GrpcServer(handlers(service), max_message=MAX_MESSAGE, max_send=2 * MAX_MESSAGE + 4096)

"""containerd's own gRPC API, the part the containerd runtime calls (docs/containerd.md).

:class:`Containerd` is a thin asyncio client: one channel (:mod:`streamsrv.rpc.channel`, our own
gRPC client) to containerd's socket,
every call in one containerd namespace (the ``containerd-namespace`` header), each failure
raised as :class:`~streamsrv.errors.BackendError` (``NotFound`` for a missing object,
:class:`~streamsrv.errors.EngineUnavailable` when containerd does not answer). The messages are
generated from ``streamsrv/runtime/ctdapi/*.proto`` by ``scripts/gen-proto``.

Also here, with no I/O: an image's root filesystem chain (:func:`chain_id`) and the OCI
runtime spec of a pod's containers (:func:`oci_spec`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import DecodeError, Message

from ..errors import BackendError, EngineUnavailable
from ..rpc import http2
from ..rpc.channel import Channel, RpcError
from .ctdapi import (
    containers_pb2,
    content_pb2,
    images_pb2,
    snapshots_pb2,
    tasks_pb2,
    types_pb2,
    version_pb2,
)
from .images import normalize_ref

DEFAULT_ADDRESS: Final = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE: Final = "streamsrv"
RUNC: Final = "io.containerd.runc.v2"
SPEC_TYPE: Final = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE: Final = "types.containerd.io/opencontainers/runtime-spec/1/Process"
#: Marks a snapshot as a root for containerd's garbage collector, so that it stays while only
#: our container record names it (it is removed with the container).
GC_ROOT: Final = "containerd.io/gc.root"
WAIT: Final = "/containerd.services.tasks.v1.Tasks/Wait"
_MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
_INDEX_TYPES = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
_MAX_BLOB = 4 << 20  # a manifest or image config larger than this is refused

_R = TypeVar("_R", bound=Message)


class NotFound(BackendError):
    """containerd has no such object (its ``NOT_FOUND``)."""


class Containerd:
    """An asyncio client of containerd's services, in one namespace."""

    def __init__(self, address: str = DEFAULT_ADDRESS, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.address = address
        self.namespace = namespace
        # A call fails at once (UNAVAILABLE) while containerd is down; the next call after it
        # is back connects again.
        self._channel = Channel(
            address if address.startswith("unix:") else "unix://" + address,
            metadata=[("containerd-namespace", namespace)],
        )

    async def close(self) -> None:
        await self._channel.close()

    async def call(
        self, method: str, request: Message, response: type[_R], deadline: float | None = 60.0
    ) -> _R:
        """``/containerd.services.SERVICE.v1.NAME/METHOD`` with ``request``."""
        try:
            data = await self._channel.unary(method, request.SerializeToString(), deadline=deadline)
            return response.FromString(data)
        except RpcError as exc:
            raise _error(method, exc) from None
        except DecodeError as exc:
            raise _undecodable(method, exc) from None

    async def stream(
        self, method: str, request: Message, response: type[_R], deadline: float | None = 60.0
    ) -> AsyncIterator[_R]:
        try:
            async for data in self._channel.stream(
                method, request.SerializeToString(), deadline=deadline
            ):
                yield response.FromString(data)
        except RpcError as exc:
            raise _error(method, exc) from None
        except DecodeError as exc:
            raise _undecodable(method, exc) from None

    # ----------------------------------------------------------------------------- services

    async def version(self) -> str:
        got = await self.call(
            "/containerd.services.version.v1.Version/Version",
            empty_pb2.Empty(),
            version_pb2.VersionResponse,
            deadline=10,
        )
        return got.version

    async def image(self, name: str) -> images_pb2.Image:
        got = await self.call(
            "/containerd.services.images.v1.Images/Get",
            images_pb2.GetImageRequest(name=name),
            images_pb2.GetImageResponse,
        )
        return got.image

    async def images(self) -> list[images_pb2.Image]:
        got = await self.call(
            "/containerd.services.images.v1.Images/List",
            images_pb2.ListImagesRequest(),
            images_pb2.ListImagesResponse,
        )
        return list(got.images)

    async def delete_image(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            await self.call(
                "/containerd.services.images.v1.Images/Delete",
                images_pb2.DeleteImageRequest(name=name, sync=True),
                empty_pb2.Empty,
            )

    async def blob(self, digest: str, size: int) -> bytes:
        if size > _MAX_BLOB:
            raise BackendError(f"content {digest}: {size} bytes is more than an image's metadata")
        parts = []
        async for piece in self.stream(
            "/containerd.services.content.v1.Content/Read",
            content_pb2.ReadContentRequest(digest=digest),
            content_pb2.ReadContentResponse,
        ):
            parts.append(piece.data)
        data = b"".join(parts)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise BackendError(f"content {digest}: what containerd sent does not match it")
        return data

    async def prepare(self, snapshotter: str, key: str, parent: str) -> Sequence[types_pb2.Mount]:
        got = await self.call(
            "/containerd.services.snapshots.v1.Snapshots/Prepare",
            snapshots_pb2.PrepareSnapshotRequest(
                snapshotter=snapshotter, key=key, parent=parent, labels={GC_ROOT: "streamsrv"}
            ),
            snapshots_pb2.PrepareSnapshotResponse,
        )
        return list(got.mounts)

    async def remove_snapshot(self, snapshotter: str, key: str) -> None:
        with contextlib.suppress(NotFound):
            await self.call(
                "/containerd.services.snapshots.v1.Snapshots/Remove",
                snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
                empty_pb2.Empty,
            )

    async def create_container(self, container: containers_pb2.Container) -> None:
        await self.call(
            "/containerd.services.containers.v1.Containers/Create",
            containers_pb2.CreateContainerRequest(container=container),
            containers_pb2.CreateContainerResponse,
        )

    async def delete_container(self, container_id: str) -> None:
        with contextlib.suppress(NotFound):
            await self.call(
                "/containerd.services.containers.v1.Containers/Delete",
                containers_pb2.DeleteContainerRequest(id=container_id),
                empty_pb2.Empty,
            )

    async def containers(self) -> list[containers_pb2.Container]:
        got = await self.call(
            "/containerd.services.containers.v1.Containers/List",
            containers_pb2.ListContainersRequest(),
            containers_pb2.ListContainersResponse,
        )
        return list(got.containers)

    async def task(self, name: str, request: Message, response: type[_R], **kw: Any) -> _R:
        """``Tasks/NAME``."""
        return await self.call(
            f"/containerd.services.tasks.v1.Tasks/{name}", request, response, **kw
        )

    async def kill(
        self, container_id: str, signal: int, exec_id: str = "", *, all: bool = False
    ) -> None:
        with contextlib.suppress(NotFound):
            await self.task(
                "Kill",
                tasks_pb2.KillRequest(
                    container_id=container_id, exec_id=exec_id, signal=signal, all=all
                ),
                empty_pb2.Empty,
            )

    async def wait(self, container_id: str, exec_id: str = "") -> int:
        # through call() itself, not task(): a Wait lasts as long as its process, and each
        # coroutine between costs a frame for that long (docs/benchmarks.md, idle memory)
        got = await self.call(
            WAIT,
            tasks_pb2.WaitRequest(container_id=container_id, exec_id=exec_id),
            tasks_pb2.WaitResponse,
            deadline=None,
        )
        return got.exit_status

    def wait_future(self, container_id: str, exec_id: str = "") -> asyncio.Future[int]:
        """:meth:`wait` as a future, with nothing waiting on our side while the process runs
        (``Channel.unary_future``): a tty exec holds its Wait for the session's life
        (docs/benchmarks.md, idle memory). Cancel it to cancel the call."""
        return _WaitAnswer(
            self._channel.unary_future(
                WAIT,
                tasks_pb2.WaitRequest(
                    container_id=container_id, exec_id=exec_id
                ).SerializeToString(),
            )
        ).exit_status

    async def delete_task(self, container_id: str) -> None:
        with contextlib.suppress(NotFound):
            await self.task(
                "Delete",
                tasks_pb2.DeleteTaskRequest(container_id=container_id),
                tasks_pb2.DeleteResponse,
            )

    async def delete_process(self, container_id: str, exec_id: str) -> None:
        with contextlib.suppress(NotFound):
            await self.task(
                "DeleteProcess",
                tasks_pb2.DeleteProcessRequest(container_id=container_id, exec_id=exec_id),
                tasks_pb2.DeleteResponse,
            )

    async def resize(self, container_id: str, exec_id: str, width: int, height: int) -> None:
        await self.task(
            "ResizePty",
            tasks_pb2.ResizePtyRequest(
                container_id=container_id, exec_id=exec_id, width=width, height=height
            ),
            empty_pb2.Empty,
        )

    async def list_tasks(self) -> list[Any]:
        got = await self.task("List", tasks_pb2.ListTasksRequest(), tasks_pb2.ListTasksResponse)
        return list(got.tasks)


def _what(method: str) -> str:
    return method.rsplit(".", 1)[-1]  # Tasks/Exec


class _WaitAnswer:
    """The exit status of a :meth:`Containerd.wait_future`, decoded from its call's answer."""

    __slots__ = ("raw", "exit_status")

    def __init__(self, raw: asyncio.Future[bytes]) -> None:
        self.raw = raw
        self.exit_status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        raw.add_done_callback(self._answered)
        self.exit_status.add_done_callback(self._cancelled)

    def _answered(self, raw: asyncio.Future[bytes]) -> None:
        out = self.exit_status
        if out.done():
            if not raw.cancelled():
                raw.exception()  # retrieved: nobody waits for it any more
            return
        if raw.cancelled():
            out.cancel()
            return
        exc = raw.exception()
        if isinstance(exc, RpcError):
            out.set_exception(_error(WAIT, exc))
        elif exc is not None:
            out.set_exception(exc)
        else:
            try:
                out.set_result(tasks_pb2.WaitResponse.FromString(raw.result()).exit_status)
            except DecodeError as decode:
                out.set_exception(_undecodable(WAIT, decode))

    def _cancelled(self, out: asyncio.Future[int]) -> None:
        if out.cancelled():
            self.raw.cancel()


def _undecodable(method: str, exc: DecodeError) -> BackendError:
    return BackendError(f"containerd {_what(method)}: an undecodable answer: {exc}")


def _error(method: str, exc: RpcError) -> BackendError:
    code, details, what = exc.code, exc.details, _what(method)
    if code == http2.NOT_FOUND:
        return NotFound(f"containerd {what}: {details}")
    if code in (http2.UNAVAILABLE, http2.DEADLINE_EXCEEDED):
        return EngineUnavailable(f"containerd is not answering ({what}: {details})")
    return BackendError(f"containerd {what}: {details}")


def any_json(type_url: str, value: Mapping[str, Any]) -> any_pb2.Any:
    """An Any holding JSON, as containerd keeps OCI specs."""
    return any_pb2.Any(type_url=type_url, value=json.dumps(value, separators=(",", ":")).encode())


# --------------------------------------------------------------------------------------------
# Images


def chain_id(diff_ids: Sequence[str]) -> str:
    """The snapshot an image unpacks to: the OCI chain of its layers' diff ids."""
    if not diff_ids:
        raise BackendError("the image has no layers")
    chain = diff_ids[0]
    for diff in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff}".encode()).hexdigest()
    return chain


@dataclass(frozen=True)
class ImageConfig:
    """What the runtime needs of an image: its id (the config's digest), where its unpacked
    root filesystem is, and its default process."""

    ref: str
    id: str
    chain: str
    size: int  # of its config and layers, as stored (compressed)
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    working_dir: str
    user: str


async def image_config(api: Containerd, image: str) -> ImageConfig:
    """Read ``image``'s manifest and config from containerd's content store.

    Raises:
        NotFound: no image of that name.
        ValueError: not an image reference at all.
    """
    ref = normalize_ref(image)
    target = (await api.image(ref)).target
    media, digest, size = target.media_type, target.digest, target.size
    if media in _INDEX_TYPES:
        index = json.loads(await api.blob(digest, size))
        chosen = _platform_manifest(index.get("manifests") or [])
        if chosen is None:
            raise BackendError(f'image "{image}" has no manifest for linux/amd64')
        media, digest, size = chosen["mediaType"], chosen["digest"], int(chosen["size"])
    if media not in _MANIFEST_TYPES:
        raise BackendError(f'image "{image}": unsupported manifest type {media}')
    manifest = json.loads(await api.blob(digest, size))
    config_desc = manifest["config"]
    config = json.loads(await api.blob(config_desc["digest"], int(config_desc["size"])))
    process = config.get("config") or {}
    env = []
    for item in process.get("Env") or []:
        key, _, value = str(item).partition("=")
        env.append((key, value))
    layers = manifest.get("layers") or []
    return ImageConfig(
        ref=ref,
        id=config_desc["digest"],
        chain=chain_id(list((config.get("rootfs") or {}).get("diff_ids") or [])),
        size=int(config_desc.get("size") or 0) + sum(int(x.get("size") or 0) for x in layers),
        entrypoint=tuple(process.get("Entrypoint") or ()),
        cmd=tuple(process.get("Cmd") or ()),
        env=tuple(env),
        working_dir=str(process.get("WorkingDir") or ""),
        user=str(process.get("User") or ""),
    )


def _platform_manifest(manifests: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for m in manifests:
        platform = m.get("platform") or {}
        if (
            platform.get("os", "linux") == "linux"
            and platform.get("architecture", "amd64") == "amd64"
        ):
            return m
    return None


# --------------------------------------------------------------------------------------------
# The OCI runtime spec (runc's config.json) of a pod's containers

_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip
_MASKED = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip
_READONLY = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]  # fmt: skip
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def user_ids(user: str) -> tuple[int, int]:
    """An image's ``User`` as uid and gid: numeric ``UID[:GID]``; a name is root's (there is no
    /etc/passwd lookup here; docs/containerd.md)."""
    uid_text, _, gid_text = user.partition(":")
    uid = int(uid_text) if uid_text.isdigit() else 0
    gid = int(gid_text) if gid_text.isdigit() else 0
    return uid, gid


def process_spec(
    args: Sequence[str],
    env: Sequence[tuple[str, str]],
    cwd: str,
    user: str,
    *,
    terminal: bool,
) -> dict[str, Any]:
    uid, gid = user_ids(user)
    merged: dict[str, str] = {"PATH": _DEFAULT_PATH}
    for key, value in env:
        merged[key] = value
    return {
        "terminal": terminal,
        "user": {"uid": uid, "gid": gid},
        "args": list(args),
        "env": [f"{k}={v}" for k, v in merged.items()],
        "cwd": cwd or "/",
        "capabilities": {k: list(_CAPS) for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": False,
    }


def oci_spec(
    process: Mapping[str, Any],
    *,
    cgroup: str,
    hostname: str | None,
    namespaces: Sequence[Mapping[str, str]],
    binds: Sequence[tuple[str, str, bool]] = (),
    own_network: bool = True,
    shm: str | None = None,
) -> dict[str, Any]:
    """A container's runtime spec: ``process``, the namespaces (``{"type": ..., "path": ...}``,
    no path: a new one), bind mounts ``(host path, container path, read-only)``; ``shm``: a
    host directory bound at /dev/shm (the pod's, shared by its containers), else a tmpfs of
    its own."""
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    ]  # fmt: skip
    if shm is not None:
        mounts.append(
            {"destination": "/dev/shm", "type": "bind", "source": shm,
             "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev"]}
        )  # fmt: skip
    else:
        mounts.append(
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}
        )  # fmt: skip
    if own_network:  # sysfs belongs to a network namespace: the host's is bound read-only
        mounts.append(
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        )  # fmt: skip
    else:
        mounts.append(
            {"destination": "/sys", "type": "bind", "source": "/sys",
             "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
        )  # fmt: skip
    for source, destination, read_only in binds:
        options = ["rbind", "rprivate"] + (["ro"] if read_only else ["rw"])
        mounts.append(
            {"destination": destination, "type": "bind", "source": source, "options": options}
        )
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": dict(process),
        "root": {"path": "rootfs", "readonly": False},
        "mounts": mounts,
        "linux": {
            "namespaces": [dict(n) for n in namespaces],
            "cgroupsPath": cgroup,
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "maskedPaths": list(_MASKED),
            "readonlyPaths": list(_READONLY),
        },
    }
    if hostname:
        spec["hostname"] = hostname
    return spec

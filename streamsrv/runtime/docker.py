"""The Docker engine backend: pods as a pause container plus app containers joining it.

The docker SDK is blocking, so every call runs in a worker thread (:func:`asyncio.to_thread`);
the event loop never waits on the engine.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import docker
import docker.errors
import docker.utils

from ..pods import (
    LABEL_CONTAINER_NAME,
    LABEL_TYPE,
    TYPE_CONTAINER,
    TYPE_SANDBOX,
    ContainerSpec,
    ContainerState,
    PodSpec,
    SandboxState,
    pod_from_labels,
)
from .base import BackendError, ContainerNotFound, ImageNotFound

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.9"
LOCAL_PAUSE_IMAGE = "streamsrv/pause:local"


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
    ) -> None:
        kwargs: dict[str, Any] = dict(docker.utils.kwargs_from_env())
        if base_url:
            kwargs["base_url"] = base_url
        self.api = docker.APIClient(timeout=timeout, **kwargs)
        self.pause_image = pause_image
        self._pause_resolved: str | None = None

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
        except docker.errors.NotFound as exc:
            raise ContainerNotFound(str(exc.explanation or exc)) from exc
        except docker.errors.APIError as exc:
            raise BackendError(str(exc.explanation or exc)) from exc
        except docker.errors.DockerException as exc:
            raise BackendError(str(exc)) from exc

    async def ping(self) -> None:
        await self._call(self.api.ping)

    async def version(self) -> str:
        info = await self._call(self.api.version)
        return str(info.get("Version", "?"))

    async def close(self) -> None:
        await asyncio.to_thread(self.api.close)

    # ----------------------------------------------------------------------------- images

    async def _image_present(self, image: str) -> bool:
        try:
            await asyncio.to_thread(self.api.inspect_image, image)
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError as exc:
            raise BackendError(str(exc.explanation or exc)) from exc
        return True

    async def ensure_image(self, image: str) -> None:
        if await self._image_present(image):
            return
        repo, tag = docker.utils.parse_repository_tag(image)
        try:
            await asyncio.to_thread(self.api.pull, repo, tag=tag or "latest")
        except docker.errors.APIError as exc:
            detail = f"not present and the pull failed: {exc.explanation}"
            raise ImageNotFound(image, detail) from exc
        if not await self._image_present(image):
            raise ImageNotFound(image, "not present after pull")

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
        image = await self.resolve_pause_image()
        host_config = self.api.create_host_config(
            network_mode="host" if pod.host_network else "none",
            ipc_mode="shareable",
            init=False,
        )
        created = await self._call(
            self.api.create_container,
            image=image,
            name=f"k8s_POD_{pod.name}_{pod.namespace}_{pod.uid}_0",
            labels=pod.sandbox_labels(),
            hostname=None if pod.host_network else pod.name[:63],
            host_config=host_config,
        )
        sandbox_id: str = created["Id"]
        try:
            await self._call(self.api.start, sandbox_id)
        except BackendError:
            await self.remove_pod_sandbox(sandbox_id)
            raise
        return sandbox_id

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        await self._call(self.api.stop, sandbox_id, timeout=10)

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        await self._remove(sandbox_id)

    async def _remove(self, container_id: str) -> None:
        try:
            await asyncio.to_thread(self.api.remove_container, container_id, v=True, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            raise BackendError(str(exc.explanation or exc)) from exc

    async def _list(self, kind: str, labels: Mapping[str, str] | None) -> list[dict[str, Any]]:
        selector = [f"{LABEL_TYPE}={kind}"] + [f"{k}={v}" for k, v in (labels or {}).items()]
        found: list[dict[str, Any]] = await self._call(
            self.api.containers, all=True, filters={"label": selector}
        )
        return found

    async def _inspect_all(self, ids: list[str]) -> list[dict[str, Any]]:
        async def one(cid: str) -> dict[str, Any] | None:
            try:
                info: dict[str, Any] = await asyncio.to_thread(self.api.inspect_container, cid)
                return info
            except docker.errors.NotFound:
                return None  # removed between list and inspect

        results = await asyncio.gather(*(one(c) for c in ids))
        return [r for r in results if r is not None]

    async def list_pod_sandboxes(
        self, labels: Mapping[str, str] | None = None
    ) -> list[SandboxState]:
        summaries = await self._list(TYPE_SANDBOX, labels)
        out: list[SandboxState] = []
        for info in await self._inspect_all([s["Id"] for s in summaries]):
            try:
                pod = pod_from_labels(info["Config"]["Labels"])
            except (KeyError, ValueError) as exc:
                log.warning("sandbox %s has unreadable labels: %s", info["Id"][:12], exc)
                continue
            state = info.get("State", {})
            networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
            ip = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
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
        joined = f"container:{sandbox_id}"
        host_config = self.api.create_host_config(
            network_mode=joined, ipc_mode=joined, pid_mode=joined
        )
        created = await self._call(
            self.api.create_container,
            image=container.image,
            name=f"k8s_{container.name}_{pod.name}_{pod.namespace}_{pod.uid}_0",
            entrypoint=list(container.command) or None,
            command=list(container.args) or None,
            environment=[f"{k}={v}" for k, v in container.env] or None,
            working_dir=container.working_dir,
            tty=container.tty,
            stdin_open=container.stdin,
            labels=pod.container_labels(container),
            host_config=host_config,
        )
        return str(created["Id"])

    async def start_container(self, container_id: str) -> None:
        await self._call(self.api.start, container_id)

    async def stop_container(self, container_id: str, grace_period: float) -> None:
        await self._call(self.api.stop, container_id, timeout=int(grace_period))

    async def remove_container(self, container_id: str) -> None:
        await self._remove(container_id)

    async def list_containers(
        self, labels: Mapping[str, str] | None = None
    ) -> list[ContainerState]:
        summaries = await self._list(TYPE_CONTAINER, labels)
        out = []
        for info in await self._inspect_all([s["Id"] for s in summaries]):
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
                )
            )
        return out

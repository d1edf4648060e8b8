"""Pods on a runtime: create, list and delete them, the engine holding all state.

The pod model itself (specs, states, labels, rendering) is :mod:`streamsrv.pods`, which does no
I/O; this module drives a :class:`~streamsrv.runtime.base.Runtime` with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import BackendError, RequestError
from .events import WARNING, EventStore
from .files import write_private
from .pods import (
    ContainerSpec,
    ContainerState,
    PodSpec,
    SandboxState,
    pod_filter,
    pod_phase,
    render_pod,
)
from .requests import AnyRequest
from .runtime.base import Runtime

log = logging.getLogger(__name__)


@runtime_checkable
class RemoteStreams(Protocol):
    """A runtime whose sessions are served by another stream server (a CRI endpoint's):
    the gateway asks it for the session's one-time URL and proxies the client there."""

    stream_ssl: ssl.SSLContext | None  # how to reach https URLs (None: the default trust)

    async def stream_url(self, req: AnyRequest) -> str: ...


class PodExists(RequestError):
    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f'pods "{name}" already exists')
        self.namespace, self.name = namespace, name


@dataclass(frozen=True, slots=True)
class Pod:
    """A pod as found in the engine: its sandbox and its app containers.

    ``containers`` holds the current instance of each container (the highest attempt);
    ``previous`` the one before it, by name, after a restart; ``stale`` anything older (and
    sandboxes left from before the pod's sandbox was made again), which the controller removes.
    """

    sandbox: SandboxState
    containers: tuple[ContainerState, ...]
    previous: Mapping[str, ContainerState] = field(default_factory=dict)
    stale: tuple[ContainerState, ...] = ()
    stale_sandboxes: tuple[str, ...] = ()
    #: (reason, message) of a container waiting out its restart back-off, by name.
    waiting: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: Labels and annotations changed since creation (a patch), if any.
    metadata: Mapping[str, Any] | None = None

    @property
    def spec(self) -> PodSpec:
        return self.sandbox.pod

    @property
    def phase(self) -> str:
        return pod_phase(self.sandbox, self.containers)

    def container_id(self, name: str) -> str | None:
        return next((c.id for c in self.containers if c.name == name), None)

    def container(self, name: str) -> ContainerState | None:
        return next((c for c in self.containers if c.name == name), None)

    def render(self) -> dict[str, Any]:
        return render_pod(
            self.sandbox,
            self.containers,
            previous=self.previous,
            waiting=self.waiting,
            metadata=self.metadata,
        )


def _newest_first(c: ContainerState) -> tuple[int, float]:
    return (c.attempt, c.started_at.timestamp() if c.started_at else 0.0)


def assemble(
    sandboxes: Sequence[SandboxState],
    containers: Sequence[ContainerState],
    metadata: Callable[[str], Mapping[str, Any] | None] = lambda uid: None,
) -> list[Pod]:
    """Pods from what a runtime lists: one per pod uid (its newest sandbox), each container's
    newest instance as current and the one before as previous."""
    by_uid: dict[str, list[ContainerState]] = {}
    for c in containers:
        by_uid.setdefault(c.pod_uid, []).append(c)
    sandboxes_of: dict[str, list[SandboxState]] = {}
    for s in sandboxes:
        sandboxes_of.setdefault(s.pod.uid, []).append(s)
    pods = []
    for uid, group in sandboxes_of.items():
        group.sort(key=lambda s: (s.pod.attempt, s.ready, s.created_at), reverse=True)
        newest, older = group[0], group[1:]
        instances: dict[str, list[ContainerState]] = {}
        for c in by_uid.get(uid, ()):
            instances.setdefault(c.name, []).append(c)
        current, previous, stale = [], {}, []
        for name, found in instances.items():
            found.sort(key=_newest_first, reverse=True)
            current.append(found[0])
            if len(found) > 1:
                previous[name] = found[1]
            stale.extend(found[2:])
        pods.append(
            Pod(
                newest,
                tuple(current),
                previous,
                tuple(stale),
                tuple(s.id for s in older),
                metadata=metadata(uid),
            )
        )
    return pods


class PodManager:
    """Create, list, restart and delete pods on a runtime. The engine holds their state; the
    gateway's state directory holds their log files (``pods/NS_NAME_UID/CONTAINER/N.log``, the
    kubelet's layout) and labels or annotations patched since creation (``pod-metadata/``)."""

    def __init__(
        self,
        runtime: Runtime,
        state_dir: Path | None = None,
        events: EventStore | None = None,
    ) -> None:
        self.runtime = runtime
        self.events = events
        self.state_dir = state_dir
        self.log_root = state_dir / "pods" if state_dir else None
        self.meta_dir = state_dir / "pod-metadata" if state_dir else None
        self._lock = asyncio.Lock()  # one create/delete/restart at a time: names stay unique
        self._metadata: dict[str, Mapping[str, Any]] = {}
        if self.meta_dir is not None and self.meta_dir.is_dir():
            for path in self.meta_dir.glob("*.json"):
                try:
                    self._metadata[path.stem] = json.loads(path.read_text())
                except (OSError, ValueError) as exc:
                    log.warning("ignoring %s: %s", path, exc)

    # ------------------------------------------------------------------------------ events

    def event(self, pod: PodSpec, reason: str, message: str, **kw: Any) -> None:
        if self.events is not None:
            self.events.record(pod, reason, message, **kw)

    # ------------------------------------------------------------------------------ reading

    async def list(self, namespace: str | None = None, name: str | None = None) -> list[Pod]:
        sandboxes, containers = await asyncio.gather(
            self.runtime.list_pod_sandboxes(pod_filter(namespace, name)),
            self.runtime.list_containers(pod_filter(namespace, name)),
        )
        return assemble(sandboxes, containers, self._metadata.get)

    async def get(self, namespace: str, name: str) -> Pod | None:
        found = await self.list(namespace, name)
        return found[0] if found else None

    # ------------------------------------------------------------------------------ log files

    def _log_dir(self, pod: PodSpec) -> Path | None:
        """The pod's log directory (the kubelet's ``NS_NAME_UID``), if logs are kept."""
        if self.log_root is None:
            return None
        return self.log_root / f"{pod.namespace}_{pod.name}_{pod.uid}"

    def log_path(self, pod: PodSpec, container: str, attempt: int) -> Path | None:
        """Where the gateway had ``container``'s instance ``attempt`` write its output."""
        directory = self._log_dir(pod)
        return None if directory is None else directory / container / f"{attempt}.log"

    def _with_logs(self, spec: PodSpec, attempts: Mapping[str, int] | None = None) -> PodSpec:
        """``spec`` with each container's attempt (0 unless given) and, if logs are kept, its
        log path and the pod's log directory set."""
        containers = []
        for c in spec.containers:
            attempt = (attempts or {}).get(c.name, 0)
            path = self.log_path(spec, c.name, attempt)
            log_path = str(path) if path is not None else c.log_path
            containers.append(replace(c, attempt=attempt, log_path=log_path))
        directory = self._log_dir(spec)
        log_directory = str(directory) if directory is not None else spec.log_directory
        return replace(spec, log_directory=log_directory, containers=tuple(containers))

    @staticmethod
    def _make_dirs(spec: PodSpec) -> None:
        for c in spec.containers:
            if c.log_path:
                os.makedirs(os.path.dirname(c.log_path), mode=0o700, exist_ok=True)

    # ------------------------------------------------------------------------------ changes

    async def create(self, spec: PodSpec) -> Pod:
        """Run the sandbox, then create and start every container; undo all on failure."""
        async with self._lock:
            if await self.runtime.list_pod_sandboxes(pod_filter(spec.namespace, spec.name)):
                raise PodExists(spec.namespace, spec.name)
            spec = self._with_logs(spec)
            node = spec.manifest.get("spec", {}).get("nodeName") or "streamsrv"
            self.event(
                spec,
                "Scheduled",
                f"Successfully assigned {spec.namespace}/{spec.name} to {node}",
                component="default-scheduler",
            )
            pulled: dict[str, bool] = {}
            try:
                for image in dict.fromkeys(c.image for c in spec.containers):
                    pulled[image] = await self._ensure_image(spec, image)
                await asyncio.to_thread(self._make_dirs, spec)
                sandbox_id = await self.runtime.run_pod_sandbox(spec)
            except BackendError as exc:
                self.event(spec, "Failed", f"Error: {exc}", type_=WARNING)
                raise
            created: list[str] = []
            try:
                for c in spec.containers:
                    self._pulled(spec, c, pulled.pop(c.image, False))
                    created.append(await self._create(sandbox_id, spec, c))
                for c, cid in zip(spec.containers, created, strict=True):
                    await self._start(spec, c, cid)
            except BaseException:
                await asyncio.shield(self._remove_all(sandbox_id, created))
                raise
        pod = await self.get(spec.namespace, spec.name)
        if pod is None:  # removed by someone else in between
            raise LookupError(f'pods "{spec.name}" not found')
        return pod

    async def _ensure_image(self, spec: PodSpec, image: str) -> bool:
        try:
            return bool(await self.runtime.ensure_image(image))
        except BackendError as exc:
            self.event(spec, "Failed", f'Failed to pull image "{image}": {exc}', type_=WARNING)
            raise

    def _pulled(self, spec: PodSpec, c: ContainerSpec, pulled: bool) -> None:
        """The kubelet's image event before each container is made."""
        if pulled:
            self.event(spec, "Pulled", f'Successfully pulled image "{c.image}"', container=c.name)
        else:
            message = f'Container image "{c.image}" already present on machine'
            self.event(spec, "Pulled", message, container=c.name)

    async def _create(self, sandbox_id: str, spec: PodSpec, c: ContainerSpec) -> str:
        try:
            cid = await self.runtime.create_container(sandbox_id, spec, c)
        except BackendError as exc:
            self.event(spec, "Failed", f"Error: {exc}", type_=WARNING, container=c.name)
            raise
        self.event(spec, "Created", f"Created container {c.name}", container=c.name)
        return cid

    async def _start(self, spec: PodSpec, c: ContainerSpec, cid: str) -> None:
        try:
            await self.runtime.start_container(cid)
        except BackendError as exc:
            self.event(spec, "Failed", f"Error: {exc}", type_=WARNING, container=c.name)
            raise
        self.event(spec, "Started", f"Started container {c.name}", container=c.name)

    async def restart_container(self, namespace: str, name: str, uid: str, container: str) -> bool:
        """Start ``container`` of the pod again as a new instance (attempt + 1), keep the last
        one (for ``logs -p`` and ``lastState``) and remove older ones. False if the pod or the
        container is gone, or already running again."""
        async with self._lock:
            pod = await self.get(namespace, name)
            if pod is None or pod.spec.uid != uid or not pod.sandbox.ready:
                return False
            current = pod.container(container)
            c = pod.spec.container(container)
            if current is None or c is None or current.state != "exited":
                return False
            spec = self._with_logs(pod.spec, {container: current.attempt + 1})
            c = spec.container(container)
            assert c is not None
            await asyncio.to_thread(self._make_dirs, replace(spec, containers=(c,)))
            self._pulled(spec, c, False)
            cid = await self._create(pod.sandbox.id, spec, c)
            try:
                await self._start(spec, c, cid)
            except BaseException:
                await asyncio.shield(self.runtime.remove_container(cid))
                raise
            older = [s.id for s in pod.stale if s.name == container]
            if container in pod.previous:
                older.append(pod.previous[container].id)
            await asyncio.gather(*(self.runtime.remove_container(o) for o in older))
            return True

    async def recreate_sandbox(self, namespace: str, name: str, uid: str) -> bool:
        """The pod's sandbox is gone (the engine restarted, say): make it again, and every
        container with it, one attempt on, as the kubelet does. False if the pod is gone.

        The new sandbox and containers are made before the old ones are removed: the engine
        holds the pod's only record, so a failure half-way (the engine going away again) must
        leave the old ones to be found and tried again, never no pod at all."""
        async with self._lock:
            pod = await self.get(namespace, name)
            if pod is None or pod.spec.uid != uid or pod.sandbox.ready:
                return False
            self.event(
                pod.spec,
                "SandboxChanged",
                "Pod sandbox changed, it will be killed and re-created.",
            )
            attempts = {c.name: c.attempt + 1 for c in pod.containers}
            spec = self._with_logs(replace(pod.spec, attempt=pod.spec.attempt + 1), attempts)
            await asyncio.to_thread(self._make_dirs, spec)
            sandbox_id = await self.runtime.run_pod_sandbox(spec)
            created: list[str] = []
            try:
                for c in spec.containers:
                    self._pulled(spec, c, False)
                    created.append(await self._create(sandbox_id, spec, c))
                for c, cid in zip(spec.containers, created, strict=True):
                    await self._start(spec, c, cid)
            except BaseException:
                await asyncio.shield(self._remove_all(sandbox_id, created))
                raise
            # The old ones: what cannot be removed now is removed later (collect_stale).
            old = [*pod.containers, *pod.stale, *pod.previous.values()]
            with contextlib.suppress(BackendError):
                running = [c.id for c in old if c.state == "running"]
                await asyncio.gather(*(self.runtime.stop_container(c, 0) for c in running))
                await asyncio.gather(*(self.runtime.remove_container(c.id) for c in old))
                for sid in (pod.sandbox.id, *pod.stale_sandboxes):
                    await self.runtime.remove_pod_sandbox(sid)
            return True

    async def collect_stale(self, namespace: str, name: str, uid: str) -> None:
        """Remove the pod's instances older than the previous one, and sandboxes it no longer
        uses (left by a restart or a sandbox made again)."""
        async with self._lock:
            pod = await self.get(namespace, name)
            if pod is None or pod.spec.uid != uid:
                return
            for c in pod.stale:
                with contextlib.suppress(BackendError):
                    await self.runtime.remove_container(c.id)
            for sid in pod.stale_sandboxes:
                with contextlib.suppress(BackendError):
                    await self.runtime.remove_pod_sandbox(sid)

    async def set_metadata(self, pod: Pod, metadata: Mapping[str, Any]) -> None:
        """Keep the pod's patched labels and annotations (0600, atomic) before answering."""
        uid = pod.spec.uid
        if self.meta_dir is not None:
            data = json.dumps(dict(metadata), sort_keys=True).encode()
            await asyncio.to_thread(self.meta_dir.mkdir, mode=0o700, exist_ok=True)
            await asyncio.to_thread(write_private, self.meta_dir / f"{uid}.json", data)
        self._metadata[uid] = dict(metadata)

    async def delete(self, namespace: str, name: str, grace: float | None = None) -> Pod | None:
        async with self._lock:
            pod = await self.get(namespace, name)
            if pod is None:
                return None
            timeout = pod.spec.termination_grace_period if grace is None else grace
            running = [c for c in pod.containers if c.state == "running"]
            for c in running:
                self.event(pod.spec, "Killing", f"Stopping container {c.name}", container=c.name)
            await asyncio.gather(*(self.runtime.stop_container(c.id, timeout) for c in running))
            everything = [c.id for c in (*pod.containers, *pod.stale, *pod.previous.values())]
            await self._remove_all(pod.sandbox.id, everything)
            for sid in pod.stale_sandboxes:
                await self.runtime.remove_pod_sandbox(sid)
            self._metadata.pop(pod.spec.uid, None)
            await asyncio.to_thread(self._forget_files, pod.spec)
            return pod

    def _forget_files(self, spec: PodSpec) -> None:
        """Remove the pod's patched metadata and log files (in a worker thread)."""
        if self.meta_dir is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.meta_dir / f"{spec.uid}.json").unlink()
        directory = self._log_dir(spec)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    async def _remove_all(self, sandbox_id: str, container_ids: Sequence[str]) -> None:
        await asyncio.gather(*(self.runtime.remove_container(c) for c in container_ids))
        await self.runtime.remove_pod_sandbox(sandbox_id)

"""Pods on a runtime: create, list and delete them, the engine holding all state.

The pod model itself (specs, states, labels, rendering) is :mod:`streamsrv.pods`, which does no
I/O; this module drives a :class:`~streamsrv.runtime.base.Runtime` with it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .errors import RequestError
from .pods import ContainerState, PodSpec, SandboxState, pod_filter, pod_phase, render_pod
from .requests import AnyRequest
from .runtime.base import Runtime


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
    """A pod as found in the engine: its sandbox and its app containers."""

    sandbox: SandboxState
    containers: tuple[ContainerState, ...]

    @property
    def spec(self) -> PodSpec:
        return self.sandbox.pod

    @property
    def phase(self) -> str:
        return pod_phase(self.sandbox, self.containers)

    def container_id(self, name: str) -> str | None:
        return next((c.id for c in self.containers if c.name == name), None)

    def render(self) -> dict[str, Any]:
        return render_pod(self.sandbox, self.containers)


class PodManager:
    """Create, list and delete pods on a runtime. The engine holds all state."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._lock = asyncio.Lock()  # one create/delete at a time: names stay unique

    async def list(self, namespace: str | None = None, name: str | None = None) -> list[Pod]:
        sandboxes, containers = await asyncio.gather(
            self.runtime.list_pod_sandboxes(pod_filter(namespace, name)),
            self.runtime.list_containers(pod_filter(namespace, name)),
        )
        by_uid: dict[str, list[ContainerState]] = {}
        for c in containers:
            by_uid.setdefault(c.pod_uid, []).append(c)
        return [Pod(s, tuple(by_uid.get(s.pod.uid, ()))) for s in sandboxes]

    async def get(self, namespace: str, name: str) -> Pod | None:
        found = await self.list(namespace, name)
        return found[0] if found else None

    async def create(self, spec: PodSpec) -> Pod:
        """Run the sandbox, then create and start every container; undo all on failure."""
        async with self._lock:
            if await self.runtime.list_pod_sandboxes(pod_filter(spec.namespace, spec.name)):
                raise PodExists(spec.namespace, spec.name)
            for image in dict.fromkeys(c.image for c in spec.containers):
                await self.runtime.ensure_image(image)
            sandbox_id = await self.runtime.run_pod_sandbox(spec)
            created: list[str] = []
            try:
                for c in spec.containers:
                    created.append(await self.runtime.create_container(sandbox_id, spec, c))
                for cid in created:
                    await self.runtime.start_container(cid)
            except BaseException:
                await asyncio.shield(self._remove_all(sandbox_id, created))
                raise
        pod = await self.get(spec.namespace, spec.name)
        if pod is None:  # removed by someone else in between
            raise LookupError(f'pods "{spec.name}" not found')
        return pod

    async def delete(self, namespace: str, name: str, grace: float | None = None) -> Pod | None:
        async with self._lock:
            pod = await self.get(namespace, name)
            if pod is None:
                return None
            timeout = pod.spec.termination_grace_period if grace is None else grace
            running = [c.id for c in pod.containers if c.state == "running"]
            await asyncio.gather(*(self.runtime.stop_container(c, timeout) for c in running))
            await self._remove_all(pod.sandbox.id, [c.id for c in pod.containers])
            return pod

    async def _remove_all(self, sandbox_id: str, container_ids: Sequence[str]) -> None:
        await asyncio.gather(*(self.runtime.remove_container(c) for c in container_ids))
        await self.runtime.remove_pod_sandbox(sandbox_id)

"""What a container backend implements (the Python side of the kubelet's CRI ``Runtime``).

Runtimes never know which wire protocol carried the bytes, nor pods by name: the gateway
resolves names through :mod:`streamsrv.pods` and the label filters below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ..pods import ContainerSpec, ContainerState, PodSpec, SandboxState


class BackendError(Exception):
    """A backend failed; ``message`` is fit to show to the client."""


class ImageNotFound(BackendError):
    def __init__(self, image: str, detail: str = "") -> None:
        self.image = image
        super().__init__(f'image "{image}" not found{": " + detail if detail else ""}')


class ContainerNotFound(BackendError):
    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        super().__init__(f'container "{container_id}" not found')


class Runtime(Protocol):
    """The pod model of a backend. Every method is safe to call from the event loop."""

    name: str

    async def ensure_image(self, image: str) -> None:
        """Make the image available (present locally, else pulled); raise ImageNotFound."""
        ...

    async def run_pod_sandbox(self, pod: PodSpec) -> str: ...

    async def stop_pod_sandbox(self, sandbox_id: str) -> None: ...

    async def remove_pod_sandbox(self, sandbox_id: str) -> None: ...

    async def list_pod_sandboxes(
        self, labels: Mapping[str, str] | None = None
    ) -> list[SandboxState]: ...

    async def create_container(
        self, sandbox_id: str, pod: PodSpec, container: ContainerSpec
    ) -> str: ...

    async def start_container(self, container_id: str) -> None: ...

    async def stop_container(self, container_id: str, grace_period: float) -> None: ...

    async def remove_container(self, container_id: str) -> None: ...

    async def list_containers(
        self, labels: Mapping[str, str] | None = None
    ) -> list[ContainerState]: ...

    async def close(self) -> None: ...

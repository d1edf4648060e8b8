"""An asyncio client for a CRI v1 endpoint: ``runtime.v1.RuntimeService`` and ``ImageService``.

```python
async with CriClient("unix:///run/streamsrv/cri.sock") as cri:
    print((await cri.version()).runtime_name)
    url = await cri.exec(api_pb2.ExecRequest(container_id=cid, cmd=["sh"], stdin=True, stdout=True))
```

Every method takes and returns the generated ``api_pb2`` messages (or, where the response holds
one value, that value). Any failure of a call, the peer's status or our own (deadline,
connection refused, closed client), is raised as :class:`CriError`. The calls go through our
own gRPC client (:mod:`streamsrv.rpc.channel`, docs/cri.md "The gRPC client"); this module
uses it and ``api_pb2`` only (and ``streamsrv.errors`` for the root of :class:`CriError`),
nothing of the server.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Literal, Self, TypeAlias, TypeVar

from google.protobuf.message import DecodeError, Message

from streamsrv.cri import api_pb2
from streamsrv.errors import StreamsrvError
from streamsrv.rpc.channel import Channel, RpcError
from streamsrv.rpc.http2 import CANCELLED, INTERNAL, STATUS_NAMES

RUNTIME_SERVICE: Final = "runtime.v1.RuntimeService"
IMAGE_SERVICE: Final = "runtime.v1.ImageService"
# Both ways: an ExecSync answer holds a command's whole output (the kubelet allows 16 MiB too).
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
# The default deadline of a call, in seconds: the kubelet's --runtime-request-timeout (2 min).
DEFAULT_TIMEOUT: Final = 120.0

_R = TypeVar("_R", bound=Message)


class _Default(enum.Enum):
    TOKEN = 0


DEFAULT: Final = _Default.TOKEN
"""The value of ``deadline`` meaning "the client's ``timeout``"."""

Deadline: TypeAlias = float | None | Literal[_Default.TOKEN]
"""A call's deadline: seconds, ``None`` for none, or :data:`DEFAULT`."""


class CriError(StreamsrvError):
    """A CRI call failed. ``code`` is the grpc status code's name (``"NOT_FOUND"``,
    ``"UNIMPLEMENTED"``, ``"DEADLINE_EXCEEDED"``, ``"UNAVAILABLE"``, ...), ``details`` the
    status message and ``method`` the full method path (``/runtime.v1.RuntimeService/Version``).
    """

    def __init__(self, method: str, code: str, details: str) -> None:
        super().__init__(f"{method}: {code}: {details}")
        self.method = method
        self.code = code
        self.details = details


def grpc_target(endpoint: str) -> str:
    """The grpc target of a CRI endpoint: ``unix:///path`` (as it is), a bare path (made
    ``unix://``), ``tcp://host:port`` or ``host:port``."""
    if endpoint.startswith(("unix:", "unix-abstract:")):
        return endpoint
    if endpoint.startswith("/"):
        return "unix://" + endpoint
    if endpoint.startswith("tcp://"):
        return endpoint.removeprefix("tcp://").rstrip("/")
    if "://" in endpoint:
        raise ValueError(f"unsupported CRI endpoint {endpoint!r} (want unix://, tcp:// or a path)")
    return endpoint


def _image_spec(image: api_pb2.ImageSpec | str) -> api_pb2.ImageSpec:
    return api_pb2.ImageSpec(image=image) if isinstance(image, str) else image


class CriClient:
    """A client of one CRI endpoint (see :func:`grpc_target` for the forms accepted).

    ``timeout`` is the default deadline of each call in seconds (``None``: none); every method
    takes ``deadline=`` to override it for that call. (``deadline``, because ``timeout`` is the
    name of CRI fields such as ``ExecSyncRequest.timeout``.) The channel is made on the first
    call, so the client may be built outside a running event loop; ``close()`` (or ``async
    with``) releases it, and a call after that raises :class:`CriError` ``CANCELLED``.
    """

    def __init__(self, endpoint: str, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.endpoint = endpoint
        self.target = grpc_target(endpoint)
        self.timeout = timeout
        self._channel: Channel | None = None
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[_R],
        *,
        deadline: Deadline = DEFAULT,
    ) -> _R:
        """Calls ``/service/method`` with ``request`` and decodes the answer as
        ``response_type``: any method, served or not (e.g. to check UNIMPLEMENTED)."""
        path = f"/{service}/{method}"
        if self._closed:
            raise CriError(path, STATUS_NAMES[CANCELLED], "the CRI client is closed")
        timeout = self.timeout if deadline is DEFAULT else deadline
        if self._channel is None:
            self._channel = Channel(self.target, max_message=MAX_MESSAGE_BYTES)
        try:
            data = await self._channel.unary(path, request.SerializeToString(), deadline=timeout)
            return response_type.FromString(data)
        except RpcError as e:
            raise CriError(path, e.name, e.details) from None
        except DecodeError as e:
            raise CriError(path, STATUS_NAMES[INTERNAL], f"an undecodable answer: {e}") from None

    async def _runtime(
        self, method: str, request: Message, response_type: type[_R], deadline: Deadline
    ) -> _R:
        return await self.call(RUNTIME_SERVICE, method, request, response_type, deadline=deadline)

    async def _image(
        self, method: str, request: Message, response_type: type[_R], deadline: Deadline
    ) -> _R:
        return await self.call(IMAGE_SERVICE, method, request, response_type, deadline=deadline)

    # RuntimeService ------------------------------------------------------------------------

    async def version(
        self, api_version: str = "v1", *, deadline: Deadline = DEFAULT
    ) -> api_pb2.VersionResponse:
        req = api_pb2.VersionRequest(version=api_version)
        return await self._runtime("Version", req, api_pb2.VersionResponse, deadline)

    async def status(
        self, verbose: bool = False, *, deadline: Deadline = DEFAULT
    ) -> api_pb2.StatusResponse:
        req = api_pb2.StatusRequest(verbose=verbose)
        return await self._runtime("Status", req, api_pb2.StatusResponse, deadline)

    async def update_runtime_config(
        self, runtime_config: api_pb2.RuntimeConfig, *, deadline: Deadline = DEFAULT
    ) -> None:
        req = api_pb2.UpdateRuntimeConfigRequest(runtime_config=runtime_config)
        await self._runtime(
            "UpdateRuntimeConfig", req, api_pb2.UpdateRuntimeConfigResponse, deadline
        )

    async def run_pod_sandbox(
        self,
        config: api_pb2.PodSandboxConfig,
        runtime_handler: str = "",
        *,
        deadline: Deadline = DEFAULT,
    ) -> str:
        """Returns the new sandbox's id."""
        req = api_pb2.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        resp = await self._runtime("RunPodSandbox", req, api_pb2.RunPodSandboxResponse, deadline)
        return resp.pod_sandbox_id

    async def stop_pod_sandbox(self, pod_sandbox_id: str, *, deadline: Deadline = DEFAULT) -> None:
        req = api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_sandbox_id)
        await self._runtime("StopPodSandbox", req, api_pb2.StopPodSandboxResponse, deadline)

    async def remove_pod_sandbox(
        self, pod_sandbox_id: str, *, deadline: Deadline = DEFAULT
    ) -> None:
        req = api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_sandbox_id)
        await self._runtime("RemovePodSandbox", req, api_pb2.RemovePodSandboxResponse, deadline)

    async def pod_sandbox_status(
        self, pod_sandbox_id: str, verbose: bool = False, *, deadline: Deadline = DEFAULT
    ) -> api_pb2.PodSandboxStatusResponse:
        req = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_sandbox_id, verbose=verbose)
        return await self._runtime(
            "PodSandboxStatus", req, api_pb2.PodSandboxStatusResponse, deadline
        )

    async def list_pod_sandbox(
        self, filter: api_pb2.PodSandboxFilter | None = None, *, deadline: Deadline = DEFAULT
    ) -> list[api_pb2.PodSandbox]:
        req = api_pb2.ListPodSandboxRequest(filter=filter)
        resp = await self._runtime("ListPodSandbox", req, api_pb2.ListPodSandboxResponse, deadline)
        return list(resp.items)

    async def create_container(
        self,
        pod_sandbox_id: str,
        config: api_pb2.ContainerConfig,
        sandbox_config: api_pb2.PodSandboxConfig,
        *,
        deadline: Deadline = DEFAULT,
    ) -> str:
        """Returns the new container's id."""
        req = api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_sandbox_id, config=config, sandbox_config=sandbox_config
        )
        resp = await self._runtime(
            "CreateContainer", req, api_pb2.CreateContainerResponse, deadline
        )
        return resp.container_id

    async def start_container(self, container_id: str, *, deadline: Deadline = DEFAULT) -> None:
        req = api_pb2.StartContainerRequest(container_id=container_id)
        await self._runtime("StartContainer", req, api_pb2.StartContainerResponse, deadline)

    async def stop_container(
        self,
        container_id: str,
        timeout: int = 0,  # noqa: ASYNC109 (the CRI field's name; the deadline is `deadline`)
        *,
        deadline: Deadline = DEFAULT,
    ) -> None:
        """``timeout``: seconds the container gets to stop before it is killed."""
        req = api_pb2.StopContainerRequest(container_id=container_id, timeout=timeout)
        if deadline is DEFAULT and self.timeout is not None:
            deadline = self.timeout + max(timeout, 0)  # the kubelet's: grace plus the default
        await self._runtime("StopContainer", req, api_pb2.StopContainerResponse, deadline)

    async def remove_container(self, container_id: str, *, deadline: Deadline = DEFAULT) -> None:
        req = api_pb2.RemoveContainerRequest(container_id=container_id)
        await self._runtime("RemoveContainer", req, api_pb2.RemoveContainerResponse, deadline)

    async def list_containers(
        self, filter: api_pb2.ContainerFilter | None = None, *, deadline: Deadline = DEFAULT
    ) -> list[api_pb2.Container]:
        req = api_pb2.ListContainersRequest(filter=filter)
        resp = await self._runtime("ListContainers", req, api_pb2.ListContainersResponse, deadline)
        return list(resp.containers)

    async def container_status(
        self, container_id: str, verbose: bool = False, *, deadline: Deadline = DEFAULT
    ) -> api_pb2.ContainerStatusResponse:
        req = api_pb2.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return await self._runtime(
            "ContainerStatus", req, api_pb2.ContainerStatusResponse, deadline
        )

    async def exec_sync(
        self,
        container_id: str,
        cmd: Sequence[str],
        timeout: int = 0,  # noqa: ASYNC109 (the CRI field's name; the deadline is `deadline`)
        *,
        deadline: Deadline = DEFAULT,
    ) -> api_pb2.ExecSyncResponse:
        """Runs ``cmd`` to its end; ``timeout`` (seconds, 0: none) is the runtime's limit on
        the command. A non-zero exit is ``exit_code`` in the answer, not an error."""
        req = api_pb2.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout)
        if deadline is DEFAULT and self.timeout is not None:
            # the kubelet's: the command's own timeout plus the default, or none without one
            deadline = self.timeout + timeout if timeout > 0 else None
        return await self._runtime("ExecSync", req, api_pb2.ExecSyncResponse, deadline)

    async def exec(self, request: api_pb2.ExecRequest, *, deadline: Deadline = DEFAULT) -> str:
        """Returns the URL of the exec session on the stream server."""
        resp = await self._runtime("Exec", request, api_pb2.ExecResponse, deadline)
        return resp.url

    async def attach(self, request: api_pb2.AttachRequest, *, deadline: Deadline = DEFAULT) -> str:
        """Returns the URL of the attach session on the stream server."""
        resp = await self._runtime("Attach", request, api_pb2.AttachResponse, deadline)
        return resp.url

    async def port_forward(
        self, pod_sandbox_id: str, ports: Sequence[int] = (), *, deadline: Deadline = DEFAULT
    ) -> str:
        """Returns the URL of the port-forward session on the stream server."""
        req = api_pb2.PortForwardRequest(pod_sandbox_id=pod_sandbox_id, port=ports)
        resp = await self._runtime("PortForward", req, api_pb2.PortForwardResponse, deadline)
        return resp.url

    # ImageService --------------------------------------------------------------------------

    async def list_images(
        self, filter: api_pb2.ImageFilter | None = None, *, deadline: Deadline = DEFAULT
    ) -> list[api_pb2.Image]:
        req = api_pb2.ListImagesRequest(filter=filter)
        resp = await self._image("ListImages", req, api_pb2.ListImagesResponse, deadline)
        return list(resp.images)

    async def image_status(
        self,
        image: api_pb2.ImageSpec | str,
        verbose: bool = False,
        *,
        deadline: Deadline = DEFAULT,
    ) -> api_pb2.ImageStatusResponse:
        """An image that is not there is an answer without ``image`` (``HasField``), not an
        error."""
        req = api_pb2.ImageStatusRequest(image=_image_spec(image), verbose=verbose)
        return await self._image("ImageStatus", req, api_pb2.ImageStatusResponse, deadline)

    async def pull_image(
        self,
        image: api_pb2.ImageSpec | str,
        auth: api_pb2.AuthConfig | None = None,
        sandbox_config: api_pb2.PodSandboxConfig | None = None,
        *,
        deadline: Deadline = None,
    ) -> str:
        """Returns the pulled image's reference. No deadline unless given: a pull takes as
        long as it takes (the kubelet sets none either)."""
        req = api_pb2.PullImageRequest(
            image=_image_spec(image), auth=auth, sandbox_config=sandbox_config
        )
        resp = await self._image("PullImage", req, api_pb2.PullImageResponse, deadline)
        return resp.image_ref

    async def remove_image(
        self, image: api_pb2.ImageSpec | str, *, deadline: Deadline = DEFAULT
    ) -> None:
        req = api_pb2.RemoveImageRequest(image=_image_spec(image))
        await self._image("RemoveImage", req, api_pb2.RemoveImageResponse, deadline)

    async def image_fs_info(self, *, deadline: Deadline = DEFAULT) -> api_pb2.ImageFsInfoResponse:
        req = api_pb2.ImageFsInfoRequest()
        return await self._image("ImageFsInfo", req, api_pb2.ImageFsInfoResponse, deadline)


__all__ = [
    "DEFAULT",
    "DEFAULT_TIMEOUT",
    "IMAGE_SERVICE",
    "MAX_MESSAGE_BYTES",
    "RUNTIME_SERVICE",
    "CriClient",
    "CriError",
    "Deadline",
    "grpc_target",
]

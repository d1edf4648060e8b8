"""streamsrv.cri: the generated messages are wire-compatible with CRI v1, and CriClient talks to
a real grpc.aio server on a unix socket (round trip, errors, deadlines, 16 MiB messages)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from streamsrv.cri import api_pb2
from streamsrv.cri.client import (
    IMAGE_SERVICE,
    RUNTIME_SERVICE,
    CriClient,
    CriError,
    grpc_target,
)
from streamsrv.errors import StreamsrvError

# ------------------------------------------------------------------------------------------
# Wire compatibility: bytes built by hand with upstream's field numbers.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _key(field, 2) + _varint(len(data)) + data


def test_pod_sandbox_metadata_field_numbers() -> None:
    wire = _bytes(1, "web") + _bytes(2, "uid-1") + _bytes(3, "default") + _int(4, 3)
    msg = api_pb2.PodSandboxMetadata(name="web", uid="uid-1", namespace="default", attempt=3)
    assert msg.SerializeToString() == wire
    assert api_pb2.PodSandboxMetadata.FromString(wire) == msg


def test_exec_and_attach_field_numbers_differ_like_upstream() -> None:
    # ExecRequest: tty=3 stdin=4 stdout=5 stderr=6; AttachRequest: stdin=2 tty=3 stdout=4 stderr=5
    exec_wire = _bytes(1, "c1") + _bytes(2, "sh") + _bytes(2, "-c") + _int(3, 1) + _int(4, 1)
    exec_req = api_pb2.ExecRequest.FromString(exec_wire + _int(5, 1))
    assert list(exec_req.cmd) == ["sh", "-c"]
    assert (exec_req.tty, exec_req.stdin, exec_req.stdout, exec_req.stderr) == (
        True,
        True,
        True,
        False,
    )
    attach = api_pb2.AttachRequest.FromString(_bytes(1, "c1") + _int(2, 1) + _int(5, 1))
    assert (attach.stdin, attach.tty, attach.stdout, attach.stderr) == (True, False, False, True)


def test_nested_maps_enums_and_high_field_numbers() -> None:
    # ContainerConfig: metadata=1, image=2 (ImageSpec.user_specified_image=18), labels=9 (map:
    # key=1 value=2), tty=14, linux=15 -> security_context=2 -> namespace_options=3 -> pid=2.
    ns = _int(2, 2)  # NamespaceMode.NODE
    linux = _bytes(2, _bytes(3, ns))
    wire = (
        _bytes(1, _bytes(1, "shell") + _int(2, 1))
        + _bytes(2, _bytes(1, "busybox") + _bytes(18, "busybox:latest"))
        + _bytes(9, _bytes(1, "app") + _bytes(2, "demo"))
        + _int(14, 1)
        + _bytes(15, linux)
    )
    cfg = api_pb2.ContainerConfig.FromString(wire)
    assert cfg.metadata.name == "shell" and cfg.metadata.attempt == 1
    assert cfg.image.image == "busybox" and cfg.image.user_specified_image == "busybox:latest"
    assert dict(cfg.labels) == {"app": "demo"}
    assert cfg.tty
    assert cfg.linux.security_context.namespace_options.pid == api_pb2.NODE
    assert api_pb2.ContainerConfig.FromString(cfg.SerializeToString()) == cfg
    # Enum values are upstream's.
    assert (api_pb2.POD, api_pb2.CONTAINER, api_pb2.NODE, api_pb2.TARGET) == (0, 1, 2, 3)
    assert (api_pb2.SANDBOX_READY, api_pb2.SANDBOX_NOTREADY) == (0, 1)
    assert (api_pb2.CONTAINER_CREATED, api_pb2.CONTAINER_EXITED, api_pb2.CONTAINER_UNKNOWN) == (
        0,
        2,
        3,
    )
    assert api_pb2.SIGNAL_SIGTERM == 23 and api_pb2.SIGNAL_SIGRTMAX == 65
    # A field we left out (PodSandboxConfig.windows = 9) survives as an unknown field.
    sandbox_wire = _bytes(2, "host") + _bytes(9, _bytes(1, b"x"))
    assert api_pb2.PodSandboxConfig.FromString(sandbox_wire).SerializeToString() == sandbox_wire


def test_services_and_method_types() -> None:
    want = {
        "RuntimeService": [
            "Version",
            "RunPodSandbox",
            "StopPodSandbox",
            "RemovePodSandbox",
            "PodSandboxStatus",
            "ListPodSandbox",
            "CreateContainer",
            "StartContainer",
            "StopContainer",
            "RemoveContainer",
            "ListContainers",
            "ContainerStatus",
            "ExecSync",
            "Exec",
            "Attach",
            "PortForward",
            "UpdateRuntimeConfig",
            "Status",
        ],
        "ImageService": ["ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"],
    }
    assert api_pb2.DESCRIPTOR.package == "runtime.v1"
    for service_name, methods in want.items():
        service = api_pb2.DESCRIPTOR.services_by_name[service_name]
        assert service.full_name in (RUNTIME_SERVICE, IMAGE_SERVICE)
        assert sorted(m.name for m in service.methods) == sorted(methods)
        for m in service.methods:
            assert m.input_type.name == f"{m.name}Request"
            assert m.output_type.name == f"{m.name}Response"


# ------------------------------------------------------------------------------------------
# The client against a grpc.aio server on a unix socket.


@pytest.mark.parametrize(
    ("endpoint", "target"),
    [
        ("unix:///run/cri.sock", "unix:///run/cri.sock"),
        ("/run/cri.sock", "unix:///run/cri.sock"),
        ("tcp://127.0.0.1:9000", "127.0.0.1:9000"),
        ("localhost:9000", "localhost:9000"),
    ],
)
def test_grpc_target(endpoint: str, target: str) -> None:
    assert grpc_target(endpoint) == target


def test_grpc_target_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="npipe"):
        grpc_target("npipe:////./pipe/cri")


def _handler(
    behavior: Any, request_type: Any, response_type: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )


async def _version(
    request: api_pb2.VersionRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> api_pb2.VersionResponse:
    return api_pb2.VersionResponse(
        version="0.1.0",
        runtime_name="test",
        runtime_version=f"asked {request.version}",
        runtime_api_version="v1",
    )


async def _container_status(
    request: api_pb2.ContainerStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> api_pb2.ContainerStatusResponse:
    await context.abort(grpc.StatusCode.NOT_FOUND, f"container {request.container_id} not found")
    raise AssertionError("abort returned")


async def _exec_sync(
    request: api_pb2.ExecSyncRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> api_pb2.ExecSyncResponse:
    size = int(request.cmd[1])
    return api_pb2.ExecSyncResponse(stdout=b"x" * size, exit_code=7)


async def _stop_container(
    request: api_pb2.StopContainerRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> api_pb2.StopContainerResponse:
    await asyncio.sleep(10)
    return api_pb2.StopContainerResponse()


async def _pull_image(
    request: api_pb2.PullImageRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> api_pb2.PullImageResponse:
    return api_pb2.PullImageResponse(image_ref=f"sha256:{request.image.image}")


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[str]:
    runtime = grpc.method_handlers_generic_handler(
        RUNTIME_SERVICE,
        {
            "Version": _handler(_version, api_pb2.VersionRequest, api_pb2.VersionResponse),
            "ContainerStatus": _handler(
                _container_status, api_pb2.ContainerStatusRequest, api_pb2.ContainerStatusResponse
            ),
            "ExecSync": _handler(_exec_sync, api_pb2.ExecSyncRequest, api_pb2.ExecSyncResponse),
            "StopContainer": _handler(
                _stop_container, api_pb2.StopContainerRequest, api_pb2.StopContainerResponse
            ),
        },
    )
    images = grpc.method_handlers_generic_handler(
        IMAGE_SERVICE,
        {"PullImage": _handler(_pull_image, api_pb2.PullImageRequest, api_pb2.PullImageResponse)},
    )
    server = grpc.aio.server(
        handlers=[runtime, images],
        options=[("grpc.max_send_message_length", 16 * 1024 * 1024)],
    )
    path = tmp_path / "cri.sock"
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    try:
        yield f"unix://{path}"
    finally:
        await server.stop(None)


async def test_version_round_trip(endpoint: str) -> None:
    async with CriClient(endpoint) as cri:
        resp = await cri.version()
        assert isinstance(resp, api_pb2.VersionResponse)
        assert (resp.runtime_name, resp.runtime_version, resp.runtime_api_version) == (
            "test",
            "asked v1",
            "v1",
        )
        # the bare path form reaches the same server
    async with CriClient(endpoint.removeprefix("unix://")) as cri:
        assert (await cri.version("0.1.0")).runtime_version == "asked 0.1.0"


async def test_aborted_call_raises_cri_error(endpoint: str) -> None:
    async with CriClient(endpoint) as cri:
        with pytest.raises(CriError) as info:
            await cri.container_status("abc")
    err = info.value
    assert isinstance(err, StreamsrvError)
    assert err.code == "NOT_FOUND"
    assert err.details == "container abc not found"
    assert err.method == "/runtime.v1.RuntimeService/ContainerStatus"


async def test_unimplemented_method_through_call(endpoint: str) -> None:
    async with CriClient(endpoint) as cri:
        with pytest.raises(CriError) as info:
            await cri.call(
                RUNTIME_SERVICE,
                "ContainerStats",
                api_pb2.ContainerStatusRequest(container_id="abc"),
                api_pb2.ContainerStatusResponse,
            )
        assert info.value.code == "UNIMPLEMENTED"
        with pytest.raises(CriError) as info:
            await cri.list_images()  # not served by this test server at all
        assert info.value.code == "UNIMPLEMENTED"


async def test_exec_sync_output_past_grpc_default_limit(endpoint: str) -> None:
    size = 6 * 1024 * 1024  # grpc's default receive limit is 4 MiB
    async with CriClient(endpoint) as cri:
        resp = await cri.exec_sync("c1", ["head", str(size)], timeout=5)
    assert len(resp.stdout) == size and resp.exit_code == 7


async def test_deadline_and_closed_client(endpoint: str) -> None:
    cri = CriClient(endpoint, timeout=0.2)
    with pytest.raises(CriError) as info:
        await cri.stop_container("c1", timeout=0)
    assert info.value.code == "DEADLINE_EXCEEDED"
    with pytest.raises(CriError) as info:
        await cri.call(
            RUNTIME_SERVICE,
            "StopContainer",
            api_pb2.StopContainerRequest(container_id="c1"),
            api_pb2.StopContainerResponse,
            deadline=0.1,
        )
    assert info.value.code == "DEADLINE_EXCEEDED"
    assert await cri.pull_image("busybox") == "sha256:busybox"  # no deadline by default
    await cri.close()
    with pytest.raises(CriError) as info:
        await cri.version()
    assert info.value.code == "CANCELLED"


async def test_nothing_listening(tmp_path: Path) -> None:
    async with CriClient(str(tmp_path / "absent.sock"), timeout=5) as cri:
        with pytest.raises(CriError) as info:
            await cri.version()
    assert info.value.code == "UNAVAILABLE"

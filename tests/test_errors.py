"""One root exception, and one error type for every runtime failure (docs/architecture.md)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from streamsrv.errors import (
    BackendError,
    EngineUnavailable,
    ProtocolError,
    RequestError,
    StreamsrvError,
)
from streamsrv.podmanager import PodExists, PodManager
from streamsrv.pods import InvalidPod, parse_pod
from streamsrv.protocol import channels, dockermux, resize, spdy
from streamsrv.requests import InvalidRequest
from streamsrv.runtime.base import ContainerNotFound, ImageNotFound
from streamsrv.runtime.docker import DockerRuntime
from streamsrv.runtime.process import ProcessRuntime
from streamsrv.tokens import CacheFull, TokenError, TokenNotFound


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (spdy.ProtocolError, ProtocolError),
        (spdy.LocalProtocolError, ProtocolError),
        (spdy.RemoteProtocolError, ProtocolError),
        (channels.ChannelProtocolError, ProtocolError),
        (resize.ResizeStreamError, ProtocolError),
        (dockermux.DemuxError, ProtocolError),
        (InvalidRequest, RequestError),
        (TokenError, RequestError),
        (TokenNotFound, RequestError),
        (CacheFull, RequestError),
        (InvalidPod, RequestError),
        (PodExists, RequestError),
        (ImageNotFound, BackendError),
        (EngineUnavailable, BackendError),
        (ContainerNotFound, BackendError),
    ],
)
def test_every_error_is_a_streamsrv_error_of_its_kind(error: type, kind: type) -> None:
    assert issubclass(error, kind)
    assert issubclass(kind, StreamsrvError)


def test_no_engine_at_all_is_a_backend_error(tmp_path: Path) -> None:
    """In a child process: the docker SDK leaks the socket of its failed version probe."""
    code = (
        "from streamsrv.errors import BackendError\n"
        "from streamsrv.runtime.docker import DockerRuntime\n"
        "try:\n"
        f"    DockerRuntime(base_url='unix://{tmp_path}/none.sock')\n"
        "except BackendError as exc:\n"
        "    print(type(exc).__name__ + ':', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    # EngineUnavailable (a BackendError): the gateway answers 503 naming the engine.
    assert out.startswith("EngineUnavailable: the docker engine at unix://"), out
    assert "is unavailable" in out, out


async def test_an_engine_that_fails_is_a_backend_error(tmp_path: Path) -> None:
    """Old main let requests' ConnectionError escape (a bare 500 in the gateway)."""
    sock = tmp_path / "engine.sock"

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.41", "Version": "fake"})

    async def hang_up(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()  # the engine dies mid-request
        return web.Response()

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"message": "engine is broken"}, status=500)

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1.41/_ping", hang_up)
    app.router.add_get("/_ping", hang_up)
    app.router.add_get("/v1.41/containers/{id}/json", broken)
    app.router.add_get("/v1.41/images/{name}/json", hang_up)
    app.router.add_delete("/v1.41/containers/{id}", hang_up)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(sock)).start()
    runtime = await asyncio.to_thread(DockerRuntime, base_url=f"unix://{sock}")
    try:
        with pytest.raises(BackendError, match="docker engine at unix://"):
            await runtime.ping()
        with pytest.raises(BackendError, match="engine is broken"):
            await runtime.dial("sandbox", 80)
        # Calls that give some engine answers a meaning of their own (image absent, container
        # already gone) map everything else the same way.
        with pytest.raises(BackendError, match="docker engine at unix://"):
            await runtime.ensure_image("busybox:latest")
        with pytest.raises(BackendError, match="docker engine at unix://"):
            await runtime.remove_container("gone")
    finally:
        await runtime.close()
        await runner.cleanup()


async def test_a_refused_dial_is_a_backend_error(tmp_path: Path) -> None:
    """Old main's runtimes raised ConnectionRefusedError (or BackendError, undocumented)."""
    runtime = ProcessRuntime(tmp_path / "pods")
    try:
        pod = await PodManager(runtime).create(
            parse_pod(
                {
                    "metadata": {"name": "dial"},
                    "spec": {
                        "containers": [{"name": "c", "image": "x", "command": ["sleep", "60"]}]
                    },
                }
            )
        )
        with socket.socket() as probe:  # a port with nothing listening
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with pytest.raises(BackendError, match=f"localhost:{port}"):
            await runtime.dial(pod.sandbox.id, port)
        with pytest.raises(BackendError, match="not running"):
            await runtime.dial("no-such-sandbox", port)
    finally:
        await runtime.close()

"""One root exception, and one error type for every runtime failure (docs/architecture.md)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from aiohttp import web

from streamsrv.errors import BackendError, ProtocolError, RequestError, StreamsrvError
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
        (ContainerNotFound, BackendError),
    ],
)
def test_every_error_is_a_streamsrv_error_of_its_kind(error: type, kind: type) -> None:
    assert issubclass(error, kind)
    assert issubclass(kind, StreamsrvError)


# The docker SDK leaves the socket of its failed version probe to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_an_engine_that_does_not_answer_is_a_backend_error(tmp_path: Path) -> None:
    """Old main let requests' ConnectionError escape (a bare 500 in the gateway)."""
    sock = tmp_path / "engine.sock"
    with pytest.raises(BackendError, match="docker engine at unix://"):
        DockerRuntime(base_url=f"unix://{sock}")  # nothing there at all

    # An engine that answers the SDK's version probe, then goes away.
    async def version(request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.41", "Version": "fake"})

    app = web.Application()
    app.router.add_get("/version", version)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.UnixSite(runner, str(sock))
    await site.start()
    runtime = await asyncio.to_thread(DockerRuntime, base_url=f"unix://{sock}")
    await runner.cleanup()
    try:
        with pytest.raises(BackendError, match="docker engine at unix://"):
            await runtime.ping()
        with pytest.raises(BackendError):
            await runtime.dial("sandbox", 80)
    finally:
        await runtime.close()


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

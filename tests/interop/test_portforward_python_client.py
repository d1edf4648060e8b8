"""The Python client's port-forward (WebSocket channel protocol, two channels per port)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client, config
from kubernetes.stream import portforward

from tests.conftest import RUNTIMES, Server, server_with_pod
from tests.interop.test_exec_kubectl import sessions
from tests.interop.test_portforward_kubectl import (
    BLOB,
    BLOB_SIZE,
    ECHO,
    NOTHING,
    POD,
    blob_sha,
    manifest,
)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module", params=RUNTIMES)
def core(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[client.CoreV1Api, Server]]:
    # busybox nc's echo also on the host: one connection at a time never met its resets
    with server_with_pod(tmp_path_factory.mktemp("pypf"), manifest(), request.param) as server:
        api_client = config.new_client_from_config(config_file=str(server.kubeconfig))
        yield client.CoreV1Api(api_client), server
        api_client.close()


def forward(core: client.CoreV1Api, ports: str):  # type: ignore[no-untyped-def]
    return portforward(core.connect_get_namespaced_pod_portforward, POD, "default", ports=ports)


def close(pf) -> None:  # type: ignore[no-untyped-def]
    """Close a client forward; the client leaves its WebSocket open after `close()`."""
    pf.close()
    deadline = time.monotonic() + 10
    while pf.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(Exception):
        pf.websocket.shutdown()


def test_echo_64mib_and_download(core: tuple[client.CoreV1Api, Server]) -> None:
    api, server = core
    before = sessions(server, "portforward", "websocket")
    # One port per session: the client's single proxy thread would stall on the unread
    # download while the echo test runs (a client-side limit, not the server's).
    pf = forward(api, str(ECHO))
    try:
        echo = pf.socket(ECHO)
        data = os.urandom(64 * 1024 * 1024)

        got = bytearray()
        progress = threading.Condition()

        def send() -> None:
            # Stay at most 2 MiB ahead: the client's one proxy thread blocks in a WebSocket
            # send while the echo's reply fills the other direction (a client-side deadlock
            # whenever more than the buffers hold is in flight).
            view = memoryview(data)
            sent = 0
            while sent < len(view):
                with progress:
                    while sent - len(got) >= (2 << 20):
                        progress.wait(timeout=1)
                echo.sendall(view[sent : sent + (1 << 16)])
                sent += 1 << 16

        writer = threading.Thread(target=send)
        writer.start()
        while len(got) < len(data):
            chunk = echo.recv(1 << 20)
            assert chunk, "the echo ended early"
            with progress:
                got += chunk
                progress.notify()
        writer.join(30)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        assert pf.error(ECHO) is None
    finally:
        close(pf)
    pf = forward(api, str(BLOB))
    try:
        blob = pf.socket(BLOB)
        digest, total = hashlib.sha256(), 0
        while chunk := blob.recv(1 << 20):
            digest.update(chunk)
            total += len(chunk)
        assert total == BLOB_SIZE
        assert digest.hexdigest() == blob_sha(server)
        assert pf.error(BLOB) is None
    finally:
        close(pf)
    assert sessions(server, "portforward", "websocket") == before + 2


def test_refused_port_reports_an_error(core: tuple[client.CoreV1Api, Server]) -> None:
    api, _ = core
    pf = forward(api, str(NOTHING))
    try:
        sock = pf.socket(NOTHING)
        sock.settimeout(15)
        assert sock.recv(10) == b""
        error = pf.error(NOTHING)
        assert error is not None and f"error forwarding port {NOTHING}" in error
    finally:
        close(pf)


async def test_kubelet_style_port_query_and_v4_preamble(
    core: tuple[client.CoreV1Api, Server],
) -> None:
    """`?port=` (the runtime URL's name) works too; each channel opens with the port, LE."""
    import ssl

    import aiohttp

    _, server = core
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    url = f"{server.url}/api/v1/namespaces/default/pods/{POD}/portforward?port={ECHO}"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            url, protocols=["v4.channel.k8s.io"], ssl=ctx,
            headers={"Authorization": f"Bearer {server.token}"},
        ) as ws,
    ):  # fmt: skip
        sock = ws.get_extra_info("socket")
        first = [(await ws.receive_bytes()) for _ in range(2)]
        assert first == [
            bytes([0]) + ECHO.to_bytes(2, "little"),
            bytes([1]) + ECHO.to_bytes(2, "little"),
        ]
        await ws.send_bytes(b"\x00ping")
        got = b""
        while len(got) < 4:
            msg = await ws.receive_bytes()
            assert msg[0] == 0
            got += msg[1:]
        assert got == b"ping"
    # Closing a TLS WebSocket only starts the TLS shutdown: let it finish before this test's
    # event loop closes, or the socket is left to the collector (a ResourceWarning that
    # CI once reported against whichever test came next).
    for _ in range(1000):  # at most 10 s
        if sock.fileno() == -1:
            break
        await asyncio.sleep(0.01)
    assert sock.fileno() == -1

"""What an open session keeps alive in the server (idle memory, docs/benchmarks.md row 5).

In process, on the process runtime: the gateway's exec, attach and port-forward handlers read
the pod afresh for each request; a session must not hold that pod (its manifest, every
container's state) for as long as it lasts.
"""

from __future__ import annotations

import gc
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streamsrv.app import make_app
from streamsrv.podmanager import Pod, PodManager
from streamsrv.pods import parse_pod
from streamsrv.runtime.process import ProcessRuntime
from streamsrv.server import StreamServer

TOKEN = "memory-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SESSIONS = 5


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    runtime = ProcessRuntime(tmp_path / "pods")
    manager = PodManager(runtime)
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "held", "namespace": "default"},
        "spec": {
            "containers": [
                {"name": "main", "image": "img:1", "command": ["sleep", "600"], "stdin": True}
            ]
        },
    }
    await manager.create(parse_pod(doc))
    client = TestClient(TestServer(make_app(manager, TOKEN, StreamServer(runtime))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await runtime.close()


def live_pods() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is Pod)


PATHS = {
    "exec": "exec?command=cat&stdin=true&stdout=true",
    "attach": "attach?stdin=true&stdout=true",
}


@pytest.mark.parametrize("kind", sorted(PATHS))
async def test_an_open_session_holds_no_pod(client: TestClient[Any, Any], kind: str) -> None:
    base = "/api/v1/namespaces/default/pods/held/"
    sockets = []
    try:
        for _ in range(2):  # the controller's own view of the pod settles first
            ws = await client.ws_connect(
                base + PATHS[kind], protocols=["v5.channel.k8s.io"], headers=AUTH
            )
            await ws.receive(timeout=30)  # established: the empty first message
            sockets.append(ws)
        before = live_pods()
        for _ in range(SESSIONS):
            ws = await client.ws_connect(
                base + PATHS[kind], protocols=["v5.channel.k8s.io"], headers=AUTH
            )
            await ws.receive(timeout=30)
            sockets.append(ws)
        assert live_pods() <= before, f"{SESSIONS} more open sessions kept pods alive"
    finally:
        for ws in sockets:
            await ws.close()


async def test_an_open_port_forward_holds_no_pod(client: TestClient[Any, Any]) -> None:
    with socket.socket() as spare:  # a port nothing listens on: the tunnel is refused, not open
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    path = f"/api/v1/namespaces/default/pods/held/portforward?ports={port}"
    sockets = []
    try:
        for _ in range(2):
            sockets.append(
                await client.ws_connect(path, protocols=["v4.channel.k8s.io"], headers=AUTH)
            )
        before = live_pods()
        for _ in range(SESSIONS):
            sockets.append(
                await client.ws_connect(path, protocols=["v4.channel.k8s.io"], headers=AUTH)
            )
        assert live_pods() <= before, f"{SESSIONS} more port-forwards kept pods alive"
    finally:
        for ws in sockets:
            await ws.close()

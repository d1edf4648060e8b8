"""Every failure on the gateway is a Status: an engine that cannot be reached is a 503 naming
it (kubectl prints it and may retry), any other failure a 500 with a message; never aiohttp's
bare "Server got itself in trouble". And every route that reveals anything needs the token."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streamsrv.app import make_app
from streamsrv.podmanager import PodManager
from streamsrv.runtime.docker import DockerRuntime
from streamsrv.server import StreamServer

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Engine:
    """A Docker engine stand-in on a unix socket that can go away (and come back)."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def version(request: web.Request) -> web.Response:
            return web.json_response({"ApiVersion": "1.41", "Version": "fake"})

        async def empty_list(request: web.Request) -> web.Response:
            return web.json_response([])

        app = web.Application()
        app.router.add_get("/version", version)
        app.router.add_get("/v1.41/containers/json", empty_list)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.UnixSite(self.runner, str(self.sock)).start()

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        self.sock.unlink(missing_ok=True)


async def status_of(client: TestClient[Any, Any], path: str) -> tuple[int, dict[str, Any], Any]:
    async with client.get(path, headers=AUTH) as resp:
        return resp.status, json.loads(await resp.text()), resp.headers


async def test_engine_down_is_a_503_status_naming_it_and_back_when_it_is(
    tmp_path: Path,
) -> None:
    engine = Engine(tmp_path / "engine.sock")
    await engine.start()
    runtime = await asyncio.to_thread(DockerRuntime, base_url=f"unix://{engine.sock}")
    app = make_app(PodManager(runtime), TOKEN, StreamServer(runtime))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        code, body, _ = await status_of(client, "/api/v1/namespaces/default/pods")
        assert code == 200 and body["items"] == []

        await engine.stop()
        for path in (
            "/api/v1/namespaces/default/pods",
            "/api/v1/namespaces/default/pods/p",
            "/api/v1/namespaces/default/pods/p/exec?command=true&stdout=1",
        ):
            code, body, headers = await status_of(client, path)
            assert code == 503, (path, code, body)
            assert body["kind"] == "Status" and body["reason"] == "ServiceUnavailable", body
            assert f"the docker engine at unix://{engine.sock} is unavailable" in body["message"]
            assert headers["Retry-After"].isdigit()
        async with client.delete("/api/v1/namespaces/default/pods/p", headers=AUTH) as resp:
            assert resp.status == 503

        await engine.start()  # the engine is back: so is the gateway, with nothing restarted
        code, body, _ = await status_of(client, "/api/v1/namespaces/default/pods")
        assert code == 200 and body["items"] == []
    finally:
        await client.close()
        await runtime.close()
        await engine.stop()


class Broken:
    """A runtime with a bug: every listing raises something that is not a BackendError."""

    name = "broken"

    async def list_pod_sandboxes(self, labels: Any = None) -> Any:
        raise KeyError("a bug")

    async def list_containers(self, labels: Any = None) -> Any:
        return []


async def test_a_bug_is_a_500_status_not_a_bare_page() -> None:
    runtime = Broken()
    app = make_app(PodManager(runtime), TOKEN, StreamServer(runtime))  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        code, body, _ = await status_of(client, "/api/v1/pods")
    assert code == 500
    assert body["kind"] == "Status" and body["reason"] == "InternalError"
    assert "KeyError" in body["message"]


@pytest.mark.parametrize("path", ["/version", "/metrics", "/api", "/api/v1/pods", "/openapi/v3"])
async def test_every_route_that_reveals_anything_needs_the_token(path: str) -> None:
    runtime = Broken()
    app = make_app(PodManager(runtime), TOKEN, StreamServer(runtime))  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with client.get(path, headers=headers) as resp:
                assert resp.status == 401, (path, headers)
                assert json.loads(await resp.text())["reason"] == "Unauthorized"
        async with client.get("/healthz") as resp:
            assert resp.status == 200  # reveals nothing
        if path in ("/version", "/metrics"):
            async with client.get(path, headers=AUTH) as resp:
                assert resp.status == 200


async def test_a_client_gone_during_a_request_is_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ConnectionResetError from a client that left (in an upgrade's prepare, say) is not
    logged as a gateway failure with a traceback (99 of them in one fuzz run)."""

    class Gone(Broken):
        async def list_pod_sandboxes(self, labels: Any = None) -> Any:
            raise ConnectionResetError("Cannot write to closing transport")

    runtime = Gone()
    app = make_app(PodManager(runtime), TOKEN, StreamServer(runtime))  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        with contextlib.suppress(aiohttp.ClientError):
            async with client.get("/api/v1/pods", headers=AUTH) as resp:
                await resp.read()
    assert not [r for r in caplog.records if r.name == "streamsrv.gateway"], caplog.text

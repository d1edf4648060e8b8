"""The browser terminal's server side: static files, headers and the one-time session URLs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streamsrv.app import make_app
from streamsrv.gateway import STREAMS
from streamsrv.podmanager import PodManager
from streamsrv.pods import parse_pod
from streamsrv.runtime.process import ProcessRuntime
from streamsrv.server import AttachRequest, StreamServer
from tests.conftest import pod_manifest

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SESSIONS = "/api/streamsrv/v1/namespaces/default/pods/{}/sessions"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    runtime = ProcessRuntime(tmp_path / "pods")
    manager = PodManager(runtime)
    await manager.create(
        parse_pod(
            pod_manifest(
                "web",
                {"name": "shell", "image": "x", "command": ["sleep", "1000"]},
                {"name": "tty", "image": "x", "command": ["sh"], "stdin": True, "tty": True},
            )
        )
    )
    app = make_app(manager, TOKEN, StreamServer(runtime))
    async with TestClient(TestServer(app)) as c:
        yield c
    await runtime.close()


async def test_page_and_static_files_carry_a_strict_policy(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get("/ui", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/ui/"
    for path in ("/ui/", "/ui/static/terminal.js", "/ui/static/vendor/xterm.mjs"):
        resp = await client.get(path)
        assert resp.status == 200, path
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-eval" not in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    resp = await client.get("/ui/static/vendor/LICENSE.xterm")
    assert "MIT" in await resp.text() or "Permission is hereby granted" in await resp.text()


async def test_static_files_do_not_escape_their_directory(client: TestClient) -> None:  # type: ignore[type-arg]
    for path in (
        "/ui/static/../webui.py",
        "/ui/static/%2e%2e/webui.py",
        "/ui/static/../../pyproject.toml",
    ):
        resp = await client.get(path)
        assert resp.status in (403, 404), path
        assert "SECURITY_HEADERS" not in await resp.text()


async def test_session_needs_the_bearer_token(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.post(SESSIONS.format("web"), json={"container": "shell"})
    assert resp.status == 401


@pytest.mark.parametrize(
    "body, message",
    [
        ([1, 2], "JSON object"),
        ({"mode": "rm -rf"}, "mode"),
        ({"container": "shell", "command": []}, "non-empty list"),
        ({"container": "shell", "command": "sh"}, "command"),
        ({"container": "shell", "tty": "yes"}, "tty"),
        ({"container": "nope"}, "container nope is not valid"),
        ({}, "a container name must be specified"),
    ],
)
async def test_bad_session_requests_get_400(client: TestClient, body: object, message: str) -> None:  # type: ignore[type-arg]
    resp = await client.post(SESSIONS.format("web"), json=body, headers=AUTH)
    assert resp.status == 400
    assert message in (await resp.json())["message"]


async def test_unknown_pod_is_404(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.post(SESSIONS.format("ghost"), json={"container": "shell"}, headers=AUTH)
    assert resp.status == 404


async def test_a_session_url_works_once_over_websocket(client: TestClient) -> None:  # type: ignore[type-arg]
    body = {"container": "shell", "command": ["sh", "-c", "echo hi-$((1+2))"], "tty": False,
            "stdin": False}  # fmt: skip
    resp = await client.post(SESSIONS.format("web"), json=body, headers=AUTH)
    assert resp.status == 200
    url = (await resp.json())["url"]
    assert url.startswith("/exec/")
    ws = await client.ws_connect(url, protocols=["v5.channel.k8s.io"])
    got = b""
    async for msg in ws:
        if msg.data[:1] == b"\x01":
            got += msg.data[1:]
        elif msg.data[:1] == b"\x03":
            assert b'"Success"' in msg.data
    assert got == b"hi-3\n"
    again = await client.get(url)
    assert again.status == 404  # single use


async def test_attach_read_only_asks_for_no_stdin(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.post(
        SESSIONS.format("web"), json={"container": "tty", "mode": "attach", "stdin": False},
        headers=AUTH,
    )  # fmt: skip
    data = await resp.json()
    assert resp.status == 200 and data["url"].startswith("/attach/") and data["tty"] is True
    token = data["url"].rsplit("/", 1)[1]
    req = client.app[STREAMS].cache.consume("attach", token)  # what the socket would run
    assert isinstance(req, AttachRequest)
    assert (req.stdin, req.stdout, req.tty) == (False, True, True)

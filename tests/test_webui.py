"""The browser terminal's server side: static files, headers and the one-time session URLs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streamsrv.app import make_app
from streamsrv.gateway import STREAMS
from streamsrv.podmanager import PodManager
from streamsrv.pods import parse_pod
from streamsrv.runtime.process import ProcessRuntime
from streamsrv.server import AttachRequest, ExecRequest, StreamServer
from streamsrv.webui import WEB
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


def _directives(csp: str) -> dict[str, list[str]]:
    out = {}
    for part in csp.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


async def test_page_and_static_files_carry_a_strict_policy(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get("/ui", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/ui/"
    scripts = [f"/ui/static/{p.name}" for p in sorted(WEB.glob("*.js"))]
    vendor = [
        f"/ui/static/vendor/{name}"
        for name in ("xterm.mjs", "addon-fit.mjs", "addon-search.mjs", "asciinema-player.min.js")
    ]
    assert "/ui/static/app.js" in scripts and "/ui/static/terminal.js" in scripts
    for path in ["/ui/", *scripts, *vendor, "/ui/static/vendor/asciinema-player.css"]:
        resp = await client.get(path)
        assert resp.status == 200, path
        policy = _directives(resp.headers["Content-Security-Policy"])
        # Scripts from the server only: no inline script, no eval; WebAssembly compilation
        # (asciinema-player's terminal emulator) is the one thing added.
        assert sorted(policy["script-src"]) == ["'self'", "'wasm-unsafe-eval'"], path
        assert policy["default-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        if path.endswith(("js", ".mjs")):  # modules with another type are refused under nosniff
            assert "javascript" in resp.headers["Content-Type"], path
    for name in ("xterm", "addon-fit", "addon-search", "solid-js", "asciinema-player"):
        resp = await client.get(f"/ui/static/vendor/LICENSE.{name}")
        text = await resp.text()
        assert resp.status == 200 and ("Permission is hereby granted" in text or "Apache" in text)


async def test_root_redirects_to_the_page_without_a_token(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/ui/"
    assert "Content-Security-Policy" in resp.headers
    assert await resp.text() == ""  # nothing revealed
    resp = await client.get("/")  # followed: the page, which asks for the token itself
    assert resp.status == 200 and str(resp.url).endswith("/ui/")
    assert '<script type="module" src="/ui/static/app.js">' in await resp.text()


async def test_the_page_names_only_files_that_exist() -> None:
    """Every file index.html loads and every module a module imports is in web/: a rename that
    forgets one breaks the page in a browser only."""
    html = (WEB / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="/ui/static/([^"]+)"', html):
        assert (WEB / ref).is_file(), ref
    for module in [*WEB.glob("*.js")]:
        for ref in re.findall(r'^import .* from "\./([^"]+)";$', module.read_text(), re.M):
            assert (WEB / ref).is_file(), f"{module.name}: {ref}"
    player = re.search(r'src: "/ui/static/([^"]+)"', (WEB / "recordings.js").read_text())
    assert player and (WEB / player.group(1)).is_file()


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


async def test_a_session_names_its_pod_and_the_page_as_its_origin(client: TestClient) -> None:  # type: ignore[type-arg]
    """What an audit record and a recording say about a browser session."""
    resp = await client.post(SESSIONS.format("web"), json={"container": "shell"}, headers=AUTH)
    data = await resp.json()
    assert resp.status == 200 and data["url"].startswith("/exec/")
    req = client.app[STREAMS].cache.consume("exec", data["url"].rsplit("/", 1)[1])
    assert isinstance(req, ExecRequest) and req.cmd == ("sh",)
    assert req.origin is not None
    origin = req.origin
    assert (origin.via, origin.namespace, origin.pod, origin.container) == (
        "browser",
        "default",
        "web",
        "shell",
    )
    assert req.origin.user.startswith("bearer:") and TOKEN not in req.origin.user


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

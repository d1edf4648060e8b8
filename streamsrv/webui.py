"""The browser tool: a static page and the endpoint that hands it one-time session URLs.

The page (``web/``: ES modules, xterm.js and asciinema-player vendored from npm) shows the pods
from the gateway's own list and watch, opens exec/attach sessions in tabs, follows logs and
plays recordings; everything else it needs is the gateway's API. The page holds the bearer
token in ``sessionStorage`` (it arrives in the URL fragment, which a browser never sends, so no
server log sees it) and calls the API with it. To open a shell it asks
``POST /api/streamsrv/v1/namespaces/{ns}/pods/{name}/sessions`` for a one-time ``/exec/{token}``
(or ``/attach/{token}``) path, and opens the WebSocket there: the socket itself authenticates
with that single-use token only, because browsers cannot set headers on it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from .gateway import StatusError, issue_url, live_pod, origin_of, pick_container
from .requests import AttachRequest, ExecRequest, attach_request, exec_request
from .server import BROWSER

WEB = Path(__file__).with_name("web")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; script-src 'self' 'wasm-unsafe-eval'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
        # xterm.js and asciinema-player set inline styles; no inline script runs and no string
        # is ever evaluated as script. 'wasm-unsafe-eval' lets asciinema-player compile its
        # terminal emulator, WebAssembly shipped inside its own bundle (served from 'self'):
        # that is all it allows, not eval() nor new Function().
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    resp: web.StreamResponse = await handler(request)
    if request.path.startswith("/ui") or request.path == "/":
        resp.headers.update(SECURITY_HEADERS)
    return resp


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB / "index.html")  # the middleware adds SECURITY_HEADERS


async def to_index(request: web.Request) -> web.StreamResponse:
    """``/`` and ``/ui``: to the page. Needs no token (it reveals nothing), so a browser
    pointed at the server lands on the page, which asks for the token if it holds none."""
    return web.Response(status=302, headers={"Location": "/ui/"})


def _field(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if not isinstance(value, kind):
        raise StatusError(400, f"{name}: expected {kind.__name__}")
    return value


async def create_session(request: web.Request) -> web.Response:
    """``{"container", "mode": exec|attach, "command", "tty", "stdin"}`` -> ``{"url": path}``."""
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError as exc:
        raise StatusError(400, f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise StatusError(400, "the body must be a JSON object")
    mode = _field(body, "mode", str, "exec")
    if mode not in ("exec", "attach"):
        raise StatusError(400, 'mode: expected "exec" or "attach"')
    container = _field(body, "container", str, "") if body.get("container") is not None else ""
    tty = _field(body, "tty", bool, True)
    stdin = _field(body, "stdin", bool, True)
    pod = await live_pod(request, "exec into" if mode == "exec" else "attach")
    spec, cid = pick_container(request, pod, container)
    req: ExecRequest | AttachRequest
    if mode == "exec":
        command = _field(body, "command", list, ["sh"])
        if not command or not all(isinstance(c, str) for c in command):
            raise StatusError(400, "command: expected a non-empty list of strings")
        req = exec_request(cid, command, stdin=stdin, stdout=True, stderr=True, tty=tty)
    else:
        req = attach_request(spec, cid, stdin=stdin, stdout=True, stderr=True, tty=tty)
    req = dataclasses.replace(req, origin=origin_of(request, pod, spec.name, "browser"))
    kind, url = await issue_url(request, req, purpose=BROWSER)
    path = f"/{kind}/{url.rsplit('/', 1)[1]}"  # relative: the page knows its own origin
    return web.json_response({"url": path, "tty": req.tty}, headers={"Cache-Control": "no-store"})


def add_ui_routes(app: web.Application) -> None:
    app.middlewares.append(_headers)
    r = app.router
    r.add_get("/", to_index)
    r.add_get("/ui", to_index)
    r.add_get("/ui/", index)
    r.add_static("/ui/static/", WEB, follow_symlinks=False, append_version=False)
    r.add_post("/api/streamsrv/v1/namespaces/{namespace}/pods/{name}/sessions", create_session)

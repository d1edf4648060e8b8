"""streamsrv.proxy: a gateway proxying upgraded connections to a stream server's one-time URLs.

The backend is a real :class:`StreamServer` on the process runtime (no Docker: the pod's
"containers" are processes on this host) or, for the proxy's own edges, a small raw backend
that answers as a test tells it. The clients are real: streamsrv's client (WebSocket v5 exec,
port-forward), kubectl (SPDY and WebSocket, against a minimal apiserver whose streaming routes
proxy), and raw sockets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from streamsrv.certs import CertificateAuthority, server_ssl_context
from streamsrv.client import Client, ClientConfig
from streamsrv.connections import GuardedSite, runner_kwargs
from streamsrv.limits import KIB, MIB, Limits
from streamsrv.metrics import Metrics
from streamsrv.podmanager import Pod, PodManager
from streamsrv.pods import parse_pod
from streamsrv.proxy import HOLD_MAX, READ_SLACK, ProxyStats, proxy_upgrade
from streamsrv.requests import AnyRequest, PortForwardRequest, attach_request, exec_request
from streamsrv.runtime.process import ProcessRuntime
from streamsrv.server import Config, StreamServer
from tests.conftest import (
    Server,
    kubectl_path,
    pod_manifest,
    require_runtime,
    stop_process,
    wait_forwarding,
)

POD = "web"
HANG = 60.0  # generous bound on anything that must end; never a timing assertion


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
async def _no_leaks() -> AsyncIterator[None]:
    """No task and no file descriptor outlives a test (its fixtures torn down)."""
    gc.collect()
    tasks = asyncio.all_tasks()
    fds = _open_fds()
    yield
    deadline = time.monotonic() + HANG
    while True:
        gc.collect()
        extra_tasks = asyncio.all_tasks() - tasks - {asyncio.current_task()}
        extra_fds = _open_fds() - fds
        if not extra_tasks and not extra_fds:
            return
        if time.monotonic() > deadline:
            links = {fd: _fd_link(fd) for fd in extra_fds}
            raise AssertionError(f"leaked tasks {extra_tasks} and fds {links}")
        await asyncio.sleep(0.05)


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _fd_link(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/self/fd/{fd}")
    return "?"


@dataclass
class Calls:
    """The front's proxied requests: their stats, how many are running, how many ended."""

    limits: Limits = field(default_factory=Limits)
    ssl: ssl.SSLContext | None = None
    options: dict[str, Any] = field(default_factory=dict)
    stats: list[ProxyStats] = field(default_factory=list)
    upgrades: list[str] = field(default_factory=list)  # each request's Upgrade (and subprotocol)
    metrics: Metrics = field(default_factory=Metrics)  # the front's connections
    active: int = 0
    ended: int = 0

    async def proxy(self, request: web.Request, url: str) -> web.StreamResponse:
        stats = ProxyStats()
        self.stats.append(stats)
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        self.upgrades.append(
            request.headers.get("Upgrade", "") + (f" {offered}" if offered else "")
        )
        self.active += 1
        try:
            return await proxy_upgrade(
                request, url, limits=self.limits, ssl=self.ssl, stats=stats, **self.options
            )
        finally:
            self.active -= 1
            self.ended += 1


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, tls: ssl.SSLContext | None = None, calls: Calls | None = None
) -> AsyncIterator[str]:
    """``app`` on a loopback port, behind the connection guard the gateway uses (which counts
    connections in ``calls.metrics``): its base URL."""
    limits = calls.limits if calls else Limits()
    runner = web.AppRunner(app, handle_signals=False, **runner_kwargs(limits))
    await runner.setup()
    metrics = calls.metrics if calls else Metrics()
    site = GuardedSite(runner, "127.0.0.1", 0, limits=limits, metrics=metrics, ssl_context=tls)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _query_bool(request: web.Request, name: str) -> bool:
    value = request.query.get(name)
    return value is not None and value.strip().lower() not in ("0", "false")


def apiserver(
    manager: PodManager, url_for: Callable[[AnyRequest], Awaitable[str]], calls: Calls
) -> web.Application:
    """As much of an apiserver as kubectl needs for exec, attach and port-forward; the three
    streaming subresources are proxied to ``url_for(request)``, as a gateway fronting a remote
    CRI runtime does."""

    def js(data: Any) -> web.Response:
        return web.json_response(data)

    async def api(request: web.Request) -> web.Response:
        return js({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})

    async def apis(request: web.Request) -> web.Response:
        return js({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})

    async def api_v1(request: web.Request) -> web.Response:
        verbs = ["get", "list"]
        resources = [
            {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
             "verbs": verbs, "shortNames": ["po"]},
            *({"name": f"pods/{sub}", "singularName": "", "namespaced": True,
               "kind": "PodExecOptions", "verbs": ["create", "get"]}
              for sub in ("exec", "attach", "portforward")),
        ]  # fmt: skip
        return js({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources})

    async def pod_of(request: web.Request) -> Pod:
        pod = await manager.get(request.match_info["ns"], request.match_info["name"])
        if pod is None:
            raise web.HTTPNotFound()
        return pod

    async def get_pod(request: web.Request) -> web.Response:
        return js((await pod_of(request)).render())

    async def stream(request: web.Request) -> web.StreamResponse:
        pod = await pod_of(request)
        sub = request.match_info["sub"]
        req: AnyRequest
        if sub == "portforward":
            ports = tuple(int(p) for p in request.query.getall("ports", []))
            req = PortForwardRequest(pod.sandbox.id, ports)
        else:
            spec = pod.spec.container(request.query.get("container", "")) or (
                pod.spec.default_container()
            )
            cid = pod.container_id(spec.name)
            assert cid is not None
            flags = {n: _query_bool(request, n) for n in ("stdin", "stdout", "stderr", "tty")}
            if sub == "exec":
                req = exec_request(cid, request.query.getall("command", []), **flags)
            else:
                req = attach_request(spec, cid, **flags)
        return await calls.proxy(request, await url_for(req))

    app = web.Application()
    app.router.add_get("/api", api)
    app.router.add_get("/apis", apis)
    app.router.add_get("/api/v1", api_v1)
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", get_pod)
    for method in ("GET", "POST"):
        app.router.add_route(
            method, "/api/v1/namespaces/{ns}/pods/{name}/{sub:exec|attach|portforward}", stream
        )
    return app


@dataclass
class Stack:
    backend: StreamServer
    pod: Pod
    url: str  # the front's
    calls: Calls
    client: Client
    tmp: Path

    async def wait_idle(self) -> None:
        """Until no proxied request runs, the backend has no live session and the front's
        connection guard counts no connection (the proxy told aiohttp each one ended)."""
        await until(
            lambda: (
                self.calls.active == 0
                and self.backend.context.live == 0
                and self.calls.metrics.connections == 0
            )
        )


async def until(predicate: Callable[[], bool], what: str = "") -> None:
    deadline = time.monotonic() + HANG
    while not predicate():
        assert time.monotonic() < deadline, f"not within {HANG}s: {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def stack_of(
    tmp: Path,
    *,
    calls: Calls | None = None,
    backend_tls: ssl.SSLContext | None = None,
    front_tls: tuple[ssl.SSLContext, bytes] | None = None,
) -> AsyncIterator[Stack]:
    """A pod on the process runtime, its StreamServer (the remote "CRI" stream server), and a
    front apiserver proxying to the server's one-time URLs."""
    require_runtime("process")
    calls = calls or Calls()
    runtime = ProcessRuntime(tmp / "pods")
    try:
        manager = PodManager(runtime)
        pod = await manager.create(
            parse_pod(
                pod_manifest(POD, {"name": "main", "image": "x", "command": ["sleep", "100000"]})
            )
        )

        async with StreamServer(runtime, Config(ssl=backend_tls)) as backend:

            async def url_for(req: AnyRequest) -> str:
                return backend.issue(req)

            app = apiserver(manager, url_for, calls)
            async with serving(app, front_tls[0] if front_tls else None, calls) as url:
                config = ClientConfig(server=url, ca_data=front_tls[1] if front_tls else None)
                yield Stack(backend, pod, url, calls, Client(config), tmp)
    finally:
        await runtime.close()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with stack_of(tmp_path) as s:
        yield s


def tls_pair(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext, bytes]:
    """(server context for 127.0.0.1, client context trusting it, the CA's PEM)."""
    ca = CertificateAuthority(tmp / "ca")
    cert, key = ca.serving_cert(["127.0.0.1", "localhost"])
    client = ssl.create_default_context(cadata=ca.pem.decode())
    return server_ssl_context(cert, key), client, ca.pem


# ------------------------------------------------------------------------------ streamsrv client


async def test_exec_websocket_stdin_output_and_exit_code(stack: Stack) -> None:
    result = await stack.client.run(
        POD, ["sh", "-c", "cat; echo oops >&2; exit 3"], input=b"hello through the proxy\n"
    )
    assert result.exit_code == 3
    assert result.stdout == b"hello through the proxy\n"
    assert result.stderr == b"oops\n"
    [stats] = stack.calls.stats
    assert stats.status == stats.answered == 101 and stats.error is None
    assert stats.bytes_up > 0 and stats.bytes_down > 0
    await stack.wait_idle()


async def test_exec_multi_mib_stdin_checksum(stack: Stack) -> None:
    data = os.urandom(24 * MIB)
    result = await stack.client.run(POD, ["sha256sum"], input=data)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    [stats] = stack.calls.stats
    assert stats.bytes_up > len(data)
    assert stats.max_buffered <= stats.bound


async def test_exec_large_stdout(stack: Stack) -> None:
    proc = await stack.client.exec(POD, ["head", "-c", str(32 * MIB), "/dev/urandom"])
    async with proc:
        assert proc.stdout is not None
        digest, size = hashlib.sha256(), 0
        async for chunk in proc.stdout:
            digest.update(chunk)
            size += len(chunk)
        assert await proc.wait() == 0
    assert size == 32 * MIB
    await stack.wait_idle()
    [stats] = stack.calls.stats
    assert stats.bytes_down > 32 * MIB and stats.max_buffered <= stats.bound


async def test_port_forward_websocket(stack: Stack) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await stack.client.port_forward(POD, port)
        blob = os.urandom(3 * MIB)
        writer.write(blob)
        got = await asyncio.wait_for(reader.readexactly(len(blob)), HANG)
        assert got == blob
        writer.close()
        await stack.wait_idle()
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_on_both_sides(tmp_path: Path) -> None:
    """An https front and an https backend: the stdin checksum still holds (TLS cannot
    half-close: the session ends by the protocol's own close)."""
    back_server, back_client, _ = tls_pair(tmp_path / "back")
    front_server, _, front_ca = tls_pair(tmp_path / "front")
    calls = Calls(ssl=back_client)
    async with stack_of(
        tmp_path, calls=calls, backend_tls=back_server, front_tls=(front_server, front_ca)
    ) as s:
        assert s.backend.base_url.startswith("https://")
        data = os.urandom(8 * MIB)
        result = await s.client.run(POD, ["sha256sum"], input=data)
        assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
        await s.wait_idle()
        [stats] = calls.stats
        assert stats.answered == 101 and stats.max_buffered <= stats.bound


async def test_https_backend_with_an_untrusted_certificate_is_a_502(tmp_path: Path) -> None:
    back_server, _, _ = tls_pair(tmp_path / "back")
    async with stack_of(tmp_path, backend_tls=back_server) as s:  # the proxy trusts the system
        status, body = await raw_request(s.url, _exec_path(["true"]), SPDY_HEADERS)
        assert status == 502
        assert body["message"].startswith("error dialing backend: tls: "), body
        assert "certificate" in body["message"]


# ------------------------------------------------------------------------------ kubectl


@dataclass(frozen=True)
class Kubectl:
    version: str
    env: tuple[tuple[str, str], ...] = ()

    def run(self, stack: Stack, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.cmd(stack, *args), env=self.environ(), **kw)

    def popen(self, stack: Stack, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.cmd(stack, *args), env=self.environ(), **kw)

    def cmd(self, stack: Stack, *args: str) -> list[str]:
        config = stack.tmp / "kubeconfig"
        if not config.exists():
            config.write_text(
                json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "Config",
                        "clusters": [{"name": "c", "cluster": {"server": stack.url}}],
                        "users": [{"name": "u", "user": {}}],
                        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                        "current-context": "x",
                    }
                )
            )
        return [kubectl_path(self.version), "--kubeconfig", str(config),
                "--cache-dir", str(stack.tmp / "kcache"), *args]  # fmt: skip

    def environ(self) -> dict[str, str]:
        return {**os.environ, **dict(self.env)}


SPDY_ONLY = Kubectl("1.27")  # exec, attach and port-forward over SPDY only
WEBSOCKETS = Kubectl("1.33")  # exec over WebSocket v5, port-forward over the SPDY tunnel
FORCED_SPDY = Kubectl(
    "1.33",
    (("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"), ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")),
)
KUBECTLS = pytest.mark.parametrize(
    "kc", [SPDY_ONLY, WEBSOCKETS, FORCED_SPDY], ids=["1.27-spdy", "1.33-ws", "1.33-spdy"]
)


@pytest.mark.kubectl
@KUBECTLS
async def test_kubectl_exec(stack: Stack, kc: Kubectl) -> None:
    data = os.urandom(4 * MIB)
    script = "sha256sum; echo to-stderr >&2; exit 7"
    r = await asyncio.to_thread(
        kc.run, stack, "exec", "-i", POD, "--", "sh", "-c", script,
        input=data, capture_output=True, timeout=HANG,
    )  # fmt: skip
    assert r.returncode == 7, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert b"to-stderr" in r.stderr
    await stack.wait_idle()
    # One upgrade, of the kind this kubectl speaks (a refused WebSocket would show a second).
    if kc is WEBSOCKETS:
        assert stack.calls.upgrades == ["websocket v5.channel.k8s.io"]
    else:
        assert stack.calls.upgrades == ["SPDY/3.1"]
    assert [s.answered for s in stack.calls.stats] == [101]


@pytest.mark.kubectl
@KUBECTLS
async def test_kubectl_port_forward(stack: Stack, kc: Kubectl) -> None:
    blob = os.urandom(2 * MIB)

    async def serve_blob(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(blob)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve_blob, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    log = stack.tmp / "pf.log"
    with log.open("wb") as out:
        proc = kc.popen(stack, "port-forward", POD, f":{port}", stdout=out, stderr=out)
    try:
        local = await asyncio.to_thread(wait_forwarding, proc, log, [port], HANG)
        for _ in range(2):  # two local connections, one after the other
            reader, writer = await asyncio.open_connection("127.0.0.1", local[port])
            got = await asyncio.wait_for(reader.read(), HANG)
            writer.close()
            await writer.wait_closed()
            assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
    finally:
        stop_process(proc, 15)
        server.close()
        await server.wait_closed()
    await stack.wait_idle()
    # One upgrade (the local connections are streams on it), of the kind this kubectl speaks.
    kind = "websocket SPDY/3.1+portforward.k8s.io" if kc is WEBSOCKETS else "SPDY/3.1"
    assert stack.calls.upgrades == [kind]
    assert [s.answered for s in stack.calls.stats] == [101]


@pytest.mark.kubectl
async def test_kubectl_sees_the_dial_error(tmp_path: Path) -> None:
    """kubectl prints the apiserver's words for a backend that cannot be dialled."""
    port = _closed_port()
    async with stack_of(tmp_path) as s:

        async def dead(req: AnyRequest) -> str:
            return f"http://127.0.0.1:{port}/exec/token"

        app = apiserver(_manager(s), dead, s.calls)
        async with serving(app) as url:
            dead_stack = Stack(s.backend, s.pod, url, s.calls, s.client, tmp_path / "dead")
            dead_stack.tmp.mkdir()
            r = await asyncio.to_thread(
                SPDY_ONLY.run, dead_stack, "exec", POD, "--", "true",
                capture_output=True, timeout=HANG,
            )  # fmt: skip
    assert r.returncode != 0
    assert r.stderr.startswith(b"Error from server: error dialing backend: dial tcp 127.0.0.1:")
    assert b"connection refused" in r.stderr, r.stderr


def _manager(stack: Stack) -> PodManager:
    """Another manager of the stack's pods (the runtime holds them)."""
    return PodManager(stack.backend.runtime)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ backend refusals


SPDY_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "SPDY/3.1",
    "X-Stream-Protocol-Version": "v4.channel.k8s.io",
}
WS_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def _exec_path(command: list[str], **flags: str) -> str:
    query = "&".join([*(f"command={c}" for c in command), "stdout=true", "stderr=true"])
    return f"/api/v1/namespaces/default/pods/{POD}/exec?{query}"


async def raw_request(
    base: str, path: str, headers: dict[str, str], method: str = "POST"
) -> tuple[int, Any]:
    """A non-upgraded answer: (status, the JSON body or its text)."""
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, base + path, headers=headers, ssl=False) as r,
    ):
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


async def test_backend_404_for_a_used_token_is_relayed(tmp_path: Path) -> None:
    """The backend's own answer reaches the client: its status, headers and body."""
    urls: list[str] = []
    async with stack_of(tmp_path) as s:

        async def same_url(req: AnyRequest) -> str:
            if not urls:
                urls.append(s.backend.issue(req))
            return urls[0]

        async with serving(apiserver(_manager(s), same_url, s.calls)) as url:
            client = Client(ClientConfig(server=url))
            assert (await client.run(POD, ["true"])).exit_code == 0
            status, body = await raw_request(url, _exec_path(["true"]), SPDY_HEADERS)
            assert (status, body) == (404, "404 page not found\n")
            await until(lambda: s.calls.active == 0)
    assert [c.answered for c in s.calls.stats] == [101, 404]


async def test_backend_protocol_refusal_keeps_its_headers(stack: Stack) -> None:
    """A 403 refusal carries X-Accepted-Stream-Protocol-Versions, which kubectl reads."""
    headers = {**SPDY_HEADERS, "X-Stream-Protocol-Version": "v99.channel.k8s.io"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(stack.url + _exec_path(["true"]), headers=headers) as r,
    ):
        assert r.status == 403
        assert "v4.channel.k8s.io" in r.headers.getall("X-Accepted-Stream-Protocol-Versions")
        assert "unable to negotiate protocol" in await r.text()


async def test_unreachable_backend_is_a_502_in_the_apiservers_words(tmp_path: Path) -> None:
    port = _closed_port()
    calls = Calls()

    async def target(request: web.Request) -> web.StreamResponse:
        return await calls.proxy(request, f"http://127.0.0.1:{port}/exec/abc")

    async with serving(_one_route(target)) as url:
        status, body = await raw_request(url, "/x", SPDY_HEADERS)
    assert status == 502
    assert body["kind"] == "Status" and body["code"] == 502 and body["status"] == "Failure"
    assert body["message"] == (
        f"error dialing backend: dial tcp 127.0.0.1:{port}: connect: connection refused"
    )


async def test_a_request_that_is_not_an_upgrade_is_refused(tmp_path: Path) -> None:
    calls = Calls()

    async def target(request: web.Request) -> web.StreamResponse:
        return await calls.proxy(request, "http://127.0.0.1:1/exec/abc")

    async with serving(_one_route(target)) as url:
        status, body = await raw_request(url, "/x", {}, method="GET")
    assert status == 400 and body["message"] == "Upgrade request required"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_route(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


# ------------------------------------------------------------------------------ ends and faults


async def test_client_disconnect_mid_stream_ends_the_backend_session(stack: Stack) -> None:
    proc = await stack.client.exec(POD, ["sh", "-c", "echo ready; exec sleep 100000"], stdin=True)
    async with proc:
        assert proc.stdout is not None
        assert await proc.stdout.readexactly(6) == b"ready\n"
        assert stack.backend.context.live == 1 and stack.calls.active == 1
        assert stack.calls.metrics.connections == 1  # the front's guard counts the client
        transport = proc._ws.transport
        assert isinstance(transport, asyncio.Transport)
        transport.abort()  # the client vanishes: a reset, no close handshake
        await stack.wait_idle()
    [stats] = stack.calls.stats
    assert stats.answered == 101


@pytest.mark.kubectl
async def test_client_disconnect_over_spdy_with_kubectl(stack: Stack) -> None:
    """kubectl killed mid-session: the backend's session ends, its process with it."""
    proc = SPDY_ONLY.popen(
        stack, "exec", "-i", POD, "--", "sh", "-c", "echo ready; exec cat",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), HANG)
        assert line == b"ready\n"
        assert stack.backend.context.live == 1
        proc.kill()
        await asyncio.to_thread(proc.wait)
        await stack.wait_idle()
    finally:
        stop_process(proc, 9)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


# Raw backends: what the proxy does at its own edges, byte by byte.


@dataclass
class RawBackend:
    """A loopback server that reads one request head per connection and hands the connection
    to ``behaviour``; what it saw is kept for the test."""

    behaviour: Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]
    heads: list[bytes] = field(default_factory=list)
    ended: int = 0
    url: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> RawBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/exec/tok?x=1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            await self.behaviour(reader, writer, head)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.ended += 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._tasks.discard(task)


SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\nConnection: Upgrade\r\n" \
    b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"  # fmt: skip


@contextlib.asynccontextmanager
async def raw_stack(
    behaviour: Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]],
    **calls: Any,
) -> AsyncIterator[tuple[RawBackend, Calls, str]]:
    c = Calls(**calls)
    async with RawBackend(behaviour) as backend:

        async def target(request: web.Request) -> web.StreamResponse:
            return await c.proxy(request, backend.url)

        async with serving(_one_route(target), calls=c) as url:
            yield backend, c, url
            # Every proxied connection ended, and the front's guard saw each one go.
            await until(lambda: c.active == 0 and c.metrics.connections == 0, "front idle")


async def upgrade(
    url: str,
    headers: dict[str, str] | None = None,
    early: bytes = b"",
    method: str = "POST",
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Connect to the front, send an upgrade request (and ``early`` bytes in the same write),
    return the connection and the response head."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 20)
    lines = [f"{method} /anything?q=client HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in (headers or SPDY_HEADERS).items()]
    if method == "POST":
        lines.append("Content-Length: 0")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + early)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG)
    return reader, writer, head


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_request_headers_sent_to_the_backend() -> None:
    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        w.write(SWITCH)
        await w.drain()

    async with raw_stack(answer) as (backend, calls, url):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /anything?q=client HTTP/1.1\r\n"
            b"Host: front.example\r\n"
            b"Connection: keep-alive, Upgrade\r\n"
            b"Upgrade: SPDY/3.1\r\n"
            b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
            b"X-Stream-Protocol-Version: v3.channel.k8s.io\r\n"
            b"Authorization: Bearer secret\r\n"
            b"Cookie: session=secret\r\n"
            b"User-Agent: kubectl/v1.27\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert await asyncio.wait_for(reader.read(), HANG) == b""  # the backend closed
        await close(writer)
        await until(lambda: calls.ended == 1)
    [sent] = backend.heads
    lines = sent.decode().split("\r\n")
    port_of_backend = backend.url.split(":")[2].split("/")[0]
    assert lines[0] == "POST /exec/tok?x=1 HTTP/1.1"  # the URL's path and query, not the client's
    assert f"Host: 127.0.0.1:{port_of_backend}" in lines
    assert "Connection: Upgrade" in lines and "Upgrade: SPDY/3.1" in lines
    assert [x for x in lines if x.startswith("X-Stream-Protocol-Version")] == [
        "X-Stream-Protocol-Version: v4.channel.k8s.io",
        "X-Stream-Protocol-Version: v3.channel.k8s.io",
    ]
    assert "User-Agent: kubectl/v1.27" in lines and "Content-Length: 0" in lines
    assert "X-Forwarded-For: 127.0.0.1" in lines
    assert "secret" not in sent.decode()


async def test_101_headers_reach_the_client() -> None:
    accept = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        assert b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==" in head
        assert b"Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io" in head
        w.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n"
            b"Sec-WebSocket-Protocol: v5.channel.k8s.io\r\nX-Backend-Secret: no\r\n\r\n"
        )
        await w.drain()
        await r.read()

    ws = {**WS_HEADERS, "Sec-WebSocket-Protocol": "v5.channel.k8s.io, v4.channel.k8s.io"}
    async with raw_stack(answer) as (_, calls, url):
        reader, writer, head = await upgrade(url, ws, method="GET")
        text = head.decode()
        assert text.startswith("HTTP/1.1 101 Switching Protocols\r\n")
        assert "Upgrade: websocket\r\n" in text and "Connection: Upgrade\r\n" in text
        assert f"Sec-WebSocket-Accept: {accept.decode()}\r\n" in text
        assert "Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n" in text
        assert "X-Backend-Secret" not in text
        assert "Content-Length" not in text and "Transfer-Encoding" not in text
        await close(writer)
        await until(lambda: calls.ended == 1)


@pytest.mark.parametrize("kind", ["websocket", "spdy"])
async def test_bytes_sent_before_the_101_are_forwarded_first(kind: str) -> None:
    """The client's early bytes reach the backend first, in order: for WebSocket even those in
    the same write as the request head (aiohttp's parser holds them); for both, those sent
    while the backend is being dialled and has not answered yet."""
    released = asyncio.Event()

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        await released.wait()
        w.write(SWITCH)
        await w.drain()
        got = await r.readexactly(len(b"EARLY-LATER-AFTER"))
        w.write(b"echo:" + got)
        await w.drain()
        await r.read()

    headers = SPDY_HEADERS
    same_write = b""
    if kind == "websocket":
        headers = WS_HEADERS
        same_write = b"EARLY-"
    async with raw_stack(answer) as (backend, calls, url):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        lines = ["GET /x HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + same_write)
        await until(lambda: len(backend.heads) == 1)  # the proxy has taken the connection
        if kind == "spdy":
            writer.write(b"EARLY-")
        writer.write(b"LATER-")
        await writer.drain()
        await asyncio.sleep(0.1)  # let the proxy hold them
        released.set()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG)
        assert head.startswith(b"HTTP/1.1 101")
        writer.write(b"AFTER")
        got = await asyncio.wait_for(reader.readexactly(len(b"echo:EARLY-LATER-AFTER")), HANG)
        assert got == b"echo:EARLY-LATER-AFTER"
        await close(writer)
        await until(lambda: calls.ended == 1)
    [stats] = calls.stats
    assert stats.bytes_up == len(b"EARLY-LATER-AFTER")


async def test_early_bytes_past_the_hold_bound_pause_the_client() -> None:
    """A client that sends 32 MiB before the backend answers: the proxy holds at most HOLD_MAX
    plus one read of it, then stops reading; once the 101 is through, all of it arrives, in
    order."""
    size = 32 << 20  # more than the loopback sockets' buffers take
    released = asyncio.Event()

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        await released.wait()
        w.write(SWITCH)
        await w.drain()
        got = await r.readexactly(size)
        w.write(hashlib.sha256(got).hexdigest().encode())
        await w.drain()
        await r.read()

    payload = os.urandom(size)
    async with raw_stack(answer) as (backend, calls, url):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        lines = [
            "GET /x HTTP/1.1",
            f"Host: {host}",
            *(f"{k}: {v}" for k, v in SPDY_HEADERS.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await until(lambda: len(backend.heads) == 1)  # the proxy has taken the connection
        writer.write(payload)  # more than HOLD_MAX and the sockets take: this waits
        sending = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0.5)  # let the proxy read what it will
        assert not sending.done()  # the proxy stopped reading: the client is held back
        released.set()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG)
        assert head.startswith(b"HTTP/1.1 101")
        await asyncio.wait_for(sending, HANG)
        digest = await asyncio.wait_for(reader.readexactly(64), HANG)
        assert digest == hashlib.sha256(payload).hexdigest().encode()
        await close(writer)
        await until(lambda: calls.ended == 1)
    [stats] = calls.stats
    assert HOLD_MAX <= stats.max_held <= HOLD_MAX + READ_SLACK
    assert stats.bytes_up == size


async def test_backend_abort_mid_stream_closes_the_client() -> None:
    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        w.write(SWITCH + b"some output")
        await w.drain()
        await r.readexactly(4)  # "kill"
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()  # a reset

    async with raw_stack(answer) as (_, calls, url):
        reader, writer, head = await upgrade(url)
        assert await reader.readexactly(11) == b"some output"
        writer.write(b"kill")
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), HANG) == b""
        await close(writer)
        await until(lambda: calls.ended == 1)
    [stats] = calls.stats
    assert stats.error is not None and "backend" in stats.error


async def test_backend_close_mid_stream_delivers_everything_then_closes() -> None:
    payload = os.urandom(5 * MIB)

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        w.write(SWITCH + payload)
        await w.drain()  # then the connection closes

    async with raw_stack(answer) as (_, calls, url):
        reader, writer, _ = await upgrade(url)
        got = await asyncio.wait_for(reader.read(-1), HANG)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        await close(writer)
        await until(lambda: calls.ended == 1)


async def test_half_close_is_passed_on_both_ways() -> None:
    """The client ends its direction; the backend sees EOF, answers, and ends its own."""

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        w.write(SWITCH)
        digest, size = hashlib.sha256(), 0
        while chunk := await r.read(1 << 20):  # to the client's EOF
            digest.update(chunk)
            size += len(chunk)
        w.write(f"{size} {digest.hexdigest()}".encode())
        await w.drain()
        w.write_eof()
        await asyncio.sleep(0.2)  # still open: the proxy closes once both directions ended

    data = os.urandom(6 * MIB)
    async with raw_stack(answer) as (_, calls, url):
        reader, writer, _ = await upgrade(url)
        writer.write(data)
        writer.write_eof()
        got = await asyncio.wait_for(reader.read(-1), HANG)
        assert got.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
        await close(writer)
        await until(lambda: calls.ended == 1)


async def test_large_transfer_both_ways_with_slow_readers_stays_bounded() -> None:
    """64 MiB each way, both readers slow: the proxy's write buffers never pass the bound
    (high-water mark 256 KiB per direction, plus one read), and every byte arrives."""
    size = 64 * MIB
    down = os.urandom(size)
    up = os.urandom(size)
    result: dict[str, str] = {}

    async def slow_read(r: asyncio.StreamReader, n: int) -> str:
        digest = hashlib.sha256()
        while n:
            chunk = await r.read(min(n, 256 * KIB))
            assert chunk, "EOF too early"
            digest.update(chunk)
            n -= len(chunk)
            await asyncio.sleep(0.001)
        return digest.hexdigest()

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        w.write(SWITCH)

        async def send() -> None:
            for i in range(0, size, MIB):
                w.write(down[i : i + MIB])
                await w.drain()

        sender = asyncio.create_task(send())
        result["up"] = await slow_read(r, size)
        await sender
        await r.read()

    async with raw_stack(answer, limits=Limits(write_buffer=256 * KIB)) as (_, calls, url):
        reader, writer, _ = await upgrade(url)

        async def send_up() -> None:
            for i in range(0, size, MIB):
                writer.write(up[i : i + MIB])
                await writer.drain()

        sender = asyncio.create_task(send_up())
        got = await asyncio.wait_for(slow_read(reader, size), HANG * 2)
        await asyncio.wait_for(sender, HANG)
        await close(writer)
        await until(lambda: calls.ended == 1)
    assert got == hashlib.sha256(down).hexdigest()
    assert result["up"] == hashlib.sha256(up).hexdigest()
    [stats] = calls.stats
    assert stats.bytes_up == stats.bytes_down == size
    assert 0 < stats.max_buffered <= stats.bound == 2 * (256 * KIB + 512 * KIB), stats


async def test_client_gone_while_waiting_for_the_backend_head() -> None:
    """A backend that never answers: the client leaving ends the attempt at once (not after
    head_timeout), and the backend's connection is closed."""

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        await r.read()  # until the proxy closes

    async with raw_stack(silent, options={"head_timeout": 3600}) as (backend, calls, url):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        await until(lambda: len(backend.heads) == 1)
        await close(writer)
        await until(lambda: calls.ended == 1 and backend.ended == 1)
    [stats] = calls.stats
    assert stats.answered == 0 and stats.error == "the client went away"


@pytest.mark.parametrize(
    "reply, message",
    [
        (None, "error reading backend response: no response within 0.5s"),
        (b"HTTP/1.1 101 OK\r\nX: " + b"y" * (70 * KIB), "head over 65536 bytes"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed HTTP response 'SSH-2.0-OpenSSH'"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "invalid upgrade response: status code 200",
        ),
        (b"", "error reading backend response: EOF"),
    ],
    ids=["timeout", "too-large", "garbage", "200", "eof"],
)
async def test_bad_backend_answers_are_502(reply: bytes | None, message: str) -> None:
    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        if reply is None:
            await r.read()
            return
        w.write(reply)
        await w.drain()

    async with raw_stack(answer, options={"head_timeout": 0.5}) as (_, calls, url):
        status, body = await raw_request(url, "/x", SPDY_HEADERS)
        await until(lambda: calls.ended == 1)
    assert status == 502 and message in body["message"], body


@pytest.mark.parametrize("encoding", ["length", "chunked", "eof"])
async def test_error_bodies_are_relayed_bounded(encoding: str) -> None:
    big = b"x" * (100 * KIB)

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        w.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n")
        if encoding == "length":
            w.write(b"Content-Length: %d\r\n\r\n" % len(big) + big)
        elif encoding == "chunked":
            w.write(b"Transfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(big), 10 * KIB):
                w.write(b"%x\r\n" % (10 * KIB) + big[i : i + 10 * KIB] + b"\r\n")
            w.write(b"0\r\n\r\n")
        else:
            w.write(b"\r\n" + big)
        await w.drain()

    async with raw_stack(answer) as (_, calls, url):
        status, body = await raw_request(url, "/x", SPDY_HEADERS)
        await until(lambda: calls.ended == 1)
    assert status == 500 and body == "x" * (64 * KIB)


async def test_short_error_body_with_chunks() -> None:
    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        w.write(
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nhello \r\n6;ext=1\r\nworld\n\r\n0\r\n\r\n"
        )
        await w.drain()
        await r.read()  # the proxy does not wait for the connection to end

    async with raw_stack(answer) as (_, calls, url):
        assert await raw_request(url, "/x", SPDY_HEADERS) == (400, "hello world\n")


async def test_stopping_ends_the_splice() -> None:
    stopping = asyncio.Event()

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        w.write(SWITCH)
        await w.drain()
        await r.read()

    async with raw_stack(answer, options={"stopping": stopping}) as (backend, calls, url):
        reader, writer, _ = await upgrade(url)
        stopping.set()
        assert await asyncio.wait_for(reader.read(), HANG) == b""
        await close(writer)
        await until(lambda: calls.ended == 1 and backend.ended == 1)
    assert calls.stats[0].error == "stopped"


async def test_stopping_before_the_backend_answers_is_a_503() -> None:
    stopping = asyncio.Event()

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter, head: bytes) -> None:
        stopping.set()
        await r.read()

    async with raw_stack(silent, options={"stopping": stopping}) as (backend, calls, url):
        status, body = await raw_request(url, "/x", SPDY_HEADERS)
        await until(lambda: calls.ended == 1 and backend.ended == 1)
    assert status == 503 and body["message"] == "stopped before the backend answered"


# ------------------------------------------------------------------------------ throughput


@pytest.mark.skipif(not os.environ.get("STREAMSRV_PROXY_BENCH"), reason="STREAMSRV_PROXY_BENCH=1")
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_bench_256_mib_exec_stdout(tmp_path: Path, tls: bool) -> None:
    """256 MiB of exec stdout to streamsrv's client (its own process; timed from the exec call
    to the exit code):
    straight from `streamsrv serve` (process runtime, its own process), and through a proxying
    front in this process to the same server; TLS on every hop, or on none. Prints MiB/s:
    ``STREAMSRV_PROXY_BENCH=1 .venv/bin/python -m pytest tests/test_proxy.py -k bench -s``."""
    require_runtime("process")
    server = Server(tmp_path / "state", runtime="process", extra=[] if tls else ["--insecure-http"])
    server.start()
    try:
        manifest = tmp_path / "pod.yaml"
        container = {"name": "main", "image": "x", "command": ["sleep", "100000"]}
        manifest.write_text(json.dumps(pod_manifest(POD, container)))
        assert server.cli("pod", "run", "-f", str(manifest)).returncode == 0
        backend_ssl = ssl.create_default_context(cafile=str(server.ca_file)) if tls else None
        calls = Calls(ssl=backend_ssl)
        front_server, _, front_ca = tls_pair(tmp_path / "front")
        cluster: dict[str, str] = {}
        if tls:
            cluster["certificate-authority-data"] = base64.b64encode(front_ca).decode()

        async def session_url(request: web.Request) -> web.StreamResponse:
            """The backend's one-time URL (its browser-session endpoint issues them)."""
            command = request.query.getall("command")
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{server.url}/api/streamsrv/v1/namespaces/default/pods/{POD}/sessions",
                    json={"command": command, "tty": False, "stdin": False},
                    headers={"Authorization": f"Bearer {server.token}"},
                    ssl=backend_ssl if backend_ssl is not None else True,
                ) as r,
            ):
                path = (await r.json())["url"]
            return await calls.proxy(request, server.url + path)

        app = web.Application()
        app.router.add_route("*", "/api/v1/namespaces/{ns}/pods/{name}/exec", session_url)
        total = 256 * MIB
        async with serving(app, front_server if tls else None) as url:
            front_config = tmp_path / "front.kubeconfig"
            front_config.write_text(json.dumps({
                "apiVersion": "v1", "kind": "Config", "current-context": "x",
                "clusters": [{"name": "c", "cluster": {"server": url, **cluster}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            }))  # fmt: skip
            rates: dict[str, list[float]] = {"direct": [], "proxied": []}
            for name, config in (("direct", server.kubeconfig), ("proxied", front_config)) * 5:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", BENCH_CLIENT, str(config), str(total),
                    stdout=subprocess.PIPE,
                )  # fmt: skip
                out, _ = await asyncio.wait_for(proc.communicate(), HANG * 5)
                assert proc.returncode == 0
                rates[name].append(total / MIB / float(out))
            await until(lambda: calls.active == 0)
        assert all(s.bytes_down > total for s in calls.stats)
        for name, values in rates.items():
            shown = ", ".join(f"{v:.0f}" for v in values)
            print(f"\n{name} ({'tls' if tls else 'plain'}): {shown} MiB/s, median "
                  f"{sorted(values)[2]:.0f}")  # fmt: skip
    finally:
        server.stop()


#: The bench's client, in a process of its own: seconds from the exec call to the exit code.
BENCH_CLIENT = """
import asyncio, sys, time
from streamsrv.client import Client

async def main():
    client = Client.from_kubeconfig(sys.argv[1])
    start = time.perf_counter()
    proc = await client.exec("web", ["head", "-c", sys.argv[2], "/dev/zero"], stderr=False)
    size = 0
    async with proc:
        async for chunk in proc.stdout:
            size += len(chunk)
        assert await proc.wait() == 0 and size == int(sys.argv[2])
    print(time.perf_counter() - start)

asyncio.run(main())
"""

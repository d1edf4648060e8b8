"""Exec/attach over WebSocket channels against a fake runtime: tokens, subprotocols, framing.

The fake runtime stands in for the engine only here, where the subject is the wire protocol;
the same behaviour is tested against Docker and real clients in tests/interop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from streamsrv.runtime.base import BackendError, StdIO
from streamsrv.server import AttachRequest, Config, ExecRequest, InvalidRequest, StreamServer
from streamsrv.tokens import CacheFull, RequestCache


class FakeRuntime:
    """Echoes stdin to stdout, reports sizes, exits with the code named in the command."""

    name = "fake"

    def __init__(self) -> None:
        self.cancelled = 0
        self.started = asyncio.Event()
        self._cancelled = asyncio.Event()
        self.stopped: dict[str, str] = {}  # container id -> what became of it

    async def container_stopped(self, container_id: str) -> str | None:
        return self.stopped.get(container_id)

    async def wait_cancelled(self, seconds: float) -> None:
        """Until the session has cancelled a running exec (at most ``seconds``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cancelled.wait(), seconds)

    async def exec(self, container_id: str, cmd: Sequence[str], io: StdIO, *, tty: bool) -> int:
        self.started.set()
        try:
            if container_id == "missing":
                raise BackendError('container "missing" not found')
            if cmd[0] == "echo":
                assert io.stdout is not None
                await io.stdout.write(" ".join(cmd[1:]).encode() + b"\n")
                if io.stderr is not None:
                    await io.stderr.write(b"to-stderr\n")
                return 0
            if cmd[0] == "cat":
                assert io.stdin is not None and io.stdout is not None
                while data := await io.stdin.read():
                    await io.stdout.write(data)
                return 0
            if cmd[0] == "size":
                assert io.resize is not None and io.stdout is not None
                async for size in io.resize:
                    await io.stdout.write(f"{size.width}x{size.height}\n".encode())
                    if size.width == 1:
                        return 0
                return 0
            if cmd[0] == "sleep":
                await asyncio.sleep(3600)
            return int(cmd[1])
        except asyncio.CancelledError:
            self.cancelled += 1
            self._cancelled.set()
            raise

    async def attach(self, container_id: str, io: StdIO, *, tty: bool) -> None:
        assert io.stdout is not None
        await io.stdout.write(b"attached\n")
        if container_id == "hang":  # an engine's attach begun just as its container ended
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def setup() -> AsyncIterator[
    tuple[StreamServer, TestClient[web.Request, web.Application], FakeRuntime, Clock]
]:
    runtime = FakeRuntime()
    clock = Clock()
    cache: RequestCache[Any] = RequestCache(
        b"k" * 32, ttl=60, max_in_flight=1000, clock=clock, wall_clock=clock
    )
    server = StreamServer(runtime, Config(), cache=cache)  # type: ignore[arg-type]
    app = web.Application()
    server.add_routes(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    server.base_url = str(client.make_url("")).rstrip("/")
    yield server, client, runtime, clock
    await client.close()


async def collect(ws: aiohttp.ClientWebSocketResponse) -> list[tuple[int, bytes]]:
    frames = []
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            frames.append((msg.data[0], msg.data[1:]))
        elif msg.type == WSMsgType.TEXT:
            frames.append((int(msg.data[0]), base64.b64decode(msg.data[1:])))
    return frames


def path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


async def test_v5_exec_frames_and_status(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, _, _ = setup
    url = await server.get_exec(ExecRequest("c1", ("echo", "hi"), stdout=True, stderr=True))
    async with client.ws_connect(path(url), protocols=["v5.channel.k8s.io"]) as ws:
        assert ws.protocol == "v5.channel.k8s.io"
        frames = await collect(ws)
        assert ws.close_code == 1000
    assert frames[0] == (1, b"")  # readiness: empty payload on stdout
    assert frames[1:] == [
        (1, b"hi\n"),
        (2, b"to-stderr\n"),
        (3, b'{"metadata":{},"status":"Success"}'),
    ]
    assert server.metrics.sessions[("exec", "websocket")] == 1


async def test_exit_code_status_on_v4(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, _, _ = setup
    url = await server.get_exec(ExecRequest("c1", ("exit", "42")))
    async with client.ws_connect(path(url), protocols=["v4.channel.k8s.io"]) as ws:
        frames = await collect(ws)
    ch, body = frames[-1]
    assert ch == 3
    status = json.loads(body)
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "42"}]


async def test_base64_protocol_uses_text_frames(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, _, _ = setup
    url = await server.get_exec(ExecRequest("c1", ("echo", "hi")))
    async with client.ws_connect(path(url), protocols=["base64.channel.k8s.io"]) as ws:
        raw = []
        async for msg in ws:
            assert msg.type == WSMsgType.TEXT
            raw.append(msg.data)
    assert raw == ["1", "1aGkK"]  # v1: no status on success


async def test_v1_failure_is_plain_text(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, _, _ = setup
    url = await server.get_exec(ExecRequest("c1", ("exit", "3")))
    async with client.ws_connect(path(url), protocols=["channel.k8s.io"]) as ws:
        frames = await collect(ws)
    assert frames[-1][0] == 3
    assert b"exit code 3" in frames[-1][1]
    assert not frames[-1][1].startswith(b"{")


async def test_v5_close_signal_ends_stdin(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, _, _ = setup
    url = await server.get_exec(ExecRequest("c1", ("cat",), stdin=True))
    async with client.ws_connect(path(url), protocols=["v5.channel.k8s.io"]) as ws:
        await ws.send_bytes(b"\x00abc")
        await ws.send_str("\x00def")  # text frames are accepted on binary protocols
        await ws.send_bytes(b"\xff\x00")
        frames = await asyncio.wait_for(collect(ws), 10)
    assert b"".join(d for c, d in frames if c == 1) == b"abcdef"
    assert frames[-1] == (3, b'{"metadata":{},"status":"Success"}')


async def test_resize_split_across_messages(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, _, _ = setup
    url = await server.get_exec(ExecRequest("c1", ("size",), stdin=True, tty=True))
    async with client.ws_connect(path(url), protocols=["v5.channel.k8s.io"]) as ws:
        await ws.send_bytes(b'\x04{"Width":80,"Hei')
        await ws.send_bytes(b'\x04ght":24}\n{"width":1,"height":2}\n')
        frames = await asyncio.wait_for(collect(ws), 10)
    # Sizes are coalesced (the latest wins): 80x24 may be skipped, never reordered.
    assert b"".join(d for c, d in frames if c == 1) in (b"80x24\n1x2\n", b"1x2\n")


async def test_attach(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, _, _ = setup
    url = await server.get_attach(AttachRequest("c1", stdout=True))
    assert "/attach/" in url
    async with client.ws_connect(path(url), protocols=["v4.channel.k8s.io"]) as ws:
        frames = await collect(ws)
    assert (1, b"attached\n") in frames
    assert frames[-1] == (3, b'{"metadata":{},"status":"Success"}')


async def test_an_attach_ends_once_its_container_has_stopped(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, runtime, _ = setup
    runtime.stopped["hang"] = "exited with code 0"
    url = await server.get_attach(AttachRequest("hang", stdout=True))
    async with (
        asyncio.timeout(30),
        client.ws_connect(path(url), protocols=["v4.channel.k8s.io"]) as ws,
    ):
        frames = await collect(ws)
    assert (1, b"attached\n") in frames
    assert frames[-1] == (3, b'{"metadata":{},"status":"Success"}')
    assert runtime.cancelled == 1  # the engine's attach was not left behind


async def test_backend_error_is_an_internal_error_status(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, _, _ = setup
    url = await server.get_exec(ExecRequest("missing", ("true",)))
    async with client.ws_connect(path(url), protocols=["v5.channel.k8s.io"]) as ws:
        frames = await collect(ws)
    status = json.loads(frames[-1][1])
    assert status["reason"] == "InternalError" and status["code"] == 500
    assert "not found" in status["message"]


async def test_token_is_single_use(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, _, _ = setup
    url = await server.get_exec(ExecRequest("c1", ("echo", "x")))
    async with client.ws_connect(path(url), protocols=["v5.channel.k8s.io"]) as ws:
        await collect(ws)
    resp = await client.get(path(url))
    assert resp.status == 404
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(path(url), protocols=["v5.channel.k8s.io"])
    assert info.value.status == 404


async def test_forged_expired_and_wrong_kind_tokens_are_404(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, _, clock = setup
    url = await server.get_exec(ExecRequest("c1", ("echo", "x")))
    token = url.rsplit("/", 1)[1]
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert (await client.get(f"/exec/{forged}")).status == 404
    assert (await client.get(f"/attach/{token}")).status == 404  # an exec token on /attach
    url = await server.get_exec(ExecRequest("c1", ("echo", "x")))
    clock.now += 61
    assert (await client.get(path(url))).status == 404
    assert (await client.get("/exec/not-a-token")).status == 404


async def test_cache_full_after_1000(setup) -> None:  # type: ignore[no-untyped-def]
    server, _, _, _ = setup
    for _ in range(1000):
        await server.get_exec(ExecRequest("c1", ("true",)))
    with pytest.raises(CacheFull) as info:
        await server.get_exec(ExecRequest("c1", ("true",)))
    assert info.value.retry_after == 60


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (ExecRequest("", ("true",)), "missing required container_id"),
        (ExecRequest("c", ("sh",), tty=True, stderr=True), "tty and stderr cannot both be true"),
        (ExecRequest("c", ("sh",), stdout=False), "one of stdin, stdout, or stderr must be set"),
        (AttachRequest("c", stdout=False), "one of stdin, stdout, and stderr must be set"),
    ],
)
async def test_kubelet_validation(setup, req, message: str) -> None:  # type: ignore[no-untyped-def]
    server = setup[0]
    with pytest.raises(InvalidRequest, match=message):
        await (server.get_exec(req) if isinstance(req, ExecRequest) else server.get_attach(req))


async def test_unknown_or_missing_subprotocol_is_refused(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, runtime, _ = setup
    for protocols in (["v9.channel.k8s.io"], []):
        url = await server.get_exec(ExecRequest("c1", ("echo", "x")))
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect(path(url), protocols=protocols)
        assert info.value.status == 403
    assert not runtime.started.is_set()


async def test_garbage_ends_only_that_session(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, runtime, _ = setup
    url = await server.get_exec(ExecRequest("c1", ("sleep",), stdin=True))
    ws = await client.ws_connect(path(url), protocols=["v5.channel.k8s.io"])
    await runtime.started.wait()
    await ws.send_bytes(b"\xff\x00\x01")  # a v5 close signal of the wrong length
    await asyncio.wait_for(collect(ws), 10)
    await ws.close()
    await runtime.wait_cancelled(1.0)
    assert runtime.cancelled == 1
    url = await server.get_exec(ExecRequest("c1", ("echo", "next")))
    async with client.ws_connect(path(url), protocols=["v5.channel.k8s.io"]) as ws2:
        frames = await collect(ws2)
    assert (1, b"next\n") in frames


async def test_client_gone_cancels_the_process(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, runtime, _ = setup
    url = await server.get_exec(ExecRequest("c1", ("sleep",), stdin=True))
    ws = await client.ws_connect(path(url), protocols=["v5.channel.k8s.io"])
    await runtime.started.wait()
    await ws.close()
    await runtime.wait_cancelled(2.0)
    assert runtime.cancelled == 1


# --------------------------------------------------------------------------- through the gateway


class FakePods(FakeRuntime):
    """Just enough of the pod model for the gateway to resolve one pod with one container."""

    def __init__(self) -> None:
        super().__init__()
        from streamsrv.pods import parse_pod

        self.pod = parse_pod(
            {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
        )

    async def list_pod_sandboxes(self, labels=None):  # type: ignore[no-untyped-def]
        from datetime import UTC, datetime

        from streamsrv.pods import SandboxState

        return [SandboxState("sandbox", self.pod, True, datetime.now(UTC))]

    async def list_containers(self, labels=None):  # type: ignore[no-untyped-def]
        from streamsrv.pods import LABEL_POD_UID, ContainerState

        return [
            ContainerState("cid", "c", "i", "", "running", labels={LABEL_POD_UID: self.pod.uid})
        ]


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], StreamServer]]:
    from streamsrv.app import make_app
    from streamsrv.podmanager import PodManager

    runtime = FakePods()
    streams = StreamServer(runtime, Config())  # type: ignore[arg-type]
    app = make_app(PodManager(runtime), "secret", streams)  # type: ignore[arg-type]
    client = TestClient(TestServer(app))
    await client.start_server()
    streams.base_url = str(client.make_url("")).rstrip("/")
    yield client, streams
    await client.close()


AUTH = {"Authorization": "Bearer secret"}


async def test_gateway_exec_holds_no_token(gateway) -> None:  # type: ignore[no-untyped-def]
    client, streams = gateway
    async with client.ws_connect(
        "/api/v1/namespaces/default/pods/p/exec?command=echo&command=via&stdout=true",
        protocols=["v5.channel.k8s.io"],
        headers=AUTH,
    ) as ws:
        frames = await collect(ws)
    assert (1, b"via\n") in frames
    assert len(streams.cache) == 0  # the bearer token authenticated it: no one-time token
    assert streams.metrics.sessions[("exec", "websocket")] == 1


async def test_a_full_token_cache_never_refuses_kubectls_own_exec(gateway) -> None:  # type: ignore[no-untyped-def]
    """On the old main, 1000 waiting tokens made every gateway exec answer 429 for 60 s."""
    client, streams = gateway
    for _ in range(1000):
        await streams.get_exec(ExecRequest("cid", ("true",)))
    with pytest.raises(CacheFull):
        await streams.get_exec(ExecRequest("cid", ("true",)))
    async with client.ws_connect(
        "/api/v1/namespaces/default/pods/p/exec?command=echo&command=still&stdout=true",
        protocols=["v5.channel.k8s.io"],
        headers=AUTH,
    ) as ws:
        frames = await collect(ws)
    assert (1, b"still\n") in frames


async def test_browser_sessions_have_their_own_token_capacity(gateway) -> None:  # type: ignore[no-untyped-def]
    """999 browser sessions used to fill the one cache and starve kubectl and CRI callers."""
    client, streams = gateway
    cap = streams.limits.max_browser_tokens
    for _ in range(cap):
        streams.issue(ExecRequest("cid", ("sh",), stdin=True), purpose="browser")
    with pytest.raises(CacheFull):
        streams.issue(ExecRequest("cid", ("sh",), stdin=True), purpose="browser")
    resp = await client.post(
        "/api/streamsrv/v1/namespaces/default/pods/p/sessions", json={}, headers=AUTH
    )
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "60"
    assert (await resp.json())["reason"] == "TooManyRequests"
    # CRI/library callers still get URLs.
    assert "/exec/" in await streams.get_exec(ExecRequest("cid", ("true",)))


async def test_gateway_refuses_unknown_subprotocols_and_missing_tokens(gateway) -> None:  # type: ignore[no-untyped-def]
    client, _ = gateway
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(
            "/api/v1/namespaces/default/pods/p/exec?command=true&stdout=true",
            protocols=["v9.channel.k8s.io"],
            headers=AUTH,
        )
    assert info.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(
            "/api/v1/namespaces/default/pods/p/exec?command=true&stdout=true",
            protocols=["v5.channel.k8s.io"],
        )
    assert info.value.status == 401


async def test_raw_garbage_after_the_upgrade_ends_only_that_session(setup) -> None:  # type: ignore[no-untyped-def]
    server, client, runtime, _ = setup
    url = await server.get_exec(ExecRequest("c1", ("sleep",), stdin=True))
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        (
            f"GET {path(url)} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    await runtime.started.wait()
    writer.write(b"\x0f\xff" + b"\x00" * 64)  # a reserved opcode: not a WebSocket frame
    rest = await asyncio.wait_for(reader.read(), 10)  # the server ends this connection:
    writer.close()
    assert rest[:3] == b"\x82\x01\x01"  # the readiness frame, sent before the garbage
    assert rest[3:4] in (b"", b"\x88")  # then at most a close frame, then EOF
    await runtime.wait_cancelled(2.0)
    assert runtime.cancelled == 1
    url = await server.get_exec(ExecRequest("c1", ("echo", "still-serving")))
    async with client.ws_connect(path(url), protocols=["v5.channel.k8s.io"]) as ws:
        assert (1, b"still-serving\n") in await collect(ws)

"""streamsrv.client against scripted servers: each way a server can answer or end a session.

The servers here are small aiohttp handlers that play one part each (a refusal, a status, a
cut connection, a flood); the real servers are in tests/interop/test_streamsrv_client.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from streamsrv.client import (
    Client,
    ClientConfig,
    ConnectFailed,
    ConnectionLost,
    Forbidden,
    NotFound,
    PortForwardError,
    RemoteError,
    Unauthorized,
    UpgradeError,
)
from streamsrv.protocol import status

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Client]]]:
    servers: list[TestServer] = []

    async def start(handler: Handler) -> Client:
        app = web.Application()
        app.router.add_route("GET", "/api/v1/namespaces/{ns}/pods/{pod}/{sub}", handler)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return Client(ClientConfig(server=f"http://127.0.0.1:{server.port}", token="tok"))

    yield start
    for server in servers:
        await server.close()


async def upgrade(request: web.Request, protocols: tuple[str, ...]) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=protocols, max_msg_size=8 << 20)
    await ws.prepare(request)
    return ws


async def test_query_headers_first_resize_and_v5_half_close(serve: Any) -> None:
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen["path"] = request.path
        seen["query"] = list(request.query.items())
        seen["auth"] = request.headers.get("Authorization")
        ws = await upgrade(request, ("v5.channel.k8s.io",))
        messages = []
        async for msg in ws:
            messages.append(msg.data)
            if msg.data == b"\xff\x00":
                break
        seen["messages"] = messages
        await ws.send_bytes(b"\x01" + b"done")
        await ws.send_bytes(b"\x03" + status.success())
        await ws.close()
        return ws

    client = await serve(handler)
    proc = await client.exec(
        "p o", ["sh", "-c", "echo a b"], namespace="n s", container="c", stdin=True, tty=True
    )
    assert proc.protocol == "v5.channel.k8s.io" and proc.stderr is None
    assert proc.stdin is not None and proc.stdin.can_write_eof
    await proc.stdin.write(b"in")
    await proc.stdin.close()
    await proc.stdin.close()  # a second close sends nothing more
    assert proc.stdout is not None
    assert await proc.stdout.readall() == b"done"
    assert await proc.wait() == 0 and proc.returncode == 0
    assert seen["path"] == "/api/v1/namespaces/n s/pods/p o/exec"
    assert seen["query"] == [("command", "sh"), ("command", "-c"), ("command", "echo a b"),
                             ("container", "c"), ("stdin", "true"), ("stdout", "true"),
                             ("tty", "true")]  # fmt: skip
    assert seen["auth"] == "Bearer tok"
    # the first size comes before any input; then stdin; then the CLOSE signal for stdin
    assert seen["messages"] == [b'\x04{"Width": 80, "Height": 24}', b"\x00in", b"\xff\x00"]


@pytest.mark.parametrize(
    ("offered", "body", "expect"),
    [
        ("v4.channel.k8s.io", status.exit_code(3), 3),
        ("v4.channel.k8s.io", status.success(), 0),
        ("channel.k8s.io", b"", 0),
    ],
)
async def test_older_protocols_are_chosen_by_the_server(
    serve: Any, offered: str, body: bytes, expect: int
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = await upgrade(request, (offered,))
        await ws.send_bytes(b"\x02err")
        if body:
            await ws.send_bytes(b"\x03" + body)
        await ws.close()
        return ws

    client = await serve(handler)
    async with await client.exec("p", ["x"], stdin=True) as proc:
        assert proc.protocol == offered
        assert proc.stdin is not None and not proc.stdin.can_write_eof
        await proc.stdin.close()  # local only: nothing to send on these protocols
        assert proc.stderr is not None and await proc.stderr.readall() == b"err"
        assert await proc.wait() == expect


@pytest.mark.parametrize(
    ("protocol", "body", "error", "text"),
    [
        ("v5.channel.k8s.io", status.internal_error("container gone"), RemoteError,
         "Internal error occurred: error executing command in container: container gone"),
        ("channel.k8s.io", b"command terminated with exit code 2", RemoteError,
         "Error executing remote command: command terminated with exit code 2"),
        ("v5.channel.k8s.io", b"{not json", RemoteError, "error stream protocol error"),
        ("v5.channel.k8s.io", b"", ConnectionLost, "without a status"),
    ],
)  # fmt: skip
async def test_endings_that_are_not_exit_codes(
    serve: Any, protocol: str, body: bytes, error: type[Exception], text: str
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = await upgrade(request, (protocol,))
        if body:
            await ws.send_bytes(b"\x03" + body)
        await ws.close()
        return ws

    client = await serve(handler)
    async with await client.exec("p", ["x"]) as proc:
        with pytest.raises(error, match=text) as info:
            await proc.wait()
        if isinstance(info.value, RemoteError) and protocol.startswith("v5") and body[:1] == b"{":
            assert info.value.reason in ("InternalError", "")
        with pytest.raises(error):  # the same answer again
            await proc.wait()
        assert proc.returncode is None


async def test_a_cut_connection_keeps_the_output_and_says_so(serve: Any) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = await upgrade(request, ("v5.channel.k8s.io",))
        await ws.send_bytes(b"\x01partial")
        assert request.transport is not None
        request.transport.abort()  # no close frame, no status
        return ws

    client = await serve(handler)
    async with await client.exec("p", ["x"]) as proc:
        assert proc.stdout is not None
        assert await proc.stdout.readall() == b"partial"
        with pytest.raises(ConnectionLost, match="before the command did"):
            await proc.wait()


async def test_an_oversized_status_is_a_protocol_error(serve: Any) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = await upgrade(request, ("v5.channel.k8s.io",))
        for _ in range(3):
            await ws.send_bytes(b"\x03" + b" " * (512 << 10))
        async for _msg in ws:  # until the client closes
            pass
        return ws

    client = await serve(handler)
    async with await client.exec("p", ["x"]) as proc:
        with pytest.raises(ConnectionLost, match="larger than 1 MiB"):
            await proc.wait()


@pytest.mark.parametrize(
    ("code", "body", "error", "message"),
    [
        (404, {"kind": "Status", "reason": "NotFound", "message": 'pods "p" not found'},
         NotFound, 'pods "p" not found'),
        (401, {"kind": "Status", "reason": "Unauthorized", "message": "Unauthorized"},
         Unauthorized, "Unauthorized"),
        (403, {"kind": "Status", "reason": "Forbidden", "message": "no exec for you"},
         Forbidden, "no exec for you"),
        (500, "plain failure text\nsecond line", UpgradeError, "plain failure text"),
    ],
)  # fmt: skip
async def test_refused_upgrades_carry_the_servers_message(
    serve: Any, code: int, body: Any, error: type[UpgradeError], message: str
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if isinstance(body, dict):
            return web.json_response(body, status=code)
        return web.Response(text=body, status=code)

    client = await serve(handler)
    with pytest.raises(error) as info:
        await client.exec("p", ["x"])
    assert info.value.status == code
    assert info.value.message == message


async def test_no_server_is_connect_failed() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        client = Client(ClientConfig(server=f"http://127.0.0.1:{port}"))
        with pytest.raises(ConnectFailed, match="cannot connect"):
            await client.exec("p", ["x"])


async def test_a_slow_reader_holds_the_server_back(serve: Any) -> None:
    """Nothing is read for a while: what the server could send stays bounded (the client's
    stream limit, websockets' queue and the socket buffers), not the whole 256 MiB."""
    sent = 0
    total = 256 << 20
    block = b"\x01" + bytes(256 << 10)

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        ws = await upgrade(request, ("v5.channel.k8s.io",))
        while sent < total:
            await ws.send_bytes(block)
            sent += len(block) - 1
        await ws.send_bytes(b"\x03" + status.success())
        await ws.close()
        return ws

    client = await serve(handler)
    async with await client.exec("p", ["x"]) as proc:
        await asyncio.sleep(1.0)
        assert 0 < sent < 48 << 20, sent
        assert proc.stdout is not None
        got = 0
        async for chunk in proc.stdout:
            got += len(chunk)
        assert got == total
        assert await proc.wait() == 0


async def test_close_ends_a_session_that_nobody_reads(serve: Any) -> None:
    ended = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = await upgrade(request, ("v5.channel.k8s.io",))
        try:
            while not ws.closed:
                await ws.send_bytes(b"\x01" + bytes(64 << 10))
        finally:
            ended.set()
        return ws

    client = await serve(handler)
    proc = await client.exec("p", ["x"])
    await asyncio.sleep(0.2)
    await asyncio.wait_for(proc.close(), 30)
    await asyncio.wait_for(ended.wait(), 30)
    with pytest.raises(ConnectionLost):
        await proc.wait()


# ----------------------------------------------------------------------------- port-forward


async def portforward_server(
    request: web.Request, script: Callable[[web.WebSocketResponse], Awaitable[None]]
) -> web.StreamResponse:
    assert request.query["ports"] == "8080"
    ws = await upgrade(request, ("v4.channel.k8s.io",))
    await script(ws)
    return ws


async def test_port_forward_echo_then_eof(serve: Any) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        await ws.send_bytes(b"\x00\x90\x1f")
        await ws.send_bytes(b"\x01\x90\x1f")
        msg = await ws.receive()
        assert msg.type == WSMsgType.BINARY
        await ws.send_bytes(b"\x00" + msg.data[1:].upper())
        await ws.close()

    client = await serve(functools.partial(portforward_server, script=script))
    reader, writer = await client.port_forward("p", 8080)
    assert not writer.can_write_eof()
    assert writer.get_extra_info("subprotocol") == "v4.channel.k8s.io"
    writer.write(b"hello")
    await writer.drain()
    assert await reader.read() == b"HELLO"  # then EOF: the server closed
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize(
    ("messages", "error", "text"),
    [
        ([b"\x00\x90\x1f", b"\x01\x90\x1f", b"\x01dial tcp 127.0.0.1:8080: refused"],
         PortForwardError, "refused"),
        ([b"\x00\x91\x1f"], ConnectionLost, "not port 8080"),
    ],
)  # fmt: skip
async def test_port_forward_errors_reach_the_reader(
    serve: Any, messages: list[bytes], error: type[Exception], text: str
) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        for m in messages:
            await ws.send_bytes(m)
        async for _msg in ws:
            pass

    client = await serve(functools.partial(portforward_server, script=script))
    reader, writer = await client.port_forward("p", 8080)
    with pytest.raises(error, match=text):
        await reader.read()
    writer.close()
    with pytest.raises(error):
        await writer.wait_closed()


async def test_forwarder_listens_locally_and_splices(serve: Any) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        await ws.send_bytes(b"\x00\x90\x1f")
        await ws.send_bytes(b"\x01\x90\x1f")
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)  # echo, channel byte included
                if msg.data.endswith(b"\n"):
                    break
        await ws.close()

    client = await serve(functools.partial(portforward_server, script=script))
    async with client.forward("p", {0: 8080}) as fw:
        port = fw.ports[8080]
        assert port > 0
        for _ in range(3):  # a new WebSocket per local connection
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping\n")
            assert await asyncio.wait_for(reader.read(), 30) == b"ping\n"
            writer.close()
            await writer.wait_closed()
    assert fw.errors == []
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


def test_json_of_a_resize_is_what_the_kubelet_reads() -> None:
    # the kubelet lib decodes {"Width": w, "Height": h} with encoding/json: spaces are fine
    assert json.loads(b'{"Width": 80, "Height": 24}') == {"Width": 80, "Height": 24}


async def test_run_gives_the_exit_code_of_a_command_that_stops_reading(serve: Any) -> None:
    """`head -c 10; exit 3` with 64 MiB of input: the session ends while input is still being
    sent, and run() reports the exit code, not the broken pipe (subprocess.communicate too)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = await upgrade(request, ("v5.channel.k8s.io",))
        await ws.receive()  # some input, then the command exits
        await ws.send_bytes(b"\x03" + status.exit_code(3))
        await ws.close()
        return ws

    client = await serve(handler)
    result = await client.run("p", ["x"], input=bytes(64 << 20))
    assert result.exit_code == 3


async def test_forwarder_ends_the_pod_connection_when_the_local_one_ends(serve: Any) -> None:
    closed = asyncio.Event()

    async def script(ws: web.WebSocketResponse) -> None:
        await ws.send_bytes(b"\x00\x90\x1f")
        await ws.send_bytes(b"\x01\x90\x1f")
        async for _msg in ws:  # a service that never closes first
            pass
        closed.set()

    client = await serve(functools.partial(portforward_server, script=script))
    async with client.forward("p", {0: 8080}) as fw:
        reader, writer = await asyncio.open_connection("127.0.0.1", fw.ports[8080])
        writer.write(b"x")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(closed.wait(), 30)


async def test_port_forward_drain_waits_past_the_write_bound(serve: Any) -> None:
    """Writes past WRITE_HIGH make drain() wait while the far side does not read; once it
    reads, drain returns and every byte arrives, in messages of at most MESSAGE bytes."""
    from streamsrv.client.portforward import MESSAGE, WRITE_HIGH

    reading = asyncio.Event()
    received = 0

    async def script(ws: web.WebSocketResponse) -> None:
        nonlocal received
        await ws.send_bytes(b"\x00\x90\x1f")
        await ws.send_bytes(b"\x01\x90\x1f")
        await reading.wait()
        async for msg in ws:
            assert len(msg.data) <= MESSAGE + 1  # a large write goes out in pieces
            received += len(msg.data) - 1
            if received >= total:
                break
        await ws.close()

    total = 32 << 20
    client = await serve(functools.partial(portforward_server, script=script))
    reader, writer = await client.port_forward("p", 8080)
    writer.write(bytes(total))
    drain = asyncio.ensure_future(writer.drain())
    await asyncio.sleep(0.5)
    assert not drain.done()  # held: nothing is read on the far side
    assert writer.transport.get_write_buffer_size() > WRITE_HIGH
    reading.set()
    await asyncio.wait_for(drain, 60)
    assert await asyncio.wait_for(reader.read(), 60) == b""  # the server closed after all
    assert received == total
    writer.close()
    await writer.wait_closed()

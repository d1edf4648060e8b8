"""TLS read buffers: resident only when used, and only for the server's own connections (real
TLS, loopback)."""

from __future__ import annotations

import asyncio
import mmap
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from streamsrv.certs import CertificateAuthority, server_ssl_context
from streamsrv.connections import TLS_READ_BUFFER, GuardedSite, runner_kwargs
from streamsrv.limits import Limits
from streamsrv.metrics import Metrics
from streamsrv.server import Config, StreamServer
from tests.test_remotecommand import FakeRuntime

ASYNCIO_DEFAULT = 256 * 1024


def _ssl_protocol(handler: Any) -> Any:
    return handler.transport._ssl_protocol


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@asynccontextmanager
async def guarded(
    tmp_path: Path, app: web.Application
) -> AsyncIterator[tuple[web.AppRunner, int, ssl.SSLContext]]:
    ca = CertificateAuthority(tmp_path)
    cert, key = ca.serving_cert(["127.0.0.1"])
    limits = Limits()
    runner = web.AppRunner(app, **runner_kwargs(limits))
    await runner.setup()
    site = GuardedSite(
        runner, "127.0.0.1", 0, limits=limits, metrics=Metrics(),
        ssl_context=server_ssl_context(cert, key),
    )  # fmt: skip
    await site.start()
    try:
        yield runner, runner.addresses[0][1], ssl.create_default_context(cadata=ca.pem.decode())
    finally:
        await runner.cleanup()


async def test_an_upload_reads_256_kib_at_a_time_into_our_own_buffer(tmp_path: Path) -> None:
    received: list[int] = []

    async def upload(request: web.Request) -> web.Response:
        received.append(len(await request.read()))
        return web.Response(text="ok")

    app = web.Application(client_max_size=8 << 20)
    app.router.add_post("/upload", upload)
    async with guarded(tmp_path, app) as (runner, port, client_ctx):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        payload = os.urandom(4 << 20)
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(payload)
        )
        writer.write(payload)
        await writer.drain()
        assert b"200 OK" in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert received == [len(payload)]
        assert runner.server is not None
        (handler,) = runner.server.connections
        proto = _ssl_protocol(handler)
        assert isinstance(proto._ssl_buffer, mmap.mmap)
        assert len(proto._ssl_buffer) == TLS_READ_BUFFER
        writer.close()


def _open_idle(port: int, ctx: ssl.SSLContext, n: int) -> list[ssl.SSLSocket]:
    """``n`` blocking TLS client sockets that each send one byte (no asyncio buffers here)."""
    out = []
    for _ in range(n):
        raw = socket.create_connection(("127.0.0.1", port))
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(b"G")
        out.append(tls)
    return out


async def _growth(port: int, ctx: ssl.SSLContext, n: int, seen: Callable[[], int]) -> int:
    before = rss()
    socks = await asyncio.to_thread(_open_idle, port, ctx, n)
    try:
        for _ in range(200):
            if seen() >= n:
                break
            await asyncio.sleep(0.05)
        assert seen() >= n
        return rss() - before
    finally:
        for s in socks:
            s.close()


async def test_idle_connections_hold_far_less_than_asyncios_buffers(tmp_path: Path) -> None:
    """Measured against a plain asyncio TLS server in the same run: 200 idle connections."""
    n = 200
    async with guarded(tmp_path, web.Application()) as (runner, port, client_ctx):
        assert runner.server is not None
        server = runner.server
        ours = await _growth(port, client_ctx, n, lambda: len(server.connections))
    ca = CertificateAuthority(tmp_path)
    cert, key = ca.serving_cert(["127.0.0.1"])
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read(1)

    plain = await asyncio.start_server(hold, "127.0.0.1", 0, ssl=server_ssl_context(cert, key))
    try:
        plain_port = plain.sockets[0].getsockname()[1]
        theirs = await _growth(plain_port, client_ctx, n, lambda: len(accepted))
    finally:
        for w in accepted:
            w.close()
        plain.close()
        await plain.wait_closed()
    assert theirs > n * ASYNCIO_DEFAULT // 2  # the baseline really holds its buffers
    print(f"RSS growth for {n} idle TLS connections: ours {ours} B, asyncio default {theirs} B")
    assert ours < theirs / 2, (ours, theirs)


async def test_other_tls_connections_of_the_process_keep_asyncios_buffers(
    tmp_path: Path,
) -> None:
    """An embedding daemon's own TLS server is untouched by a StreamServer beside it."""
    ca = CertificateAuthority(tmp_path)
    cert, key = ca.serving_cert(["127.0.0.1"])
    config = Config(ssl=server_ssl_context(cert, key))
    theirs: list[Any] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        theirs.append(writer.transport._ssl_protocol)  # type: ignore[attr-defined]
        await reader.read(1)
        writer.close()

    async with StreamServer(FakeRuntime(), config):  # type: ignore[arg-type]
        other = await asyncio.start_server(
            handle, "127.0.0.1", 0, ssl=server_ssl_context(cert, key)
        )
        port = other.sockets[0].getsockname()[1]
        client_ctx = ssl.create_default_context(cadata=ca.pem.decode())
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
            for _ in range(100):
                if theirs:
                    break
                await asyncio.sleep(0.05)
            proto: Any = theirs[0]
            assert len(theirs) == 1
            assert type(proto) is asyncio.sslproto.SSLProtocol
            assert type(proto._ssl_buffer) is bytearray  # type: ignore[attr-defined]
            assert len(proto._ssl_buffer) == ASYNCIO_DEFAULT  # type: ignore[attr-defined]
            assert asyncio.sslproto.SSLProtocol.max_size == ASYNCIO_DEFAULT
            w.close()
        finally:
            other.close()
            await other.wait_closed()

"""TLS read buffers: resident only when used, and only for the server's own connections (real
TLS, loopback)."""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
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


# A server in its own process (so nothing else of the test's allocations moves its RSS) that
# accepts N idle TLS connections and prints how much its RSS grew meanwhile.
_SERVER = r"""
import asyncio, os, sys
from aiohttp import web
from streamsrv.certs import server_ssl_context
from streamsrv.connections import GuardedSite, runner_kwargs
from streamsrv.limits import Limits
from streamsrv.metrics import Metrics

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

async def main(mode, cert, key, n):
    ctx = server_ssl_context(cert, key)
    count = [0]
    if mode == "ours":
        limits = Limits()
        runner = web.AppRunner(web.Application(), **runner_kwargs(limits))
        await runner.setup()
        site = GuardedSite(
            runner, "127.0.0.1", 0, limits=limits, metrics=Metrics(), ssl_context=ctx
        )
        await site.start()
        port = runner.addresses[0][1]
        connected = lambda: len(runner.server.connections)
    else:
        async def hold(reader, writer):
            count[0] += 1
            await reader.read()
            writer.close()
        server = await asyncio.start_server(hold, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        connected = lambda: count[0]
    before = rss()
    print(port, flush=True)
    while connected() < n:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    print(rss() - before, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


def _rss_growth(mode: str, cert: Path, key: Path, ctx: ssl.SSLContext, n: int) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, mode, str(cert), str(key), str(n)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    socks: list[ssl.SSLSocket] = []
    try:
        port = int(proc.stdout.readline())
        for _ in range(n):  # blocking clients: the server sees only TLS handshakes and a byte
            raw = socket.create_connection(("127.0.0.1", port))
            tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            tls.sendall(b"G")
            socks.append(tls)
        return int(proc.stdout.readline())
    finally:
        for s in socks:
            s.close()
        proc.stdin.close()
        proc.stdout.close()
        proc.wait(30)


async def test_idle_connections_hold_far_less_than_asyncios_buffers(tmp_path: Path) -> None:
    """200 idle TLS connections, against a plain asyncio TLS server measured the same way."""
    n = 200
    ca = CertificateAuthority(tmp_path)
    cert, key = ca.serving_cert(["127.0.0.1"])
    ctx = ssl.create_default_context(cadata=ca.pem.decode())
    theirs = await asyncio.to_thread(_rss_growth, "asyncio", cert, key, ctx, n)
    ours = await asyncio.to_thread(_rss_growth, "ours", cert, key, ctx, n)
    print(f"server RSS growth for {n} idle TLS connections: ours {ours} B, asyncio's {theirs} B")
    assert theirs > n * ASYNCIO_DEFAULT // 2  # the baseline really holds its buffers
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


@pytest.mark.parametrize("access_log", [False, True])
async def test_the_access_log_is_off_unless_asked(
    access_log: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A StreamServer's own listener logs no aiohttp access line (each would name a session's
    one-time token) unless its Config asks, as `streamsrv serve -v` / `cri -v` do."""
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    config = Config(access_log=access_log)
    async with (
        StreamServer(FakeRuntime(), config) as server,  # type: ignore[arg-type]
        aiohttp.ClientSession() as session,
        session.post(f"{server.base_url}/exec/not-a-token") as resp,
    ):
        assert resp.status == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    if access_log:
        assert len(lines) == 1 and "/exec/not-a-token" in lines[0], lines
    else:
        assert lines == []

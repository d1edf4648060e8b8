"""TLS read buffers: small while a connection idles, large once it streams (real TLS, loopback)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

from streamsrv.certs import CertificateAuthority, server_ssl_context
from streamsrv.server import TLS_BUSY_READ_BUFFER, TLS_READ_BUFFER, limit_tls_read_buffers


async def test_a_streaming_connection_gets_the_large_buffer_an_idle_one_keeps_the_small(
    tmp_path: Path,
) -> None:
    limit_tls_read_buffers()
    ca = CertificateAuthority(tmp_path)
    cert, key = ca.serving_cert(["127.0.0.1"])
    protocols: list[Any] = []
    received: dict[int, int] = {}
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_protocol = writer.transport._ssl_protocol  # type: ignore[attr-defined]
        protocols.append(ssl_protocol)
        n = 0
        while data := await reader.read(1 << 20):
            n += len(data)
        received[id(ssl_protocol)] = n
        done.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ssl_context(cert, key))
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cadata=ca.pem.decode())
    try:
        _, idle = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        idle.write(b"ls\n")
        await idle.drain()
        _, busy = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        payload = bytes(4 << 20)
        busy.write(payload)
        await busy.drain()
        busy.close()
        await asyncio.wait_for(done.wait(), 10)
        assert len(protocols) == 2
        idle_proto, busy_proto = protocols
        assert received == {id(busy_proto): len(payload)}
        assert len(idle_proto._ssl_buffer) == TLS_READ_BUFFER
        assert len(busy_proto._ssl_buffer) == TLS_BUSY_READ_BUFFER
        idle.close()
    finally:
        server.close()
        await server.wait_closed()


def test_calling_it_again_changes_the_sizes_without_wrapping_twice() -> None:
    cls = asyncio.sslproto.SSLProtocol
    limit_tls_read_buffers(8192, 65536)
    wrapped = cls.buffer_updated
    try:
        assert cls.max_size == 8192
        limit_tls_read_buffers()
        assert cls.buffer_updated is wrapped
        assert cls.max_size == TLS_READ_BUFFER
    finally:
        limit_tls_read_buffers()

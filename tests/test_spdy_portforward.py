"""Port-forward over SPDY against a fake runtime, driven by our own SPDY client codec."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from streamsrv.server import PortForwardRequest, StreamServer
from tests.conftest import stream_server
from tests.test_remotecommand import FakeRuntime
from tests.test_spdy_remotecommand import Client

DIAL_DELAY = 0.3


class SlowDialRuntime(FakeRuntime):
    """Dials a local echo service, slowly: the client's first bytes arrive before the dial ends."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    async def sandbox_ready(self, sandbox_id: str) -> bool:
        return True

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        await asyncio.sleep(DIAL_DELAY)
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)


@pytest.fixture
async def srv() -> AsyncIterator[tuple[StreamServer, TestServer]]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    service = await asyncio.start_server(echo, "127.0.0.1", 0)
    runtime = SlowDialRuntime(service.sockets[0].getsockname()[1])
    async with stream_server(runtime) as (server, ts):
        yield server, ts
    service.close()
    await service.wait_closed()


async def test_data_sent_before_the_dial_finished_arrives_first_and_in_order(srv: Any) -> None:
    server, ts = srv
    url = await server.get_port_forward(PortForwardRequest("sandbox"))
    client, response = await Client.connect(ts, url, ["portforward.k8s.io"])
    assert response.startswith(b"HTTP/1.1 101")
    try:
        headers = {"port": "80", "requestid": "0"}
        client.conn.open_stream({"streamtype": "error", **headers})
        data = client.conn.open_stream({"streamtype": "data", **headers})
        # No wait for the data stream's reply (it comes after the dial): SPDY allows this.
        payload = b"".join(bytes([i]) * 70000 for i in range(20))  # 1.4 MB: past the high water
        for i in range(0, len(payload), 32768):
            client.conn.send_data(data, payload[i : i + 32768])
        client.conn.end_stream(data)
        client.flush()
        async with asyncio.timeout(20):
            while data not in client.ended:
                await client.events()
        got = client.data.get(data, b"")
        assert len(got) == len(payload) and got == payload
        assert server.metrics.forwarded == 1
    finally:
        client.close()

"""Forwarder's own bookkeeping, with a fake pod side: every forwarded connection's pod writer
is closed however the connection ends, also when the forwarder closes while it is ending."""

from __future__ import annotations

import asyncio
from typing import Any

from streamsrv.client.portforward import Forwarder


class _PodTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_the_pod_side_is_closed_when_the_forwarder_closes_as_a_connection_ends() -> None:
    for spins in range(12):  # the forwarder's close lands at a different step of the ending
        opened: list[_PodTransport] = []

        async def open_pod(
            port: int, opened: list[_PodTransport] = opened
        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader)
            transport = _PodTransport()
            protocol.connection_made(transport)
            opened.append(transport)
            return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

        fw = await Forwarder(open_pod, {0: 80}, "127.0.0.1").start()
        try:
            _, local_w = await asyncio.open_connection("127.0.0.1", fw.ports[80])
            for _ in range(200):
                if opened:
                    break
                await asyncio.sleep(0.01)
            local_w.close()
            await local_w.wait_closed()
            for _ in range(spins):
                await asyncio.sleep(0)
        finally:
            await fw.close()
        assert opened and all(t.closed for t in opened), spins

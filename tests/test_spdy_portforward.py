"""Port-forward over SPDY against a fake runtime, driven by our own SPDY client codec."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestServer

from streamsrv.limits import Limits
from streamsrv.portforward import SpdyForwarder
from streamsrv.protocol import spdy
from streamsrv.server import PortForwardRequest, StreamServer
from streamsrv.transport import DATA_FRAME_SIZE
from tests.conftest import stream_server
from tests.test_remotecommand import FakeRuntime
from tests.test_spdy_remotecommand import Client

DIAL_DELAY = 0.3
RuntimeT = TypeVar("RuntimeT", bound=FakeRuntime)


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


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def _serving(
    make: Callable[[int], RuntimeT], limits: Limits | None = None
) -> AsyncIterator[tuple[StreamServer, TestServer, RuntimeT]]:
    """A stream server on ``make(port)``, a runtime dialling a local echo service's port."""
    service = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        runtime = make(service.sockets[0].getsockname()[1])
        async with stream_server(runtime, limits) as (server, ts):
            yield server, ts, runtime
    finally:
        service.close()
        await service.wait_closed()


@pytest.fixture
async def srv() -> AsyncIterator[tuple[StreamServer, TestServer]]:
    async with _serving(SlowDialRuntime) as (server, ts, _):
        yield server, ts


def _send(client: Client, sid: int, payload: bytes, *, fin: bool = False) -> None:
    """``payload`` as 32 KiB DATA frames (kubectl's size), then a FIN if asked, in one write."""
    for i in range(0, len(payload), 32768):
        client.conn.send_data(sid, payload[i : i + 32768])
    if fin:
        client.conn.end_stream(sid)
    client.flush()


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
        _send(client, data, payload, fin=True)
        async with asyncio.timeout(20):
            while data not in client.ended:
                await client.events()
        got = client.data.get(data, b"")
        assert len(got) == len(payload) and got == payload
        assert server.metrics.forwarded == 1
    finally:
        client.close()


class CountingSocket(socket.socket):
    """A pod socket that records the size of every ``send`` the server makes on it."""

    sends: list[int]

    def send(self, data: Any, flags: int = 0) -> int:
        self.sends.append(len(data))
        return super().send(data, flags)


class CountingRuntime(FakeRuntime):
    """Dials the echo service at once, through a CountingSocket."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.sockets: list[CountingSocket] = []

    async def sandbox_ready(self, sandbox_id: str) -> bool:
        return True

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        plain = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        counted = CountingSocket(fileno=plain.detach())
        counted.sends = []
        self.sockets.append(counted)
        return counted


@pytest.fixture
async def counted() -> AsyncIterator[tuple[StreamServer, TestServer, CountingRuntime]]:
    async with _serving(CountingRuntime) as served:
        yield served


async def _forwarded_pair(ts: TestServer, url: str) -> tuple[Client, int]:
    """A connection with one pair whose data stream is replied to (the pod is dialled)."""
    client, response = await Client.connect(ts, url, ["portforward.k8s.io"])
    assert response.startswith(b"HTTP/1.1 101")
    headers = {"port": "80", "requestid": "0"}
    client.conn.open_stream({"streamtype": "error", **headers})
    data = client.conn.open_stream({"streamtype": "data", **headers})
    client.flush()
    async with asyncio.timeout(10):
        while not any(
            isinstance(e, spdy.StreamReplied) and e.stream_id == data for e in await client.events()
        ):
            pass
    return client, data


async def _pod_sends(
    server: StreamServer, ts: TestServer, runtime: CountingRuntime, frames: int
) -> list[int]:
    """Send ``frames`` 32 KiB DATA frames in one write through a forwarded pair; once the echo
    service has sent all of it back, the sizes of the server's sends to the pod."""
    url = await server.get_port_forward(PortForwardRequest("sandbox"))
    client, data = await _forwarded_pair(ts, url)
    try:
        payload = b"".join(bytes([i + 1]) * 32768 for i in range(frames))
        _send(client, data, payload)
        async with asyncio.timeout(20):
            while len(client.data.get(data, b"")) < len(payload):
                await client.events()
        assert client.data[data] == payload
        (pod,) = runtime.sockets
        assert sum(pod.sends) == len(payload)
        return pod.sends
    finally:
        client.close()


async def test_data_frames_of_one_read_go_to_the_pod_in_one_write(counted: Any) -> None:
    """kubectl sends 32 KiB DATA frames; the pod socket gets what one read of the client
    carried in one send, not a send per frame (docs/benchmarks.md, "client to pod")."""
    frames = 6  # 192 KiB and their headers: within one 256 KiB read of the server
    server, ts, runtime = counted
    sends = await _pod_sends(server, ts, runtime, frames)
    assert len(sends) < frames, sends


async def test_a_read_of_the_pod_goes_to_the_client_as_one_data_frame(counted: Any) -> None:
    """The echo service writes back 64 KiB at a time: the server's reads of it go to the client
    as DATA frames of up to DATA_FRAME_SIZE, not cut at 32 KiB as Go's server writes them
    (kubectl reads each frame on its own; docs/benchmarks.md, "DATA frames of one read")."""
    server, ts, _ = counted
    url = await server.get_port_forward(PortForwardRequest("sandbox"))
    client, data = await _forwarded_pair(ts, url)
    try:
        payload = bytes(range(256)) * 4096  # 1 MiB
        _send(client, data, payload)
        frames: list[int] = []
        async with asyncio.timeout(20):
            while len(client.data.get(data, b"")) < len(payload):
                frames += [
                    len(e.data)
                    for e in await client.events()
                    if isinstance(e, spdy.DataReceived) and e.stream_id == data
                ]
        assert client.data[data] == payload
        assert max(frames) > 32768, frames
        assert max(frames) <= DATA_FRAME_SIZE, frames
    finally:
        client.close()


async def test_a_failing_flush_ends_its_session_only(
    counted: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug of ours while a turn's client data is written to the pod (``_flush``) ends that
    session with GOAWAY(INTERNAL_ERROR) and one log line; the server serves the next one."""
    server, ts, _ = counted

    def broken(self: SpdyForwarder, pair: Any) -> None:
        raise RuntimeError("a bug of ours")

    client, data = await _forwarded_pair(ts, await server.get_port_forward(PortForwardRequest("s")))
    try:
        with monkeypatch.context() as patched, caplog.at_level(logging.ERROR):
            patched.setattr(SpdyForwarder, "_write_pending", broken)
            _send(client, data, b"x" * 1000)  # below read_buffer: written by the flush only
            goaway: list[spdy.GoAwayReceived] = []
            async with asyncio.timeout(10):
                while not goaway:
                    events = await client.events()
                    goaway = [e for e in events if isinstance(e, spdy.GoAwayReceived)]
                    assert not any(isinstance(e, spdy.ConnectionTerminated) for e in events)
        assert goaway[0].status == spdy.GoAwayStatus.INTERNAL_ERROR
        assert "writing to a pod socket failed" in caplog.text
    finally:
        client.close()
    client, data = await _forwarded_pair(ts, await server.get_port_forward(PortForwardRequest("s")))
    try:
        _send(client, data, b"still served")
        async with asyncio.timeout(10):
            while client.data.get(data, b"") != b"still served":
                await client.events()
    finally:
        client.close()


async def test_data_and_the_half_close_of_one_read_reach_the_pod_in_order(counted: Any) -> None:
    """Data frames and the FIN after them in one read: every byte is written to the pod
    before its half-close (the echo service answers all of it, then closes)."""
    server, ts, _ = counted
    url = await server.get_port_forward(PortForwardRequest("sandbox"))
    client, data = await _forwarded_pair(ts, url)
    try:
        payload = bytes(range(256)) * 512  # 128 KiB in four frames, the last one with FIN
        _send(client, data, payload, fin=True)
        async with asyncio.timeout(20):
            while data not in client.ended:
                if any(isinstance(e, spdy.ConnectionTerminated) for e in await client.events()):
                    break
        assert client.data.get(data, b"") == payload
        assert data in client.ended
    finally:
        client.close()


async def test_pending_pod_data_past_read_buffer_is_written_at_once() -> None:
    """What waits for the end of the loop's turn is bounded by ``Limits.read_buffer``: with a
    16 KiB read_buffer, every 32 KiB frame crosses it and goes to the pod at once, so no send
    is larger than read_buffer plus that frame, however much one read of the client held."""
    limits = Limits(read_buffer=16 * 1024)
    async with _serving(CountingRuntime, limits) as (server, ts, runtime):
        sends = await _pod_sends(server, ts, runtime, 32)  # 1 MiB in one write
    assert max(sends) <= limits.read_buffer + 32768, sends

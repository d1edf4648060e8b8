"""Port-forward under pressure: failing and hanging dials, the dial and pair caps, the tunnel.

Each test drives the real stream server on loopback against a fake runtime (or the process
runtime's real ``dial``) and goes past one bound of :class:`~streamsrv.limits.Limits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.connector import AddrInfoType

from streamsrv.errors import BackendError
from streamsrv.limits import KIB, Limits
from streamsrv.pods import parse_pod
from streamsrv.portforward import EarlyData
from streamsrv.protocol import spdy
from streamsrv.protocol.channels import SPDY_TUNNEL_PORTFORWARD, V4_CHANNEL
from streamsrv.runtime.base import connect_first, loopback_sockets
from streamsrv.runtime.process import ProcessRuntime
from streamsrv.server import PortForwardRequest, StreamServer
from streamsrv.transport import WebSocketTransport
from tests.conftest import pod_manifest, stream_server
from tests.test_remotecommand import FakeRuntime
from tests.test_spdy_remotecommand import Client

# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A local echo service: the "pod's" port that working dials connect to."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    service = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield service.sockets[0].getsockname()[1]
    service.close()
    await service.wait_closed()


class DialRuntime(FakeRuntime):
    """A fake runtime whose pod is always ready and whose ports all lead to ``echo_port``."""

    def __init__(self, echo_port: int) -> None:
        super().__init__()
        self.echo_port = echo_port

    async def sandbox_ready(self, sandbox_id: str) -> bool:
        return True

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        return await connect_first(loopback_sockets(), self.echo_port)


@contextlib.asynccontextmanager
async def serving(runtime: FakeRuntime, limits: Limits) -> AsyncIterator[StreamServer]:
    async with stream_server(runtime, limits) as (server, _):
        yield server


class PortForwardClient(Client):
    """The SPDY test client, remembering replies and resets, with kubectl's stream pairs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.replied: set[int] = set()
        self.resets: dict[int, int] = {}
        self.terminated = False

    @classmethod
    async def start(cls, server: StreamServer) -> PortForwardClient:
        url = await server.get_port_forward(PortForwardRequest("sandbox"))
        host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        path = "/" + url.split("/", 3)[3]
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            "X-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n".encode()
        )
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        client = cls(reader, writer)
        if not response.startswith(b"HTTP/1.1 101"):
            client.close()
            raise AssertionError(response)
        return client

    async def events(self) -> list[spdy.Event]:
        events = await super().events()
        for e in events:
            if isinstance(e, spdy.StreamReplied):
                self.replied.add(e.stream_id)
            elif isinstance(e, spdy.StreamReset):
                self.resets[e.stream_id] = e.status
            elif isinstance(e, spdy.ConnectionTerminated):
                self.terminated = True
        return events

    def open_pair(self, request_id: str, port: int) -> tuple[int, int]:
        """The error stream (half-closed at once, as kubectl does), then the data stream."""
        headers = {"port": str(port), "requestid": request_id}
        error = self.conn.open_stream({"streamtype": "error", **headers}, fin=True)
        data = self.conn.open_stream({"streamtype": "data", **headers})
        return error, data

    async def until(self, done: Callable[[], bool], within: float = 20) -> None:
        async with asyncio.timeout(within):
            while not done():
                assert not self.terminated, "the port-forward connection ended"
                await self.events()

    async def echo(self, data_stream: int, payload: bytes) -> None:
        """Send ``payload`` on a pair and wait until the echo service has sent it back."""
        before = len(self.data.get(data_stream, b""))
        self.conn.send_data(data_stream, payload)
        self.flush()
        await self.until(lambda: len(self.data.get(data_stream, b"")) >= before + len(payload))
        assert self.data[data_stream][before:] == payload


async def wait_until(check: Callable[[], bool], within: float = 10) -> None:
    for _ in range(int(within / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {within} s")


def ping_frames(count: int, first_id: int = 1) -> bytes:
    """``count`` SPDY/3 PING frames with odd (client) ids."""
    head = b"\x80\x03\x00\x06\x00\x00\x00\x04"
    return b"".join(head + struct.pack(">I", first_id + 2 * i) for i in range(count))


# ------------------------------------------------------------------------------ dials


class FailingPortRuntime(DialRuntime):
    """Port 1: the runtime's one error type after a short while. Other ports: the echo service."""

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        if port == 1:
            await asyncio.sleep(0.3)
            raise BackendError("dial localhost:1: connection refused")
        return await super().dial(sandbox_id, port)


async def test_a_failed_dial_fails_its_pair_only_even_with_early_data(echo_port: int) -> None:
    """A BackendError from dial fails pair A (RST data, empty FIN error) and reading resumes.

    On the old main ``dial`` errors other than OSError escaped: A was never failed, and the
    1 MiB of early data it held paused reading from the connection for good, so B's streams
    (behind A's data in the byte stream) were never even seen.
    """
    async with serving(FailingPortRuntime(echo_port), Limits()) as server:
        client = await PortForwardClient.start(server)
        try:
            a_error, a_data = client.open_pair("a", 1)
            early = bytes(range(256)) * (8 * KIB)  # 2 MiB, sent before A's dial fails
            for i in range(0, len(early), 32 * KIB):
                client.conn.send_data(a_data, early[i : i + 32 * KIB])
            b_error, b_data = client.open_pair("b", 2)
            client.flush()
            payload = b"through pair b " * 1000
            await client.echo(b_data, payload)
            await client.until(lambda: a_data in client.resets and a_error in client.ended)
            assert a_error not in client.resets  # ended (FIN), not reset
            assert client.data.get(a_error, b"") == b""  # no text: kubectl would end it all
            assert a_data not in client.replied and a_data not in client.data
            assert b_data in client.replied and client.data.get(b_error, b"") == b""
            assert server.metrics.refused["portforward-dial"] == 1
            assert server.metrics.forwarded == 1
            # The connection goes on: another pair to the failing port fails alone again.
            a2_error, a2_data = client.open_pair("a2", 1)
            client.flush()
            await client.until(lambda: a2_data in client.resets and a2_error in client.ended)
            await client.echo(b_data, b"still here")
        finally:
            client.close()


class HangingPortRuntime(DialRuntime):
    """Port 1: a dial that never finishes (until cancelled). Other ports: the echo service."""

    def __init__(self, echo_port: int) -> None:
        super().__init__(echo_port)
        self.hanging = 0
        self.cancelled = 0

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        if port != 1:
            return await super().dial(sandbox_id, port)
        self.hanging += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.hanging -= 1
        raise AssertionError("unreachable")


# Far above a loopback round trip, so "port 2 answered before port 1's dial gave up" is no race.
HANG_DIAL_TIMEOUT = 2.0


async def test_a_hanging_dial_blocks_no_other_port_of_a_websocket(echo_port: int) -> None:
    """Port 2's data flows while port 1 still dials; port 1 then fails with error text.

    On the old main the reader awaited port 1's dial as soon as port 1 had data, which blocked
    every port; and a dial had no timeout, so that was forever.
    """
    runtime = HangingPortRuntime(echo_port)
    async with serving(runtime, Limits(dial_timeout=HANG_DIAL_TIMEOUT)) as server:
        url = await server.get_port_forward(PortForwardRequest("sandbox"))
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url + "?ports=1&ports=2", protocols=[V4_CHANNEL]) as ws,
        ):
            assert ws.protocol == V4_CHANNEL
            preamble = [(await ws.receive(timeout=10)).data for _ in range(4)]
            assert preamble == [b"\x00\x01\x00", b"\x01\x01\x00", b"\x02\x02\x00", b"\x03\x02\x00"]
            got: dict[int, bytes] = {}

            async def receive_until(done: Callable[[], bool]) -> None:
                while not done():
                    msg = await ws.receive(timeout=10)
                    assert msg.type == WSMsgType.BINARY, msg
                    got[msg.data[0]] = got.get(msg.data[0], b"") + msg.data[1:]

            await ws.send_bytes(b"\x00early data for port 1")
            await ws.send_bytes(b"\x02hello port 2")
            await receive_until(lambda: got.get(2, b"") == b"hello port 2")
            assert runtime.hanging == 1 and runtime.cancelled == 0  # port 1: still dialling
            assert 1 not in got
            await receive_until(lambda: 1 in got)
            text = got[1].decode()
            assert "error forwarding port 1" in text and "no connection within" in text, text
            assert runtime.hanging == 0 and runtime.cancelled == 1  # the timeout ended it
            assert 0 not in got
            await ws.send_bytes(b"\x02port 2 lives on")
            await receive_until(lambda: got.get(2, b"").endswith(b"port 2 lives on"))
        assert server.metrics.refused["portforward-dial"] == 1


class GatedRuntime(DialRuntime):
    """Dials wait for ``release`` and count how many wait at once."""

    def __init__(self, echo_port: int) -> None:
        super().__init__(echo_port)
        self.release = asyncio.Event()
        self.active = 0
        self.peak = 0
        self.calls = 0

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        self.calls += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.release.wait()
        finally:
            self.active -= 1
        return await super().dial(sandbox_id, port)


async def test_dials_per_connection_are_capped(echo_port: int) -> None:
    """10 pairs, a cap of 3: exactly 3 dials run at once; the rest wait their turn, then work."""
    runtime = GatedRuntime(echo_port)
    async with serving(runtime, Limits(max_dials_per_connection=3)) as server:
        client = await PortForwardClient.start(server)
        try:
            pairs = [client.open_pair(str(i), 80) for i in range(10)]
            client.flush()
            await wait_until(lambda: runtime.active >= 3)
            await asyncio.sleep(0.5)  # time for any dial past the cap to start
            assert runtime.peak == 3 and runtime.active == 3 and runtime.calls == 3
            runtime.release.set()
            await client.until(lambda: all(data in client.replied for _, data in pairs))
            assert runtime.peak == 3 and runtime.calls == 10
            for i, (_, data) in enumerate(pairs):
                await client.echo(data, f"pair {i}".encode())
            extra_error, extra_data = client.open_pair("extra", 80)
            client.flush()
            await client.echo(extra_data, b"the connection lives on")
            assert not client.resets and extra_error not in client.ended
            assert server.metrics.forwarded == 11
        finally:
            client.close()


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A loopback port whose accept queue is full: Linux drops further SYNs, connect hangs."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):  # never accepted; those past the queue stay in SYN_SENT
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            filler.connect_ex(("127.0.0.1", port))
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.skipif(sys.platform != "linux", reason="a full accept queue drops SYNs on Linux")
async def test_dials_hold_no_thread(tmp_path: Path) -> None:
    """40 hanging dials of the process runtime leave the default thread pool free.

    On the old main each dial was a blocking connect in ``asyncio.to_thread``: the few workers
    of the loop's default pool sat in connect, and every other ``to_thread`` call waited.
    """
    runtime = ProcessRuntime(tmp_path / "pods")
    try:
        manifest = pod_manifest("pf", {"name": "main", "image": "i", "command": ["true"]})
        sandbox = await runtime.run_pod_sandbox(parse_pod(manifest))
        with full_backlog() as port:
            await asyncio.sleep(0.1)  # let the fillers' handshakes complete
            probe = loopback_sockets()
            with pytest.raises(TimeoutError):  # the setup: a connect to it really hangs
                await asyncio.wait_for(connect_first(probe, port), 0.5)
            dials = [
                asyncio.create_task(asyncio.wait_for(runtime.dial(sandbox, port), 3))
                for _ in range(40)
            ]
            await asyncio.sleep(0.2)
            assert not any(d.done() for d in dials)
            await asyncio.wait_for(asyncio.to_thread(int), 2)
            results = await asyncio.gather(*dials, return_exceptions=True)
            assert all(isinstance(r, TimeoutError) for r in results), results
    finally:
        await runtime.close()


# ------------------------------------------------------------------------------ pairs


@pytest.mark.parametrize("max_streams", [4, 64])
async def test_pairs_past_the_cap_are_refused_and_the_connection_lives_on(
    echo_port: int, max_streams: int
) -> None:
    """A third pair is refused (REFUSED_STREAM); the first two work; a freed slot is reused.

    ``max_streams=4`` is the least the pair cap allows (two streams a pair); with 64 the pair
    cap alone refuses.
    """
    limits = Limits(max_portforward_pairs=2, max_streams=max_streams)
    async with serving(DialRuntime(echo_port), limits) as server:
        client = await PortForwardClient.start(server)
        try:
            first = client.open_pair("1", 80)
            second = client.open_pair("2", 80)
            client.flush()
            await client.echo(first[1], b"one")
            await client.echo(second[1], b"two")
            third = client.open_pair("3", 80)
            client.flush()
            await client.until(lambda: third[0] in client.resets)
            assert client.resets[third[0]] == spdy.RstStatus.REFUSED_STREAM
            await client.until(lambda: third[1] in client.resets)
            assert client.resets[third[1]] == spdy.RstStatus.REFUSED_STREAM
            if max_streams > 4:
                assert server.metrics.refused["portforward-pairs"] == 2
            await client.echo(first[1], b"one again")
            await client.echo(second[1], b"two again")
            client.conn.end_stream(first[1])  # pair 1 ends: the echo service closes, and so on
            client.flush()
            await client.until(lambda: {first[0], first[1]} <= client.ended)
            assert first[0] not in client.resets and first[1] not in client.resets
            fourth = client.open_pair("4", 80)
            client.flush()
            await client.echo(fourth[1], b"four")
            await client.echo(second[1], b"two still")
            assert fourth[0] not in client.resets and fourth[1] not in client.resets
        finally:
            client.close()


# ------------------------------------------------------------------------------ the tunnel


async def test_tunnel_messages_past_the_limit_are_closed_with_1009(echo_port: int) -> None:
    """A 100 KiB message of valid SPDY (PINGs) closes the tunnel with 1009; 60 KiB is fine.

    On the old main tunnel messages had no size limit (``max_msg_size=0``).
    """
    limits = Limits(max_websocket_message=64 * KIB)
    async with serving(DialRuntime(echo_port), limits) as server, aiohttp.ClientSession() as http:
        url = await server.get_port_forward(PortForwardRequest("sandbox"))
        async with http.ws_connect(url, protocols=[SPDY_TUNNEL_PORTFORWARD]) as ws:
            assert ws.protocol == SPDY_TUNNEL_PORTFORWARD
            big = ping_frames(100 * KIB // 12 + 1)
            assert len(big) > 100 * KIB
            await ws.send_bytes(big)
            msg = await ws.receive(timeout=10)
            assert msg.type == WSMsgType.CLOSE, msg
            assert msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        # The same pings in a message under the limit are echoed.
        url = await server.get_port_forward(PortForwardRequest("sandbox"))
        async with http.ws_connect(url, protocols=[SPDY_TUNNEL_PORTFORWARD]) as ws:
            count = 60 * KIB // 12
            await ws.send_bytes(ping_frames(count))
            conn = spdy.SpdyConnection(spdy.Role.CLIENT)
            acks = 0
            while acks < count:
                msg = await ws.receive(timeout=10)
                assert msg.type == WSMsgType.BINARY, msg
                acks += sum(isinstance(e, spdy.PingAck) for e in conn.receive_data(msg.data))
            assert acks == count


def small_buffers(addr_info: AddrInfoType) -> socket.socket:
    """A client socket with small kernel buffers, so that they cannot hide a queue of ours."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KIB)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KIB)
    return sock


def tunnel_transports() -> list[WebSocketTransport]:
    return [o for o in gc.get_objects() if isinstance(o, WebSocketTransport) and not o.is_closing()]


async def test_a_tunnel_client_that_never_reads_cannot_grow_our_queue(echo_port: int) -> None:
    """200,000 PINGs from a client that reads nothing: the echoes queued stay bounded.

    On the old main the tunnel went on reading while its writer was stuck, queueing every echo.
    """
    limits = Limits(write_buffer=256 * KIB)
    per_message = 4096  # PINGs per message: 48 KiB, so one flush adds at most that
    total = 1_000_000
    connector = aiohttp.TCPConnector(socket_factory=small_buffers)
    async with (
        serving(DialRuntime(echo_port), limits) as server,
        aiohttp.ClientSession(connector=connector) as http,
    ):
        url = await server.get_port_forward(PortForwardRequest("sandbox"))
        ws = await http.ws_connect(
            url, protocols=[SPDY_TUNNEL_PORTFORWARD], timeout=aiohttp.ClientWSTimeout(ws_close=2)
        )
        sent = 0

        async def send() -> None:
            nonlocal sent
            while sent < total:
                count = min(per_message, total - sent)
                await ws.send_bytes(ping_frames(count, first_id=2 * sent + 1))
                sent += count

        sender = asyncio.create_task(send())
        try:
            await wait_until(lambda: bool(tunnel_transports()))
            [transport] = tunnel_transports()
            loop = asyncio.get_running_loop()
            peak, last_sent, stalled_since = 0, -1, loop.time()
            deadline = stalled_since + 30
            # Until the sender is done or has made no progress for a second (we stopped
            # reading it): sample our queue toward the client meanwhile.
            while not sender.done() and loop.time() < deadline:
                peak = max(peak, transport.get_write_buffer_size())
                if sent != last_sent:
                    last_sent, stalled_since = sent, loop.time()
                elif loop.time() - stalled_since > 1.0:
                    break
                await asyncio.sleep(0.005)
            peak = max(peak, transport.get_write_buffer_size())
            assert sent > 0
            assert peak < 2 * limits.write_buffer, (peak, sent)
            if sender.done():
                sender.result()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            with contextlib.suppress(Exception):
                await ws.close()


async def test_an_idle_spdy_port_forward_is_closed_and_a_busy_one_is_not(echo_port: int) -> None:
    """Old main: port-forward connections never timed out (Config.idle_timeout was unread)."""
    async with serving(DialRuntime(echo_port), Limits(idle_timeout=0.6)) as server:
        busy = await PortForwardClient.start(server)
        idle = await PortForwardClient.start(server)
        try:
            _, data = busy.open_pair("b", 80)
            busy.flush()
            await busy.until(lambda: data in busy.replied)
            for i in range(6):  # data keeps the busy one alive past the timeout
                await busy.echo(data, b"tick %d" % i)
                await asyncio.sleep(0.2)
            idle.conn.ping()  # a ping is not data
            idle.flush()
            async with asyncio.timeout(10):
                while not idle.terminated:
                    await idle.events()
            assert not busy.terminated
            assert server.metrics.refused["idle-timeout"] >= 1
        finally:
            busy.close()
            idle.close()


async def test_an_idle_websocket_port_forward_is_closed(echo_port: int) -> None:
    async with serving(DialRuntime(echo_port), Limits(idle_timeout=0.6)) as server:
        url = await server.get_port_forward(PortForwardRequest("sandbox"))
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url + "?ports=80", protocols=[V4_CHANNEL]) as ws,
        ):
            for _ in range(2):  # the port preamble
                await ws.receive(timeout=10)
            await ws.send_bytes(b"\x00hi")
            assert (await ws.receive(timeout=10)).data == b"\x00hi"
            msg = await ws.receive(timeout=10)  # nothing more moves: the server closes
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
        assert server.metrics.refused["idle-timeout"] == 1


async def test_channel_data_before_the_dial_is_held_up_to_read_buffer(echo_port: int) -> None:
    """A client that floods a port still dialling makes the server hold at most
    Limits.read_buffer (plus the message that crossed it), then stop reading that client."""
    limits = Limits(dial_timeout=HANG_DIAL_TIMEOUT, read_buffer=64 * KIB)
    async with serving(HangingPortRuntime(echo_port), limits) as server:
        url = await server.get_port_forward(PortForwardRequest("sandbox"))
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(url + "?ports=1", protocols=[V4_CHANNEL]) as ws,
        ):
            for _ in range(2):  # the port preamble
                await ws.receive(timeout=10)
            chunk = b"\x00" + bytes(16 * KIB)

            async def flood() -> None:
                for _ in range(1024):  # 16 MiB, far more than socket buffers take
                    await ws.send_bytes(chunk)

            sender = asyncio.create_task(flood())
            await asyncio.sleep(HANG_DIAL_TIMEOUT / 2)
            held = [o.size for o in gc.get_objects() if isinstance(o, EarlyData)]
            assert held and max(held) <= limits.read_buffer + len(chunk), held
            assert not sender.done()  # the server stopped reading this client
            msg = await ws.receive(timeout=10)  # the dial gives up: error text on port 1
            assert msg.data[0] == 1 and b"no connection within" in msg.data, msg
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender

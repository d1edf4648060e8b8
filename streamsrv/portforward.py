"""Port-forward: SPDY stream pairs, the SPDY-over-WebSocket tunnel, and WebSocket channels.

SPDY (protocol.md §4, appendix G): every local connection of kubectl is a pair of streams,
``error`` then ``data``, tied by ``requestid``. The data stream's SYN_REPLY is held until the
dial inside the pod succeeds; a failed dial resets the data stream (no reply) and ends the error
stream empty, so kubectl reports that one connection and keeps the forward alive. Text on the
error stream is never written: every kubectl tears the whole forward down on any text.

The tunnel (kubectl 1.31+, §5b) carries the same SPDY byte stream inside binary WebSocket
messages, fed to the same codec. The channel protocol (§5a, the Python client) gives each port a
data channel ``2i`` and an error channel ``2i+1``, each opened by the port as uint16 LE.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import WSMsgType, web

from .protocol import channels, spdy
from .session import ReadPause, SpdySession, accept_spdy, header

if TYPE_CHECKING:
    from .server import PortForwardRequest, StreamServer

log = logging.getLogger(__name__)

PORTFORWARD_V1 = "portforward.k8s.io"
CHUNK = 256 * 1024  # bytes per read from a pod socket: one SPDY frame or message each
SOCKET_HIGH_WATER = 1 << 20
TUNNEL_HIGH_WATER = 4 << 20


class Link(Protocol):
    """What the pairing logic needs of a SPDY connection, raw or tunnelled."""

    conn: spdy.SpdyConnection
    closed: asyncio.Event

    def flush(self) -> None: ...

    async def drain(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class TunnelLink:
    """SPDY inside binary WebSocket messages (boundaries mean nothing, §5b)."""

    def __init__(self, ws: web.WebSocketResponse, on_event: Callable[[spdy.Event], None]) -> None:
        self.ws = ws
        self.on_event = on_event
        self.conn = spdy.SpdyConnection(spdy.Role.SERVER)
        self.closed = asyncio.Event()
        self._out: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._reading = asyncio.Event()
        self._reading.set()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out and not self.closed.is_set():
            self._out.append(out)
            self._size += len(out)
            if self._size > TUNNEL_HIGH_WATER:
                self._drained.clear()
            self._wake.set()

    async def drain(self) -> None:
        if self.closed.is_set():
            raise ConnectionResetError("the tunnel is closed")
        await self._drained.wait()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    async def write_loop(self) -> None:
        while not self.closed.is_set():
            await self._wake.wait()
            self._wake.clear()
            while self._out:
                data = self._out.popleft()
                self._size -= len(data)
                await self.ws.send_bytes(data)
                if self._size <= TUNNEL_HIGH_WATER:
                    self._drained.set()

    async def read_loop(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.BINARY:
                    break
                await self._reading.wait()
                try:
                    events = self.conn.receive_data(msg.data)
                except spdy.RemoteProtocolError as exc:
                    log.info("tunnel ended on a SPDY protocol error: %s", exc)
                    self.flush()
                    break
                self.flush()
                for event in events:
                    self.on_event(event)
        finally:
            self.on_event(spdy.ConnectionTerminated())
            self.closed.set()
            self._drained.set()
            self._wake.set()


class _Pair:
    __slots__ = (
        "request_id", "port", "error", "data", "writer", "task", "timer", "eof", "early",
        "early_size", "settled",
    )  # fmt: skip

    def __init__(self, request_id: str, port: int) -> None:
        self.request_id = request_id
        self.port = port
        self.error: int | None = None
        self.data: int | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.eof = False  # the client half-closed the data stream before the dial finished
        # Data the client sent before the pod's port was dialled: SPDY lets a client send on a
        # stream before its reply (kubectl waits; others need not). Written first, in order.
        self.early: list[bytes] = []
        self.early_size = 0
        self.settled = asyncio.Event()  # dialled, failed or forgotten: no more early data


class SpdyForwarder:
    """Stream pairs of one SPDY (or tunnelled) port-forward connection."""

    def __init__(self, server: StreamServer, req: PortForwardRequest) -> None:
        self.server = server
        self.req = req
        self.link: Link | None = None
        self.pairs: dict[str, _Pair] = {}
        self.by_stream: dict[int, _Pair] = {}
        self.gone = asyncio.Event()
        self.read_pause = ReadPause()

    def _send(self, action: Callable[[], Any]) -> None:
        """A codec call on a stream the client may have reset meanwhile, then flush."""
        assert self.link is not None
        with contextlib.suppress(spdy.ProtocolError):
            action()
        self.link.flush()

    def on_event(self, event: spdy.Event) -> None:
        if isinstance(event, spdy.StreamOpened):
            self._opened(event)
        elif isinstance(event, spdy.DataReceived):
            pair = self.by_stream.get(event.stream_id)
            if pair is None or event.stream_id != pair.data:
                pass
            elif pair.writer is not None:
                pair.writer.write(event.data)
                full = pair.writer.transport.get_write_buffer_size() > SOCKET_HIGH_WATER
                if full and self.link is not None:
                    self.read_pause.pause_until(self.link, pair.writer.drain)
            elif not pair.settled.is_set():
                pair.early.append(event.data)
                pair.early_size += len(event.data)
                if pair.early_size > SOCKET_HIGH_WATER and self.link is not None:
                    self.read_pause.pause_until(self.link, pair.settled.wait)
        elif isinstance(event, spdy.StreamEnded):
            pair = self.by_stream.get(event.stream_id)
            if pair is not None and event.stream_id == pair.data:
                if pair.writer is not None and pair.writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        pair.writer.write_eof()  # the client's half-close, passed on
                else:
                    pair.eof = True
        elif isinstance(event, spdy.StreamReset):
            pair = self.by_stream.get(event.stream_id)
            if pair is not None and event.stream_id == pair.data:
                self._drop(pair)
        elif isinstance(event, spdy.GoAwayReceived | spdy.ConnectionTerminated):
            self.gone.set()

    def _opened(self, event: spdy.StreamOpened) -> None:
        assert self.link is not None
        conn, sid = self.link.conn, event.stream_id
        kind = header(event.headers, "streamtype")
        port_text = header(event.headers, "port")
        try:
            port = int(port_text)
        except ValueError:
            port = 0
        if kind not in ("error", "data") or not 0 < port <= 0xFFFF:
            log.info("port-forward stream %d refused: streamtype=%r port=%r", sid, kind, port_text)
            self._send(lambda: conn.reset_stream(sid))
            return
        request_id = header(event.headers, "requestid")
        if not request_id:  # ancient clients: error stream id, data stream id - 2
            request_id = f"legacy-{sid if kind == 'error' else sid - 2}"
        pair = self.pairs.get(request_id)
        if pair is None:
            pair = self.pairs[request_id] = _Pair(request_id, port)
            timeout = self.server.config.stream_creation_timeout
            pair.timer = asyncio.get_running_loop().call_later(timeout, self._expire, pair)
        if getattr(pair, kind) is not None:
            log.info("request %s: %s stream already assigned", request_id, kind)
            self._send(lambda: conn.reset_stream(sid))
            return
        setattr(pair, kind, sid)
        self.by_stream[sid] = pair
        if kind == "error":
            self._send(lambda: conn.reply_stream(sid))
        if pair.error is not None and pair.data is not None:
            if pair.timer is not None:
                pair.timer.cancel()
            pair.task = asyncio.create_task(self._forward(pair))

    def _expire(self, pair: _Pair) -> None:
        if pair.task is None:
            log.info("request %s: timed out waiting for streams", pair.request_id)
            self._fail(pair)

    def _fail(self, pair: _Pair) -> None:
        """End a pair without text: RST the data stream, FIN the error stream (appendix G.1)."""
        assert self.link is not None
        conn = self.link.conn
        if pair.data is not None:
            data = pair.data
            self._send(lambda: conn.reset_stream(data))
        if pair.error is not None:
            error = pair.error
            self._send(lambda: conn.end_stream(error))
        self._forget(pair)

    def _forget(self, pair: _Pair) -> None:
        pair.settled.set()
        pair.early.clear()
        self.pairs.pop(pair.request_id, None)
        for sid in (pair.error, pair.data):
            if sid is not None:
                self.by_stream.pop(sid, None)

    def _drop(self, pair: _Pair) -> None:
        if pair.writer is not None:
            pair.writer.close()
        if pair.task is not None:
            pair.task.cancel()
        self._forget(pair)

    async def _forward(self, pair: _Pair) -> None:
        assert self.link is not None and pair.data is not None and pair.error is not None
        link, conn, data, error = self.link, self.link.conn, pair.data, pair.error
        try:
            sock = await self.server.runtime.dial(self.req.sandbox_id, pair.port)
        except OSError as exc:
            log.info(
                "port-forward %s to port %d of %s failed: %s",
                pair.request_id, pair.port, self.req.sandbox_id[:12], exc,
            )  # fmt: skip
            self.server.metrics.refused["portforward-dial"] += 1
            self._fail(pair)
            return
        reader, writer = await asyncio.open_connection(sock=sock, limit=CHUNK)
        pair.writer = writer
        if pair.early:
            writer.write(b"".join(pair.early))
            pair.early.clear()
        pair.settled.set()
        self.server.metrics.forwarded += 1
        try:
            self._send(lambda: conn.reply_stream(data))
            if pair.eof:
                writer.write_eof()
            while chunk := await reader.read(CHUNK):
                await link.drain()
                self._send(lambda c=chunk: conn.send_data(data, c))  # type: ignore[misc]
        except (ConnectionError, OSError) as exc:
            log.info("port-forward %s: the pod side ended: %s", pair.request_id, exc)
        finally:
            writer.close()
            if not link.closed.is_set():
                self._send(lambda: conn.end_stream(data))
                self._send(lambda: conn.end_stream(error))
            self._forget(pair)

    async def close(self) -> None:
        tasks = [p.task for p in list(self.pairs.values()) if p.task is not None]
        for pair in list(self.pairs.values()):
            if pair.timer is not None:
                pair.timer.cancel()
            self._drop(pair)
        await self.read_pause.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def serve_spdy(
    request: web.Request, server: StreamServer, req: PortForwardRequest
) -> web.StreamResponse:
    from .spdy_remotecommand import negotiate

    chosen, refusal = negotiate(request, [PORTFORWARD_V1])
    if refusal is not None:
        server.metrics.refused["spdy-negotiation"] += 1
        return refusal
    assert chosen is not None
    forwarder = SpdyForwarder(server, req)
    link = SpdySession(forwarder.on_event)
    forwarder.link = link
    resp = await accept_spdy(request, chosen, link)
    server.metrics.sessions[("portforward", "spdy")] += 1
    try:
        await _until_gone(forwarder, link)
    finally:
        await forwarder.close()
        link.close()
    return resp


SANDBOX_POLL = 1.0


async def _sandbox_gone(server: StreamServer, sandbox_id: str) -> None:
    """Returns once the pod's sandbox no longer runs (the pod was deleted or stopped)."""
    while True:
        await asyncio.sleep(SANDBOX_POLL)
        with contextlib.suppress(Exception):
            if not await server.runtime.sandbox_ready(sandbox_id):
                log.info("pod sandbox %s is gone: ending its port-forward", sandbox_id[:12])
                return


async def _until_gone(forwarder: SpdyForwarder, link: Link) -> None:
    waits = [
        asyncio.create_task(forwarder.gone.wait()),
        asyncio.create_task(link.closed.wait()),
        asyncio.create_task(_sandbox_gone(forwarder.server, forwarder.req.sandbox_id)),
    ]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


PORTFORWARD_WS_PROTOCOLS = (
    channels.SPDY_TUNNEL_PORTFORWARD,
    channels.V4_CHANNEL,
    channels.V4_BASE64_CHANNEL,
)


async def serve_websocket(
    request: web.Request, server: StreamServer, req: PortForwardRequest
) -> web.StreamResponse:
    from .remotecommand import refuse

    offered = channels.parse_protocol_header(request.headers.getall("Sec-WebSocket-Protocol", []))
    chosen = channels.negotiate(offered, PORTFORWARD_WS_PROTOCOLS)
    if chosen is None:
        return refuse(server, offered, PORTFORWARD_WS_PROTOCOLS)
    ports = list(req.ports)
    if chosen != channels.SPDY_TUNNEL_PORTFORWARD:
        try:
            # `ports` through the apiserver, `port` on the kubelet's runtime URL (§5a)
            given = request.query.getall("ports", []) + request.query.getall("port", [])
            ports = channels.parse_ports(given) or ports
        except ValueError:
            if not ports:
                return web.Response(status=400, text='query parameter "port" is required\n')
        if not ports:
            return web.Response(status=400, text='query parameter "port" is required\n')
    ws = web.WebSocketResponse(protocols=(chosen,), max_msg_size=0, autoping=True)
    if ws.can_prepare(request).protocol != chosen:
        return refuse(server, offered, PORTFORWARD_WS_PROTOCOLS)
    await ws.prepare(request)
    if chosen == channels.SPDY_TUNNEL_PORTFORWARD:
        server.metrics.sessions[("portforward", "tunnel")] += 1
        await _serve_tunnel(ws, server, req)
    else:
        server.metrics.sessions[("portforward", "websocket")] += 1
        await _serve_channels(ws, server, req, chosen, ports)
    return ws


async def _serve_tunnel(
    ws: web.WebSocketResponse, server: StreamServer, req: PortForwardRequest
) -> None:
    forwarder = SpdyForwarder(server, req)
    link = TunnelLink(ws, forwarder.on_event)
    forwarder.link = link
    tasks = [asyncio.create_task(link.read_loop()), asyncio.create_task(link.write_loop())]
    try:
        await _until_gone(forwarder, link)
    finally:
        await forwarder.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close()


async def _serve_channels(
    ws: web.WebSocketResponse,
    server: StreamServer,
    req: PortForwardRequest,
    protocol: str,
    ports: list[int],
) -> None:
    """The channel protocol: one connection per listed port, dialled at once (§5a)."""
    codec = channels.ChannelCodec(protocol, num_channels=2 * len(ports))

    async def send(channel: int, data: bytes) -> None:
        message = codec.encode(channel, data)
        if isinstance(message, str):
            await ws.send_str(message)
        else:
            await ws.send_bytes(message)

    for i, port in enumerate(ports):
        for ch in (2 * i, 2 * i + 1):
            if codec.is_base64:
                await send(ch, channels.port_bytes(port))
            else:
                await ws.send_bytes(channels.port_preamble(ch, port))
    writers: dict[int, asyncio.StreamWriter] = {}
    # Client data may come before the dial is done (the client does not wait): the reader
    # waits on these, so nothing is dropped.
    dialled = [asyncio.get_running_loop().create_future() for _ in ports]

    async def forward(i: int, port: int) -> None:
        try:
            sock = await server.runtime.dial(req.sandbox_id, port)
        except OSError as exc:
            dialled[i].set_result(False)
            text = f"error forwarding port {port} to pod {req.sandbox_id}, uid : {exc}"
            await send(2 * i + 1, text.encode())
            return
        reader, writer = await asyncio.open_connection(sock=sock, limit=CHUNK)
        writers[i] = writer
        dialled[i].set_result(True)
        server.metrics.forwarded += 1
        try:
            while chunk := await reader.read(CHUNK):
                await send(2 * i, chunk)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            writers.pop(i, None)

    forwards = [asyncio.create_task(forward(i, p)) for i, p in enumerate(ports)]

    async def read() -> None:
        async for msg in ws:
            if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                break
            decoded = codec.decode(msg.data)
            if not isinstance(decoded, channels.Decoded) or decoded.channel % 2:
                continue
            await dialled[decoded.channel // 2]
            writer = writers.get(decoded.channel // 2)
            if writer is not None and decoded.data:
                writer.write(decoded.data)
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.drain()

    async def all_forwards() -> None:
        await asyncio.gather(*forwards, return_exceptions=True)

    reader = asyncio.create_task(read())
    done = asyncio.create_task(all_forwards())
    gone = asyncio.create_task(_sandbox_gone(server, req.sandbox_id))
    pumps = [*forwards, done, gone]
    try:
        await asyncio.wait([reader, done, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [reader, *pumps]:
            task.cancel()
        for task in [reader, *pumps]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for writer in list(writers.values()):
            writer.close()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close()

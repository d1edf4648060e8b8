"""Port-forward: SPDY stream pairs, the SPDY-over-WebSocket tunnel, and WebSocket channels.

SPDY (docs/protocol.md §4, appendix G): every local connection of kubectl is a pair of streams,
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
import contextlib
import logging
import socket
from typing import Any, cast

from aiohttp import WSMsgType, web

from .context import SHUTTING_DOWN, StreamContext
from .errors import BackendError
from .protocol import channels, spdy
from .recording import Session
from .requests import PortForwardRequest
from .runtime.base import Flag, first_done, wait_event
from .transport import (
    Activity,
    ReadPause,
    SpdySession,
    StreamWebSocket,
    WebSocketTransport,
    accept_spdy,
    header,
    negotiate_spdy,
    refuse_websocket,
    send_message,
)

log = logging.getLogger(__name__)

PORTFORWARD_V1 = "portforward.k8s.io"
CHUNK = 256 * 1024  # bytes per read from a pod socket: one SPDY frame or message each


class Held:
    """Chunks of client data kept in order, with their total size."""

    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def keep(self, data: bytes) -> int:
        """Hold ``data``; the bytes held now."""
        self.chunks.append(data)
        self.size += len(data)
        return self.size

    def take(self) -> bytes:
        """Everything held, in order, joined (one chunk is returned as it is); none is left."""
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.size = 0
        return data


class EarlyData(Held):
    """Client data for a pod port that came before the port was dialled, kept in order.

    Clients may send before the dial is done: SPDY lets a client send on a stream before its
    reply (kubectl waits; others need not), and the channel protocol's clients do not wait at
    all. The caller stops reading that client once :meth:`keep` reports more than
    ``Limits.read_buffer``, until :attr:`settled`.
    """

    __slots__ = ("settled",)

    def __init__(self) -> None:
        super().__init__()
        self.settled = asyncio.Event()  # dialled, failed or forgotten: no more early data

    def settle(self) -> bytes:
        """Everything held, in order (written first once dialled, dropped otherwise)."""
        data = self.take()
        self.settled.set()
        return data


class _Pair:
    __slots__ = (
        "request_id", "port", "error", "data", "link", "task", "timer", "eof", "early", "pending",
    )  # fmt: skip

    def __init__(self, request_id: str, port: int) -> None:
        self.request_id = request_id
        self.port = port
        self.error: int | None = None
        self.data: int | None = None
        self.link: _PodLink | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.eof = False  # the client half-closed the data stream before the dial finished
        self.early = EarlyData()
        self.pending = Held()  # client data for the pod, written at the next flush


class _PodLink(asyncio.Protocol):
    """The dialled pod socket of one SPDY pair (docs/architecture.md, "One byte of stdout").

    What the pod sends goes to the session from ``data_received``, one ``bytes`` per read of
    the transport: no StreamReader (which copies every byte into its buffer and out again)
    and no task wake-up per chunk. While the session cannot send (its socket's buffer is
    full), reading the pod pauses until it drains. Reading starts once the data stream's
    reply is out (:meth:`start`). What the client sends is written to :attr:`transport`;
    :meth:`drain` waits while the pod is slow to take it.
    """

    def __init__(self, session: SpdySession, sid: int, account: Session) -> None:
        self.session = session
        self.sid = sid
        self.account = account
        self.transport: asyncio.Transport | None = None
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pause = ReadPause()  # of the pod, while the session drains
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()  # nothing goes to the client before the reply

    def start(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session.closed.is_set():  # the client is gone: so is this pair
            if self.transport is not None:
                self.transport.close()
            return
        self.account.output(data)
        session.send_data(self.sid, data)
        if not session.can_send and self.transport is not None:
            self.pause.pause_until(self.transport, session.drain)

    def eof_received(self) -> bool:
        return False  # the pod's half-close ends the pair, as kubelet's copy does

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("port-forward stream %d: the pod side ended: %s", self.sid, exc)
        if not self.ended.done():
            self.ended.set_result(None)
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drain(self) -> None:
        """Until the pod has taken what was written (below the transport's low water)."""
        await self._writable.wait()
        if self.ended.done():
            raise ConnectionResetError("the pod side is closed")


async def dial(
    ctx: StreamContext, sandbox_id: str, port: int, gate: asyncio.Semaphore
) -> socket.socket:
    """A socket into the pod within ``dial_timeout``, waiting for a turn under the
    connection's dial cap included.

    Raises:
        BackendError: for every failure, timeouts and runtime bugs included.
    """
    try:
        async with asyncio.timeout(ctx.limits.dial_timeout), gate:
            return await ctx.runtime.dial(sandbox_id, port)
    except BackendError:
        raise
    except TimeoutError:
        raise BackendError(
            f"dial port {port}: no connection within {ctx.limits.dial_timeout:g} s"
        ) from None
    except OSError as exc:  # a runtime that breaks the contract still fails one pair only
        raise BackendError(f"dial port {port}: {exc}") from exc
    except Exception as exc:
        log.exception("the runtime's dial failed")
        raise BackendError(f"dial port {port}: internal error") from exc


class SpdyForwarder:
    """Stream pairs of one SPDY (or tunnelled) port-forward connection (a ``SessionHandler``)."""

    def __init__(self, ctx: StreamContext, req: PortForwardRequest, account: Session) -> None:
        self.ctx = ctx
        self.req = req
        #: Bytes each way, for the metrics and the audit line.
        self.account = account
        self.session = SpdySession(self, ctx.limits, ctx.warnings)
        self.pairs: dict[str, _Pair] = {}
        self.by_stream: dict[int, _Pair] = {}
        self.gone = Flag()
        self.read_pause = ReadPause()
        self.dials = asyncio.Semaphore(ctx.limits.max_dials_per_connection)
        self._unflushed: list[_Pair] = []  # pairs with pending data, flushed once per loop turn

    def on_idle(self) -> None:
        self.ctx.metrics.refused["idle-timeout"] += 1
        self.gone.set()

    def on_event(self, event: spdy.Event) -> None:
        if isinstance(event, spdy.StreamOpened):
            self._opened(event)
        elif isinstance(event, spdy.DataReceived):
            pair = self.by_stream.get(event.stream_id)
            if pair is None or event.stream_id != pair.data:
                pass
            elif pair.link is not None and pair.link.transport is not None:
                self.account.input(event.data)
                if not pair.pending.size:
                    if not self._unflushed:
                        asyncio.get_running_loop().call_soon(self._flush)
                    self._unflushed.append(pair)  # again after a write below: a no-op then
                if pair.pending.keep(event.data) > self.ctx.limits.read_buffer:
                    self._write_pending(pair)  # the bound: past it, written (and waited on) now
            elif not pair.early.settled.is_set():
                held = pair.early.keep(event.data)
                if held > self.ctx.limits.read_buffer:
                    self.read_pause.pause_until(self.session, pair.early.settled.wait)
        elif isinstance(event, spdy.StreamEnded):
            pair = self.by_stream.get(event.stream_id)
            if pair is not None and event.stream_id == pair.data:
                link = pair.link
                if link is not None and link.transport is not None:
                    self._write_pending(pair)  # what came before the half-close goes first
                    if link.transport.can_write_eof():
                        with contextlib.suppress(OSError):
                            link.transport.write_eof()  # the client's half-close, passed on
                else:
                    pair.eof = True
        elif isinstance(event, spdy.StreamReset):
            pair = self.by_stream.get(event.stream_id)
            if pair is not None and event.stream_id == pair.data:
                self._drop(pair)
        elif isinstance(event, spdy.GoAwayReceived | spdy.ConnectionTerminated):
            self.gone.set()

    def _flush(self) -> None:
        """Write what each pair's client sent during this turn of the loop to its pod socket.

        Data frames are not written one by one: kubectl sends 32 KiB each, and a send per frame
        to the pod's socket cost more than the frames' parsing and decryption together
        (docs/benchmarks.md, "client to pod"). One turn of the loop holds one read of the client
        (plain SPDY) or the tunnel messages already received, and nothing waits past the turn.
        A pair's pending data past ``Limits.read_buffer`` is written at once (``on_event``).
        """
        pairs, self._unflushed = self._unflushed, []
        try:
            for pair in pairs:
                self._write_pending(pair)
        except Exception:  # as in the session's dispatch: a bug of ours ends this session only
            self.session.fail_on_bug(
                "port-forward: writing to a pod socket failed; ending the session"
            )

    def _write_pending(self, pair: _Pair) -> None:
        if not pair.pending.size:
            return
        data = pair.pending.take()
        link = pair.link
        if link is None or link.transport is None or link.transport.is_closing():
            return  # the pair ended meanwhile: as a write to a closed transport, dropped
        transport = link.transport
        transport.write(data)
        if transport.get_write_buffer_size() > self.ctx.limits.read_buffer:
            self.read_pause.pause_until(self.session, link.drain)

    def _opened(self, event: spdy.StreamOpened) -> None:
        session, sid = self.session, event.stream_id
        kind = header(event.headers, "streamtype")
        port_text = header(event.headers, "port")
        try:
            port = int(port_text)
        except ValueError:
            port = 0
        if kind not in ("error", "data") or not 0 < port <= 0xFFFF:
            log.debug("port-forward stream %d refused: streamtype=%r port=%r", sid, kind, port_text)
            session.reset(sid)
            return
        request_id = header(event.headers, "requestid")
        if not request_id:  # ancient clients: error stream id, data stream id - 2
            request_id = f"legacy-{sid if kind == 'error' else sid - 2}"
        pair = self.pairs.get(request_id)
        if pair is None:
            if len(self.pairs) >= self.ctx.limits.max_portforward_pairs:
                self.ctx.metrics.refused["portforward-pairs"] += 1
                self.ctx.warnings.log(
                    logging.WARNING,
                    "portforward-pairs",
                    "port-forward connection at max_portforward_pairs (%d): stream refused",
                    self.ctx.limits.max_portforward_pairs,
                )
                session.reset(sid, spdy.RstStatus.REFUSED_STREAM)
                return
            pair = self.pairs[request_id] = _Pair(request_id, port)
            timeout = self.ctx.limits.stream_creation_timeout
            pair.timer = asyncio.get_running_loop().call_later(timeout, self._expire, pair)
        if getattr(pair, kind) is not None:
            log.debug("request %s: %s stream already assigned", request_id, kind)
            session.reset(sid)
            return
        setattr(pair, kind, sid)
        self.by_stream[sid] = pair
        if kind == "error" and not session.reply(sid):
            self._fail(pair)
            return
        if pair.error is not None and pair.data is not None:
            if pair.timer is not None:
                pair.timer.cancel()
            pair.task = asyncio.create_task(self._forward(pair))

    def _expire(self, pair: _Pair) -> None:
        if pair.task is None:
            self.ctx.warnings.log(
                logging.INFO,
                "portforward-pair-timeout",
                "port-forward request %s: timed out waiting for its streams",
                pair.request_id,
            )
            self._fail(pair)

    def _fail(self, pair: _Pair) -> None:
        """End a pair without text: RST the data stream, FIN the error stream (appendix G.1)."""
        if pair.data is not None:
            self.session.reset(pair.data)
        if pair.error is not None:
            self.session.end(pair.error)
        self._forget(pair)

    def _forget(self, pair: _Pair) -> None:
        pair.early.settle()
        pair.pending.take()
        if pair.timer is not None:
            pair.timer.cancel()
        if self.pairs.get(pair.request_id) is pair:
            del self.pairs[pair.request_id]
        for sid in (pair.error, pair.data):
            if sid is not None and self.by_stream.get(sid) is pair:
                del self.by_stream[sid]

    def _drop(self, pair: _Pair) -> None:
        if pair.link is not None and pair.link.transport is not None:
            pair.link.transport.close()
        if pair.task is not None:
            pair.task.cancel()
        self._forget(pair)

    async def _forward(self, pair: _Pair) -> None:
        assert pair.data is not None and pair.error is not None
        session, data, error = self.session, pair.data, pair.error
        try:
            sock = await dial(self.ctx, self.req.sandbox_id, pair.port, self.dials)
        except BackendError as exc:
            self.ctx.warnings.log(
                logging.INFO,
                "portforward-dial",
                "port-forward %s to port %d of %s failed: %s",
                pair.request_id, pair.port, self.req.sandbox_id[:12], exc,
            )  # fmt: skip
            self.ctx.metrics.refused["portforward-dial"] += 1
            self._fail(pair)
            return
        loop = asyncio.get_running_loop()
        try:
            transport, link = await loop.create_connection(
                lambda: _PodLink(session, data, self.account), sock=sock
            )
        except BaseException:
            sock.close()
            self._fail(pair)
            raise
        pair.link = link
        if early := pair.early.settle():
            self.account.input(early)
            transport.write(early)
        self.ctx.metrics.forwarded += 1
        self.account.ports.add(pair.port)
        try:
            session.reply(data)
            if pair.eof and transport.can_write_eof():
                transport.write_eof()
            link.start()
            await link.ended
        except (ConnectionError, OSError) as exc:
            log.debug("port-forward %s: the pod side ended: %s", pair.request_id, exc)
        finally:
            transport.close()
            await link.pause.cancel()
            if not session.closed.is_set():
                session.end(data)
                session.end(error)
            self._forget(pair)

    async def close(self) -> None:
        tasks = [p.task for p in list(self.pairs.values()) if p.task is not None]
        for pair in list(self.pairs.values()):
            self._drop(pair)
        await self.read_pause.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def serve_spdy(
    request: web.Request, ctx: StreamContext, req: PortForwardRequest, account: Session
) -> web.StreamResponse:
    chosen, refusal = negotiate_spdy(request, [PORTFORWARD_V1])
    if refusal is not None:
        ctx.metrics.refused["spdy-negotiation"] += 1
        return refusal
    assert chosen is not None
    forwarder = SpdyForwarder(ctx, req, account)
    session = forwarder.session
    resp = await accept_spdy(request, chosen, session)
    ctx.established(account, "spdy", chosen)
    try:
        await _until_gone(forwarder)
    finally:
        await forwarder.close()
        session.close()
    return resp


async def _sandbox_gone(ctx: StreamContext, sandbox_id: str) -> None:
    """Returns once the pod's sandbox no longer runs (the pod was deleted or stopped), or the
    server is shutting down."""
    while True:
        if await wait_event(ctx.stopping, ctx.limits.container_poll):
            log.info("ending a port-forward to %s: %s", sandbox_id[:12], SHUTTING_DOWN)
            return
        with contextlib.suppress(BackendError):
            if not await ctx.runtime.sandbox_ready(sandbox_id):
                log.info("pod sandbox %s is gone: ending its port-forward", sandbox_id[:12])
                return


async def _until_gone(forwarder: SpdyForwarder) -> None:
    waits: list[asyncio.Future[Any]] = [
        forwarder.gone.waiter(),  # futures of its own, not tasks (docs/benchmarks.md, idle memory)
        forwarder.session.closed.waiter(),
        asyncio.create_task(_sandbox_gone(forwarder.ctx, forwarder.req.sandbox_id)),
    ]
    try:
        await first_done(waits)
    finally:
        for task in waits:
            task.cancel()
        for task in waits:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


PORTFORWARD_WS_PROTOCOLS = (
    channels.SPDY_TUNNEL_PORTFORWARD,
    channels.V4_CHANNEL,
    channels.V4_BASE64_CHANNEL,
)


async def serve_websocket(
    request: web.Request, ctx: StreamContext, req: PortForwardRequest, account: Session
) -> web.StreamResponse:
    offered = channels.parse_protocol_header(request.headers.getall("Sec-WebSocket-Protocol", []))
    chosen = channels.negotiate(offered, PORTFORWARD_WS_PROTOCOLS)
    if chosen is None:
        ctx.metrics.refused["subprotocol"] += 1
        return refuse_websocket(offered, PORTFORWARD_WS_PROTOCOLS)
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
        if len(ports) > ctx.limits.max_portforward_pairs:
            ctx.metrics.refused["portforward-pairs"] += 1
            return web.Response(
                status=400,
                text=f"at most {ctx.limits.max_portforward_pairs} ports per connection\n",
            )
    ws = StreamWebSocket(
        protocols=(chosen,), max_msg_size=ctx.limits.max_websocket_message, autoping=True
    )
    if ws.can_prepare(request).protocol != chosen:
        ctx.metrics.refused["subprotocol"] += 1
        return refuse_websocket(offered, PORTFORWARD_WS_PROTOCOLS)
    await ws.prepare(request)
    if chosen == channels.SPDY_TUNNEL_PORTFORWARD:
        ctx.established(account, "tunnel", chosen)
        await _serve_tunnel(ws, ctx, req, account)
    else:
        ctx.established(account, "websocket", chosen)
        await _serve_channels(ws, ctx, req, chosen, ports, account)
    return ws


async def _serve_tunnel(
    ws: web.WebSocketResponse, ctx: StreamContext, req: PortForwardRequest, account: Session
) -> None:
    """SPDY inside binary WebSocket messages (§5b): the same session as raw SPDY."""
    forwarder = SpdyForwarder(ctx, req, account)
    transport = WebSocketTransport(ws, forwarder.session, ctx.limits.write_buffer)
    pump = asyncio.create_task(transport.run())
    try:
        await _until_gone(forwarder)
    finally:
        await forwarder.close()
        transport.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(pump, 5)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump


async def _serve_channels(
    ws: web.WebSocketResponse,
    ctx: StreamContext,
    req: PortForwardRequest,
    protocol: str,
    ports: list[int],
    account: Session,
) -> None:
    """The channel protocol: one connection per listed port, dialled at once (§5a)."""
    codec = channels.ChannelCodec(protocol, num_channels=2 * len(ports))
    activity = Activity()
    gate = asyncio.Semaphore(ctx.limits.max_dials_per_connection)

    async def send(channel: int, data: bytes) -> None:
        await send_message(ws, codec.encode(channel, data))

    for i, port in enumerate(ports):
        for ch in (2 * i, 2 * i + 1):
            if codec.is_base64:
                await send(ch, channels.port_bytes(port))
            else:
                await ws.send_bytes(channels.port_preamble(ch, port))
    writers: dict[int, asyncio.StreamWriter] = {}
    # Client data may come before the dial is done (the client does not wait): it is kept,
    # bounded, per port and written first, so nothing is dropped and no port waits on another.
    early = [EarlyData() for _ in ports]

    async def forward(i: int, port: int) -> None:
        try:
            try:
                sock: socket.socket = await dial(ctx, req.sandbox_id, port, gate)
            except BackendError as exc:
                ctx.metrics.refused["portforward-dial"] += 1
                text = f"error forwarding port {port} to pod {req.sandbox_id}, uid : {exc}"
                await send(2 * i + 1, text.encode())
                return
            try:
                reader, writer = await asyncio.open_connection(sock=sock, limit=CHUNK)
            except BaseException:
                sock.close()
                raise
            writers[i] = writer
            if data := early[i].settle():
                account.input(data)
                writer.write(data)
        finally:
            early[i].settle()  # the dial failed: what was kept goes with it
        ctx.metrics.forwarded += 1
        account.ports.add(port)
        try:
            while chunk := await reader.read(CHUNK):
                activity.touch()
                account.output(chunk)
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
            if not decoded.data:
                continue
            activity.touch()
            i = decoded.channel // 2
            if not early[i].settled.is_set():
                if early[i].keep(decoded.data) > ctx.limits.read_buffer:
                    await early[i].settled.wait()  # dial_timeout covers the dial's turn too
                continue
            writer = writers.get(i)
            if writer is not None:
                account.input(decoded.data)
                writer.write(decoded.data)
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.drain()

    async def all_forwards() -> None:
        await asyncio.gather(*forwards, return_exceptions=True)

    reader = asyncio.create_task(read())
    done = asyncio.create_task(all_forwards())
    gone = asyncio.create_task(_sandbox_gone(ctx, req.sandbox_id))
    idle = activity.idle(ctx.limits.idle_timeout)
    pumps: list[asyncio.Future[Any]] = [*forwards, done, gone, idle]
    try:
        await first_done([reader, done, gone, idle])
        if idle.done():
            ctx.metrics.refused["idle-timeout"] += 1
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

"""The transport layer: one SPDY session adapter, raw or tunnelled in WebSocket, with limits.

Between the sans-IO codec (:mod:`streamsrv.protocol.spdy`) and the handlers (exec/attach,
port-forward) sits :class:`SpdySession`. It keeps three promises (docs/architecture.md,
"The transport layer"):

* **Nothing a peer sends raises out of** ``data_received`` **or** ``buffer_updated``. A
  peer's protocol error ends the connection with GOAWAY(PROTOCOL_ERROR); a stream the server
  will not take is reset; a handler that raises ends its own session (GOAWAY(INTERNAL_ERROR),
  one log line). Other sessions never notice.
* **Every buffer has a bound.** Streams per connection (``max_streams``, then
  RST_STREAM(REFUSED_STREAM)), frame and header sizes (in the codec), partial frames that stop
  making progress (``progress_timeout``), and sessions with no data (``idle_timeout``).
* **Back-pressure is two-way.** While the transport is paused for writing, the session stops
  reading from that peer, so a client that never reads cannot make us queue PING echoes or
  RST_STREAMs.

The same class serves a raw upgraded connection (:func:`accept_spdy` moves the socket to it)
and SPDY tunnelled in binary WebSocket messages (:class:`WebSocketTransport` gives it an
asyncio-transport face), with one end-of-connection behaviour: ``closed`` is set and the
handler sees exactly one :class:`~streamsrv.protocol.spdy.ConnectionTerminated`.

:func:`accept_spdy` is the only code that relies on aiohttp behaviour its documentation does
not promise: aiohttp's parser treats only ``Upgrade: websocket`` as an upgrade, so for
``Upgrade: SPDY/3.1`` the handler writes the 101 itself and moves the transport to our
protocol. It is guarded by the end-to-end SPDY tests (and aiohttp is pinned to a minor).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar, cast

from aiohttp import ClientConnectionResetError, WSMsgType, web
from aiohttp._websocket.helpers import MSG_SIZE
from aiohttp._websocket.writer import WebSocketWriter

from .context import RateLimitedLog
from .limits import KIB, Limits
from .protocol import channels, spdy
from .runtime.base import Flag, first_done

log = logging.getLogger(__name__)

_In = TypeVar("_In", bytes, int)

#: The largest DATA frame a session sends. One read of a pod's socket or of an output FIFO
#: (256 KiB at most) goes out as one frame, not cut into 32 KiB ones as Go's stream server
#: writes them: kubectl's SPDY reader (spdystream) allocates, reads and hands over each frame
#: on its own, and takes frames of any 24-bit length. Downloading through kubectl port-forward,
#: kubectl spent 0.14-0.70 CPU-seconds less per GiB with it in 12 of 13 pairs, and the same
#: in the other (docs/benchmarks.md, "DATA frames of one read"). Our own codec reads frames
#: up to ``Limits.max_frame_size`` (1 MiB).
DATA_FRAME_SIZE = 256 * KIB


class SessionHandler(Protocol):
    """What a SPDY session dispatches to (exec/attach or port-forward)."""

    def on_event(self, event: spdy.Event) -> None:
        """One event of the peer's, in arrival order. May raise: that ends this session."""

    def on_idle(self) -> None:
        """No data on any stream for ``Limits.idle_timeout``: end the session."""


class SpdySession(asyncio.BufferedProtocol):
    """A server-side SPDY/3.1 connection on an asyncio transport (raw or a WebSocket tunnel).

    A buffered protocol: a raw or TLS transport reads (or decrypts) the peer's bytes straight
    into the codec's buffer (:meth:`get_buffer`), where they are parsed; the WebSocket tunnel
    hands over whole messages (:meth:`data_received`).

    Events go to ``handler.on_event`` in arrival order. Handlers answer through the guarded
    helpers (:meth:`reply`, :meth:`send_data`, :meth:`end`, :meth:`reset`), which never raise
    for a stream the peer has already reset, and await :meth:`drain` for back-pressure.
    """

    def __init__(
        self,
        handler: SessionHandler,
        limits: Limits | None = None,
        warnings: RateLimitedLog | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.conn = spdy.SpdyConnection(
            spdy.Role.SERVER,
            max_data_frame_size=DATA_FRAME_SIZE,
            max_frame_size=self.limits.max_frame_size,
            max_header_block_size=self.limits.max_header_block_size,
            max_header_count=self.limits.max_header_count,
        )
        self.handler = handler
        self.warnings = warnings or RateLimitedLog(log, self.limits.log_interval)
        self.transport: asyncio.Transport | None = None
        # The protocol the transport had before (aiohttp's): told when the connection ends,
        # so the web server's own bookkeeping (and graceful shutdown) sees it go.
        self.previous: asyncio.BaseProtocol | None = None
        self.closed = Flag()
        self.failed: str | None = None  # why we ended the connection, if we did
        self._terminated = False  # ConnectionTerminated delivered
        self._dispatching = False  # replies made while dispatching go out in one write
        self.activity = Activity()  # data either way; pings do not count (idle_timeout)
        self._writable = asyncio.Event()
        self._writable.set()
        self._write_paused = False
        self._read_holds = 0  # handlers waiting on a slow consumer (ReadPause)
        self._reading_paused = False
        self._loop = asyncio.get_running_loop()
        self._idle: asyncio.Future[None] | None = None  # Activity.idle, from connection_made
        self._progress_timer: asyncio.TimerHandle | None = None
        self._admitted: set[int] = set()  # peer streams let through to the handler
        self._held = 0  # bytes of a partial frame at the last check
        self._progress_at = 0.0  # when the partial frame last grew

    # asyncio.BufferedProtocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not derive from asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)
        self.activity.touch()
        self._idle = self.activity.idle(self.limits.idle_timeout)
        self._idle.add_done_callback(self._on_idle)

    def data_received(self, data: bytes) -> None:
        if self.closed.is_set() or self.failed is not None:
            return
        self._received(self.conn.receive_data, data)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed.is_set() or self.failed is not None:
            return
        self._received(self.conn.buffer_updated, nbytes)

    def _received(self, parse: Callable[[_In], list[spdy.Event]], arg: _In) -> None:
        try:
            events = parse(arg)
        except spdy.RemoteProtocolError as exc:
            self.warnings.log(
                logging.INFO, "spdy-protocol", "SPDY connection ended on a protocol error: %s", exc
            )
            self._dispatch(list(exc.events))
            self.failed = f"protocol error: {exc}"
            self.flush()  # the GOAWAY the codec queued
            self.abort()
            return
        self._dispatch(events)  # flushes what the codec queued (PING echoes) with the replies
        self._watch_progress()

    def eof_received(self) -> bool:
        events: list[spdy.Event] = []
        with contextlib.suppress(spdy.ProtocolError):  # the connection had failed already
            events = self.conn.receive_eof()
        self._terminate(events)
        # Keep our side open to finish writing; TLS has no half-close, so there it closes.
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        try:
            return transport.get_extra_info("sslcontext") is None
        except AttributeError:  # a TLS transport already closed twice has let go of its parts
            return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self._progress_timer is not None:
            self._progress_timer.cancel()
        self._writable.set()
        self._terminate([])
        self.closed.set()
        if self.previous is not None:
            previous, self.previous = self.previous, None
            previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self._writable.clear()
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        self._write_paused = False
        self._update_reading()

    # dispatch --------------------------------------------------------------------------------
    def _terminate(self, events: list[spdy.Event]) -> None:
        """The handler's one ConnectionTerminated (the codec's, with its count, if it has one)."""
        if not self._terminated:
            self._terminated = True
            self._dispatch(events or [spdy.ConnectionTerminated()])

    def _dispatch(self, events: list[spdy.Event]) -> None:
        # What the handler answers (SYN_REPLYs, RST_STREAMs) leaves in one write after the
        # batch: a burst of 200 streams is one write, not 200 (and a peer that resets the
        # connection meanwhile makes no flood of asyncio's "socket.send() raised" warnings).
        self._dispatching = True
        try:
            self._dispatch_all(events)
        finally:
            self._dispatching = False
            self.flush()

    def _dispatch_all(self, events: list[spdy.Event]) -> None:
        for event in events:
            if self.failed is not None and not isinstance(event, spdy.ConnectionTerminated):
                return
            if isinstance(event, spdy.StreamOpened) and not self._admit(event):
                continue
            if isinstance(event, spdy.DataReceived):
                self.activity.touch()
            try:
                self.handler.on_event(event)
            except Exception:
                self.fail_on_bug("a SPDY session handler failed on %s; ending the session", event)
                return

    def _admit(self, event: spdy.StreamOpened) -> bool:
        """Refuse streams over ``max_streams`` and unidirectional ones (no handler wants them).

        Counted here, in arrival order: the codec already holds every stream of this read.
        """
        sid = event.stream_id
        over = False
        if len(self._admitted) >= self.limits.max_streams:
            self._admitted = {
                s
                for s in self._admitted
                if self.conn.stream_state(s) is not spdy.StreamState.CLOSED
            }
            over = len(self._admitted) >= self.limits.max_streams
        if event.unidirectional or over:
            reason = "unidirectional" if event.unidirectional else "over max_streams"
            log.debug("SPDY stream %d refused (%s)", sid, reason)
            self.warnings.log(
                logging.WARNING,
                "spdy-refused",
                "SPDY streams refused on a connection (%s, limit %d)",
                reason,
                self.limits.max_streams,
            )
            self.reset(sid, spdy.RstStatus.REFUSED_STREAM)
            return False
        self._admitted.add(sid)
        return True

    # for handlers: guarded codec calls --------------------------------------------------------
    def reply(self, sid: int) -> bool:
        """SYN_REPLY, unless the peer reset the stream meanwhile; False if not sent."""
        return self._guarded(lambda: self.conn.reply_stream(sid))

    def send_data(self, sid: int, data: bytes) -> bool:
        """DATA on ``sid`` (no-op on a stream the peer reset); counts as activity."""
        self.activity.touch()
        return self._guarded(lambda: self.conn.send_data(sid, data))

    def end(self, sid: int) -> bool:
        """Our FIN on ``sid``."""
        return self._guarded(lambda: self.conn.end_stream(sid))

    def reset(self, sid: int, status: int = spdy.RstStatus.CANCEL) -> bool:
        return self._guarded(lambda: self.conn.reset_stream(sid, status))

    def goaway(self, status: int = spdy.GoAwayStatus.OK) -> None:
        self._guarded(lambda: self.conn.goaway(status))

    def _guarded(self, action: Callable[[], object]) -> bool:
        try:
            action()
        except spdy.ProtocolError as exc:
            log.debug("SPDY: %s", exc)  # the stream is gone (reset by the peer): nothing to do
            return False
        if not self._dispatching:
            self.flush()
        return True

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """What is queued inside goes out in one write when it ends, as replies made while
        dispatching do: an exec's status, its streams' FINs and the GOAWAY are one TLS record
        and one send, not five (the client waits for the last of them)."""
        if self._dispatching:
            yield
            return
        self._dispatching = True
        try:
            yield
        finally:
            self._dispatching = False
            self.flush()

    def fail(self, status: int, why: str) -> None:
        """End the connection from our side: GOAWAY(``status``) and close."""
        if self.failed is None:
            self.failed = why
        self.goaway(status)
        self.flush()  # also while dispatching: the GOAWAY goes before the close
        self.close()

    def fail_on_bug(self, message: str, *args: object) -> None:
        """A bug of ours (a handler raised; call it from the ``except``): log it with its
        traceback and end this one session with GOAWAY(INTERNAL_ERROR), never the server."""
        log.exception(message, *args)
        self.fail(spdy.GoAwayStatus.INTERNAL_ERROR, "internal error")

    def flush(self) -> None:
        out = self.conn.data_to_send()
        transport = self.transport
        if (
            out
            and transport is not None
            and not self.closed.is_set()
            and not transport.is_closing()
        ):
            transport.write(out)

    @property
    def can_send(self) -> bool:
        """Whether the transport takes more now (what :meth:`drain` would not wait for)."""
        return self._writable.is_set() and not self.closed.is_set()

    async def drain(self) -> None:
        if self.closed.is_set():
            raise ConnectionResetError("the SPDY connection is closed")
        await self._writable.wait()
        if self.closed.is_set():
            raise ConnectionResetError("the SPDY connection is closed")

    # reading ---------------------------------------------------------------------------------
    def pause_reading(self) -> None:
        """Stop reading from the peer until :meth:`resume_reading` (nested holds add up)."""
        self._read_holds += 1
        self._update_reading()

    def resume_reading(self) -> None:
        self._read_holds = max(0, self._read_holds - 1)
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        want_paused = self._write_paused or self._read_holds > 0
        if want_paused and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not want_paused and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    # timers ----------------------------------------------------------------------------------
    def _on_idle(self, idle: asyncio.Future[None]) -> None:
        if idle.cancelled() or self.closed.is_set():
            return
        log.info("SPDY session idle for %.0f s: ending it", self.limits.idle_timeout)
        try:
            self.handler.on_idle()
        except Exception:
            self.fail_on_bug("a SPDY session handler failed on idle")

    def _watch_progress(self) -> None:
        """A partial frame must grow at least once every ``progress_timeout``."""
        held = self.conn.buffered
        if held != self._held:
            self._held = held
            self._progress_at = self._loop.time()
        if held and self._progress_timer is None:
            self._progress_timer = self._loop.call_at(
                self._progress_at + self.limits.progress_timeout, self._check_progress
            )

    def _check_progress(self) -> None:
        self._progress_timer = None
        if not self.conn.buffered or self.closed.is_set():
            return
        due = self._progress_at + self.limits.progress_timeout
        if self._loop.time() < due:
            self._progress_timer = self._loop.call_at(due, self._check_progress)
            return
        self.warnings.log(
            logging.INFO,
            "spdy-progress",
            "SPDY connection closed: a partial frame (%d bytes) made no progress in %.0f s",
            self.conn.buffered,
            self.limits.progress_timeout,
        )
        self.fail(spdy.GoAwayStatus.PROTOCOL_ERROR, "partial frame made no progress")

    # closing ---------------------------------------------------------------------------------
    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def write_eof(self) -> None:
        """Half-close our side where the transport can (plain TCP); TLS and tunnels cannot."""
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()


class WebSocketTransport(asyncio.Transport):
    """An asyncio transport over binary WebSocket messages, for SPDY tunnelled in WebSocket.

    Message boundaries mean nothing (docs/protocol.md §5b). Writes are queued and sent by one
    task; past ``high_water`` queued bytes the protocol is told ``pause_writing`` (so the
    session stops reading the peer), below half of it ``resume_writing``. Reading pauses by
    not taking the next message, which lets aiohttp's bounded reader pause the socket.
    """

    def __init__(self, ws: web.WebSocketResponse, protocol: SpdySession, high_water: int):
        super().__init__()
        self.ws = ws
        self._protocol = protocol
        self._high = high_water
        self._low = high_water // 2
        self._out: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._wake = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._closing = False
        self._paused_protocol = False

    # asyncio.Transport --------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._out.append(bytes(data))
        self._size += len(data)
        self._wake.set()
        if self._size > self._high and not self._paused_protocol:
            self._paused_protocol = True
            self._protocol.pause_writing()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is queued, then close the WebSocket."""
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        self._closing = True
        self._out.clear()
        self._size = 0
        self._wake.set()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set()

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self._size

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sslcontext":  # no half-close in a tunnel, as on TLS
            return True
        return default

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # the two pumps ------------------------------------------------------------------------
    async def run(self) -> None:
        """Pump both directions until the tunnel ends; then the protocol's connection_lost."""
        self._protocol.connection_made(self)
        reader = asyncio.create_task(self._read())
        writer = asyncio.create_task(self._write())
        try:
            await first_done([reader, writer])
            if not writer.done():  # the peer is gone or garbled: stop writing too
                self.abort()
                await writer
        finally:
            for task in (reader, writer):
                task.cancel()
            for task in (reader, writer):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._closing = True
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.close()
            self._protocol.connection_lost(None)

    async def _read(self) -> None:
        while not self._closing:
            await self._reading.wait()
            msg = await self.ws.receive()
            if msg.type != WSMsgType.BINARY:
                if msg.type == WSMsgType.ERROR:
                    log.debug("tunnel ended on a WebSocket error: %s", msg.data)
                return
            self._protocol.data_received(msg.data)

    async def _write(self) -> None:
        while True:
            while self._out:
                data = self._out.popleft()
                self._size -= len(data)
                await self.ws.send_bytes(data)
                if self._paused_protocol and self._size <= self._low:
                    self._paused_protocol = False
                    self._protocol.resume_writing()
            if self._closing:
                return
            self._wake.clear()
            await self._wake.wait()


class Activity:
    """When a session last moved data (either way), for the idle timeout; pings do not count."""

    __slots__ = ("last", "_loop", "_timer")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None

    def touch(self) -> None:
        self.last = self._loop.time()

    def idle(self, seconds: float) -> asyncio.Future[None]:
        """A future done once nothing moved for ``seconds``; cancel it to stop watching.

        A timer that looks again when the time is up, not a task sleeping in a loop: a task
        costs a session about 0.6 KiB for as long as it lasts (docs/benchmarks.md, idle
        memory)."""
        idle: asyncio.Future[None] = self._loop.create_future()

        def check() -> None:
            if idle.done():
                return
            due = self.last + seconds
            if due <= self._loop.time():
                idle.set_result(None)
            else:
                self._timer = self._loop.call_at(due, check)

        def stop(_: asyncio.Future[None]) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        self._timer = self._loop.call_at(self.last + seconds, check)
        idle.add_done_callback(stop)
        return idle


class Pausable(Protocol):
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class ReadPause:
    """Back-pressure from a slow consumer to a connection that carries many streams.

    ``pause_until(link, wait)`` stops reading ``link`` until ``wait()`` returns (a pipe or a
    socket drained), then reads again; at most one pause is pending at a time.
    """

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    def pause_until(self, link: Pausable, wait: Callable[[], Awaitable[object]]) -> None:
        if self.task is not None:
            return
        link.pause_reading()

        async def resume() -> None:
            try:
                with contextlib.suppress(ConnectionError, OSError):
                    await wait()
            finally:
                self.task = None
                link.resume_reading()

        self.task = asyncio.create_task(resume())

    async def cancel(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


_LEN2 = struct.Struct("!BBH")
_LEN3 = struct.Struct("!BBQ")


class _OneSendFrames(WebSocketWriter):
    """aiohttp's server-side writer, but a frame above ``MSG_SIZE`` (16 KiB) goes to the
    transport as one ``writelines`` of header and payload, not two ``write`` calls: on a TLS
    transport each write is a record of its own and a send of its own, so the 2-10 byte header
    cost a TLS record and a syscall per stdout message or tunnel message (py-spy of a kubectl
    1.33 port-forward: 13 % of the node's WebSocket send time). asyncio's TLS transport takes
    the two buffers without joining them (no copy) and sends them with one syscall.

    Relies on aiohttp 3.14's ``_write_websocket_frame`` (the minor is pinned, as for the raw
    SPDY takeover); tests/test_transport.py checks the frames it writes."""

    def _write_websocket_frame(self, message: bytes, opcode: int, rsv: int) -> None:
        size = len(message)
        if self.use_mask or size <= MSG_SIZE:  # a client's frame, or one aiohttp joins itself
            super()._write_websocket_frame(message, opcode, rsv)
            return
        if self.transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        first = 0x80 | rsv | opcode
        header = _LEN2.pack(first, 126, size) if size < 65536 else _LEN3.pack(first, 127, size)
        self.transport.writelines((header, message))
        self._output_size += len(header) + size


class StreamWebSocket(web.WebSocketResponse):
    """The WebSocket response of stream sessions (exec, attach, the port-forward tunnel):
    aiohttp's, with :class:`_OneSendFrames` as its writer."""

    def _pre_start(self, request: Any) -> tuple[str | None, WebSocketWriter]:
        protocol, writer = super()._pre_start(request)
        if type(writer) is WebSocketWriter:
            writer.__class__ = _OneSendFrames
        return protocol, writer


async def send_message(ws: web.WebSocketResponse, message: bytes | str) -> None:
    """A channel codec's message as what it is: text (base64 protocols) or binary."""
    if isinstance(message, str):
        await ws.send_str(message)
    else:
        await ws.send_bytes(message)


# ------------------------------------------------------------------------------ upgrades


def is_websocket(request: web.Request) -> bool:
    """The kubelet's ``IsWebSocketRequest``: ``Upgrade: websocket`` and a Connection upgrade."""
    upgrade = request.headers.get("Upgrade", "").strip().lower()
    connection = request.headers.get("Connection", "").lower()
    return upgrade == "websocket" and "upgrade" in connection


def is_spdy_upgrade(request: web.Request) -> bool:
    connection = request.headers.get("Connection", "").lower()
    upgrade = request.headers.get("Upgrade", "").lower()
    return "upgrade" in connection and "spdy/3.1" in upgrade


def negotiate_spdy(
    request: web.Request, supported: list[str]
) -> tuple[str | None, web.Response | None]:
    """``X-Stream-Protocol-Version`` by the client's order; or the kubelet's refusal."""
    offered = channels.parse_protocol_header(
        request.headers.getall("X-Stream-Protocol-Version", [])
    )
    chosen = channels.negotiate(offered, supported)
    if chosen is None:
        text = (
            "unable to upgrade: unable to negotiate protocol: "
            f"client supports {offered}, server accepts {supported}\n"
        )
        resp = web.Response(status=403, text=text)
        for p in supported:
            resp.headers.add("X-Accepted-Stream-Protocol-Versions", p)
        return None, resp
    if not is_spdy_upgrade(request):
        return None, web.Response(
            status=400, text="unable to upgrade: missing upgrade headers in request\n"
        )
    return chosen, None


def refuse_websocket(offered: list[str], supported: tuple[str, ...]) -> web.Response:
    """A non-101 answer, so that kubectl 1.30+ falls back to SPDY (docs/protocol.md §3.7)."""
    return web.Response(
        status=403,
        text=(
            "unable to upgrade: unable to negotiate protocol: "
            f"client supports {offered}, server accepts {list(supported)}\n"
        ),
    )


async def accept_spdy(
    request: web.Request, protocol_version: str, session: SpdySession
) -> web.StreamResponse:
    """Answer 101 and hand the connection to ``session``; returns once the 101 is written.

    The caller keeps the handler awaiting ``session.closed`` until the session ends: aiohttp
    closes the transport when the handler returns.
    """
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the client went away before the upgrade")
    resp = web.StreamResponse(
        status=101,
        reason="Switching Protocols",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "SPDY/3.1",
            "X-Stream-Protocol-Version": protocol_version,
        },
    )
    resp.force_close()
    # Move the transport before the 101 goes out: the client speaks only after reading it,
    # so every byte after the headers reaches the session, none aiohttp's HTTP parser.
    session.previous = transport.get_protocol()
    transport.set_protocol(session)
    session.connection_made(transport)  # set_protocol does not call it
    await resp.prepare(request)
    with contextlib.suppress(AttributeError, RuntimeError):
        transport.resume_reading()
    return resp


def header(headers: Any, name: str) -> str:
    """A header value from a SPDY header block (a multi-value one gives its first value)."""
    value = headers.get(name, "") if hasattr(headers, "get") else ""
    if isinstance(value, list | tuple):
        value = value[0] if value else ""
    return str(value).split("\x00")[0]

"""Exec and attach over SPDY/3.1 (protocol.md §2), the kubelet's ``remotecommand/httpstream.go``.

The client opens one stream per ``streamtype`` (error, stdin, stdout, stderr, resize), each
answered at once with an empty SYN_REPLY; once every expected stream exists (within the
stream-creation timeout) the command runs. At the end: the status on the error stream (v4/v5
always, v1-v3 text on failure only), FIN on the output and error streams, GOAWAY, half-close,
and a bounded wait for the client to close (appendix F.4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .protocol import channels, spdy, status
from .protocol.resize import ResizeDecoder
from .remotecommand import run_request
from .runtime.base import Pipe, Resizes, StdIO
from .session import ReadPause, SpdySession, accept_spdy, header

if TYPE_CHECKING:
    from .server import StreamRequest, StreamServer

log = logging.getLogger(__name__)

# v5 is served with v4's semantics on SPDY (protocol.md appendix F.1).
PROTOCOL_VERSIONS = {
    channels.V5_CHANNEL: 5,
    channels.V4_CHANNEL: 4,
    "v3.channel.k8s.io": 3,
    "v2.channel.k8s.io": 2,
    channels.CHANNEL: 1,
}
CLOSE_WAIT = 5.0


def is_spdy_upgrade(request: web.Request) -> bool:
    connection = request.headers.get("Connection", "").lower()
    upgrade = request.headers.get("Upgrade", "").lower()
    return "upgrade" in connection and "spdy/3.1" in upgrade


def negotiate(request: web.Request, supported: list[str]) -> tuple[str | None, web.Response | None]:
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


class _Exec:
    """The stream bookkeeping of one SPDY exec/attach session."""

    def __init__(self, req: StreamRequest, version: int) -> None:
        self.req = req
        self.version = version
        self.expected = {"error"}
        if req.stdin:
            self.expected.add("stdin")
        if req.stdout:
            self.expected.add("stdout")
        if req.stderr:
            self.expected.add("stderr")
        if req.tty and version >= 3:
            self.expected.add("resize")
        self.streams: dict[str, int] = {}
        self.ready = asyncio.Event()
        self.gone = asyncio.Event()
        self.stdin = Pipe() if req.stdin else None
        self.resize = Resizes() if req.tty else None
        self._resize_decoder = ResizeDecoder()
        self.session = SpdySession(self.on_event)
        self.read_pause = ReadPause()

    def on_event(self, event: spdy.Event) -> None:
        conn = self.session.conn
        if isinstance(event, spdy.StreamOpened):
            conn.reply_stream(event.stream_id)
            self.session.flush()
            kind = header(event.headers, "streamtype")
            if kind in self.expected and kind not in self.streams:
                self.streams[kind] = event.stream_id
                if set(self.streams) == self.expected:
                    self.ready.set()
            else:
                log.info("SPDY stream %d of unexpected type %r ignored", event.stream_id, kind)
        elif isinstance(event, spdy.DataReceived):
            if event.stream_id == self.streams.get("stdin") and self.stdin is not None:
                if not self.stdin.feed_nowait(event.data):
                    self.read_pause.pause_until(self.session, self.stdin.wait_writable)
            elif event.stream_id == self.streams.get("resize") and self.resize is not None:
                try:
                    for size in self._resize_decoder.feed(event.data):
                        self.resize.put(size)
                except ValueError as exc:
                    log.info("dropping a bad resize stream: %s", exc)
                    self._resize_decoder = ResizeDecoder()
        elif isinstance(event, spdy.StreamEnded | spdy.StreamReset):
            if event.stream_id == self.streams.get("stdin") and self.stdin is not None:
                self.stdin.close()
        elif isinstance(event, spdy.GoAwayReceived | spdy.ConnectionTerminated):
            self.gone.set()

    def sink(self, kind: str) -> _SpdySink | None:
        sid = self.streams.get(kind)
        return _SpdySink(self.session, sid) if sid is not None else None


class _SpdySink:
    __slots__ = ("_session", "_sid")

    def __init__(self, session: SpdySession, sid: int) -> None:
        self._session, self._sid = session, sid

    async def write(self, data: bytes) -> None:
        await self._session.drain()
        self._session.conn.send_data(self._sid, data)
        self._session.flush()


async def serve_spdy(
    request: web.Request, server: StreamServer, kind: str, req: StreamRequest
) -> web.StreamResponse:
    chosen, refusal = negotiate(request, list(PROTOCOL_VERSIONS))
    if refusal is not None:
        server.metrics.refused["spdy-negotiation"] += 1
        return refusal
    assert chosen is not None
    state = _Exec(req, PROTOCOL_VERSIONS[chosen])
    session = state.session
    resp = await accept_spdy(request, chosen, session)
    server.metrics.sessions[(kind, "spdy")] += 1
    try:
        await _serve(server, kind, state)
    finally:
        await state.read_pause.cancel()
        if state.resize is not None:
            state.resize.close()
        session.close()
    return resp


async def _serve(server: StreamServer, kind: str, state: _Exec) -> None:
    session = state.session
    waiter = asyncio.create_task(state.ready.wait())
    gone = asyncio.create_task(state.gone.wait())
    closed = asyncio.create_task(session.closed.wait())
    tasks: list[asyncio.Task[Any]] = [waiter, gone, closed]
    try:
        done, _ = await asyncio.wait(
            {waiter, gone, closed},
            timeout=server.config.stream_creation_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if waiter not in done:
            if not done:
                log.info("timed out waiting for client to create streams")
                with contextlib.suppress(spdy.ProtocolError):
                    session.conn.goaway()
                session.flush()
            return
        io = StdIO(
            stdin=state.stdin,
            stdout=state.sink("stdout"),
            stderr=state.sink("stderr"),
            resize=state.resize,
        )
        run = asyncio.create_task(run_request(server, kind, state.req, io))
        tasks.append(run)
        await asyncio.wait({run, gone, closed}, return_when=asyncio.FIRST_COMPLETED)
        if not run.done():  # the client went away first: the runtime stops the process
            return
        _finish(state, run.result())
        # The client closes once it has read everything (kubectl: RSTs, GOAWAY, EOF).
        await asyncio.wait({gone, closed}, timeout=CLOSE_WAIT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _finish(state: _Exec, body: bytes) -> None:
    """Status, FIN the output and error streams, GOAWAY, half-close (appendix F.4)."""
    session, conn = state.session, state.session.conn
    if session.closed.is_set():
        return
    error_sid = state.streams["error"]
    ok = body == status.success()
    with contextlib.suppress(spdy.ProtocolError):
        if state.version >= 4:
            conn.send_data(error_sid, body)
        elif not ok:
            conn.send_data(error_sid, status.v1_error_text(body))
        for kind in ("stdout", "stderr", "error"):
            sid = state.streams.get(kind)
            if sid is not None:
                conn.end_stream(sid)
        conn.goaway()
    session.flush()
    transport = session.transport
    if transport is not None and transport.can_write_eof() and not transport.is_closing():
        transport.write_eof()

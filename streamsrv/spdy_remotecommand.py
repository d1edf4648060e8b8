"""Exec and attach over SPDY/3.1 (docs/protocol.md §2): the kubelet's ``httpstream.go``.

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
from typing import Any

from aiohttp import web

from .context import SHUTTING_DOWN, StreamContext
from .protocol import channels, spdy, status
from .protocol.resize import ResizeDecoder
from .recording import Session
from .remotecommand import idle_status, run_request
from .requests import StreamRequest
from .runtime.base import Flag, Pipe, Resizes, StdIO, first_done
from .transport import ReadPause, SpdySession, accept_spdy, header, negotiate_spdy

log = logging.getLogger(__name__)

# v5 is served with v4's semantics on SPDY (docs/protocol.md appendix F.1).
PROTOCOL_VERSIONS = {
    channels.V5_CHANNEL: 5,
    channels.V4_CHANNEL: 4,
    "v3.channel.k8s.io": 3,
    "v2.channel.k8s.io": 2,
    channels.CHANNEL: 1,
}
CLOSE_WAIT = 5.0


class _Exec:
    """The stream bookkeeping of one SPDY exec/attach session (a ``SessionHandler``)."""

    def __init__(self, ctx: StreamContext, req: StreamRequest, version: int) -> None:
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
        self.ready = Flag()
        self.gone = Flag()
        self.idle = Flag()
        self.stdin = Pipe(ctx.limits.read_buffer) if req.stdin else None
        # v1 and v2 have no resize stream: no size will come for a runtime to wait for
        self.resize = Resizes() if req.tty and version >= 3 else None
        self._resize_decoder = ResizeDecoder()
        self.session = SpdySession(self, ctx.limits, ctx.warnings)
        self.read_pause = ReadPause()

    def on_event(self, event: spdy.Event) -> None:
        session = self.session
        if isinstance(event, spdy.StreamOpened):
            sid = event.stream_id
            if not session.reply(sid):
                return  # reset by the client in the same read
            kind = header(event.headers, "streamtype")
            if kind in self.expected and kind not in self.streams:
                self.streams[kind] = sid
                if set(self.streams) == self.expected:
                    self.ready.set()
            else:
                # Replied and ignored, as the kubelet does: kubectl opens stdin for `attach -i`
                # even when the container has none. They count against max_streams.
                log.debug("SPDY stream %d of unexpected type %r ignored", sid, kind)
        elif isinstance(event, spdy.DataReceived):
            if event.stream_id == self.streams.get("stdin") and self.stdin is not None:
                if not self.stdin.feed_nowait(event.data):
                    self.read_pause.pause_until(session, self.stdin.wait_writable)
            elif event.stream_id == self.streams.get("resize") and self.resize is not None:
                try:
                    for size in self._resize_decoder.feed(event.data):
                        self.resize.put(size)
                except ValueError as exc:
                    log.debug("dropping a bad resize stream: %s", exc)
                    self._resize_decoder = ResizeDecoder()
        elif isinstance(event, spdy.StreamEnded | spdy.StreamReset):
            if event.stream_id == self.streams.get("stdin") and self.stdin is not None:
                self.stdin.close()
        elif isinstance(event, spdy.GoAwayReceived | spdy.ConnectionTerminated):
            self.gone.set()

    def on_idle(self) -> None:
        self.idle.set()

    def sink(self, kind: str) -> _SpdySink | None:
        sid = self.streams.get(kind)
        return _SpdySink(self.session, sid) if sid is not None else None


class _SpdySink:
    __slots__ = ("_session", "_sid")

    def __init__(self, session: SpdySession, sid: int) -> None:
        self._session, self._sid = session, sid

    async def write(self, data: bytes) -> None:
        await self._session.drain()
        self._session.send_data(self._sid, data)


async def serve_spdy(
    request: web.Request, ctx: StreamContext, kind: str, req: StreamRequest, account: Session
) -> web.StreamResponse:
    chosen, refusal = negotiate_spdy(request, list(PROTOCOL_VERSIONS))
    if refusal is not None:
        ctx.metrics.refused["spdy-negotiation"] += 1
        return refusal
    assert chosen is not None
    state = _Exec(ctx, req, PROTOCOL_VERSIONS[chosen])
    session = state.session
    resp = await accept_spdy(request, chosen, session)
    ctx.established(account, "spdy", chosen)
    try:
        await _serve(ctx, kind, state, account)
    finally:
        await state.read_pause.cancel()
        if state.resize is not None:
            state.resize.close()
        session.close()
    return resp


async def _serve(ctx: StreamContext, kind: str, state: _Exec, account: Session) -> None:
    session = state.session
    # Futures of this session's own, not a task per event (docs/benchmarks.md, idle memory).
    waiter = state.ready.waiter()
    gone = state.gone.waiter()
    closed = session.closed.waiter()
    idle = state.idle.waiter()
    stopping = ctx.stopping.waiter()
    tasks: list[asyncio.Future[Any]] = [waiter, gone, closed, idle, stopping]
    try:
        done, _ = await asyncio.wait(
            {waiter, gone, closed, stopping},
            timeout=ctx.limits.stream_creation_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if waiter not in done:
            if not done or stopping in done:
                log.info("timed out waiting for client to create streams")
                ctx.metrics.refused["stream-creation-timeout"] += 1
                account.error = "the client did not create its streams"
                session.goaway()
            return
        io = StdIO(
            stdin=state.stdin,
            stdout=state.sink("stdout"),
            stderr=state.sink("stderr"),
            resize=state.resize,
        )
        run = asyncio.create_task(run_request(ctx, kind, state.req, io, account))
        tasks.append(run)
        ends: list[asyncio.Future[Any]] = [run, gone, closed, idle, stopping]
        await first_done(ends)
        if not run.done():
            run.cancel()  # the runtime stops the process
            with contextlib.suppress(asyncio.CancelledError):
                await run
            if stopping.done():
                account.error = SHUTTING_DOWN
                body = status.internal_error(SHUTTING_DOWN, attach=kind == "attach")
            elif not idle.done():  # the client went away first
                account.error = "the client went away"
                return
            else:
                ctx.metrics.refused["idle-timeout"] += 1
                account.error = "idle timeout"
                body = idle_status(ctx.limits.idle_timeout, attach=kind == "attach")
        else:
            body = run.result()
        _finish(state, body)
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
    session = state.session
    if session.closed.is_set():
        return
    error_sid = state.streams["error"]
    ok = body == status.success()
    with session.batch():
        if state.version >= 4:
            session.send_data(error_sid, body)
        elif not ok:
            session.send_data(error_sid, status.v1_error_text(body))
        for kind in ("stdout", "stderr", "error"):
            sid = state.streams.get(kind)
            if sid is not None:
                session.end(sid)
        session.goaway()
    session.write_eof()

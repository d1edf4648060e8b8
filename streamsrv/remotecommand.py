"""Exec and attach sessions over the Kubernetes WebSocket channel protocols.

The session owns two tasks: the runtime's exec/attach (output flows from it to the socket) and
a reader that always sits in ``ws.receive()``, so kubectl's pings are answered while output
flows (docs/protocol.md §3.5) and stdin, resize and the v5 close signal reach the process. When the
process ends, the status goes on channel 3 and the socket is closed with a close frame; when the
client goes away first, the process is cancelled (the runtime kills it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from .context import SHUTTING_DOWN, StreamContext
from .errors import BackendError
from .protocol import channels, status
from .protocol.resize import ResizeDecoder, TerminalSize
from .recording import Session
from .requests import ExecRequest, StreamRequest
from .runtime.base import KILLED, ByteSink, Pipe, Resizes, StdIO, first_done
from .transport import Activity, StreamWebSocket, refuse_websocket, send_message

log = logging.getLogger(__name__)

# Preference order when a client offers several (the client's order decides; §3.1).
EXEC_PROTOCOLS = (
    channels.V5_CHANNEL,
    channels.V4_CHANNEL,
    channels.V4_BASE64_CHANNEL,
    channels.CHANNEL,
    channels.BASE64_CHANNEL,
)


class _Sink:
    """stdout or stderr of a session: one WebSocket message per write."""

    __slots__ = ("_ws", "_codec", "_channel", "_activity")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        codec: channels.ChannelCodec,
        channel: int,
        activity: Activity,
    ):
        self._ws, self._codec, self._channel = ws, codec, channel
        self._activity = activity

    async def write(self, data: bytes) -> None:
        self._activity.touch()
        await send_message(self._ws, self._codec.encode(self._channel, data))


def refuse(ctx: StreamContext, offered: list[str], supported: tuple[str, ...]) -> web.Response:
    ctx.metrics.refused["subprotocol"] += 1
    return refuse_websocket(offered, supported)


def idle_status(idle_timeout: float, *, attach: bool) -> bytes:
    """The status that ends a session the idle timeout ended."""
    return status.internal_error(
        f"the stream was idle for {idle_timeout:.0f} s (streaming connection idle timeout)",
        attach=attach,
    )


async def serve_websocket(
    request: web.Request, ctx: StreamContext, kind: str, req: StreamRequest, account: Session
) -> web.StreamResponse:
    offered = channels.parse_protocol_header(request.headers.getall("Sec-WebSocket-Protocol", []))
    chosen = channels.negotiate(offered, EXEC_PROTOCOLS)
    if chosen is None:
        return refuse(ctx, offered, EXEC_PROTOCOLS)
    ws = StreamWebSocket(
        protocols=(chosen,), max_msg_size=ctx.limits.max_websocket_message, autoping=True
    )
    if ws.can_prepare(request).protocol != chosen:  # aiohttp would go on without one
        return refuse(ctx, offered, EXEC_PROTOCOLS)
    await ws.prepare(request)
    ctx.established(account, "websocket", chosen)
    codec = channels.ChannelCodec(chosen)
    activity = Activity()
    io = StdIO(
        stdin=Pipe(ctx.limits.read_buffer) if req.stdin else None,
        stdout=_Sink(ws, codec, channels.STDOUT, activity) if req.stdout else None,
        stderr=_Sink(ws, codec, channels.STDERR, activity) if req.stderr else None,
        resize=Resizes() if req.tty else None,
    )
    # "Connection established": an empty payload on the lowest channel we will write.
    first = channels.STDOUT if req.stdout else channels.STDERR if req.stderr else channels.ERROR
    await send_message(ws, codec.encode(first, b""))

    run = asyncio.create_task(run_request(ctx, kind, req, io, account))
    reader = asyncio.create_task(_read(ws, codec, io, activity))
    # The idle timeout and the server's stop as futures, not tasks (docs/benchmarks.md, idle
    # memory); each is this session's own, so cancelling it below is safe.
    idle = activity.idle(ctx.limits.idle_timeout)
    stopping = ctx.stopping.waiter()
    tasks: tuple[asyncio.Future[Any], ...] = (run, reader, idle, stopping)
    try:
        await first_done(tasks)
        if not run.done():
            # The client left (close frame, broken socket or garbage), the session idled, or
            # the server is shutting down: stop the process.
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            if stopping.done():
                account.error = SHUTTING_DOWN
                body = status.internal_error(SHUTTING_DOWN, attach=kind == "attach")
            elif not idle.done():
                account.error = "the client went away"
                code = WSCloseCode.PROTOCOL_ERROR
                if ws.exception() is not None or ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
                    code = WSCloseCode.MESSAGE_TOO_BIG
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.close(code=code)
                return ws
            else:
                log.info("%s session idle for %.0f s: ended", kind, ctx.limits.idle_timeout)
                ctx.metrics.refused["idle-timeout"] += 1
                account.error = "idle timeout"
                body = idle_status(ctx.limits.idle_timeout, attach=kind == "attach")
        else:
            body = run.result()
        if codec.status_version >= 4 or not _is_success(body):
            payload = body if codec.status_version >= 4 else _v1_text(body)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await send_message(ws, codec.encode(channels.ERROR, payload))
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close()
        return ws
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if io.resize is not None:
            io.resize.close()


def _is_success(body: bytes) -> bool:
    return body == status.success()


def _v1_text(body: bytes) -> bytes:
    return status.v1_error_text(body)


async def run_request(
    ctx: StreamContext, kind: str, req: StreamRequest, io: StdIO, account: Session
) -> bytes:
    """Run the exec or attach; the v4 Status body that ends the session. The bytes each way,
    the terminal's sizes and the exit go on ``account`` (metrics, recording, audit)."""
    io = accounted(io, account)
    try:
        if isinstance(req, ExecRequest):
            return await _exec(ctx, req, io, account)
        return await _attach(ctx, req, io)
    except (BackendError, OSError) as exc:
        log.info("%s in %s failed: %s", kind, req.container_id[:12], exc)
        ctx.metrics.errors["runtime"] += 1
        account.error = str(exc)
        return status.internal_error(str(exc), attach=kind == "attach")
    except Exception as exc:  # a bug of ours: the client still gets a status, not a hang
        log.exception("%s in %s failed", kind, req.container_id[:12])
        ctx.metrics.errors["internal"] += 1
        account.error = f"internal error: {exc!r}"
        return status.internal_error(f"internal error: {exc!r}", attach=kind == "attach")


class _Counted:
    """A sink that tells the session's account about each chunk before passing it on."""

    __slots__ = ("_sink", "_account")

    def __init__(self, sink: ByteSink, account: Session) -> None:
        self._sink, self._account = sink, account

    async def write(self, data: bytes) -> None:
        self._account.output(data)
        await self._sink.write(data)


def accounted(io: StdIO, account: Session) -> StdIO:
    """``io`` with its output counted (and recorded) on ``account``, and its stdin and
    terminal sizes reported to it as the runtime takes them."""
    if io.stdin is not None:
        io.stdin.tap = account.input
    if io.resize is not None:

        def resized(size: TerminalSize) -> None:
            account.resized(size.width, size.height)

        io.resize.tap = resized
        if io.resize.latest is not None:  # a size that came before the session started
            resized(io.resize.latest)
    return StdIO(
        stdin=io.stdin,
        stdout=_Counted(io.stdout, account) if io.stdout is not None else None,
        stderr=_Counted(io.stderr, account) if io.stderr is not None else None,
        resize=io.resize,
    )


async def _exec(ctx: StreamContext, req: ExecRequest, io: StdIO, account: Session) -> bytes:
    """The exec, ended at once (its process killed) when its container stops: the process
    shares the pod's PID namespace, so the container's end does not end it."""
    work = asyncio.create_task(ctx.runtime.exec(req.container_id, req.cmd, io, tty=req.tty))
    watch = ctx.containers.watch(req.container_id)
    try:
        ends: list[asyncio.Future[Any]] = [work, watch]
        await first_done(ends)
        if not work.done() and watch.exception() is not None:
            log.warning("cannot watch container %s: %r", req.container_id[:12], watch.exception())
            await asyncio.wait({work})
        if not work.done():
            why = watch.result()
            work.cancel()  # the runtime kills the process
            with contextlib.suppress(asyncio.CancelledError):
                await work
            log.info("exec in %s ended: %s", req.container_id[:12], why)
            account.exit_code = KILLED
            return status.exit_code(KILLED, f"the process was killed: {why}")
        code = work.result()
        account.exit_code = code
        if code == KILLED:  # killed with its container? (containerd's shim kills them together)
            stopped: str | None = None
            with contextlib.suppress(BackendError):
                stopped = await ctx.runtime.container_stopped(req.container_id)
            if stopped is not None:
                log.info("exec in %s ended: %s", req.container_id[:12], stopped)
                return status.exit_code(KILLED, f"the process was killed: {stopped}")
        return status.success() if code == 0 else status.exit_code(code)
    finally:
        for task in (work, watch):
            task.cancel()
        for task in (work, watch):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


#: Seconds an attach may go on delivering output after its container was seen stopped.
ATTACH_DRAIN = 2.0


async def _attach(ctx: StreamContext, req: StreamRequest, io: StdIO) -> bytes:
    """The attach, ended once its container has stopped (after at most :data:`ATTACH_DRAIN`
    for the last output): an engine's attach that began just as the container ended can wait
    for output that never comes."""
    work = asyncio.create_task(ctx.runtime.attach(req.container_id, io, tty=req.tty))
    watch = ctx.containers.watch(req.container_id)
    try:
        ends: list[asyncio.Future[Any]] = [work, watch]
        await first_done(ends)
        if not work.done() and watch.exception() is not None:
            log.warning("cannot watch container %s: %r", req.container_id[:12], watch.exception())
            await asyncio.wait({work})
        if not work.done():
            await asyncio.wait({work}, timeout=ATTACH_DRAIN)
        if not work.done():
            log.info("attach to %s ended: %s", req.container_id[:12], watch.result())
            return status.success()
        work.result()  # a runtime's refusal is the caller's to report
        return status.success()
    finally:
        for task in (work, watch):
            task.cancel()
        for task in (work, watch):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _read(
    ws: web.WebSocketResponse, codec: channels.ChannelCodec, io: StdIO, activity: Activity
) -> None:
    """Client to process: stdin, resize and the v5 close signal, until the client is gone."""
    resize = ResizeDecoder()
    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                break
            decoded = codec.decode(msg.data)
            if decoded is None:
                continue
            activity.touch()
            if isinstance(decoded, channels.CloseChannel):
                if decoded.channel == channels.STDIN and io.stdin is not None:
                    io.stdin.close()
                continue
            if decoded.channel == channels.STDIN and io.stdin is not None:
                await io.stdin.feed(decoded.data)
            elif decoded.channel == channels.RESIZE and io.resize is not None:
                try:
                    for size in resize.feed(decoded.data):
                        io.resize.put(size)
                except ValueError as exc:
                    log.debug("dropping a bad resize stream: %s", exc)
                    resize = ResizeDecoder()
    except channels.ChannelProtocolError as exc:
        log.info("ending a session on a protocol error: %s", exc)
    # No stdin EOF here: the session cancels the process when the client is gone, and an EOF
    # (an EOT on a terminal) could make an attached shell exit behind a client that just left.

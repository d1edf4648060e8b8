"""Exec and attach sessions over the Kubernetes WebSocket channel protocols.

The session owns two tasks: the runtime's exec/attach (output flows from it to the socket) and
a reader that always sits in ``ws.receive()``, so kubectl's pings are answered while output
flows (protocol.md §3.5) and stdin, resize and the v5 close signal reach the process. When the
process ends, the status goes on channel 3 and the socket is closed with a close frame; when the
client goes away first, the process is cancelled (the runtime kills it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, WSMsgType, web

from .protocol import channels, status
from .protocol.resize import ResizeDecoder
from .runtime.base import BackendError, Pipe, Resizes, StdIO

if TYPE_CHECKING:
    from .server import StreamRequest, StreamServer

log = logging.getLogger(__name__)

# Preference order when a client offers several (the client's order decides; protocol.md §3.1).
EXEC_PROTOCOLS = (
    channels.V5_CHANNEL,
    channels.V4_CHANNEL,
    channels.V4_BASE64_CHANNEL,
    channels.CHANNEL,
    channels.BASE64_CHANNEL,
)
MAX_MESSAGE = 64 * 1024 * 1024


def is_websocket(request: web.Request) -> bool:
    """The kubelet's ``IsWebSocketRequest``: ``Upgrade: websocket`` and a Connection upgrade."""
    upgrade = request.headers.get("Upgrade", "").strip().lower()
    connection = request.headers.get("Connection", "").lower()
    return upgrade == "websocket" and "upgrade" in connection


class _Sink:
    """stdout or stderr of a session: one WebSocket message per write."""

    __slots__ = ("_ws", "_codec", "_channel")

    def __init__(self, ws: web.WebSocketResponse, codec: channels.ChannelCodec, channel: int):
        self._ws, self._codec, self._channel = ws, codec, channel

    async def write(self, data: bytes) -> None:
        await _send(self._ws, self._codec.encode(self._channel, data))


async def _send(ws: web.WebSocketResponse, message: bytes | str) -> None:
    if isinstance(message, str):
        await ws.send_str(message)
    else:
        await ws.send_bytes(message)


def refuse(server: StreamServer, offered: list[str], supported: tuple[str, ...]) -> web.Response:
    """A non-101 answer, so that kubectl 1.30+ falls back to SPDY (protocol.md §3.7)."""
    server.metrics.refused["subprotocol"] += 1
    return web.Response(
        status=403,
        text=(
            "unable to upgrade: unable to negotiate protocol: "
            f"client supports {offered}, server accepts {list(supported)}\n"
        ),
    )


async def serve_websocket(
    request: web.Request, server: StreamServer, kind: str, req: StreamRequest
) -> web.StreamResponse:
    offered = channels.parse_protocol_header(request.headers.getall("Sec-WebSocket-Protocol", []))
    chosen = channels.negotiate(offered, EXEC_PROTOCOLS)
    if chosen is None:
        return refuse(server, offered, EXEC_PROTOCOLS)
    ws = web.WebSocketResponse(protocols=(chosen,), max_msg_size=MAX_MESSAGE, autoping=True)
    if ws.can_prepare(request).protocol != chosen:  # aiohttp would go on without one
        return refuse(server, offered, EXEC_PROTOCOLS)
    await ws.prepare(request)
    server.metrics.sessions[(kind, "websocket")] += 1
    codec = channels.ChannelCodec(chosen)
    io = StdIO(
        stdin=Pipe() if req.stdin else None,
        stdout=_Sink(ws, codec, channels.STDOUT) if req.stdout else None,
        stderr=_Sink(ws, codec, channels.STDERR) if req.stderr else None,
        resize=Resizes() if req.tty else None,
    )
    # "Connection established": an empty payload on the lowest channel we will write.
    first = channels.STDOUT if req.stdout else channels.STDERR if req.stderr else channels.ERROR
    await _send(ws, codec.encode(first, b""))

    run = asyncio.create_task(run_request(server, kind, req, io))
    reader = asyncio.create_task(_read(ws, codec, io))
    try:
        await asyncio.wait({run, reader}, return_when=asyncio.FIRST_COMPLETED)
        if not run.done():
            # The client left (close frame, broken socket or garbage): stop the process.
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close(code=WSCloseCode.PROTOCOL_ERROR)
            return ws
        body = run.result()
        if body is not None and (codec.status_version >= 4 or not _is_success(body)):
            payload = body if codec.status_version >= 4 else _v1_text(body)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await _send(ws, codec.encode(channels.ERROR, payload))
        await ws.close()
        return ws
    finally:
        for task in (run, reader):
            task.cancel()
        for task in (run, reader):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if io.resize is not None:
            io.resize.close()


def _is_success(body: bytes) -> bool:
    return body == status.success()


def _v1_text(body: bytes) -> bytes:
    return status.v1_error_text(body)


async def run_request(server: StreamServer, kind: str, req: StreamRequest, io: StdIO) -> bytes:
    """Run the exec or attach; the v4 Status body that ends the session."""
    from .server import ExecRequest

    try:
        if isinstance(req, ExecRequest):
            code = await server.runtime.exec(req.container_id, req.cmd, io, tty=req.tty)
            return status.success() if code == 0 else status.exit_code(code)
        await server.runtime.attach(req.container_id, io, tty=req.tty)
        return status.success()
    except (BackendError, OSError) as exc:
        log.info("%s in %s failed: %s", kind, req.container_id[:12], exc)
        return status.internal_error(str(exc), attach=kind == "attach")
    except Exception as exc:  # a bug of ours: the client still gets a status, not a hang
        log.exception("%s in %s failed", kind, req.container_id[:12])
        return status.internal_error(f"internal error: {exc!r}", attach=kind == "attach")


async def _read(ws: web.WebSocketResponse, codec: channels.ChannelCodec, io: StdIO) -> None:
    """Client to process: stdin, resize and the v5 close signal, until the client is gone."""
    resize = ResizeDecoder()
    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                break
            decoded = codec.decode(msg.data)
            if decoded is None:
                continue
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
                    log.info("dropping a bad resize stream: %s", exc)
                    resize = ResizeDecoder()
    except channels.ChannelProtocolError as exc:
        log.info("ending a session on a protocol error: %s", exc)
    # No stdin EOF here: the session cancels the process when the client is gone, and an EOF
    # (an EOT on a terminal) could make an attached shell exit behind a client that just left.

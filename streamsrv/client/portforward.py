"""port-forward over the WebSocket channel protocol (docs/protocol.md §5a).

One WebSocket per TCP connection to the pod (``ports=PORT``): channel 0 carries the data,
channel 1 the server's error text, and each starts with the port as a little-endian ``uint16``.
The connection is handed to the caller as a real ``(asyncio.StreamReader, asyncio.StreamWriter)``
pair through a small transport, so it drops into any code written for ``open_connection``, with
asyncio's own flow control both ways: the reader pauses this transport when its buffer is full
(then the WebSocket stops being read and the server stops sending), and ``drain()`` waits while
more than :data:`WRITE_HIGH` bytes wait to be sent.

The channel protocol cannot end one direction alone: ``write_eof()`` is not available
(``can_write_eof()`` is False), and closing the writer closes the whole connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from ..protocol.channels import (
    V4_CHANNEL,
    ChannelCodec,
    ChannelProtocolError,
    Decoded,
    port_bytes,
)
from .errors import ConnectionLost, PortForwardError

log = logging.getLogger(__name__)

#: What port-forward offers: the kubelet serves v4 (and its base64 twin) only.
PROTOCOLS: tuple[str, ...] = (V4_CHANNEL,)
#: Bytes queued for sending before ``drain()`` waits, and the mark it resumes under.
WRITE_HIGH = 1 << 20
WRITE_LOW = 256 << 10
#: Largest message sent: writes queued together are coalesced up to this.
MESSAGE = 256 << 10
#: Bytes of error text kept from the server.
MAX_ERROR = 64 << 10
DATA, ERROR = 0, 1


class _ForwardTransport(asyncio.Transport):
    """An ``asyncio.Transport`` over one port-forward WebSocket."""

    def __init__(
        self,
        ws: ClientConnection,
        port: int,
        protocol: asyncio.StreamReaderProtocol,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__({"peername": ("pod", port), "subprotocol": ws.subprotocol or ""})
        self._ws, self._port, self._protocol = ws, port, protocol
        self._codec = ChannelCodec(ws.subprotocol or "", num_channels=2)
        self._queue: deque[bytes | memoryview] = deque()
        self._queued = 0
        self._write_paused = False
        self._closing = False
        self._lost = False
        self._readable = asyncio.Event()
        self._readable.set()
        self._wake = asyncio.Event()
        self._on_close = on_close
        loop = asyncio.get_running_loop()
        self._receiver = loop.create_task(self._receive())
        self._sender = loop.create_task(self._send())

    # ------------------------------------------------------------ asyncio.Transport interface

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._lost:
            return  # asyncio's socket transports ignore writes after close too
        if not data:
            return
        self._queue.append(bytes(data))
        self._queued += len(data)
        self._wake.set()
        if self._queued > WRITE_HIGH and not self._write_paused:
            self._write_paused = True
            self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError(
            "the port-forward channel protocol cannot end one direction; close the writer"
        )

    def get_write_buffer_size(self) -> int:
        return self._queued

    def pause_reading(self) -> None:
        self._readable.clear()

    def resume_reading(self) -> None:
        self._readable.set()

    def is_reading(self) -> bool:
        return self._readable.is_set()

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Send what is queued, then close the WebSocket."""
        if not self._closing:
            self._closing = True
            self._wake.set()
            self._readable.set()

    def abort(self) -> None:
        self._closing = True
        self._queue.clear()
        self._queued = 0
        self._sender.cancel()
        self._wake.set()
        self._readable.set()
        asyncio.get_running_loop().create_task(self._ws.close())

    # ------------------------------------------------------------ tasks

    async def _send(self) -> None:
        ws, queue, codec = self._ws, self._queue, self._codec
        try:
            while True:
                if not queue:
                    if self._closing or self._lost:
                        break
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                # At most MESSAGE bytes per message: small writes are joined, a large one is
                # cut (a server refuses messages over its limit: streamsrv's is 4 MiB).
                parts: list[bytes | memoryview] = []
                size = 0
                while queue and size < MESSAGE:
                    part, room = queue[0], MESSAGE - size
                    if len(part) <= room:
                        parts.append(queue.popleft())
                        size += len(part)
                    else:
                        view = memoryview(part)
                        parts.append(view[:room])
                        queue[0] = view[room:]
                        size += room
                payload = parts[0] if len(parts) == 1 else b"".join(parts)
                await ws.send(codec.encode(DATA, payload))
                # counted until sent, so that drain() waits for what is still in flight
                self._queued -= size
                if self._write_paused and self._queued <= WRITE_LOW:
                    self._write_paused = False
                    self._protocol.resume_writing()
        except ConnectionClosed:
            pass
        finally:
            self._queue.clear()
            self._queued = 0
            with contextlib.suppress(Exception):
                await ws.close()

    async def _receive(self) -> None:
        ws, codec, protocol = self._ws, self._codec, self._protocol
        preamble = {DATA: True, ERROR: True}
        error = bytearray()
        failure: Exception | None = None
        try:
            while True:
                await self._readable.wait()
                try:
                    message = await ws.recv()
                except ConnectionClosedOK:
                    break
                decoded = codec.decode(message)
                if not isinstance(decoded, Decoded):
                    continue
                channel, data = decoded.channel, decoded.data
                if preamble.get(channel):
                    preamble[channel] = False
                    if data != port_bytes(self._port):
                        raise ChannelProtocolError(
                            f"channel {channel} started with {data[:8].hex()}, "
                            f"not port {self._port}"
                        )
                    continue
                if channel == DATA:
                    if data:
                        protocol.data_received(data)
                else:
                    error += data[: MAX_ERROR - len(error)]
                    failure = PortForwardError(error.decode("utf-8", "replace"))
                    break
        except ConnectionClosed as exc:
            failure = ConnectionLost(f"the port-forward connection was cut: {exc}")
        except ChannelProtocolError as exc:
            failure = ConnectionLost(f"the server broke the port-forward protocol: {exc}")
        finally:
            self._lost = True
            self._wake.set()
            if failure is None:
                protocol.eof_received()
            if self._write_paused:
                self._write_paused = False
                protocol.resume_writing()
            protocol.connection_lost(failure)
            if self._on_close is not None:
                self._on_close()
            with contextlib.suppress(Exception):
                await ws.close()


def stream_pair(
    ws: ClientConnection, port: int, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = _ForwardTransport(ws, port, protocol)
    protocol.connection_made(transport)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


Opener = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class Forwarder:
    """Local listeners that forward each accepted connection to a pod port, like
    ``kubectl port-forward``; use it as ``async with``.

    Attributes:
        ports: remote port -> the local port actually listened on (useful with local port 0).
    """

    def __init__(self, open_remote: Opener, mapping: Mapping[int, int], address: str) -> None:
        self._open, self._mapping, self._address = open_remote, dict(mapping), address
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.ports: dict[int, int] = {}
        self.errors: list[BaseException] = []

    async def start(self) -> Forwarder:
        try:
            for local, remote in self._mapping.items():
                server = await asyncio.start_server(
                    functools.partial(self._accept, remote=remote), self._address, local
                )
                self._servers.append(server)
                self.ports[remote] = server.sockets[0].getsockname()[1]
        except BaseException:
            await self.close()
            raise
        return self

    async def __aenter__(self) -> Forwarder:
        return self if self._servers else await self.start()

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop listening and end every forwarded connection."""
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def _accept(
        self, local_r: asyncio.StreamReader, local_w: asyncio.StreamWriter, remote: int
    ) -> None:
        # The splice runs in a task of its own, which close() cancels; this handler then returns
        # normally (asyncio 3.11 logs an error for a connection handler that ends cancelled).
        splice = asyncio.ensure_future(self._splice(local_r, local_w, remote))
        self._tasks.add(splice)
        try:
            await asyncio.wait([splice])
        finally:
            self._tasks.discard(splice)
            splice.cancel()

    async def _splice(
        self, local_r: asyncio.StreamReader, local_w: asyncio.StreamWriter, remote: int
    ) -> None:
        try:
            pod_r, pod_w = await self._open(remote)
        except Exception as exc:
            log.warning("port-forward to %d: %s", remote, exc)
            self.errors.append(exc)
            local_w.close()
            return

        async def up() -> None:  # local -> pod
            while data := await local_r.read(MESSAGE):
                pod_w.write(data)
                await pod_w.drain()

        async def down() -> None:  # pod -> local
            while data := await pod_r.read(MESSAGE):
                local_w.write(data)
                await local_w.drain()

        up_task = asyncio.ensure_future(up())
        down_task = asyncio.ensure_future(down())
        try:
            # Either side's end ends the connection: the channel protocol cannot carry a
            # half-close to the pod, and a pod connection left open after its local client is
            # gone would be held until the forwarder closes (the Python client closes too).
            await asyncio.wait([up_task, down_task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (up_task, down_task):
                t.cancel()
            # Both ends are closed before anything is awaited: close() may cancel this task
            # while it waits for the two pumps, and the pod side would then be left open.
            pod_w.close()
            local_w.close()
            for result in await asyncio.gather(up_task, down_task, return_exceptions=True):
                if isinstance(result, Exception) and not isinstance(result, ConnectionError):
                    self.errors.append(result)
            with contextlib.suppress(Exception):
                await local_w.wait_closed()


__all__ = ["PROTOCOLS", "Forwarder", "stream_pair"]

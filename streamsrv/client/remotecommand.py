"""exec and attach over the WebSocket channel protocols (docs/protocol.md §3).

One reader task per session takes each message from the connection, strips the channel byte
(the one copy per message) and hands the payload to the stdout or stderr :class:`ByteStream`;
when a stream holds its limit, the task waits, the connection stops reading its socket and the
server stops sending. Channel 3 collects the status, which :meth:`Process.wait` decodes exactly
as client-go does (``protocol.status.parse_status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from ..protocol.channels import (
    CHANNEL,
    ERROR,
    NO_PROTOCOL,
    RESIZE,
    STDERR,
    STDIN,
    STDOUT,
    V4_CHANNEL,
    V5_CHANNEL,
    ChannelCodec,
    ChannelProtocolError,
    CloseChannel,
)
from ..protocol.status import parse_status
from ._ws import json_object
from .errors import ConnectionLost, HalfCloseUnsupported, RemoteError
from .streams import ByteStream

#: What exec and attach offer, best first: v5 can end stdin alone, v4 has exit codes, the
#: unversioned binary protocol is the kubelet's oldest (plain-text errors, no exit codes).
PROTOCOLS: tuple[str, ...] = (V5_CHANNEL, V4_CHANNEL, CHANNEL)
#: Bytes of stdin per message: large messages keep the per-message work small.
STDIN_MESSAGE = 64 << 10
#: A status larger than this is not a status.
MAX_STATUS = 1 << 20
#: Characters of an error message kept for RemoteError.
MAX_MESSAGE = 4000
#: Default terminal size sent at the start of a tty session (the server waits for a first size).
DEFAULT_SIZE = (80, 24)


@dataclass(frozen=True)
class Completed:
    """What :meth:`streamsrv.client.Client.run` returns."""

    exit_code: int
    stdout: bytes
    stderr: bytes


class Stdin:
    """The command's standard input.

    ``await write(data)`` sends it (and waits while the connection's send buffer is above its
    limit: back-pressure), ``await close()`` ends it: on ``v5.channel.k8s.io`` the server closes
    the process's stdin and the command sees end of input. Older protocols have no way to say
    that (kubernetes/kubernetes#89899): there ``close()`` only stops further writes and the
    command sees end of input when the session ends; :attr:`can_write_eof` tells which.
    """

    def __init__(self, ws: ClientConnection, codec: ChannelCodec) -> None:
        self._ws, self._codec = ws, codec
        self.closed = False

    @property
    def can_write_eof(self) -> bool:
        """The protocol can end stdin alone (``v5.channel.k8s.io``)."""
        return self._codec.supports_close

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (split into messages of at most 1 MiB)."""
        if self.closed:
            raise ValueError("stdin is closed")
        view = memoryview(data).cast("B")
        try:
            for start in range(0, len(view), STDIN_MESSAGE):
                # the channel byte is joined to the slice itself: one copy, as for bytes
                chunk = view[start : start + STDIN_MESSAGE]
                await self._ws.send(self._codec.encode(STDIN, chunk))
        except ConnectionClosed as exc:
            raise ConnectionLost(f"the connection closed while writing stdin: {exc}") from None

    async def drain(self) -> None:
        """For ``asyncio.StreamWriter`` habits: :meth:`write` already waits for the buffer."""
        if self._ws.state.name in ("CLOSING", "CLOSED"):
            raise ConnectionLost("the connection is closed")

    async def close(self) -> None:
        """End stdin: ``FF 00`` on v5; elsewhere only local (see the class docstring)."""
        if self.closed:
            return
        self.closed = True
        if self._codec.supports_close:
            with contextlib.suppress(ConnectionClosed):  # the session is over: wait() says how
                await self._ws.send(self._codec.close_signal(STDIN))


class Process:
    """A running exec or attach session; use it as ``async with`` to close it on the way out.

    Attributes:
        protocol: the negotiated subprotocol (``v5.channel.k8s.io``, ``v4.channel.k8s.io``,
            ``channel.k8s.io`` or ``""`` when the server named none).
        stdin: a :class:`Stdin` when asked for, else ``None``.
        stdout: a :class:`ByteStream` of the command's output (stdout and stderr when merged
            or with a tty), else ``None``.
        stderr: a :class:`ByteStream`, or ``None`` (not asked for, merged, or a tty).
        tty: the session has a terminal.
    """

    def __init__(
        self,
        ws: ClientConnection,
        *,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
        merge_stderr: bool,
        limit: int,
    ) -> None:
        self._ws = ws
        self.protocol = ws.subprotocol or NO_PROTOCOL
        self._codec = ChannelCodec(self.protocol)
        self.tty = tty
        self.stdin = Stdin(ws, self._codec) if stdin else None
        self.stdout = ByteStream(limit) if stdout else None
        self.stderr = ByteStream(limit) if stderr and not merge_stderr and not tty else None
        self._routes: dict[int, ByteStream] = {}
        if self.stdout is not None:
            self._routes[STDOUT] = self.stdout
            if merge_stderr:
                self._routes[STDERR] = self.stdout
        if self.stderr is not None:
            self._routes[STDERR] = self.stderr
        self._status = bytearray()
        self._lost: BaseException | None = None
        self._broken: BaseException | None = None  # the server broke the protocol
        self._result: int | BaseException | None = None
        self._pump = asyncio.get_running_loop().create_task(self._read_loop())

    def __repr__(self) -> str:
        return f"<Process {self.protocol or 'no protocol'} returncode={self.returncode}>"

    async def __aenter__(self) -> Process:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def returncode(self) -> int | None:
        """The exit code once :meth:`wait` has returned one, else ``None``."""
        return self._result if isinstance(self._result, int) else None

    async def resize(self, width: int, height: int) -> None:
        """Tell the terminal's new size (columns, rows); only for a tty session."""
        if not self.tty:
            raise ValueError("resize needs a tty session")
        if not (0 < width < 1 << 16 and 0 < height < 1 << 16):
            raise ValueError(f"a terminal size of {width}x{height} is out of range")
        body = json.dumps({"Width": width, "Height": height}).encode()
        try:
            await self._ws.send(self._codec.encode(RESIZE, body))
        except ConnectionClosed as exc:
            raise ConnectionLost(f"the connection closed: {exc}") from None

    async def wait(self) -> int:
        """Wait for the end of the session and return the command's exit code.

        Read stdout and stderr meanwhile (or let another task do it): the server stops when
        their buffers are full, and then so does the command.

        Raises:
            RemoteError: the session ended with an error that is not an exit code (e.g. the
                container is gone, or an error text on the unversioned protocol).
            ConnectionLost: the connection ended without a status (or a malformed one).
        """
        await asyncio.shield(self._pump)
        if self._result is None:
            self._result = self._decide()
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result

    async def close(self) -> None:
        """End the session now: close the connection (the server ends the command's exec) and
        drop unread output. Safe to call at any time and more than once."""
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.discard()
        if not self._pump.done():
            try:
                await self._ws.close()
            finally:
                await asyncio.wait([self._pump], timeout=10)
                if not self._pump.done():
                    self._pump.cancel()

    # ----------------------------------------------------------------- internals

    async def _read_loop(self) -> None:
        ws, codec, routes, status = self._ws, self._codec, self._routes, self._status
        try:
            while True:
                try:
                    message = await ws.recv()
                except ConnectionClosedOK:
                    return
                decoded = codec.decode(message)
                if decoded is None or isinstance(decoded, CloseChannel):
                    if isinstance(decoded, CloseChannel):  # a server half-closing a channel
                        closed = routes.pop(decoded.channel, None)
                        if closed is not None and closed not in routes.values():
                            closed.end()
                    continue
                stream = routes.get(decoded.channel)
                if stream is not None:
                    stream.feed(decoded.data)
                    if stream.full:
                        await stream.wait_space()
                elif decoded.channel == ERROR:
                    status += decoded.data
                    if len(status) > MAX_STATUS:
                        raise ChannelProtocolError("the status is larger than 1 MiB")
        except ConnectionClosed as exc:
            self._lost = exc
        except ChannelProtocolError as exc:
            self._lost = self._broken = exc
            await ws.close(1002, "protocol error")
        finally:
            for stream in (self.stdout, self.stderr):
                if stream is not None:
                    stream.end()

    def _decide(self) -> int | BaseException:
        body = bytes(self._status)
        if self._broken is not None:
            return ConnectionLost(f"the server broke the channel protocol: {self._broken}")
        if not body and self._lost is not None:
            return ConnectionLost(f"the connection ended before the command did: {self._lost}")
        if not body and self._codec.status_version >= 4:
            # client-go would report success here; a v4/v5 server always sends a status, so
            # its absence means the session was cut short.
            return ConnectionLost("the server closed the session without a status")
        result = parse_status(body, version=self._codec.status_version)
        if isinstance(result, int):
            return result
        if len(result) > MAX_MESSAGE:  # Go quotes a malformed body whole; keep it readable
            result = result[:MAX_MESSAGE] + f"... ({len(result) - MAX_MESSAGE} more characters)"
        status = json_object(body)
        return RemoteError(result, str((status or {}).get("reason") or ""), status)


async def run_to_end(process: Process, data: bytes | None) -> Completed:
    """Feed ``data`` (then end stdin), read both outputs to the end, return all three."""

    async def feed() -> None:
        assert process.stdin is not None
        try:
            if data:
                await process.stdin.write(data)
            await process.stdin.close()
        except ConnectionLost:
            # The session ended before all the input went in (the command exited without
            # reading it, as `head -c 10` does): like subprocess.communicate's broken pipe, not
            # an error of its own. wait() tells how the session ended, a cut connection too.
            pass

    async def drain(stream: ByteStream | None) -> bytes:
        return b"" if stream is None else await stream.readall()

    tasks: list[asyncio.Task[Any]] = [
        asyncio.ensure_future(drain(process.stdout)),
        asyncio.ensure_future(drain(process.stderr)),
    ]
    if process.stdin is not None:
        tasks.append(asyncio.ensure_future(feed()))
    try:
        results = await asyncio.gather(*tasks)
        code = await process.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return Completed(code, results[0], results[1])


def check_half_close(process: Process, has_input: bool) -> None:
    if has_input and process.stdin is not None and not process.stdin.can_write_eof:
        raise HalfCloseUnsupported(
            f"the server chose {process.protocol or 'no protocol'!r}, which cannot end stdin "
            "while the command runs; input needs v5.channel.k8s.io"
        )


__all__ = ["DEFAULT_SIZE", "PROTOCOLS", "Completed", "Process", "Stdin"]

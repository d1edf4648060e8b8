"""A gRPC client channel: :mod:`streamsrv.rpc.clientwire` over asyncio (docs/cri.md, "The
gRPC client").

One HTTP/2 connection at a time, made on the first call to a unix socket or a TCP address
(plain text: the CRI and containerd's API are served on local sockets), and made again on the
next call once it is lost or the server sends GOAWAY. A call that cannot connect fails at once
with UNAVAILABLE (no waiting for the server to come back). Every failure is an
:class:`RpcError` with gRPC's code: the server's status, DEADLINE_EXCEEDED when the call's
deadline passes (the server is told too, by ``grpc-timeout``, and the stream is reset),
UNAVAILABLE when the connection is lost under it, CANCELLED once the channel is closed. A task
cancelled while it waits for its call resets the call's stream.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final

from . import http2
from .aio import ReadsWhileHeard
from .clientwire import ClientConnection, Closed, Message
from .http2 import CANCELLED, DEADLINE_EXCEEDED, INTERNAL, OK, RESOURCE_EXHAUSTED, UNAVAILABLE

#: The default bound of a message either way (grpc's default receive limit is 4 MiB; the
#: kubelet allows 16 MiB for the CRI, where an ExecSync answer holds a command's output).
MAX_MESSAGE: Final = 16 << 20
#: Seconds a new connection may take to send its SETTINGS (grpc-go's connect timeout).
HANDSHAKE_TIMEOUT: Final = 20.0


class RpcError(Exception):
    """A call failed with gRPC status ``code`` (:mod:`streamsrv.rpc.http2`'s numbers; ``name``
    is its name, ``"NOT_FOUND"``) and ``details``."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(f"{http2.STATUS_NAMES[code] if code < 17 else code}: {details}")
        self.code = code
        self.details = details

    @property
    def name(self) -> str:
        return http2.STATUS_NAMES[self.code] if 0 <= self.code < 17 else str(self.code)


def parse_target(target: str) -> tuple[str, str, int]:
    """``unix:///path``, ``unix:path`` or ``/path`` as ``("unix", path, 0)`` (and
    ``unix-abstract:name`` as the abstract socket's ``"\\0name"``); ``host:port`` (or
    ``tcp://host:port``, ``[v6]:port``) as ``("tcp", host, port)``."""
    if target.startswith("unix-abstract:"):
        return "unix", "\0" + target.removeprefix("unix-abstract:"), 0
    if target.startswith("unix://"):
        return "unix", target.removeprefix("unix://"), 0
    if target.startswith("unix:"):
        return "unix", target.removeprefix("unix:"), 0
    if target.startswith("/"):
        return "unix", target, 0
    rest = target.removeprefix("tcp://").rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"not a gRPC target: {target!r} (want unix://PATH or HOST:PORT)")
    return "tcp", host.removeprefix("[").removesuffix("]"), int(port)


class _Call:
    __slots__ = ("messages", "status", "waiter", "expired", "unprocessed", "on_status")

    def __init__(self) -> None:
        # made at the first message: a call held open for long (a Wait) would keep an empty
        # deque, 0.6 KiB, for nothing (docs/benchmarks.md, idle memory)
        self.messages: collections.deque[bytes] | None = None
        self.status: tuple[int, str] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.expired = False  # the deadline passed first (the stream is still to be reset)
        self.unprocessed = False  # the server did not take it: it may be sent again
        #: Called once the status is in (``Channel.unary_future``), instead of a waiter.
        self.on_status: Callable[[], None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        if self.on_status is not None and self.status is not None:
            on_status, self.on_status = self.on_status, None
            on_status()

    def expire(self) -> None:
        """The deadline's timer (one ``call_at`` handle: cheaper than a timeout scope)."""
        if self.status is None:
            self.status = (DEADLINE_EXCEEDED, "Deadline Exceeded")
            self.expired = True
            self.wake()

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class _Connection(ReadsWhileHeard):
    def __init__(self, max_message: int) -> None:
        self.wire = ClientConnection(max_message=max_message)
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, _Call] = {}
        self.timers: dict[int, asyncio.TimerHandle] = {}  # the calls' deadlines
        self.lost = False
        self.why = ""
        self.retired = False  # replaced by a new connection: closed once its calls are done
        self.room: asyncio.Event = asyncio.Event()  # a call may start (within max_calls)
        self.room.set()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def usable(self) -> bool:
        return not self.lost and self.wire.usable

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.wire.receive(data)
        except http2.ConnectionFailed as exc:
            self._deliver(exc.events)  # type: ignore[arg-type]
            self.flush()
            self._lose(f"the server broke HTTP/2: {exc}")
            if self.transport is not None:
                self.transport.close()
            return
        self._deliver(events)
        self.flush()
        if not self.ready.done() and self.wire.settings_seen:
            self.ready.set_result(None)

    def _deliver(self, events: Sequence[Message | Closed]) -> None:
        for ev in events:
            call = self.calls.get(ev.stream_id)
            if call is None:
                continue
            if isinstance(ev, Message):
                if call.messages is None:
                    call.messages = collections.deque()
                call.messages.append(ev.data)
            else:
                del self.calls[ev.stream_id]
                call.status = (ev.code, ev.details)
                call.unprocessed = ev.unprocessed
                self.room.set()
            call.wake()
        if not self.wire.usable:
            self.room.set()  # callers waiting for room go to a new connection
            if self.retired and not self.calls:
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(f"the connection was lost ({exc or 'closed by the server'})")

    def _lose(self, why: str, code: int = UNAVAILABLE) -> None:
        self.lost = True
        self.why = why
        timers, self.timers = self.timers, {}
        for timer in timers.values():
            timer.cancel()
        if not self.ready.done():
            self.ready.set_result(None)
        calls, self.calls = self.calls, {}
        for call in calls.values():
            call.status = (code, why)
            call.wake()
        self.room.set()

    def flush(self) -> None:
        data = self.wire.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def start(self, path: bytes, request: bytes, timeout: float | None, metadata: bytes) -> int:
        sid = self.wire.start(path, request, timeout=timeout, metadata=metadata)
        self.calls[sid] = _Call()
        if not self.wire.room:
            self.room.clear()
        self.flush()
        return sid

    def cancel(self, sid: int) -> None:
        if self.calls.pop(sid, None) is not None:
            self.wire.cancel(sid)
            self.room.set()
            self.flush()

    def retire(self) -> None:
        """No new call comes here (it went away): close it once its open calls are done."""
        self.retired = True
        if not self.calls:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.wire.close()
            self.flush()
            self.transport.close()
        self._lose("the channel was closed", CANCELLED)


class _HeldCall:
    """One :meth:`Channel.unary_future` call: its answer and the callbacks that settle it."""

    __slots__ = ("channel", "conn", "sid", "call", "path", "request", "answer")

    def __init__(
        self, channel: Channel, conn: _Connection, sid: int, path: str, request: bytes
    ) -> None:
        self.channel, self.conn, self.sid = channel, conn, sid
        self.call = conn.calls[sid]
        self.path, self.request = path, request
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.call.on_status = self._answered
        self.answer.add_done_callback(self._cancelled)

    def _answered(self) -> None:
        call, answer = self.call, self.answer
        code, details = self.channel._finish(self.conn, self.sid, call)
        if answer.done():
            return
        if call.unprocessed:  # sent again, as unary() does
            _relay(asyncio.ensure_future(self.channel.unary(self.path, self.request)), answer)
            return
        try:
            answer.set_result(_answer(code, details, call))
        except RpcError as exc:
            answer.set_exception(exc)

    def _cancelled(self, answer: asyncio.Future[bytes]) -> None:
        if answer.cancelled() and self.call.on_status is not None:
            self.call.on_status = None
            self.channel._finish(self.conn, self.sid, self.call)  # its stream reset


def _answer(code: int, details: str, call: _Call) -> bytes:
    """A unary call's one answer, or its failure as RpcError."""
    if code != OK:
        raise RpcError(code, details)
    messages = call.messages
    if messages is None or len(messages) != 1:
        got = 0 if messages is None else len(messages)
        raise RpcError(INTERNAL, f"{got} messages in a unary call's answer")
    return messages[0]


def _relay(source: asyncio.Future[bytes], target: asyncio.Future[bytes]) -> None:
    """``target`` done as ``source`` is; ``source`` cancelled with ``target``."""

    def done(_: asyncio.Future[bytes]) -> None:
        if target.done():
            if not source.cancelled():
                source.exception()  # retrieved: nobody waits for it any more
        elif source.cancelled():
            target.cancel()
        elif (exc := source.exception()) is not None:
            target.set_exception(exc)
        else:
            target.set_result(source.result())

    def cancel(_: asyncio.Future[bytes]) -> None:
        if target.cancelled():
            source.cancel()

    source.add_done_callback(done)
    target.add_done_callback(cancel)


def _close_made(made: asyncio.Future[_Connection]) -> None:
    if not made.cancelled() and made.exception() is None:
        made.result().close()


class Channel:
    """Calls to one gRPC server (``target``: see :func:`parse_target`), made lazily.

    ``metadata`` is sent with every call (``containerd-namespace``, say); ``max_message`` bounds
    a message either way. Usable from one event loop; ``close()`` ends every open call with
    CANCELLED, and any later call fails likewise.
    """

    def __init__(
        self,
        target: str,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self.target = target
        self.kind, self.host, self.port = parse_target(target)
        self.max_message = max_message
        self._metadata = b"".join(
            http2.literal(key.lower().encode(), value.encode()) for key, value in metadata
        )
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if self._connecting is not None:  # a connection on its way is closed when it comes
            self._connecting.add_done_callback(_close_made)

    async def _connection(self) -> _Connection:
        while True:
            if self._closed:
                raise RpcError(CANCELLED, "the channel is closed")
            conn = self._conn
            if conn is not None and conn.usable:
                if conn.wire.room:
                    return conn
                conn.room.clear()
                await conn.room.wait()
                continue
            if conn is not None and not conn.retired:
                conn.retire()
            connecting = self._connecting
            if connecting is not None and connecting.done():
                # made while no caller waited for it: a connection to use, or a failure that
                # was nobody's (the next call connects afresh)
                self._connecting = None
                if connecting.cancelled() or connecting.exception() is not None:
                    continue
            elif connecting is None:
                connecting = self._connecting = asyncio.ensure_future(self._connect())
            try:
                conn = await asyncio.shield(connecting)
            finally:
                if self._connecting is connecting and connecting.done():
                    self._connecting = None
            if self._closed:
                conn.close()
                continue
            self._conn = conn

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            if self.kind == "unix":
                _, conn = await loop.create_unix_connection(
                    lambda: _Connection(self.max_message), self.host
                )
            else:
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.max_message), self.host, self.port
                )
        except OSError as exc:
            raise RpcError(UNAVAILABLE, f"cannot connect to {self.target}: {exc}") from None
        # Calls start once the server's SETTINGS have come, as grpc-go's do: they say how
        # many calls it takes at once. (The wait is one round trip per connection.)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await conn.ready
        except TimeoutError:
            conn.close()
            why = f"{self.target} sent no HTTP/2 SETTINGS in {HANDSHAKE_TIMEOUT:g} s"
            raise RpcError(UNAVAILABLE, why) from None
        except BaseException:
            conn.close()
            raise
        if conn.lost:
            raise RpcError(UNAVAILABLE, conn.why)
        return conn

    async def _start(
        self, path: str, request: bytes, when: float | None
    ) -> tuple[_Connection, int, _Call]:
        """The call started on a connection, its deadline (loop time ``when``) told to the
        server and set as the call's timer."""
        if len(request) > self.max_message:
            size = f"({len(request)} vs. {self.max_message})"
            raise RpcError(RESOURCE_EXHAUSTED, f"trying to send message larger than max {size}")
        loop = asyncio.get_running_loop()
        conn = self._conn
        if conn is None or not conn.usable or not conn.wire.room:
            try:
                async with asyncio.timeout_at(when):
                    conn = await self._connection()
            except TimeoutError:
                raise RpcError(DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        left = None if when is None else when - loop.time()
        try:
            sid = conn.start(path.encode(), request, left, self._metadata)
        except ValueError as exc:
            raise RpcError(INTERNAL, str(exc)) from None
        call = conn.calls[sid]
        if when is not None:
            conn.timers[sid] = loop.call_at(when, call.expire)
        return conn, sid, call

    @staticmethod
    def _finish(conn: _Connection, sid: int, call: _Call) -> tuple[int, str]:
        """After the wait for ``call``: its timer stopped, its stream reset unless the server
        ended it (cancelled, or past the deadline); its status."""
        timer = conn.timers.pop(sid, None)
        if timer is not None:
            timer.cancel()
        if call.status is None or call.expired:
            conn.cancel(sid)
        return call.status or (CANCELLED, "cancelled")

    async def unary(self, path: str, request: bytes, *, deadline: float | None = None) -> bytes:
        """Call ``path`` (``/package.Service/Method``) with one message; its one answer.
        ``deadline``: seconds from now (None: none)."""
        when = None if deadline is None else asyncio.get_running_loop().time() + deadline
        for _ in range(2):  # once more if the server did not take it
            conn, sid, call = await self._start(path, request, when)
            try:
                while call.status is None:
                    await call.wait()
            finally:
                code, details = self._finish(conn, sid, call)
            if not call.unprocessed:
                break
        return _answer(code, details, call)

    def unary_future(self, path: str, request: bytes) -> asyncio.Future[bytes]:
        """:meth:`unary` with no deadline, as a future; cancel it to cancel the call.

        On a connection that takes the call now, the call starts at once and its status
        completes the future from the connection's callback: nothing waits meanwhile, where
        a task in :meth:`unary` holds itself and four coroutine frames, about 1.5 KiB for
        as long as the call lasts (a process's ``Wait``: docs/benchmarks.md, idle memory).
        Otherwise (no connection yet, none with room, a request over the limit) and for the
        one retry of a call the server did not take, it is :meth:`unary` in a task."""
        conn = self._conn
        if (
            self._closed
            or conn is None
            or not conn.usable
            or not conn.wire.room
            or len(request) > self.max_message
        ):
            return asyncio.ensure_future(self.unary(path, request))
        try:
            sid = conn.start(path.encode(), request, None, self._metadata)
        except ValueError:
            return asyncio.ensure_future(self.unary(path, request))
        return _HeldCall(self, conn, sid, path, request).answer

    async def stream(
        self, path: str, request: bytes, *, deadline: float | None = None
    ) -> AsyncIterator[bytes]:
        """Call a server-streaming ``path``; its messages as they come. Leaving the loop early
        cancels the call."""
        when = None if deadline is None else asyncio.get_running_loop().time() + deadline
        conn, sid, call = await self._start(path, request, when)
        try:
            while True:
                while call.messages and not call.expired:
                    data = call.messages.popleft()
                    conn.wire.consumed(sid, len(data))
                    conn.flush()
                    yield data
                if call.status is not None:
                    break
                await call.wait()
        finally:
            code, details = self._finish(conn, sid, call)
        if code != OK:
            raise RpcError(code, details)

"""The CRI's gRPC server on a unix socket: :mod:`streamsrv.cri.grpcwire` over asyncio
(docs/cri.md, "The gRPC server").

Each call runs as its own task: within its ``grpc-timeout`` (DEADLINE_EXCEEDED past it),
cancelled when the client resets it or goes away. A handler answers with the response's bytes
or raises :class:`RpcFailure`; anything else it raises is logged and answered INTERNAL, to that
call only. While the socket's send buffer is full the connection reads nothing more, so a
client that does not read its answers cannot make the server hold more than the calls it has
open (:data:`~streamsrv.cri.grpcwire.MAX_CONCURRENT_STREAMS`, each answer at most
``max_send``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from ..rpc import http2
from ..rpc.aio import ReadsWhileHeard
from .grpcwire import Call, Cancelled, ConnectionFailed, UnaryConnection

log = logging.getLogger(__name__)

#: A method's handler: the request message's bytes in, the response message's bytes out.
Handler = Callable[[bytes], Awaitable[bytes]]
#: Connections the server holds at once; one more is closed at once (the kubelet uses one).
MAX_CONNECTIONS: Final = 128


class RpcFailure(Exception):
    """A call's answer is this status (a code of :mod:`streamsrv.rpc.http2`) and message, not
    a response."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Connection(ReadsWhileHeard):
    def __init__(self, server: GrpcServer) -> None:
        self.server = server
        self.wire = UnaryConnection(max_message=server.max_message, max_send=server.max_send)
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, asyncio.Task[None]] = {}
        self.idle = asyncio.Event()  # no call running
        self.idle.set()

    # ------------------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if len(self.server.connections) >= MAX_CONNECTIONS:
            log.warning("CRI: %d connections already; closing a new one", MAX_CONNECTIONS)
            transport.abort()
            return
        self.server.connections.add(self)
        if self.server.stopping:
            self.wire.refuse_new_calls()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.wire.receive(data)
        except ConnectionFailed as exc:
            log.debug("CRI connection: %s", exc)
            self._flush()
            self._abort_calls()
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            if isinstance(ev, Call):
                self._start(ev)
            elif isinstance(ev, Cancelled) and (task := self.calls.pop(ev.stream_id, None)):
                task.cancel()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._abort_calls()

    # ------------------------------------------------------------------------------ calls

    def _start(self, call: Call) -> None:
        handler = self.server.handlers.get(call.method)
        if handler is None:
            self.wire.fail(
                call.stream_id,
                http2.UNIMPLEMENTED,
                f"{self.server.name} does not implement {call.method}",
            )
            return
        task = asyncio.get_running_loop().create_task(self._run(call, handler))
        self.calls[call.stream_id] = task
        self.idle.clear()

    async def _run(self, call: Call, handler: Handler) -> None:
        sid = call.stream_id
        try:
            try:
                async with asyncio.timeout(call.timeout):
                    response = await handler(call.message)
            except TimeoutError:
                self.wire.fail(sid, http2.DEADLINE_EXCEEDED, "Deadline Exceeded")
            except RpcFailure as exc:
                self.wire.fail(sid, exc.code, exc.message)
            except asyncio.CancelledError:
                if self.calls.get(sid) is not None:  # the server is stopping, not the client
                    self.wire.fail(sid, http2.UNAVAILABLE, "the server is stopping")
                raise
            except Exception:
                log.exception("CRI %s failed", call.method)
                self.wire.fail(sid, http2.INTERNAL, "internal error")
            else:
                self.wire.respond(sid, response)
        finally:
            self.calls.pop(sid, None)
            if not self.calls:
                self.idle.set()
            self._flush()

    def _abort_calls(self) -> None:
        calls, self.calls = list(self.calls.values()), {}
        for task in calls:
            task.cancel()
        self.idle.set()

    def _flush(self) -> None:
        data = self.wire.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # ------------------------------------------------------------------------------ stopping

    def refuse_new_calls(self) -> None:
        self.wire.refuse_new_calls()

    def cancel_calls(self) -> None:
        """Grace is over: every running call is answered UNAVAILABLE."""
        for task in list(self.calls.values()):
            task.cancel()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.wire.close()
            self._flush()
            self.transport.close()


class GrpcServer:
    """Unary gRPC methods (``/package.Service/Method``: handler) served on a unix socket."""

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        max_message: int,
        max_send: int,
        name: str = "streamsrv",
    ) -> None:
        self.handlers = dict(handlers)
        self.max_message = max_message
        self.max_send = max_send
        self.name = name
        self.connections: set[_Connection] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None

    async def start_unix(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _Connection(self), path)

    async def stop(self, grace: float) -> None:
        """Take no new connection or call; give running calls ``grace`` seconds, then answer
        them UNAVAILABLE; then GOAWAY and close every connection."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        conns = list(self.connections)
        for c in conns:
            c.refuse_new_calls()
        waits = [c.idle.wait() for c in conns]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.gather(*waits)
        for c in conns:
            c.cancel_calls()
        for c in conns:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await c.idle.wait()
            c.close()
        if self._server is not None:
            await self._server.wait_closed()

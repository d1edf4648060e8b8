"""asyncio adapters for SPDY: the raw connection after a 101, and the one aiohttp hack.

:func:`accept_spdy` is the only code that relies on aiohttp behaviour its documentation does not
promise (design.md, "Taking over the connection for SPDY"): aiohttp's parser treats only
``Upgrade: websocket`` as an upgrade, so for ``Upgrade: SPDY/3.1`` the handler writes the 101
itself and moves the transport to our protocol. It is guarded by the end-to-end SPDY tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from aiohttp import web

from .protocol import spdy

log = logging.getLogger(__name__)

EventHandler = Callable[[spdy.Event], None]


class SpdySession(asyncio.Protocol):
    """A server-side SPDY/3.1 connection on an asyncio transport.

    Events go to ``on_event`` in arrival order; output queued on :attr:`conn` is written by
    :meth:`flush`. Writers await :meth:`drain` for TCP back-pressure (SPDY/3.1 as kubectl
    speaks it has no flow control of its own).
    """

    def __init__(self, on_event: EventHandler) -> None:
        self.conn = spdy.SpdyConnection(spdy.Role.SERVER)
        self.on_event = on_event
        self.transport: asyncio.Transport | None = None
        # The protocol the transport had before (aiohttp's): told when the connection ends,
        # so the web server's own bookkeeping (and graceful shutdown) sees it go.
        self.previous: asyncio.BaseProtocol | None = None
        self.closed = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    # asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not derive from asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except spdy.RemoteProtocolError as exc:
            log.info("SPDY connection ended on a protocol error: %s", exc)
            self.flush()  # the GOAWAY the codec queued
            self.abort()
            return
        self.flush()
        for event in events:
            self.on_event(event)

    def eof_received(self) -> bool:
        with contextlib.suppress(spdy.ProtocolError):
            for event in self.conn.receive_eof():
                self.on_event(event)
        # Keep our side open to finish writing; TLS has no half-close, so there it closes.
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        self.closed.set()
        if self.previous is not None:
            previous, self.previous = self.previous, None
            previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # for the session ---------------------------------------------------------------------
    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    async def drain(self) -> None:
        if self.closed.is_set():
            raise ConnectionResetError("the SPDY connection is closed")
        await self._writable.wait()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


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

"""The HTTP connection layer: how many connections, how long a request head may take, TLS.

aiohttp serves the requests; this module decides which connections it gets and on what terms
(docs/architecture.md, "Limits"):

* **At most ``max_connections``** (HTTP, WebSocket and SPDY together). One more is answered
  with a plain ``503 Service Unavailable`` and closed: a clear refusal instead of a hang or an
  exhausted file table.
* **A request head within ``header_timeout``** (slowloris): aiohttp's keep-alive timer starts
  when a connection is made and closes a connection that has no complete request when it
  fires, so its ``keepalive_timeout`` is our header timeout (and idle keep-alive timeout).
  Header lines, fields and counts are capped with aiohttp's own ``max_line_size``,
  ``max_field_size`` and ``max_headers``. TLS handshakes must finish within
  ``handshake_timeout``.
* **TLS read buffers that cost memory only when used.** asyncio's ``SSLProtocol`` allocates a
  zero-filled 256 KiB buffer per connection, all of it resident: 250 MB for 1000 idle
  interactive sessions (`scripts/bench` row 5 measured 328 KiB of server RSS per idle session).
  Our own connections (never anyone else's in the process: an embedding daemon's TLS is
  untouched) read into an anonymous ``mmap`` of the same size instead, whose pages the kernel
  backs only once written: idle sessions hold a page or two, uploads still read 256 KiB at a
  time. (The previous design switched a 16 KiB buffer to 256 KiB on the first full read; under
  a 64 MiB upload from the Python client it lost data in several of about 20 runs here, and in
  none of 8 runs with either size fixed.) This relies on asyncio's private ``SSLProtocol``
  attributes on instances our server made; where they are absent (uvloop), nothing changes.

Everything here goes through :class:`GuardedSite`, a ``TCPSite`` whose protocol factory
applies the above (aiohttp 3.14 internals: ``Server._kwargs``; aiohttp is pinned to a minor).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import json
import logging
import mmap
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from .context import RateLimitedLog
from .limits import Limits
from .metrics import Metrics

log = logging.getLogger(__name__)

#: Bytes per TLS read (asyncio's own size): an upload still reads this much at a time.
TLS_READ_BUFFER = 256 * 1024

_BUSY_BODY = json.dumps(
    {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "too many connections: try again shortly",
        "reason": "ServiceUnavailable",
        "code": 503,
    },
    separators=(",", ":"),
).encode()
#: The answer to a connection over ``max_connections``: a ``metav1.Status`` (kubectl prints
#: its message and reason; a plain-text body showed as a bare "Error from server: ").
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n"
    b"\r\n" + _BUSY_BODY
)


def runner_kwargs(limits: Limits) -> dict[str, Any]:
    """aiohttp ``AppRunner`` arguments that enforce the HTTP limits of ``limits``."""
    return {
        "keepalive_timeout": limits.header_timeout,
        "max_line_size": limits.max_header_size,
        "max_field_size": limits.max_header_size,
        "max_headers": limits.max_header_fields,
        # Sessions are ended by StreamServer.shutdown first; what is left (a request half
        # read) gets this long before its socket is closed (aiohttp's default is 60 s).
        "shutdown_timeout": min(limits.shutdown_grace, 5.0),
    }


def tune_tls_buffers(transport: asyncio.BaseTransport) -> bool:
    """Give one server-side TLS connection a read buffer that costs memory only when used.

    asyncio's ``SSLProtocol`` reads into a zero-filled 256 KiB ``bytearray`` per connection,
    all of it resident. This replaces it with an anonymous ``mmap`` of the same size: the
    kernel backs a page only once a read has written to it, so an idle interactive session
    holds a page or two while an upload still reads 256 KiB at a time. Returns True if the
    connection's buffer was replaced.
    """
    found = getattr(transport, "_ssl_protocol", None)
    if type(found) is not asyncio.sslproto.SSLProtocol or not hasattr(found, "_ssl_buffer"):
        return False
    proto: Any = found  # asyncio's private attributes below
    # connection_made runs after the handshake's bytes were handed to the TLS object, so the
    # buffer allocated at construction is not in use now: replace it.
    buffer = mmap.mmap(-1, TLS_READ_BUFFER)
    proto._ssl_buffer = buffer
    proto._ssl_buffer_view = memoryview(buffer)
    return True


class _Handler(RequestHandler):
    """aiohttp's request handler, counted by its guard, with our TLS buffer sizing applied as
    a connection starts and request-parsing errors logged at a rate a peer cannot drive."""

    __slots__ = ("_guard",)
    _guard: ConnectionGuard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._guard.made(self)
        tune_tls_buffers(transport)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.lost(self)
        super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError):  # a malformed or oversized request head
            self._guard.warnings.log(
                logging.WARNING, "bad-request", "bad request from a client: %s", exc
            )
            return
        super().log_exception(*args, **kw)


class _Busy(asyncio.Protocol):
    """Answers one connection over the limit with 503 and closes it: once the request head has
    arrived (a client whose request is still unread when we close would get a reset rather
    than the answer), or after BUSY_WAIT seconds, whichever is first. Holds nothing else."""

    def __init__(self) -> None:
        self._transport: asyncio.WriteTransport | None = None
        self._seen = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(BUSY_WAIT, self._answer)

    def data_received(self, data: bytes) -> None:
        self._seen = (self._seen + data)[-4096:]
        if b"\r\n\r\n" in self._seen:
            self._answer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None

    def _answer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport, self._transport = self._transport, None
        if transport is not None and not transport.is_closing():
            transport.write(BUSY)
            transport.close()


BUSY_WAIT = 1.0  # seconds a refused connection may take to send its request head


class ConnectionGuard:
    """The protocol factory of a guarded site: counts connections and refuses past the cap.

    A connection counts from the moment it is accepted: ``pending`` until its protocol's
    ``connection_made`` (a TLS connection is pending through its handshake), ``live`` until
    ``connection_lost``. asyncio tells the protocol nothing when a handshake fails, so a
    pending entry is dropped by a timer once the handshake timeout has passed (a client that
    does not trust our CA, or speaks plain HTTP to the TLS port, used to stay counted in
    ``streamsrv_connections`` until the cap forced a sweep).
    """

    def __init__(self, server: web.Server, limits: Limits, metrics: Metrics) -> None:
        self.server = server
        self.limits = limits
        self.metrics = metrics
        self.warnings = RateLimitedLog(log, limits.log_interval)
        self._pending: dict[int, float] = {}  # id(handler) -> when it stops counting
        self._live: set[int] = set()
        self._loop = asyncio.get_running_loop()

    @property
    def count(self) -> int:
        return len(self._pending) + len(self._live)

    def made(self, handler: RequestHandler) -> None:
        self._pending.pop(id(handler), None)
        self._live.add(id(handler))
        self.metrics.connections = self.count

    def lost(self, handler: RequestHandler) -> None:
        self._pending.pop(id(handler), None)
        self._live.discard(id(handler))
        self.metrics.connections = self.count

    def _expire_pending(self) -> None:
        now = self._loop.time()
        for key in [k for k, until in self._pending.items() if until <= now]:
            del self._pending[key]

    def __call__(self) -> asyncio.BaseProtocol:
        if self.count >= self.limits.max_connections:
            self._expire_pending()
        if self.count >= self.limits.max_connections:
            self.metrics.refused["connections"] += 1
            self.warnings.log(
                logging.WARNING,
                "connections",
                "connection refused with 503: %d connections open (max_connections)",
                self.count,
            )
            return _Busy()
        server = self.server
        handler = _Handler(server, loop=self._loop, **server._kwargs)
        handler._guard = self
        key, until = id(handler), self._loop.time() + self.limits.handshake_timeout + 1.0
        self._pending[key] = until
        self._loop.call_at(until, self._drop_pending, key, until)
        self.metrics.connections = self.count
        return handler

    def _drop_pending(self, key: int, until: float) -> None:
        """A handshake that never finished (or failed): it counts no more."""
        if self._pending.get(key) == until:
            del self._pending[key]
            self.metrics.connections = self.count


class GuardedSite(web.TCPSite):
    """A ``TCPSite`` whose connections go through a :class:`ConnectionGuard`."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        limits: Limits,
        metrics: Metrics,
        ssl_context: Any = None,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog)
        self._limits = limits
        self._metrics = metrics

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        tls = self._ssl_context is not None
        self._server = await loop.create_server(
            ConnectionGuard(server, self._limits, self._metrics),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._limits.handshake_timeout if tls else None,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, interval: float) -> None:
    """Log the loop's accept errors (``EMFILE`` and friends) once per ``interval``.

    asyncio logs every failed ``accept()`` at ERROR, which under a connection flood is one
    line per attempt. This sets the loop's exception handler, so only a program that owns
    its loop (``streamsrv serve``) calls it, never the library.
    """
    limiter = RateLimitedLog(logging.getLogger("asyncio"), interval)
    previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "accept" in message:
            limiter.log(logging.ERROR, "accept", "%s: %s", message, context.get("exception"))
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


__all__ = [
    "TLS_READ_BUFFER",
    "ConnectionGuard",
    "GuardedSite",
    "quiet_accept_errors",
    "runner_kwargs",
    "tune_tls_buffers",
]

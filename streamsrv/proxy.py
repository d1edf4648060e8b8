"""Proxying an upgraded connection (exec, attach, port-forward) to a remote stream server.

A gateway in front of a remote CRI runtime gets a one-time URL from the runtime's ``Exec``,
``Attach`` or ``PortForward`` call (containerd's Go stream server, or a streamsrv
:class:`~streamsrv.server.StreamServer`, http or https) and must carry the client's upgraded
connection there, as the kubelet does with ``k8s.io/apimachinery/pkg/util/proxy``'s
``UpgradeAwareHandler``. :func:`proxy_upgrade` is that, for one aiohttp request:

1. **Take the client's connection over at once.** The client's transport is moved to our own
   protocol before anything else (as :func:`~streamsrv.transport.accept_spdy` does, but before
   the backend is dialled): aiohttp's HTTP parser sees no byte after the request head, a client
   that goes away while the backend is dialled is noticed at once (its EOF or reset ends the
   attempt: Go's server cancels the request on the same signs), and bytes the client sends
   before the 101 are held (at most :data:`HOLD_MAX`, then reading pauses) and forwarded first.
   For ``Upgrade: websocket`` aiohttp's parser may have read some already; they are in its
   ``_message_tail`` and are taken from there. For ``Upgrade: SPDY/3.1`` aiohttp's parser does
   not treat the request as an upgrade, and bytes that arrived in the same read as the head are
   lost to it; real clients (kubectl, client-go, every WebSocket client) send nothing before the
   101, which they need to read first.
2. **Dial the URL and send the request** (``connect_timeout`` for TCP and TLS): the client's
   method, the URL's own path and query (never the client's: the token is in the URL), ``Host``
   of the backend, the headers an upgrade needs (:data:`FORWARDED_HEADERS`, each repeated value
   kept) and ``X-Forwarded-For``; never the client's ``Authorization`` or cookies.
3. **Read the backend's response head** (at most :data:`HEAD_MAX` bytes and
   :attr:`~streamsrv.limits.Limits.max_header_fields` fields, within ``head_timeout``).
4. **101**: answer the client 101 with the backend's upgrade headers
   (:data:`RESPONSE_UPGRADE_HEADERS`), forward what each side sent early, then splice the two
   transports raw: no WebSocket or SPDY parsing, each read (up to 256 KiB, asyncio's) written
   straight into the other transport. **Anything else**: a status of 400 or more is relayed
   with the backend's headers and at most :data:`BODY_MAX` bytes of its body (a reused token's
   404, a 403 protocol refusal with its ``X-Accepted-Stream-Protocol-Versions``, a 500); any
   other status is a 502 ``invalid upgrade response: status code N`` (the apiserver's words).
   A backend that cannot be dialled is a 502 ``error dialing backend: ...``, and one whose head
   is malformed, too large, late or missing a 502 ``error reading backend response: ...``:
   ``metav1.Status`` bodies, which kubectl prints after ``Error from server``.

While spliced, every buffer has a bound: when one side's write buffer passes
``Limits.write_buffer`` (asyncio calls that side's ``pause_writing``) reading from the other
side pauses until it drains to a quarter of that. An EOF from one side is passed on as
``write_eof`` where the other side's transport can (plain TCP; TLS cannot half-close, so there
the splice ends, as the apiserver's proxy ends on either direction's end). A side that closes
cleanly has the other closed after its pending bytes are written (at most
:data:`CLOSE_GRACE` seconds, then aborted); a side that fails has the other aborted. The call
returns once both connections are gone, so the aiohttp handler holds the request (and a
gateway can count it as a session) for exactly as long.

The client's connection stays counted by the web server's own bookkeeping
(:class:`~streamsrv.connections.ConnectionGuard` and aiohttp's): when it ends, aiohttp's
protocol is told, as for :func:`~streamsrv.transport.accept_spdy`. ``stopping`` (e.g.
``StreamContext.stopping``) ends the proxy from outside: both sides are closed (a client still
waiting for the backend gets 503). A gateway counts the call as a session by wrapping it (it
returns when the connection has ended); :class:`ProxyStats` tells what moved and why it ended.

Like ``accept_spdy``, this relies on aiohttp internals its documentation does not promise
(``set_protocol`` on a request's transport; ``RequestHandler._message_tail``), guarded by the
end-to-end tests in ``tests/test_proxy.py``; aiohttp is pinned to a minor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl as ssl_module
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .limits import KIB, Limits
from .protocol.status import kube_status, marshal
from .runtime.base import Flag

log = logging.getLogger(__name__)

#: Largest backend response head (status line and headers).
HEAD_MAX = 64 * KIB
#: Most bytes of a non-101 response body relayed to the client; the rest is dropped.
BODY_MAX = 64 * KIB
#: Bytes the client may send before the upgrade is answered; past it reading pauses.
HOLD_MAX = 64 * KIB
#: Seconds to dial the backend (TCP connect and TLS handshake).
CONNECT_TIMEOUT = 10.0
#: Seconds from the request being sent to the backend's complete response head (and body).
HEAD_TIMEOUT = 30.0
#: Seconds a side that is being closed may take to write what it holds; then it is aborted.
CLOSE_GRACE = 10.0
#: Bytes one read may deliver beyond the high-water mark (asyncio reads 256 KiB at a time; TLS
#: may join what one socket read decrypted to) plus what was held before the splice began.
READ_SLACK = 512 * KIB

#: Request headers passed to the backend, every value of each (the upgrade and its protocol).
FORWARDED_HEADERS = (
    "Upgrade",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
    "X-Stream-Protocol-Version",
    "User-Agent",
)
#: Headers of the backend's 101 passed to the client.
RESPONSE_UPGRADE_HEADERS = (
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Accept",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Extensions",
    "X-Stream-Protocol-Version",
)
#: Headers of a relayed non-101 response that are about the backend's connection, not the
#: answer (aiohttp sets its own framing).
_NOT_RELAYED = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        "Set-Cookie",
    )
)

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?\r?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"\s*([0-9A-Fa-f]{1,16})\s*(?:;[^\r\n]*)?\r?")
_CHUNK_SLACK = 8 * KIB  # chunk-size lines around BODY_MAX bytes of a chunked body


# ------------------------------------------------------------------------------ public API


@dataclass(slots=True)
class ProxyStats:
    """What one :func:`proxy_upgrade` did; pass one in to watch it (a gateway's metrics).

    Attributes:
        status: the backend's status code (0 when none was read).
        answered: the status the client was answered with (0 when it went away first).
        bytes_up: bytes spliced from the client to the backend (early bytes included).
        bytes_down: bytes spliced from the backend to the client.
        max_buffered: most bytes held at once in the two transports' write buffers while
            spliced (for tests of the bound).
        bound: what ``max_buffered`` can never exceed: per direction the high-water mark plus
            one read.
        max_held: most bytes of the client's held before the splice began (what it sent
            before the 101): at most :data:`HOLD_MAX` plus one read, then reading pauses.
        error: why the proxy failed or ended the connection, if it did.
        upgraded: called once the client has its 101 and the splice begins.
    """

    status: int = 0
    answered: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    max_buffered: int = 0
    bound: int = 0
    max_held: int = 0
    error: str | None = None
    upgraded: Callable[[], None] | None = None


async def proxy_upgrade(
    request: web.Request,
    url: str | URL,
    *,
    limits: Limits,
    ssl: ssl_module.SSLContext | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    head_timeout: float = HEAD_TIMEOUT,
    stopping: asyncio.Event | Flag | None = None,
    stats: ProxyStats | None = None,
    offer: Mapping[str, Sequence[str]] | None = None,
) -> web.StreamResponse:
    """Proxy this upgrade request to ``url`` and splice the two connections until both end.

    Args:
        request: an upgrade request (``Connection: Upgrade`` and an ``Upgrade`` header) with no
            body; anything else is answered 400 ``Upgrade request required``.
        url: the backend's one-time URL (``http://`` or ``https://``), used as it is.
        limits: ``write_buffer`` is the high-water mark of each direction,
            ``max_header_fields`` bounds the backend's head.
        ssl: the context for an ``https`` URL (default: the system's trust store).
        connect_timeout: seconds for the TCP connect and TLS handshake.
        head_timeout: seconds for the backend's response head (and a relayed error body).
        stopping: set it to end the proxy from outside: before the backend has answered the
            client gets 503, afterwards both connections are closed.
        stats: filled in as the proxy goes (see :class:`ProxyStats`).
        offer: upgrade headers to send the backend instead of the client's (e.g. a narrower
            ``Sec-WebSocket-Protocol`` list); an empty list sends none of that header.

    Returns:
        The response aiohttp must finish: the 101 already written (the connection has ended
        by then), or the relayed or 502 answer to write.
    """
    stats = stats if stats is not None else ProxyStats()
    refusal = _refuse(request)
    if refusal is not None:
        stats.answered = refusal.status
        return refusal
    try:
        target = _Target.parse(url, ssl)
    except ValueError as exc:
        return _failure(stats, 502, f"error dialing backend: {exc}")
    try:
        request_head = _request_head(request, target, offer or {})
    except ValueError as exc:
        stats.answered = 400
        return _status(400, str(exc), reason="BadRequest")
    transport = request.transport
    if transport is None or transport.is_closing():
        stats.error = "the client went away"
        return _gone()

    splice = _Splice(limits, stats)
    client, backend = splice.client, splice.backend
    # Take the connection from aiohttp's parser now: every later byte is ours (step 1).
    client.previous = transport.get_protocol()
    tail = _take_message_tail(client.previous)
    transport.set_protocol(client)
    client.connection_made(transport)  # set_protocol does not call it
    if tail:
        client.held[:0] = tail
    client.update_reading()

    waiters: set[asyncio.Future[Any]] = {client.lost_future}
    stop_task: asyncio.Task[Any] | None = None
    if stopping is not None:
        stop_task = asyncio.ensure_future(stopping.wait())
        waiters.add(stop_task)
    opening = asyncio.ensure_future(
        _open_backend(backend, target, request_head, limits, connect_timeout, head_timeout)
    )
    try:
        done, _ = await asyncio.wait({opening, *waiters}, return_when=asyncio.FIRST_COMPLETED)
        if opening not in done:
            if client.lost:
                stats.error = "the client went away"
                return _gone()
            return _failure(stats, 503, "stopped before the backend answered")
        try:
            head, body = opening.result()
        except _Failure as failure:
            return _failure(stats, failure.status, failure.message)
        stats.status = head.status
        if head.status != 101:
            backend.abort()
            if head.status < 400:  # neither an upgrade nor an error: not passed on
                return _failure(stats, 502, f"invalid upgrade response: status code {head.status}")
            stats.answered = head.status
            return _relayed(head, body)
        resp = web.StreamResponse(status=101, reason=head.reason or "Switching Protocols")
        for name in RESPONSE_UPGRADE_HEADERS:
            for value in head.headers.getall(name, ()):
                resp.headers.add(name, value)
        resp.headers.setdefault("Connection", "Upgrade")
        resp.force_close()
        try:
            await resp.prepare(request)  # writes the head into the transport now
        except ConnectionError:
            stats.error = "the client went away"
            return resp
        stats.answered = 101
        if stats.upgraded is not None:
            stats.upgraded()
        splice.start(head.size)
        finished: set[asyncio.Future[Any]] = {splice.done}
        if stop_task is not None:
            finished.add(stop_task)
        await asyncio.wait(finished, return_when=asyncio.FIRST_COMPLETED)
        if not splice.done.done():
            stats.error = "stopped"
            splice.close_both()
            await splice.done
        return resp
    finally:
        tasks = [t for t in (opening, stop_task) if t is not None]
        for task in tasks:
            task.cancel()
        splice.release()
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: asyncio logs nothing for it


# ------------------------------------------------------------------------------ the request


@dataclass(frozen=True, slots=True)
class _Target:
    host: str  # to dial (an IPv6 address without brackets)
    port: int
    host_header: str
    path: str  # path and query, as in the URL
    ssl: ssl_module.SSLContext | None

    @classmethod
    def parse(cls, url: str | URL, context: ssl_module.SSLContext | None) -> _Target:
        u = URL(url) if isinstance(url, str) else url
        if u.scheme not in ("http", "https"):
            raise ValueError(f"unknown scheme: {u.scheme or '(none)'}")
        if not u.host or u.port is None:
            raise ValueError(f"no host in the URL {str(u)!r}")
        raw_host = u.raw_host or u.host
        shown = f"[{raw_host}]" if ":" in raw_host else raw_host
        host_header = shown if u.explicit_port is None else f"{shown}:{u.port}"
        tls = None
        if u.scheme == "https":
            tls = context if context is not None else ssl_module.create_default_context()
        return cls(u.host, u.port, host_header, u.raw_path_qs or "/", tls)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _refuse(request: web.Request) -> web.Response | None:
    """The kubelet's proxy requires an upgrade (``UpgradeRequired``); we require no body."""
    connection = request.headers.get("Connection", "")
    tokens = {t.strip().lower() for t in connection.split(",")}
    if "upgrade" not in tokens or not request.headers.get("Upgrade", "").strip():
        return _status(400, "Upgrade request required", reason="BadRequest")
    if request.body_exists:
        return _status(400, "an upgrade request must not have a body", reason="BadRequest")
    return None


def _request_head(
    request: web.Request, target: _Target, offer: Mapping[str, Sequence[str]]
) -> bytes:
    method = request.method if _TOKEN.fullmatch(request.method) else "GET"
    lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.host_header}"]
    lines.append("Connection: Upgrade")
    replaced = {k.lower(): v for k, v in offer.items()}
    for name in FORWARDED_HEADERS:
        values = replaced.get(name.lower(), request.headers.getall(name, ()))
        lines.extend(f"{name}: {value}" for value in values)
    forwarded = request.headers.getall("X-Forwarded-For", [])
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and peer:
        forwarded.append(str(peer[0]))
    if forwarded:
        lines.append(f"X-Forwarded-For: {', '.join(forwarded)}")
    if request.headers.get("Content-Length", "").strip() == "0":
        lines.append("Content-Length: 0")  # Go's client sends it with a POST
    for line in lines:
        if "\r" in line or "\n" in line:  # aiohttp's parser refuses these; never pass one on
            raise ValueError("a header value holds a line break")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def _take_message_tail(protocol: asyncio.BaseProtocol) -> bytes:
    """Bytes aiohttp's parser put aside after an ``Upgrade: websocket`` request head."""
    tail = getattr(protocol, "_message_tail", b"")
    if tail and isinstance(tail, bytes | bytearray):
        protocol._message_tail = b""  # type: ignore[attr-defined]
        return bytes(tail)
    return b""


# ------------------------------------------------------------------------------ answers


def _status(code: int, message: str, *, reason: str = "") -> web.Response:
    """A ``metav1.Status`` answer; the apiserver's reason for a plain error is empty."""
    resp = web.Response(
        status=code,
        body=marshal(kube_status(code, reason, message)),
        content_type="application/json",
    )
    resp.force_close()
    return resp


def _failure(stats: ProxyStats, code: int, message: str) -> web.Response:
    log.debug("proxy: %s", message)
    stats.error = message
    stats.answered = code
    return _status(code, message)


def _gone() -> web.Response:
    """For a client that is gone: nothing will be written (aiohttp finds the transport closed)."""
    resp = web.Response(status=499, reason="Client Closed Request")
    resp.force_close()
    return resp


def _relayed(head: _Head, body: bytes) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in head.headers.items() if name.lower() not in _NOT_RELAYED
    )
    resp = web.Response(status=head.status, reason=head.reason or None, body=body, headers=headers)
    resp.force_close()
    return resp


# ------------------------------------------------------------------------------ the backend


class _Failure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class _Head:
    status: int
    reason: str
    headers: CIMultiDict[str]
    size: int  # bytes of the head, its blank line included


async def _open_backend(
    side: _Side,
    target: _Target,
    request_head: bytes,
    limits: Limits,
    connect_timeout: float,
    head_timeout: float,
) -> tuple[_Head, bytes]:
    """Dial, send the request, read the head (and an error's body). The caller cleans up."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            await loop.create_connection(
                lambda: side,
                target.host,
                target.port,
                ssl=target.ssl,
                server_hostname=target.host if target.ssl is not None else None,
            )
    except (OSError, TimeoutError) as exc:  # ssl.SSLError and CertificateError are OSErrors
        raise _Failure(502, f"error dialing backend: {_describe_dial(exc, target)}") from None
    transport = side.transport
    assert transport is not None
    transport.write(request_head)
    deadline = loop.time() + head_timeout
    try:
        async with asyncio.timeout_at(deadline):
            head = await _read_head(side, limits.max_header_fields)
    except TimeoutError:
        why = f"no response within {head_timeout:g}s"
        raise _Failure(502, f"error reading backend response: {why}") from None
    body = b""
    if head.status >= 400:
        body = await _read_body(side, head, deadline)
    return head, body


def _describe_dial(exc: BaseException, target: _Target) -> str:
    """Go's words for a failed dial, as the apiserver reports them."""
    where = f"dial tcp {target.address}"
    if isinstance(exc, TimeoutError):
        return f"{where}: i/o timeout"
    if isinstance(exc, ssl_module.SSLCertVerificationError):
        return f"tls: failed to verify certificate: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl_module.SSLError):
        return f"tls: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"dial tcp: lookup {target.host}: {exc.strerror or exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        # asyncio's own strerror names the address again ("Connect call failed (...)")
        return f"{where}: connect: {os.strerror(exc.errno).lower()}"
    return f"{where}: {exc}"


async def _read_head(side: _Side, max_fields: int) -> _Head:
    searched = 0
    while True:
        found = _HEAD_END.search(side.held, max(0, searched - 3))
        if found is not None:
            side.freeze = True  # nothing more until the splice starts (or we give up)
            side.update_reading()
            return _parse_head(bytes(side.held[: found.start()]), found.end(), max_fields)
        searched = len(side.held)
        if searched >= HEAD_MAX:
            raise _Failure(502, f"error reading backend response: head over {HEAD_MAX} bytes")
        if side.eof or side.lost:
            why = "EOF" if not side.held else "unexpected EOF"
            raise _Failure(502, f"error reading backend response: {why}")
        await side.changed()


def _parse_head(raw: bytes, size: int, max_fields: int) -> _Head:
    lines = re.split(rb"\r?\n", raw)
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        shown = lines[0][:80].decode("latin-1")
        raise _Failure(502, f"error reading backend response: malformed HTTP response {shown!r}")
    if len(lines) - 1 > max_fields:
        raise _Failure(502, f"error reading backend response: over {max_fields} header fields")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name.decode("latin-1")):
            shown = line[:80].decode("latin-1")
            raise _Failure(502, f"error reading backend response: malformed header {shown!r}")
        headers.add(name.decode("latin-1"), value.strip(b" \t").decode("latin-1"))
    reason = (status_line.group(2) or b"").decode("latin-1").strip()
    return _Head(int(status_line.group(1)), reason, headers, size)


async def _read_body(side: _Side, head: _Head, deadline: float) -> bytes:
    """At most BODY_MAX bytes of an error's body: by its length, its chunks, or to EOF; what
    has arrived by the deadline otherwise."""
    if head.status in (204, 304):
        return b""
    chunked = "chunked" in head.headers.get("Transfer-Encoding", "").lower()
    length: int | None = None
    with contextlib.suppress(ValueError):
        length = min(int(head.headers.get("Content-Length", "")), BODY_MAX)
    side.hold_limit = head.size + BODY_MAX + _CHUNK_SLACK
    side.freeze = False
    side.update_reading()
    body = b""
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                raw = bytes(side.held[head.size :])
                if chunked:
                    body, complete = _dechunk(raw, BODY_MAX)
                    if complete:
                        return body
                elif length is not None:
                    body = raw[:length]
                    if len(body) >= length:
                        return body
                else:
                    body = raw[:BODY_MAX]
                if len(body) >= BODY_MAX or len(raw) >= BODY_MAX + _CHUNK_SLACK:
                    return body
                if side.eof or side.lost:
                    return body
                await side.changed()
    except TimeoutError:
        return body
    finally:
        side.freeze = True
        side.update_reading()


def _dechunk(raw: bytes, cap: int) -> tuple[bytes, bool]:
    """The body of a chunked encoding so far (at most ``cap`` bytes), and whether it ended."""
    body = bytearray()
    pos = 0
    while len(body) < cap:
        eol = raw.find(b"\n", pos)
        if eol < 0:
            return bytes(body), False
        size = _CHUNK_SIZE.fullmatch(raw, pos, eol)
        if size is None:
            raise _Failure(502, "error reading backend response: malformed chunked encoding")
        n = int(size.group(1), 16)
        if n == 0:
            return bytes(body), True
        chunk = raw[eol + 1 : eol + 1 + n]
        body += chunk
        if len(chunk) < n:
            return bytes(body[:cap]), False
        pos = eol + 1 + n
        if raw[pos : pos + 1] == b"\r":
            pos += 1
        if raw[pos : pos + 1] == b"\n":
            pos += 1
    return bytes(body[:cap]), True


# ------------------------------------------------------------------------------ the splice


class _Side(asyncio.Protocol):
    """One end of a proxied connection: holds what it reads until the splice starts, then
    writes each read into the other end's transport."""

    def __init__(self, splice: _Splice, name: str) -> None:
        self.splice = splice
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None  # set when the splice starts
        self.held = bytearray()  # before the splice: bounded by hold_limit
        self.hold_limit = HOLD_MAX if name == "client" else HEAD_MAX
        self.freeze = False  # before the splice: read nothing more for now
        self.eof = False
        self.lost = False
        self.write_paused = False
        self.read_paused = False
        #: the protocol the transport had before ours (aiohttp's), told when it ends
        self.previous: asyncio.BaseProtocol | None = None
        self._loop = asyncio.get_running_loop()
        self.lost_future: asyncio.Future[None] = self._loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._grace: asyncio.TimerHandle | None = None

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not derive from asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)
        is_reading = getattr(transport, "is_reading", None)
        self.read_paused = bool(is_reading is not None and not is_reading())

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            self.held += data
            if self is self.splice.client:
                stats = self.splice.stats
                stats.max_held = max(stats.max_held, len(self.held))
            self.update_reading()
            self._wake()
            return
        out = peer.transport
        if out is None or peer.lost or out.is_closing():
            return
        out.write(data)
        self.splice.note(self, len(data))

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        if self.peer is not None:
            return self.splice.on_eof(self)
        if self.name == "client":
            return False  # gone before the upgrade was answered: close (Go's server cancels)
        return self.can_half_close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if not self.lost_future.done():
            self.lost_future.set_result(None)
        self._wake()
        self.splice.on_lost(self, exc)
        if self.previous is not None:
            previous, self.previous = self.previous, None
            previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.peer is not None:
            self.peer.update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.peer is not None:
            self.peer.update_reading()

    # helpers ---------------------------------------------------------------------------
    def update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            return
        if self.peer is not None:
            paused = self.peer.write_paused
        else:
            paused = self.freeze or len(self.held) >= self.hold_limit
        if paused and not self.read_paused:
            self.read_paused = True
            transport.pause_reading()
        elif not paused and self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    async def changed(self) -> None:
        """Returns after the next read, EOF or loss."""
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def can_half_close(self) -> bool:
        transport = self.transport
        return transport is not None and not transport.is_closing() and transport.can_write_eof()

    def write_eof(self) -> bool:
        """Pass an EOF on (after what is buffered); False where the transport cannot."""
        if not self.can_half_close():
            return False
        assert self.transport is not None
        self.transport.write_eof()
        return True

    def close(self) -> None:
        """Close after writing what is buffered; abort if that takes over CLOSE_GRACE."""
        transport = self.transport
        if transport is None or self.lost:
            return
        if not transport.is_closing():
            transport.close()
        if self._grace is None:
            self._grace = self._loop.call_later(CLOSE_GRACE, self.abort)

    def abort(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if self.transport is not None and not self.lost:
            self.transport.abort()


class _Splice:
    """The two sides of one proxied connection and what happens when either ends."""

    def __init__(self, limits: Limits, stats: ProxyStats) -> None:
        self.high = limits.write_buffer
        self.stats = stats
        stats.bound = 2 * (self.high + READ_SLACK)
        self.client = _Side(self, "client")
        self.backend = _Side(self, "backend")
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started = False

    def start(self, head_size: int) -> None:
        """Link the sides: forward what each sent early, then read both (within bounds)."""
        client, backend = self.client, self.backend
        self.started = True
        early_down = bytes(backend.held[head_size:])
        early_up = bytes(client.held)
        backend.held.clear()
        client.held.clear()
        client.peer, backend.peer = backend, client
        backend.freeze = False
        for side in (client, backend):
            if side.transport is not None and not side.lost:
                side.transport.set_write_buffer_limits(high=self.high, low=self.high // 4)
        if early_up:
            client.data_received(early_up)
        if early_down:
            backend.data_received(early_down)
        # What happened while the sides were apart, in the order it matters.
        if client.lost or backend.lost:
            gone = client if client.lost else backend
            self.on_lost(gone, None)
            return
        if client.eof:  # the client ended before it saw the 101: it is going away
            self.close_both()
            return
        if backend.eof and not self.on_eof(backend):
            backend.close()
        client.update_reading()
        backend.update_reading()

    def note(self, side: _Side, moved: int) -> None:
        """Count what moved; track the most bytes held in the two write buffers."""
        if side is self.client:
            self.stats.bytes_up += moved
        else:
            self.stats.bytes_down += moved
        held = 0
        for end in (self.client, self.backend):
            if end.transport is not None:
                held += end.transport.get_write_buffer_size()
        if held > self.stats.max_buffered:
            self.stats.max_buffered = held

    def on_eof(self, side: _Side) -> bool:
        """``side`` ended its direction: pass it on, or end the splice where we cannot.
        Returns whether ``side``'s transport stays open (for the other direction)."""
        peer = side.peer
        assert peer is not None
        if peer.lost:
            return False
        try:
            passed = peer.write_eof()
        except OSError as exc:  # the peer reset meanwhile (ENOTCONN): it is gone
            if not peer.eof and self.stats.error is None:
                self.stats.error = f"the {peer.name} connection failed: {exc}"
            peer.abort()
            self.close_both()
            return False
        if not passed:
            self.close_both()  # TLS has no half-close: end both, as the apiserver's proxy does
            return False
        if peer.eof:  # both directions have ended
            self.close_both()
            return False
        return side.can_half_close()

    def on_lost(self, side: _Side, exc: Exception | None) -> None:
        peer = self.backend if side is self.client else self.client
        if exc is not None and self.stats.error is None:
            self.stats.error = f"the {side.name} connection failed: {exc}"
        if self.started and not peer.lost:
            if exc is None:
                peer.close()  # what it still holds for the other side is written first
            else:
                peer.abort()
        if self.client.lost and self.backend.lost and not self.done.done():
            self.done.set_result(None)

    def close_both(self) -> None:
        self.client.close()
        self.backend.close()

    def release(self) -> None:
        """At the end, however it came: abort what is still open.

        Before the splice the client's connection is left to aiohttp, which writes the answer
        (a relayed error, a 502) and closes it."""
        self.backend.abort()
        if self.started:
            self.client.abort()


__all__ = [
    "BODY_MAX",
    "CONNECT_TIMEOUT",
    "FORWARDED_HEADERS",
    "HEAD_MAX",
    "HEAD_TIMEOUT",
    "HOLD_MAX",
    "RESPONSE_UPGRADE_HEADERS",
    "ProxyStats",
    "proxy_upgrade",
]

"""gRPC's unary calls on one HTTP/2 connection, server side, without I/O (docs/cri.md, "The
gRPC server").

Every CRI method the server serves is unary: one request message in, one response message or
a status out. This module turns the bytes a client sends into :class:`Call` and
:class:`Cancelled` events and turns answers back into bytes; :mod:`streamsrv.cri.grpcserver`
moves those bytes over a unix socket and runs the handlers.

It is the server's half of the part of HTTP/2 (RFC 9113) a unary gRPC server needs: stream
states, the requests' flow control and limits, the answers. Frames, SETTINGS, PING,
WINDOW_UPDATE and header blocks are :mod:`streamsrv.rpc.http2`'s, shared with the client
(:mod:`streamsrv.rpc.clientwire`). The gRPC layer (the 5-byte message prefix, ``grpc-timeout``,
status trailers) follows the gRPC over HTTP/2 specification (``PROTOCOL-HTTP2.md`` in
grpc/grpc). A general HTTP/2 library (h2) did the same job first; it cost twice the CPU per
call (docs/benchmarks.md).

Limits: a request message over ``max_message`` bytes is refused (RESOURCE_EXHAUSTED) and its
bytes are dropped as they come, as is the call whose bytes take what the connection holds over
``max_buffered``; a response over ``max_send`` is refused likewise; the client may open at most
:data:`MAX_CONCURRENT_STREAMS` calls at once (more are refused with REFUSED_STREAM) and send
header blocks of at most :data:`MAX_HEADER_LIST_SIZE` bytes (more fails the connection). A
response waits in memory only while the client's flow-control window is shut, and is dropped if
the client resets its stream. Anything that breaks HTTP/2 fails the connection with a GOAWAY
that says why (:class:`ConnectionFailed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from ..rpc.http2 import (
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    INTERNAL,
    MAX_CONCURRENT,
    MAX_HEADER_LIST,
    NO_ERROR,
    PREFACE,
    PREFIX,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RESOURCE_EXHAUSTED,
    STREAM_CLOSED,
    U32,
    UNIMPLEMENTED,
    WINDOW,
    ConnectionFailed,
    Failed,
    Http2Connection,
    Stream,
    encode_message,
    literal,
    parse_timeout,
)

#: Calls one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
MAX_CONCURRENT_STREAMS: Final = 256
#: Bytes of request headers we take per call (SETTINGS_MAX_HEADER_LIST_SIZE).
MAX_HEADER_LIST_SIZE: Final = 16 << 10
_GRPC_SUBTYPES = (b"application/grpc+", b"application/grpc;")
_STATUS_200 = b"\x88"  # the static table's :status 200
_RESPONSE_HEADERS: Final = _STATUS_200 + literal(31, b"application/grpc")  # 31: content-type
_OK_TRAILERS: Final = literal(b"grpc-status", b"0")
__all__ = ["Call", "Cancelled", "ConnectionFailed", "Event", "UnaryConnection", "parse_timeout"]


@dataclass(frozen=True, slots=True)
class Call:
    """A whole request: the method's path, its one message, and its deadline in seconds from
    now (None: the client set none)."""

    stream_id: int
    method: str
    message: bytes
    timeout: float | None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The client gave up on a call (RST_STREAM): its handler should stop, nothing is sent."""

    stream_id: int


Event = Call | Cancelled


@dataclass(slots=True)
class _Stream(Stream):
    method: str = ""
    timeout: float | None = None
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False  # the client's half is closed: the call is the handler's


class UnaryConnection(Http2Connection):
    """One client connection: feed it bytes with :meth:`receive`, answer each :class:`Call` with
    :meth:`respond` or :meth:`fail`, and send :meth:`data_to_send` after each."""

    peer = "client"
    _streams: dict[int, _Stream]  # type: ignore[assignment]

    def __init__(self, *, max_message: int, max_send: int, max_buffered: int = 0) -> None:
        super().__init__(
            (
                (MAX_CONCURRENT, MAX_CONCURRENT_STREAMS),
                (INITIAL_WINDOW_SIZE, WINDOW),
                (MAX_HEADER_LIST, MAX_HEADER_LIST_SIZE),
            ),
            max_header_list=MAX_HEADER_LIST_SIZE,
        )
        self.max_message = max_message
        self.max_send = max_send
        #: Request bytes the connection holds at once, over all its calls (2 messages' worth
        #: unless given): past it, the call whose bytes went over is refused.
        self.max_buffered = max_buffered or 2 * (max_message + PREFIX.size)
        self.buffered = 0
        self.refusing = False  # stopping: new calls are refused (REFUSED_STREAM), open ones end
        self._preface = False  # the client's preface has arrived
        self._last_sid = 0  # the highest stream the client opened

    @property
    def open_calls(self) -> int:
        return len(self._streams)

    # ------------------------------------------------------------------------------ input

    def receive(self, data: bytes) -> list[Event]:
        if self._closed:
            return []
        try:
            return self._receive(data)
        except Failed as exc:
            self._fail_connection(exc.code, str(exc))
            raise ConnectionFailed(str(exc)) from None

    def _fail_connection(self, code: int, why: str) -> None:
        self._streams.clear()
        self.buffered = 0
        self._closed = True
        if self._preface:
            debug = why.encode("utf-8", "replace")[:256]
            self._frame(GOAWAY, 0, 0, U32.pack(self._last_sid) + U32.pack(code) + debug)

    def _receive(self, data: bytes) -> list[Event]:
        buf = self._in
        buf += data
        pos = 0
        if not self._preface:
            if buf[: len(PREFACE)] != PREFACE[: len(buf)]:
                self._closed = True
                raise ConnectionFailed("not HTTP/2: no client preface")
            if len(buf) < len(PREFACE):
                return []
            self._preface = True
            pos = len(PREFACE)
        events: list[Event] = []
        self._frames(pos, events)  # type: ignore[arg-type]
        return events

    def _on_reset(self, sid: int, code: int, out: list[object]) -> None:
        if sid > self._last_sid:
            raise Failed(PROTOCOL_ERROR, "RST_STREAM of an idle stream")
        if self._drop(sid) is not None:
            out.append(Cancelled(sid))

    def _on_headers(self, sid: int, flags: int, block: bytes, out: list[object]) -> None:
        headers = self._decode(block)
        if sid <= self._last_sid:  # trailers, or headers on a stream that is done
            st = self._streams.get(sid)
            if st is None or st.ended:
                self._reset(sid, STREAM_CLOSED)
                if st is not None:
                    out.append(Cancelled(sid))
                return
            self._refuse(sid, INTERNAL, "grpc: unexpected trailers in a request")
            return
        if sid % 2 == 0:
            raise Failed(PROTOCOL_ERROR, "a stream the client may not open")
        self._last_sid = sid
        if self.refusing or len(self._streams) >= MAX_CONCURRENT_STREAMS:
            self._reset(sid, REFUSED_STREAM)
            return
        st = self._streams[sid] = _Stream(send_window=self._peer_window)
        st.ended = bool(flags & END_STREAM)
        if headers.get(b":method") != b"POST":
            self._reject(sid, b"405")
            return
        ctype = headers.get(b"content-type", b"")
        if ctype != b"application/grpc" and not ctype.startswith(_GRPC_SUBTYPES):
            self._reject(sid, b"415")
            return
        st.method = headers.get(b":path", b"").decode("utf-8", "replace")
        if (t := headers.get(b"grpc-timeout")) is not None:
            st.timeout = parse_timeout(t)
            if st.timeout is None:
                self._refuse(sid, INTERNAL, f"grpc: malformed grpc-timeout {t[:40]!r}")
                return
        if st.ended:
            self._ended(sid, st, out)

    def _on_data(self, flags: int, sid: int, payload: bytes, out: list[object]) -> None:
        if sid > self._last_sid:
            raise Failed(PROTOCOL_ERROR, "DATA on an idle stream")
        # Receive windows are given back as soon as half is used: what the client sends is
        # bounded by max_buffered, not by holding its window shut.
        n = len(payload)
        self._count_received(n)
        st = self._streams.get(sid)
        if st is None:
            return  # a stream we are done with (answered early, reset): dropped
        if st.ended:
            self._reset(sid, STREAM_CLOSED)
            self._drop(sid)
            out.append(Cancelled(sid))
            return
        st.ended = bool(flags & END_STREAM)
        data = self._unpad(flags, payload)
        if not st.ended:
            st.unacked += n
            self._give_back(sid, st)
        if data:
            self._take(sid, st, data)
        if st.ended and sid in self._streams:
            self._ended(sid, st, out)

    def _take(self, sid: int, st: _Stream, data: bytes) -> None:
        if self.buffered + len(data) > self.max_buffered:
            limit = f"{self.max_buffered} bytes"
            self._refuse(sid, RESOURCE_EXHAUSTED, f"grpc: the connection's requests exceed {limit}")
            return
        st.body += data
        self.buffered += len(data)
        if len(st.body) >= PREFIX.size:
            compressed, length = PREFIX.unpack_from(st.body)
            if compressed:
                self._refuse(sid, UNIMPLEMENTED, "grpc: compressed messages are not supported")
            elif length > self.max_message:
                self._refuse(
                    sid,
                    RESOURCE_EXHAUSTED,
                    f"grpc: received message larger than max ({length} vs. {self.max_message})",
                )
            elif len(st.body) > PREFIX.size + length:
                self._refuse(sid, UNIMPLEMENTED, "grpc: more than one request message")

    def _ended(self, sid: int, st: _Stream, out: list[object]) -> None:
        body = st.body
        if len(body) < PREFIX.size or len(body) != PREFIX.size + PREFIX.unpack_from(body)[1]:
            self._refuse(sid, INTERNAL, "grpc: the request is not exactly one message")
            return
        self.buffered -= len(body)
        st.body = bytearray()
        out.append(Call(sid, st.method, bytes(memoryview(body)[PREFIX.size :]), st.timeout))

    # ------------------------------------------------------------------------------ output

    def respond(self, stream_id: int, message: bytes) -> None:
        """Answer a call with its message and an OK status (sent as the window allows)."""
        st = self._streams.get(stream_id)
        if st is None or self._closed:
            return  # reset by the client meanwhile
        if len(message) > self.max_send:
            size = f"({len(message)} vs. {self.max_send})"
            self.fail(
                stream_id,
                RESOURCE_EXHAUSTED,
                f"grpc: trying to send message larger than max {size}",
            )
            return
        self._frame(HEADERS, END_HEADERS, stream_id, _RESPONSE_HEADERS)
        st.pending = memoryview(PREFIX.pack(0, len(message)) + message)
        self._send(stream_id, st)

    def _sent(self, sid: int, st: Stream) -> None:
        self._frame(HEADERS, END_HEADERS | END_STREAM, sid, _OK_TRAILERS)
        self._streams.pop(sid, None)

    def fail(self, stream_id: int, code: int, message: str) -> None:
        """Answer a call with a status and no message (gRPC's trailers-only response)."""
        if self._closed or self._drop(stream_id) is None:
            return
        self._frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream_id,
            _RESPONSE_HEADERS + self._status(code, message),
        )

    def refuse_new_calls(self) -> None:
        self.refusing = True

    def close(self) -> None:
        """GOAWAY: the last call this connection took is the last it answers."""
        if not self._closed:
            self._frame(GOAWAY, 0, 0, U32.pack(self._last_sid) + U32.pack(NO_ERROR))
            self._closed = True

    @staticmethod
    def _status(code: int, message: str) -> bytes:
        out = literal(b"grpc-status", b"%d" % code)
        if message:
            out += literal(b"grpc-message", encode_message(message))
        return out

    def _refuse(self, sid: int, code: int, message: str) -> None:
        """Answer now with a status; whatever more the client sends on the stream is dropped."""
        st = self._streams.get(sid)
        if st is not None:
            self._end_early(sid, st, _RESPONSE_HEADERS + self._status(code, message))

    def _reject(self, sid: int, status: bytes) -> None:
        """Not a gRPC request: an HTTP status, as gRPC servers answer one."""
        st = self._streams.get(sid)
        if st is not None:
            self._end_early(sid, st, literal(8, status))  # 8: the static table's :status

    def _end_early(self, sid: int, st: _Stream, block: bytes) -> None:
        """Answer before the request has all come: the stream is done with, and what the
        client still sends on it is dropped as it arrives (DATA on a stream we do not have)."""
        self._frame(HEADERS, END_HEADERS | END_STREAM, sid, block)
        self._drop(sid)
        if not st.ended:  # the client is still sending: tell it to stop
            self._reset(sid, NO_ERROR)

    def _drop(self, sid: int) -> _Stream | None:
        st = self._streams.pop(sid, None)
        if st is not None:
            self.buffered -= len(st.body)
        return st

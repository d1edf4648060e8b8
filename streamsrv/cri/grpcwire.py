"""gRPC's unary calls on one HTTP/2 connection, server side, without I/O (docs/cri.md, "The
gRPC server").

Every CRI method the server serves is unary: one request message in, one response message or
a status out. This module turns the bytes a client sends into :class:`Call` and
:class:`Cancelled` events and turns answers back into bytes; :mod:`streamsrv.cri.grpcserver`
moves those bytes over a unix socket and runs the handlers.

It is the part of HTTP/2 (RFC 9113) a unary gRPC server needs, written for that: frames,
stream states, flow control both ways, SETTINGS, PING, RST_STREAM and GOAWAY. Header blocks are
decoded by the ``hpack`` package (RFC 7541, with its Huffman code and dynamic table); the few
header blocks we send are literals without indexing, so no encoder state is needed. The gRPC
layer (the 5-byte message prefix, ``grpc-timeout``, status trailers) follows the gRPC over
HTTP/2 specification (``PROTOCOL-HTTP2.md`` in grpc/grpc). A general HTTP/2 library (h2) did
the same job first; it cost twice the CPU per call (docs/benchmarks.md).

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

import re
import struct
from dataclasses import dataclass, field
from typing import Final

import hpack
import hpack.exceptions

#: Calls one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
MAX_CONCURRENT_STREAMS: Final = 256
#: Bytes of request headers we take per call (SETTINGS_MAX_HEADER_LIST_SIZE).
MAX_HEADER_LIST_SIZE: Final = 16 << 10
#: Each stream's receive window, and the connection's: a 16 MiB request arrives in 16 windows.
WINDOW: Final = 1 << 20

# gRPC status codes (grpc/grpc doc/statuscodes.md).
OK: Final = 0
DEADLINE_EXCEEDED: Final = 4
NOT_FOUND: Final = 5
RESOURCE_EXHAUSTED: Final = 8
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14

# HTTP/2 error codes (RFC 9113 section 7).
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PUSH_PROMISE = 0, 1, 2, 3, 4, 5
_PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 6, 7, 8, 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
_MAX_FRAME: Final = 16384  # what we take (the default; we do not raise it)
_MAX_WINDOW: Final = (1 << 31) - 1
_HEADER: Final = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id
_U32 = struct.Struct(">I")
_PREFIX = struct.Struct(">BI")  # gRPC: compressed flag, message length
_TIMEOUT = re.compile(rb"(\d{1,8})([HMSmun])")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_GRPC_SUBTYPES = (b"application/grpc+", b"application/grpc;")
#: A grpc-message longer than this is cut: every header block we send fits one frame.
_MAX_STATUS_MESSAGE = 4096


def _int(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with ``first``'s high bits above its prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes | int, value: bytes) -> bytes:
    """A header field as a literal without indexing (RFC 7541 6.2.2), the name a static-table
    index or a literal; never Huffman-coded."""
    head = _int(name, 4, 0) if isinstance(name, int) else b"\x00" + _int(len(name), 7, 0) + name
    return head + _int(len(value), 7, 0) + value


_STATUS_200 = b"\x88"  # the static table's :status 200
_RESPONSE_HEADERS: Final = _STATUS_200 + _literal(31, b"application/grpc")  # 31: content-type
_OK_TRAILERS: Final = _literal(b"grpc-status", b"0")


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


class ConnectionFailed(Exception):
    """The client broke HTTP/2: a GOAWAY saying why waits in :meth:`UnaryConnection.data_to_send`
    (unless it never spoke HTTP/2); send it and close the connection."""


class _Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout``'s value in seconds (None when it does not parse)."""
    m = _TIMEOUT.fullmatch(value)
    return None if m is None else int(m.group(1)) * _UNITS[m.group(2)]


def encode_message(status: str) -> bytes:
    """``grpc-message``: percent-encoded UTF-8, every byte outside printable ASCII and '%'."""
    return b"".join(
        bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
        for b in status.encode("utf-8", "replace")
    )


@dataclass(slots=True)
class _Stream:
    send_window: int
    method: str = ""
    timeout: float | None = None
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False  # the client's half is closed: the call is the handler's
    unacked: int = 0  # received bytes not yet given back with a WINDOW_UPDATE
    pending: memoryview | None = None  # response bytes the client's window has no room for yet


class UnaryConnection:
    """One client connection: feed it bytes with :meth:`receive`, answer each :class:`Call` with
    :meth:`respond` or :meth:`fail`, and send :meth:`data_to_send` after each."""

    def __init__(self, *, max_message: int, max_send: int, max_buffered: int = 0) -> None:
        self.max_message = max_message
        self.max_send = max_send
        #: Request bytes the connection holds at once, over all its calls (2 messages' worth
        #: unless given): past it, the call whose bytes went over is refused.
        self.max_buffered = max_buffered or 2 * (max_message + _PREFIX.size)
        self.buffered = 0
        self.refusing = False  # stopping: new calls are refused (REFUSED_STREAM), open ones end
        self._out: list[bytes] = []
        self._in = bytearray()
        self._preface = False  # the client's preface has arrived
        self._settings = False  # ... and its first SETTINGS
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = MAX_HEADER_LIST_SIZE
        self._streams: dict[int, _Stream] = {}
        self._last_sid = 0  # the highest stream the client opened
        self._continuing: tuple[int, int, bytearray] | None = None  # sid, flags, block so far
        self._peer_window = 65535  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self._peer_max_frame = 16384
        self._send_window = 65535  # the connection's, for what we send
        self._recv_unacked = 0  # received on the connection, not yet given back
        self._closed = False
        settings = b"".join(
            struct.pack(">HI", key, value)
            for key, value in ((3, MAX_CONCURRENT_STREAMS), (4, WINDOW), (6, MAX_HEADER_LIST_SIZE))
        )
        self._frame(_SETTINGS, 0, 0, settings)
        self._frame(_WINDOW_UPDATE, 0, 0, _U32.pack(WINDOW - 65535))

    @property
    def open_calls(self) -> int:
        return len(self._streams)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes = b"") -> None:
        n = len(payload)
        self._out.append(_HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, sid))
        if payload:
            self._out.append(payload)

    # ------------------------------------------------------------------------------ input

    def receive(self, data: bytes) -> list[Event]:
        if self._closed:
            return []
        try:
            return self._receive(data)
        except _Failed as exc:
            self._fail_connection(exc.code, str(exc))
            raise ConnectionFailed(str(exc)) from None

    def _fail_connection(self, code: int, why: str) -> None:
        self._streams.clear()
        self.buffered = 0
        self._closed = True
        if self._preface:
            debug = why.encode("utf-8", "replace")[:256]
            self._frame(_GOAWAY, 0, 0, _U32.pack(self._last_sid) + _U32.pack(code) + debug)

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
        end = len(buf)
        while end - pos >= 9:
            hi, lo, kind, flags, sid = _HEADER.unpack_from(buf, pos)
            length = (hi << 16) | lo
            if length > _MAX_FRAME:
                raise _Failed(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            if end - pos - 9 < length:
                break
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            self._on_frame(kind, flags, sid & 0x7FFFFFFF, payload, events)
        del buf[:pos]
        return events

    def _on_frame(self, kind: int, flags: int, sid: int, payload: bytes, out: list[Event]) -> None:
        if not self._settings:
            if kind != _SETTINGS or flags & _ACK:
                raise _Failed(PROTOCOL_ERROR, "the client's first frame is not SETTINGS")
            self._settings = True
        if self._continuing is not None and kind != _CONTINUATION:
            raise _Failed(PROTOCOL_ERROR, "a frame between HEADERS and its CONTINUATION")
        if kind == _DATA:
            self._on_data(flags, sid, payload, out)
        elif kind == _HEADERS:
            if sid == 0:
                raise _Failed(PROTOCOL_ERROR, "HEADERS on stream 0")
            block = self._unpad(flags, payload)
            if flags & _PRIORITY_FLAG:
                if len(block) < 5:
                    raise _Failed(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
                block = block[5:]
            if flags & _END_HEADERS:
                self._on_headers(sid, flags, block, out)
            else:
                self._continuing = (sid, flags, bytearray(block))
        elif kind == _CONTINUATION:
            if self._continuing is None or self._continuing[0] != sid:
                raise _Failed(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
            _, first, pieces = self._continuing
            pieces += payload
            if len(pieces) > 2 * MAX_HEADER_LIST_SIZE:
                raise _Failed(ENHANCE_YOUR_CALM, "a header block over the limit")
            if flags & _END_HEADERS:
                self._continuing = None
                self._on_headers(sid, first, bytes(pieces), out)
        elif kind == _RST_STREAM:
            if len(payload) != 4:
                raise _Failed(FRAME_SIZE_ERROR, "RST_STREAM is not 4 bytes")
            if sid == 0 or sid > self._last_sid:
                raise _Failed(PROTOCOL_ERROR, "RST_STREAM of an idle stream")
            if self._drop(sid) is not None:
                out.append(Cancelled(sid))
        elif kind == _SETTINGS:
            self._on_settings(flags, sid, payload)
        elif kind == _PING:
            if len(payload) != 8 or sid != 0:
                raise _Failed(FRAME_SIZE_ERROR if sid == 0 else PROTOCOL_ERROR, "a bad PING")
            if not flags & _ACK:
                self._frame(_PING, _ACK, 0, payload)
        elif kind == _WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif kind == _PRIORITY:
            if sid == 0 or len(payload) != 5:
                raise _Failed(PROTOCOL_ERROR, "a bad PRIORITY")
        elif kind == _GOAWAY:
            if sid != 0:
                raise _Failed(PROTOCOL_ERROR, "GOAWAY on a stream")
        elif kind == _PUSH_PROMISE:
            raise _Failed(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # any other type is ignored (RFC 9113 5.5)

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if not flags & _PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise _Failed(PROTOCOL_ERROR, "padding as long as the frame")
        return payload[1 : len(payload) - payload[0]]

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise _Failed(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & _ACK:
            if payload:
                raise _Failed(FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _Failed(FRAME_SIZE_ERROR, "SETTINGS not in 6-byte entries")
        for key, value in struct.iter_unpack(">HI", payload):
            if key == 2 and value > 1:
                raise _Failed(PROTOCOL_ERROR, "ENABLE_PUSH above 1")
            if key == 4:
                if value > _MAX_WINDOW:
                    raise _Failed(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1")
                delta, self._peer_window = value - self._peer_window, value
                for st in self._streams.values():
                    st.send_window += delta
            elif key == 5:
                if not 16384 <= value <= 16777215:
                    raise _Failed(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self._peer_max_frame = value
        self._frame(_SETTINGS, _ACK, 0)
        self._flush_pending()

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _Failed(FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if increment == 0:
            raise _Failed(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
        if sid == 0:
            self._send_window += increment
            if self._send_window > _MAX_WINDOW:
                raise _Failed(FLOW_CONTROL_ERROR, "the connection's window above 2^31-1")
            self._flush_pending()
            return
        st = self._streams.get(sid)
        if st is None:
            return  # a stream we are done with: nothing to send on it
        st.send_window += increment
        if st.send_window > _MAX_WINDOW:
            raise _Failed(FLOW_CONTROL_ERROR, "a stream's window above 2^31-1")
        if st.pending is not None:
            self._send(sid, st)

    def _on_headers(self, sid: int, flags: int, block: bytes, out: list[Event]) -> None:
        try:  # every block is decoded, even a refused stream's: HPACK's table depends on it
            headers = dict(self._decoder.decode(block, raw=True))
        except hpack.exceptions.OversizedHeaderListError as exc:
            raise _Failed(ENHANCE_YOUR_CALM, f"request headers over the limit: {exc}") from None
        except hpack.exceptions.HPACKError as exc:
            raise _Failed(COMPRESSION_ERROR, f"undecodable headers: {exc}") from None
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
            raise _Failed(PROTOCOL_ERROR, "a stream the client may not open")
        self._last_sid = sid
        if self.refusing or len(self._streams) >= MAX_CONCURRENT_STREAMS:
            self._reset(sid, REFUSED_STREAM)
            return
        st = self._streams[sid] = _Stream(send_window=self._peer_window)
        st.ended = bool(flags & _END_STREAM)
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

    def _on_data(self, flags: int, sid: int, payload: bytes, out: list[Event]) -> None:
        if sid == 0:
            raise _Failed(PROTOCOL_ERROR, "DATA on stream 0")
        if sid > self._last_sid:
            raise _Failed(PROTOCOL_ERROR, "DATA on an idle stream")
        # Receive windows are given back as soon as half is used: what the client sends is
        # bounded by max_buffered, not by holding its window shut.
        n = len(payload)
        self._recv_unacked += n
        if self._recv_unacked >= WINDOW // 2:
            self._frame(_WINDOW_UPDATE, 0, 0, _U32.pack(self._recv_unacked))
            self._recv_unacked = 0
        st = self._streams.get(sid)
        if st is None:
            return  # a stream we are done with (answered early, reset): dropped
        if st.ended:
            self._reset(sid, STREAM_CLOSED)
            self._drop(sid)
            out.append(Cancelled(sid))
            return
        st.ended = bool(flags & _END_STREAM)
        data = self._unpad(flags, payload)
        if not st.ended:
            st.unacked += n
            if st.unacked >= WINDOW // 2:
                self._frame(_WINDOW_UPDATE, 0, sid, _U32.pack(st.unacked))
                st.unacked = 0
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
        if len(st.body) >= _PREFIX.size:
            compressed, length = _PREFIX.unpack_from(st.body)
            if compressed:
                self._refuse(sid, UNIMPLEMENTED, "grpc: compressed messages are not supported")
            elif length > self.max_message:
                self._refuse(
                    sid,
                    RESOURCE_EXHAUSTED,
                    f"grpc: received message larger than max ({length} vs. {self.max_message})",
                )
            elif len(st.body) > _PREFIX.size + length:
                self._refuse(sid, UNIMPLEMENTED, "grpc: more than one request message")

    def _ended(self, sid: int, st: _Stream, out: list[Event]) -> None:
        body = st.body
        if len(body) < _PREFIX.size or len(body) != _PREFIX.size + _PREFIX.unpack_from(body)[1]:
            self._refuse(sid, INTERNAL, "grpc: the request is not exactly one message")
            return
        self.buffered -= len(body)
        st.body = bytearray()
        out.append(Call(sid, st.method, bytes(memoryview(body)[_PREFIX.size :]), st.timeout))

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
        self._frame(_HEADERS, _END_HEADERS, stream_id, _RESPONSE_HEADERS)
        st.pending = memoryview(_PREFIX.pack(0, len(message)) + message)
        self._send(stream_id, st)

    def fail(self, stream_id: int, code: int, message: str) -> None:
        """Answer a call with a status and no message (gRPC's trailers-only response)."""
        if self._closed or self._drop(stream_id) is None:
            return
        self._frame(
            _HEADERS,
            _END_HEADERS | _END_STREAM,
            stream_id,
            _RESPONSE_HEADERS + self._status(code, message),
        )

    def refuse_new_calls(self) -> None:
        self.refusing = True

    def close(self) -> None:
        """GOAWAY: the last call this connection took is the last it answers."""
        if not self._closed:
            self._frame(_GOAWAY, 0, 0, _U32.pack(self._last_sid) + _U32.pack(NO_ERROR))
            self._closed = True

    @staticmethod
    def _status(code: int, message: str) -> bytes:
        out = _literal(b"grpc-status", b"%d" % code)
        if message:
            out += _literal(b"grpc-message", encode_message(message)[:_MAX_STATUS_MESSAGE])
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
            self._end_early(sid, st, _literal(8, status))  # 8: the static table's :status

    def _end_early(self, sid: int, st: _Stream, block: bytes) -> None:
        """Answer before the request has all come: the stream is done with, and what the
        client still sends on it is dropped as it arrives (DATA on a stream we do not have)."""
        self._frame(_HEADERS, _END_HEADERS | _END_STREAM, sid, block)
        self._drop(sid)
        if not st.ended:  # the client is still sending: tell it to stop
            self._reset(sid, NO_ERROR)

    def _reset(self, sid: int, code: int) -> None:
        self._frame(_RST_STREAM, 0, sid, _U32.pack(code))

    def _drop(self, sid: int) -> _Stream | None:
        st = self._streams.pop(sid, None)
        if st is not None:
            self.buffered -= len(st.body)
        return st

    def _send(self, sid: int, st: _Stream) -> None:
        data = st.pending
        assert data is not None
        while data:
            room = min(self._send_window, st.send_window, self._peer_max_frame)
            if room <= 0:
                st.pending = data
                return
            chunk = data[:room]
            self._frame(_DATA, 0, sid, chunk.tobytes())
            self._send_window -= len(chunk)
            st.send_window -= len(chunk)
            data = data[room:]
        st.pending = None
        self._frame(_HEADERS, _END_HEADERS | _END_STREAM, sid, _OK_TRAILERS)
        self._streams.pop(sid, None)

    def _flush_pending(self) -> None:
        for sid, st in list(self._streams.items()):
            if st.pending is not None:
                self._send(sid, st)

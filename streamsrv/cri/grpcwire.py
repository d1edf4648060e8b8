"""gRPC's unary calls on one HTTP/2 connection, server side, without I/O (docs/cri.md, "The
gRPC server").

Every CRI method the server serves is unary: one request message in, one response message or
a status out. This module turns the bytes a client sends into :class:`Call` and
:class:`Cancelled` events and turns answers back into bytes; :mod:`streamsrv.cri.grpcserver`
moves those bytes over a unix socket and runs the handlers. HTTP/2 itself (frames, HPACK,
flow control, stream states, SETTINGS, PING, GOAWAY) is the ``h2`` package's, which is sans-IO
too; the gRPC layer on top (the 5-byte message prefix, ``grpc-timeout``, status trailers) is
ours, after the gRPC over HTTP/2 specification (``PROTOCOL-HTTP2.md`` in grpc/grpc).

Limits: a request message over ``max_message`` bytes is refused (RESOURCE_EXHAUSTED) and its
bytes are dropped as they come, as is the call whose bytes take what the connection holds over
``max_buffered``; a response over ``max_send`` is refused likewise; the client
may open at most :data:`MAX_CONCURRENT_STREAMS` calls at once and send header blocks of at most
:data:`MAX_HEADER_LIST_SIZE` bytes (HTTP/2 SETTINGS, enforced by ``h2``). A response waits in
memory only while the client's flow-control window is shut, and is dropped if the client
resets its stream.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

#: Calls one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
MAX_CONCURRENT_STREAMS: Final = 256
#: Bytes of request headers we take per call (SETTINGS_MAX_HEADER_LIST_SIZE).
MAX_HEADER_LIST_SIZE: Final = 16 << 10
#: Each stream's receive window, and the connection's: a 16 MiB request arrives in 16 windows.
WINDOW: Final = 1 << 20

# gRPC status codes (grpc/grpc doc/statuscodes.md).
OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
INVALID_ARGUMENT: Final = 3
DEADLINE_EXCEEDED: Final = 4
NOT_FOUND: Final = 5
RESOURCE_EXHAUSTED: Final = 8
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14

_PREFIX = struct.Struct(">BI")  # compressed flag, message length
_TIMEOUT = re.compile(rb"(\d{1,8})([HMSmun])")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))
_GRPC_SUBTYPES = (b"application/grpc+", b"application/grpc;")


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
    """The client broke HTTP/2: a GOAWAY saying why waits in :meth:`UnaryConnection.data_to_send`;
    send it and close the connection."""


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
    method: str = ""
    timeout: float | None = None
    body: bytearray = field(default_factory=bytearray)
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
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            # Our answers' headers are constants; a request's are only looked up (method, path,
            # content type, timeout), each checked where it is read. h2's checks of every
            # header's form cost as much as the rest of a call.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        self._h2 = h2.connection.H2Connection(config)
        self._h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            },
        )
        self._h2.initiate_connection()
        # h2 applies it once the client has acknowledged our SETTINGS; from the first byte here
        self._h2.decoder.max_header_list_size = MAX_HEADER_LIST_SIZE
        self._h2.increment_flow_control_window(WINDOW - 65535)
        self._streams: dict[int, _Stream] = {}
        self.refusing = False  # stopping: new calls are refused (REFUSED_STREAM), open ones end

    @property
    def open_calls(self) -> int:
        return len(self._streams)

    def data_to_send(self) -> bytes:
        return self._h2.data_to_send()

    # ------------------------------------------------------------------------------ input

    def receive(self, data: bytes) -> list[Event]:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:  # h2 has queued a GOAWAY
            self._streams.clear()
            self.buffered = 0
            raise ConnectionFailed(str(exc) or type(exc).__name__) from exc
        out: list[Event] = []
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self._request(ev)
            elif isinstance(ev, h2.events.DataReceived):
                self._data(ev)
            elif isinstance(ev, h2.events.StreamEnded):
                call = self._ended(ev.stream_id)
                if call is not None:
                    out.append(call)
            elif isinstance(ev, h2.events.StreamReset):
                if self._drop(ev.stream_id) is not None:
                    out.append(Cancelled(ev.stream_id))
            elif isinstance(ev, h2.events.TrailersReceived):  # a request has no trailers
                self._refuse(ev.stream_id, INTERNAL, "grpc: unexpected trailers in a request")
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._flush_pending()
        return out

    def _request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        if self.refusing:
            self._h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        headers = dict(ev.headers or ())
        st = self._streams[sid] = _Stream()
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

    def _data(self, ev: h2.events.DataReceived) -> None:
        sid = ev.stream_id
        if ev.flow_controlled_length:
            self._h2.acknowledge_received_data(ev.flow_controlled_length, sid)
        st = self._streams.get(sid)
        if st is None or not ev.data:
            return
        if self.buffered + len(ev.data) > self.max_buffered:
            limit = f"{self.max_buffered} bytes"
            self._refuse(sid, RESOURCE_EXHAUSTED, f"grpc: the connection's requests exceed {limit}")
            return
        st.body += ev.data
        self.buffered += len(ev.data)
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

    def _ended(self, sid: int) -> Call | None:
        st = self._streams.get(sid)
        if st is None:
            return None
        body = st.body
        if len(body) < _PREFIX.size or len(body) != _PREFIX.size + _PREFIX.unpack_from(body)[1]:
            self._refuse(sid, INTERNAL, "grpc: the request is not exactly one message")
            return None
        self.buffered -= len(body)
        st.body = bytearray()
        return Call(sid, st.method, bytes(memoryview(body)[_PREFIX.size :]), st.timeout)

    # ------------------------------------------------------------------------------ output

    def respond(self, stream_id: int, message: bytes) -> None:
        """Answer a call with its message and an OK status (sent as the window allows)."""
        st = self._streams.get(stream_id)
        if st is None:
            return  # reset by the client meanwhile
        if len(message) > self.max_send:
            size = f"({len(message)} vs. {self.max_send})"
            self.fail(
                stream_id,
                RESOURCE_EXHAUSTED,
                f"grpc: trying to send message larger than max {size}",
            )
            return
        self._h2.send_headers(stream_id, _RESPONSE_HEADERS)
        st.pending = memoryview(_PREFIX.pack(0, len(message)) + message)
        self._send(stream_id, st)

    def fail(self, stream_id: int, code: int, message: str) -> None:
        """Answer a call with a status and no message (gRPC's trailers-only response)."""
        if self._drop(stream_id) is None:
            return
        self._h2.send_headers(
            stream_id, [*_RESPONSE_HEADERS, *self._status(code, message)], end_stream=True
        )

    def refuse_new_calls(self) -> None:
        self.refusing = True

    def close(self) -> None:
        """GOAWAY: the last call this connection took is the last it answers."""
        self._h2.close_connection()

    @staticmethod
    def _status(code: int, message: str) -> list[tuple[bytes, bytes]]:
        out = [(b"grpc-status", b"%d" % code)]
        if message:
            out.append((b"grpc-message", encode_message(message)))
        return out

    def _refuse(self, sid: int, code: int, message: str) -> None:
        """Answer now with a status; whatever more the client sends on the stream is dropped."""
        if sid in self._streams:
            self._end_early(sid, [*_RESPONSE_HEADERS, *self._status(code, message)])

    def _reject(self, sid: int, status: bytes) -> None:
        """Not a gRPC request: an HTTP status, as gRPC servers answer one."""
        self._end_early(sid, [(b":status", status)])

    def _end_early(self, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._drop(sid)
        self._h2.send_headers(sid, headers, end_stream=True)
        stream = self._h2.streams.get(sid)
        if stream is not None and not stream.closed:  # the client is still sending: stop it
            self._h2.reset_stream(sid, h2.errors.ErrorCodes.NO_ERROR)

    def _drop(self, sid: int) -> _Stream | None:
        st = self._streams.pop(sid, None)
        if st is not None:
            self.buffered -= len(st.body)
        return st

    def _send(self, sid: int, st: _Stream) -> None:
        data = st.pending
        assert data is not None
        while data:
            room = min(self._h2.local_flow_control_window(sid), self._h2.max_outbound_frame_size)
            if room <= 0:
                st.pending = data
                return
            self._h2.send_data(sid, data[:room].tobytes())
            data = data[room:]
        st.pending = None
        self._h2.send_headers(sid, self._status(OK, ""), end_stream=True)
        self._drop(sid)

    def _flush_pending(self) -> None:
        for sid, st in list(self._streams.items()):
            if st.pending is not None:
                self._send(sid, st)

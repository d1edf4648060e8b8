"""SPDY/3.1 as moby/spdystream speaks it (protocol.md §6), sans-IO and role-symmetric.

``receive_data`` takes bytes in any chunking and returns events; ``send_*`` queue frames that
``data_to_send`` drains. No flow control (spdystream has none: WINDOW_UPDATE and SETTINGS are
parsed and reported, never enforced). Header blocks use one zlib context per direction for the
whole connection, with the SPDY/3 dictionary, sync-flushed per block.

``receive_data`` raises only :class:`RemoteProtocolError`, after queueing a GOAWAY
(PROTOCOL_ERROR); every later call raises it again. API misuse raises
:class:`LocalProtocolError`.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources

DICTIONARY = resources.files(__package__).joinpath("spdy3_dictionary.bin").read_bytes()

VERSION = 3
MAX_FRAME_LENGTH = 0xFFFFFF
MAX_HEADER_BLOCK = 1 << 20
DEFAULT_CHUNK = 32 * 1024

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS = 1, 2, 3, 4
PING, GOAWAY, HEADERS, WINDOW_UPDATE = 6, 7, 8, 9
FLAG_FIN, FLAG_UNIDIRECTIONAL = 0x01, 0x02

_CONTROL = struct.Struct(">HHI")  # version|C, type, flags<<24|length
_DATA = struct.Struct(">II")  # stream id, flags<<24|length
_U32 = struct.Struct(">I")
_TWO = struct.Struct(">II")

_FORBIDDEN = frozenset(
    {"connection", "host", "keep-alive", "proxy-connection", "transfer-encoding"}
)


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class RstStatus(enum.IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class ProtocolError(Exception):
    """Base of the codec's errors; raise one of the two subclasses."""

    def __init__(self, message: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract: use Local or RemoteProtocolError")
        super().__init__(message)


class LocalProtocolError(ProtocolError):
    """This side misused the API (e.g. wrote on a stream it had closed)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the connection is over (a GOAWAY is queued)."""

    def __init__(self, message: str, goaway_status: int = GoAwayStatus.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.goaway_status = goaway_status


Headers = dict[str, str]  # multi-values stay NUL-joined, as on the wire


@dataclass(frozen=True, slots=True)
class StreamOpened:
    stream_id: int
    headers: Headers
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True, slots=True)
class StreamReplied:
    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class HeadersReceived:
    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the stream (FIN)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A peer ping; the echo is already queued."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class PingAck:
    """The echo of one of our pings."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class SettingsReceived:
    settings: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> (flags, value)
    clear: bool = False


@dataclass(frozen=True, slots=True)
class WindowUpdateReceived:
    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    last_good_stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The byte stream ended."""


Event = (
    StreamOpened
    | StreamReplied
    | HeadersReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | PingReceived
    | PingAck
    | SettingsReceived
    | WindowUpdateReceived
    | GoAwayReceived
    | ConnectionTerminated
)


class _Stream:
    __slots__ = ("local_closed", "remote_closed", "replied")  # replied: no SYN_REPLY owed

    def __init__(self, *, replied: bool) -> None:
        self.local_closed = False
        self.remote_closed = False
        self.replied = replied


def encode_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """The uncompressed name/value block (names lowercased, repeats NUL-joined)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    merged: dict[str, list[str]] = {}
    for name, value in items:
        merged.setdefault(name.lower(), []).append(value)
    parts = [_U32.pack(len(merged))]
    for name, values in merged.items():
        n, v = name.encode(), "\x00".join(values).encode()
        parts += [_U32.pack(len(n)), n, _U32.pack(len(v)), v]
    return b"".join(parts)


def decode_headers(block: bytes, *, forbidden: frozenset[str] = _FORBIDDEN) -> Headers:
    def fail(why: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"bad header block: {why}")

    if len(block) < 4:
        raise fail("truncated")
    (count,) = _U32.unpack_from(block, 0)
    pos, out = 4, {}
    for _ in range(count):
        fields = []
        for _ in range(2):
            if pos + 4 > len(block):
                raise fail("truncated")
            (size,) = _U32.unpack_from(block, pos)
            pos += 4
            if pos + size > len(block):
                raise fail("truncated")
            fields.append(block[pos : pos + size])
            pos += size
        raw_name, raw_value = fields
        try:
            name, value = raw_name.decode(), raw_value.decode()
        except UnicodeDecodeError:
            raise fail("not UTF-8") from None
        if not name or name != name.lower():
            raise fail(f"invalid header name {name!r}")
        if name in forbidden:
            raise fail(f"header {name!r} is not allowed")
        if name in out:
            raise fail(f"duplicate header {name!r}")
        out[name] = value
    if pos != len(block):
        raise fail("trailing bytes")
    return out


class SpdyConnection:
    """One SPDY/3.1 connection, either side."""

    def __init__(self, role: Role, *, max_chunk: int = DEFAULT_CHUNK) -> None:
        self.role = role
        self.max_chunk = max_chunk
        self._out: list[bytes] = []
        self._in = bytearray()
        self._deflate = zlib.compressobj(
            9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY
        )
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self.streams: dict[int, _Stream] = {}
        own = 1 if role is Role.CLIENT else 2
        self._next_stream_id = own
        self._next_ping_id = own
        self._last_peer_stream = 0
        self._error: RemoteProtocolError | None = None
        self.goaway_sent = False
        self.goaway_received = False

    # ---------------------------------------------------------------------------- output

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _control(self, kind: int, flags: int, body: bytes) -> None:
        self._out.append(_CONTROL.pack(0x8000 | VERSION, kind, (flags << 24) | len(body)) + body)

    def _compress(self, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
        block = encode_headers(headers)
        return self._deflate.compress(block) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def _own(self, stream_id: int) -> _Stream:
        stream = self.streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        if stream.local_closed:
            raise LocalProtocolError(f"stream {stream_id} is closed on this side")
        return stream

    def _close_local(self, stream_id: int, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[stream_id]

    def open_stream(
        self, headers: Mapping[str, str] | Iterable[tuple[str, str]] = (), *, fin: bool = False
    ) -> int:
        if self.goaway_sent or self.goaway_received:
            raise LocalProtocolError("no new streams after GOAWAY")
        stream_id = self._next_stream_id
        if stream_id > 0x7FFFFFFF:
            raise LocalProtocolError("stream ids exhausted")
        self._next_stream_id += 2
        body = _TWO.pack(stream_id, 0) + b"\x00\x00" + self._compress(headers)
        self._control(SYN_STREAM, FLAG_FIN if fin else 0, body)
        stream = _Stream(replied=True)  # ours: no SYN_REPLY owed
        self.streams[stream_id] = stream
        if fin:
            self._close_local(stream_id, stream)
        return stream_id

    def reply_stream(
        self,
        stream_id: int,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        *,
        fin: bool = False,
    ) -> None:
        stream = self._own(stream_id)
        if stream.replied:
            raise LocalProtocolError(f"stream {stream_id} was replied already")
        stream.replied = True
        self._control(
            SYN_REPLY, FLAG_FIN if fin else 0, _U32.pack(stream_id) + self._compress(headers)
        )
        if fin:
            self._close_local(stream_id, stream)

    def send_headers(
        self,
        stream_id: int,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        fin: bool = False,
    ) -> None:
        stream = self._own(stream_id)
        self._control(
            HEADERS, FLAG_FIN if fin else 0, _U32.pack(stream_id) + self._compress(headers)
        )
        if fin:
            self._close_local(stream_id, stream)

    def send_data(self, stream_id: int, data: bytes, *, fin: bool = False) -> None:
        """Queue ``data`` in frames of at most ``max_chunk`` bytes; ``fin`` ends our side."""
        stream = self._own(stream_id)
        view = memoryview(data)
        total, chunk = len(view), self.max_chunk
        out = self._out
        if total <= chunk:
            flags = FLAG_FIN if fin else 0
            out.append(_DATA.pack(stream_id, (flags << 24) | total))
            if total:
                out.append(data if isinstance(data, bytes) else bytes(view))
        else:
            for start in range(0, total, chunk):
                piece = view[start : start + chunk]
                last = start + chunk >= total
                flags = FLAG_FIN if (fin and last) else 0
                out.append(_DATA.pack(stream_id, (flags << 24) | len(piece)))
                out.append(bytes(piece))
        if fin:
            self._close_local(stream_id, stream)

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", fin=True)

    def reset_stream(self, stream_id: int, status: int = RstStatus.CANCEL) -> None:
        if status == 0:
            raise LocalProtocolError("RST_STREAM status 0 is invalid")
        self._control(RST_STREAM, 0, _TWO.pack(stream_id, status))
        self.streams.pop(stream_id, None)

    def ping(self, ping_id: int | None = None) -> int:
        if ping_id is None:
            ping_id = self._next_ping_id
            self._next_ping_id = self._next_ping_id + 2
            if self._next_ping_id > 0x7FFFFFFF:
                self._next_ping_id -= 0x7FFFFFFE
        self._control(PING, 0, _U32.pack(ping_id))
        return ping_id

    def goaway(self, status: int = GoAwayStatus.OK) -> None:
        if self.goaway_sent:
            return
        self.goaway_sent = True
        self._control(GOAWAY, 0, _TWO.pack(self._last_peer_stream, status))

    def send_settings(self, settings: Mapping[int, int], *, clear: bool = False) -> None:
        body = [_U32.pack(len(settings))]
        for sid, value in settings.items():
            body.append(_TWO.pack(sid & 0xFFFFFF, value))
        self._control(SETTINGS, 1 if clear else 0, b"".join(body))

    def send_window_update(self, stream_id: int, delta: int) -> None:
        self._control(WINDOW_UPDATE, 0, _TWO.pack(stream_id, delta))

    # ---------------------------------------------------------------------------- input

    def receive_eof(self) -> list[Event]:
        if self._error is not None:
            raise self._error
        return [ConnectionTerminated()]

    def receive_data(self, data: bytes) -> list[Event]:
        if self._error is not None:
            raise self._error
        buf = self._in
        buf += data
        events: list[Event] = []
        pos, end = 0, len(buf)
        try:
            while end - pos >= 8:
                first = buf[pos]
                (word,) = _U32.unpack_from(buf, pos + 4)
                flags, length = word >> 24, word & 0xFFFFFF
                if end - pos - 8 < length:
                    break
                start = pos + 8
                pos = start + length
                if first & 0x80:
                    (kind,) = struct.unpack_from(">H", buf, start - 6)
                    self._on_control(kind, flags, bytes(buf[start:pos]), events)
                else:
                    (sid,) = _U32.unpack_from(buf, start - 8)
                    self._on_data(sid, flags, buf, start, pos, events)
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise
        del buf[:pos]
        return events

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._error = exc
        self._in.clear()
        if not self.goaway_sent:
            self.goaway_sent = True
            self._control(GOAWAY, 0, _TWO.pack(self._last_peer_stream, exc.goaway_status))

    def _on_data(
        self, sid: int, flags: int, buf: bytearray, start: int, end: int, events: list[Event]
    ) -> None:
        if sid == 0:
            raise RemoteProtocolError("DATA frame on stream 0")
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            return  # spdystream drops it silently
        if end > start:
            events.append(DataReceived(sid, bytes(buf[start:end])))
        if flags & FLAG_FIN:
            self._close_remote(sid, stream, events)

    def _close_remote(self, sid: int, stream: _Stream, events: list[Event]) -> None:
        stream.remote_closed = True
        events.append(StreamEnded(sid))
        if stream.local_closed:
            del self.streams[sid]

    def _inflate_block(self, compressed: bytes) -> bytes:
        try:
            block = self._inflate.decompress(compressed, MAX_HEADER_BLOCK)
        except zlib.error as exc:
            raise RemoteProtocolError(f"header block does not inflate: {exc}") from None
        if self._inflate.unconsumed_tail:
            raise RemoteProtocolError("header block too large")
        return block

    def _on_control(self, kind: int, flags: int, body: bytes, events: list[Event]) -> None:
        n = len(body)
        if kind == SYN_STREAM:
            if n < 10:
                raise RemoteProtocolError("SYN_STREAM too short")
            sid = _U32.unpack_from(body, 0)[0] & 0x7FFFFFFF
            headers = decode_headers(self._inflate_block(body[10:]))
            if self.goaway_sent or self.goaway_received:
                return
            if sid == 0 or sid <= self._last_peer_stream:
                self._control(RST_STREAM, 0, _TWO.pack(sid, RstStatus.PROTOCOL_ERROR))
                return
            self._last_peer_stream = sid
            stream = _Stream(replied=False)
            self.streams[sid] = stream
            if flags & FLAG_UNIDIRECTIONAL:
                stream.local_closed = True
            events.append(
                StreamOpened(
                    sid, headers, bool(flags & FLAG_FIN), bool(flags & FLAG_UNIDIRECTIONAL)
                )
            )
            if flags & FLAG_FIN:
                self._close_remote(sid, stream, events)
        elif kind in (SYN_REPLY, HEADERS):
            if n < 4:
                raise RemoteProtocolError("frame too short")
            sid = _U32.unpack_from(body, 0)[0] & 0x7FFFFFFF
            forbidden = _FORBIDDEN - {"host"} if kind == SYN_REPLY else _FORBIDDEN
            headers = decode_headers(self._inflate_block(body[4:]), forbidden=forbidden)
            known = self.streams.get(sid)
            if known is None:
                return
            stream = known
            if kind == SYN_REPLY:
                events.append(StreamReplied(sid, headers))
            else:
                events.append(HeadersReceived(sid, headers))
            if flags & FLAG_FIN and not stream.remote_closed:
                self._close_remote(sid, stream, events)
        elif kind == RST_STREAM:
            if n != 8:
                raise RemoteProtocolError("RST_STREAM length must be 8")
            sid, status = _TWO.unpack(body)
            if status == 0:
                raise RemoteProtocolError("RST_STREAM status 0")
            sid &= 0x7FFFFFFF
            if self.streams.pop(sid, None) is not None:
                events.append(StreamReset(sid, status))
        elif kind == SETTINGS:
            if n < 4:
                raise RemoteProtocolError("SETTINGS too short")
            (count,) = _U32.unpack_from(body, 0)
            if n != 4 + 8 * count:
                raise RemoteProtocolError("SETTINGS length does not match its count")
            settings = {}
            for i in range(count):
                word, value = _TWO.unpack_from(body, 4 + 8 * i)
                settings[word & 0xFFFFFF] = (word >> 24, value)
            events.append(SettingsReceived(settings, bool(flags & 1)))
        elif kind == PING:
            if n != 4 or flags:
                raise RemoteProtocolError("bad PING frame")
            (ping_id,) = _U32.unpack(body)
            own_parity = 1 if self.role is Role.CLIENT else 0
            if ping_id % 2 == own_parity:
                events.append(PingAck(ping_id))
            else:
                self._control(PING, 0, body)
                events.append(PingReceived(ping_id))
        elif kind == GOAWAY:
            if n != 8 or flags:
                raise RemoteProtocolError("bad GOAWAY frame")
            last, status = _TWO.unpack(body)
            self.goaway_received = True
            events.append(GoAwayReceived(last & 0x7FFFFFFF, status))
        elif kind == WINDOW_UPDATE:
            if n != 8 or flags:
                raise RemoteProtocolError("bad WINDOW_UPDATE frame")
            sid, delta = _TWO.unpack(body)
            events.append(WindowUpdateReceived(sid & 0x7FFFFFFF, delta & 0x7FFFFFFF))
        else:
            raise RemoteProtocolError(f"unknown control frame type {kind}")

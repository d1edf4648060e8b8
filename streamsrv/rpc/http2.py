"""The part of HTTP/2 (RFC 9113) that gRPC's calls need, both ends, without I/O (docs/cri.md,
"The gRPC server" and "The gRPC client").

:class:`Http2Connection` holds what a client connection and a server connection share:
frames in and out, SETTINGS, PING, WINDOW_UPDATE, PRIORITY, header blocks with their
CONTINUATIONs decoded by :mod:`~streamsrv.rpc.hpackdec` (RFC 7541, with its dynamic table and
the ``hpack`` package's Huffman code), flow control of what we send, and a GOAWAY saying why
when the peer breaks the protocol. The gRPC pieces both ends use are here too: the 5-byte
message prefix, status codes, ``grpc-timeout`` and ``grpc-message`` (``PROTOCOL-HTTP2.md`` in
grpc/grpc).

The header blocks we send are literals without indexing, never Huffman-coded, so we keep no
encoder state and the peer's table size does not matter to us.
"""

from __future__ import annotations

import enum
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from .hpackdec import DecodeError, HeaderDecoder, HeaderListTooLarge

#: Each stream's receive window, and the connection's.
WINDOW: Final = 1 << 20

# gRPC status codes (grpc/grpc doc/statuscodes.md).
OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
INVALID_ARGUMENT: Final = 3
DEADLINE_EXCEEDED: Final = 4
NOT_FOUND: Final = 5
PERMISSION_DENIED: Final = 7
RESOURCE_EXHAUSTED: Final = 8
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14
UNAUTHENTICATED: Final = 16


class Status(enum.IntEnum):
    """gRPC's status codes as an enum (``Status.NOT_FOUND == 5``), for code that keeps one."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


STATUS_NAMES: Final = tuple(code.name for code in Status)

# HTTP/2 error codes (RFC 9113 section 7).
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0, 1, 2, 3, 4, 5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# SETTINGS parameters
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT, INITIAL_WINDOW_SIZE = 1, 2, 3, 4
MAX_FRAME_SIZE, MAX_HEADER_LIST = 5, 6
MAX_FRAME: Final = 16384  # what we take (the default; we do not raise it)
MAX_WINDOW: Final = (1 << 31) - 1
HEADER: Final = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id
U32: Final = struct.Struct(">I")
PREFIX: Final = struct.Struct(">BI")  # gRPC: compressed flag, message length
_TIMEOUT = re.compile(rb"(\d{1,8})([HMSmun])")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
#: A grpc-message longer than this is cut: every header block we send fits one frame.
MAX_STATUS_MESSAGE: Final = 4096


def hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
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


def literal(name: bytes | int, value: bytes) -> bytes:
    """A header field as a literal without indexing (RFC 7541 6.2.2), the name a static-table
    index or a literal; never Huffman-coded."""
    if isinstance(name, int):
        head = hpack_int(name, 4, 0)
    else:
        head = b"\x00" + hpack_int(len(name), 7, 0) + name
    return head + hpack_int(len(value), 7, 0) + value


def parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout``'s value in seconds (None when it does not parse)."""
    m = _TIMEOUT.fullmatch(value)
    return None if m is None else int(m.group(1)) * _UNITS[m.group(2)]


def format_timeout(seconds: float) -> bytes:
    """``grpc-timeout`` for ``seconds`` from now: the finest unit whose 8 digits hold it,
    rounded up (never 0: a deadline already past is sent as 1 ns)."""
    seconds = max(seconds, 1e-9)
    for unit, scale in ((b"n", 1e9), (b"u", 1e6), (b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60)):
        value = math.ceil(seconds * scale)
        if value < 100_000_000:
            return b"%d%s" % (value, unit)
    return b"%dH" % min(math.ceil(seconds / 3600), 99_999_999)


def encode_message(status: str) -> bytes:
    """``grpc-message``: percent-encoded UTF-8, every byte outside printable ASCII and '%',
    cut to :data:`MAX_STATUS_MESSAGE` bytes without splitting an escape."""
    out = b"".join(
        bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
        for b in status.encode("utf-8", "replace")
    )
    if len(out) > MAX_STATUS_MESSAGE:
        cut = MAX_STATUS_MESSAGE
        percent = out.rfind(b"%", cut - 2, cut)
        out = out[: percent if percent >= 0 else cut]
    return out


def decode_message(value: bytes) -> str:
    """A ``grpc-message`` as text (a bad escape is kept as it is, a bad UTF-8 sequence
    replaced)."""
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), value).decode("utf-8", "replace")


class ConnectionFailed(Exception):
    """The peer broke HTTP/2: a GOAWAY saying why waits in :meth:`Http2Connection.data_to_send`
    (unless it never spoke HTTP/2); send it and close the connection. ``events`` are those the
    same input gave before the fault (a client's answers that had all come)."""

    def __init__(self, message: str, events: list[object] | None = None) -> None:
        super().__init__(message)
        self.events = events or []


class Failed(Exception):
    """Raised inside a connection when the peer broke HTTP/2: fail it with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Stream:
    """What both ends keep per stream: our send window and the bytes it has no room for yet."""

    send_window: int
    pending: memoryview | None = None
    end_stream: bool = False  # the last of the pending bytes ends our half of the stream
    unacked: int = 0  # bytes received on it, not yet given back with a WINDOW_UPDATE


class Http2Connection:
    """One HTTP/2 connection's common half. A subclass defines what its streams are
    (``_streams``) and what HEADERS, DATA, RST_STREAM and GOAWAY mean to them, and
    :meth:`_sent`, called when a stream's pending bytes have all gone out."""

    #: who the other end is, in error messages
    peer = "peer"

    def __init__(self, settings: Iterable[tuple[int, int]], *, max_header_list: int) -> None:
        self._out: list[bytes] = []
        self._in = bytearray()
        self._settings_seen = False  # the peer's first SETTINGS has arrived
        self._decoder = HeaderDecoder(max_header_list)
        self._max_header_list = max_header_list
        self._streams: dict[int, Stream] = {}
        self._continuing: tuple[int, int, bytearray] | None = None  # sid, flags, block so far
        self._peer_window = 65535  # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self._peer_max_frame = 16384
        self._send_window = 65535  # the connection's, for what we send
        self._recv_unacked = 0  # received on the connection, not yet given back
        self._closed = False
        payload = b"".join(struct.pack(">HI", key, value) for key, value in settings)
        self._frame(SETTINGS, 0, 0, payload)
        self._frame(WINDOW_UPDATE, 0, 0, U32.pack(WINDOW - 65535))

    @property
    def settings_seen(self) -> bool:
        """The peer's first SETTINGS has come (its limits are known)."""
        return self._settings_seen

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes = b"") -> None:
        n = len(payload)
        self._out.append(HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, sid))
        if payload:
            self._out.append(payload)

    # ------------------------------------------------------------------------------ input

    def _frames(self, pos: int, out: list[object]) -> None:
        """Every whole frame in the input from ``pos`` on, then the rest kept for later."""
        buf = self._in
        end = len(buf)
        while end - pos >= 9:
            hi, lo, kind, flags, sid = HEADER.unpack_from(buf, pos)
            length = (hi << 16) | lo
            if length > MAX_FRAME:
                raise Failed(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            if end - pos - 9 < length:
                break
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            self._on_frame(kind, flags, sid & 0x7FFFFFFF, payload, out)
        del buf[:pos]

    def _on_frame(self, kind: int, flags: int, sid: int, payload: bytes, out: list[object]) -> None:
        if not self._settings_seen:
            if kind != SETTINGS or flags & ACK:
                raise Failed(PROTOCOL_ERROR, f"the {self.peer}'s first frame is not SETTINGS")
            self._settings_seen = True
        if self._continuing is not None and kind != CONTINUATION:
            raise Failed(PROTOCOL_ERROR, "a frame between HEADERS and its CONTINUATION")
        if kind == DATA:
            if sid == 0:
                raise Failed(PROTOCOL_ERROR, "DATA on stream 0")
            self._on_data(flags, sid, payload, out)
        elif kind == HEADERS:
            if sid == 0:
                raise Failed(PROTOCOL_ERROR, "HEADERS on stream 0")
            block = self._unpad(flags, payload)
            if flags & PRIORITY_FLAG:
                if len(block) < 5:
                    raise Failed(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
                block = block[5:]
            if flags & END_HEADERS:
                self._on_headers(sid, flags, block, out)
            else:
                self._continuing = (sid, flags, bytearray(block))
        elif kind == CONTINUATION:
            if self._continuing is None or self._continuing[0] != sid:
                raise Failed(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
            _, first, pieces = self._continuing
            pieces += payload
            if len(pieces) > 2 * self._max_header_list:
                raise Failed(ENHANCE_YOUR_CALM, "a header block over the limit")
            if flags & END_HEADERS:
                self._continuing = None
                self._on_headers(sid, first, bytes(pieces), out)
        elif kind == RST_STREAM:
            if len(payload) != 4:
                raise Failed(FRAME_SIZE_ERROR, "RST_STREAM is not 4 bytes")
            if sid == 0:
                raise Failed(PROTOCOL_ERROR, "RST_STREAM of stream 0")
            self._on_reset(sid, U32.unpack(payload)[0], out)
        elif kind == SETTINGS:
            self._on_settings(flags, sid, payload)
        elif kind == PING:
            if len(payload) != 8 or sid != 0:
                raise Failed(FRAME_SIZE_ERROR if sid == 0 else PROTOCOL_ERROR, "a bad PING")
            if not flags & ACK:
                self._frame(PING, ACK, 0, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif kind == PRIORITY:
            if sid == 0 or len(payload) != 5:
                raise Failed(PROTOCOL_ERROR, "a bad PRIORITY")
        elif kind == GOAWAY:
            if sid != 0:
                raise Failed(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise Failed(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            self._on_goaway(U32.unpack_from(payload)[0] & 0x7FFFFFFF, out)
        elif kind == PUSH_PROMISE:
            raise Failed(PROTOCOL_ERROR, f"PUSH_PROMISE from the {self.peer}")
        # any other type is ignored (RFC 9113 5.5)

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise Failed(PROTOCOL_ERROR, "padding as long as the frame")
        return payload[1 : len(payload) - payload[0]]

    def _decode(self, block: bytes) -> dict[bytes, bytes]:
        """A header block's fields (every block must be decoded: HPACK's table depends on
        it)."""
        try:
            return dict(self._decoder.decode(block))
        except HeaderListTooLarge as exc:
            raise Failed(ENHANCE_YOUR_CALM, f"headers over the limit: {exc}") from None
        except DecodeError as exc:
            raise Failed(COMPRESSION_ERROR, f"undecodable headers: {exc}") from None

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise Failed(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise Failed(FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise Failed(FRAME_SIZE_ERROR, "SETTINGS not in 6-byte entries")
        for key, value in struct.iter_unpack(">HI", payload):
            if key == ENABLE_PUSH and value > 1:
                raise Failed(PROTOCOL_ERROR, "ENABLE_PUSH above 1")
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise Failed(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1")
                delta, self._peer_window = value - self._peer_window, value
                for st in self._streams.values():
                    st.send_window += delta
            elif key == MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    raise Failed(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self._peer_max_frame = value
            else:
                self._on_setting(key, value)
        self._frame(SETTINGS, ACK, 0)
        self._flush_pending()

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise Failed(FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes")
        increment = U32.unpack(payload)[0] & 0x7FFFFFFF
        if increment == 0:
            raise Failed(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
        if sid == 0:
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise Failed(FLOW_CONTROL_ERROR, "the connection's window above 2^31-1")
            self._flush_pending()
            return
        st = self._streams.get(sid)
        if st is None:
            return  # a stream we are done with: nothing to send on it
        st.send_window += increment
        if st.send_window > MAX_WINDOW:
            raise Failed(FLOW_CONTROL_ERROR, "a stream's window above 2^31-1")
        if st.pending is not None:
            self._send(sid, st)

    def _count_received(self, n: int) -> None:
        """Connection-level flow control of what we receive: given back as soon as half the
        window is used (each end bounds what it holds per stream by other means)."""
        self._recv_unacked += n
        if self._recv_unacked >= WINDOW // 2:
            self._frame(WINDOW_UPDATE, 0, 0, U32.pack(self._recv_unacked))
            self._recv_unacked = 0

    def _give_back(self, sid: int, st: Stream) -> None:
        """A stream's receive window, given back once half of it is used."""
        if st.unacked >= WINDOW // 2:
            self._frame(WINDOW_UPDATE, 0, sid, U32.pack(st.unacked))
            st.unacked = 0

    # ------------------------------------------------------------------------------ hooks

    def _on_setting(self, key: int, value: int) -> None:
        """A SETTINGS parameter the common part does not handle."""

    def _on_data(self, flags: int, sid: int, payload: bytes, out: list[object]) -> None:
        raise NotImplementedError

    def _on_headers(self, sid: int, flags: int, block: bytes, out: list[object]) -> None:
        raise NotImplementedError

    def _on_reset(self, sid: int, code: int, out: list[object]) -> None:
        raise NotImplementedError

    def _on_goaway(self, last_sid: int, out: list[object]) -> None:
        """The peer will take no stream above ``last_sid``."""

    def _sent(self, sid: int, st: Stream) -> None:
        """All of ``st``'s pending bytes went out (the last with END_STREAM if
        ``st.end_stream``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ output

    def _send(self, sid: int, st: Stream) -> None:
        data = st.pending
        assert data is not None
        while data:
            room = min(self._send_window, st.send_window, self._peer_max_frame)
            if room <= 0:
                st.pending = data
                return
            chunk, data = data[:room], data[room:]
            last = END_STREAM if st.end_stream and not data else 0
            self._frame(DATA, last, sid, chunk.tobytes())
            self._send_window -= len(chunk)
            st.send_window -= len(chunk)
        st.pending = None
        self._sent(sid, st)

    def _flush_pending(self) -> None:
        for sid, st in list(self._streams.items()):
            if st.pending is not None:
                self._send(sid, st)

    def _reset(self, sid: int, code: int) -> None:
        self._frame(RST_STREAM, 0, sid, U32.pack(code))

"""SPDY/3.1 as moby/spdystream speaks it (docs/protocol.md §6): a sans-IO, role-symmetric codec.

:class:`SpdyConnection` follows h2's shape. :meth:`~SpdyConnection.receive_data` takes bytes in
any chunking and returns events; the ``send_*``/``open_stream``/``reply_stream``/... calls queue
frames that :meth:`~SpdyConnection.data_to_send` drains. Nothing here touches a socket, a clock
or an event loop.

What the codec does, and where it follows spdystream rather than the SPDY/3.1 draft:

* **No flow control** (§6.5). spdystream never sends WINDOW_UPDATE or SETTINGS and ignores both;
  they are parsed, validated and reported here, never enforced.
* **Header blocks** (§6.2, §6.3) use one zlib context per direction for the whole connection,
  with the SPDY/3 dictionary, and every block is sync-flushed. Received header values are
  ``dict[str, str]``: a name that carries several values keeps them NUL-joined, exactly as on
  the wire (Kubernetes only uses the single-valued ``streamtype``, ``port`` and ``requestid``).
  A name sent twice is merged the same way (in linear time). An inflated block larger than
  ``max_header_block_size`` (64 KiB by default) is fatal, so a decompression bomb costs at most
  that much memory, and so is a block that declares more than ``max_header_count`` pairs (100
  by default; kubectl sends 3 to 5); the declared count is checked before any pair is parsed.
* **Frame size**: a frame whose 8-byte header declares more than ``max_frame_size`` bytes
  (1 MiB by default; kubectl writes DATA of at most 32 KiB) is fatal as soon as that header
  arrives, so a peer cannot make us hold a large partial frame. :attr:`SpdyConnection.buffered`
  tells how many bytes of an incomplete frame are held.
* **Version** bits of received control frames are not checked (spdystream does not check them);
  sent frames carry version 3.
* **Stream ids** (§6.4): a peer SYN_STREAM whose id is not above the last accepted one, has the
  wrong parity or is larger than 2**31-1 is answered with RST_STREAM(PROTOCOL_ERROR) and
  produces no event; the connection goes on. Parity is checked here (spdystream does not) so a
  peer can never take over one of our ids. After we sent GOAWAY new SYN_STREAMs are ignored.
* **Dropped frames** (§6.4): DATA, HEADERS and SYN_REPLY for unknown or closed streams, DATA and
  HEADERS on a stream we opened before its SYN_REPLY arrived, and zero-length DATA without FIN
  are dropped silently, never fatal. One deliberate difference: on a stream the *peer* opened,
  DATA is delivered even before we replied, because a sans-IO caller only sees
  :class:`StreamOpened` after the whole chunk was parsed (spdystream's Kubernetes wrapper
  replies before the stream's next frame is handled, so a Go peer sees the same outcome).
* **GOAWAY received** (§6.6): spdystream stops reading at once, so every byte after a received
  GOAWAY is discarded.
* **Pings**: a PING with the peer's parity is echoed (queued) and reported as
  :class:`PingReceived`; one with our parity is reported as :class:`PingAck`.
* **HEADERS** frames are only ever sent through :meth:`SpdyConnection.send_headers`; never send
  them to kubectl (its spdystream blocks a worker on them).

Each stream follows :data:`STREAM_TRANSITIONS`, a ``(StreamState, StreamInput)`` table: a send
that is not in the table raises :class:`LocalProtocolError`; every receive input is in it and
either delivers an event or drops the frame. A stream is forgotten once both sides are closed or
it is reset.

Errors: :class:`ProtocolError` is a :class:`streamsrv.errors.ProtocolError`.
:meth:`SpdyConnection.receive_data` raises only :class:`RemoteProtocolError`. Before it
raises, a GOAWAY(PROTOCOL_ERROR) is queued (unless a GOAWAY was sent already), so the caller
should flush :meth:`~SpdyConnection.data_to_send` and close the transport; the events parsed
before the bad frame in that call are in the exception's ``events``. From then on
``receive_data`` and ``receive_eof`` raise :class:`RemoteProtocolError` again and every send
raises :class:`LocalProtocolError`. API misuse (writing on a closed stream, a bad ping id, a
forbidden header name, ...) raises :class:`LocalProtocolError` and queues nothing.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Final, TypeAlias

from ..errors import ProtocolError as _BaseProtocolError

__all__ = [
    "DICTIONARY",
    "STREAM_TRANSITIONS",
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "GoAwayReceived",
    "GoAwayStatus",
    "HeadersReceived",
    "LocalProtocolError",
    "PingAck",
    "PingReceived",
    "ProtocolError",
    "RemoteProtocolError",
    "Role",
    "RstStatus",
    "SettingsReceived",
    "SpdyConnection",
    "StreamEnded",
    "StreamInput",
    "StreamOpened",
    "StreamReplied",
    "StreamReset",
    "StreamState",
    "WindowUpdateReceived",
    "decode_header_block",
    "encode_header_block",
]

DICTIONARY: Final = resources.files(__package__).joinpath("spdy3_dictionary.bin").read_bytes()
"""The SPDY/3 header dictionary (1423 bytes, Adler-32 0xE3C6A7C2), docs/protocol.md §6.3."""

VERSION: Final = 3
MAX_FRAME_LENGTH: Final = 0xFFFFFF  # 24-bit length field (spdystream MaxDataLength)
MAX_STREAM_ID: Final = 0x7FFFFFFF
DEFAULT_MAX_DATA_FRAME_SIZE: Final = 32 * 1024  # what kubectl writes
DEFAULT_MAX_HEADER_BLOCK_SIZE: Final = 64 * 1024  # inflated; kubectl's blocks are ~50 bytes
DEFAULT_MAX_HEADER_COUNT: Final = 100  # name/value pairs declared by one block
DEFAULT_MAX_FRAME_SIZE: Final = 1 << 20  # the largest frame accepted from the peer
MIN_MAX_FRAME_SIZE: Final = 1024

# Control frame types (docs/protocol.md §6.1). 5 (NOOP) and 10 (CREDENTIAL) are unknown, as in
# spdystream, and so fatal.
SYN_STREAM: Final = 1
SYN_REPLY: Final = 2
RST_STREAM: Final = 3
SETTINGS: Final = 4
PING: Final = 6
GOAWAY: Final = 7
HEADERS: Final = 8
WINDOW_UPDATE: Final = 9

FLAG_FIN: Final = 0x01
FLAG_UNIDIRECTIONAL: Final = 0x02  # SYN_STREAM
FLAG_CLEAR_SETTINGS: Final = 0x01  # SETTINGS

#: What :meth:`SpdyConnection.get_buffer` hands out when asked for no particular size.
READ_SIZE = 64 * 1024
_HEADER = struct.Struct(">II")  # both frame kinds: first word, flags << 24 | length
_CONTROL = struct.Struct(">HHI")  # 0x8000 | version, type, flags << 24 | length
_U32 = struct.Struct(">I")
_TWO = struct.Struct(">II")

# Names spdystream refuses (InvalidHeaderPresent), docs/protocol.md §6.2.
REQUEST_FORBIDDEN: Final = frozenset(
    {"connection", "host", "keep-alive", "proxy-connection", "transfer-encoding"}
)
RESPONSE_FORBIDDEN: Final = REQUEST_FORBIDDEN - {"host"}


class Role(enum.Enum):
    """Which end of the connection this codec is: it fixes the parity of our ids."""

    CLIENT = "client"  # odd stream and ping ids
    SERVER = "server"  # even stream and ping ids


class RstStatus(enum.IntEnum):
    """RST_STREAM status codes (docs/protocol.md §6.1)."""

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
    """GOAWAY status codes (docs/protocol.md §6.1); Kubernetes sends OK."""

    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


# ---------------------------------------------------------------------------------- errors


class ProtocolError(_BaseProtocolError):
    """Base of the codec's errors (a :class:`streamsrv.errors.ProtocolError`). Abstract: raise
    one of its two subclasses."""

    def __init__(self, message: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError(
                "ProtocolError is abstract: raise LocalProtocolError or RemoteProtocolError"
            )
        super().__init__(message)


class LocalProtocolError(ProtocolError):
    """This side misused the API (e.g. wrote on a stream it had closed). Nothing was queued."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the connection is over.

    Attributes:
        goaway_status: the GOAWAY status queued for the peer (PROTOCOL_ERROR).
        events: the events parsed before the bad frame in the failing ``receive_data`` call.
    """

    def __init__(self, message: str, *, goaway_status: int = GoAwayStatus.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.goaway_status = goaway_status
        self.events: tuple[Event, ...] = ()


# ---------------------------------------------------------------------------------- events

Headers: TypeAlias = dict[str, str]
"""A received header block: lowercase names, several values of one name NUL-joined."""

HeadersInput: TypeAlias = Mapping[str, str] | Iterable[tuple[str, str]]
"""Headers to send: a mapping or ``(name, value)`` pairs (a repeated name is NUL-joined)."""


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened a stream (SYN_STREAM). Answer with ``reply_stream`` or ``reset_stream``.

    A FIN on the SYN_STREAM is reported as a :class:`StreamEnded` right after this event.
    ``unidirectional`` streams take no reply and no data from us.
    """

    stream_id: int
    headers: Headers
    unidirectional: bool = False


@dataclass(frozen=True, slots=True)
class StreamReplied:
    """The peer accepted a stream we opened (SYN_REPLY)."""

    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class HeadersReceived:
    """A HEADERS frame on an open stream."""

    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class DataReceived:
    """The payload of one non-empty DATA frame."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the stream (FIN on SYN_STREAM, SYN_REPLY, HEADERS or DATA)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer reset the stream (RST_STREAM); it is gone on both sides."""

    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A ping from the peer; its echo is already queued."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class PingAck:
    """A ping with our parity came back: the answer to one of ours."""

    ping_id: int


@dataclass(frozen=True, slots=True)
class SettingsReceived:
    """A SETTINGS frame (reported, not enforced). ``settings`` maps id to value; the
    per-entry persistence flags are dropped."""

    settings: dict[int, int]
    clear: bool = False


@dataclass(frozen=True, slots=True)
class WindowUpdateReceived:
    """A WINDOW_UPDATE frame (reported, not enforced: SPDY here has no flow control)."""

    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer is done; every later byte from it is discarded (spdystream stops reading)."""

    last_good_stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The byte stream ended (``receive_eof``). ``unparsed_bytes`` of an incomplete frame were
    left in the buffer."""

    unparsed_bytes: int = 0


Event: TypeAlias = (
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

# ---------------------------------------------------------------------------- stream states


class StreamState(enum.Enum):
    """Where one stream stands, seen from this side."""

    SYN_SENT = "syn-sent"  # we opened it, no SYN_REPLY yet
    SYN_SENT_LOCAL_CLOSED = "syn-sent, local closed"
    SYN_RECEIVED = "syn-received"  # the peer opened it, we owe a SYN_REPLY
    SYN_RECEIVED_REMOTE_CLOSED = "syn-received, remote closed"
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed (local)"  # we sent FIN
    HALF_CLOSED_REMOTE = "half-closed (remote)"  # the peer sent FIN
    CLOSED = "closed"  # never stored: a closed stream is forgotten


class StreamInput(enum.Enum):
    """What can happen to a stream; a FIN flag is its own input after the frame's own."""

    SEND_REPLY = "send SYN_REPLY"
    SEND_DATA = "send DATA/HEADERS"
    SEND_FIN = "send FIN"
    SEND_RESET = "send RST_STREAM"
    RECV_REPLY = "receive SYN_REPLY"
    RECV_DATA = "receive DATA/HEADERS"
    RECV_FIN = "receive FIN"
    RECV_RESET = "receive RST_STREAM"


_S, _I = StreamState, StreamInput
_DELIVER, _DROP = True, False

STREAM_TRANSITIONS: Final[dict[tuple[StreamState, StreamInput], tuple[StreamState, bool]]] = {
    # We opened it. spdystream drops DATA/HEADERS (and their FIN) until the SYN_REPLY.
    (_S.SYN_SENT, _I.SEND_DATA): (_S.SYN_SENT, _DELIVER),
    (_S.SYN_SENT, _I.SEND_FIN): (_S.SYN_SENT_LOCAL_CLOSED, _DELIVER),
    (_S.SYN_SENT, _I.RECV_REPLY): (_S.OPEN, _DELIVER),
    (_S.SYN_SENT, _I.RECV_DATA): (_S.SYN_SENT, _DROP),
    (_S.SYN_SENT, _I.RECV_FIN): (_S.SYN_SENT, _DROP),
    (_S.SYN_SENT_LOCAL_CLOSED, _I.RECV_REPLY): (_S.HALF_CLOSED_LOCAL, _DELIVER),
    (_S.SYN_SENT_LOCAL_CLOSED, _I.RECV_DATA): (_S.SYN_SENT_LOCAL_CLOSED, _DROP),
    (_S.SYN_SENT_LOCAL_CLOSED, _I.RECV_FIN): (_S.SYN_SENT_LOCAL_CLOSED, _DROP),
    # The peer opened it: we reply (or reset) before we may write; its data is delivered.
    (_S.SYN_RECEIVED, _I.SEND_REPLY): (_S.OPEN, _DELIVER),
    (_S.SYN_RECEIVED, _I.RECV_REPLY): (_S.SYN_RECEIVED, _DROP),
    (_S.SYN_RECEIVED, _I.RECV_DATA): (_S.SYN_RECEIVED, _DELIVER),
    (_S.SYN_RECEIVED, _I.RECV_FIN): (_S.SYN_RECEIVED_REMOTE_CLOSED, _DELIVER),
    (_S.SYN_RECEIVED_REMOTE_CLOSED, _I.SEND_REPLY): (_S.HALF_CLOSED_REMOTE, _DELIVER),
    (_S.SYN_RECEIVED_REMOTE_CLOSED, _I.RECV_REPLY): (_S.SYN_RECEIVED_REMOTE_CLOSED, _DROP),
    (_S.SYN_RECEIVED_REMOTE_CLOSED, _I.RECV_DATA): (_S.SYN_RECEIVED_REMOTE_CLOSED, _DROP),
    (_S.SYN_RECEIVED_REMOTE_CLOSED, _I.RECV_FIN): (_S.SYN_RECEIVED_REMOTE_CLOSED, _DROP),
    # Both sides talking.
    (_S.OPEN, _I.SEND_DATA): (_S.OPEN, _DELIVER),
    (_S.OPEN, _I.SEND_FIN): (_S.HALF_CLOSED_LOCAL, _DELIVER),
    (_S.OPEN, _I.RECV_REPLY): (_S.OPEN, _DROP),  # a second SYN_REPLY is ignored
    (_S.OPEN, _I.RECV_DATA): (_S.OPEN, _DELIVER),
    (_S.OPEN, _I.RECV_FIN): (_S.HALF_CLOSED_REMOTE, _DELIVER),
    (_S.HALF_CLOSED_LOCAL, _I.RECV_REPLY): (_S.HALF_CLOSED_LOCAL, _DROP),
    (_S.HALF_CLOSED_LOCAL, _I.RECV_DATA): (_S.HALF_CLOSED_LOCAL, _DELIVER),
    (_S.HALF_CLOSED_LOCAL, _I.RECV_FIN): (_S.CLOSED, _DELIVER),
    (_S.HALF_CLOSED_REMOTE, _I.SEND_DATA): (_S.HALF_CLOSED_REMOTE, _DELIVER),
    (_S.HALF_CLOSED_REMOTE, _I.SEND_FIN): (_S.CLOSED, _DELIVER),
    (_S.HALF_CLOSED_REMOTE, _I.RECV_REPLY): (_S.HALF_CLOSED_REMOTE, _DROP),
    (_S.HALF_CLOSED_REMOTE, _I.RECV_DATA): (_S.HALF_CLOSED_REMOTE, _DROP),
    (_S.HALF_CLOSED_REMOTE, _I.RECV_FIN): (_S.HALF_CLOSED_REMOTE, _DROP),
    # A reset, either way, ends every live stream.
    **{
        (state, inp): (_S.CLOSED, _DELIVER)
        for state in _S
        if state is not _S.CLOSED
        for inp in (_I.SEND_RESET, _I.RECV_RESET)
    },
}
"""``(state, input) -> (next state, deliver)``. A missing send pair is a LocalProtocolError;
every receive pair of a live state is present, ``deliver=False`` meaning "drop the frame"."""


# ---------------------------------------------------------------------------- header blocks


def _merge_headers(headers: HeadersInput) -> dict[str, list[str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    merged: dict[str, list[str]] = {}
    for name, value in items:
        merged.setdefault(name.lower(), []).append(value)
    return merged


def _encode_merged(merged: dict[str, list[str]]) -> bytes:
    parts = [_U32.pack(len(merged))]
    try:
        for name, values in merged.items():
            raw_name = name.encode("utf-8", "surrogateescape")
            raw_value = "\x00".join(values).encode("utf-8", "surrogateescape")
            parts += (_U32.pack(len(raw_name)), raw_name, _U32.pack(len(raw_value)), raw_value)
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"header cannot be encoded: {exc}") from None
    return b"".join(parts)


def encode_header_block(headers: HeadersInput) -> bytes:
    """The uncompressed SPDY/3 name/value block (docs/protocol.md §6.2).

    ``u32 count`` then ``u32 len, name, u32 len, value`` per pair. Names are lowercased (as
    spdystream's writer does) and a repeated name has its values NUL-joined in order.

    Raises:
        LocalProtocolError: a name or value cannot be encoded.
    """
    return _encode_merged(_merge_headers(headers))


def _text_at(block: bytes, pos: int, end: int) -> tuple[str, int]:
    """The length-prefixed text at ``pos`` of a header block, and the position after it."""
    if end - pos < 4:
        raise RemoteProtocolError("header block is truncated")
    (size,) = _U32.unpack_from(block, pos)
    pos += 4
    if end - pos < size:
        raise RemoteProtocolError("header block is truncated")
    return block[pos : pos + size].decode("utf-8", "surrogateescape"), pos + size


def decode_header_block(
    block: bytes,
    forbidden: frozenset[str] = REQUEST_FORBIDDEN,
    *,
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
) -> Headers:
    """Parse an inflated name/value block (docs/protocol.md §6.2), as spdystream's reader does.

    Text is UTF-8 with ``surrogateescape`` so any bytes decode (Go strings are bytes). The
    values of a repeated name are collected and joined once, so the cost is linear in the
    size of the block.

    Args:
        block: the whole inflated block of one frame.
        forbidden: names whose presence is fatal (``REQUEST_FORBIDDEN`` for SYN_STREAM,
            ``RESPONSE_FORBIDDEN`` for SYN_REPLY).
        max_header_count: the most name/value pairs the block may declare; the declared count
            is checked before any pair is parsed.

    Returns:
        The headers; a name seen twice keeps both values NUL-joined.

    Raises:
        RemoteProtocolError: more pairs declared than ``max_header_count``, truncated or
            trailing bytes, a name with uppercase letters, or a forbidden name.
    """
    end = len(block)
    if end < 4:
        raise RemoteProtocolError("header block is truncated")
    (count,) = _U32.unpack_from(block, 0)
    if count > max_header_count:
        raise RemoteProtocolError(
            f"header block declares {count} pairs, more than max_header_count ({max_header_count})"
        )
    pos = 4
    collected: dict[str, list[str]] = {}
    for _ in range(count):
        name, pos = _text_at(block, pos, end)
        value, pos = _text_at(block, pos, end)
        if name != name.lower():
            raise RemoteProtocolError(f"header name {name!r} is not lowercase")
        if name in forbidden:
            raise RemoteProtocolError(f"header {name!r} is not allowed here")
        values = collected.get(name)
        if values is None:
            collected[name] = [value]
        else:
            values.append(value)
    if pos != end:
        raise RemoteProtocolError("header block has trailing bytes")
    return {
        name: values[0] if len(values) == 1 else "\x00".join(values)
        for name, values in collected.items()
    }


# ---------------------------------------------------------------------------- the connection


def _check_control_header(kind: int, flags: int, length: int) -> None:
    """Checks that need only the 8-byte header, so a bad frame fails before its body arrives.

    docs/protocol.md §6.1: fixed lengths, zero flags where spdystream demands them, known types.
    """
    if kind == SYN_STREAM:
        ok = length > 10  # 10 fixed bytes, then a non-empty compressed block
    elif kind in (SYN_REPLY, HEADERS):
        ok = length > 4
    elif kind == RST_STREAM:
        ok = length == 8
    elif kind == SETTINGS:
        ok = length >= 4 and (length - 4) % 8 == 0
    elif kind == PING:
        ok = length == 4 and flags == 0
    elif kind in (GOAWAY, WINDOW_UPDATE):
        ok = length == 8 and flags == 0
    else:
        raise RemoteProtocolError(f"unknown control frame type {kind}")
    if not ok:
        raise RemoteProtocolError(
            f"malformed control frame type {kind} (flags {flags:#x}, length {length})"
        )


def _too_large(length: int, limit: int) -> RemoteProtocolError:
    return RemoteProtocolError(f"frame of {length} bytes is larger than max_frame_size ({limit})")


class SpdyConnection:
    """One SPDY/3.1 connection as moby/spdystream speaks it, either side (sans-IO).

    Args:
        role: ``Role.CLIENT`` (odd ids) or ``Role.SERVER`` (even ids).
        max_data_frame_size: ``send_data`` splits larger payloads into DATA frames of this
            size (kubectl writes 32 KiB; at most 0xFFFFFF).
        max_header_block_size: the largest inflated header block accepted from the peer, and
            the largest one we send (64 KiB by default).
        max_header_count: the most name/value pairs a received block may declare, and the most
            distinct names we send in one block (100 by default).
        max_frame_size: the largest frame (control or DATA, without its 8-byte header)
            accepted from the peer; a larger one is fatal as soon as its header arrives (1 MiB
            by default, 1 KiB..0xFFFFFF).
    """

    def __init__(
        self,
        role: Role,
        *,
        max_data_frame_size: int = DEFAULT_MAX_DATA_FRAME_SIZE,
        max_header_block_size: int = DEFAULT_MAX_HEADER_BLOCK_SIZE,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        if not 0 < max_data_frame_size <= MAX_FRAME_LENGTH:
            raise ValueError("max_data_frame_size must be in 1..0xFFFFFF")
        if max_header_block_size < 4:
            raise ValueError("max_header_block_size must be at least 4")
        if max_header_count < 0:
            raise ValueError("max_header_count must not be negative")
        if not MIN_MAX_FRAME_SIZE <= max_frame_size <= MAX_FRAME_LENGTH:
            raise ValueError("max_frame_size must be in 1024..0xFFFFFF")
        self.role: Final = role
        self.max_data_frame_size: Final = max_data_frame_size
        self.max_header_block_size: Final = max_header_block_size
        self.max_header_count: Final = max_header_count
        self.max_frame_size: Final = max_frame_size
        own = 1 if role is Role.CLIENT else 2
        self._own_parity: Final = own % 2
        self._next_stream_id = own
        self._next_ping_id = own
        self._next_peer_stream_id = 3 - own  # spdystream's receivedStreamId: 1 or 2
        self._last_peer_stream_id = 0
        self._streams: dict[int, StreamState] = {}
        self._deflater = zlib.compressobj(
            9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY
        )
        self._inflater = zlib.decompressobj(zdict=DICTIONARY)
        self._out: list[bytes | memoryview] = []
        self._buf = bytearray()
        self._need = 8  # bytes the buffered frame needs before it is worth parsing again
        # get_buffer / buffer_updated: the peer's bytes are read into this, and parsed where
        # they lie; [_lo, _hi) is a partial frame still waiting for the rest of it.
        self._arena = bytearray()
        self._lo = self._hi = 0
        self._error: RemoteProtocolError | None = None
        self._input_closed = False  # a GOAWAY was received, or EOF
        self._eof = False
        self._goaway_sent = False
        self._goaway_received = False

    # ------------------------------------------------------------------------ introspection

    @property
    def goaway_sent(self) -> bool:
        """Whether we queued a GOAWAY (no new streams either way from then on)."""
        return self._goaway_sent

    @property
    def goaway_received(self) -> bool:
        """Whether the peer sent GOAWAY."""
        return self._goaway_received

    @property
    def last_peer_stream_id(self) -> int:
        """The highest peer stream id accepted so far (GOAWAY's last-good id), 0 if none."""
        return self._last_peer_stream_id

    @property
    def open_stream_ids(self) -> frozenset[int]:
        """Streams not yet closed on both sides nor reset."""
        return frozenset(self._streams)

    @property
    def open_streams(self) -> int:
        """How many streams are live (``len(open_stream_ids)`` without building the set)."""
        return len(self._streams)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held until the rest of it arrives (0 between frames).

        At most ``8 + max_frame_size``: a larger frame fails on its header.
        """
        return len(self._buf) + self._hi - self._lo

    def stream_state(self, stream_id: int) -> StreamState:
        """The state of a stream; ``CLOSED`` for one that is gone or never existed.

        A cheap check before answering a :class:`StreamOpened`: when the same
        ``receive_data`` call also reset the stream, it is ``CLOSED`` already and
        ``reply_stream`` would raise :class:`LocalProtocolError`.
        """
        return self._streams.get(stream_id, StreamState.CLOSED)

    # ------------------------------------------------------------------------------ output

    def data_to_send(self) -> bytes:
        """Drain and return every queued byte (b"" if none)."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data

    def _control(self, kind: int, flags: int, body: bytes) -> None:
        self._out.append(_CONTROL.pack(0x8000 | VERSION, kind, flags << 24 | len(body)) + body)

    def _check_usable(self) -> None:
        if self._error is not None:
            raise LocalProtocolError(f"the connection failed: {self._error}")

    def _header_block(self, headers: HeadersInput, forbidden: frozenset[str]) -> bytes:
        """Encode and check a block; nothing touches the shared deflater until it is valid."""
        merged = _merge_headers(headers)
        bad = forbidden.intersection(merged)
        if bad:
            raise LocalProtocolError(f"header {min(bad)!r} is not allowed here")
        if len(merged) > self.max_header_count:
            raise LocalProtocolError("header block has more names than max_header_count")
        block = _encode_merged(merged)
        if len(block) > self.max_header_block_size:
            raise LocalProtocolError("header block is larger than max_header_block_size")
        return block

    def _compress(self, block: bytes) -> bytes:
        # One deflate stream for the whole connection, sync-flushed per block (§6.3).
        return self._deflater.compress(block) + self._deflater.flush(zlib.Z_SYNC_FLUSH)

    def _plan(self, stream_id: int, *inputs: StreamInput) -> StreamState:
        """The state after ``inputs``, or LocalProtocolError if the table forbids one."""
        self._check_usable()
        state = self._streams.get(stream_id)
        if state is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        for inp in inputs:
            step = STREAM_TRANSITIONS.get((state, inp))
            if step is None:
                raise LocalProtocolError(
                    f"cannot {inp.value} on stream {stream_id} in state {state.value}"
                )
            state = step[0]
        return state

    def _set_state(self, stream_id: int, state: StreamState) -> None:
        if state is StreamState.CLOSED:
            self._streams.pop(stream_id, None)
        else:
            self._streams[stream_id] = state

    def open_stream(self, headers: HeadersInput = (), *, fin: bool = False) -> int:
        """Queue a SYN_STREAM (priority 0, no associated stream) and return its id.

        Args:
            headers: the header block; kubectl sends ``streamtype`` (+ ``port``,
                ``requestid`` for port-forward).
            fin: half-close our side at once.

        Raises:
            LocalProtocolError: after GOAWAY (either way), ids exhausted, or bad headers.
        """
        self._check_usable()
        if self._goaway_sent or self._goaway_received:
            raise LocalProtocolError("no new streams after GOAWAY")
        stream_id = self._next_stream_id
        if stream_id > MAX_STREAM_ID:
            raise LocalProtocolError("stream ids are exhausted")
        block = self._header_block(headers, REQUEST_FORBIDDEN)
        self._next_stream_id += 2
        body = _TWO.pack(stream_id, 0) + b"\x00\x00" + self._compress(block)
        self._control(SYN_STREAM, FLAG_FIN if fin else 0, body)
        self._streams[stream_id] = StreamState.SYN_SENT
        if fin:
            self._set_state(stream_id, StreamState.SYN_SENT_LOCAL_CLOSED)
        return stream_id

    def reply_stream(
        self, stream_id: int, headers: HeadersInput = (), *, fin: bool = False
    ) -> None:
        """Queue the SYN_REPLY for a stream the peer opened (Kubernetes: empty headers).

        Raises:
            LocalProtocolError: not a peer stream awaiting its reply, or bad headers.
        """
        inputs = (
            (StreamInput.SEND_REPLY, StreamInput.SEND_FIN) if fin else (StreamInput.SEND_REPLY,)
        )
        state = self._plan(stream_id, *inputs)
        block = self._header_block(headers, RESPONSE_FORBIDDEN)
        body = _U32.pack(stream_id) + self._compress(block)
        self._control(SYN_REPLY, FLAG_FIN if fin else 0, body)
        self._set_state(stream_id, state)

    def send_headers(self, stream_id: int, headers: HeadersInput, *, fin: bool = False) -> None:
        """Queue a HEADERS frame. Never do this toward kubectl (docs/protocol.md §6.4).

        Raises:
            LocalProtocolError: our side of the stream is not writable, or bad headers.
        """
        inputs = (StreamInput.SEND_DATA, StreamInput.SEND_FIN) if fin else (StreamInput.SEND_DATA,)
        state = self._plan(stream_id, *inputs)
        # spdystream picks the forbidden set by the stream id's parity.
        forbidden = REQUEST_FORBIDDEN if stream_id % 2 == 0 else RESPONSE_FORBIDDEN
        block = self._header_block(headers, forbidden)
        self._control(HEADERS, FLAG_FIN if fin else 0, _U32.pack(stream_id) + self._compress(block))
        self._set_state(stream_id, state)

    def send_data(
        self, stream_id: int, data: bytes | bytearray | memoryview, *, fin: bool = False
    ) -> None:
        """Queue ``data`` as DATA frames of at most ``max_data_frame_size`` bytes.

        ``bytes`` are queued without a copy (``data_to_send`` copies them once); other buffers
        are copied once here. Empty ``data`` queues nothing unless ``fin`` is set, which sends
        the FIN-only frame ``<id> 01 000000``.

        Raises:
            LocalProtocolError: our side of the stream is not writable (closed, or a peer
                stream not replied yet).
        """
        inputs = (StreamInput.SEND_DATA, StreamInput.SEND_FIN) if fin else (StreamInput.SEND_DATA,)
        state = self._plan(stream_id, *inputs)
        payload = data if isinstance(data, bytes) else bytes(data)
        total, size = len(payload), self.max_data_frame_size
        out = self._out
        pack = _HEADER.pack
        fin_bits = FLAG_FIN << 24 if fin else 0
        if total <= size:
            if total or fin:
                out.append(pack(stream_id, fin_bits | total))
                if total:
                    out.append(payload)
        else:
            view = memoryview(payload)
            last = (total - 1) // size * size
            for start in range(0, last, size):
                out.append(pack(stream_id, size))
                out.append(view[start : start + size])
            out.append(pack(stream_id, fin_bits | (total - last)))
            out.append(view[last:])
        self._set_state(stream_id, state)

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side: the empty DATA frame with FIN (spdystream ``Stream.Close``)."""
        self.send_data(stream_id, b"", fin=True)

    def reset_stream(self, stream_id: int, status: int = RstStatus.CANCEL) -> None:
        """Queue RST_STREAM and forget the stream (both directions).

        Unlike spdystream's ``Stream.Reset`` the frame is sent even after our FIN, so the peer
        stops sending too. A stream that is already gone is left alone (nothing is queued).

        Raises:
            LocalProtocolError: ``status`` is not in 1..2**32-1, or the id was never used.
        """
        self._check_usable()
        if not 0 < status <= 0xFFFFFFFF:
            raise LocalProtocolError("RST_STREAM status must be in 1..2**32-1")
        if stream_id not in self._streams:
            if not self._was_used(stream_id):
                raise LocalProtocolError(f"stream {stream_id} was never opened")
            return
        self._control(RST_STREAM, 0, _TWO.pack(stream_id, status))
        self._set_state(stream_id, StreamState.CLOSED)

    def _was_used(self, stream_id: int) -> bool:
        if stream_id % 2 == self._own_parity:
            return 0 < stream_id < self._next_stream_id
        return 0 < stream_id <= self._last_peer_stream_id

    def ping(self, ping_id: int | None = None) -> int:
        """Queue a PING and return its id (ours: client odd from 1, server even from 2).

        Raises:
            LocalProtocolError: ``ping_id`` is 0, too large, or has the peer's parity (the peer
                would take it as an answer and not echo it).
        """
        self._check_usable()
        if ping_id is None:
            ping_id = self._next_ping_id
            following = ping_id + 2
            self._next_ping_id = following if following <= MAX_STREAM_ID else 2 - self._own_parity
        elif not 0 < ping_id <= 0xFFFFFFFF or ping_id % 2 != self._own_parity:
            raise LocalProtocolError(f"ping id {ping_id} is not one of ours")
        self._control(PING, 0, _U32.pack(ping_id))
        return ping_id

    def goaway(self, status: int = GoAwayStatus.OK) -> None:
        """Queue GOAWAY(last-good = highest accepted peer stream id, ``status``), once.

        Later calls do nothing (spdystream's ``Close``). Streams already open go on; new peer
        streams are ignored and ``open_stream`` refuses.
        """
        if self._goaway_sent:
            return
        if not 0 <= status <= 0xFFFFFFFF:
            raise LocalProtocolError("GOAWAY status must fit in 32 bits")
        self._goaway_sent = True
        self._control(GOAWAY, 0, _TWO.pack(self._last_peer_stream_id, status))

    def send_settings(self, settings: Mapping[int, int], *, clear: bool = False) -> None:
        """Queue a SETTINGS frame (id -> value); spdystream ignores it, kubectl never sends one.

        Raises:
            LocalProtocolError: an id outside 1..0xFFFFFF or a value outside 32 bits.
        """
        self._check_usable()
        body = [_U32.pack(len(settings))]
        for setting_id, value in settings.items():
            if not 0 < setting_id <= 0xFFFFFF or not 0 <= value <= 0xFFFFFFFF:
                raise LocalProtocolError(f"bad setting {setting_id}={value}")
            body.append(_TWO.pack(setting_id, value))
        self._control(SETTINGS, FLAG_CLEAR_SETTINGS if clear else 0, b"".join(body))

    def send_window_update(self, stream_id: int, delta: int) -> None:
        """Queue a WINDOW_UPDATE (spdystream ignores it; there is no flow control).

        Raises:
            LocalProtocolError: id or delta outside 31 bits (delta must be positive).
        """
        self._check_usable()
        if not 0 <= stream_id <= MAX_STREAM_ID or not 0 < delta <= MAX_STREAM_ID:
            raise LocalProtocolError("bad WINDOW_UPDATE stream id or delta")
        self._control(WINDOW_UPDATE, 0, _TWO.pack(stream_id, delta))

    # ------------------------------------------------------------------------------- input

    def receive_eof(self) -> list[Event]:
        """The peer closed its sending side (TCP EOF).

        Returns:
            ``[ConnectionTerminated(unparsed_bytes)]`` the first time, ``[]`` afterwards.

        Raises:
            RemoteProtocolError: the connection had already failed.
        """
        if self._error is not None:
            raise self._again()
        if self._eof:
            return []
        self._eof = self._input_closed = True
        unparsed = self.buffered
        self._buf = bytearray()
        self._arena = bytearray()
        self._lo = self._hi = 0
        return [ConnectionTerminated(unparsed)]

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Room for the peer's next bytes, at least ``sizehint`` of them (``READ_SIZE`` for a
        hint under 1): read into it, then hand over the count with :meth:`buffer_updated`.

        The other way in, beside :meth:`receive_data`, for an
        :class:`asyncio.BufferedProtocol`: bytes read (or decrypted) into the buffer are
        parsed where they lie, and a partial frame stays put until its rest arrives; only a
        DATA frame's payload is copied out (into its event). A buffer is valid until the next
        call of either method. The two ways may be mixed.
        """
        want = sizehint if sizehint > 0 else READ_SIZE
        held = self._hi - self._lo
        if self._buf:  # left by receive_data: parsed from here on
            carried, self._buf = self._buf, bytearray()
        else:
            carried = None
        arena = self._arena
        if carried is not None or len(arena) - self._hi < want:
            # Room at the end is short: a new arena (never a resize: the transport may still
            # hold a view of the old one) or, when it is large enough, the partial frame
            # moved to its start.
            extra = len(carried) if carried is not None else 0
            size = held + extra + want
            if len(arena) < size or len(arena) > max(8 * size, READ_SIZE):
                # a quarter more than asked for: reads of a stream vary a little in size
                arena = bytearray(max(size + size // 4, min(READ_SIZE, 4 * size)))
            arena[:held] = self._arena[self._lo : self._hi]  # the partial frame, if any
            if carried is not None:
                arena[held : held + extra] = carried
            self._arena = arena
            self._lo, self._hi = 0, held + extra
        return memoryview(arena)[self._hi :]

    def buffer_updated(self, nbytes: int) -> list[Event]:
        """``nbytes`` of the peer's were written at the start of the last :meth:`get_buffer`;
        parse them (as :meth:`receive_data` does) and return the events of complete frames.

        Raises:
            RemoteProtocolError: as :meth:`receive_data`.
        """
        if self._error is not None:
            raise self._again()
        if self._input_closed or nbytes <= 0:
            return []
        if not 0 < nbytes <= len(self._arena) - self._hi:
            raise ValueError(f"{nbytes} bytes do not fit the buffer handed out")
        self._hi += nbytes
        events: list[Event] = []
        if self._hi - self._lo < self._need:
            return events
        try:
            with memoryview(self._arena) as whole, whole[self._lo : self._hi] as view:
                self._lo += self._parse(view, events)
        except RemoteProtocolError as exc:
            self._fail(exc, events)
            raise
        if self._lo == self._hi:
            self._lo = self._hi = 0
            if nbytes < len(self._arena) // 16 and len(self._arena) > READ_SIZE // 4:
                # A small read into a large arena: the bulk is over; an idle session keeps
                # no large buffer.
                self._arena = bytearray()
        return events

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes from the peer, in any chunking; return the events of complete frames.

        Input after a received GOAWAY or after ``receive_eof`` is discarded.

        Raises:
            RemoteProtocolError: the peer broke the protocol (a GOAWAY is queued first); raised
                again on every later call.
        """
        if self._error is not None:
            raise self._again()
        if self._input_closed or not data:
            return []
        if isinstance(data, memoryview):
            data = bytes(data)
        if self._hi > self._lo:  # a partial frame left by buffer_updated: continued here
            self._buf = bytearray(self._arena[self._lo : self._hi])
            self._lo = self._hi = 0
        buf = self._buf
        if len(buf) + len(data) < self._need:
            # Still short of the frame (or header) being held: kubectl's tunnel brings each
            # DATA header as two 4-byte messages (docs/protocol.md, §5b). Nothing to parse.
            buf += data
            return []
        events: list[Event] = []
        try:
            with memoryview(data) as view:
                off, end = 0, len(view)
                # A frame left incomplete by the last call: add only the bytes it still needs
                # (never the whole input, which would then be copied and shifted out again).
                while buf:
                    take = self._need - len(buf)
                    if end - off < take:
                        buf += view[off:]
                        return events
                    if len(buf) == 8 and not buf[0] & 0x80:
                        # A DATA frame's header (parsed: _need is its size) and now all of its
                        # payload, as the tunnel brings them (docs/protocol.md, §5b): the
                        # payload is taken from the input, not copied through ``buf``.
                        first, second = _HEADER.unpack_from(buf)
                        buf.clear()
                        self._need = 8
                        payload = (
                            data  # the message is the payload: not even a copy
                            if isinstance(data, bytes) and off == 0 and take == end
                            else view[off : off + take]
                        )
                        self._on_data(first, second >> 24, payload, events)
                        off += take
                        continue
                    buf += view[off : off + take]
                    off += take
                    with memoryview(buf) as held:
                        pos = self._parse(held, events)
                    del buf[:pos]
                    if self._input_closed:
                        return events
                # The rest is parsed where it lies; only a trailing partial frame is kept.
                if off < end:
                    with view[off:] as rest:
                        pos = self._parse(rest, events)
                        if pos < len(rest) and not self._input_closed:
                            buf += rest[pos:]
        except RemoteProtocolError as exc:
            self._fail(exc, events)
            raise
        return events

    def _again(self) -> RemoteProtocolError:
        assert self._error is not None
        again = RemoteProtocolError(
            f"the connection already failed: {self._error}",
            goaway_status=self._error.goaway_status,
        )
        again.__cause__ = self._error
        return again

    def _fail(self, exc: RemoteProtocolError, events: list[Event]) -> None:
        exc.events = tuple(events)
        self._error = exc
        self._buf = bytearray()  # a fresh one: views in the traceback may pin the old one
        self._arena = bytearray()
        self._lo = self._hi = 0
        if not self._goaway_sent:
            self._goaway_sent = True
            self._control(GOAWAY, 0, _TWO.pack(self._last_peer_stream_id, exc.goaway_status))

    def _parse(self, view: memoryview, events: list[Event]) -> int:
        """Handle every complete frame in ``view``; return how many bytes were used."""
        pos, end = 0, len(view)
        header = _HEADER.unpack_from
        limit = self.max_frame_size
        while end - pos >= 8:
            first, second = header(view, pos)
            flags, length = second >> 24, second & 0xFFFFFF
            start = pos + 8
            stop = start + length
            if first & 0x80000000:
                kind = first & 0xFFFF
                _check_control_header(kind, flags, length)
                if length > limit:
                    raise _too_large(length, limit)
                if stop > end:
                    self._need = 8 + length
                    return pos
                self._on_control(kind, flags, view[start:stop], events)
                if self._input_closed:  # GOAWAY: spdystream reads nothing after it
                    return end
            else:
                if first == 0:
                    raise RemoteProtocolError("DATA frame on stream 0")
                if length > limit:
                    raise _too_large(length, limit)
                if stop > end:
                    self._need = 8 + length
                    return pos
                self._on_data(first, flags, view[start:stop], events)
            pos = stop
        self._need = 8
        return pos

    def _on_data(
        self, stream_id: int, flags: int, payload: bytes | memoryview, events: list[Event]
    ) -> None:
        """A whole DATA frame (its header checked): ``payload`` is copied unless it is bytes."""
        state = self._streams.get(stream_id)
        if state is not None:
            if payload and STREAM_TRANSITIONS[state, StreamInput.RECV_DATA][1]:
                events.append(DataReceived(stream_id, bytes(payload)))
            if flags & FLAG_FIN:
                self._receive_fin(stream_id, events)

    def _receive(self, stream_id: int, inp: StreamInput) -> bool:
        """Apply a receive input; True if the frame is to be delivered."""
        state = self._streams.get(stream_id)
        if state is None:
            return False  # unknown or closed stream: dropped, as spdystream does
        following, deliver = STREAM_TRANSITIONS[state, inp]
        self._set_state(stream_id, following)
        return deliver

    def _receive_fin(self, stream_id: int, events: list[Event]) -> None:
        if self._receive(stream_id, StreamInput.RECV_FIN):
            events.append(StreamEnded(stream_id))

    def _inflate(self, compressed: memoryview, forbidden: frozenset[str]) -> Headers:
        limit = self.max_header_block_size
        try:
            block = self._inflater.decompress(compressed, limit + 1)
        except zlib.error as exc:
            raise RemoteProtocolError(f"header block does not inflate: {exc}") from None
        if len(block) > limit:
            raise RemoteProtocolError("header block is larger than max_header_block_size")
        return decode_header_block(block, forbidden, max_header_count=self.max_header_count)

    def _on_control(self, kind: int, flags: int, body: memoryview, events: list[Event]) -> None:
        if kind == SYN_STREAM:
            self._on_syn_stream(flags, body, events)
        elif kind in (SYN_REPLY, HEADERS):
            (stream_id,) = _U32.unpack_from(body, 0)
            if kind == SYN_REPLY or stream_id % 2:
                forbidden = RESPONSE_FORBIDDEN
            else:
                forbidden = REQUEST_FORBIDDEN
            headers = self._inflate(body[4:], forbidden)
            if stream_id == 0:
                raise RemoteProtocolError("SYN_REPLY/HEADERS on stream 0")
            if kind == SYN_REPLY:
                delivered = self._receive(stream_id, StreamInput.RECV_REPLY)
                if delivered:
                    events.append(StreamReplied(stream_id, headers))
            else:
                delivered = self._receive(stream_id, StreamInput.RECV_DATA)
                if delivered:
                    events.append(HeadersReceived(stream_id, headers))
            # spdystream ignores the FIN of a SYN_REPLY/HEADERS it ignores.
            if delivered and flags & FLAG_FIN:
                self._receive_fin(stream_id, events)
        elif kind == RST_STREAM:
            stream_id, status = _TWO.unpack_from(body, 0)
            if status == 0:
                raise RemoteProtocolError("RST_STREAM with status 0")
            if stream_id == 0:
                raise RemoteProtocolError("RST_STREAM on stream 0")
            if self._receive(stream_id, StreamInput.RECV_RESET):
                events.append(StreamReset(stream_id, status))
        elif kind == SETTINGS:
            (count,) = _U32.unpack_from(body, 0)
            if len(body) != 4 + 8 * count:
                raise RemoteProtocolError("SETTINGS length does not match its count")
            settings: dict[int, int] = {}
            for offset in range(4, len(body), 8):
                word, value = _TWO.unpack_from(body, offset)
                settings[word & 0xFFFFFF] = value
            events.append(SettingsReceived(settings, bool(flags & FLAG_CLEAR_SETTINGS)))
        elif kind == PING:
            (ping_id,) = _U32.unpack_from(body, 0)
            if ping_id == 0:
                raise RemoteProtocolError("PING with id 0")
            if ping_id % 2 == self._own_parity:
                events.append(PingAck(ping_id))
            else:
                self._control(PING, 0, bytes(body))
                events.append(PingReceived(ping_id))
        elif kind == GOAWAY:
            last_good, status = _TWO.unpack_from(body, 0)
            self._goaway_received = self._input_closed = True
            events.append(GoAwayReceived(last_good & MAX_STREAM_ID, status))
        else:  # WINDOW_UPDATE; _check_control_header refused every other type
            stream_id, delta = _TWO.unpack_from(body, 0)
            events.append(WindowUpdateReceived(stream_id & MAX_STREAM_ID, delta & MAX_STREAM_ID))

    def _on_syn_stream(self, flags: int, body: memoryview, events: list[Event]) -> None:
        (stream_id,) = _U32.unpack_from(body, 0)  # associated id, priority, slot: unused
        # Inflate even a frame we then refuse: the zlib context spans the connection.
        headers = self._inflate(body[10:], REQUEST_FORBIDDEN)
        if stream_id == 0:
            raise RemoteProtocolError("SYN_STREAM on stream 0")
        if self._goaway_sent:
            return  # spdystream: ignored once gone away, no reply, no reset
        if (
            stream_id > MAX_STREAM_ID
            or stream_id < self._next_peer_stream_id
            or stream_id % 2 == self._own_parity
        ):
            self._control(RST_STREAM, 0, _TWO.pack(stream_id, RstStatus.PROTOCOL_ERROR))
            return
        self._next_peer_stream_id = stream_id + 2
        self._last_peer_stream_id = stream_id
        unidirectional = bool(flags & FLAG_UNIDIRECTIONAL)
        self._streams[stream_id] = (
            StreamState.HALF_CLOSED_LOCAL if unidirectional else StreamState.SYN_RECEIVED
        )
        events.append(StreamOpened(stream_id, headers, unidirectional))
        if flags & FLAG_FIN:
            self._receive_fin(stream_id, events)

"""The Kubernetes WebSocket channel protocols, sans-IO (docs/protocol.md §3 and §5a).

Every WebSocket message carries one channel. The binary subprotocols (``""``,
``channel.k8s.io``, ``v4.channel.k8s.io``, ``v5.channel.k8s.io``) prefix the payload with the
channel byte; the base64 ones (``base64.channel.k8s.io``, ``v4.base64.channel.k8s.io``) send text
``'0'+channel`` followed by the payload in standard base64 with padding. v5 adds a CLOSE signal,
the two bytes ``FF <channel>``, that half-closes one channel (kubectl sends ``FF 00`` at stdin
EOF). The rules follow apimachinery ``pkg/util/httpstream/wsstream/conn.go`` (``handle``,
``write``, ``DataFromSocket``, ``handshake``).

Port-forward over the same framing (§5a, kubelet lib ``portforward/websocket.go``) uses two
channels per requested port, ``2*i`` for data and ``2*i+1`` for errors, and starts each channel
with the port as a little-endian ``uint16``.

Nothing here touches a socket: the caller hands in whole WebSocket messages (``bytes`` for
BINARY, ``str`` for TEXT) and writes out what :meth:`ChannelCodec.encode` returns.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import ProtocolError

# Subprotocol names, in the order this server prefers them (Go's SupportedStreamingProtocols
# style). The client's order decides which one is used, see negotiate().
V5_CHANNEL = "v5.channel.k8s.io"
V4_CHANNEL = "v4.channel.k8s.io"
V4_BASE64_CHANNEL = "v4.base64.channel.k8s.io"
CHANNEL = "channel.k8s.io"
BASE64_CHANNEL = "base64.channel.k8s.io"
#: No ``Sec-WebSocket-Protocol`` at all: binary framing with v1 status semantics (Go's ``""``).
NO_PROTOCOL = ""
#: kubectl 1.30+ port-forward: SPDY/3.1 carried in binary WebSocket messages (§5b). Not a
#: channel protocol; :class:`ChannelCodec` refuses it.
SPDY_TUNNEL_PORTFORWARD = "SPDY/3.1+portforward.k8s.io"

#: The channel protocols exec/attach can speak, in preference order.
REMOTECOMMAND_PROTOCOLS: tuple[str, ...] = (
    V5_CHANNEL,
    V4_CHANNEL,
    V4_BASE64_CHANNEL,
    CHANNEL,
    BASE64_CHANNEL,
)
#: The channel protocols of port-forward (§5a: no ``channel.k8s.io``, no v5), in preference order.
PORTFORWARD_PROTOCOLS: tuple[str, ...] = (V4_CHANNEL, V4_BASE64_CHANNEL)

# Channel numbers of exec/attach (apimachinery util/remotecommand/constants.go).
STDIN = 0
STDOUT = 1
STDERR = 2
ERROR = 3
RESIZE = 4
#: v5 only, client to server: ``FF <channel>`` closes that channel's reader side.
CLOSE = 255
#: Channels of an exec/attach connection (stdin, stdout, stderr, error, resize).
REMOTECOMMAND_CHANNELS = 5

_BINARY = frozenset({NO_PROTOCOL, CHANNEL, V4_CHANNEL, V5_CHANNEL})
_BASE64 = frozenset({BASE64_CHANNEL, V4_BASE64_CHANNEL})
_V1_STATUS = frozenset({NO_PROTOCOL, CHANNEL, BASE64_CHANNEL})
_PREFIXES = tuple(bytes((n,)) for n in range(256))
# '0' + channel must stay one ASCII character for a TEXT message.
_MAX_BASE64_CHANNELS = 0x80 - ord("0")
_DIGITS = re.compile(r"[0-9]+", re.ASCII)


class ChannelProtocolError(ProtocolError, ValueError):
    """The peer broke the channel protocol badly enough that the connection must end.

    Go's ``wsstream.Conn.handle`` breaks out of its read loop (and so closes the connection) on
    a malformed v5 CLOSE signal; every other oddity is dropped silently.
    """


@dataclass(frozen=True, slots=True)
class Decoded:
    """One message from the peer: ``data`` for ``channel``.

    ``data`` may be empty (a message that holds only the channel); Go hands that to the channel
    as a zero-length write, which is neither data nor end-of-file.
    """

    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseChannel:
    """v5 CLOSE signal: the peer will send nothing more on ``channel`` (stdin EOF for 0).

    Repeated CLOSEs for the same channel are allowed and mean nothing more (§3.4).
    """

    channel: int


def parse_protocol_header(values: str | Iterable[str]) -> list[str]:
    """The subprotocols a client offers, in its order.

    Accepts every ``Sec-WebSocket-Protocol`` header line (RFC 6455 §11.3.4 allows several, each
    a comma list). Items are trimmed and empty ones dropped. x/net/websocket, which the Go
    server uses, reads only the first header line and keeps empty items; taking every line is
    what a client that splits its offer expects, and an empty item can never be a protocol.

    Args:
        values: the header values, e.g. aiohttp's ``request.headers.getall(name, [])``; a single
            string is one header line.

    Returns:
        The offered protocol names, duplicates kept, in the client's order.
    """
    if isinstance(values, str):
        values = (values,)
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def negotiate(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """Pick a subprotocol the way Go's ``wsstream.handshake`` does (docs/protocol.md §3.1).

    The *client's* list is walked in order and its first entry the server supports wins; the
    server's order does not matter. A client that offered nothing gets :data:`NO_PROTOCOL`
    (``""``) if the server lists it. Names match exactly (case-sensitive).

    Args:
        offered: what the client sent, as returned by :func:`parse_protocol_header`.
        supported: what this endpoint serves.

    Returns:
        The chosen name, or ``None`` when there is none (answer with a non-101 status, so that
        kubectl falls back to SPDY, §3.7).
    """
    for name in offered or (NO_PROTOCOL,):
        if name in supported:
            return name
    return None


class ChannelCodec:
    """Encode and decode the messages of one negotiated channel subprotocol.

    Args:
        subprotocol: the negotiated name (:data:`NO_PROTOCOL` for none).
        num_channels: how many channels the connection has; 5 for exec/attach, ``2 * ports``
            for port-forward. Messages for a channel at or above it are ignored, as in Go.

    Raises:
        ValueError: ``subprotocol`` is not a channel protocol, or ``num_channels`` does not fit
            the framing (1-255, at most 80 for base64 so that ``'0'+channel`` stays ASCII).

    Attributes:
        subprotocol: the negotiated name.
        is_base64: TEXT messages with base64 payloads instead of BINARY ones.
        supports_close: the peer may send the v5 CLOSE signal (``v5.channel.k8s.io`` only).
        status_version: 1 when the error channel carries plain text and only on failure
            (``""``, ``channel.k8s.io``, ``base64.channel.k8s.io``); 4 when it always carries a
            JSON ``metav1.Status`` (v4, v4.base64, v5) -- see :mod:`streamsrv.protocol.status`.
        num_channels: as given.
    """

    __slots__ = ("subprotocol", "is_base64", "supports_close", "status_version", "num_channels")

    def __init__(self, subprotocol: str, *, num_channels: int = REMOTECOMMAND_CHANNELS) -> None:
        if subprotocol not in _BINARY and subprotocol not in _BASE64:
            raise ValueError(f"not a channel protocol: {subprotocol!r}")
        self.subprotocol = subprotocol
        self.is_base64 = subprotocol in _BASE64
        limit = _MAX_BASE64_CHANNELS if self.is_base64 else CLOSE
        if not 1 <= num_channels <= limit:
            raise ValueError(f"{subprotocol!r} cannot carry {num_channels} channels")
        self.num_channels = num_channels
        self.supports_close = subprotocol == V5_CHANNEL
        self.status_version = 1 if subprotocol in _V1_STATUS else 4

    def __repr__(self) -> str:
        return f"ChannelCodec({self.subprotocol!r}, num_channels={self.num_channels})"

    def encode(self, channel: int, data: bytes | bytearray | memoryview) -> bytes | str:
        """One message carrying ``data`` on ``channel`` (Go ``wsstream.Conn.write``).

        Args:
            channel: 0 to ``num_channels - 1``.
            data: the payload; may be empty (the "connection established" message, §3.3 --
                never send that to kubectl on stdout/stderr mid-session, §3.6).

        Returns:
            ``bytes`` (channel byte + payload, one copy) to send as BINARY, or for the base64
            protocols a ``str`` (``'0'+channel`` + standard base64 with padding) to send as TEXT.

        Raises:
            ValueError: ``channel`` is out of range.
        """
        if not 0 <= channel < self.num_channels:
            raise ValueError(f"channel {channel} is outside 0-{self.num_channels - 1}")
        if self.is_base64:
            return chr(0x30 + channel) + base64.b64encode(data).decode("ascii")
        return _PREFIXES[channel] + data

    def close_signal(self, channel: int) -> bytes:
        """The v5 CLOSE signal ``FF <channel>`` (what a client sends; §3.4).

        Servers never send it toward kubectl (it would log ``Unknown stream id 255``).

        Raises:
            ValueError: not v5, or ``channel`` is out of range.
        """
        if not self.supports_close:
            raise ValueError(f"{self.subprotocol!r} has no CLOSE signal")
        if not 0 <= channel < self.num_channels:
            raise ValueError(f"channel {channel} is outside 0-{self.num_channels - 1}")
        return _PREFIXES[CLOSE] + _PREFIXES[channel]

    def decode(self, message: bytes | str) -> Decoded | CloseChannel | None:
        """Interpret one message from the peer (Go ``wsstream.Conn.handle``).

        BINARY and TEXT messages are treated alike, as x/net/websocket hands both to Go as the
        raw payload bytes: a ``str`` is encoded back to UTF-8 (the Python client sends
        ``chr(channel) + data`` as TEXT in the binary protocols).

        Args:
            message: a BINARY (``bytes``) or TEXT (``str``) message.

        Returns:
            :class:`Decoded` data; :class:`CloseChannel` for a v5 CLOSE signal; ``None`` for
            what Go drops without a word: an empty message, a channel at or above
            ``num_channels`` (including ``FF`` before v5), or invalid base64 (Go logs that one;
            a caller that wants to log it can check ``message`` itself).

        Raises:
            ChannelProtocolError: v5 CLOSE signal of a length other than 2 bytes, or for a
                channel at or above ``num_channels``; Go ends the connection for both.
        """
        raw = message.encode("utf-8", "surrogatepass") if isinstance(message, str) else message
        if not raw:
            return None
        first = raw[0]
        if first == CLOSE and self.supports_close:
            if len(raw) != 2:
                raise ChannelProtocolError(
                    f"a CLOSE signal must be 2 bytes, got {len(raw)} ({raw[:8].hex()})"
                )
            if raw[1] >= self.num_channels:
                raise ChannelProtocolError(f"CLOSE for channel {raw[1]}, which does not exist")
            return CloseChannel(raw[1])
        if not self.is_base64:
            return Decoded(first, raw[1:]) if first < self.num_channels else None
        channel = (first - 0x30) & 0xFF  # byte arithmetic, as Go's `data[0] - '0'`
        if channel >= self.num_channels:
            return None
        # Go's base64.StdEncoding skips \r and \n and otherwise requires canonical padding.
        text = raw[1:].replace(b"\r", b"").replace(b"\n", b"")
        # Go decodes whole quanta and pads only the last: "AAAA=" and "QUJD====" are refused
        # (Python's b64decode(validate=True) allowed both).
        if len(text) % 4 or len(text) - len(text.rstrip(b"=")) > 2:
            return None
        try:
            return Decoded(channel, base64.b64decode(text, validate=True))
        except binascii.Error:
            return None


# --------------------------------------------------------------------------- port-forward (§5a)


def port_channels(index: int) -> tuple[int, int]:
    """The (data, error) channels of the ``index``-th port of a port-forward request."""
    if index < 0:
        raise ValueError(f"port index {index} is negative")
    return 2 * index, 2 * index + 1


def port_bytes(port: int) -> bytes:
    """A port as the 2-byte little-endian ``uint16`` that starts each port-forward channel.

    For the base64 protocol send ``codec.encode(channel, port_bytes(port))``; Go writes the
    same two bytes through the channel writer for both framings.

    Raises:
        ValueError: ``port`` is outside 0-65535.
    """
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is outside 0-65535")
    return port.to_bytes(2, "little")


def port_preamble(channel: int, port: int) -> bytes:
    """The first BINARY message of a port-forward channel: ``[channel, lo, hi]`` (§5a).

    The Python client insists on exactly these 3 bytes on both channels of every port, e.g.
    ``00 90 1F`` and ``01 90 1F`` for port 8080.

    Raises:
        ValueError: ``channel`` is outside 0-254 or ``port`` outside 0-65535.
    """
    if not 0 <= channel < CLOSE:
        raise ValueError(f"channel {channel} is outside 0-254")
    return _PREFIXES[channel] + port_bytes(port)


def parse_ports(values: str | Iterable[str], *, param: str = "port") -> list[int]:
    """The ports of a port-forward query, in order (kubelet lib ``NewV4Options``, §5a).

    Each query value is a comma list; values may also repeat (``port=80&port=81,82``). Every
    element must be a plain decimal number 1-65535 (Go ``strconv.ParseUint(p, 10, 16)``: no
    sign, no spaces). The error texts are Go's, word for word.

    Args:
        values: every value of the query parameter (aiohttp ``request.query.getall(param, [])``);
            a single string is one value.
        param: the parameter's name for the messages: ``port`` on the kubelet/runtime URL,
            ``ports`` on the apiserver-style gateway.

    Returns:
        The ports, duplicates kept.

    Raises:
        ValueError: ``query parameter "port" is required`` (no value),
            ``query parameter "port" cannot be empty``,
            ``unable to parse "80,x" as a port: strconv.ParseUint: parsing "x": invalid syntax``
            (or ``value out of range``), ``port "0" must be > 0``.
    """
    if isinstance(values, str):
        values = (values,)
    ports: list[int] = []
    seen = False
    for value in values:
        seen = True
        if not value:
            raise ValueError(f"query parameter {_go_quote(param)} cannot be empty")
        for item in value.split(","):
            if not _DIGITS.fullmatch(item):
                reason = "invalid syntax"
            else:
                significant = item.lstrip("0")  # ParseUint takes leading zeros
                port = int(significant or "0") if len(significant) <= 5 else 0x10000
                if port <= 0xFFFF:
                    if port < 1:
                        raise ValueError(f"port {_go_quote(value)} must be > 0")
                    ports.append(port)
                    continue
                reason = "value out of range"
            raise ValueError(
                f"unable to parse {_go_quote(value)} as a port: "
                f"strconv.ParseUint: parsing {_go_quote(item)}: {reason}"
            )
    if not seen:
        raise ValueError(f"query parameter {_go_quote(param)} is required")
    return ports


_GO_ESCAPES = {
    "\a": r"\a",
    "\b": r"\b",
    "\f": r"\f",
    "\n": r"\n",
    "\r": r"\r",
    "\t": r"\t",
    "\v": r"\v",
    "\\": r"\\",
    '"': r"\"",
}


def _go_quote(text: str) -> str:
    """Go's ``%q`` of a string, close enough for error messages."""
    out = []
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'

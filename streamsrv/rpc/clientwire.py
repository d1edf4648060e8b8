"""gRPC calls on one HTTP/2 connection, client side, without I/O (docs/cri.md, "The gRPC
client").

:meth:`ClientConnection.start` turns a call (its method's path, one request message, a
deadline, metadata) into bytes; :meth:`~ClientConnection.receive` turns what the server sends
into :class:`Message` and :class:`Closed` events. A call is unary or server-streaming alike:
each response message is one :class:`Message`, and the status ends it. The common part of
HTTP/2 is :mod:`streamsrv.rpc.http2`'s; :mod:`streamsrv.rpc.channel` moves the bytes.

Limits: a response message over ``max_message`` bytes ends its call with RESOURCE_EXHAUSTED
(the stream is reset and its bytes dropped as they come). The messages of a call that have come
but are not yet taken hold the stream's receive window shut once they pass :data:`WINDOW`
bytes, until :meth:`~ClientConnection.consumed` says they were taken: a server cannot make us
hold more than that per call. Header blocks from the server are limited to
:data:`MAX_HEADER_LIST_SIZE` bytes; anything that breaks HTTP/2 fails the connection with a
GOAWAY that says why (:class:`ConnectionFailed`), and every open call with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from .http2 import (
    CANCEL,
    CANCELLED,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    INTERNAL,
    MAX_CONCURRENT,
    MAX_FRAME,
    MAX_HEADER_LIST,
    NO_ERROR,
    PERMISSION_DENIED,
    PREFACE,
    PREFIX,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RESOURCE_EXHAUSTED,
    U32,
    UNAUTHENTICATED,
    UNAVAILABLE,
    UNIMPLEMENTED,
    UNKNOWN,
    WINDOW,
    ConnectionFailed,
    Failed,
    Http2Connection,
    Stream,
    decode_message,
    format_timeout,
    literal,
)

#: Bytes of response headers (or trailers) we take per call (SETTINGS_MAX_HEADER_LIST_SIZE).
MAX_HEADER_LIST_SIZE: Final = 16 << 10
_LAST_SID: Final = (1 << 31) - 1
_GRPC_TYPES = (b"application/grpc", b"application/grpc+", b"application/grpc;")
# HTTP status to gRPC code, for an answer that is not gRPC (grpc/grpc's
# doc/http-grpc-status-mapping.md)
_HTTP_CODES: Final = {
    b"400": INTERNAL,
    b"401": UNAUTHENTICATED,
    b"403": PERMISSION_DENIED,
    b"404": UNIMPLEMENTED,
    b"429": UNAVAILABLE,
    b"502": UNAVAILABLE,
    b"503": UNAVAILABLE,
    b"504": UNAVAILABLE,
}
# A reset stream's HTTP/2 error code to gRPC's (the same document).
_RESET_CODES: Final = {REFUSED_STREAM: UNAVAILABLE, CANCEL: CANCELLED, ENHANCE_YOUR_CALM: 8}


@dataclass(frozen=True, slots=True)
class Message:
    """One response message of call ``stream_id`` (its bytes, without gRPC's prefix)."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """Call ``stream_id`` is over, with this status (OK: every message has come).
    ``unprocessed``: the server did not take the call (it refused the stream, or its GOAWAY
    names an earlier last stream), so it may be sent again, as gRPC's clients do."""

    stream_id: int
    code: int
    details: str
    unprocessed: bool = False


Event = Message | Closed


@dataclass(slots=True)
class _Call(Stream):
    answered: bool = False  # the response headers have come
    body: bytearray = field(default_factory=bytearray)  # a response message coming in
    held: int = 0  # bytes of messages handed out and not yet consumed


class ClientConnection(Http2Connection):
    """One connection to a gRPC server: :meth:`start` calls, feed :meth:`receive` what the
    server sends, and send :meth:`data_to_send` after each."""

    peer = "server"
    _streams: dict[int, _Call]  # type: ignore[assignment]

    def __init__(self, *, max_message: int, authority: bytes = b"localhost") -> None:
        super().__init__(
            (
                (ENABLE_PUSH, 0),
                (INITIAL_WINDOW_SIZE, WINDOW),
                (MAX_HEADER_LIST, MAX_HEADER_LIST_SIZE),
            ),
            max_header_list=MAX_HEADER_LIST_SIZE,
        )
        self._out.insert(0, PREFACE)
        self.max_message = max_message
        #: Calls the server takes at once (its SETTINGS_MAX_CONCURRENT_STREAMS).
        self.max_calls = 1 << 31
        self.going_away = False  # the server sent GOAWAY: no new call on this connection
        self._next_sid = 1
        # :method POST (static 3), :scheme http (static 6), :authority; then :path (pseudo
        # headers come first: RFC 9113 8.3), then these
        self._head = b"\x83\x86" + literal(1, authority)
        self._tail = literal(31, b"application/grpc") + literal(b"te", b"trailers")
        self._paths: dict[bytes, bytes] = {}  # the headers up to the metadata, by path

    @property
    def open_calls(self) -> int:
        return len(self._streams)

    @property
    def usable(self) -> bool:
        """New calls may start here (not closed, not going away, stream ids left)."""
        return not (self._closed or self.going_away) and self._next_sid < _LAST_SID

    @property
    def room(self) -> bool:
        """A new call is within the server's limit of concurrent calls."""
        return len(self._streams) < self.max_calls

    # ------------------------------------------------------------------------------ calls

    def start(
        self, path: bytes, message: bytes, *, timeout: float | None = None, metadata: bytes = b""
    ) -> int:
        """Start a call; its stream id names its events. ``metadata`` is an encoded header
        block's fields (:func:`~streamsrv.rpc.http2.literal`), ``timeout`` seconds from now.

        Raises:
            ValueError: the connection takes no new call (see :attr:`usable`), or the headers
                do not fit one frame.
        """
        if not self.usable:
            raise ValueError("the connection takes no new call")
        head = self._paths.get(path)
        if head is None:
            head = self._head + literal(4, path) + self._tail  # 4: :path
            if len(self._paths) < 256:
                self._paths[path] = head
        block = head + metadata
        if timeout is not None:
            block += literal(b"grpc-timeout", format_timeout(timeout))
        if len(block) > MAX_FRAME:
            raise ValueError(f"a call's headers of {len(block)} bytes")
        sid = self._next_sid
        self._next_sid += 2
        st = self._streams[sid] = _Call(send_window=self._peer_window, end_stream=True)
        self._frame(HEADERS, END_HEADERS, sid, block)
        st.pending = memoryview(PREFIX.pack(0, len(message)) + message)
        self._send(sid, st)
        return sid

    def _sent(self, sid: int, st: Stream) -> None:
        pass  # END_STREAM went with the last DATA frame

    def cancel(self, stream_id: int) -> None:
        """Give up on a call: RST_STREAM (CANCEL), and no event of it any more."""
        if self._streams.pop(stream_id, None) is not None and not self._closed:
            self._reset(stream_id, CANCEL)

    def consumed(self, stream_id: int, n: int) -> None:
        """``n`` bytes of the call's :class:`Message` data were taken by whoever reads it."""
        st = self._streams.get(stream_id)
        if st is None:
            return
        st.held -= n + PREFIX.size
        self._give_back_if_read(stream_id, st)

    def close(self) -> None:
        """GOAWAY: this end is done; calls still open are the caller's to fail."""
        if not self._closed:
            self._frame(GOAWAY, 0, 0, U32.pack(0) + U32.pack(NO_ERROR))
            self._closed = True

    # ------------------------------------------------------------------------------ input

    def receive(self, data: bytes) -> list[Event]:
        if self._closed:
            return []
        self._in += data
        events: list[Event] = []
        try:
            self._frames(0, events)  # type: ignore[arg-type]
        except Failed as exc:
            self._closed = True
            debug = str(exc).encode("utf-8", "replace")[:256]
            self._frame(GOAWAY, 0, 0, U32.pack(0) + U32.pack(exc.code) + debug)
            raise ConnectionFailed(str(exc), list(events)) from None
        return events

    def _known(self, sid: int) -> _Call | None:
        """The open call on ``sid``; None for one that is over (its frames are dropped)."""
        st = self._streams.get(sid)
        if st is None and (sid % 2 == 0 or sid >= self._next_sid):
            raise Failed(PROTOCOL_ERROR, f"a frame on stream {sid}, which we did not open")
        return st

    def _on_setting(self, key: int, value: int) -> None:
        if key == MAX_CONCURRENT:
            self.max_calls = value

    def _on_headers(self, sid: int, flags: int, block: bytes, out: list[object]) -> None:
        headers = self._decode(block)
        st = self._known(sid)
        if st is None:
            return
        ended = bool(flags & END_STREAM)
        if not st.answered:
            st.answered = True
            status = headers.get(b":status")
            if status != b"200":
                code = _HTTP_CODES.get(status or b"", UNKNOWN)
                self._end(sid, code, f"the server answered HTTP status {status!r}", out, ended)
                return
            ctype = headers.get(b"content-type", b"")
            if not ctype.startswith(_GRPC_TYPES):
                self._end(sid, UNKNOWN, f"the answer's content-type is {ctype[:60]!r}", out, ended)
                return
            if not ended:
                return
        elif not ended:
            self._end(sid, INTERNAL, "trailers that do not end the stream", out, False)
            return
        # the trailers (or a trailers-only answer): the status
        raw = headers.get(b"grpc-status")
        if raw is None or not raw.isdigit():
            self._end(sid, UNKNOWN, f"the answer's grpc-status is {raw!r}", out, True)
        elif st.body:
            self._end(sid, INTERNAL, "the stream ended inside a message", out, True)
        else:
            self._end(sid, int(raw), decode_message(headers.get(b"grpc-message", b"")), out, True)

    def _on_data(self, flags: int, sid: int, payload: bytes, out: list[object]) -> None:
        n = len(payload)
        self._count_received(n)
        st = self._known(sid)
        if st is None:
            return
        ended = bool(flags & END_STREAM)
        if not st.answered:
            self._end(sid, INTERNAL, "DATA before the response headers", out, ended)
            return
        st.unacked += n
        body = st.body
        body += self._unpad(flags, payload)
        while len(body) >= PREFIX.size:
            compressed, length = PREFIX.unpack_from(body)
            if compressed:
                self._end(sid, INTERNAL, "a compressed message (none was asked for)", out, ended)
                return
            if length > self.max_message:
                limit = f"({length} vs. {self.max_message})"
                self._end(
                    sid, RESOURCE_EXHAUSTED, f"received message larger than max {limit}", out, ended
                )
                return
            if len(body) < PREFIX.size + length:
                break
            out.append(Message(sid, bytes(body[PREFIX.size : PREFIX.size + length])))
            del body[: PREFIX.size + length]
            st.held += PREFIX.size + length
        if ended:
            self._end(sid, INTERNAL, "the server ended the call without a status", out, True)
            return
        self._give_back_if_read(sid, st)

    def _give_back_if_read(self, sid: int, st: _Call) -> None:
        """The window is held shut while more than one window's worth of messages is unread."""
        if st.held <= WINDOW:
            self._give_back(sid, st)

    def _on_reset(self, sid: int, code: int, out: list[object]) -> None:
        if self._known(sid) is None:
            return
        refused = code == REFUSED_STREAM
        what = "the server refused the call" if refused else "the server reset"
        why = f"{what} (HTTP/2 code {code})"
        self._end(sid, _RESET_CODES.get(code, INTERNAL), why, out, True, unprocessed=refused)

    def _on_goaway(self, last_sid: int, out: list[object]) -> None:
        self.going_away = True
        for sid in [sid for sid in self._streams if sid > last_sid]:
            why = "the server went away before taking the call"
            self._end(sid, UNAVAILABLE, why, out, True, unprocessed=True)

    def _end(
        self,
        sid: int,
        code: int,
        details: str,
        out: list[object],
        ended: bool,
        *,
        unprocessed: bool = False,
    ) -> None:
        """The call is over with this status. If either half is still open (the server's, or
        ours with request bytes not yet sent: the server answered early), the stream is reset
        (RST_STREAM CANCEL) and what was left of the request is dropped."""
        st = self._streams.pop(sid, None)
        if not ended or (st is not None and st.pending is not None):
            self._reset(sid, CANCEL)
        out.append(Closed(sid, code, details, unprocessed))

"""rpc.clientwire, sans-IO: gRPC calls as the bytes an HTTP/2 server (h2's own server side)
takes, and its answers' bytes back as events."""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsrv.rpc import http2
from streamsrv.rpc.clientwire import ClientConnection, Closed, Event, Message
from streamsrv.rpc.http2 import ConnectionFailed

PATH = b"/containerd.services.tasks.v1.Tasks/Wait"
META = http2.literal(b"containerd-namespace", b"k8s.io")


def prefixed(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


class Pair:
    """Our client connection and a server (h2, server side), bytes moved by hand."""

    def __init__(
        self,
        *,
        max_message: int = 1 << 20,
        server_settings: dict[h2.settings.SettingCodes, int] | None = None,
    ):
        self.client = ClientConnection(max_message=max_message)
        self.server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        if server_settings:
            self.server.local_settings = h2.settings.Settings(
                client=False, initial_values=server_settings
            )
        self.server.initiate_connection()
        self.seen: list[h2.events.Event] = []  # what the server saw
        self.pump()

    def pump(self) -> list[Event]:
        out: list[Event] = []
        while True:
            up = self.client.data_to_send()
            if up:
                self.seen += self.server.receive_data(up)
            down = self.server.data_to_send()
            if down:
                out += self.client.receive(down)
            if not up and not down:
                return out

    def request(self, sid: int) -> tuple[list[tuple[bytes, bytes]], bytes, bool]:
        """The headers, body and whether the client ended its half, as the server saw them."""
        headers: list[tuple[bytes, bytes]] = []
        body = b""
        ended = False
        for ev in self.seen:
            if getattr(ev, "stream_id", None) != sid:
                continue
            if isinstance(ev, h2.events.RequestReceived):
                headers = [(bytes(k), bytes(v)) for k, v in ev.headers or ()]
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data or b""
                self.server.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
            elif isinstance(ev, h2.events.StreamEnded):
                ended = True
        return headers, body, ended

    def answer(self, sid: int, *messages: bytes, status: int = 0, message: str = "") -> None:
        self.server.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
        for m in messages:
            data = prefixed(m)
            for i in range(0, len(data), 16384):
                self.server.send_data(sid, data[i : i + 16384])
        trailers = [("grpc-status", str(status))]
        if message:
            trailers.append(("grpc-message", http2.encode_message(message).decode()))
        self.server.send_headers(sid, trailers, end_stream=True)

    def resets(self) -> list[tuple[int, int]]:
        return [
            (ev.stream_id, int(ev.error_code or 0))
            for ev in self.seen
            if isinstance(ev, h2.events.StreamReset)
        ]


def test_a_unary_call_and_its_answer() -> None:
    p = Pair()
    sid = p.client.start(PATH, b"hello", timeout=2.5, metadata=META)
    p.pump()
    headers, body, ended = p.request(sid)
    # pseudo headers first (h2 checks it, as Go's server does), then gRPC's
    assert [k for k, _ in headers[:4]] == [b":method", b":scheme", b":authority", b":path"]
    assert dict(headers) == {
        b":method": b"POST",
        b":scheme": b"http",
        b":authority": b"localhost",
        b":path": PATH,
        b"content-type": b"application/grpc",
        b"te": b"trailers",
        b"containerd-namespace": b"k8s.io",
        b"grpc-timeout": b"2500000u",
    }
    assert body == prefixed(b"hello") and ended
    p.answer(sid, b"world")
    assert p.pump() == [Message(sid, b"world"), Closed(sid, http2.OK, "")]
    assert p.client.open_calls == 0


def test_a_trailers_only_failure_keeps_its_code_and_decoded_message() -> None:
    p = Pair()
    sid = p.client.start(PATH, b"")
    p.pump()
    grpc_message = http2.encode_message('container "ü" 100%\n').decode()
    p.server.send_headers(
        sid,
        [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "5"),
            ("grpc-message", grpc_message),
        ],
        end_stream=True,
    )
    assert p.pump() == [Closed(sid, http2.NOT_FOUND, 'container "ü" 100%\n')]


@pytest.mark.parametrize(
    ("status", "content_type", "code"),
    [
        ("404", "application/grpc", http2.UNIMPLEMENTED),
        ("503", "text/plain", http2.UNAVAILABLE),
        ("418", "text/plain", http2.UNKNOWN),
        ("200", "text/html", http2.UNKNOWN),
    ],
)
def test_an_answer_that_is_not_grpc(status: str, content_type: str, code: int) -> None:
    p = Pair()
    sid = p.client.start(PATH, b"")
    p.pump()
    p.server.send_headers(sid, [(":status", status), ("content-type", content_type)])
    events = p.pump()
    assert len(events) == 1 and isinstance(events[0], Closed)
    assert events[0].code == code
    # the server's half was open: it is told to stop
    assert (sid, h2.errors.ErrorCodes.CANCEL) in p.resets()


def test_a_status_missing_or_not_a_number_is_unknown() -> None:
    p = Pair()
    a, b = p.client.start(PATH, b""), p.client.start(PATH, b"")
    p.pump()
    for sid, trailers in ((a, [("x-other", "1")]), (b, [("grpc-status", "zero")])):
        p.server.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
        p.server.send_headers(sid, trailers, end_stream=True)
    events = p.pump()
    assert [(e.stream_id, e.code) for e in events if isinstance(e, Closed)] == [
        (a, http2.UNKNOWN),
        (b, http2.UNKNOWN),
    ]


def test_a_stream_ended_without_trailers_or_inside_a_message_is_internal() -> None:
    p = Pair()
    a, b = p.client.start(PATH, b""), p.client.start(PATH, b"")
    p.pump()
    p.server.send_headers(a, [(":status", "200"), ("content-type", "application/grpc")])
    p.server.send_data(a, prefixed(b"x"), end_stream=True)
    p.server.send_headers(b, [(":status", "200"), ("content-type", "application/grpc")])
    p.server.send_data(b, prefixed(b"abc")[:6])
    p.server.send_headers(b, [("grpc-status", "0")], end_stream=True)
    assert p.pump() == [
        Message(a, b"x"),
        Closed(a, http2.INTERNAL, "the server ended the call without a status"),
        Closed(b, http2.INTERNAL, "the stream ended inside a message"),
    ]


def test_a_request_larger_than_the_servers_window_waits_for_its_window_updates() -> None:
    p = Pair()
    big = bytes(range(256)) * 4096  # 1 MiB; h2's windows are 64 KiB
    sid = p.client.start(PATH, big)
    p.pump()
    _, body, ended = p.request(sid)  # acknowledges what came: h2 sends WINDOW_UPDATEs
    assert len(body) < len(big) and not ended
    for _ in range(100):
        p.pump()
        _, body, ended = p.request(sid)
        if ended:
            break
    assert body == prefixed(big) and ended


def test_server_streaming_holds_the_window_shut_until_messages_are_consumed() -> None:
    p = Pair(max_message=1 << 20)
    sid = p.client.start(PATH, b"")
    p.pump()
    p.server.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
    piece = prefixed(b"m" * 16000)  # one frame each
    got: list[Event] = []
    for _ in range(400):  # 6.4 MB offered: more than the stream's window
        if p.server.local_flow_control_window(sid) < len(piece):
            break
        p.server.send_data(sid, piece)
        got += p.pump()
    held = len(got)
    assert 0 < held * len(piece) <= 2 * http2.WINDOW  # shut: nothing consumed yet
    assert p.server.local_flow_control_window(sid) < len(piece)
    for _ in got:
        p.client.consumed(sid, 16000)
    p.pump()
    assert p.server.local_flow_control_window(sid) >= http2.WINDOW // 2  # open again


def test_a_response_over_max_message_ends_the_call_as_its_prefix_arrives() -> None:
    p = Pair(max_message=100)
    sid = p.client.start(PATH, b"")
    p.pump()
    p.server.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
    p.server.send_data(sid, struct.pack(">BI", 0, 101) + b"x" * 20)
    assert p.pump() == [
        Closed(sid, http2.RESOURCE_EXHAUSTED, "received message larger than max (101 vs. 100)")
    ]
    assert (sid, h2.errors.ErrorCodes.CANCEL) in p.resets()
    # what was already in flight is dropped without a fault
    assert p.client.receive(frame(http2.DATA, 0, sid, b"y" * 100)) == []
    assert p.client.receive(frame(http2.RST_STREAM, 0, sid, b"\0\0\0\0")) == []


def test_a_compressed_response_is_refused() -> None:
    p = Pair()
    sid = p.client.start(PATH, b"")
    p.pump()
    p.server.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
    p.server.send_data(sid, struct.pack(">BI", 1, 3) + b"abc")
    events = p.pump()
    assert [(e.code if isinstance(e, Closed) else e) for e in events] == [http2.INTERNAL]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (h2.errors.ErrorCodes.REFUSED_STREAM, http2.UNAVAILABLE),
        (h2.errors.ErrorCodes.CANCEL, http2.CANCELLED),
        (h2.errors.ErrorCodes.INTERNAL_ERROR, http2.INTERNAL),
    ],
)
def test_a_reset_stream_ends_its_call(code: int, status: int) -> None:
    p = Pair()
    sid = p.client.start(PATH, b"")
    other = p.client.start(PATH, b"")
    p.pump()
    p.server.reset_stream(sid, code)
    events = p.pump()
    assert [(e.stream_id, e.code) for e in events if isinstance(e, Closed)] == [(sid, status)]
    # only a refused stream was not taken by the server: that call may be sent again
    assert [e.unprocessed for e in events if isinstance(e, Closed)] == [
        code == h2.errors.ErrorCodes.REFUSED_STREAM
    ]
    p.answer(other, b"still")
    assert p.pump() == [Message(other, b"still"), Closed(other, http2.OK, "")]


def test_cancel_resets_the_stream_and_drops_what_still_comes() -> None:
    p = Pair()
    sid = p.client.start(PATH, b"x")
    p.pump()
    p.client.cancel(sid)
    p.pump()
    assert p.resets() == [(sid, h2.errors.ErrorCodes.CANCEL)]
    assert p.client.open_calls == 0


def test_goaway_ends_the_calls_it_did_not_take_and_no_new_call_starts() -> None:
    p = Pair()
    taken, dropped = p.client.start(PATH, b""), p.client.start(PATH, b"")
    p.pump()
    goaway = frame(http2.GOAWAY, 0, 0, struct.pack(">II", taken, 0))
    events = p.client.receive(goaway)  # by hand: h2 sends nothing more after its own GOAWAY
    assert events == [
        Closed(dropped, http2.UNAVAILABLE, "the server went away before taking the call", True)
    ]
    assert not p.client.usable
    with pytest.raises(ValueError, match="no new call"):
        p.client.start(PATH, b"")
    p.answer(taken, b"last")  # the call it took is still answered
    assert p.pump() == [Message(taken, b"last"), Closed(taken, http2.OK, "")]


def test_the_servers_concurrency_limit_is_kept_and_pings_are_answered() -> None:
    p = Pair(server_settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    assert p.client.max_calls == 2
    a = p.client.start(PATH, b"")
    p.client.start(PATH, b"")
    assert not p.client.room
    p.pump()
    p.answer(a, b"")
    p.pump()
    assert p.client.room
    p.server.ping(b"12345678")
    p.pump()
    assert any(isinstance(ev, h2.events.PingAckReceived) for ev in p.seen)


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, kind, flags, sid) + payload


SETTINGS = frame(http2.SETTINGS, 0, 0)
OK_HEADERS = hpack.Encoder().encode([(":status", "200"), ("content-type", "application/grpc")])


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(http2.DATA, 0, 1, b"x"), http2.PROTOCOL_ERROR),  # first frame not SETTINGS
        (SETTINGS + frame(http2.HEADERS, 4, 2, OK_HEADERS), http2.PROTOCOL_ERROR),  # even
        (SETTINGS + frame(http2.HEADERS, 4, 5, OK_HEADERS), http2.PROTOCOL_ERROR),  # unopened
        (SETTINGS + frame(http2.DATA, 0, 3, b"x"), http2.PROTOCOL_ERROR),
        (SETTINGS + frame(http2.PUSH_PROMISE, 4, 1, b"\0\0\0\2"), http2.PROTOCOL_ERROR),
        (SETTINGS + frame(http2.HEADERS, 4, 1, b"\xff\xff\xff\xff"), http2.COMPRESSION_ERROR),
        (SETTINGS + frame(http2.RST_STREAM, 0, 1, b"\0"), http2.FRAME_SIZE_ERROR),
        (SETTINGS + frame(http2.WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), http2.PROTOCOL_ERROR),
        (SETTINGS + frame(http2.GOAWAY, 0, 0, b"\0"), http2.FRAME_SIZE_ERROR),
        (SETTINGS + b"\x01\x00\x00\x00\x00\x00\x00\x00\x00", http2.FRAME_SIZE_ERROR),
    ],
)
def test_a_server_that_breaks_http2_fails_the_connection_with_a_goaway(
    data: bytes, code: int
) -> None:
    c = ClientConnection(max_message=100)
    c.start(PATH, b"")
    c.data_to_send()
    with pytest.raises(ConnectionFailed):
        c.receive(data)
    out = c.data_to_send()
    assert frame_types(out)[-1] == http2.GOAWAY
    last = out[out.rindex(bytes([http2.GOAWAY, 0, 0, 0, 0, 0])) - 3 :]
    assert struct.unpack(">I", last[13:17])[0] == code
    assert not c.usable and c.receive(SETTINGS) == []


def test_response_headers_over_the_limit_fail_the_connection() -> None:
    c = ClientConnection(max_message=100)
    sid = c.start(PATH, b"")
    big = hpack.Encoder().encode([(":status", "200"), ("x-big", "v" * 17000)])
    data = SETTINGS + frame(http2.HEADERS, 0, sid, big[:16000])
    data += frame(http2.CONTINUATION, 4, sid, big[16000:])
    with pytest.raises(ConnectionFailed, match="over the limit"):
        c.receive(data)


def test_answers_complete_before_a_fault_come_with_it() -> None:
    c = ClientConnection(max_message=100)
    sid = c.start(PATH, b"")
    trailers_only = hpack.Encoder().encode(
        [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "0")]
    )
    data = SETTINGS + frame(http2.HEADERS, 4 | 1, sid, trailers_only)
    with pytest.raises(ConnectionFailed) as info:
        c.receive(data + frame(http2.DATA, 0, 0, b"x"))
    assert info.value.events == [Closed(sid, http2.OK, "")]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (2.5, b"2500000u"),
        (0.0, b"1n"),
        (0.05, b"50000000n"),
        (120, b"120000m"),
        (1e7, b"10000000S"),
    ],
)
def test_format_timeout(seconds: float, text: bytes) -> None:
    assert http2.format_timeout(seconds) == text


@given(st.floats(min_value=1e-9, max_value=1e9))
def test_a_formatted_timeout_parses_back_to_no_less(seconds: float) -> None:
    parsed = http2.parse_timeout(http2.format_timeout(seconds))
    assert parsed is not None and seconds * (1 - 1e-9) <= parsed <= seconds * 1.001 + 1e-9


@given(st.text(max_size=300))
def test_grpc_message_round_trip(text: str) -> None:
    encoded = http2.encode_message(text)
    assert all(0x20 <= b <= 0x7E for b in encoded)
    expected = text.encode("utf-8", "replace").decode("utf-8", "replace")
    assert http2.decode_message(encoded) == expected


def test_a_long_grpc_message_is_cut_between_escapes() -> None:
    for pad in range(3):
        encoded = http2.encode_message("x" * (4094 + pad) + "é" * 10)
        assert len(encoded) <= http2.MAX_STATUS_MESSAGE
        assert b"%" not in encoded[-2:]
        http2.decode_message(encoded)  # no half escape left


def _served_bytes() -> tuple[ClientConnection, list[int], bytes]:
    """A client with three calls open, and what a server sends to answer them."""
    p = Pair()
    sids = [p.client.start(PATH, b"q%d" % i) for i in range(3)]
    p.pump()
    p.answer(sids[0], b"a" * 40000, b"b")
    p.answer(sids[1], status=5, message="nope ✓")
    p.server.reset_stream(sids[2], h2.errors.ErrorCodes.REFUSED_STREAM)
    p.server.ping(b"abcdefgh")
    fresh = ClientConnection(max_message=1 << 20)
    for i in range(3):
        fresh.start(PATH, b"q%d" % i)
    return fresh, sids, p.server.data_to_send()


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=200_000), max_size=12))
def test_any_cut_of_the_servers_bytes_gives_the_same_events(cuts: list[int]) -> None:
    whole_client, sids, data = _served_bytes()
    server_prefix = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    server_prefix.initiate_connection()
    head = server_prefix.data_to_send()  # the server's preface (SETTINGS) comes first
    expected = whole_client.receive(head + data)
    assert [e.stream_id for e in expected if isinstance(e, Closed)] == sids
    c, _, _ = _served_bytes()
    stream = head + data
    events: list[Event] = []
    pos = 0
    for cut in sorted({min(x, len(stream)) for x in cuts}):
        events += c.receive(stream[pos:cut])
        pos = cut
    events += c.receive(stream[pos:])
    assert events == expected


frames = st.builds(
    frame,
    st.integers(min_value=0, max_value=12),
    st.integers(min_value=0, max_value=255),
    st.sampled_from([0, 1, 2, 3, 5, 7]),
    st.binary(max_size=40),
)


@settings(max_examples=300)
@given(st.lists(frames, max_size=12))
def test_any_frames_give_events_or_a_goaway_never_another_exception(
    junk: list[bytes],
) -> None:
    c = ClientConnection(max_message=100)
    c.start(PATH, b"")
    c.start(PATH, b"")
    c.data_to_send()
    try:
        for piece in [SETTINGS, *junk]:
            for ev in c.receive(piece):
                assert isinstance(ev, (Message, Closed))
    except ConnectionFailed:
        assert not c.usable
        assert frame_types(c.data_to_send())[-1] == http2.GOAWAY


def frame_types(data: bytes) -> list[int]:
    kinds, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 3], "big")
        kinds.append(data[pos + 3])
        pos += 9 + n
    return kinds


def test_an_answer_before_the_whole_request_resets_the_stream_and_drops_the_rest() -> None:
    p = Pair()
    sid = p.client.start(PATH, b"r" * 200_000)  # more than h2's 64 KiB window
    p.pump()
    p.server.send_headers(
        sid,
        [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "8")],
        end_stream=True,
    )
    events = p.pump()
    assert [(e.stream_id, e.code) for e in events if isinstance(e, Closed)] == [
        (sid, http2.RESOURCE_EXHAUSTED)
    ]
    assert (sid, h2.errors.ErrorCodes.CANCEL) in p.resets()
    p.request(sid)  # h2 gives its window back: nothing more of the request goes out
    assert p.pump() == [] and p.client.data_to_send() == b""

"""grpcwire, sans-IO: gRPC unary calls from the bytes an HTTP/2 client (h2's own client side)
sends, and the answers' bytes back."""

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

from streamsrv.cri import grpcwire
from streamsrv.cri.grpcwire import Call, Cancelled, ConnectionFailed, UnaryConnection
from streamsrv.rpc import http2

PATH = "/runtime.v1.RuntimeService/Version"


def frame(message: bytes, compressed: int = 0) -> bytes:
    return struct.pack(">BI", compressed, len(message)) + message


def request_headers(path: str = PATH, **extra: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *extra.items(),
    ]


class Pair:
    """A client (h2, client side) and our server connection, bytes moved by hand."""

    def __init__(self, *, max_message: int = 1 << 20, window: int | None = None) -> None:
        self.server = UnaryConnection(max_message=max_message, max_send=1 << 20)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        if window is not None:
            self.client.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
            )
        self.client.initiate_connection()
        self.events: list[h2.events.Event] = []  # what the client saw
        self.pump()

    def pump(self) -> list[grpcwire.Event]:
        out: list[grpcwire.Event] = []
        while True:
            up = self.client.data_to_send()
            if up:
                out += self.server.receive(up)
            down = self.server.data_to_send()
            if down:
                self.events += self.client.receive_data(down)
            if not up and not down:
                return out

    def call(self, message: bytes = b"\x0a\x01x", path: str = PATH, **extra: str) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, request_headers(path, **extra))
        self.client.send_data(sid, frame(message), end_stream=True)
        return sid

    def answer(self, sid: int) -> tuple[dict[bytes, bytes], bytes, dict[bytes, bytes]]:
        """The headers, data and trailers the client got on ``sid`` (trailers-only: no data)."""
        heads: list[dict[bytes, bytes]] = []
        data = b""
        for ev in self.events:
            if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                if ev.stream_id == sid:
                    heads.append({bytes(k): bytes(v) for k, v in ev.headers or ()})
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                data += ev.data or b""
        if len(heads) == 1:
            return heads[0], data, heads[0]
        assert len(heads) == 2, heads
        return heads[0], data, heads[1]


def test_a_call_and_its_answer() -> None:
    p = Pair()
    sid = p.call(b"hello", **{"grpc-timeout": "250m"})
    assert p.pump() == [Call(sid, PATH, b"hello", 0.25)]
    p.server.respond(sid, b"world")
    p.pump()
    headers, data, trailers = p.answer(sid)
    assert headers[b":status"] == b"200" and headers[b"content-type"] == b"application/grpc"
    assert data == frame(b"world")
    assert trailers[b"grpc-status"] == b"0"
    assert p.server.open_calls == 0


def test_a_failure_is_a_trailers_only_answer_with_its_message_percent_encoded() -> None:
    p = Pair()
    sid = p.call()
    p.pump()
    p.server.fail(sid, http2.NOT_FOUND, 'sandbox "ü" 100%\n')
    p.pump()
    headers, data, trailers = p.answer(sid)
    assert data == b"" and headers is trailers
    assert headers[b":status"] == b"200" and headers[b"grpc-status"] == b"5"
    assert headers[b"grpc-message"] == b'sandbox "%C3%BC" 100%25%0A'


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"1H", 3600.0), (b"2M", 120.0), (b"3S", 3.0), (b"4m", 4e-3), (b"5u", 5e-6), (b"6n", 6e-9)],
)
def test_timeouts(value: bytes, seconds: float) -> None:
    assert grpcwire.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"1", b"S", b"123456789S", b"1s", b"-1S", b"1.5S"])
def test_timeouts_that_do_not_parse(value: bytes) -> None:
    assert grpcwire.parse_timeout(value) is None


def test_a_bad_timeout_is_refused_and_the_connection_goes_on() -> None:
    p = Pair()
    bad = p.call(b"m", **{"grpc-timeout": "soon"})
    good = p.call(b"ok")
    assert p.pump() == [Call(good, PATH, b"ok", None)]
    assert p.answer(bad)[0][b"grpc-status"] == b"%d" % http2.INTERNAL


def test_a_message_over_the_limit_is_refused_as_its_prefix_arrives() -> None:
    p = Pair(max_message=100)
    sid = p.client.get_next_available_stream_id()
    p.client.send_headers(sid, request_headers())
    p.client.send_data(sid, struct.pack(">BI", 0, 101) + b"x" * 50)
    assert p.pump() == []
    headers, _, _ = p.answer(sid)
    assert headers[b"grpc-status"] == b"%d" % http2.RESOURCE_EXHAUSTED
    assert b"larger than max (101 vs. 100)" in headers[b"grpc-message"]
    assert p.server.open_calls == 0  # nothing of it is kept
    reset = [e for e in p.events if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in reset] == [(sid, h2.errors.ErrorCodes.NO_ERROR)]
    after = p.call(b"next")
    assert p.pump() == [Call(after, PATH, b"next", None)]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (frame(b"a", compressed=1), http2.UNIMPLEMENTED),
        (frame(b"a") + frame(b"b"), http2.UNIMPLEMENTED),
        (b"", http2.INTERNAL),
        (b"\x00\x00\x00", http2.INTERNAL),
        (frame(b"abc")[:-1], http2.INTERNAL),
    ],
    ids=["compressed", "two messages", "none", "a short prefix", "a short message"],
)
def test_a_request_that_is_not_one_plain_message_is_refused(body: bytes, code: int) -> None:
    p = Pair()
    sid = p.client.get_next_available_stream_id()
    p.client.send_headers(sid, request_headers())
    p.client.send_data(sid, body, end_stream=True)
    assert p.pump() == []
    assert p.answer(sid)[0][b"grpc-status"] == b"%d" % code


@pytest.mark.parametrize(
    ("header", "value", "status"),
    [(":method", "GET", b"405"), ("content-type", "text/plain", b"415")],
)
def test_what_is_not_grpc_gets_an_http_status(header: str, value: str, status: bytes) -> None:
    p = Pair()
    sid = p.client.get_next_available_stream_id()
    headers = [(k, value if k == header else v) for k, v in request_headers()]
    p.client.send_headers(sid, headers, end_stream=True)
    assert p.pump() == []
    assert p.answer(sid)[0] == {b":status": status}


def test_content_type_with_a_subtype_is_grpc() -> None:
    p = Pair()
    sid = p.client.get_next_available_stream_id()
    headers = [
        (k, "application/grpc+proto" if k == "content-type" else v) for k, v in request_headers()
    ]
    p.client.send_headers(sid, headers)
    p.client.send_data(sid, frame(b"m"), end_stream=True)
    assert p.pump() == [Call(sid, PATH, b"m", None)]


def test_an_answer_waits_for_the_clients_window() -> None:
    p = Pair(window=100)
    sid = p.call()
    p.pump()
    p.server.respond(sid, b"z" * 1000)
    p.pump()
    got = [e for e in p.events if isinstance(e, h2.events.DataReceived)]
    assert sum(len(e.data or b"") for e in got) == 100
    assert not any(isinstance(e, h2.events.TrailersReceived) for e in p.events)
    assert p.server.open_calls == 1
    p.client.increment_flow_control_window(2000, stream_id=sid)
    p.client.increment_flow_control_window(2000)
    p.pump()
    _, data, trailers = p.answer(sid)
    assert data == frame(b"z" * 1000) and trailers[b"grpc-status"] == b"0"
    assert p.server.open_calls == 0


def test_a_reset_call_is_cancelled_and_its_answer_dropped() -> None:
    p = Pair()
    sid = p.call()
    p.pump()
    p.client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    assert p.pump() == [Cancelled(sid)]
    p.server.respond(sid, b"late")
    p.server.fail(sid, http2.INTERNAL, "late")
    assert p.server.data_to_send() == b""


def test_an_answer_over_max_send_is_refused() -> None:
    p = Pair()
    sid = p.call()
    p.pump()
    p.server.respond(sid, b"x" * ((1 << 20) + 1))
    p.pump()
    headers, data, _ = p.answer(sid)
    assert data == b"" and headers[b"grpc-status"] == b"%d" % http2.RESOURCE_EXHAUSTED


def test_while_stopping_new_calls_are_refused_and_open_ones_answered() -> None:
    p = Pair()
    old = p.call(b"old")
    p.pump()
    p.server.refuse_new_calls()
    new = p.call(b"new")
    assert p.pump() == []
    reset = [e for e in p.events if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in reset] == [
        (new, h2.errors.ErrorCodes.REFUSED_STREAM)
    ]
    p.server.respond(old, b"done")
    p.server.close()
    p.pump()
    assert p.answer(old)[1] == frame(b"done")
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in p.events)


def test_what_the_connection_holds_of_unfinished_requests_is_bounded() -> None:
    p = Pair(max_message=1000)
    assert p.server.max_buffered == 2 * 1005
    sids = []
    for _ in range(2):
        sids.append(sid := p.client.get_next_available_stream_id())
        p.client.send_headers(sid, request_headers())
        p.client.send_data(sid, struct.pack(">BI", 0, 1000) + b"a" * 900)
    first, second = sids
    p.pump()
    assert p.server.buffered == 1810
    third = p.client.get_next_available_stream_id()
    p.client.send_headers(third, request_headers())
    p.client.send_data(third, struct.pack(">BI", 0, 1000) + b"a" * 300)
    assert p.pump() == []
    assert p.answer(third)[0][b"grpc-status"] == b"%d" % http2.RESOURCE_EXHAUSTED
    assert p.server.buffered == 1810  # the refused call's bytes are not kept
    p.client.send_data(first, b"b" * 100, end_stream=True)
    assert p.pump() == [Call(first, PATH, b"a" * 900 + b"b" * 100, None)]
    assert p.server.buffered == 905
    p.client.reset_stream(second)
    assert p.pump() == [Cancelled(second)]
    assert p.server.buffered == 0


def test_a_header_list_over_the_limit_fails_the_connection() -> None:
    p = Pair()
    sid = p.client.get_next_available_stream_id()
    p.client.send_headers(sid, [*request_headers(), ("x-big", "a" * grpcwire.MAX_HEADER_LIST_SIZE)])
    with pytest.raises(ConnectionFailed):
        p.pump()


def test_the_settings_advertise_the_limits() -> None:
    p = Pair()
    remote = p.client.remote_settings
    assert remote.max_concurrent_streams == grpcwire.MAX_CONCURRENT_STREAMS
    assert remote.max_header_list_size == grpcwire.MAX_HEADER_LIST_SIZE


def test_not_http2_fails_the_connection() -> None:
    server = UnaryConnection(max_message=100, max_send=100)
    with pytest.raises(ConnectionFailed):
        server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_a_broken_frame_fails_the_connection_with_a_goaway() -> None:
    server = UnaryConnection(max_message=100, max_send=100)
    server.data_to_send()
    bad_settings = b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5  # not 6-byte entries
    with pytest.raises(ConnectionFailed):
        server.receive(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bad_settings)
    goaway = server.data_to_send()
    assert goaway[3] == 0x07  # the frame type: GOAWAY


def _client_bytes(messages: list[bytes]) -> tuple[bytes, list[int]]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    sids = []
    for m in messages:
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, request_headers())
        client.send_data(sid, frame(m), end_stream=True)
        sids.append(sid)
    return client.data_to_send(), sids


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(st.binary(max_size=3000), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=12),
)
def test_the_calls_do_not_depend_on_how_the_bytes_are_cut(
    messages: list[bytes], cuts: list[int]
) -> None:
    data, sids = _client_bytes(messages)
    server = UnaryConnection(max_message=1 << 20, max_send=1 << 20)
    events: list[grpcwire.Event] = []
    last = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        events += server.receive(data[last:cut])
        last = cut
    assert events == [Call(s, PATH, m, None) for s, m in zip(sids, messages, strict=True)]
    assert server.buffered == 0


@settings(max_examples=300)
@given(junk=st.binary(max_size=2000), keep=st.integers(min_value=0, max_value=4000))
def test_garbage_either_makes_events_or_fails_the_connection(junk: bytes, keep: int) -> None:
    """Valid bytes cut short, then anything: never an exception but ConnectionFailed."""
    data, _ = _client_bytes([b"m" * 100, b"n"])
    server = UnaryConnection(max_message=1 << 20, max_send=1 << 20)
    try:
        for ev in server.receive(data[:keep] + junk):
            if isinstance(ev, Call):
                server.respond(ev.stream_id, b"r")
    except ConnectionFailed:
        return
    server.data_to_send()


# ---------------------------------------------------------------------- HTTP/2 itself, by hand


def raw_frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, kind, flags, sid) + payload


def started() -> UnaryConnection:
    """A connection past the client's preface and first SETTINGS."""
    server = UnaryConnection(max_message=1 << 20, max_send=1 << 20)
    assert server.receive(http2.PREFACE + raw_frame(4, 0, 0)) == []
    server.data_to_send()
    return server


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out = []
    while data:
        hi, lo, kind, flags, sid = struct.unpack_from(">BHBBI", data)
        n = (hi << 16) | lo
        out.append((kind, flags, sid, data[9 : 9 + n]))
        data = data[9 + n :]
    return out


def goaway_code(server: UnaryConnection) -> int:
    (kind, _, _, payload), *_ = [f for f in frames(server.data_to_send()) if f[0] == 7]
    assert kind == 7
    return int.from_bytes(payload[4:8], "big")


def test_a_ping_is_answered_with_its_payload() -> None:
    server = started()
    server.receive(raw_frame(6, 0, 0, b"12345678"))
    assert frames(server.data_to_send()) == [(6, 1, 0, b"12345678")]
    server.receive(raw_frame(6, 1, 0, b"12345678"))  # an ACK is not answered
    assert server.data_to_send() == b""


def test_settings_are_acknowledged_and_a_smaller_window_holds_the_answer_back() -> None:
    p = Pair()
    sid = p.call()
    p.pump()
    p.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    p.pump()
    assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in p.events)
    p.server.respond(sid, b"y" * 100)
    p.pump()
    got = sum(len(e.data or b"") for e in p.events if isinstance(e, h2.events.DataReceived))
    assert got == 10
    p.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    p.pump()
    assert p.answer(sid)[1] == frame(b"y" * 100)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (raw_frame(6, 0, 0, b"12345678"), http2.PROTOCOL_ERROR),  # not SETTINGS first
        (raw_frame(4, 0, 0, b"\x00\x04\x80\x00\x00\x00"), http2.FLOW_CONTROL_ERROR),
        (raw_frame(4, 0, 0, b"\x00\x05\x00\x00\x00\x01"), http2.PROTOCOL_ERROR),
        (raw_frame(4, 0, 0, b"\x00"), http2.FRAME_SIZE_ERROR),
        (raw_frame(4, 0, 1), http2.PROTOCOL_ERROR),
    ],
    ids=["first frame a PING", "window too big", "frame size too small", "short", "on a stream"],
)
def test_bad_settings_fail_the_connection(data: bytes, code: int) -> None:
    server = UnaryConnection(max_message=100, max_send=100)
    server.data_to_send()
    with pytest.raises(ConnectionFailed):
        server.receive(http2.PREFACE + data)
    assert goaway_code(server) == code


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (raw_frame(0, 0, 0, b"x"), http2.PROTOCOL_ERROR),  # DATA on stream 0
        (raw_frame(0, 0, 3, b"x"), http2.PROTOCOL_ERROR),  # on an idle stream
        (raw_frame(1, 4, 2, b"\x83"), http2.PROTOCOL_ERROR),  # an even stream
        (raw_frame(1, 4, 1, b"\xff\xff\xff\xff\x0f"), http2.COMPRESSION_ERROR),
        (raw_frame(9, 4, 1, b"\x83"), http2.PROTOCOL_ERROR),  # CONTINUATION alone
        (raw_frame(1, 0, 1, b"\x83") + raw_frame(6, 0, 0, b"12345678"), http2.PROTOCOL_ERROR),
        (raw_frame(3, 0, 7, b"\x00\x00\x00\x08"), http2.PROTOCOL_ERROR),  # reset of idle
        (raw_frame(5, 4, 1, b"\x00\x00\x00\x02"), http2.PROTOCOL_ERROR),  # PUSH_PROMISE
        (raw_frame(8, 0, 0, b"\x00\x00\x00\x00"), http2.PROTOCOL_ERROR),  # increment 0
        (raw_frame(8, 0, 0, b"\x7f\xff\xff\xff"), http2.FLOW_CONTROL_ERROR),
        (raw_frame(0, 8, 1, b"\x05abc"), http2.PROTOCOL_ERROR),  # padding past the end
        (b"\x00\x40\x01" + b"\x00" * 6, http2.FRAME_SIZE_ERROR),  # 16385 bytes announced
    ],
    ids=[
        "data on 0",
        "data idle",
        "even stream",
        "bad hpack",
        "lone continuation",
        "frame inside a header block",
        "reset idle",
        "push promise",
        "zero window update",
        "window overflow",
        "bad padding",
        "frame too big",
    ],
)
def test_broken_http2_fails_the_connection_with_its_code(data: bytes, code: int) -> None:
    server = started()
    if data.startswith(raw_frame(0, 8, 1)[:5]):  # the padded DATA needs its stream open
        server.receive(raw_frame(1, 4, 1, bytes([0x83, 0x86, 0x84])))
        server.data_to_send()
    with pytest.raises(ConnectionFailed):
        server.receive(data)
    assert goaway_code(server) == code
    assert server.receive(raw_frame(6, 0, 0, b"12345678")) == []  # nothing more is read


def test_a_header_block_can_come_in_pieces_and_padded() -> None:
    enc = hpack.Encoder()
    block = enc.encode(request_headers())
    server = started()
    padded = bytes([3]) + block[:10] + b"\x00\x00\x00"
    server.receive(raw_frame(1, 0x08, 1, padded))  # PADDED, no END_HEADERS
    server.receive(raw_frame(9, 0, 1, block[10:20]))
    server.receive(raw_frame(9, 4, 1, block[20:]))
    data = bytes([2]) + frame(b"msg") + b"\x00\x00"
    assert server.receive(raw_frame(0, 0x09, 1, data)) == [Call(1, PATH, b"msg", None)]


def test_past_the_stream_limit_new_calls_are_refused() -> None:
    server = started()
    enc = hpack.Encoder()
    for sid in range(1, 2 * grpcwire.MAX_CONCURRENT_STREAMS + 3, 2):
        server.receive(raw_frame(1, 4, sid, enc.encode(request_headers())))
    assert server.open_calls == grpcwire.MAX_CONCURRENT_STREAMS
    resets = [(sid, p) for kind, _, sid, p in frames(server.data_to_send()) if kind == 3]
    last = 2 * grpcwire.MAX_CONCURRENT_STREAMS + 1
    assert resets == [(last, b"\x00\x00\x00\x07")]  # REFUSED_STREAM


def test_the_windows_are_given_back_as_data_comes() -> None:
    server = started()
    enc = hpack.Encoder()
    server.receive(raw_frame(1, 4, 1, enc.encode(request_headers())))
    server.data_to_send()
    chunk = b"x" * 16384
    updates: dict[int, int] = {}
    for i in range(http2.WINDOW // len(chunk)):  # a whole window's worth, on one stream
        data = struct.pack(">BI", 0, http2.WINDOW - 5) + chunk[5:] if i == 0 else chunk
        server.receive(raw_frame(0, 0, 1, data))
        for kind, _, sid, payload in frames(server.data_to_send()):
            if kind == 8:
                updates[sid] = updates.get(sid, 0) + int.from_bytes(payload, "big")
    assert updates == {0: http2.WINDOW, 1: http2.WINDOW}


def test_data_after_the_end_of_a_request_resets_its_call() -> None:
    p = Pair()
    sid = p.call()
    assert len(p.pump()) == 1
    events = p.server.receive(raw_frame(0, 0, sid, b"late"))
    assert events == [Cancelled(sid)]
    assert (3, 0, sid, b"\x00\x00\x00\x05") in frames(p.server.data_to_send())  # STREAM_CLOSED


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=12),
            st.integers(min_value=0, max_value=255),
            st.integers(min_value=0, max_value=9),
            st.binary(max_size=40),
        ),
        max_size=25,
    )
)
def test_any_frames_make_events_or_fail_the_connection(
    seq: list[tuple[int, int, int, bytes]],
) -> None:
    """Well-framed frames of any type, flags, stream and payload: events, or ConnectionFailed
    with a GOAWAY; never another exception, and the bookkeeping stays consistent."""
    server = started()
    enc = hpack.Encoder()
    try:
        for kind, flags, sid, payload in seq:
            if kind == 1 and payload[:1] == b"\x00":  # sometimes a real request's headers
                payload = enc.encode(request_headers())
            for ev in server.receive(raw_frame(kind, flags, sid, payload)):
                if isinstance(ev, Call):
                    server.respond(ev.stream_id, b"r")
            assert server.buffered == sum(len(s.body) for s in server._streams.values())
    except ConnectionFailed:
        assert goaway_code(server) >= 0
        return
    server.data_to_send()


def test_a_header_block_in_endless_pieces_fails_the_connection() -> None:
    server = started()
    server.receive(raw_frame(1, 0, 1, b"\x83"))
    with pytest.raises(ConnectionFailed):
        for _ in range(3 * grpcwire.MAX_HEADER_LIST_SIZE // 1000):
            server.receive(raw_frame(9, 0, 1, b"\x83" * 1000))
    assert goaway_code(server) == http2.ENHANCE_YOUR_CALM

"""The SPDY/3.1 codec: literal bytes from protocol.md, client/server pairs, generated input."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsrv.protocol import spdy
from streamsrv.protocol.spdy import (
    DICTIONARY,
    DataReceived,
    GoAwayReceived,
    LocalProtocolError,
    PingAck,
    PingReceived,
    ProtocolError,
    RemoteProtocolError,
    Role,
    SpdyConnection,
    StreamEnded,
    StreamOpened,
    StreamReplied,
    StreamReset,
)


def zblock(pairs: list[tuple[bytes, bytes]], ctx: zlib._Compress | None = None) -> bytes:
    raw = struct.pack(">I", len(pairs)) + b"".join(
        struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v for n, v in pairs
    )
    c = ctx or zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    return c.compress(raw) + c.flush(zlib.Z_SYNC_FLUSH)


def syn_stream(sid: int, block: bytes, flags: int = 0) -> bytes:
    body = struct.pack(">IIBB", sid, 0, 0, 0) + block
    return struct.pack(">HHI", 0x8003, 1, (flags << 24) | len(body)) + body


def pair() -> tuple[SpdyConnection, SpdyConnection]:
    return SpdyConnection(Role.CLIENT), SpdyConnection(Role.SERVER)


def pump(a: SpdyConnection, b: SpdyConnection) -> list[spdy.Event]:
    return b.receive_data(a.data_to_send())


# ------------------------------------------------------------------------------ literal bytes


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(DICTIONARY) == 1423
    assert zlib.adler32(DICTIONARY) == 0xE3C6A7C2


def test_empty_header_block_vector() -> None:
    assert zblock([]).hex() == "78f9e3c6a7c202a6230600000000ffff"
    c = SpdyConnection(Role.CLIENT)
    c.open_stream({})
    wire = c.data_to_send()
    assert wire[18:].hex() == "78f9e3c6a7c202a6230600000000ffff"


def test_hand_assembled_syn_stream_is_parsed() -> None:
    s = SpdyConnection(Role.SERVER)
    events = s.receive_data(syn_stream(1, zblock([(b"streamtype", b"error")])))
    assert events == [StreamOpened(1, {"streamtype": "error"})]
    s.reply_stream(1)
    reply = s.data_to_send()
    assert reply[:4] == bytes.fromhex("80030002")
    assert reply[8:12] == bytes.fromhex("00000001")
    # The server's own first block starts a fresh zlib stream: header 78 f9 + dictionary id.
    assert reply[12:18] == bytes.fromhex("78f9e3c6a7c2")


def test_ping_from_the_peer_is_echoed_byte_for_byte() -> None:
    s = SpdyConnection(Role.SERVER)
    ping = bytes.fromhex("800300060000000400000001")
    assert s.receive_data(ping) == [PingReceived(1)]
    assert s.data_to_send() == ping


def test_own_ping_answer_is_an_ack() -> None:
    s = SpdyConnection(Role.SERVER)
    assert s.ping() == 2
    assert s.data_to_send() == bytes.fromhex("800300060000000400000002")
    assert s.receive_data(bytes.fromhex("800300060000000400000002")) == [PingAck(2)]
    assert s.data_to_send() == b""


def test_rst_goaway_and_fin_layouts() -> None:
    s = SpdyConnection(Role.SERVER)
    s.receive_data(syn_stream(3, zblock([(b"streamtype", b"stdout")])))
    s.reply_stream(3)
    s.data_to_send()
    s.end_stream(3)
    assert s.data_to_send() == bytes.fromhex("0000000301000000")
    s.reset_stream(3)
    assert s.data_to_send() == bytes.fromhex("80030003000000080000000300000005")
    s.goaway()
    assert s.data_to_send() == bytes.fromhex("80030007000000080000000300000000")


def test_data_frame_layout() -> None:
    c, s = pair()
    sid = c.open_stream({"streamtype": "stdout"})
    pump(c, s)
    s.reply_stream(sid)
    s.data_to_send()
    s.send_data(sid, b"hi\n")
    assert s.data_to_send() == bytes.fromhex("00000001 00000003 68690a".replace(" ", ""))


# ------------------------------------------------------------------------------ pairs


def test_streams_data_and_half_close_both_ways() -> None:
    c, s = pair()
    a = c.open_stream({"streamtype": "stdin"})
    b = c.open_stream([("streamtype", "stdout"), ("requestid", "7")])
    assert (a, b) == (1, 3)
    assert pump(c, s) == [
        StreamOpened(1, {"streamtype": "stdin"}),
        StreamOpened(3, {"streamtype": "stdout", "requestid": "7"}),
    ]
    s.reply_stream(1)
    s.reply_stream(3)
    assert pump(s, c) == [StreamReplied(1, {}), StreamReplied(3, {})]
    c.send_data(1, b"x" * 100_000, fin=True)
    events = pump(c, s)
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == b"x" * 100_000
    assert all(len(e.data) <= 32768 for e in events if isinstance(e, DataReceived))
    assert events[-1] == StreamEnded(1)
    with pytest.raises(LocalProtocolError):
        c.send_data(1, b"late")
    s.send_data(3, b"out", fin=True)
    assert pump(s, c) == [DataReceived(3, b"out"), StreamEnded(3)]
    s.end_stream(1)
    pump(s, c)
    assert 1 not in c.streams and 1 not in s.streams


def test_header_context_spans_many_frames() -> None:
    c, s = pair()
    for i in range(200):
        c.open_stream({"streamtype": "data", "port": str(8000 + i), "requestid": str(i)})
    events = pump(c, s)
    assert [e.headers["requestid"] for e in events if isinstance(e, StreamOpened)] == [
        str(i) for i in range(200)
    ]
    for e in events:
        assert isinstance(e, StreamOpened)
        s.reply_stream(e.stream_id, {"x": "y"})
    replies = pump(s, c)
    assert all(isinstance(r, StreamReplied) and r.headers == {"x": "y"} for r in replies)


def test_reset_and_goaway_reach_the_peer() -> None:
    c, s = pair()
    sid = c.open_stream({})
    pump(c, s)
    s.reset_stream(sid, spdy.RstStatus.CANCEL)
    assert pump(s, c) == [StreamReset(sid, 5)]
    s.goaway()
    assert pump(s, c) == [GoAwayReceived(1, 0)]
    with pytest.raises(LocalProtocolError):
        c.open_stream({})


def test_reused_stream_id_is_refused_with_protocol_error() -> None:
    s = SpdyConnection(Role.SERVER)
    ctx = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    s.receive_data(syn_stream(5, zblock([], ctx)))
    assert s.receive_data(syn_stream(3, zblock([], ctx))) == []
    assert s.data_to_send() == bytes.fromhex("80030003000000080000000300000001")


def test_data_for_unknown_streams_is_dropped() -> None:
    s = SpdyConnection(Role.SERVER)
    assert s.receive_data(bytes.fromhex("00000009 00000002 6869".replace(" ", ""))) == []


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (bytes.fromhex("8003000500000000"), "unknown control frame type 5"),
        (bytes.fromhex("8003000a00000000"), "unknown control frame type 10"),
        (bytes.fromhex("80030006000000050000000100"), "bad PING"),
        (bytes.fromhex("800300070000000400000000"), "bad GOAWAY"),
        (bytes.fromhex("80030003000000080000000100000000"), "RST_STREAM status 0"),
        (bytes.fromhex("800300040000000800000002" + "00" * 4), "SETTINGS length"),
        (bytes.fromhex("0000000000000000"), "stream 0"),
        (syn_stream(1, b"\x00\x01garbage-not-zlib"), "does not inflate"),
        (syn_stream(1, zblock([(b"StreamType", b"x")])), "invalid header name"),
        (syn_stream(1, zblock([(b"host", b"x")])), "not allowed"),
    ],
)
def test_malformed_frames_end_the_connection(frame: bytes, why: str) -> None:
    s = SpdyConnection(Role.SERVER)
    with pytest.raises(RemoteProtocolError, match=why):
        s.receive_data(frame)
    assert s.data_to_send() == bytes.fromhex("80030007000000080000000000000001")  # GOAWAY(1)
    with pytest.raises(RemoteProtocolError):
        s.receive_data(b"")  # and it stays failed


def test_protocol_error_is_abstract() -> None:
    with pytest.raises(TypeError):
        ProtocolError("x")


def test_settings_and_window_update_are_reported_not_enforced() -> None:
    c, s = pair()
    c.send_settings({7: 65536})
    c.send_window_update(0, 1000)
    events = pump(c, s)
    assert events == [spdy.SettingsReceived({7: (0, 65536)}), spdy.WindowUpdateReceived(0, 1000)]


# ------------------------------------------------------------------------------ generated

ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                                                   st.text(max_size=12), max_size=3)),
        st.tuples(st.just("data"), st.binary(max_size=70_000)),
        st.tuples(st.just("fin"), st.none()),
        st.tuples(st.just("ping"), st.none()),
    ),
    max_size=25,
)  # fmt: skip


def run_ops(
    c: SpdyConnection, s: SpdyConnection, script: list[tuple[str, object]]
) -> tuple[bytes, list[spdy.Event]]:
    """Apply client operations; return the client's bytes and what the server made of them."""
    wire = b""
    expected: list[spdy.Event] = []
    open_ids: list[int] = []
    for op, arg in script:
        if op == "open":
            assert isinstance(arg, dict)
            sid = c.open_stream(arg)
            open_ids.append(sid)
            expected.append(StreamOpened(sid, arg))
        elif op == "data" and open_ids:
            assert isinstance(arg, bytes)
            c.send_data(open_ids[-1], arg)
        elif op == "fin" and open_ids:
            c.end_stream(open_ids.pop())
        elif op == "ping":
            c.ping()
        wire += c.data_to_send()
    return wire, expected


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops, cuts=st.lists(st.integers(min_value=0, max_value=10**7), max_size=20))
def test_any_chunking_gives_the_same_events(
    script: list[tuple[str, object]], cuts: list[int]
) -> None:
    wire, expected = run_ops(*pair(), script)
    whole = SpdyConnection(Role.SERVER).receive_data(wire)
    chunked_conn = SpdyConnection(Role.SERVER)
    chunked: list[spdy.Event] = []
    last = 0
    for cut in sorted(c % (len(wire) + 1) for c in cuts) + [len(wire)]:
        chunked += chunked_conn.receive_data(wire[last:cut])
        last = cut
    merged_whole = _merge(whole)
    assert _merge(chunked) == merged_whole
    assert [e for e in whole if isinstance(e, StreamOpened)] == expected


def _merge(events: list[spdy.Event]) -> list[object]:
    """Events with consecutive data of one stream joined (frames may split differently)."""
    out: list[object] = []
    for e in events:
        if (
            isinstance(e, DataReceived)
            and out
            and isinstance(out[-1], tuple)
            and out[-1][0] == e.stream_id
        ):
            out[-1] = (e.stream_id, out[-1][1] + e.data)
        elif isinstance(e, DataReceived):
            out.append((e.stream_id, e.data))
        else:
            out.append(e)
    return out


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_the_documented_error(data: bytes) -> None:
    s = SpdyConnection(Role.SERVER)
    try:
        s.receive_data(data)
        s.receive_eof()
    except RemoteProtocolError:
        pass


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_a_valid_preface(data: bytes) -> None:
    c, s = pair()
    c.open_stream({"streamtype": "error"})
    s.receive_data(c.data_to_send())
    try:
        s.receive_data(data)
    except RemoteProtocolError:
        assert s.data_to_send().endswith(bytes.fromhex("0000000100000001"))

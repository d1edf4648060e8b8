"""The SPDY/3.1 codec: literal bytes from docs/protocol.md, client/server pairs, generated input.

Everything here is pure bytes. ``FrameFactory`` builds raw frames with its own zlib context
(h2's ``frame_factory``), standing in for a Go peer; ``Pair`` links a client and a server codec
(h11's ``ConnectionPair``).
"""

from __future__ import annotations

import hashlib
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsrv import errors
from streamsrv.protocol import spdy
from streamsrv.protocol.spdy import (
    DICTIONARY,
    STREAM_TRANSITIONS,
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    HeadersReceived,
    LocalProtocolError,
    PingAck,
    PingReceived,
    ProtocolError,
    RemoteProtocolError,
    Role,
    RstStatus,
    SettingsReceived,
    SpdyConnection,
    StreamEnded,
    StreamInput,
    StreamOpened,
    StreamReplied,
    StreamReset,
    StreamState,
    WindowUpdateReceived,
)

EMPTY_BLOCK = bytes.fromhex("78f9e3c6a7c202a6230600000000ffff")  # docs/protocol.md §6.3


def hx(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def goaway_bytes(last: int, status: int) -> bytes:
    return hx("80030007 00000008") + struct.pack(">II", last, status)


def new_deflater(level: int = 9) -> Any:
    return zlib.compressobj(level, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)


def raw_block(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    pairs = list(pairs)
    out = [struct.pack(">I", len(pairs))]
    for name, value in pairs:
        out += [struct.pack(">I", len(name)), name, struct.pack(">I", len(value)), value]
    return b"".join(out)


Pairs = Iterable[tuple[bytes, bytes]]


class FrameFactory:
    """Raw frames as a peer would write them, with that peer's own deflate context."""

    def __init__(self, level: int = 9) -> None:
        self.deflater = new_deflater(level)

    def compress(self, raw: bytes) -> bytes:
        out: bytes = self.deflater.compress(raw) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        return out

    def block(self, pairs: Pairs) -> bytes:
        return self.compress(raw_block(pairs))

    @staticmethod
    def control(kind: int, body: bytes, flags: int = 0, version: int = 3) -> bytes:
        return struct.pack(">HHI", 0x8000 | version, kind, flags << 24 | len(body)) + body

    def syn_stream(
        self, sid: int, pairs: Pairs = (), flags: int = 0, associated: int = 0, priority: int = 0
    ) -> bytes:
        body = struct.pack(">IIBB", sid, associated, priority << 5, 0) + self.block(pairs)
        return self.control(1, body, flags)

    def syn_reply(self, sid: int, pairs: Pairs = (), flags: int = 0) -> bytes:
        return self.control(2, struct.pack(">I", sid) + self.block(pairs), flags)

    def headers(self, sid: int, pairs: Pairs = (), flags: int = 0) -> bytes:
        return self.control(8, struct.pack(">I", sid) + self.block(pairs), flags)

    @staticmethod
    def data(sid: int, payload: bytes = b"", flags: int = 0) -> bytes:
        return struct.pack(">II", sid, flags << 24 | len(payload)) + payload

    def rst(self, sid: int, status: int = 5) -> bytes:
        return self.control(3, struct.pack(">II", sid, status))

    def ping(self, ping_id: int) -> bytes:
        return self.control(6, struct.pack(">I", ping_id))

    def goaway(self, last: int, status: int = 0) -> bytes:
        return self.control(7, struct.pack(">II", last, status))

    def settings(self, entries: list[tuple[int, int, int]], flags: int = 0) -> bytes:
        body = struct.pack(">I", len(entries)) + b"".join(
            struct.pack(">II", f << 24 | i, v) for f, i, v in entries
        )
        return self.control(4, body, flags)

    def window_update(self, sid: int, delta: int) -> bytes:
        return self.control(9, struct.pack(">II", sid, delta))


def split_frames(wire: bytes) -> list[tuple[bool, int, int, bytes]]:
    """``(is_control, type or stream id, flags, body)`` for every frame of ``wire``."""
    out, pos = [], 0
    while pos < len(wire):
        first, second = struct.unpack_from(">II", wire, pos)
        length = second & 0xFFFFFF
        body = wire[pos + 8 : pos + 8 + length]
        assert len(body) == length, "truncated frame in output"
        if first & 0x80000000:
            out.append((True, first & 0xFFFF, second >> 24, body))
        else:
            out.append((False, first, second >> 24, body))
        pos += 8 + length
    return out


class Pair:
    """A client and a server codec wired back to back."""

    def __init__(self, **kwargs: Any) -> None:
        self.client = SpdyConnection(Role.CLIENT, **kwargs)
        self.server = SpdyConnection(Role.SERVER, **kwargs)

    def to_server(self) -> list[Event]:
        return self.server.receive_data(self.client.data_to_send())

    def to_client(self) -> list[Event]:
        return self.client.receive_data(self.server.data_to_send())

    def open(self, headers: dict[str, str] | None = None) -> int:
        """A client stream the server has replied to."""
        sid = self.client.open_stream(headers or {"streamtype": "stdout"})
        assert self.to_server()[0] == StreamOpened(sid, headers or {"streamtype": "stdout"})
        self.server.reply_stream(sid)
        assert self.to_client() == [StreamReplied(sid, {})]
        return sid


# ------------------------------------------------------------------------------ literal bytes


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(DICTIONARY) == 1423
    assert zlib.adler32(DICTIONARY) == 0xE3C6A7C2
    digest = "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    assert hashlib.sha256(DICTIONARY).hexdigest() == digest
    assert DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")


def test_empty_header_block_compresses_to_the_documented_vector() -> None:
    assert FrameFactory().block([]) == EMPTY_BLOCK
    assert spdy.encode_header_block({}) == b"\x00\x00\x00\x00"
    c = SpdyConnection(Role.CLIENT)
    assert c.open_stream({}) == 1
    assert c.data_to_send() == hx("80030001 0000001a 00000001 00000000 0000") + EMPTY_BLOCK


def test_hand_assembled_syn_stream_is_parsed_and_replied() -> None:
    block = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    raw = struct.pack(">I", 1) + struct.pack(">I", 10) + b"streamtype" + struct.pack(">I", 5)
    compressed = block.compress(raw + b"error") + block.flush(zlib.Z_SYNC_FLUSH)
    assert compressed[:6] == hx("78f9 e3c6a7c2")  # level-9 header + dictionary id
    body = struct.pack(">IIBB", 1, 0, 0, 0) + compressed
    frame = struct.pack(">HHI", 0x8003, 1, len(body)) + body
    s = SpdyConnection(Role.SERVER)
    assert s.receive_data(frame) == [StreamOpened(1, {"streamtype": "error"})]
    assert s.stream_state(1) is StreamState.SYN_RECEIVED
    assert s.data_to_send() == b""  # the server never speaks first
    s.reply_stream(1)
    # SYN_REPLY id=1, empty block from the server's own fresh deflater (docs/protocol.md A.1).
    assert s.data_to_send() == hx("80030002 00000014 00000001") + EMPTY_BLOCK
    assert s.stream_state(1) is StreamState.OPEN


def test_later_blocks_continue_the_same_zlib_stream() -> None:
    c = SpdyConnection(Role.CLIENT)
    c.open_stream({"streamtype": "error"})
    c.open_stream({"streamtype": "stdout"})
    first, second = split_frames(c.data_to_send())
    assert first[3][10:12] == hx("78f9") and first[3].endswith(hx("0000ffff"))
    assert second[3][10:12] != hx("78f9") and second[3].endswith(hx("0000ffff"))
    inflater = zlib.decompressobj(zdict=DICTIONARY)
    assert inflater.decompress(first[3][10:]) == raw_block([(b"streamtype", b"error")])
    assert inflater.decompress(second[3][10:]) == raw_block([(b"streamtype", b"stdout")])


def test_peer_ping_is_echoed_byte_for_byte() -> None:
    s = SpdyConnection(Role.SERVER)
    ping = hx("80 03 00 06 00 00 00 04 00 00 00 01")
    assert s.receive_data(ping) == [PingReceived(1)]
    assert s.data_to_send() == ping
    c = SpdyConnection(Role.CLIENT)
    assert c.receive_data(hx("80030006 00000004 00000002")) == [PingReceived(2)]
    assert c.data_to_send() == hx("80030006 00000004 00000002")


def test_own_pings_count_up_by_parity_and_come_back_as_acks() -> None:
    p = Pair()
    assert [p.client.ping() for _ in range(3)] == [1, 3, 5]
    assert [p.server.ping() for _ in range(2)] == [2, 4]
    assert p.server.data_to_send() == hx("80030006 00000004 00000002 80030006 00000004 00000004")
    p.server.ping(10)
    assert p.to_client() == [PingReceived(10)]
    assert p.to_server() == [PingReceived(1), PingReceived(3), PingReceived(5), PingAck(10)]
    assert p.to_client() == [PingAck(1), PingAck(3), PingAck(5)]
    assert p.client.data_to_send() == b""  # acks are not echoed again


def test_ping_ids_wrap_like_spdystream() -> None:
    c, s = SpdyConnection(Role.CLIENT), SpdyConnection(Role.SERVER)
    c._next_ping_id, s._next_ping_id = 0x7FFFFFFF, 0x7FFFFFFE
    assert (c.ping(), c.ping(), s.ping(), s.ping()) == (0x7FFFFFFF, 1, 0x7FFFFFFE, 2)


@pytest.mark.parametrize("bad", [0, 2, 0x1_0000_0001])
def test_ping_ids_must_be_ours(bad: int) -> None:
    c = SpdyConnection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        c.ping(bad)
    assert c.data_to_send() == b""


def test_rst_goaway_data_and_fin_layouts_of_appendix_a1() -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    wire = b"".join(
        peer.syn_stream(i, [(b"streamtype", t)])
        for i, t in [(1, b"error"), (3, b"stdout"), (5, b"stderr")]
    )
    assert [e.stream_id for e in s.receive_data(wire) if isinstance(e, StreamOpened)] == [1, 3, 5]
    for sid in (1, 3, 5):
        s.reply_stream(sid)
    s.data_to_send()
    s.send_data(3, b"hi\n")
    assert s.data_to_send() == hx("00 00 00 03  00 00 00 03  68 69 0a")
    s.end_stream(3)
    assert s.data_to_send() == hx("00 00 00 03 01 00 00 00")  # FIN-only DATA
    s.reset_stream(1)
    assert s.data_to_send() == hx("80 03 00 03  00 00 00 08  00 00 00 01  00 00 00 05")
    s.reset_stream(3, RstStatus.CANCEL)
    assert s.data_to_send() == hx("80 03 00 03  00 00 00 08  00 00 00 03  00 00 00 05")
    s.goaway()
    assert s.data_to_send() == hx("80 03 00 07  00 00 00 08  00 00 00 05  00 00 00 00")
    s.goaway()  # once only, as spdystream's Close
    assert s.data_to_send() == b""


def test_fin_only_data_from_the_peer_half_closes() -> None:
    p = Pair()
    sid = p.open()
    assert sid == 1
    assert p.server.receive_data(hx("00 00 00 01 01 00 00 00")) == [StreamEnded(1)]
    assert p.server.stream_state(1) is StreamState.HALF_CLOSED_REMOTE


def test_goaway_last_good_is_zero_without_peer_streams() -> None:
    s = SpdyConnection(Role.SERVER)
    s.goaway(spdy.GoAwayStatus.INTERNAL_ERROR)
    assert s.data_to_send() == goaway_bytes(0, 2)


def test_go_style_compression_levels_are_accepted() -> None:
    s = SpdyConnection(Role.SERVER)
    for level in (1, 6, 9):
        peer = FrameFactory(level)
        s2 = SpdyConnection(Role.SERVER)
        frame = peer.syn_stream(
            1, [(b"streamtype", b"data"), (b"port", b"80"), (b"requestid", b"0")]
        )
        assert s2.receive_data(frame) == [
            StreamOpened(1, {"streamtype": "data", "port": "80", "requestid": "0"})
        ]
    assert s.receive_data(b"") == []


# ------------------------------------------------------------------------------ pairs


def test_streams_data_both_ways_and_half_close() -> None:
    p = Pair()
    a = p.client.open_stream({"streamtype": "stdin"})
    b = p.client.open_stream([("streamtype", "stdout"), ("requestid", "7")])
    assert (a, b) == (1, 3)
    assert p.to_server() == [
        StreamOpened(1, {"streamtype": "stdin"}),
        StreamOpened(3, {"streamtype": "stdout", "requestid": "7"}),
    ]
    p.server.reply_stream(1)
    p.server.reply_stream(3, {"x-reply": "yes"})
    assert p.to_client() == [StreamReplied(1, {}), StreamReplied(3, {"x-reply": "yes"})]
    payload = bytes(range(256)) * 400  # 102400 bytes: 3 full frames and a tail
    p.client.send_data(1, payload, fin=True)
    events = p.to_server()
    assert [len(e.data) for e in events if isinstance(e, DataReceived)] == [32768] * 3 + [4096]
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == payload
    assert events[-1] == StreamEnded(1)
    assert p.client.stream_state(1) is StreamState.HALF_CLOSED_LOCAL
    assert p.server.stream_state(1) is StreamState.HALF_CLOSED_REMOTE
    with pytest.raises(LocalProtocolError):
        p.client.send_data(1, b"late")
    p.server.send_data(1, b"echo")
    p.server.send_data(3, b"out", fin=True)
    assert p.to_client() == [DataReceived(1, b"echo"), DataReceived(3, b"out"), StreamEnded(3)]
    p.server.end_stream(1)
    assert p.to_client() == [StreamEnded(1)]
    assert 1 not in p.client.open_stream_ids and 1 not in p.server.open_stream_ids
    assert p.client.open_stream_ids == p.server.open_stream_ids == {3}


def test_server_initiated_streams_use_even_ids() -> None:
    p = Pair()
    assert [p.server.open_stream({"n": str(i)}) for i in range(3)] == [2, 4, 6]
    assert p.to_client() == [StreamOpened(i, {"n": str(i // 2 - 1)}) for i in (2, 4, 6)]
    p.client.reply_stream(4, fin=True)
    assert p.to_server() == [StreamReplied(4, {}), StreamEnded(4)]


def test_reset_from_either_side() -> None:
    p = Pair()
    sid = p.open()
    p.server.reset_stream(sid, RstStatus.INTERNAL_ERROR)
    assert p.server.stream_state(sid) is StreamState.CLOSED
    assert p.to_client() == [StreamReset(sid, 6)]
    with pytest.raises(LocalProtocolError):
        p.client.send_data(sid, b"x")
    p.client.reset_stream(sid)  # already gone: nothing is sent
    assert p.client.data_to_send() == b""
    sid = p.open()
    p.client.send_data(sid, b"x")
    p.client.reset_stream(sid)
    assert p.to_server() == [DataReceived(sid, b"x"), StreamReset(sid, 5)]
    # Frames that were in flight for a reset stream are dropped, not fatal.
    assert p.client.receive_data(FrameFactory.data(sid, b"late", 1)) == []


def test_reset_after_our_fin_still_reaches_the_peer() -> None:
    p = Pair()
    sid = p.open()
    p.server.end_stream(sid)
    p.server.reset_stream(sid)
    assert p.to_client() == [StreamEnded(sid), StreamReset(sid, 5)]


def test_rejecting_a_stream_without_reply() -> None:
    p = Pair()
    sid = p.client.open_stream({"streamtype": "data", "port": "0"})
    p.to_server()
    p.server.reset_stream(sid)  # the Kubernetes way to refuse a stream: RST, no SYN_REPLY
    assert p.to_client() == [StreamReset(sid, 5)]


def test_goaway_both_ways() -> None:
    p = Pair()
    p.open()
    p.open()
    p.server.goaway()
    assert p.server.goaway_sent and p.server.last_peer_stream_id == 3
    assert p.to_client() == [GoAwayReceived(3, 0)]
    assert p.client.goaway_received
    with pytest.raises(LocalProtocolError):
        p.client.open_stream({})
    with pytest.raises(LocalProtocolError):
        p.server.open_stream({})
    # The client may still finish its streams; the server still reads them.
    p.client.send_data(1, b"bye", fin=True)
    assert p.to_server() == [DataReceived(1, b"bye"), StreamEnded(1)]


def test_new_streams_after_our_goaway_are_ignored() -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    s.receive_data(peer.syn_stream(1))
    s.goaway()
    s.data_to_send()
    # Ignored without a reset, but the header block is still inflated (shared context).
    assert s.receive_data(peer.syn_stream(3, [(b"a", b"b")])) == []
    assert s.data_to_send() == b""
    assert s.receive_data(peer.rst(1)) == [StreamReset(1, 5)]


def test_everything_after_a_received_goaway_is_discarded() -> None:
    peer, c = FrameFactory(), SpdyConnection(Role.CLIENT)
    wire = peer.ping(2) + peer.goaway(0) + peer.ping(4) + b"\xff garbage that would be fatal"
    assert c.receive_data(wire) == [PingReceived(2), GoAwayReceived(0, 0)]
    assert c.receive_data(b"more garbage") == []
    assert c.data_to_send() == peer.ping(2)
    assert c.receive_eof() == [ConnectionTerminated()]


def test_header_contexts_persist_across_many_frames() -> None:
    p = Pair()
    for i in range(150):
        p.client.open_stream({"streamtype": "data", "port": str(8000 + i), "requestid": str(i)})
    events = p.to_server()
    assert [e.headers for e in events if isinstance(e, StreamOpened)] == [
        {"streamtype": "data", "port": str(8000 + i), "requestid": str(i)} for i in range(150)
    ]
    for e in events:
        assert isinstance(e, StreamOpened)
        p.server.reply_stream(e.stream_id, {"x-n": str(e.stream_id)})
        p.server.send_headers(e.stream_id, {"trailer": "t" * (e.stream_id % 50)})
    replies = p.to_client()
    assert len(replies) == 300
    for e in replies:
        if isinstance(e, StreamReplied):
            assert e.headers == {"x-n": str(e.stream_id)}
        else:
            assert isinstance(e, HeadersReceived)
            assert e.headers == {"trailer": "t" * (e.stream_id % 50)}


def test_header_blocks_send_side_rules() -> None:
    p = Pair()
    sid = p.client.open_stream([("StreamType", "error"), ("x-multi", "a"), ("X-Multi", "b")])
    assert p.to_server() == [StreamOpened(sid, {"streamtype": "error", "x-multi": "a\x00b"})]
    for bad in ({"Host": "h"}, {"connection": "close"}, {"transfer-encoding": "chunked"}):
        with pytest.raises(LocalProtocolError):
            p.client.open_stream(bad)
    with pytest.raises(LocalProtocolError):
        p.server.reply_stream(sid, {"keep-alive": "1"})
    p.server.reply_stream(sid, {"host": "allowed-in-a-reply"})
    assert p.to_client() == [StreamReplied(sid, {"host": "allowed-in-a-reply"})]
    with pytest.raises(LocalProtocolError):
        p.client.send_headers(sid, {"proxy-connection": "x"})
    p.client.send_headers(sid, {"host": "odd ids take the response rules"})
    assert p.to_server() == [HeadersReceived(sid, {"host": "odd ids take the response rules"})]
    with pytest.raises(LocalProtocolError):
        p.client.open_stream({"bad": "\udcff\ud800"})
    big = SpdyConnection(Role.CLIENT, max_header_block_size=64)
    with pytest.raises(LocalProtocolError):
        big.open_stream({"x": "y" * 100})
    assert big.open_stream({"x": "y"}) == 1  # the refused block left the deflater untouched
    s = SpdyConnection(Role.SERVER)
    assert s.receive_data(big.data_to_send()) == [StreamOpened(1, {"x": "y"})]


def test_non_utf8_header_bytes_survive() -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    (event,) = s.receive_data(peer.syn_stream(1, [(b"x-bin", b"\xff\xfe")]))
    assert isinstance(event, StreamOpened)
    assert event.headers["x-bin"].encode("utf-8", "surrogateescape") == b"\xff\xfe"
    assert spdy.encode_header_block(event.headers) == raw_block([(b"x-bin", b"\xff\xfe")])


def test_received_duplicate_names_are_merged() -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    frame = peer.syn_stream(1, [(b"a", b"1"), (b"b", b"2\x003"), (b"a", b"4")])
    assert s.receive_data(frame) == [StreamOpened(1, {"a": "1\x004", "b": "2\x003"})]


def test_kubectl_exec_session_of_appendix_a1() -> None:
    p = Pair()
    sids = {}
    for kind in ("error", "stdout", "stderr"):  # kubectl waits for each reply
        sids[kind] = p.client.open_stream({"streamtype": kind})
        (opened,) = p.to_server()
        assert opened == StreamOpened(sids[kind], {"streamtype": kind})
        p.server.reply_stream(opened.stream_id)
        assert p.to_client() == [StreamReplied(sids[kind], {})]
        p.client.ping()
        assert p.to_server() == [PingReceived(p.client._next_ping_id - 2)]
        assert p.to_client() == [PingAck(p.client._next_ping_id - 2)]
    assert sids == {"error": 1, "stdout": 3, "stderr": 5}
    status = b'{"metadata":{},"status":"Failure","reason":"NonZeroExitCode"}'
    p.server.send_data(3, b"hi\n")
    p.server.send_data(1, status)
    for sid in (3, 5, 1):
        p.server.end_stream(sid)
    p.server.goaway()
    assert p.to_client() == [
        DataReceived(3, b"hi\n"),
        DataReceived(1, status),
        StreamEnded(3),
        StreamEnded(5),
        StreamEnded(1),
        GoAwayReceived(5, 0),
    ]
    for sid in (1, 3, 5):  # kubectl's conn.Close(): resets what it never FIN'd, then GOAWAY
        p.client.reset_stream(sid)
    p.client.goaway()
    assert p.to_server() == [
        StreamReset(1, 5),
        StreamReset(3, 5),
        StreamReset(5, 5),
        GoAwayReceived(0, 0),
    ]
    assert p.server.receive_eof() == [ConnectionTerminated(0)]
    assert p.client.open_stream_ids == p.server.open_stream_ids == frozenset()


def test_kubectl_port_forward_pair_of_appendix_a4() -> None:
    p = Pair()
    headers = {"streamtype": "error", "port": "80", "requestid": "0"}
    err = p.open(headers)
    p.client.end_stream(err)  # the client never writes the error stream
    assert p.to_server() == [StreamEnded(err)]
    data = p.open({**headers, "streamtype": "data"})
    p.client.send_data(data, b"GET / HTTP/1.0\r\n\r\n")
    assert p.to_server() == [DataReceived(data, b"GET / HTTP/1.0\r\n\r\n")]
    p.server.send_data(data, b"HTTP/1.0 200 OK\r\n\r\n", fin=True)
    p.server.end_stream(err)
    assert p.to_client() == [
        DataReceived(data, b"HTTP/1.0 200 OK\r\n\r\n"),
        StreamEnded(data),
        StreamEnded(err),
    ]
    assert err not in p.server.open_stream_ids
    p.client.reset_stream(data)  # 1.32+
    assert p.to_server() == [StreamReset(data, 5)]


def test_settings_and_window_updates_are_reported_not_enforced() -> None:
    p = Pair()
    p.client.send_settings({7: 65536, 4: 100}, clear=True)
    p.client.send_window_update(0, 1000)
    p.client.send_window_update(3, 0x7FFFFFFF)
    assert p.to_server() == [
        SettingsReceived({7: 65536, 4: 100}, clear=True),
        WindowUpdateReceived(0, 1000),
        WindowUpdateReceived(3, 0x7FFFFFFF),
    ]
    peer = FrameFactory()
    frame = peer.settings([(1, 7, 10), (2, 4, 3)])
    assert p.server.receive_data(frame) == [SettingsReceived({7: 10, 4: 3})]
    # A big window never holds data back: there is no flow control.
    sid = p.open()
    p.client.send_data(sid, b"x" * 200_000)
    received = p.to_server()
    assert sum(len(e.data) for e in received if isinstance(e, DataReceived)) == 200_000
    for bad in ({0: 1}, {0x1000000: 1}, {1: -1}):
        with pytest.raises(LocalProtocolError):
            p.client.send_settings(bad)
    for sid_, delta in ((0, 0), (-1, 1), (1, 0x80000000)):
        with pytest.raises(LocalProtocolError):
            p.client.send_window_update(sid_, delta)
    assert p.client.data_to_send() == b""


def test_headers_frames_only_through_send_headers() -> None:
    p = Pair()
    sid = p.open()
    p.client.send_data(sid, b"a")
    p.server.send_data(sid, b"b", fin=True)
    p.client.end_stream(sid)
    p.client.ping()
    p.server.goaway()
    wire = p.client.data_to_send() + p.server.data_to_send()
    assert all(not (ctl and kind == 8) for ctl, kind, _, _ in split_frames(wire))
    sid = p.client.open_stream()
    p.client.send_headers(sid, {"a": "b"}, fin=True)
    (_, (ctl, kind, flags, _)) = split_frames(p.client.data_to_send())
    assert (ctl, kind, flags) == (True, 8, 1)


def test_data_before_our_syn_reply_is_dropped_like_spdystream() -> None:
    peer, c = FrameFactory(), SpdyConnection(Role.CLIENT)
    sid = c.open_stream({"streamtype": "stdout"})
    c.data_to_send()
    assert c.receive_data(peer.data(sid, b"early") + peer.data(sid, b"", 1)) == []
    assert c.receive_data(peer.headers(sid, [(b"a", b"b")], 1)) == []
    assert c.stream_state(sid) is StreamState.SYN_SENT
    assert c.receive_data(peer.syn_reply(sid) + peer.data(sid, b"now")) == [
        StreamReplied(sid, {}),
        DataReceived(sid, b"now"),
    ]
    # A second SYN_REPLY (and its FIN) is ignored, as spdystream does.
    assert c.receive_data(peer.syn_reply(sid, flags=1)) == []
    assert c.stream_state(sid) is StreamState.OPEN


def test_data_on_a_peer_stream_before_we_reply_is_delivered() -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    wire = peer.syn_stream(1, [(b"streamtype", b"data")]) + peer.data(1, b"early", 1)
    assert s.receive_data(wire) == [
        StreamOpened(1, {"streamtype": "data"}),
        DataReceived(1, b"early"),
        StreamEnded(1),
    ]
    with pytest.raises(LocalProtocolError):
        s.send_data(1, b"before the reply")
    with pytest.raises(LocalProtocolError):
        s.end_stream(1)
    s.reply_stream(1, fin=True)
    assert s.stream_state(1) is StreamState.CLOSED


def test_dropped_data_is_never_fatal() -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    assert s.receive_data(peer.data(9, b"unknown stream", 1)) == []
    s.receive_data(peer.syn_stream(1))
    s.reply_stream(1)
    s.data_to_send()
    assert s.receive_data(peer.data(1, b"")) == []  # zero-length without FIN: ignored
    assert s.receive_data(peer.data(1, b"x", 1) + peer.data(1, b"after fin", 1)) == [
        DataReceived(1, b"x"),
        StreamEnded(1),
    ]
    assert s.receive_data(peer.syn_reply(99) + peer.headers(99) + peer.rst(99)) == []
    assert s.data_to_send() == b""


def test_syn_stream_flags() -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    wire = peer.syn_stream(1, flags=1, associated=7, priority=3)
    assert s.receive_data(wire) == [StreamOpened(1, {}), StreamEnded(1)]
    assert s.stream_state(1) is StreamState.SYN_RECEIVED_REMOTE_CLOSED
    s.reply_stream(1)
    assert s.stream_state(1) is StreamState.HALF_CLOSED_REMOTE
    assert s.receive_data(peer.syn_stream(3, flags=2)) == [StreamOpened(3, {}, True)]
    with pytest.raises(LocalProtocolError):
        s.reply_stream(3)  # unidirectional: nothing goes back
    with pytest.raises(LocalProtocolError):
        s.send_data(3, b"x")
    assert s.receive_data(peer.data(3, b"in", 1)) == [DataReceived(3, b"in"), StreamEnded(3)]
    assert s.stream_state(3) is StreamState.CLOSED
    assert s.receive_data(peer.syn_stream(5, flags=3)) == [
        StreamOpened(5, {}, True),
        StreamEnded(5),
    ]
    assert s.open_stream_ids == {1}


@pytest.mark.parametrize(
    ("role", "first", "second"),
    [
        (Role.SERVER, 5, 3),  # lower than the last one
        (Role.SERVER, 5, 5),  # the same id again
        (Role.SERVER, 1, 2),  # our parity
        (Role.SERVER, 1, 0x80000001),  # reserved bit set
        (Role.CLIENT, 2, 1),
        (Role.CLIENT, 4, 4),
    ],
)
def test_bad_stream_ids_are_refused_with_protocol_error(
    role: Role, first: int, second: int
) -> None:
    peer, conn = FrameFactory(), SpdyConnection(role)
    assert conn.receive_data(peer.syn_stream(first)) == [StreamOpened(first, {})]
    assert conn.receive_data(peer.syn_stream(second, [(b"a", b"b")])) == []
    assert conn.data_to_send() == hx("80030003 00000008") + struct.pack(">II", second, 1)
    assert conn.open_stream_ids == {first}
    # Not fatal, and the shared zlib context is still in step.
    nxt = first + 2
    assert conn.receive_data(peer.syn_stream(nxt, [(b"c", b"d")])) == [
        StreamOpened(nxt, {"c": "d"})
    ]
    assert conn.last_peer_stream_id == nxt


def test_peer_may_skip_ids() -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    assert s.receive_data(peer.syn_stream(7)) == [StreamOpened(7, {})]
    s.goaway()
    assert s.data_to_send() == goaway_bytes(7, 0)


def test_receive_eof() -> None:
    s = SpdyConnection(Role.SERVER)
    assert s.receive_data(hx("80030006 0000")) == []
    assert s.receive_eof() == [ConnectionTerminated(6)]
    assert s.receive_eof() == []
    assert s.receive_data(hx("80030006 00000004 00000001")) == []  # after EOF: discarded
    s.ping()  # our direction may still be open (TCP half-close)
    assert s.data_to_send() == hx("80030006 00000004 00000002")


def test_local_misuse() -> None:
    p = Pair()
    sid = p.open()
    with pytest.raises(LocalProtocolError):
        p.client.reply_stream(sid)  # our own stream
    with pytest.raises(LocalProtocolError):
        p.server.reply_stream(sid)  # replied already
    with pytest.raises(LocalProtocolError):
        p.server.send_data(99, b"x")
    with pytest.raises(LocalProtocolError):
        p.server.reset_stream(99)  # never opened
    with pytest.raises(LocalProtocolError):
        p.server.reset_stream(sid, 0)
    with pytest.raises(LocalProtocolError):
        p.server.goaway(-1)
    p.client.end_stream(sid)
    with pytest.raises(LocalProtocolError):
        p.client.end_stream(sid)
    with pytest.raises(LocalProtocolError):
        p.client.send_headers(sid, {"a": "b"})
    assert p.client.data_to_send() == hx("00000001 01000000")
    assert p.server.data_to_send() == b""
    with pytest.raises(TypeError):
        ProtocolError("abstract")
    assert isinstance(LocalProtocolError("x"), ProtocolError)
    assert RemoteProtocolError("x").goaway_status == 1
    for kwargs in (
        {"max_data_frame_size": 0},
        {"max_data_frame_size": 1 << 24},
        {"max_header_block_size": 3},
    ):
        with pytest.raises(ValueError):
            SpdyConnection(Role.CLIENT, **kwargs)


def test_stream_ids_run_out() -> None:
    c = SpdyConnection(Role.CLIENT)
    c._next_stream_id = 0x7FFFFFFF
    assert c.open_stream() == 0x7FFFFFFF
    with pytest.raises(LocalProtocolError):
        c.open_stream()


def test_send_data_buffers_and_frame_sizes() -> None:
    p = Pair(max_data_frame_size=4)
    sid = p.open()
    source = bytearray(b"abcdefgh")
    p.client.send_data(sid, source)
    source[:] = b"XXXXXXXX"  # the codec copied it
    p.client.send_data(sid, memoryview(b"ijkl"), fin=True)
    assert p.client.data_to_send() == (
        hx("00000001 00000004") + b"abcd" + hx("00000001 00000004") + b"efgh"
        + hx("00000001 01000004") + b"ijkl"
    )  # fmt: skip
    p.server.send_data(sid, b"")  # nothing to send, no frame
    p.server.send_data(sid, b"123456789", fin=True)
    assert [len(e.data) if isinstance(e, DataReceived) else e for e in p.to_client()] == [
        4,
        4,
        1,
        StreamEnded(sid),
    ]
    assert p.client.data_to_send() == b""


def test_one_byte_at_a_time_and_large_frames_stay_linear() -> None:
    p = Pair()
    sid = p.open()
    p.client.send_data(sid, bytes(range(256)) * 256, fin=True)  # 64 KiB, 2 frames
    p.client.ping()
    wire = p.client.data_to_send()
    events: list[Event] = []
    for i in range(len(wire)):
        events += p.server.receive_data(wire[i : i + 1])
    assert events == [
        DataReceived(sid, (bytes(range(256)) * 128)),
        DataReceived(sid, (bytes(range(256)) * 128)),
        StreamEnded(sid),
        PingReceived(1),
    ]
    # A maximal 16 MiB frame (allowed explicitly) arriving in 1 KiB reads: linear, not quadratic.
    big = SpdyConnection(Role.SERVER, max_frame_size=spdy.MAX_FRAME_LENGTH)
    peer = FrameFactory()
    big.receive_data(peer.syn_stream(1))
    big.reply_stream(1)
    payload = b"z" * 0xFFFFFF
    frame = peer.data(1, payload)
    view = memoryview(frame)
    start = time.perf_counter()
    got: list[Event] = []
    for i in range(0, len(frame), 1024):
        got += big.receive_data(view[i : i + 1024])
    assert time.perf_counter() - start < 10  # ~0.1 s here; quadratic would take minutes
    assert got == [DataReceived(1, payload)]


def test_data_payloads_are_bytes() -> None:
    p = Pair()
    sid = p.open()
    p.client.send_data(sid, b"payload")
    wire = bytearray(p.client.data_to_send())
    (event,) = p.server.receive_data(wire)
    assert isinstance(event, DataReceived) and type(event.data) is bytes
    wire[-1:] = b"X"  # the event does not alias the caller's buffer
    assert event.data == b"payload"


def test_a_data_frame_in_the_tunnels_pieces() -> None:
    """kubectl's tunnel sends a DATA frame as three messages: 4 + 4 header bytes, then the
    payload (docs/protocol.md, appendix "observed"). A payload message that completes the
    frame is delivered as that very object; one with more after it is parsed as usual."""
    p = Pair()
    sid = p.open()
    payload = bytes(range(256)) * 128
    p.client.send_data(sid, payload, fin=True)
    wire = bytes(p.client.data_to_send())
    assert len(wire) == 8 + len(payload)
    message = wire[8:]
    assert p.server.receive_data(wire[:4]) == []
    assert p.server.receive_data(wire[4:8]) == []
    (event, ended) = p.server.receive_data(message)
    assert isinstance(event, DataReceived) and event.data is message
    assert ended == StreamEnded(sid)
    # The payload and the next frame's header in one message, then the rest: all delivered.
    sid2 = p.open()
    p.client.send_data(sid2, b"first")
    p.client.send_data(sid2, b"second", fin=True)
    wire = bytes(p.client.data_to_send())
    got = p.server.receive_data(wire[:8]) + p.server.receive_data(wire[8:19])
    got += p.server.receive_data(wire[19:])
    assert got == [DataReceived(sid2, b"first"), DataReceived(sid2, b"second"), StreamEnded(sid2)]
    assert all(type(e.data) is bytes for e in got if isinstance(e, DataReceived))


# ------------------------------------------------------------------------------ fatal input


def _syn_with_raw(sid: int, compressed: bytes, kind: int = 1) -> bytes:
    prefix = struct.pack(">IIBB", sid, 0, 0, 0) if kind == 1 else struct.pack(">I", sid)
    return FrameFactory.control(kind, prefix + compressed)


def _bomb() -> bytes:
    raw = raw_block([(b"x", b"a" * (2 << 20))])
    return _syn_with_raw(1, FrameFactory().compress(raw))


def _finished_then_more() -> bytes:
    d = new_deflater()
    first = d.compress(raw_block([])) + d.flush(zlib.Z_FINISH)
    return _syn_with_raw(1, first) + _syn_with_raw(3, FrameFactory().block([]))


FATAL: list[tuple[str, Callable[[], bytes], str]] = [
    ("noop", lambda: hx("80030005 00000000"), "unknown control frame type 5"),
    ("credential", lambda: hx("8003000a 00000000"), "unknown control frame type 10"),
    ("type 0", lambda: hx("80030000 00000000"), "unknown control frame type 0"),
    ("type 0xffff", lambda: hx("8003ffff 00000000"), "unknown"),
    ("ping length 5", lambda: hx("80030006 00000005 0000000100"), "malformed"),
    ("ping length 3", lambda: hx("80030006 00000003 000001"), "malformed"),
    ("ping flags", lambda: hx("80030006 01000004 00000001"), "malformed"),
    ("ping id 0", lambda: hx("80030006 00000004 00000000"), "PING with id 0"),
    ("goaway length 4", lambda: hx("80030007 00000004 00000000"), "malformed"),
    ("goaway length 12", lambda: hx("80030007 0000000c") + bytes(12), "malformed"),
    ("goaway flags", lambda: hx("80030007 01000008") + bytes(8), "malformed"),
    ("window length", lambda: hx("80030009 00000004 00000001"), "malformed"),
    ("window flags", lambda: hx("80030009 02000008 00000001 00000001"), "malformed"),
    ("rst length 4", lambda: hx("80030003 00000004 00000001"), "malformed"),
    ("rst length 12", lambda: hx("80030003 0000000c") + bytes(12), "malformed"),
    ("rst status 0", lambda: hx("80030003 00000008 00000001 00000000"), "status 0"),
    ("rst stream 0", lambda: hx("80030003 00000008 00000000 00000005"), "stream 0"),
    ("settings length 3", lambda: hx("80030004 00000003 000000"), "malformed"),
    ("settings length 8", lambda: hx("80030004 00000008") + bytes(8), "malformed"),
    ("settings count", lambda: hx("80030004 0000000c 00000002") + bytes(8), "count"),
    ("data stream 0", lambda: hx("00000000 00000000"), "stream 0"),
    ("syn length 10", lambda: hx("80030001 0000000a 00000001 00000000 0000"), "malformed"),
    ("syn stream 0", lambda: FrameFactory().syn_stream(0), "SYN_STREAM on stream 0"),
    ("reply length 4", lambda: hx("80030002 00000004 00000001"), "malformed"),
    ("reply stream 0", lambda: FrameFactory().syn_reply(0), "stream 0"),
    ("headers stream 0", lambda: FrameFactory().headers(0), "stream 0"),
    ("not zlib", lambda: _syn_with_raw(1, b"\x00\x01garbage"), "does not inflate"),
    (
        "wrong dictionary",
        lambda: _syn_with_raw(
            1, zlib.compressobj(zdict=b"other").compress(b"\0\0\0\0") + b"\0\0\0\0"
        ),
        "does not inflate",
    ),
    ("count only", lambda: _syn_with_raw(1, FrameFactory().compress(b"\0\0\0\1")), "truncated"),
    ("empty block", lambda: _syn_with_raw(1, FrameFactory().compress(b"")), "truncated"),
    (
        "short block",
        lambda: _syn_with_raw(1, FrameFactory().compress(b"\0\0\0\1\0\0\0\5ab")),
        "truncated",
    ),
    (
        "short value",
        lambda: _syn_with_raw(1, FrameFactory().compress(b"\0\0\0\1\0\0\0\1a\0\0\0\5ab")),
        "truncated",
    ),
    (
        "trailing",
        lambda: _syn_with_raw(1, FrameFactory().compress(raw_block([]) + b"x")),
        "trailing",
    ),
    ("uppercase", lambda: FrameFactory().syn_stream(1, [(b"StreamType", b"x")]), "not lowercase"),
    ("host", lambda: FrameFactory().syn_stream(1, [(b"host", b"x")]), "not allowed"),
    ("connection", lambda: FrameFactory().syn_stream(1, [(b"connection", b"x")]), "not allowed"),
    (
        "keep-alive reply",
        lambda: FrameFactory().syn_reply(1, [(b"keep-alive", b"x")]),
        "not allowed",
    ),
    ("host on even headers", lambda: FrameFactory().headers(2, [(b"host", b"x")]), "not allowed"),
    (
        "te on odd headers",
        lambda: FrameFactory().headers(1, [(b"transfer-encoding", b"x")]),
        "not allowed",
    ),
    ("bomb", _bomb, "larger than max_header_block_size"),
    ("zlib stream finished", _finished_then_more, "truncated"),
    (
        "block just over 64 KiB",
        lambda: FrameFactory().syn_stream(1, [(b"x", b"a" * (65536 - 13 + 1))]),
        "larger than max_header_block_size",
    ),
    (
        "101 pairs",
        lambda: FrameFactory().syn_stream(1, [(b"a", b"")] * 101),
        "declares 101 pairs, more than max_header_count",
    ),
    (
        "count before body",
        lambda: _syn_with_raw(1, FrameFactory().compress(struct.pack(">II", 10**9, 1))),
        "declares 1000000000 pairs",
    ),
    ("data header of 16 MiB", lambda: hx("00000001 00ffffff"), "larger than max_frame_size"),
    ("data header of 1 MiB + 1", lambda: hx("00000001 00100001"), "larger than max_frame_size"),
    ("syn header of 16 MiB", lambda: hx("80030001 00ffffff"), "larger than max_frame_size"),
    ("settings header of 16 MiB", lambda: hx("80030004 00fffffc"), "larger than max_frame_size"),
]


@pytest.mark.parametrize(
    ("frame", "why"), [(f, w) for _, f, w in FATAL], ids=[n for n, _, _ in FATAL]
)
def test_malformed_input_ends_the_connection(frame: Callable[[], bytes], why: str) -> None:
    s = SpdyConnection(Role.SERVER)
    with pytest.raises(RemoteProtocolError, match=why) as info:
        s.receive_data(frame())
    assert info.value.goaway_status == 1
    assert s.data_to_send().endswith(goaway_bytes(s.last_peer_stream_id, 1))
    with pytest.raises(RemoteProtocolError, match="already failed"):
        s.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        s.receive_eof()
    with pytest.raises(LocalProtocolError):
        s.ping()
    with pytest.raises(LocalProtocolError):
        s.open_stream()
    s.goaway()  # a GOAWAY went out already
    assert s.data_to_send() == b""


def test_errors_fail_fast_and_keep_earlier_events() -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    s.receive_data(peer.syn_stream(1))
    s.reply_stream(1)
    s.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        # A PING claiming 16 MiB fails on its 8-byte header, before any body arrives.
        s.receive_data(peer.data(1, b"ok") + peer.ping(1) + hx("80030006 00ffffff"))
    assert info.value.events == (DataReceived(1, b"ok"), PingReceived(1))
    assert s.data_to_send() == peer.ping(1) + goaway_bytes(1, 1)


def test_no_second_goaway_after_ours() -> None:
    s = SpdyConnection(Role.SERVER)
    s.goaway()
    s.data_to_send()
    with pytest.raises(RemoteProtocolError):
        s.receive_data(hx("80030005 00000000"))
    assert s.data_to_send() == b""


def test_a_zlib_stream_without_dictionary_is_accepted_like_go() -> None:
    # Go's zlib reader only uses the dictionary when the stream's FDICT bit asks for it.
    s = SpdyConnection(Role.SERVER)
    frame = _syn_with_raw(1, zlib.compress(raw_block([(b"a", b"b")])))
    assert s.receive_data(frame) == [StreamOpened(1, {"a": "b"})]


def test_control_version_is_not_checked_like_spdystream() -> None:
    s = SpdyConnection(Role.SERVER)
    assert s.receive_data(FrameFactory.control(6, hx("00000001"), version=2)) == [PingReceived(1)]
    assert s.data_to_send() == hx("80030006 00000004 00000001")  # echoed as version 3


# ------------------------------------------------------------------------------ limits


def test_protocol_errors_are_streamsrv_protocol_errors() -> None:
    assert issubclass(ProtocolError, errors.ProtocolError)
    assert issubclass(ProtocolError, errors.StreamsrvError)
    for error in (LocalProtocolError("x"), RemoteProtocolError("x")):
        assert isinstance(error, errors.ProtocolError)
    with pytest.raises(TypeError, match="abstract"):
        ProtocolError("still abstract")
    s = SpdyConnection(Role.SERVER)
    with pytest.raises(errors.ProtocolError):
        s.receive_data(hx("80030005 00000000"))


def test_default_limits() -> None:
    assert spdy.DEFAULT_MAX_HEADER_BLOCK_SIZE == 64 * 1024
    assert spdy.DEFAULT_MAX_HEADER_COUNT == 100
    assert spdy.DEFAULT_MAX_FRAME_SIZE == 1 << 20
    s = SpdyConnection(Role.SERVER)
    assert (s.max_header_block_size, s.max_header_count, s.max_frame_size) == (65536, 100, 1 << 20)
    for kwargs in (
        {"max_header_count": -1},
        {"max_frame_size": 1023},
        {"max_frame_size": 1 << 24},
    ):
        with pytest.raises(ValueError):
            SpdyConnection(Role.SERVER, **kwargs)
    SpdyConnection(Role.SERVER, max_header_count=0, max_frame_size=1024)
    SpdyConnection(Role.SERVER, max_frame_size=spdy.MAX_FRAME_LENGTH)


def test_a_block_of_exactly_the_limits_is_accepted() -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    value = b"a" * (65536 - 13)  # count, name length, "x", value length: 13 bytes
    assert len(raw_block([(b"x", value)])) == 65536
    assert s.receive_data(peer.syn_stream(1, [(b"x", value)])) == [
        StreamOpened(1, {"x": value.decode()})
    ]
    pairs = [(b"n%d" % i, b"%d" % i) for i in range(100)]
    assert s.receive_data(peer.syn_stream(3, pairs)) == [
        StreamOpened(3, {f"n{i}": str(i) for i in range(100)})
    ]


def test_many_repeats_of_one_name_are_joined_once() -> None:
    # 58,000 repeats in a ~2.6 KB SYN_STREAM used to be merged pair by pair (quadratic).
    values = [b"%d" % (i % 10) for i in range(58_000)]
    pairs = [(b"x-other", b"first")] + [(b"a", v) for v in values] + [(b"x-other", b"last")]
    block = raw_block(pairs)
    assert spdy.decode_header_block(block, max_header_count=58_002) == {
        "x-other": "first\x00last",
        "a": "\x00".join(v.decode() for v in values),
    }
    with pytest.raises(RemoteProtocolError, match="declares 58002 pairs"):
        spdy.decode_header_block(block)
    with pytest.raises(RemoteProtocolError, match="more than max_header_count \\(58001\\)"):
        spdy.decode_header_block(block, max_header_count=58_001)
    # The same through a connection that allows it, and refused by one that does not.
    frame = FrameFactory().syn_stream(1, pairs)
    assert len(frame) < 3000
    roomy = SpdyConnection(Role.SERVER, max_header_block_size=1 << 20, max_header_count=58_002)
    (opened,) = roomy.receive_data(frame)
    assert isinstance(opened, StreamOpened) and opened.headers["a"].count("\x00") == 57_999
    strict = SpdyConnection(Role.SERVER, max_header_block_size=1 << 20)
    with pytest.raises(RemoteProtocolError, match="max_header_count"):
        strict.receive_data(frame)
    assert strict.data_to_send() == goaway_bytes(0, 1)


def test_the_declared_count_is_checked_before_the_pairs() -> None:
    # 10**9 pairs declared, a 4-byte body: the count is refused, not the truncation.
    for block in (struct.pack(">I", 10**9), struct.pack(">II", 10**9, 1)):
        with pytest.raises(RemoteProtocolError, match="declares 1000000000 pairs"):
            spdy.decode_header_block(block)
    with pytest.raises(RemoteProtocolError, match="truncated"):
        spdy.decode_header_block(struct.pack(">II", 100, 1))
    with pytest.raises(RemoteProtocolError, match="declares 1 pairs"):
        spdy.decode_header_block(raw_block([(b"a", b"b")]), max_header_count=0)
    assert spdy.decode_header_block(raw_block([]), max_header_count=0) == {}


@given(
    pairs=st.lists(
        st.tuples(st.sampled_from([b"a", b"b", b"port", b"\xff"]), st.binary(max_size=6)),
        max_size=40,
    ),
    slack=st.integers(-3, 3),
)
def test_decoded_blocks_join_repeats_in_order(pairs: list[tuple[bytes, bytes]], slack: int) -> None:
    limit = max(0, len(pairs) + slack)
    block = raw_block(pairs)
    if len(pairs) > limit:
        with pytest.raises(RemoteProtocolError, match="max_header_count"):
            spdy.decode_header_block(block, max_header_count=limit)
        return
    expected: dict[str, str] = {}
    for name, value in pairs:
        key, text = (x.decode("utf-8", "surrogateescape") for x in (name, value))
        expected[key] = f"{expected[key]}\x00{text}" if key in expected else text
    decoded = spdy.decode_header_block(block, max_header_count=limit)
    assert decoded == expected
    assert list(decoded) == list(expected)  # names in order of first appearance


def test_the_send_side_keeps_to_max_header_count() -> None:
    c = SpdyConnection(Role.CLIENT, max_header_count=2)
    with pytest.raises(LocalProtocolError, match="max_header_count"):
        c.open_stream({"a": "1", "b": "2", "c": "3"})
    assert c.data_to_send() == b""
    sid = c.open_stream([("a", "1"), ("b", "2"), ("A", "3")])  # a repeated name counts once
    s = SpdyConnection(Role.SERVER, max_header_count=2)
    assert s.receive_data(c.data_to_send()) == [StreamOpened(sid, {"a": "1\x003", "b": "2"})]
    with pytest.raises(LocalProtocolError, match="max_header_count"):
        s.reply_stream(sid, {"x": "1", "y": "2", "z": "3"})
    assert s.stream_state(sid) is StreamState.SYN_RECEIVED


@pytest.mark.parametrize("buffered", [False, True])  # receive_data, or read into get_buffer
@pytest.mark.parametrize("split", [8, 4, 1])
def test_an_oversized_frame_fails_on_its_header_alone(split: int, buffered: bool) -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    s.receive_data(peer.syn_stream(1))
    s.reply_stream(1)
    s.data_to_send()

    def feed(piece: bytes) -> list[Event]:
        if not buffered:
            return s.receive_data(piece)
        s.get_buffer(len(piece))[: len(piece)] = piece
        return s.buffer_updated(len(piece))

    header = hx("00000001 00ffffff")  # DATA on stream 1 declaring 16 MiB, no payload yet
    for i in range(0, 8 - split, split):
        assert feed(header[i : i + split]) == []
        assert s.buffered == i + split
    with pytest.raises(RemoteProtocolError, match="16777215 bytes is larger than max_frame_size"):
        feed(header[8 - split :])
    assert s.buffered == 0
    assert s.data_to_send() == goaway_bytes(1, 1)


@pytest.mark.parametrize("hint", [-1, 1, 1000, 16 * 1024 + 29, 256 * 1024])
def test_the_read_buffer_is_bounded_by_max_frame_size_and_the_read(hint: int) -> None:
    """A frame of exactly max_frame_size, read in pieces of ``hint`` bytes: the buffer the
    codec hands out never holds more than that frame and one read, plus a quarter."""
    limit = 64 * 1024
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER, max_frame_size=limit)
    s.receive_data(peer.syn_stream(1))
    s.reply_stream(1)
    wire = peer.data(1, b"p" * limit) * 3
    largest, pos, got = 0, 0, []
    while pos < len(wire):
        buf = s.get_buffer(hint)
        largest = max(largest, len(s._arena))
        n = min(len(buf), len(wire) - pos)
        buf[:n] = wire[pos : pos + n]
        got += s.buffer_updated(n)
        pos += n
    assert got == [DataReceived(1, b"p" * limit)] * 3
    read = hint if hint > 0 else spdy.READ_SIZE
    assert largest <= max(((8 + limit + read) * 5) // 4, spdy.READ_SIZE), largest


@pytest.mark.parametrize("control", [False, True])
def test_max_frame_size_is_inclusive(control: bool) -> None:
    peer = FrameFactory()
    if control:  # a SETTINGS frame of exactly 1028 bytes: count + 128 entries
        entries = [(0, i, i) for i in range(1, 129)]
        fits = peer.settings(entries)
        too_big = peer.settings([*entries, (0, 200, 1)])
        event: Event = SettingsReceived({i: i for i in range(1, 129)})
        limit = 1028
    else:
        fits, too_big = peer.data(1, b"x" * 1024), peer.data(1, b"x" * 1025)
        event, limit = DataReceived(1, b"x" * 1024), 1024
    s = SpdyConnection(Role.SERVER, max_frame_size=limit)
    s.receive_data(peer.syn_stream(1))
    assert s.receive_data(fits) == [event]
    with pytest.raises(RemoteProtocolError, match=f"larger than max_frame_size \\({limit}\\)"):
        s.receive_data(too_big[:8])


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1024, 1 << 20),
    length=st.integers(0, 0xFFFFFF),
    control=st.booleans(),
)
def test_frame_size_is_decided_by_the_header(limit: int, length: int, control: bool) -> None:
    s = SpdyConnection(Role.SERVER, max_frame_size=limit)
    if control:  # SETTINGS: the only control type whose length is free enough
        length = 4 + (max(length, 4) - 4) // 8 * 8
        header = struct.pack(">HHI", 0x8003, 4, length)
    else:
        header = struct.pack(">II", 1, length)
    if length > limit:
        with pytest.raises(RemoteProtocolError, match="max_frame_size"):
            s.receive_data(header)
        assert s.buffered == 0
    else:
        assert s.receive_data(header) == []
        assert s.buffered == (8 if length else 0)


def test_buffered_counts_the_bytes_of_an_incomplete_frame() -> None:
    p = Pair()
    sid = p.open()
    assert p.server.buffered == 0
    p.client.send_data(sid, b"a" * 100)
    p.client.send_data(sid, b"b" * 100)
    wire = p.client.data_to_send()
    assert len(wire) == 216
    assert p.server.receive_data(wire[:3]) == []
    assert p.server.buffered == 3
    assert p.server.receive_data(wire[3:58]) == []
    assert p.server.buffered == 58
    # The rest of the first frame and part of the second: only the second's bytes stay.
    assert p.server.receive_data(wire[58:150]) == [DataReceived(sid, b"a" * 100)]
    assert p.server.buffered == 150 - 108
    assert p.server.receive_data(wire[150:]) == [DataReceived(sid, b"b" * 100)]
    assert p.server.buffered == 0
    p.client.ping()
    assert p.server.receive_data(p.client.data_to_send()[:5]) == []
    assert p.server.buffered == 5
    assert p.server.receive_eof() == [ConnectionTerminated(5)]
    assert p.server.buffered == 0


def test_buffered_is_zero_after_a_failure() -> None:
    s = SpdyConnection(Role.SERVER)
    assert s.receive_data(hx("80030006 000000")) == []
    assert s.buffered == 7
    with pytest.raises(RemoteProtocolError):
        s.receive_data(hx("05"))  # PING of length 5
    assert s.buffered == 0


def test_open_streams_counts_live_streams() -> None:
    p = Pair()
    assert p.client.open_streams == p.server.open_streams == 0
    a = p.open()
    b = p.client.open_stream()
    assert p.client.open_streams == 2
    p.to_server()
    assert p.server.open_streams == 2
    p.client.end_stream(a)
    p.to_server()
    assert p.server.open_streams == 2  # half-closed is still live
    p.server.end_stream(a)
    p.to_client()
    assert p.client.open_streams == p.server.open_streams == 1
    p.server.reset_stream(b, RstStatus.REFUSED_STREAM)
    assert p.server.open_streams == 0
    p.to_client()
    assert p.client.open_streams == 0
    assert p.client.open_stream_ids == p.server.open_stream_ids == frozenset()


def test_refusing_a_stream_the_peer_just_opened() -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    wire = peer.syn_stream(1, [(b"streamtype", b"data")]) + peer.data(1, b"early")
    assert s.receive_data(wire) == [
        StreamOpened(1, {"streamtype": "data"}),
        DataReceived(1, b"early"),
    ]
    assert s.stream_state(1) is StreamState.SYN_RECEIVED
    s.reset_stream(1, RstStatus.REFUSED_STREAM)
    assert s.data_to_send() == hx("80030003 00000008 00000001 00000003")
    assert s.stream_state(1) is StreamState.CLOSED and s.open_streams == 0
    assert s.receive_data(peer.data(1, b"late", 1)) == []  # in flight: dropped
    with pytest.raises(LocalProtocolError):
        s.reply_stream(1)
    # The peer's side sees the refusal.
    c = SpdyConnection(Role.CLIENT)
    sid = c.open_stream({"streamtype": "data"})
    s2 = SpdyConnection(Role.SERVER)
    s2.receive_data(c.data_to_send())
    s2.reset_stream(sid, RstStatus.REFUSED_STREAM)
    assert c.receive_data(s2.data_to_send()) == [StreamReset(sid, RstStatus.REFUSED_STREAM)]
    assert c.stream_state(sid) is StreamState.CLOSED


def test_a_stream_opened_and_reset_in_one_batch() -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    wire = peer.syn_stream(1, [(b"streamtype", b"stdout")]) + peer.rst(1, RstStatus.CANCEL)
    assert s.receive_data(wire) == [StreamOpened(1, {"streamtype": "stdout"}), StreamReset(1, 5)]
    # The caller can see that before it answers; answering anyway is API misuse.
    assert s.stream_state(1) is StreamState.CLOSED
    assert 1 not in s.open_stream_ids and s.open_streams == 0
    with pytest.raises(LocalProtocolError, match="stream 1 is not open"):
        s.reply_stream(1)
    s.reset_stream(1, RstStatus.REFUSED_STREAM)  # already gone: a no-op, nothing queued
    assert s.data_to_send() == b""
    assert s.receive_data(peer.syn_stream(3)) == [StreamOpened(3, {})]  # the connection goes on


def test_refusing_a_unidirectional_stream() -> None:
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    assert s.receive_data(peer.syn_stream(1, flags=2)) == [StreamOpened(1, {}, True)]
    assert s.stream_state(1) is StreamState.HALF_CLOSED_LOCAL
    with pytest.raises(LocalProtocolError):
        s.reply_stream(1)
    assert s.data_to_send() == b""
    s.reset_stream(1, RstStatus.REFUSED_STREAM)
    assert s.data_to_send() == hx("80030003 00000008 00000001 00000003")
    assert s.stream_state(1) is StreamState.CLOSED and s.open_streams == 0


# ------------------------------------------------------------------------------ state table

_MIRROR = {
    StreamState.SYN_SENT: StreamState.SYN_RECEIVED,
    StreamState.SYN_SENT_LOCAL_CLOSED: StreamState.SYN_RECEIVED_REMOTE_CLOSED,
    StreamState.OPEN: StreamState.OPEN,
    StreamState.HALF_CLOSED_LOCAL: StreamState.HALF_CLOSED_REMOTE,
}
MIRROR = {**_MIRROR, **{v: k for k, v in _MIRROR.items()}}
LIVE = [s for s in StreamState if s is not StreamState.CLOSED]
RECV = [i for i in StreamInput if i.name.startswith("RECV")]
SEND = [i for i in StreamInput if i.name.startswith("SEND")]


def test_table_covers_every_receive_input_and_never_stores_closed() -> None:
    for state in LIVE:
        for inp in RECV:
            assert (state, inp) in STREAM_TRANSITIONS
        for inp in (StreamInput.SEND_RESET, StreamInput.RECV_RESET):
            assert STREAM_TRANSITIONS[state, inp] == (StreamState.CLOSED, True)
    assert all(state is not StreamState.CLOSED for state, _ in STREAM_TRANSITIONS)
    assert all(deliver for (_, inp), (_, deliver) in STREAM_TRANSITIONS.items() if inp in SEND)


def _reach(state: StreamState, ours: bool) -> tuple[SpdyConnection, FrameFactory, int]:
    """A server codec with one stream in ``state``; ``ours``: the server opened it."""
    peer, s = FrameFactory(), SpdyConnection(Role.SERVER)
    if ours:
        sid = s.open_stream(fin=state is StreamState.SYN_SENT_LOCAL_CLOSED)
        if state not in (StreamState.SYN_SENT, StreamState.SYN_SENT_LOCAL_CLOSED):
            s.receive_data(peer.syn_reply(sid))
    else:
        sid = 1
        s.receive_data(
            peer.syn_stream(sid, flags=int(state is StreamState.SYN_RECEIVED_REMOTE_CLOSED))
        )
        if state not in (StreamState.SYN_RECEIVED, StreamState.SYN_RECEIVED_REMOTE_CLOSED):
            s.reply_stream(sid)
    if state is StreamState.HALF_CLOSED_LOCAL:
        s.end_stream(sid)
    elif state is StreamState.HALF_CLOSED_REMOTE:
        s.receive_data(peer.data(sid, b"", 1))
    assert s.stream_state(sid) is state
    s.data_to_send()
    return s, peer, sid


REACHABLE = [
    (state, ours)
    for state in LIVE
    for ours in (True, False)
    if not (ours and state.name.startswith("SYN_RECEIVED"))
    and not (not ours and state.name.startswith("SYN_SENT"))
]


@pytest.mark.parametrize("inp", list(StreamInput), ids=[i.name for i in StreamInput])
@pytest.mark.parametrize(
    ("state", "ours"),
    REACHABLE,
    ids=[f"{s.name}-{'ours' if o else 'theirs'}" for s, o in REACHABLE],
)
def test_every_state_and_input_follows_the_table(
    state: StreamState, ours: bool, inp: StreamInput
) -> None:
    s, peer, sid = _reach(state, ours)
    expected = STREAM_TRANSITIONS.get((state, inp))
    send: dict[StreamInput, Callable[[], None]] = {
        StreamInput.SEND_REPLY: lambda: s.reply_stream(sid),
        StreamInput.SEND_DATA: lambda: s.send_data(sid, b"x"),
        StreamInput.SEND_FIN: lambda: s.end_stream(sid),
        StreamInput.SEND_RESET: lambda: s.reset_stream(sid),
    }
    recv = {
        StreamInput.RECV_REPLY: (peer.syn_reply(sid), StreamReplied(sid, {})),
        StreamInput.RECV_DATA: (peer.data(sid, b"x"), DataReceived(sid, b"x")),
        StreamInput.RECV_FIN: (peer.data(sid, b"", 1), StreamEnded(sid)),
        StreamInput.RECV_RESET: (peer.rst(sid, 5), StreamReset(sid, 5)),
    }
    if inp in send:
        if expected is None:
            with pytest.raises(LocalProtocolError):
                send[inp]()
            assert s.data_to_send() == b"" and s.stream_state(sid) is state
            return
        send[inp]()
        assert s.data_to_send() != b""
    else:
        frame, event = recv[inp]
        assert expected is not None
        assert s.receive_data(frame) == ([event] if expected[1] else [])
    assert expected is not None
    assert s.stream_state(sid) is expected[0]


# ------------------------------------------------------------------------------ generated

names = st.sampled_from(
    ["streamtype", "port", "requestid", "X-Multi", "x-multi", "a", "Host", "connection"]
)
header_lists = st.lists(st.tuples(names, st.text(max_size=8)), max_size=4)
payloads = st.one_of(
    st.binary(max_size=64), st.integers(0, 70_000).map(lambda n: bytes(n % 251 for n in range(n)))
)

OPS = st.tuples(
    st.sampled_from(["client", "server"]),
    st.sampled_from(["open", "reply", "data", "end", "reset", "headers", "ping", "settings"]),
    st.integers(0, 9),  # which stream
    header_lists,
    payloads,
    st.booleans(),  # fin
)


def _normalized(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        out[name] = out[name] + "\x00" + value if name in out else value
    return out


def _run_op(p: Pair, op: tuple[str, str, int, list[tuple[str, str]], bytes, bool]) -> None:
    side, kind, pick, headers, payload, fin = op
    me, peer = (p.client, p.server) if side == "client" else (p.server, p.client)
    known = sorted(me.open_stream_ids)
    sid = known[pick % len(known)] if known and pick < 8 else pick * 2 + 1
    names_ = {n.lower() for n, _ in headers}
    state = me.stream_state(sid)
    expected: list[Event]
    echo: list[Event] = []

    def allowed(*inputs: StreamInput) -> bool:
        current = state
        for inp in inputs:
            if current is StreamState.CLOSED or (current, inp) not in STREAM_TRANSITIONS:
                return False
            current = STREAM_TRANSITIONS[current, inp][0]
        return True

    fins = (StreamInput.SEND_FIN,) if fin else ()
    ended = [StreamEnded(sid)] if fin else []
    try:
        if kind == "open":
            valid = not names_ & spdy.REQUEST_FORBIDDEN
            sid = me.open_stream(headers, fin=fin)
            ended = [StreamEnded(sid)] if fin else []
            expected = [StreamOpened(sid, _normalized(headers)), *ended]
        elif kind == "reply":
            valid = allowed(StreamInput.SEND_REPLY, *fins) and not names_ & spdy.RESPONSE_FORBIDDEN
            me.reply_stream(sid, headers, fin=fin)
            expected = [StreamReplied(sid, _normalized(headers)), *ended]
        elif kind == "headers":
            forbidden = spdy.REQUEST_FORBIDDEN if sid % 2 == 0 else spdy.RESPONSE_FORBIDDEN
            valid = allowed(StreamInput.SEND_DATA, *fins) and not names_ & forbidden
            me.send_headers(sid, headers, fin=fin)
            expected = [HeadersReceived(sid, _normalized(headers)), *ended]
        elif kind in ("data", "end"):
            data = payload if kind == "data" else b""
            fin = fin or kind == "end"
            valid = allowed(StreamInput.SEND_DATA, *(StreamInput.SEND_FIN,) * fin)
            me.send_data(sid, data, fin=fin)
            size = me.max_data_frame_size
            chunks = [DataReceived(sid, data[i : i + size]) for i in range(0, len(data), size)]
            expected = [*chunks, *([StreamEnded(sid)] if fin else [])]
        elif kind == "reset":
            valid = state is not StreamState.CLOSED or me._was_used(sid)
            me.reset_stream(sid, 1 + pick)
            expected = [StreamReset(sid, 1 + pick)] if state is not StreamState.CLOSED else []
        elif kind == "ping":
            valid = True
            ping_id = me.ping()
            expected, echo = [PingReceived(ping_id)], [PingAck(ping_id)]
        else:
            valid = True
            me.send_settings({pick + 1: len(payload)})
            expected = [SettingsReceived({pick + 1: len(payload)})]
    except LocalProtocolError:
        assert not valid, op
        assert me.data_to_send() == b""
        return
    assert valid, op
    wire = me.data_to_send()
    if kind != "headers":
        assert all(not (ctl and t == 8) for ctl, t, _, _ in split_frames(wire))
    assert peer.receive_data(wire) == expected
    assert me.receive_data(peer.data_to_send()) == echo
    # Both ends agree on every stream.
    assert p.client.open_stream_ids == p.server.open_stream_ids
    for stream in p.client.open_stream_ids:
        assert MIRROR[p.client.stream_state(stream)] is p.server.stream_state(stream)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(OPS, max_size=30), final_goaway=st.sampled_from([None, "client", "server"]))
def test_random_operations_round_trip(
    script: list[tuple[str, str, int, list[tuple[str, str]], bytes, bool]], final_goaway: str | None
) -> None:
    p = Pair(max_data_frame_size=32768)
    for op in script:
        _run_op(p, op)
    if final_goaway:
        me, peer = (p.client, p.server) if final_goaway == "client" else (p.server, p.client)
        me.goaway()
        assert peer.receive_data(me.data_to_send()) == [GoAwayReceived(me.last_peer_stream_id, 0)]
        with pytest.raises(LocalProtocolError):
            peer.open_stream()


CLIENT_OPS = st.lists(
    st.tuples(
        st.sampled_from(["open", "data", "end", "reset", "headers", "ping", "settings", "window"]),
        st.integers(0, 9),
        header_lists.map(
            lambda hs: [(n, v) for n, v in hs if n.lower() not in spdy.REQUEST_FORBIDDEN]
        ),
        payloads,
    ),
    max_size=25,
)


def _client_wire(script: list[tuple[str, int, list[tuple[str, str]], bytes]]) -> bytes:
    """Bytes a client writes when the server never answers (so no local actions interleave)."""
    c = SpdyConnection(Role.CLIENT, max_data_frame_size=5000)
    wire = []
    for kind, pick, headers, payload in script:
        known = sorted(c.open_stream_ids)
        sid = known[pick % len(known)] if known else 1
        try:
            if kind == "open":
                c.open_stream(headers, fin=pick == 0)
            elif kind == "data":
                c.send_data(sid, payload, fin=pick == 1)
            elif kind == "end":
                c.end_stream(sid)
            elif kind == "reset":
                c.reset_stream(sid)
            elif kind == "headers":
                c.send_headers(sid, [(n, v) for n, v in headers if n.lower() != "host"])
            elif kind == "ping":
                c.ping()
            elif kind == "settings":
                c.send_settings({pick + 1: pick})
            else:
                c.send_window_update(sid, pick + 1)
        except LocalProtocolError:
            pass
        wire.append(c.data_to_send())
    return b"".join(wire)


def _feed(wire: bytes, cuts: list[int]) -> tuple[list[Event], bytes, str | None]:
    """Feed ``wire`` cut at ``cuts``; return events (incl. those on an error), output, error."""
    s = SpdyConnection(Role.SERVER)
    events: list[Event] = []
    last = 0
    try:
        for cut in [*sorted(c % (len(wire) + 1) for c in cuts), len(wire)]:
            events += s.receive_data(wire[last:cut])
            last = cut
    except RemoteProtocolError as exc:
        return events + list(exc.events), s.data_to_send(), str(exc)
    return events, s.data_to_send(), None


def _feed_buffered(
    wire: bytes, reads: list[tuple[int, int, bool]]
) -> tuple[list[Event], bytes, str | None]:
    """Feed ``wire`` as a buffered protocol's transport would: each read asks
    :meth:`get_buffer` with a size hint and fills what it is given, or (``False``) goes
    through :meth:`receive_data` instead; the two ways mixed."""
    s = SpdyConnection(Role.SERVER)
    events: list[Event] = []
    pos = 0
    plan = iter(reads)
    try:
        while pos < len(wire):
            take, hint, buffered = next(plan, (len(wire), -1, True))
            take = max(1, min(take, len(wire) - pos))
            if not buffered:
                events += s.receive_data(wire[pos : pos + take])
                pos += take
                continue
            buf = s.get_buffer(hint)
            assert len(buf) >= (hint if hint > 0 else spdy.READ_SIZE)
            n = min(take, len(buf))
            buf[:n] = wire[pos : pos + n]
            events += s.buffer_updated(n)
            pos += n
    except RemoteProtocolError as exc:
        return events + list(exc.events), s.data_to_send(), str(exc)
    return events, s.data_to_send(), None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=CLIENT_OPS,
    reads=st.lists(
        st.tuples(st.integers(1, 20000), st.integers(-1, 20000), st.booleans()), max_size=30
    ),
    tail=st.binary(max_size=40),
)
def test_reading_into_the_codecs_buffer_gives_identical_events(
    script: list[tuple[str, int, list[tuple[str, str]], bytes]],
    reads: list[tuple[int, int, bool]],
    tail: bytes,
) -> None:
    wire = _client_wire(script)
    whole = _feed(wire, [])
    assert _feed_buffered(wire, reads) == whole
    assert _feed_buffered(wire, [(7, 7, True)] * len(wire)) == whole
    assert _feed_buffered(wire + tail, reads) == _feed(wire + tail, [])


def test_a_partial_frame_stays_in_the_buffer_until_its_rest_arrives() -> None:
    p = Pair()
    sid = p.open()
    p.client.send_data(sid, b"a" * 100)
    p.client.send_data(sid, b"b" * 100)
    wire = p.client.data_to_send()
    buf = p.server.get_buffer(150)
    buf[:150] = wire[:150]
    assert p.server.buffer_updated(150) == [DataReceived(sid, b"a" * 100)]
    assert p.server.buffered == 150 - 108
    buf = p.server.get_buffer(66)
    buf[:66] = wire[150:]
    (event,) = p.server.buffer_updated(66)
    assert event == DataReceived(sid, b"b" * 100) and type(event.data) is bytes
    assert p.server.buffered == 0
    buf = p.server.get_buffer(-1)
    buf[:100] = b"X" * 100  # the next read reuses the buffer: the event has its own bytes
    assert event.data == b"b" * 100
    with pytest.raises(ValueError):
        p.server.buffer_updated(len(buf) + 1)  # more than was handed out


def test_a_small_read_after_a_bulk_one_lets_the_large_buffer_go() -> None:
    p = Pair()
    sid = p.open()
    p.client.send_data(sid, b"x" * 200_000)
    wire = p.client.data_to_send()
    buf = p.server.get_buffer(len(wire))
    buf[: len(wire)] = wire
    assert len(p.server.buffer_updated(len(wire))) == 7  # 32 KiB frames
    assert len(p.server.get_buffer(1)) >= len(wire)  # kept while the bulk goes on
    p.client.send_data(sid, b"k")
    wire = p.client.data_to_send()
    buf = p.server.get_buffer(1)
    buf[: len(wire)] = wire
    assert p.server.buffer_updated(len(wire)) == [DataReceived(sid, b"k")]
    assert len(p.server.get_buffer(16)) < 1024  # an interactive session holds no large one


def test_a_failure_on_the_buffered_way_drops_the_buffer() -> None:
    s = SpdyConnection(Role.SERVER)
    buf = s.get_buffer(8)
    buf[:7] = hx("80030006 000000")
    assert s.buffer_updated(7) == []
    assert s.buffered == 7
    buf = s.get_buffer(1)
    buf[:1] = hx("05")  # PING of length 5
    with pytest.raises(RemoteProtocolError):
        s.buffer_updated(1)
    assert s.buffered == 0
    with pytest.raises(RemoteProtocolError):
        s.buffer_updated(1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=CLIENT_OPS,
    cuts=st.lists(st.integers(0, 10**7), max_size=30),
    tail=st.binary(max_size=40),
)
def test_any_chunking_gives_identical_events(
    script: list[tuple[str, int, list[tuple[str, str]], bytes]], cuts: list[int], tail: bytes
) -> None:
    wire = _client_wire(script)
    whole = _feed(wire, [])
    assert whole[2] is None
    assert _feed(wire, cuts) == whole
    assert _feed(wire, list(range(0, len(wire), 7))) == whole
    # The same holds when garbage follows, up to and including the error.
    assert _feed(wire + tail, cuts) == _feed(wire + tail, [])


def _only_remote_errors(conn: SpdyConnection, data: bytes) -> None:
    """Feed ``data``: fine, or a RemoteProtocolError with a GOAWAY queued (nothing else)."""
    try:
        conn.receive_data(data)
        conn.receive_eof()
    except RemoteProtocolError as exc:
        out = conn.data_to_send()
        assert out.endswith(goaway_bytes(conn.last_peer_stream_id, exc.goaway_status))
        with pytest.raises(RemoteProtocolError):
            conn.receive_data(data)


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=300), role=st.sampled_from(Role))
def test_arbitrary_bytes_raise_only_remote_protocol_error(data: bytes, role: Role) -> None:
    _only_remote_errors(SpdyConnection(role), data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_after_a_valid_preface(data: bytes) -> None:
    p = Pair()
    sid = p.open()
    p.client.send_data(sid, b"stdin")
    p.client.ping()
    p.to_server()
    p.server.data_to_send()
    _only_remote_errors(p.server, data)


frame_specs = st.lists(
    st.one_of(
        st.tuples(
            st.just("block"),
            st.sampled_from([1, 2, 8]),
            st.integers(0, 3),  # flags
            st.sampled_from([0, 1, 2, 3, 4, 5, 0x7FFFFFFF, 0x80000001]),
            st.lists(
                st.tuples(
                    st.sampled_from([b"a", b"A", b"host", b"streamtype", b"", b"\xff"]),
                    st.binary(max_size=5),
                ),
                max_size=3,
            ),
        ),
        st.tuples(
            st.just("raw"),
            st.integers(0, 12),  # control type, 0 meaning DATA
            st.integers(0, 3),
            st.sampled_from([0, 1, 2, 3, 5, 0x80000000]),
            st.binary(max_size=12),
        ),
    ),
    max_size=12,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=frame_specs, role=st.sampled_from(Role), cuts=st.lists(st.integers(0, 10**6), max_size=5)
)
def test_structured_fuzz(specs: list[Any], role: Role, cuts: list[int]) -> None:
    peer = FrameFactory()
    wire = []
    for spec in specs:
        if spec[0] == "block":
            _, kind, flags, sid, pairs = spec
            prefix = struct.pack(">IIBB", sid, 0, 0, 0) if kind == 1 else struct.pack(">I", sid)
            wire.append(peer.control(kind, prefix + peer.block(pairs), flags))
        else:
            _, kind, flags, sid, body = spec
            if kind == 0:
                wire.append(peer.data(sid & 0x7FFFFFFF, body, flags))
            else:
                wire.append(peer.control(kind, struct.pack(">I", sid) + body, flags))
    data = b"".join(wire)
    _only_remote_errors(SpdyConnection(role), data)
    whole = _feed(data, [])
    assert _feed(data, cuts) == whole


def test_input_after_a_partial_frame_is_parsed_in_place_and_only_a_partial_tail_is_kept() -> None:
    p = Pair()
    sid = p.open()
    for i in range(10):
        p.client.send_data(sid, bytes([i]) * 32768)
    wire = p.client.data_to_send()
    frame = 8 + 32768
    assert len(wire) == 10 * frame
    # 1.5 frames, then the rest but 100 bytes, then those: every payload arrives whole and
    # the codec never holds more than the frame that is still incomplete.
    cuts = [frame + frame // 2, len(wire) - 100, len(wire)]
    events: list[Event] = []
    last = 0
    held = []
    for cut in cuts:
        events += p.server.receive_data(wire[last:cut])
        held.append(p.server.buffered)
        last = cut
    assert events == [DataReceived(sid, bytes([i]) * 32768) for i in range(10)]
    assert held == [frame // 2, frame - 100, 0]

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamsrv.protocol.dockermux import STDERR, STDOUT, Demuxer, DemuxError, mux


def collect(pieces: list[tuple[int, bytes]]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for stream, data in pieces:
        out[stream] = out.get(stream, b"") + data
    return out


def test_literal_frames() -> None:
    d = Demuxer()
    wire = bytes.fromhex("0100000000000003") + b"hi\n" + bytes.fromhex("0200000000000002") + b"e!"
    assert d.feed(wire) == [(1, b"hi\n"), (2, b"e!")]
    assert d.idle


def test_empty_frame_and_split_header() -> None:
    d = Demuxer()
    wire = mux(STDOUT, b"") + mux(STDOUT, b"abc")
    assert d.feed(wire[:5]) == []
    assert not d.idle
    assert d.feed(wire[5:]) == [(1, b"abc")]
    assert d.idle


def test_partial_payload_is_passed_on_at_once() -> None:
    d = Demuxer()
    frame = mux(STDERR, b"x" * 100)
    assert d.feed(frame[:58]) == [(2, b"x" * 50)]
    assert not d.idle
    assert d.feed(frame[58:]) == [(2, b"x" * 50)]
    assert d.idle


def test_unknown_stream_is_an_error() -> None:
    with pytest.raises(DemuxError):
        Demuxer().feed(bytes.fromhex("0300000000000001") + b"z")


@given(
    frames=st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=300)), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=8000), max_size=30),
)
def test_any_chunking_gives_the_same_streams(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    wire = b"".join(mux(s, p) for s, p in frames)
    expected: dict[int, bytes] = {}
    for s, p in frames:
        if p:
            expected[s] = expected.get(s, b"") + p
    d = Demuxer()
    pieces: list[tuple[int, bytes]] = []
    last = 0
    for cut in sorted(c % (len(wire) + 1) for c in cuts) + [len(wire)]:
        fed = d.feed(wire[last:cut])
        # One piece per run of one stream within a feed, none empty.
        assert all(p for _, p in fed)
        assert all(a[0] != b[0] for a, b in zip(fed, fed[1:], strict=False))
        pieces += fed
        last = cut
    assert {k: v for k, v in collect(pieces).items() if v} == expected
    # The order between the streams is kept: the same runs as the frames, merged.
    assert runs(pieces) == runs([f for f in frames if f[1]])
    assert d.idle


def runs(pieces: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for stream, data in pieces:
        if out and out[-1][0] == stream:
            out[-1] = (stream, out[-1][1] + data)
        else:
            out.append((stream, data))
    return out


def test_frames_of_one_stream_in_one_read_come_out_as_one_piece() -> None:
    d = Demuxer()
    wire = mux(STDOUT, b"a" * 10) + mux(STDOUT, b"b" * 20) + mux(STDERR, b"!") + mux(STDOUT, b"c")
    assert d.feed(wire) == [(1, b"a" * 10 + b"b" * 20), (2, b"!"), (1, b"c")]


def test_a_whole_payload_read_is_handed_on_without_a_copy() -> None:
    d = Demuxer()
    frame = mux(STDOUT, b"x" * 100)
    d.feed(frame[:8])
    rest = frame[8:]
    [(stream, piece)] = d.feed(rest)
    assert stream == STDOUT and piece is rest

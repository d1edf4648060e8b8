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
        pieces += d.feed(wire[last:cut])
        last = cut
    assert {k: v for k, v in collect(pieces).items() if v} == expected
    assert d.idle

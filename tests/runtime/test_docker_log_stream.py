"""Docker's timestamped log stream to CRI log lines, and where a follower resumes (no engine)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamsrv.protocol.crilog import (
    STDERR,
    STDOUT,
    CriLogWriter,
    format_line,
    format_timestamp,
    parse_lines,
)
from streamsrv.protocol.dockermux import mux
from streamsrv.runtime.base import BackendError
from streamsrv.runtime.docker import (
    DOCKER_PIECE,
    LOG_DISORDER,
    LOG_OVERLAP,
    DockerLogReader,
    LogPiece,
    _cri_lines,
    _drop_lines,
    resume_point,
)

T0 = 1_700_000_000_000_000_000
SECOND = 1_000_000_000


def ts(ns: int) -> bytes:
    return format_timestamp(ns).encode()


def message(ns: int, content: bytes) -> bytes:
    return ts(ns) + b" " + content


def read_all(reader: DockerLogReader, wire: bytes, cuts: list[int]) -> list[LogPiece]:
    """Feed ``wire`` cut at ``cuts``; pieces of one message joined (as the writer sees them)."""
    out: list[LogPiece] = []
    last = 0
    for cut in [*sorted(cuts), len(wire)]:
        out += reader.feed(wire[last:cut])
        last = cut
    out += reader.close()
    joined: list[LogPiece] = []
    for stream, ns, content, end in out:
        if joined and not joined[-1][3]:
            s0, n0, c0, _ = joined[-1]
            assert (s0, n0) == (stream, ns)
            joined[-1] = (stream, ns, c0 + content, end)
        else:
            joined.append((stream, ns, content, end))
    return joined


def test_frames_are_messages_as_the_engine_sends_them() -> None:
    # what a 20.10 engine sent for `echo one; echo two >&2; <40000 x a>; echo; printf partial`
    long = b"a" * 40000
    wire = (
        mux(1, message(T0, b"one\n"))
        + mux(2, message(T0 + 1, b"two\n"))
        + mux(1, message(T0 + 2, long[:DOCKER_PIECE]))
        + mux(1, message(T0 + 2, long[DOCKER_PIECE : 2 * DOCKER_PIECE]))
        + mux(1, message(T0 + 2, long[2 * DOCKER_PIECE :] + b"\n"))
        + mux(1, message(T0 + 3, b"partial"))
    )
    pieces = read_all(DockerLogReader(tty=False), wire, [])
    assert pieces == [
        (STDOUT, T0, b"one\n", True),
        (STDERR, T0 + 1, b"two\n", True),
        (STDOUT, T0 + 2, long[:DOCKER_PIECE], True),
        (STDOUT, T0 + 2, long[DOCKER_PIECE : 2 * DOCKER_PIECE], True),
        (STDOUT, T0 + 2, long[2 * DOCKER_PIECE :] + b"\n", True),
        (STDOUT, T0 + 3, b"partial", True),
    ]
    lines = parse_lines(_cri_lines(pieces, CriLogWriter()))
    assert [(x.stream, x.partial, len(x.content)) for x in lines] == [
        (STDOUT, False, 3),
        (STDERR, False, 3),
        (STDOUT, True, DOCKER_PIECE),
        (STDOUT, True, DOCKER_PIECE),
        (STDOUT, False, 40000 - 2 * DOCKER_PIECE),
        (STDOUT, True, 7),
    ]
    assert [x.ns for x in lines] == [T0, T0 + 1, T0 + 2, T0 + 2, T0 + 2, T0 + 3]


def test_raw_tty_messages_end_at_newlines_pieces_and_the_end() -> None:
    long = b"b" * (DOCKER_PIECE + 5)
    wire = (
        message(T0, b"one\r\n")
        + message(T0 + 1, long[:DOCKER_PIECE])
        + message(T0 + 1, long[DOCKER_PIECE:] + b"\r\n")
        + message(T0 + 2, b"x" * (DOCKER_PIECE - 1) + b"\n")  # a full line of 16 KiB - 1
        + message(T0 + 3, b"partial")
    )
    for cuts in ([], [1], list(range(0, len(wire), 7)), [31, 32, 33, 36 + DOCKER_PIECE]):
        pieces = read_all(DockerLogReader(tty=True), wire, cuts)
        assert pieces == [
            (STDOUT, T0, b"one\r\n", True),
            (STDOUT, T0 + 1, long[:DOCKER_PIECE], True),
            (STDOUT, T0 + 1, long[DOCKER_PIECE:] + b"\r\n", True),
            (STDOUT, T0 + 2, b"x" * (DOCKER_PIECE - 1) + b"\n", True),
            (STDOUT, T0 + 3, b"partial", True),
        ], cuts
    lines = parse_lines(_cri_lines(pieces, CriLogWriter()))
    assert [(x.partial, x.content[:5]) for x in lines] == [
        (False, b"one"),
        (True, b"bbbbb"),
        (False, b"bbbbb"),
        (False, b"xxxxx"),
        (True, b"parti"),
    ]


def test_a_tty_piece_not_followed_by_a_timestamp_reads_on_to_its_newline() -> None:
    # an engine whose pieces are longer than 16 KiB: the line goes on
    content = b"c" * (DOCKER_PIECE + 100) + b"\n"
    pieces = read_all(DockerLogReader(tty=True), message(T0, content) + message(T0 + 1, b"z\n"), [])
    assert pieces == [(STDOUT, T0, content, True), (STDOUT, T0 + 1, b"z\n", True)]


def test_content_is_passed_on_before_its_message_ends() -> None:
    reader = DockerLogReader(tty=False)
    frame = mux(1, message(T0, b"y" * 1000 + b"\n"))
    assert reader.feed(frame[:20]) == []  # not even the timestamp yet
    assert reader.feed(frame[20:500]) == [(STDOUT, T0, b"y" * (500 - 8 - 31), False)]
    tty = DockerLogReader(tty=True)
    assert tty.feed(message(T0, b"abc")) == [(STDOUT, T0, b"abc", False)]
    assert tty.close() == [(STDOUT, T0, b"", True)]


def test_no_timestamp_and_bad_frames() -> None:
    reader = DockerLogReader(tty=False)
    [(stream, ns, content, end)] = reader.feed(mux(2, b"short"))
    assert (stream, content, end) == (STDERR, b"short", True) and ns > T0
    with pytest.raises(BackendError):
        DockerLogReader(tty=False).feed(b"\x05\x00\x00\x00\x00\x00\x00\x01x")


@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2]), st.binary(max_size=60), st.booleans()),
        max_size=20,
    ),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
)
def test_any_cut_of_a_frame_stream_gives_the_same_messages(
    messages: list[tuple[int, bytes, bool]], cuts: list[int]
) -> None:
    wire = b""
    want: list[LogPiece] = []
    for i, (number, content, newline) in enumerate(messages):
        body = content.replace(b"\n", b"") + (b"\n" if newline else b"")
        wire += mux(number, message(T0 + i, body))
        want.append((STDOUT if number == 1 else STDERR, T0 + i, body, True))
    got = read_all(DockerLogReader(tty=False), wire, [c for c in cuts if c <= len(wire)])
    assert got == want


# ---------------------------------------------------------------------------- resuming


def test_drop_lines() -> None:
    assert _drop_lines(b"a\nb\nc\n", 2) == (b"c\n", 0)
    assert _drop_lines(b"a\nb\n", 3) == (b"", 1)
    assert _drop_lines(b"a\n", 0) == (b"a\n", 0)


@pytest.fixture
def logfile(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    path = tmp_path / "0.log"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    yield path, fd
    os.close(fd)


def test_an_empty_file_starts_at_the_container(logfile: tuple[Path, int]) -> None:
    _, fd = logfile
    assert resume_point(fd, T0) == (T0, 0)


def test_resume_counts_the_lines_of_the_overlap(logfile: tuple[Path, int]) -> None:
    path, fd = logfile
    lines = [
        format_line(T0 + i * SECOND // 4, STDOUT if i % 3 else STDERR, False, b"%d" % i)
        for i in range(40)  # 10 seconds of lines, 4 a second
    ]
    os.write(fd, b"".join(lines))
    last = T0 + 39 * SECOND // 4
    since, skip = resume_point(fd, T0)
    assert since == last - LOG_OVERLAP
    assert skip == 5  # the lines at last - 1 s, -0.75, -0.5, -0.25 and the last one
    # lines older than the container are another's: they never count
    assert resume_point(fd, last + 1) == (last + 1, 0)
    assert resume_point(fd, last) == (last, 1)
    assert path.read_bytes() == b"".join(lines)


def test_a_line_cut_short_is_cut_off(logfile: tuple[Path, int]) -> None:
    path, fd = logfile
    whole = format_line(T0, STDOUT, False, b"whole")
    os.write(fd, whole + format_line(T0 + 1, STDOUT, False, b"torn")[:-3])
    assert resume_point(fd, T0) == (T0, 1)
    assert path.read_bytes() == whole
    os.write(fd, b"no newline at all")
    os.ftruncate(fd, 0)
    os.write(fd, b"no newline at all")
    assert resume_point(fd, T0) == (T0, 0)
    assert path.read_bytes() == b""


def test_out_of_order_streams_within_the_disorder_bound(logfile: tuple[Path, int]) -> None:
    _, fd = logfile
    # stderr's line was stamped a little before stdout's but written after it; a line far
    # older than the overlap ends the count
    out = [
        format_line(T0 - 2 * LOG_DISORDER, STDOUT, False, b"old"),
        format_line(T0 + 10 * SECOND, STDOUT, False, b"a"),
        format_line(T0 + 10 * SECOND - LOG_OVERLAP - 10, STDERR, False, b"late"),
        format_line(T0 + 10 * SECOND + 5, STDERR, False, b"b"),
    ]
    os.write(fd, b"".join(out))
    assert resume_point(fd, 0) == (T0 + 10 * SECOND + 5 - LOG_OVERLAP, 2)


def test_lines_longer_than_a_read_block(logfile: tuple[Path, int]) -> None:
    path, fd = logfile
    body = b"".join(format_line(T0 + i, STDOUT, True, b"q" * 16384) for i in range(300))
    os.write(fd, body)
    assert resume_point(fd, 0) == (T0 + 299 - LOG_OVERLAP, 300)
    assert len(body) > 4 << 20 and path.stat().st_size == len(body)

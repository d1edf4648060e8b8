"""The CRI log file format: lines as the kubelet reads them, cut the way containerd cuts them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamsrv.protocol.crilog import (
    MAX_LINE,
    STDERR,
    STDOUT,
    CriLogError,
    CriLogWriter,
    LogLine,
    format_line,
    format_timestamp,
    parse_line,
    parse_lines,
    parse_timestamp,
    timestamp_ns,
)

T0 = 1475713029_669794202  # 2016-10-06T00:17:09.669794202Z, the kubelet's own example


def test_the_kubelet_example_line() -> None:
    line = b"2016-10-06T00:17:09.669794202Z stdout F log content 1\n"
    assert format_line(T0, STDOUT, False, b"log content 1") == line
    parsed = parse_line(line)
    assert parsed == ("2016-10-06T00:17:09.669794202Z", "stdout", False, b"log content 1")
    ts, stream, partial, content = parsed  # unpacks as a 4-tuple
    assert parsed.ns == T0 and stream == STDOUT and not partial and content == b"log content 1"
    assert parsed.time == datetime(2016, 10, 6, 0, 17, 9, 669794, tzinfo=UTC)
    assert parsed.output == b"log content 1\n"


def test_timestamps_keep_nanoseconds_and_nine_digits() -> None:
    assert format_timestamp(T0) == "2016-10-06T00:17:09.669794202Z"
    assert format_timestamp(1_000_000_000) == "1970-01-01T00:00:01.000000000Z"
    assert parse_timestamp("2016-10-06T00:17:09.669794202Z") == T0
    assert parse_timestamp(b"2016-10-06T00:17:09.669794202Z") == T0
    # Go's RFC3339Nano drops trailing zeros; offsets other than Z are accepted too
    assert parse_timestamp("2016-10-06T00:17:09.6697942Z") == T0 - 2
    assert parse_timestamp("2016-10-06T00:17:09Z") == T0 - 669794202
    assert parse_timestamp("2016-10-06T02:17:09.669794202+02:00") == T0
    assert parse_timestamp("2016-10-05T23:47:09.669794202-00:30") == T0
    for text in (
        "2016-10-06 00:17:09Z",
        "2016-13-06T00:17:09Z",
        "yesterday",
        "2016-10-06T00:17:09",
    ):
        with pytest.raises(CriLogError):
            parse_timestamp(text)


def test_datetimes_and_now() -> None:
    when = datetime(2016, 10, 6, 0, 17, 9, 669794, tzinfo=UTC)
    assert timestamp_ns(when) == T0 - 202
    assert timestamp_ns(when.astimezone(timezone(timedelta(hours=5)))) == T0 - 202
    assert timestamp_ns(when.replace(tzinfo=None)) == T0 - 202  # naive: UTC
    assert timestamp_ns(T0) == T0
    w = CriLogWriter()
    assert w.feed(STDOUT, b"x\n", when) == b"2016-10-06T00:17:09.669794000Z stdout F x\n"
    before = timestamp_ns()
    line = parse_line(w.feed(STDOUT, b"y\n"))
    assert before <= line.ns <= timestamp_ns()


def test_complete_lines_are_full() -> None:
    w = CriLogWriter()
    out = w.feed(STDOUT, b"one\ntwo\n\nthree", T0)
    assert parse_lines(out) == [
        LogLine(format_timestamp(T0), STDOUT, False, b"one"),
        LogLine(format_timestamp(T0), STDOUT, False, b"two"),
        LogLine(format_timestamp(T0), STDOUT, False, b""),
    ]
    assert out.endswith(b" stdout F \n")  # an empty line keeps the space after its tag
    assert w.pending(STDOUT) == 5
    assert w.feed(STDOUT, b" and", T0) == b""
    assert parse_lines(w.feed(STDOUT, b" more\n", T0 + 1)) == [
        LogLine(format_timestamp(T0 + 1), STDOUT, False, b"three and more")
    ]
    assert w.pending(STDOUT) == 0


def test_streams_are_kept_apart() -> None:
    w = CriLogWriter()
    assert w.feed(STDOUT, b"out", T0) == b""
    assert parse_lines(w.feed(STDERR, b"err\n", T0)) == [
        (format_timestamp(T0), STDERR, False, b"err")
    ]
    assert parse_lines(w.feed(STDOUT, b"put\n", T0)) == [
        (format_timestamp(T0), STDOUT, False, b"output")
    ]


def test_a_last_line_without_newline_is_partial_as_in_containerd() -> None:
    w = CriLogWriter()
    out = (
        w.feed(STDOUT, b"one\n", T0) + w.feed(STDERR, b"two\n", T0) + w.feed(STDOUT, b"partial", T0)
    )
    out += w.flush(now=T0)
    assert [(line.stream, line.partial, line.content) for line in parse_lines(out)] == [
        (STDOUT, False, b"one"),
        (STDERR, False, b"two"),
        (STDOUT, True, b"partial"),
    ]
    assert w.flush() == b""  # nothing held any more


def test_crlf_loses_both_characters_a_lone_cr_stays() -> None:
    w = CriLogWriter()
    out = w.feed(STDOUT, b"tty\r\nline\r", T0) + w.feed(STDOUT, b"\na\rb\n\r\r\n", T0)
    assert [line.content for line in parse_lines(out)] == [b"tty", b"line", b"a\rb", b"\r"]


def test_long_lines_are_cut_into_partial_pieces() -> None:
    w = CriLogWriter()
    data = b"a" * MAX_LINE + b"b" * MAX_LINE + b"c" * 100
    out = parse_lines(w.feed(STDOUT, data + b"\n", T0))
    assert [(line.partial, len(line.content)) for line in out] == [
        (True, MAX_LINE),
        (True, MAX_LINE),
        (False, 100),
    ]
    assert b"".join(line.output for line in out) == data + b"\n"
    # exactly MAX_LINE is one full line; one more byte makes a piece of one byte
    assert [len(x.content) for x in parse_lines(w.feed(STDOUT, b"x" * MAX_LINE + b"\n", T0))] == [
        MAX_LINE
    ]
    cut = parse_lines(w.feed(STDOUT, b"y" * (MAX_LINE + 1) + b"\n", T0))
    assert [(x.partial, len(x.content)) for x in cut] == [(True, MAX_LINE), (False, 1)]


def test_a_long_line_in_small_writes_is_held_to_one_piece() -> None:
    w = CriLogWriter(max_line=10)
    out = b""
    for _ in range(25):
        out += w.feed(STDERR, b"z", T0)
        assert w.pending(STDERR) <= 10
    assert [len(x.content) for x in parse_lines(out)] == [10, 10]
    assert all(x.partial for x in parse_lines(out))
    assert [(x.partial, x.content) for x in parse_lines(w.feed(STDERR, b"\n", T0))] == [
        (False, b"zzzzz")
    ]


def test_a_cr_before_the_cut_waits_for_its_newline() -> None:
    # containerd never cuts between \r and \n: "x" * 10 + "\r\n" is one full line of 10
    w = CriLogWriter(max_line=10)
    assert w.feed(STDOUT, b"x" * 10 + b"\r", T0) == b""
    assert w.pending(STDOUT) == 11
    assert [(x.partial, x.content) for x in parse_lines(w.feed(STDOUT, b"\n", T0))] == [
        (False, b"x" * 10)
    ]


def test_tags_after_the_first_are_ignored() -> None:
    assert parse_line(b"2016-10-06T00:17:09.669794202Z stderr P:x:y text with  spaces ") == (
        "2016-10-06T00:17:09.669794202Z",
        STDERR,
        True,
        b"text with  spaces ",
    )


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"2016-10-06T00:17:09.669794202Z stdout F",  # no content separator
        b"2016-10-06T00:17:09.669794202Z stdin F x",
        b"2016-10-06T00:17:09.669794202Z stdout X x",
        b"not-a-time stdout F x",
        b"2016-10-06T00:17:09.669794202Z" + b"0" * 100 + b" stdout F x",
    ],
)
def test_malformed_lines(line: bytes) -> None:
    with pytest.raises(CriLogError):
        parse_line(line)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        CriLogWriter(max_line=0)
    with pytest.raises(ValueError):
        CriLogWriter().feed("stdin", b"x")


chunks = st.lists(
    st.tuples(
        st.sampled_from([STDOUT, STDERR]),
        st.binary(max_size=40).map(lambda b: b.replace(b"\n", b""))
        | st.sampled_from([b"\n", b"\r", b"\r\n", b"ab\n", b"\n\n", b"xy"]),
    ),
    max_size=40,
)


@given(chunks, st.integers(min_value=1, max_value=16), st.data())
def test_any_cut_of_any_output_reads_back_per_stream(
    pieces: list[tuple[str, bytes]], max_line: int, data: st.DataObject
) -> None:
    """Output cut anywhere (in many writes of both streams) reads back as it was written, per
    stream: each ``P`` line's content, each ``F`` line's content and a newline; only a
    ``\\r\\n`` comes back as ``\\n`` (containerd drops the ``\\r``)."""
    w = CriLogWriter(max_line=max_line)
    written = {STDOUT: b"", STDERR: b""}
    out = b""
    now = T0
    for stream, piece in pieces:
        # the same output in one or two writes
        cut = data.draw(st.integers(min_value=0, max_value=len(piece)))
        for part in (piece[:cut], piece[cut:]):
            out += w.feed(stream, part, now)
            now += data.draw(st.integers(min_value=0, max_value=10**9))
            assert w.pending(stream) <= max_line + 1
        written[stream] += piece
    out += w.flush(now=now)
    lines = parse_lines(out)
    assert out.count(b"\n") == len(lines)
    got = {STDOUT: b"", STDERR: b""}
    for line in lines:
        assert len(line.content) <= max_line
        got[line.stream] += line.output
    for stream in (STDOUT, STDERR):
        assert got[stream] == written[stream].replace(b"\r\n", b"\n")
    stamps = [line.ns for line in lines]
    assert stamps == sorted(stamps)

"""streamsrv.logs, the reader of ``kubectl logs``: CRI log files in, the kubelet's output out."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsrv.logs import HEADER_MAX, InvalidLogOptions, LogOptions, read_log
from streamsrv.protocol.crilog import (
    STDERR,
    STDOUT,
    STREAMS,
    CriLogError,
    CriLogWriter,
    format_line,
    parse_line,
)

S = 1_000_000_000  # a second in nanoseconds
ONE_SINCE = "at most one of `sinceTime` or `sinceSeconds` may be specified"


def line(second: int, stream: str, partial: bool, content: bytes) -> bytes:
    return format_line(second * S, stream, partial, content)


def full(second: int, content: bytes, stream: str = STDOUT) -> bytes:
    return line(second, stream, False, content)


def piece(second: int, content: bytes, stream: str = STDOUT) -> bytes:
    return line(second, stream, True, content)


async def _not_running() -> bool:
    return False


async def read(
    path: Path | str,
    opts: LogOptions | dict[str, str] | None = None,
    chunks: list[bytes] | None = None,
    **kwargs: Any,
) -> bytes:
    """Everything read_log writes (each chunk also appended to ``chunks``)."""
    if opts is None:
        opts = LogOptions()
    elif isinstance(opts, dict):
        opts = LogOptions.from_query(opts)
    got: list[bytes] = [] if chunks is None else chunks

    async def write(data: bytes) -> None:
        assert data
        got.append(data)

    kwargs.setdefault("running", _not_running)
    await read_log(str(path), opts, write, **kwargs)
    return b"".join(got)


@pytest.fixture
def log_file(tmp_path: Path) -> Callable[[bytes], Path]:
    def make(data: bytes) -> Path:
        path = tmp_path / "0.log"
        path.write_bytes(data)
        return path

    return make


# Reading ---------------------------------------------------------------------------------------


async def test_pieces_are_joined_up_to_their_full_line(log_file: Callable[[bytes], Path]) -> None:
    path = log_file(
        piece(1, b"hel")
        + piece(1, b"lo ")
        + full(2, b"world")
        + piece(3, b"err ", STDERR)
        + full(3, b"one", STDERR)
        + full(4, b"")  # an empty line
    )
    assert await read(path) == b"hello world\nerr one\n\n"


async def test_a_line_cut_by_the_other_stream_is_written_as_it_is(
    log_file: Callable[[bytes], Path],
) -> None:
    path = log_file(
        piece(1, b"out ")
        + full(2, b"err", STDERR)  # cuts in: "out " goes out as it is
        + full(3, b"goes on")
        + piece(4, b"a")
        + b"junk\n"  # a malformed line cuts nothing
        + full(5, b"b")
    )
    assert await read(path) == b"out err\ngoes on\nab\n"  # the kubelet's bytes
    assert await read(path, {"timestamps": "1"}) == (
        b"1970-01-01T00:00:01.000000000Z out "
        b"1970-01-01T00:00:02.000000000Z err\n"
        b"1970-01-01T00:00:03.000000000Z goes on\n"
        b"1970-01-01T00:00:04.000000000Z ab\n"
    )
    assert await read(path, {"tailLines": "3"}) == b"err\ngoes on\nab\n"
    assert await read(path, {"tailLines": "4"}) == b"out err\ngoes on\nab\n"


async def test_a_file_written_by_the_runtime_reads_back_as_the_output(
    log_file: Callable[[bytes], Path],
) -> None:
    writer = CriLogWriter(max_line=5)
    data = writer.feed(STDOUT, b"a long line of output\nshort\n", now=S)
    data += writer.feed(STDERR, b"to stderr\r\n", now=2 * S)
    data += writer.feed(STDOUT, b"no newline at the end", now=3 * S) + writer.flush(now=4 * S)
    assert await read(log_file(data)) == (
        b"a long line of output\nshort\nto stderr\nno newline at the end"
    )


async def test_timestamps_are_the_first_pieces_in_the_kubelets_form(
    log_file: Callable[[bytes], Path],
) -> None:
    path = log_file(
        piece(1, b"joined ")
        + full(2, b"line")
        + b"2024-01-02T03:04:05.5Z stdout F few digits\n"
        + b"2024-01-02T03:04:05+02:00 stderr F an offset\n"
        + b"2024-01-02t03:04:05.123456789-00:00 stdout F zero offset, lower case\n"
    )
    assert await read(path, {"timestamps": "true"}) == (
        b"1970-01-01T00:00:01.000000000Z joined line\n"
        b"2024-01-02T03:04:05.500000000Z few digits\n"
        b"2024-01-02T03:04:05.000000000+02:00 an offset\n"
        b"2024-01-02T03:04:05.123456789Z zero offset, lower case\n"
    )


async def test_a_last_line_without_its_newline_is_written_without_one(
    log_file: Callable[[bytes], Path],
) -> None:
    path = log_file(full(1, b"one") + full(2, b"two")[:-1])
    assert await read(path) == b"one\ntwo"
    assert await read(path, {"tailLines": "1"}) == b"two"
    assert await read(path, {"tailLines": "2", "timestamps": "1"}) == (
        b"1970-01-01T00:00:01.000000000Z one\n1970-01-01T00:00:02.000000000Z two"
    )


async def test_a_line_unfinished_at_the_end_is_written_as_it_is(
    log_file: Callable[[bytes], Path],
) -> None:
    path = log_file(full(1, b"one") + piece(2, b"tw") + piece(3, b"o"))
    assert await read(path) == b"one\ntwo"
    assert await read(path, {"tailLines": "1"}) == b"two"


async def test_malformed_lines_are_skipped_and_logged_at_debug(
    log_file: Callable[[bytes], Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="streamsrv.logs")
    path = log_file(
        full(1, b"one")
        + b"not a log line\n"
        + b"\n"
        + b"2024-01-02T03:04:05Z stdin F unknown stream\n"
        + b"2024-01-02T03:04:05Z stdout X unknown tag\n"
        + b"2024-13-02T03:04:05Z stdout F no such month\n"
        + b"2024-01-02T03:04:05Z stdout F"
        + b"\n"  # no space after the tag
        + b"2024-01-02T03:04:05Z stdout "
        + b"F" * 300
        + b" a head too long\n"
        + full(2, b"two")
    )
    assert await read(path) == b"one\ntwo\n"
    assert await read(path, {"tailLines": "2"}) == b"one\ntwo\n"
    skipped = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(skipped) >= 7 and all(r.levelno == logging.DEBUG for r in skipped)
    assert str(path) in skipped[0].getMessage()


async def test_a_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await read(tmp_path / "nothing.log")


async def test_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # opened without blocking, then refused
    with pytest.raises(OSError, match="not a regular file"):
        await read(tmp_path / "fifo")


# since -----------------------------------------------------------------------------------------


async def test_since_time_leaves_out_lines_begun_before_it(
    log_file: Callable[[bytes], Path],
) -> None:
    path = log_file(
        full(1, b"one")
        + piece(2, b"begun at 2, ")
        + full(4, b"ended at 4")
        + full(3, b"three")  # exactly at the bound: kept
        + b"1970-01-01T01:00:02.9+01:00 stdout F 2.9 s, with an offset\n"
        + b"1970-01-01T00:00:04.5Z stdout F 4.5 s\n"
        + full(5, b"five")
    )
    assert await read(path, {"sinceTime": "1970-01-01T00:00:03Z"}) == b"three\n4.5 s\nfive\n"
    # The apiserver hands sinceTime on to the second: .9 is still 3 s.
    assert await read(path, {"sinceTime": "1970-01-01T00:00:03.9Z"}) == b"three\n4.5 s\nfive\n"
    assert await read(path, {"sinceTime": "1970-01-01T01:00:04+01:00"}) == b"4.5 s\nfive\n"
    got = await read(path, {"sinceTime": "1970-01-01T00:00:02Z"})
    assert got == b"begun at 2, ended at 4\nthree\n2.9 s, with an offset\n4.5 s\nfive\n"


async def test_since_seconds_counts_back_from_now(log_file: Callable[[bytes], Path]) -> None:
    now = time.time_ns() // S
    path = log_file(full(now - 100, b"old") + full(now - 5, b"recent") + full(now + 1, b"new"))
    assert await read(path, {"sinceSeconds": "60"}) == b"recent\nnew\n"
    assert await read(path, {"sinceSeconds": "1000"}) == b"old\nrecent\nnew\n"


async def test_tail_then_since(log_file: Callable[[bytes], Path]) -> None:
    path = log_file(b"".join(full(s, b"%d" % s) for s in range(1, 7)))
    # The last 3 lines (4, 5, 6), then since leaves out those before 5.
    opts = LogOptions(tail_lines=3, since_time=5 * S)
    assert await read(path, opts) == b"5\n6\n"


# tail ------------------------------------------------------------------------------------------


async def test_tail(log_file: Callable[[bytes], Path]) -> None:
    path = log_file(b"".join(full(s, b"line %d" % s) for s in range(1, 6)))
    assert await read(path, {"tailLines": "2"}) == b"line 4\nline 5\n"
    assert await read(path, {"tailLines": "5"}) == b"".join(b"line %d\n" % s for s in range(1, 6))
    assert await read(path, {"tailLines": "100"}) == await read(path)
    assert await read(path, {"tailLines": "0"}) == b""
    assert await read(log_file(b""), {"tailLines": "3"}) == b""


async def test_tail_counts_joined_lines(log_file: Callable[[bytes], Path]) -> None:
    path = log_file(
        full(1, b"out 1")
        + piece(2, b"out ")
        + piece(2, b"lo")
        + full(2, b"ng")
        + full(3, b"err 1", STDERR)
        + full(4, b"out 3")
        + piece(5, b"err ", STDERR)
        + full(5, b"2", STDERR)
        + full(6, b"err 3", STDERR)
    )
    everything = await read(path)
    assert everything == b"out 1\nout long\nerr 1\nout 3\nerr 2\nerr 3\n"
    lines = everything.splitlines(keepends=True)
    for n in range(len(lines) + 2):
        expected = b"".join(lines[max(0, len(lines) - n) :]) if n else b""
        for block_size in (1, 7, 64, 4096):
            got = await read(path, {"tailLines": str(n)}, block_size=block_size)
            assert got == expected, (n, block_size)


async def test_tail_with_lines_longer_than_a_block(log_file: Callable[[bytes], Path]) -> None:
    contents = [bytes([65 + i]) * (40 + 90 * i) for i in range(6)]
    path = log_file(b"".join(full(i, c) for i, c in enumerate(contents)))
    for block_size in (1, 16, 100, 1000):
        got = await read(path, {"tailLines": "3"}, block_size=block_size)
        assert got == b"".join(c + b"\n" for c in contents[3:]), block_size
        assert await read(path, block_size=block_size) == b"".join(c + b"\n" for c in contents)


async def test_tail_reads_only_the_end_of_a_big_file(
    log_file: Callable[[bytes], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = log_file(full(1, b"x" * 100) * 40_000 + full(2, b"last but one") + full(3, b"last"))
    assert path.stat().st_size > 4 * 2**20
    read_bytes = 0
    pread = os.pread

    def counting(fd: int, size: int, offset: int) -> bytes:
        nonlocal read_bytes
        data = pread(fd, size, offset)
        read_bytes += len(data)
        return data

    monkeypatch.setattr(os, "pread", counting)
    assert await read(path, {"tailLines": "2"}) == b"last but one\nlast\n"
    assert read_bytes <= 2 * 64 * 1024


# limitBytes ------------------------------------------------------------------------------------


async def test_limit_bytes_cuts_mid_line(log_file: Callable[[bytes], Path]) -> None:
    path = log_file(full(1, b"hello") + full(2, b"world"))
    assert await read(path, {"limitBytes": "8"}) == b"hello\nwo"
    assert await read(path, {"limitBytes": "6"}) == b"hello\n"
    assert await read(path, {"limitBytes": "1000"}) == b"hello\nworld\n"
    stamped = await read(path, {"limitBytes": "35", "timestamps": "1"})
    assert stamped == b"1970-01-01T00:00:01.000000000Z hell"  # the stamp counts


async def test_limit_bytes_ends_a_follow(log_file: Callable[[bytes], Path]) -> None:
    async def running() -> bool:
        raise AssertionError("the limit was reached before the end of the file")

    path = log_file(full(1, b"hello") + full(2, b"world"))
    opts = LogOptions(follow=True, limit_bytes=3)
    assert await asyncio.wait_for(read(path, opts, running=running), 5) == b"hel"


# Long lines and bounds -------------------------------------------------------------------------


async def test_a_joined_line_past_the_cap_is_written_in_parts(
    log_file: Callable[[bytes], Path],
) -> None:
    pieces = [bytes([97 + i % 26]) * 100 for i in range(200)]
    data = b"".join(piece(1 + i, p) for i, p in enumerate(pieces)) + full(500, b"end")
    path = log_file(data + full(501, b"next"))
    chunks: list[bytes] = []
    got = await read(path, {"timestamps": "1"}, chunks, block_size=512, line_cap=1000)
    assert got == (
        b"1970-01-01T00:00:01.000000000Z "
        + b"".join(pieces)
        + b"end\n1970-01-01T00:08:21.000000000Z next\n"
    )
    assert len(chunks) > 10 and max(map(len, chunks)) <= 1000 + 2 * 512 + 100


async def test_a_file_line_longer_than_a_block_is_not_held_whole(
    log_file: Callable[[bytes], Path],
) -> None:
    content = bytes(range(256)).replace(b"\n", b"") * 400  # a 100 KB file line
    path = log_file(full(1, b"before") + full(2, content) + piece(3, content) + full(4, b"!"))
    chunks: list[bytes] = []
    got = await read(path, None, chunks, block_size=1024, line_cap=4096)
    assert got == b"before\n" + content + b"\n" + content + b"!\n"
    assert max(map(len, chunks)) <= 4096 + 2 * 1024 + HEADER_MAX
    assert await read(path, {"tailLines": "2"}, block_size=1024, line_cap=4096) == got[7:]
    # A malformed line that long is skipped as it comes.
    bad = log_file(b"junk " * 30_000 + b"\n" + full(5, b"after"))
    assert await read(bad, block_size=1024, line_cap=4096) == b"after\n"


async def test_a_big_read_never_holds_the_loop_long(log_file: Callable[[bytes], Path]) -> None:
    path = log_file(full(1, b"y" * 60) * 90_000)  # about 8 MiB of short lines
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    size = len(await read(path, {"timestamps": "1"}))
    done = True
    await task
    assert size == 90_000 * (31 + 61)
    # Parsed a 64 KiB block at a time, a few ms each (the module's docstring has measures);
    # parsed all at once it would be ~0.5 s. Room is left for a busy machine's own stalls.
    assert max(gaps) < 0.25


# follow ----------------------------------------------------------------------------------------


async def test_follow_reads_what_is_appended_until_the_container_stops(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    writer = CriLogWriter(max_line=8)
    with path.open("wb") as f:
        f.write(writer.feed(STDOUT, b"before the read\n"))
    stopped = asyncio.Event()
    asked = 0

    async def produce() -> None:
        with path.open("ab", buffering=0) as f:
            for i in range(30):
                f.write(writer.feed(STDOUT if i % 3 else STDERR, b"line %d\n" % i))
                await asyncio.sleep(0.003)
            f.write(writer.feed(STDOUT, b"the last words") + writer.flush())
        stopped.set()  # everything written before the container "stops" must be read

    async def running() -> bool:
        nonlocal asked
        asked += 1
        return not stopped.is_set()

    producer = asyncio.create_task(produce())
    started = time.monotonic()
    opts = LogOptions(follow=True)
    got = await asyncio.wait_for(read(path, opts, running=running, poll=0.02), 10)
    elapsed = time.monotonic() - started
    await producer
    expected = b"before the read\n" + b"".join(b"line %d\n" % i for i in range(30))
    assert got == expected + b"the last words"
    assert 1 <= asked <= elapsed / 0.02 + 2  # at most once a poll


async def test_follow_with_tail_starts_at_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    appended = b""
    calls = 0

    async def running() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            with path.open("ab") as f:
                f.write(appended)
            return True
        return False

    path.write_bytes(full(1, b"one") + full(2, b"two") + piece(3, b"thr"))
    appended = full(4, b"ee") + full(5, b"four")
    opts = LogOptions(follow=True, tail_lines=2)
    assert await read(path, opts, running=running, poll=0.01) == b"two\nthree\nfour\n"
    # tail 0: only what comes after, not the end of a file line begun before
    path.write_bytes(full(1, b"one") + full(2, b"two")[:-2])
    appended = b"o\n" + full(5, b"four")
    calls = 0
    opts = LogOptions(follow=True, tail_lines=0)
    assert await read(path, opts, running=running, poll=0.01) == b"four\n"


def _open_fds(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return count


async def test_a_cancelled_follow_closes_its_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(full(1, b"hello"))
    before = len(os.listdir("/proc/self/fd"))
    got = asyncio.Event()

    async def write(data: bytes) -> None:
        got.set()

    async def running() -> bool:
        return True

    task = asyncio.create_task(
        read_log(str(path), LogOptions(follow=True), write, running=running, poll=0.01)
    )
    await asyncio.wait_for(got.wait(), 5)
    await asyncio.sleep(0.05)  # following: at the end of the file, polling
    assert _open_fds(path) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _open_fds(path) == 0
    assert len(os.listdir("/proc/self/fd")) == before


# Options ---------------------------------------------------------------------------------------


def test_options_from_a_query() -> None:
    assert LogOptions.from_query({}) == LogOptions()
    opts = LogOptions.from_query(
        {
            "container": "app",
            "follow": "true",
            "previous": "",  # present: true, as in the apiserver
            "timestamps": "yes",
            "tailLines": "+10",
            "sinceSeconds": "60",
            "limitBytes": "500",
            "insecureSkipTLSVerifyBackend": "true",  # not ours: ignored
        }
    )
    assert opts == LogOptions(
        container="app",
        follow=True,
        previous=True,
        timestamps=True,
        tail_lines=10,
        since_seconds=60,
        limit_bytes=500,
    )
    assert opts.since_ns(now_ns=100 * S) == 40 * S
    for false in ("0", "false", "False", "FALSE"):
        assert LogOptions.from_query({"follow": false, "container": ""}) == LogOptions()
    at = LogOptions.from_query({"sinceTime": "2024-01-02T03:04:05.999+01:00"})
    assert at.since_time == 1704161045 * S  # 02:04:05Z, to the second
    assert at.since_ns() == at.since_time
    assert LogOptions.from_query({"sinceTime": ""}).since_ns() is None  # given, no bound
    assert LogOptions.from_query({"tailLines": "0"}).tail_lines == 0
    assert LogOptions.from_query({"limitBytes": "000000000000000000000042"}).limit_bytes == 42
    with pytest.raises(InvalidLogOptions, match="Invalid value: -9223372036854775808: must"):
        LogOptions.from_query({"tailLines": "-9223372036854775808"})  # an int64: parsed


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"tailLines": "x"}, 'strconv.ParseInt: parsing "x": invalid syntax'),
        ({"tailLines": " 5"}, 'strconv.ParseInt: parsing " 5": invalid syntax'),
        ({"limitBytes": ""}, 'strconv.ParseInt: parsing "": invalid syntax'),
        ({"sinceSeconds": "1.5"}, 'strconv.ParseInt: parsing "1.5": invalid syntax'),
        (
            {"limitBytes": "9223372036854775808"},
            'strconv.ParseInt: parsing "9223372036854775808": value out of range',
        ),
        (
            {"tailLines": "-" + "0" * 30 + "9223372036854775809"},
            'strconv.ParseInt: parsing "-' + "0" * 30 + '9223372036854775809": value out of range',
        ),
        (
            {"limitBytes": "1" * 5000},
            f'strconv.ParseInt: parsing "{"1" * 5000}": value out of range',
        ),
        (
            {"sinceTime": "yesterday"},
            'parsing time "yesterday" as "2006-01-02T15:04:05Z07:00": '
            'cannot parse "yesterday" as RFC 3339',
        ),
    ],
)
def test_values_not_of_their_type_are_a_bad_request(query: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidLogOptions) as caught:
        LogOptions.from_query(query, name="p")
    assert str(caught.value) == message
    assert (caught.value.code, caught.value.reason) == (400, "BadRequest")
    assert caught.value.details() is None


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"tailLines": "-1"}, "tailLines: Invalid value: -1: must be greater than or equal to 0"),
        ({"limitBytes": "0"}, "limitBytes: Invalid value: 0: must be greater than 0"),
        ({"sinceSeconds": "0"}, "sinceSeconds: Invalid value: 0: must be greater than 0"),
        (
            {"sinceSeconds": "10", "sinceTime": "2024-01-02T03:04:05Z"},
            f": Forbidden: {ONE_SINCE}",
        ),
        (
            {"sinceSeconds": "0", "sinceTime": ""},
            f": Forbidden: {ONE_SINCE}",
        ),
        (
            {"tailLines": "-5", "limitBytes": "-1", "sinceSeconds": "-2"},
            "[tailLines: Invalid value: -5: must be greater than or equal to 0, "
            "limitBytes: Invalid value: -1: must be greater than 0, "
            "sinceSeconds: Invalid value: -2: must be greater than 0]",
        ),
    ],
)
def test_values_out_of_range_are_invalid(query: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidLogOptions) as caught:
        LogOptions.from_query(query, name="web-1")
    assert str(caught.value) == f'PodLogOptions "web-1" is invalid: {message}'
    assert (caught.value.code, caught.value.reason) == (422, "Invalid")
    details = caught.value.details()
    assert details is not None and details["name"] == "web-1"
    assert details["kind"] == "PodLogOptions" and details["causes"]


def test_the_details_of_an_invalid_query() -> None:
    with pytest.raises(InvalidLogOptions) as caught:
        LogOptions.from_query(
            {"sinceSeconds": "5", "sinceTime": "2024-01-02T03:04:05Z", "limitBytes": "0"},
            name="p",
        )
    assert caught.value.details() == {
        "name": "p",
        "kind": "PodLogOptions",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "message": "Invalid value: 0: must be greater than 0",
                "field": "limitBytes",
            },
            {"reason": "FieldValueForbidden", "message": f"Forbidden: {ONE_SINCE}"},
        ],
    }
    assert isinstance(caught.value, ValueError)


# Property: the tail is the end of the whole read ------------------------------------------------


def reference(data: bytes, *, timestamps: bool) -> list[bytes]:
    """The lines a whole read writes, one entry each, by the rules of streamsrv.logs (a model
    written the simple way: the whole file in memory)."""
    *ended, last = data.split(b"\n")
    entries = [(raw, True) for raw in ended] + ([(last, False)] if last else [])
    out: list[bytes] = []
    joining: tuple[str, str, list[bytes]] | None = None  # stream, first stamp, contents

    def text(ts: str, parts: list[bytes]) -> bytes:  # (the files' stamps are in fixed form)
        return (ts.encode() + b" " if timestamps else b"") + b"".join(parts)

    for raw, terminated in entries:
        try:
            ts, stream, partial, content = parse_line(raw)
        except CriLogError:
            continue
        if joining is not None and joining[0] != stream:
            out.append(text(*joining[1:]))
            joining = None
        if joining is None:
            joining = (stream, ts, [])
        joining[2].append(content)
        if not partial and terminated:
            out.append(text(*joining[1:]) + b"\n")
            joining = None
    if joining is not None:
        out.append(text(*joining[1:]))
    return out


def output_lines(data: bytes) -> list[bytes]:
    """``data`` cut after each newline (the last line may have none)."""
    *ended, last = data.split(b"\n")
    return [x + b"\n" for x in ended] + ([last] if last else [])


_OUTPUT = st.one_of(
    st.lists(
        st.sampled_from([b"a", b"xyz", b"\n", b"line\n", b"\r\n", b" ", b"L" * 300]), max_size=6
    ).map(b"".join),
    st.binary(max_size=12),
)
_EVENT = st.tuples(
    st.sampled_from(STREAMS),
    _OUTPUT,
    st.booleans(),  # flush the stream after (a P line for what has no newline yet)
    st.sampled_from([b"", b"", b"", b"\n", b"junk\n", b"2024-01-02T03:04:05Z stdout\n"]),
)


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(_EVENT, max_size=25),
    max_line=st.integers(1, 400),
    end=st.sampled_from(["flush", "as is", "cut"]),
    cut=st.integers(1, 60),
    block_size=st.one_of(st.integers(1, 80), st.sampled_from([255, 256, 257, 4096, 65536])),
    tails=st.lists(st.integers(0, 40), min_size=1, max_size=3),
    timestamps=st.booleans(),
)
def test_the_tail_is_the_end_of_the_whole_read(
    events: list[tuple[str, bytes, bool, bytes]],
    max_line: int,
    end: str,
    cut: int,
    block_size: int,
    tails: list[int],
    timestamps: bool,
) -> None:
    writer = CriLogWriter(max_line=max_line)
    chunks: list[bytes] = []
    for i, (stream, output, flush, junk) in enumerate(events):
        now = (1 + i // 2) * S + i % 3  # some stamps repeat
        chunks.append(writer.feed(stream, output, now=now))
        if flush:
            chunks.append(writer.flush(stream, now=now))
        chunks.append(junk)
    if end == "flush":
        chunks.append(writer.flush(now=100 * S))
    data = b"".join(chunks)
    if end == "cut":
        data = data[: max(0, len(data) - cut)]
    expected = reference(data, timestamps=timestamps)
    # Tiny blocks on small files only: a read is a thread hop a block, and the test must be quick.
    block_size = max(block_size, len(data) // 100)

    async def check(path: str) -> None:
        whole = await read(path, LogOptions(timestamps=timestamps), block_size=block_size)
        assert whole == b"".join(expected)
        # Unless two lines were left unfinished at the end, the entries are the output's lines.
        plain = all(x.endswith(b"\n") for x in expected[:-1])
        if plain:
            assert output_lines(whole) == expected
        for n in tails:
            opts = LogOptions(timestamps=timestamps, tail_lines=n)
            got = await read(path, opts, block_size=block_size)
            assert got == b"".join(expected[max(0, len(expected) - n) :] if n else []), n
            if plain:  # tail N is the last N lines of the whole read
                lines = output_lines(whole)
                assert got == b"".join(lines[max(0, len(lines) - n) :] if n else []), n

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "0.log")
        with open(path, "wb") as f:
            f.write(data)
        asyncio.run(check(path))

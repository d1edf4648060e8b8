"""The bounded stdin pipe between a transport and a backend (no engine needed)."""

from __future__ import annotations

import asyncio
import fcntl
import os

import pytest

from streamsrv.runtime.base import JOIN_LIMIT, WRITEV_LIMIT, FdWriter, Pipe, wait_fd


async def test_queued_chunks_are_read_as_one_in_order() -> None:
    pipe = Pipe()
    for chunk in (b"a", b"bc", b"", b"def"):
        assert pipe.feed_nowait(chunk)
    assert await pipe.read() == b"abcdef"
    pipe.feed_nowait(b"g")
    pipe.close()
    assert await pipe.read() == b"g"
    assert await pipe.read() == b""


async def test_joins_stop_at_the_limit_and_a_large_chunk_goes_on_whole() -> None:
    pipe = Pipe(limit=10 * JOIN_LIMIT)
    half = JOIN_LIMIT // 2
    big = b"B" * (2 * JOIN_LIMIT)
    for chunk in (b"a" * half, b"b" * half, b"c", big, b"d"):
        pipe.feed_nowait(chunk)
    assert await pipe.read() == b"a" * half + b"b" * half
    assert await pipe.read() == b"c"
    assert await pipe.read() is big
    assert await pipe.read() == b"d"


async def test_the_source_is_paused_over_the_limit_and_resumed_when_read() -> None:
    pipe = Pipe(limit=10)
    assert pipe.feed_nowait(b"x" * 10)
    assert not pipe.feed_nowait(b"y")  # 11 bytes queued: the caller pauses its source
    waiter = asyncio.create_task(pipe.wait_writable())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert await pipe.read() == b"x" * 10 + b"y"
    await asyncio.wait_for(waiter, 2)


async def test_a_reader_waits_for_data_and_sees_eof_after_close() -> None:
    pipe = Pipe()
    reader = asyncio.create_task(pipe.read())
    await asyncio.sleep(0.01)
    assert not reader.done()
    await pipe.feed(b"late")
    assert await asyncio.wait_for(reader, 2) == b"late"
    pipe.close()
    assert await asyncio.wait_for(pipe.read(), 2) == b""


async def test_queued_chunks_are_taken_whole_up_to_the_limit() -> None:
    pipe = Pipe(limit=10 * WRITEV_LIMIT)
    taps: list[bytes] = []
    pipe.tap = taps.append
    big = b"B" * (2 * WRITEV_LIMIT)
    for chunk in (b"a", b"bc", b"", b"d" * (WRITEV_LIMIT - 3), b"e", big, b"f"):
        pipe.feed_nowait(chunk)
    first = await pipe.read_chunks()
    assert first == [b"a", b"bc", b"d" * (WRITEV_LIMIT - 3)]  # nothing joined, no empty one
    assert await pipe.read_chunks() == [b"e"]
    (alone,) = await pipe.read_chunks()  # larger than the limit: on its own, whole
    assert alone is big
    pipe.close()
    assert await pipe.read_chunks() == [b"f"]
    assert await pipe.read_chunks() == []
    assert taps == [*first, b"e", big, b"f"]  # the session's tap sees every chunk once


async def test_reading_chunks_resumes_a_paused_source() -> None:
    pipe = Pipe(limit=10)
    assert pipe.feed_nowait(b"x" * 6)
    assert not pipe.feed_nowait(b"y" * 6)
    waiter = asyncio.create_task(pipe.wait_writable())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert await pipe.read_chunks() == [b"x" * 6, b"y" * 6]
    await asyncio.wait_for(waiter, 2)


async def test_chunks_reach_a_full_pipe_in_order_through_partial_writes() -> None:
    """A pipe far smaller than what is written: writev writes part of a chunk, the writer
    waits, and goes on from the middle of it."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    chunks = [os.urandom(n) for n in (1, 5000, 3, 70_000, 4095, 4097)]
    writer = FdWriter(w)
    got = bytearray()
    os.set_blocking(r, False)

    async def drain() -> None:
        while len(got) < sum(map(len, chunks)):
            await wait_fd(r, readable=True)
            got.extend(os.read(r, 1000))  # slower than the writer: it keeps finding it full

    try:
        await asyncio.wait_for(asyncio.gather(writer.write_chunks(list(chunks)), drain()), 30)
        assert bytes(got) == b"".join(chunks)
    finally:
        os.close(r)
        os.close(w)


async def test_writing_chunks_to_a_closed_reader_is_a_broken_pipe() -> None:
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(BrokenPipeError):
            await FdWriter(w).write_chunks([b"a", b"b"])
        with pytest.raises(BrokenPipeError):  # or an fd closed elsewhere (its number reused)
            await FdWriter(w, lambda: False).write_chunks([b"a"])
    finally:
        os.close(w)

"""The bounded stdin pipe between a transport and a backend (no engine needed)."""

from __future__ import annotations

import asyncio

from streamsrv.runtime.base import JOIN_LIMIT, Pipe


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

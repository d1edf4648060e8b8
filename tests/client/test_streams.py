"""ByteStream: bytes kept in order whatever the chunking, bounded, ends as promised."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsrv.client.streams import ByteStream


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=0, max_size=64), max_size=30),
    sizes=st.lists(st.integers(min_value=-1, max_value=70), min_size=1, max_size=10),
    limit=st.integers(min_value=1, max_value=200),
)
def test_reads_of_any_size_give_the_bytes_fed_in_order(
    chunks: list[bytes], sizes: list[int], limit: int
) -> None:
    async def scenario() -> bytes:
        stream = ByteStream(limit)

        async def produce() -> None:
            for chunk in chunks:
                stream.feed(chunk)
                assert stream._size <= limit + len(chunk)  # never more than one chunk over
                if stream.full:
                    await stream.wait_space()
            stream.end()

        producer = asyncio.ensure_future(produce())
        got = bytearray()
        i = 0
        while True:
            n = sizes[i % len(sizes)]
            i += 1
            chunk = await stream.read(n)
            if n == 0:
                assert chunk == b""
                chunk = await stream.read()  # keep going when every size is 0
                n = -1
            if not chunk:
                break
            assert n < 0 or len(chunk) <= n
            got += chunk
        await producer
        return bytes(got)

    assert asyncio.run(scenario()) == b"".join(chunks)


async def test_a_full_stream_holds_its_producer_until_read() -> None:
    stream = ByteStream(10)
    stream.feed(b"x" * 10)
    assert stream.full
    waiter = asyncio.ensure_future(stream.wait_space())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    assert await stream.read(4) == b"xxxx"
    await asyncio.wait_for(waiter, 5)


async def test_readexactly_and_readall_and_iteration() -> None:
    stream = ByteStream()
    for part in (b"ab", b"cde", b"f"):
        stream.feed(part)
    stream.end()
    assert await stream.readexactly(4) == b"abcd"
    assert [c async for c in stream] == [b"e", b"f"]
    assert await stream.readall() == b""
    short = ByteStream()
    short.feed(b"xy")
    short.end()
    with pytest.raises(asyncio.IncompleteReadError) as info:
        await short.readexactly(3)
    assert info.value.partial == b"xy"


async def test_end_with_an_error_raises_it_after_the_buffered_data() -> None:
    stream = ByteStream()
    stream.feed(b"kept")
    stream.end(RuntimeError("cut"))
    assert await stream.read() == b"kept"
    with pytest.raises(RuntimeError, match="cut"):
        await stream.read()


async def test_discard_drops_data_and_frees_a_waiting_producer() -> None:
    stream = ByteStream(4)
    stream.feed(b"12345")
    waiter = asyncio.ensure_future(stream.wait_space())
    await asyncio.sleep(0)
    stream.discard()
    await asyncio.wait_for(waiter, 5)
    assert await stream.read() == b""
    stream.feed(b"late")  # after the end: ignored
    assert await stream.read() == b""


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ByteStream(0)

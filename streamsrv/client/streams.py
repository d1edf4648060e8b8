"""A bounded, chunked byte stream between the connection's reader task and the caller.

The reader task feeds whole messages (no copy, no per-byte work) and waits when the stream holds
``limit`` bytes or more, which stops it reading the WebSocket, which stops the server's writes:
a slow consumer slows the command instead of growing memory.
"""

from __future__ import annotations

import asyncio
from collections import deque


class ByteStream:
    """Output of one channel (stdout or stderr): read it like an ``asyncio.StreamReader``.

    ``read()`` returns the next chunk as it arrived (the fastest way through), ``read(n)`` at
    most ``n`` bytes, ``readexactly(n)`` exactly ``n``, ``readall()`` everything until the end;
    ``async for chunk in stream`` iterates chunks. ``b""`` means the end of the stream.
    """

    def __init__(self, limit: int = 1 << 20) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._reader: asyncio.Future[None] | None = None
        self._space: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        state = "eof" if self._eof else "open"
        return f"<ByteStream {state} buffered={self._size}>"

    # ----------------------------------------------------------------- the reader task's side

    def feed(self, data: bytes) -> None:
        """Append a chunk (the producer then awaits :meth:`wait_space` when :attr:`full`)."""
        if self._eof or not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        self._wake_reader()

    @property
    def full(self) -> bool:
        return self._size >= self.limit

    async def wait_space(self) -> None:
        """Return once the consumer has taken the buffer below its limit (or it ended)."""
        while self._size >= self.limit and not self._eof:
            self._space = asyncio.get_running_loop().create_future()
            try:
                await self._space
            finally:
                self._space = None

    def end(self, exc: BaseException | None = None) -> None:
        """No more data; a reader past the buffered data gets ``b""`` (or ``exc`` raised)."""
        if not self._eof:
            self._eof = True
            self._exc = exc
        self._wake_reader()
        self._wake_space()

    def discard(self) -> None:
        """Drop what is buffered and whatever comes later (the caller stopped reading)."""
        self._chunks.clear()
        self._size = 0
        self.end()

    # ----------------------------------------------------------------- the caller's side

    @property
    def at_eof(self) -> bool:
        """Ended and drained."""
        return self._eof and not self._chunks

    async def read(self, n: int = -1) -> bytes:
        """The next chunk (at most ``n`` bytes when ``n`` >= 0); ``b""`` at the end."""
        if n == 0:
            return b""
        while not self._chunks:
            if self._eof:
                if self._exc is not None:
                    raise self._exc
                return b""
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        chunk = self._chunks.popleft()
        if 0 <= n < len(chunk):
            self._chunks.appendleft(chunk[n:])
            chunk = chunk[:n]
        self._size -= len(chunk)
        if self._size < self.limit:
            self._wake_space()
        return chunk

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; :class:`asyncio.IncompleteReadError` if the stream ends first."""
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = await self.read(n - got)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    async def readall(self) -> bytes:
        """Everything until the end of the stream (unbounded: the caller asked for it all)."""
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    def __aiter__(self) -> ByteStream:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    # ----------------------------------------------------------------- internals

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def _wake_space(self) -> None:
        if self._space is not None and not self._space.done():
            self._space.set_result(None)


__all__ = ["ByteStream"]

"""The containerd runtime's FIFO reader (runtime.containerd.FifoReader): no end-of-file before
the writer has opened the FIFO, every byte in order, end-of-file when the writer closes, and no
wait for readiness while the FIFO holds data (the wait is two epoll_ctl calls per read)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from streamsrv.runtime import base, containerd
from streamsrv.runtime.containerd import FifoReader


async def test_reads_wait_for_the_writer_then_for_data_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits = 0
    real_wait = base.wait_fd

    async def counted(fd: int, *, readable: bool) -> None:
        nonlocal waits
        waits += 1
        await real_wait(fd, readable=readable)

    monkeypatch.setattr(containerd, "wait_fd", counted)
    path = tmp_path / "stdout"
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    writer = -1
    try:
        reader = FifoReader(fd)
        first = asyncio.create_task(reader.read())
        await asyncio.sleep(0.2)
        assert not first.done(), "end-of-file before the writer opened the FIFO"

        writer = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        os.write(writer, b"one")
        assert await asyncio.wait_for(first, 30) == b"one"
        assert waits >= 1

        # Data already waiting: read at once, no wait for readiness.
        before = waits
        chunks = [bytes([i]) * 4096 for i in range(1, 9)]
        got = []
        for chunk in chunks:
            os.write(writer, chunk)
            got.append(await reader.read(len(chunk)))
        assert got == chunks
        assert waits == before

        # An empty FIFO with its writer open: the read waits for the next bytes.
        later = asyncio.create_task(reader.read())
        await asyncio.sleep(0.1)
        assert not later.done()
        os.write(writer, b"two")
        assert await asyncio.wait_for(later, 30) == b"two"
        assert waits == before + 1

        os.close(writer)
        writer = -1
        assert await asyncio.wait_for(reader.read(), 30) == b""
    finally:
        if writer >= 0:
            os.close(writer)
        os.close(fd)

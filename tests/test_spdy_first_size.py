"""A tty session's runtime waits for a first terminal size only where one can come: SPDY v1
and v2 have no resize stream (docs/protocol.md, the SPDY version table), so a runtime handed
sizes there would wait its whole bound for a size that never comes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from streamsrv.runtime.base import StdIO
from streamsrv.server import ExecRequest
from tests.conftest import stream_server
from tests.test_remotecommand import FakeRuntime
from tests.test_spdy_remotecommand import Client


class SizeRuntime(FakeRuntime):
    """``sizes?`` answers whether the session handed the runtime terminal sizes."""

    async def exec(self, container_id: str, cmd: Sequence[str], io: StdIO, *, tty: bool) -> int:
        if cmd[0] == "sizes?":
            assert io.stdout is not None
            await io.stdout.write(b"sizes" if io.resize is not None else b"none")
            return 0
        return await super().exec(container_id, cmd, io, tty=tty)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("channel.k8s.io", b"none"),
        ("v2.channel.k8s.io", b"none"),
        ("v3.channel.k8s.io", b"sizes"),
        ("v4.channel.k8s.io", b"sizes"),
    ],
)
async def test_sizes_only_with_a_resize_stream(version: str, expected: bytes) -> None:
    async with stream_server(SizeRuntime()) as (server, ts):
        url = await server.get_exec(ExecRequest("c", ("sizes?",), tty=True))
        client, _ = await Client.connect(ts, url, [version])
        await client.open("error")
        stdout = await client.open("stdout")
        if version in ("v3.channel.k8s.io", "v4.channel.k8s.io"):
            await client.open("resize")
        await client.until_goaway()
        assert client.data[stdout] == expected
        client.close()

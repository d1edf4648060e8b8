"""Exec/attach over SPDY/3.1 against a fake runtime, driven by our own SPDY client codec."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from streamsrv.limits import Limits
from streamsrv.protocol import spdy
from streamsrv.protocol.spdy import Role, SpdyConnection
from streamsrv.server import ExecRequest, StreamServer
from tests.conftest import stream_server
from tests.test_remotecommand import FakeRuntime


@pytest.fixture
async def srv() -> AsyncIterator[tuple[StreamServer, TestServer, FakeRuntime]]:
    runtime = FakeRuntime()
    async with stream_server(runtime, Limits(stream_creation_timeout=0.5)) as (server, ts):
        yield server, ts, runtime


class Client:
    """A SPDY client over a raw connection, as kubectl's would be."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = SpdyConnection(Role.CLIENT)
        self.data: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.goaway = False

    @classmethod
    async def connect(
        cls, ts: TestServer, url: str, versions: list[str], extra: str = ""
    ) -> tuple[Client, bytes]:
        reader, writer = await asyncio.open_connection(ts.host, ts.port)
        path = "/" + url.split("/", 3)[3]
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        head += "".join(f"X-Stream-Protocol-Version: {v}\r\n" for v in versions) + extra + "\r\n"
        writer.write(head.encode())
        response = await reader.readuntil(b"\r\n\r\n")
        return cls(reader, writer), response

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    async def open(self, kind: str) -> int:
        sid = self.conn.open_stream({"streamtype": kind})
        self.flush()
        while True:
            for e in await self.events():
                if isinstance(e, spdy.StreamReplied) and e.stream_id == sid:
                    return sid

    async def events(self) -> list[spdy.Event]:
        chunk = await asyncio.wait_for(self.reader.read(65536), 10)
        if not chunk:
            return [spdy.ConnectionTerminated()]
        events = self.conn.receive_data(chunk)
        for e in events:
            if isinstance(e, spdy.DataReceived):
                self.data[e.stream_id] = self.data.get(e.stream_id, b"") + e.data
            elif isinstance(e, spdy.StreamEnded | spdy.StreamReset):
                self.ended.add(e.stream_id)
            elif isinstance(e, spdy.GoAwayReceived):
                self.goaway = True
        self.flush()
        return events

    async def until_goaway(self) -> None:
        while not self.goaway:
            if any(isinstance(e, spdy.ConnectionTerminated) for e in await self.events()):
                return

    def close(self) -> None:
        self.writer.close()


async def test_exec_v4_status_and_output(srv) -> None:  # type: ignore[no-untyped-def]
    server, ts, _ = srv
    url = await server.get_exec(
        ExecRequest("c", ("echo", "over", "spdy"), stdout=True, stderr=True)
    )
    client, response = await Client.connect(ts, url, ["v4.channel.k8s.io", "v3.channel.k8s.io"])
    assert response.startswith(b"HTTP/1.1 101")
    assert b"X-Stream-Protocol-Version: v4.channel.k8s.io" in response
    error = await client.open("error")
    stdout = await client.open("stdout")
    stderr = await client.open("stderr")
    await client.until_goaway()
    assert client.data[stdout] == b"over spdy\n"
    assert client.data[stderr] == b"to-stderr\n"
    assert client.data[error] == b'{"metadata":{},"status":"Success"}'
    assert {error, stdout, stderr} <= client.ended
    assert server.metrics.sessions[("exec", "spdy")] == 1
    client.close()


async def test_v5_is_served_as_v4_and_exit_codes_arrive(srv) -> None:  # type: ignore[no-untyped-def]
    server, ts, _ = srv
    url = await server.get_exec(ExecRequest("c", ("exit", "42")))
    client, response = await Client.connect(ts, url, ["v5.channel.k8s.io", "v4.channel.k8s.io"])
    assert b"X-Stream-Protocol-Version: v5.channel.k8s.io" in response
    error = await client.open("error")
    await client.open("stdout")
    await client.until_goaway()
    status = json.loads(client.data[error])
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "42"}]
    client.close()


async def test_v2_failure_is_text_and_success_is_silent(srv) -> None:  # type: ignore[no-untyped-def]
    server, ts, _ = srv
    for cmd, expected in ((("exit", "3"), b"exit code 3"), (("exit", "0"), None)):
        url = await server.get_exec(ExecRequest("c", cmd))
        client, _ = await Client.connect(ts, url, ["v2.channel.k8s.io"])
        error = await client.open("error")
        await client.open("stdout")
        await client.until_goaway()
        got = client.data.get(error)
        if expected is None:
            assert got is None
        else:
            assert got is not None and expected in got and not got.startswith(b"{")
        client.close()


async def test_stdin_and_resize_streams(srv) -> None:  # type: ignore[no-untyped-def]
    server, ts, _ = srv
    url = await server.get_exec(ExecRequest("c", ("cat",), stdin=True, stdout=True))
    client, _ = await Client.connect(ts, url, ["v4.channel.k8s.io"])
    await client.open("error")
    stdin = await client.open("stdin")
    stdout = await client.open("stdout")
    payload = bytes(range(256)) * 4096
    client.conn.send_data(stdin, payload, fin=True)
    client.flush()
    await client.until_goaway()
    assert client.data[stdout] == payload
    client.close()

    url = await server.get_exec(ExecRequest("c", ("size",), stdin=True, tty=True))
    client, _ = await Client.connect(ts, url, ["v4.channel.k8s.io"])
    await client.open("error")
    await client.open("stdin")
    stdout = await client.open("stdout")
    resize = await client.open("resize")
    client.conn.send_data(resize, b'{"Width":100,"Height":30}\n{"Width":1,')
    client.conn.send_data(resize, b'"Height":1}\n')
    client.flush()
    await client.until_goaway()
    # Coalesced: the latest size wins, an older one may be skipped but never reordered.
    assert client.data[stdout] in (b"100x30\n1x1\n", b"1x1\n")
    client.close()


async def test_negotiation_failures(srv) -> None:  # type: ignore[no-untyped-def]
    server, ts, runtime = srv
    url = await server.get_exec(ExecRequest("c", ("echo", "x")))
    client, response = await Client.connect(ts, url, ["v9.channel.k8s.io"])
    assert response.startswith(b"HTTP/1.1 403")
    assert response.count(b"X-Accepted-Stream-Protocol-Versions:") == 5
    client.close()
    url = await server.get_exec(ExecRequest("c", ("echo", "x")))
    client, response = await Client.connect(ts, url, [])
    assert response.startswith(b"HTTP/1.1 403")
    client.close()
    assert not runtime.started.is_set()


async def test_missing_streams_time_out_cleanly(srv) -> None:  # type: ignore[no-untyped-def]
    server, ts, runtime = srv
    url = await server.get_exec(ExecRequest("c", ("echo", "x"), stdout=True, stderr=True))
    client, _ = await Client.connect(ts, url, ["v4.channel.k8s.io"])
    await client.open("error")
    await client.open("stdout")  # no stderr stream: the server waits 0.5 s, then gives up
    await asyncio.wait_for(client.until_goaway(), 5)
    assert not runtime.started.is_set()
    client.close()


@pytest.mark.parametrize(
    "garbage",
    [
        bytes.fromhex("8003000500000000"),  # NOOP: an unknown control frame type
        bytes.fromhex("8003000100000010") + bytes(6) + b"\x00\x00not-zlib!",  # bad header block
        bytes.fromhex("80030006000000050000000100"),  # a malformed PING
    ],
)
async def test_malformed_frames_end_only_that_connection(srv, garbage: bytes) -> None:  # type: ignore[no-untyped-def]
    server, ts, runtime = srv
    url = await server.get_exec(ExecRequest("c", ("sleep",)))
    bad, _ = await Client.connect(ts, url, ["v4.channel.k8s.io"])
    await bad.open("error")
    await bad.open("stdout")
    await runtime.started.wait()
    bad.writer.write(garbage)
    rest = await asyncio.wait_for(bad.reader.read(), 10)  # GOAWAY(PROTOCOL_ERROR), then EOF
    assert rest.endswith(bytes.fromhex("00000001"))
    bad.close()
    await runtime.wait_cancelled(2.0)
    assert runtime.cancelled == 1
    url = await server.get_exec(ExecRequest("c", ("echo", "fine")))
    good, _ = await Client.connect(ts, url, ["v4.channel.k8s.io"])
    await good.open("error")
    stdout = await good.open("stdout")
    await good.until_goaway()
    assert good.data[stdout] == b"fine\n"
    good.close()


async def test_pings_are_echoed_during_a_session(srv) -> None:  # type: ignore[no-untyped-def]
    server, ts, _ = srv
    url = await server.get_exec(ExecRequest("c", ("sleep",)))
    client, _ = await Client.connect(ts, url, ["v4.channel.k8s.io"])
    await client.open("error")
    await client.open("stdout")
    client.conn.ping()
    client.flush()
    seen: list[Any] = []
    while not any(isinstance(e, spdy.PingAck) for e in seen):
        seen += await client.events()
    client.close()

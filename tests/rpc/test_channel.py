"""rpc.channel over real sockets: against grpcio's server (an independent gRPC) and ours, and
against servers that misbehave or go away."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import h2.config
import h2.connection
import h2.events
import pytest

from streamsrv.cri.grpcserver import GrpcServer, RpcFailure
from streamsrv.rpc import channel, http2
from streamsrv.rpc.channel import Channel, RpcError, parse_target

pytestmark = pytest.mark.timeout(60)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _unary_tasks() -> int:
    """Tasks in Channel.unary (a call waiting in a task of its own)."""
    return sum(
        1
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "Channel.unary"
    )


@pytest.fixture
async def grpcio_server(tmp_path: Path) -> AsyncIterator[tuple[str, list[Any]]]:
    """A grpc.aio server: Echo answers the request reversed with the metadata it saw,
    Count streams N messages of N*1000 bytes."""
    seen: list[Any] = []

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        seen.append(dict(context.invocation_metadata() or ()))
        return request[::-1]

    async def count(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield bytes([i % 256]) * (i * 1000)

    handler = grpc.method_handlers_generic_handler(
        "t.S",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    path = tmp_path / "grpcio.sock"
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    try:
        yield f"unix://{path}", seen
    finally:
        await server.stop(None)


class Ours:
    """Our GrpcServer with a handler that can be held and watched."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()
        self.server = self._make()

    def _make(self) -> GrpcServer:
        async def echo(data: bytes) -> bytes:
            return data

        async def hold(data: bytes) -> bytes:
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return b"released"

        async def refuse(data: bytes) -> bytes:
            raise RpcFailure(http2.NOT_FOUND, f"no {data.decode()} ✓")

        handlers = {"/t.S/Echo": echo, "/t.S/Hold": hold, "/t.S/Refuse": refuse}
        return GrpcServer(handlers, max_message=32 << 20, max_send=32 << 20)

    async def start(self) -> None:
        self.server = self._make()
        await self.server.start_unix(self.path)

    async def stop(self, grace: float = 0.0) -> None:
        await self.server.stop(grace)
        Path(self.path).unlink(missing_ok=True)  # noqa: ASYNC240


@pytest.fixture
async def ours(tmp_path: Path) -> AsyncIterator[Ours]:
    server = Ours(tmp_path / "ours.sock")
    await server.start()
    try:
        yield server
    finally:
        server.release.set()
        await server.stop()


@pytest.mark.parametrize(
    ("target", "parsed"),
    [
        ("unix:///run/x.sock", ("unix", "/run/x.sock", 0)),
        ("unix:rel.sock", ("unix", "rel.sock", 0)),
        ("/run/x.sock", ("unix", "/run/x.sock", 0)),
        ("unix-abstract:cri", ("unix", "\0cri", 0)),
        ("127.0.0.1:9000", ("tcp", "127.0.0.1", 9000)),
        ("tcp://localhost:9000/", ("tcp", "localhost", 9000)),
        ("[::1]:9000", ("tcp", "::1", 9000)),
    ],
)
def test_targets(target: str, parsed: tuple[str, str, int]) -> None:
    assert parse_target(target) == parsed


@pytest.mark.parametrize("target", ["localhost", ":9000", "host:port", "npipe:x"])
def test_targets_that_do_not_parse(target: str) -> None:
    with pytest.raises(ValueError, match="not a gRPC target"):
        parse_target(target)


async def test_grpcio_server_unary_with_metadata_and_big_messages(
    grpcio_server: tuple[str, list[Any]],
) -> None:
    target, seen = grpcio_server
    ch = Channel(target, metadata=[("containerd-namespace", "k8s.io")])
    try:
        assert await ch.unary("/t.S/Echo", b"hello", deadline=10) == b"olleh"
        assert seen[0]["containerd-namespace"] == "k8s.io"
        big = os.urandom(3 << 20)  # above the 64 KiB windows grpc starts with
        assert await ch.unary("/t.S/Echo", big, deadline=10) == big[::-1]
        got = await asyncio.gather(*(ch.unary("/t.S/Echo", b"%d" % i) for i in range(300)))
        assert got == [(b"%d" % i)[::-1] for i in range(300)]
        with pytest.raises(RpcError) as info:
            await ch.unary("/t.S/Nothing", b"")
        assert info.value.name == "UNIMPLEMENTED"
    finally:
        await ch.close()


async def test_grpcio_server_streaming(grpcio_server: tuple[str, list[Any]]) -> None:
    target, _ = grpcio_server
    ch = Channel(target)
    try:
        sizes = [len(m) async for m in ch.stream("/t.S/Count", b"60", deadline=20)]
        assert sizes == [i * 1000 for i in range(60)]  # 1.8 MB: past the stream's window
        # leaving early cancels the call; the channel goes on
        async for m in ch.stream("/t.S/Count", b"60"):
            if len(m) > 3000:
                break
        assert await ch.unary("/t.S/Echo", b"ab") == b"ba"
    finally:
        await ch.close()


@pytest.mark.parametrize("held", [False, True])
@pytest.mark.parametrize("count", [0, 2])
async def test_a_unary_answer_of_other_than_one_message_is_internal(
    grpcio_server: tuple[str, list[Any]], count: int, held: bool
) -> None:
    """A streaming method called as unary: its OK status with no message, or two, is not an
    answer (as grpc-go's client says too); ``held``: through unary_future on a connection."""
    target, _ = grpcio_server
    ch = Channel(target)
    try:
        request = str(count).encode()
        with pytest.raises(RpcError) as caught:
            if held:
                assert await ch.unary("/t.S/Echo", b"ab", deadline=20) == b"ba"  # connected
                await asyncio.wait_for(ch.unary_future("/t.S/Count", request), 20)
            else:
                await ch.unary("/t.S/Count", request, deadline=20)
        assert caught.value.code == http2.INTERNAL
        assert f"{count} messages" in caught.value.details
    finally:
        await ch.close()


async def test_a_message_over_the_limit_either_way(grpcio_server: tuple[str, list[Any]]) -> None:
    target, _ = grpcio_server
    ch = Channel(target, max_message=1000)
    try:
        with pytest.raises(RpcError) as info:
            await ch.unary("/t.S/Echo", b"x" * 1001)
        assert info.value.code == http2.RESOURCE_EXHAUSTED
        with pytest.raises(RpcError) as info:
            async for _ in ch.stream("/t.S/Count", b"3"):
                pass
        assert info.value.code == http2.RESOURCE_EXHAUSTED
        assert "larger than max (2000 vs. 1000)" in info.value.details
        assert await ch.unary("/t.S/Echo", b"ok") == b"ko"
    finally:
        await ch.close()


async def test_our_server_status_deadline_and_cancel(ours: Ours) -> None:
    ch = Channel(ours.path)
    try:
        with pytest.raises(RpcError) as info:
            await ch.unary("/t.S/Refuse", b"sandbox")
        assert (info.value.code, info.value.details) == (http2.NOT_FOUND, "no sandbox ✓")
        # the deadline: ours ends the call, and the server's handler is cancelled
        with pytest.raises(RpcError) as info:
            await ch.unary("/t.S/Hold", b"", deadline=0.3)
        assert info.value.code == http2.DEADLINE_EXCEEDED
        await asyncio.wait_for(ours.cancelled.wait(), 10)
        # a task cancelled while it waits resets its stream: the handler is cancelled too
        ours.started.clear()
        ours.cancelled.clear()
        task = asyncio.ensure_future(ch.unary("/t.S/Hold", b""))
        await asyncio.wait_for(ours.started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(ours.cancelled.wait(), 10)
        assert await ch.unary("/t.S/Echo", b"same connection") == b"same connection"
    finally:
        await ch.close()


async def test_more_calls_than_the_server_takes_at_once_wait_for_room(ours: Ours) -> None:
    ch = Channel(ours.path)
    try:
        held = [asyncio.ensure_future(ch.unary("/t.S/Hold", b"")) for _ in range(300)]
        await asyncio.wait_for(ours.started.wait(), 10)
        await asyncio.sleep(0.2)
        conn = ch._conn
        assert conn is not None and conn.wire.max_calls == 256
        assert conn.wire.open_calls == 256  # the other 44 wait, none is refused
        ours.release.set()
        assert await asyncio.wait_for(asyncio.gather(*held), 30) == [b"released"] * 300
    finally:
        await ch.close()


async def test_nothing_listening_then_a_server_then_it_goes_and_comes_back(
    tmp_path: Path,
) -> None:
    server = Ours(tmp_path / "later.sock")
    ch = Channel(server.path)
    before = _fds()
    try:
        with pytest.raises(RpcError) as info:
            await ch.unary("/t.S/Echo", b"x", deadline=5)
        assert info.value.code == http2.UNAVAILABLE  # at once, no waiting for a server
        await server.start()
        assert await ch.unary("/t.S/Echo", b"up") == b"up"
        held = asyncio.ensure_future(ch.unary("/t.S/Hold", b""))
        await asyncio.wait_for(server.started.wait(), 10)
        await server.stop(grace=0)  # the call under way is answered UNAVAILABLE
        with pytest.raises(RpcError) as info:
            await held
        assert info.value.code == http2.UNAVAILABLE
        with pytest.raises(RpcError) as info:
            await ch.unary("/t.S/Echo", b"x")
        assert info.value.code == http2.UNAVAILABLE
        await server.start()
        assert await ch.unary("/t.S/Echo", b"again") == b"again"
    finally:
        await ch.close()
        await server.stop()
    await asyncio.sleep(0.05)
    assert _fds() <= before


async def _drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    writer.transport.abort()


async def _junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    await writer.drain()
    await reader.read()  # until our side closes
    writer.close()


@pytest.mark.parametrize(
    ("serve", "why"),
    [(_drop, "the connection was lost"), (_junk, "the server broke HTTP/2")],
    ids=["connection lost mid-call", "not HTTP/2"],
)
async def test_a_server_gone_or_broken_fails_the_call_unavailable(
    tmp_path: Path, serve: Any, why: str
) -> None:
    path = str(tmp_path / "bad.sock")
    server = await asyncio.start_unix_server(serve, path)
    ch = Channel(path)
    try:
        with pytest.raises(RpcError) as info:
            await ch.unary("/t.S/Echo", b"x", deadline=10)
        assert info.value.code == http2.UNAVAILABLE and why in info.value.details
    finally:
        await ch.close()
        server.close()


async def test_close_ends_open_calls_and_later_ones(ours: Ours) -> None:
    ch = Channel(ours.path)
    held = asyncio.ensure_future(ch.unary("/t.S/Hold", b""))
    await asyncio.wait_for(ours.started.wait(), 10)
    await ch.close()
    with pytest.raises(RpcError) as info:
        await held
    assert info.value.code == http2.CANCELLED
    with pytest.raises(RpcError) as info:
        await ch.unary("/t.S/Echo", b"x")
    assert info.value.code == http2.CANCELLED
    await asyncio.wait_for(ours.cancelled.wait(), 10)  # the server saw the connection go


async def test_a_server_that_never_sends_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "mute.sock")

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_unix_server(mute, path)
    monkeypatch.setattr(channel, "HANDSHAKE_TIMEOUT", 1.0)
    ch = Channel(path)
    try:
        with pytest.raises(RpcError) as info:
            await ch.unary("/t.S/Echo", b"x", deadline=0.3)
        assert info.value.code == http2.DEADLINE_EXCEEDED
        with pytest.raises(RpcError) as info:
            await ch.unary("/t.S/Echo", b"x")
        assert info.value.code == http2.UNAVAILABLE and "no HTTP/2 SETTINGS" in info.value.details
    finally:
        await ch.close()
        server.close()


class _GoingAway(asyncio.Protocol):
    """An h2 server whose first connection answers the first call with a GOAWAY that does not
    take it, and whose later connections answer every call with its request."""

    connections = 0
    transports: list[asyncio.Transport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.transports.append(transport)
        type(self).connections += 1
        self.first = type(self).connections == 1
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.h2.initiate_connection()
        self.body: dict[int, bytes] = {}
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        for ev in self.h2.receive_data(data):
            if isinstance(ev, h2.events.DataReceived) and ev.stream_id is not None:
                self.body[ev.stream_id] = self.body.get(ev.stream_id, b"") + (ev.data or b"")
                self.h2.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id is not None:
                sid = ev.stream_id
                if self.first:
                    self.h2.close_connection(last_stream_id=0)
                else:
                    grpc_ok = [(":status", "200"), ("content-type", "application/grpc")]
                    self.h2.send_headers(sid, grpc_ok)
                    self.h2.send_data(sid, self.body[sid])
                    self.h2.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        self.transport.write(self.h2.data_to_send())


@pytest.mark.parametrize("held", [False, True])
async def test_a_call_the_server_did_not_take_is_sent_again_on_a_new_connection(
    tmp_path: Path, held: bool
) -> None:
    """``held``: a unary_future call, held on the first connection (no task), retried too."""
    path = str(tmp_path / "away.sock")
    _GoingAway.connections = 0
    _GoingAway.transports = []
    server = await asyncio.get_running_loop().create_unix_server(_GoingAway, path)
    ch = Channel(path)
    try:
        if held:
            await ch._connection()  # the first connection, which takes no call
            answer = ch.unary_future("/t.S/Echo", b"twice")
            assert _unary_tasks() == 0
            assert await asyncio.wait_for(answer, 10) == b"twice"
        else:
            assert await ch.unary("/t.S/Echo", b"twice", deadline=10) == b"twice"
        assert _GoingAway.connections == 2
        await asyncio.sleep(0.1)
        # the connection that went away was closed by us once nothing ran on it
        assert _GoingAway.transports[0].is_closing()
    finally:
        await ch.close()
        server.close()
        for t in _GoingAway.transports:
            t.close()


async def test_a_ping_flood_from_a_server_that_does_not_read_keeps_our_buffer_bounded(
    tmp_path: Path,
) -> None:
    """Every PING is answered; while the server does not read, the channel's connection stops
    reading, so the answers waiting to be sent stay bounded."""
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "flood.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    listener.setblocking(False)
    ch = Channel(path)
    call = asyncio.ensure_future(ch.unary("/t.S/Echo", b"x", deadline=30))
    peer, _ = await loop.sock_accept(listener)
    try:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await loop.sock_sendall(peer, struct.pack(">BHBBI", 0, 0, 4, 0, 0))  # SETTINGS
        ping = struct.pack(">BHBBI", 0, 8, 6, 0, 0) + b"12345678"
        flood = ping * 4096
        sent = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                while sent < 64 << 20:
                    await loop.sock_sendall(peer, flood)
                    sent += len(flood)
        conn = ch._conn
        assert conn is not None and conn.transport is not None
        held = conn.transport.get_write_buffer_size()
        assert sent < 64 << 20  # it stopped reading: the server's sends block
        assert held < 1 << 20, f"{held} bytes of answers held after {sent} bytes of PINGs"
        assert not call.done()
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        await ch.close()
        peer.close()
        listener.close()


async def test_a_connection_that_failed_while_nobody_waited_is_not_anyones_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call that started a connection gave up (its deadline) before the connection failed;
    the next call connects afresh instead of getting that old failure."""
    path = tmp_path / "later.sock"

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    monkeypatch.setattr(channel, "HANDSHAKE_TIMEOUT", 0.3)
    silent = await asyncio.start_unix_server(mute, str(path))
    ch = Channel(str(path))
    server = Ours(path)
    try:
        with pytest.raises(RpcError) as info:
            await ch.unary("/t.S/Echo", b"x", deadline=0.1)
        assert info.value.code == http2.DEADLINE_EXCEEDED
        await asyncio.sleep(0.6)  # the connection's handshake has failed meanwhile
        silent.close()
        path.unlink()
        await server.start()
        assert await ch.unary("/t.S/Echo", b"fresh", deadline=10) == b"fresh"
    finally:
        await ch.close()
        await server.stop()
        silent.close()


async def test_unary_future_answers_as_unary_does_with_nothing_waiting_meanwhile(
    ours: Ours,
) -> None:
    ch = Channel(ours.path)
    try:
        # no connection yet: unary() in a task
        assert await ch.unary_future("/t.S/Echo", b"first") == b"first"
        # on the connection: no task while the call is held
        held = ch.unary_future("/t.S/Hold", b"")
        await asyncio.wait_for(ours.started.wait(), 10)
        assert _unary_tasks() == 0 and not held.done()
        ours.release.set()
        assert await asyncio.wait_for(held, 10) == b"released"
        with pytest.raises(RpcError) as info:
            await ch.unary_future("/t.S/Refuse", b"sandbox")
        assert (info.value.code, info.value.details) == (http2.NOT_FOUND, "no sandbox ✓")
        # cancelled: its stream is reset and the handler cancelled; the connection goes on
        ours.started.clear()
        ours.release.clear()
        held = ch.unary_future("/t.S/Hold", b"")
        await asyncio.wait_for(ours.started.wait(), 10)
        held.cancel()
        await asyncio.wait_for(ours.cancelled.wait(), 10)
        assert await ch.unary_future("/t.S/Echo", b"same") == b"same"
        conn = ch._conn
        assert conn is not None and not conn.calls
        # closed under it: CANCELLED, as unary()'s
        ours.started.clear()
        held = ch.unary_future("/t.S/Hold", b"")
        await asyncio.wait_for(ours.started.wait(), 10)
        await ch.close()
        with pytest.raises(RpcError) as info:
            await asyncio.wait_for(held, 10)
        assert info.value.code == http2.CANCELLED
    finally:
        await ch.close()

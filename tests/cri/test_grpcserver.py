"""GrpcServer on a unix socket, driven by grpcio's own client: deadlines, cancellation,
failures, big messages, garbage and stopping."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from streamsrv.cri import grpcserver
from streamsrv.cri.grpcserver import GrpcServer, RpcFailure
from streamsrv.rpc import http2
from tests.conftest import missing

HANG = 30  # a generous bound on anything that should take milliseconds


class Calls:
    """Handlers that say what happened to them."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()

    async def echo(self, data: bytes) -> bytes:
        return data[::-1]

    async def slow(self, data: bytes) -> bytes:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        self.finished.set()
        return b"done"

    async def refuse(self, data: bytes) -> bytes:
        raise RpcFailure(http2.NOT_FOUND, f"no such thing: {data.decode()} ✓")

    async def crash(self, data: bytes) -> bytes:
        raise RuntimeError("bug")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Calls, GrpcServer]]:
    calls = Calls()
    server = GrpcServer(
        {
            "/t.S/Echo": calls.echo,
            "/t.S/Slow": calls.slow,
            "/t.S/Refuse": calls.refuse,
            "/t.S/Crash": calls.crash,
        },
        max_message=1 << 20,
        max_send=4 << 20,
    )
    path = tmp_path / "g.sock"
    await server.start_unix(str(path))
    try:
        yield f"unix://{path}", calls, server
    finally:
        await server.stop(1)


def method(channel: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(
        f"/t.S/{name}", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


async def test_a_call_round_trips(served: tuple[str, Calls, GrpcServer]) -> None:
    endpoint, _, _ = served
    async with grpc.aio.insecure_channel(endpoint) as ch:
        assert await method(ch, "Echo")(b"abc", timeout=HANG) == b"cba"
        big = bytes(range(256)) * 4096  # 1 MiB: many frames and window updates each way
        assert await method(ch, "Echo")(big, timeout=HANG) == big[::-1]


async def test_failures_keep_their_code_and_message(served: tuple[str, Calls, GrpcServer]) -> None:
    endpoint, _, _ = served
    async with grpc.aio.insecure_channel(endpoint) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Refuse")(b"x", timeout=HANG)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "no such thing: x ✓"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Crash")(b"x", timeout=HANG)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Nope")(b"x", timeout=HANG)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "/t.S/Nope" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Echo")(b"x" * ((1 << 20) + 1), timeout=HANG)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await method(ch, "Echo")(b"still", timeout=HANG) == b"llits"


async def test_a_deadline_cancels_the_handler(served: tuple[str, Calls, GrpcServer]) -> None:
    endpoint, calls, _ = served
    async with grpc.aio.insecure_channel(endpoint) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(ch, "Slow")(b"", timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(calls.cancelled.wait(), HANG)
        assert not calls.finished.is_set()


async def test_a_client_that_gives_up_cancels_the_handler(
    served: tuple[str, Calls, GrpcServer],
) -> None:
    endpoint, calls, server = served
    async with grpc.aio.insecure_channel(endpoint) as ch:
        call = method(ch, "Slow")(b"", timeout=HANG)
        await asyncio.wait_for(calls.started.wait(), HANG)
        call.cancel()
        await asyncio.wait_for(calls.cancelled.wait(), HANG)
        assert await method(ch, "Echo")(b"ab", timeout=HANG) == b"ba"
    (conn,) = server.connections or [None]
    assert conn is None or not conn.calls


async def test_a_client_gone_mid_call_cancels_the_handler(
    served: tuple[str, Calls, GrpcServer],
) -> None:
    endpoint, calls, server = served
    ch = grpc.aio.insecure_channel(endpoint)
    pending = asyncio.ensure_future(method(ch, "Slow")(b"", timeout=HANG))
    await asyncio.wait_for(calls.started.wait(), HANG)
    await ch.close()
    await asyncio.wait_for(calls.cancelled.wait(), HANG)
    with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):  # closed under it
        await pending
    for _ in range(HANG * 10):
        if not server.connections:
            break
        await asyncio.sleep(0.1)
    assert not server.connections


async def test_garbage_closes_that_connection_only(
    served: tuple[str, Calls, GrpcServer], tmp_path: Path
) -> None:
    endpoint, _, _ = served
    async with grpc.aio.insecure_channel(endpoint) as ch:
        assert await method(ch, "Echo")(b"12", timeout=HANG) == b"21"
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "g.sock"))
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 64)
        await asyncio.wait_for(reader.read(), HANG)  # closed by the server
        writer.close()
        assert await method(ch, "Echo")(b"34", timeout=HANG) == b"43"


@contextlib.asynccontextmanager
async def a_slow_call(
    tmp_path: Path,
) -> AsyncIterator[tuple[GrpcServer, Calls, grpc.aio.UnaryUnaryCall[bytes, bytes], Path]]:
    """A server of its own with one call running in its handler."""
    calls = Calls()
    server = GrpcServer({"/t.S/Slow": calls.slow}, max_message=100, max_send=100)
    path = tmp_path / "g.sock"
    await server.start_unix(str(path))
    async with grpc.aio.insecure_channel(f"unix://{path}") as ch:
        call = method(ch, "Slow")(b"", timeout=HANG)
        await asyncio.wait_for(calls.started.wait(), HANG)
        yield server, calls, call, path


async def test_stop_lets_a_running_call_finish_within_grace(tmp_path: Path) -> None:
    async with a_slow_call(tmp_path) as (server, calls, call, path):
        stopping = asyncio.ensure_future(server.stop(HANG))
        await asyncio.sleep(0.2)
        assert not stopping.done()
        with pytest.raises(OSError):  # no new connection is taken
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(path))
            finally:
                s.close()
        calls.release.set()
        assert await call == b"done"
        await asyncio.wait_for(stopping, HANG)


async def test_stop_answers_what_outlasts_grace_unavailable(tmp_path: Path) -> None:
    async with a_slow_call(tmp_path) as (server, calls, call, _):
        await asyncio.wait_for(server.stop(0.2), HANG)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert calls.cancelled.is_set()


async def test_a_connection_over_the_limit_is_closed_and_the_others_go_on(
    served: tuple[str, Calls, GrpcServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, _, server = served
    monkeypatch.setattr(grpcserver, "MAX_CONNECTIONS", 1)
    async with grpc.aio.insecure_channel(endpoint) as ch:
        assert await method(ch, "Echo")(b"12", timeout=HANG) == b"21"
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "g.sock"))
        assert await asyncio.wait_for(reader.read(), HANG) == b""  # closed at once, no SETTINGS
        writer.close()
        assert len(server.connections) == 1
        assert await method(ch, "Echo")(b"34", timeout=HANG) == b"43"


async def test_go_grpc_client_round_trips_and_reads_our_statuses(tmp_path: Path) -> None:
    """grpc-go's HTTP/2 (Huffman-coded headers, its own SETTINGS and WINDOW_UPDATEs) on the
    other end, as the kubelet's and crictl's: containerd's `ctr` asks our server for
    containerd's Version (answered), then for a method we do not serve (its status read)."""
    ctr = shutil.which("ctr")
    if ctr is None:
        missing("no ctr (Debian's containerd package; scripts/test installs it)")
    assert ctr is not None

    async def version(data: bytes) -> bytes:
        assert data == b""  # VersionRequest is google.protobuf.Empty
        name = "streamsrv-über".encode()
        return b"\x0a" + bytes([len(name)]) + name + b"\x12\x03abc"  # version, revision

    server = GrpcServer(
        {"/containerd.services.version.v1.Version/Version": version},
        max_message=1 << 20,
        max_send=1 << 20,
    )
    path = tmp_path / "g.sock"
    await server.start_unix(str(path))
    try:

        async def run(*args: str) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                ctr, "--address", str(path), "--timeout", "20s", *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(), HANG)
            return proc.returncode or 0, out.decode()

        # `ctr version` asks Version, then Introspection's Server, which we do not serve
        code, out = await run("version")
        assert "Server:\n  Version:  streamsrv-über\n  Revision: abc" in out, out
        assert code != 0
        unserved = "/containerd.services.introspection.v1.Introspection/Server"
        assert f"streamsrv does not implement {unserved}: not implemented" in out
    finally:
        await server.stop(1)
    assert not server.connections


PING = struct.pack(">BHBBI", 0, 8, 6, 0, 0) + b"12345678"  # a PING frame, each one answered


async def test_a_ping_flood_from_a_client_that_does_not_read_keeps_the_servers_buffer_bounded(
    served: tuple[str, Calls, GrpcServer],
) -> None:
    """Every PING is answered; while the client does not read, the server stops reading, so
    its answers waiting to be sent stay bounded (asyncio's 64 KiB mark and one read's worth)."""
    target, _, server = served
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, target.removeprefix("unix://"))
    try:
        await loop.sock_sendall(sock, http2.PREFACE + struct.pack(">BHBBI", 0, 0, 4, 0, 0))
        flood = PING * 4096  # 68 KiB of PINGs at a time
        sent = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):
                while sent < 64 << 20:
                    await loop.sock_sendall(sock, flood)
                    sent += len(flood)
        (conn,) = server.connections
        assert conn.transport is not None
        held = conn.transport.get_write_buffer_size()
        # it stopped reading: the client's sends block well before 64 MiB
        assert sent < 64 << 20
        assert held < 1 << 20, f"{held} bytes of answers held after {sent} bytes of PINGs"
        # a client that does that is still only that client's problem
        async with grpc.aio.insecure_channel(target) as channel:
            assert await method(channel, "Echo")(b"ok", timeout=HANG) == b"ko"
    finally:
        sock.close()

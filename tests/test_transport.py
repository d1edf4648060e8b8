"""The SPDY session adapter under hostile input: nothing raises out of data_received, every
bound holds, back-pressure is two-way. Unit tests on a fake transport, then real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp._websocket.helpers import MSG_SIZE
from aiohttp._websocket.writer import WebSocketWriter
from aiohttp.test_utils import TestClient, TestServer

from streamsrv.certs import CertificateAuthority, server_ssl_context
from streamsrv.limits import Limits
from streamsrv.protocol import spdy, status
from streamsrv.protocol.resize import TerminalSize
from streamsrv.protocol.spdy import Role, SpdyConnection
from streamsrv.runtime.base import Resizes
from streamsrv.server import ExecRequest, StreamServer
from streamsrv.spdy_remotecommand import _finish
from streamsrv.transport import DATA_FRAME_SIZE, SpdySession, StreamWebSocket, _OneSendFrames
from tests.conftest import stream_server
from tests.test_remotecommand import FakeRuntime, collect
from tests.test_spdy_remotecommand import Client

# --------------------------------------------------------------------------------- unit


class FakeTransport:
    """An asyncio transport that records writes and says pause_writing past ``high``."""

    def __init__(self, protocol: SpdySession, high: int = 64 * 1024) -> None:
        self.protocol = protocol
        self.out = bytearray()
        self.high = high
        self.reading = True
        self.closing = False
        self.aborted = False
        self.paused_writing = False

    def write(self, data: bytes) -> None:
        self.out += data
        if len(self.out) > self.high and not self.paused_writing:
            self.paused_writing = True
            self.protocol.pause_writing()

    def drain_peer(self) -> bytes:
        """The peer reads everything: the buffer empties and writing resumes."""
        data, self.out = bytes(self.out), bytearray()
        if self.paused_writing:
            self.paused_writing = False
            self.protocol.resume_writing()
        return data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Recorder:
    """A session handler that records events and replies to every stream."""

    def __init__(self, fail_on: type | None = None) -> None:
        self.events: list[spdy.Event] = []
        self.replied: dict[int, bool] = {}
        self.idle = False
        self.fail_on = fail_on
        self.session: SpdySession | None = None

    def on_event(self, event: spdy.Event) -> None:
        self.events.append(event)
        if self.fail_on is not None and isinstance(event, self.fail_on):
            raise RuntimeError("a bug in a handler")
        if isinstance(event, spdy.StreamOpened):
            assert self.session is not None
            self.replied[event.stream_id] = self.session.reply(event.stream_id)

    def on_idle(self) -> None:
        self.idle = True


def make_session(
    limits: Limits | None = None, fail_on: type | None = None
) -> tuple[SpdySession, FakeTransport, Recorder]:
    handler = Recorder(fail_on)
    session = SpdySession(handler, limits or Limits())
    handler.session = session
    transport = FakeTransport(session)
    session.connection_made(transport)  # type: ignore[arg-type]
    return session, transport, handler


def peer_events(data: bytes) -> list[spdy.Event]:
    client = SpdyConnection(Role.CLIENT)
    return client.receive_data(data)


async def test_data_goes_out_in_frames_of_data_frame_size() -> None:
    """A read of the pod or an output FIFO (at most 256 KiB) is one DATA frame; more is cut
    at DATA_FRAME_SIZE (docs/benchmarks.md, "DATA frames of one read")."""
    session, transport, handler = make_session()
    client = SpdyConnection(Role.CLIENT)
    sid = client.open_stream({"streamtype": "stdout"})
    session.data_received(client.data_to_send())
    assert handler.replied == {sid: True}
    payload = bytes(range(256)) * 2400  # 600 KiB
    assert session.send_data(sid, payload)
    events = client.receive_data(bytes(transport.out))
    data = [e.data for e in events if isinstance(e, spdy.DataReceived)]
    assert DATA_FRAME_SIZE == 256 * 1024
    assert [len(d) for d in data] == [
        DATA_FRAME_SIZE,
        DATA_FRAME_SIZE,
        600 * 1024 - 2 * DATA_FRAME_SIZE,
    ]
    assert b"".join(data) == payload


async def test_syn_stream_and_rst_stream_in_one_read_raise_nothing() -> None:
    """Old main: reply_stream on the reset stream raised LocalProtocolError out of
    data_received and the rest of that read's events were lost."""
    session, transport, handler = make_session()
    client = SpdyConnection(Role.CLIENT)
    first = client.open_stream({"streamtype": "stdin"})
    client.reset_stream(first)
    second = client.open_stream({"streamtype": "stdout"})
    session.data_received(client.data_to_send())
    assert handler.replied == {first: False, second: True}
    assert not transport.closing
    replies = [e for e in client.receive_data(transport.out) if isinstance(e, spdy.StreamReplied)]
    assert [e.stream_id for e in replies] == [second]


async def test_a_unidirectional_stream_is_refused_and_the_connection_lives() -> None:
    session, transport, handler = make_session()
    client = SpdyConnection(Role.CLIENT)
    sid = client.open_stream({"streamtype": "stdin"})
    syn = bytearray(client.data_to_send())
    syn[4] |= 0x02  # FLAG_UNIDIRECTIONAL on the SYN_STREAM
    other = client.open_stream({"streamtype": "stdout"})
    session.data_received(bytes(syn) + client.data_to_send())
    events = client.receive_data(bytes(transport.out))
    assert spdy.StreamReset(sid, spdy.RstStatus.REFUSED_STREAM) in events
    assert any(isinstance(e, spdy.StreamReplied) and e.stream_id == other for e in events)
    assert not transport.closing
    assert handler.replied == {other: True}


async def test_streams_over_max_streams_are_refused_and_the_connection_lives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session, transport, handler = make_session(Limits(max_streams=10, max_portforward_pairs=5))
    client = SpdyConnection(Role.CLIENT)
    sids = [client.open_stream({"streamtype": f"s{i}"}) for i in range(1000)]
    with caplog.at_level(logging.DEBUG, logger="streamsrv"):
        caplog.clear()
        session.data_received(client.data_to_send())
    events = client.receive_data(bytes(transport.out))
    replied = [e.stream_id for e in events if isinstance(e, spdy.StreamReplied)]
    refused = [e.stream_id for e in events if isinstance(e, spdy.StreamReset)]
    assert replied == sids[:10]
    assert refused == sids[10:]
    assert session.conn.open_streams == 10
    assert not transport.closing
    # A peer cannot amplify logging: one warning for 990 refusals, the rest at debug.
    warnings = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(warnings) == 1


async def test_a_handler_that_raises_ends_only_its_session() -> None:
    session, transport, handler = make_session(fail_on=spdy.DataReceived)
    client = SpdyConnection(Role.CLIENT)
    sid = client.open_stream({"streamtype": "stdin"})
    session.data_received(client.data_to_send())
    client.receive_data(bytes(transport.out))
    transport.out.clear()
    client.send_data(sid, b"boom")
    session.data_received(client.data_to_send())  # must not raise
    events = client.receive_data(bytes(transport.out))
    assert spdy.GoAwayReceived(sid, spdy.GoAwayStatus.INTERNAL_ERROR) in events
    assert transport.closing
    assert session.failed == "internal error"


async def test_while_paused_for_writing_the_session_stops_reading() -> None:
    """A client that never reads cannot make us queue PING echoes without bound."""
    session, transport, _ = make_session()
    client = SpdyConnection(Role.CLIENT)
    fed = 0
    for _ in range(200_000):
        if not transport.reading:
            break
        client.ping()
        session.data_received(client.data_to_send())
        fed += 1
    assert not transport.reading  # stopped once the transport said pause_writing
    assert len(transport.out) <= transport.high + 12
    assert fed < 10_000
    transport.drain_peer()
    assert transport.reading  # the peer read: reading resumes


async def test_holds_and_write_pauses_combine() -> None:
    session, transport, _ = make_session()
    session.pause_reading()
    session.pause_writing()
    session.resume_writing()
    assert not transport.reading  # the hold still stands
    session.resume_reading()
    assert transport.reading


async def test_a_frame_over_max_frame_size_is_refused_before_buffering() -> None:
    session, transport, _ = make_session(Limits(max_frame_size=64 * 1024))
    session.data_received(b"\x00\x00\x00\x01\x00\xff\xff\xff")  # DATA declaring 16 MiB
    events = peer_events(bytes(transport.out))
    assert any(isinstance(e, spdy.GoAwayReceived) for e in events)
    assert transport.aborted
    assert session.conn.buffered == 0


async def test_a_partial_frame_that_makes_no_progress_ends_the_connection() -> None:
    session, transport, _ = make_session(Limits(progress_timeout=0.2))
    client = SpdyConnection(Role.CLIENT)
    sid = client.open_stream({"streamtype": "stdin"})
    session.data_received(client.data_to_send())
    session.data_received(b"\x00\x00\x00%c\x00\x00\x10\x00partial" % sid)  # 4 KiB declared
    assert session.conn.buffered
    for _ in range(100):
        if transport.closing:
            break
        await asyncio.sleep(0.05)
    assert transport.closing
    assert session.failed == "partial frame made no progress"


async def test_a_frame_completed_in_time_keeps_the_connection() -> None:
    session, transport, handler = make_session(Limits(progress_timeout=0.3))
    client = SpdyConnection(Role.CLIENT)
    sid = client.open_stream({"streamtype": "stdin"})
    session.data_received(client.data_to_send())
    client.send_data(sid, b"x" * 1000)
    frame = client.data_to_send()
    for _ in range(5):  # each part well within the timeout: progress all along
        session.data_received(frame[:200])
        frame = frame[200:]
        await asyncio.sleep(0.1)
    session.data_received(frame)
    await asyncio.sleep(0.4)
    assert not transport.closing
    assert spdy.DataReceived(sid, b"x" * 1000) in handler.events


async def test_idle_timeout_counts_data_not_pings() -> None:
    session, transport, handler = make_session(Limits(idle_timeout=0.4))
    client = SpdyConnection(Role.CLIENT)
    sid = client.open_stream({"streamtype": "stdin"})
    session.data_received(client.data_to_send())
    for _ in range(3):  # data keeps it alive
        await asyncio.sleep(0.2)
        client.send_data(sid, b"k")
        session.data_received(client.data_to_send())
    assert not handler.idle
    for _ in range(10):  # pings do not
        await asyncio.sleep(0.1)
        client.ping()
        session.data_received(client.data_to_send())
    assert handler.idle


async def test_connection_terminated_is_delivered_once() -> None:
    session, _, handler = make_session()
    session.eof_received()
    session.connection_lost(None)
    assert [e for e in handler.events if isinstance(e, spdy.ConnectionTerminated)] == [
        spdy.ConnectionTerminated()
    ]
    assert session.closed.is_set()


async def test_connection_terminated_is_delivered_after_a_protocol_error_too() -> None:
    """The codec raises again on EOF once it failed; the handler still hears of the end."""
    session, _, handler = make_session()
    session.data_received(b"\x80\x03\x00\x05\x00\x00\x00\x00")  # unknown control type
    assert session.failed is not None
    session.eof_received()
    session.connection_lost(None)
    ended = [e for e in handler.events if isinstance(e, spdy.ConnectionTerminated)]
    assert ended == [spdy.ConnectionTerminated()]


def read_into(session: SpdySession, data: bytes, size: int = 5) -> None:
    """``data`` as a buffered transport hands it over: reads of ``size`` bytes into the
    session's buffer."""
    for i in range(0, len(data), size):
        piece = data[i : i + size]
        buf = session.get_buffer(len(piece))
        buf[: len(piece)] = piece
        session.buffer_updated(len(piece))


async def test_nothing_a_peer_sends_raises_out_of_buffer_updated() -> None:
    """The buffered way in keeps the first promise: events before a bad frame are handled,
    then GOAWAY(PROTOCOL_ERROR), the connection is closed, and later reads are ignored."""
    session, transport, handler = make_session()
    client = SpdyConnection(Role.CLIENT)
    sid = client.open_stream({"streamtype": "stdin"})
    client.send_data(sid, b"before")
    read_into(session, client.data_to_send() + b"\x80\x03\x00\x05\x00\x00\x00\x00")
    assert [e for e in handler.events if isinstance(e, spdy.DataReceived)] == [
        spdy.DataReceived(sid, b"before")
    ]
    assert session.failed is not None and transport.aborted
    goaway = [e for e in peer_events(bytes(transport.out)) if isinstance(e, spdy.GoAwayReceived)]
    assert [e.status for e in goaway] == [spdy.GoAwayStatus.PROTOCOL_ERROR]
    read_into(session, b"\x00" * 64)  # after the failure: dropped, nothing raised
    session.connection_lost(None)
    ended = [e for e in handler.events if isinstance(e, spdy.ConnectionTerminated)]
    assert len(ended) == 1


async def test_a_partial_frame_read_into_the_buffer_is_watched_for_progress() -> None:
    session, transport, _ = make_session(Limits(progress_timeout=0.2))
    client = SpdyConnection(Role.CLIENT)
    sid = client.open_stream({"streamtype": "stdin"})
    read_into(session, client.data_to_send(), size=1000)
    read_into(session, b"\x00\x00\x00%c\x00\x00\x10\x00partial" % sid)  # 4 KiB declared
    assert session.conn.buffered == 15
    for _ in range(100):
        if transport.closing:
            break
        await asyncio.sleep(0.05)
    assert session.failed == "partial frame made no progress"


async def test_resizes_coalesce_to_the_latest() -> None:
    """Old main queued every size (one engine call each): the CVE-2022-23471 class."""
    sizes = Resizes()
    for i in range(1, 190_001):
        sizes.put(TerminalSize(i, 24))
    sizes.close()
    assert [s async for s in sizes] == [TerminalSize(190_000, 24)]


async def test_resizes_deliver_each_size_to_a_fast_consumer() -> None:
    sizes = Resizes()
    got: list[TerminalSize] = []

    async def consume() -> None:
        async for s in sizes:
            got.append(s)

    task = asyncio.create_task(consume())
    for i in range(1, 4):
        sizes.put(TerminalSize(i, i))
        await asyncio.sleep(0)
    sizes.close()
    await asyncio.wait_for(task, 5)
    assert got == [TerminalSize(i, i) for i in range(1, 4)]


# ----------------------------------------------------------------------- real sockets


class SlowResizeRuntime(FakeRuntime):
    """``size`` takes 20 ms per size applied, like an engine API call."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[TerminalSize] = []

    async def exec(self, container_id: str, cmd: Any, io: Any, *, tty: bool) -> int:
        if cmd[0] == "slowsize":
            async for size in io.resize:
                self.applied.append(size)
                await io.stdout.write(f"{size.width}x{size.height}\n".encode())
                await asyncio.sleep(0.02)
            return 0
        return await super().exec(container_id, cmd, io, tty=tty)


@pytest.fixture
async def srv() -> AsyncIterator[tuple[StreamServer, TestServer, SlowResizeRuntime]]:
    runtime = SlowResizeRuntime()
    limits = Limits(stream_creation_timeout=2, idle_timeout=0.6, max_websocket_message=64 * 1024)
    async with stream_server(runtime, limits) as (server, ts):
        yield server, ts, runtime


async def exec_streams(client: Client, *kinds: str) -> dict[str, int]:
    return {kind: await client.open(kind) for kind in kinds}


async def test_an_idle_spdy_exec_ends_with_a_status_and_the_process_is_stopped(srv: Any) -> None:
    server, ts, runtime = srv
    url = await server.get_exec(ExecRequest("c", ("sleep",), stdin=True))
    client, _ = await Client.connect(ts, url, ["v4.channel.k8s.io"])
    streams = await exec_streams(client, "error", "stdin", "stdout")
    await asyncio.wait_for(client.until_goaway(), 10)
    body = json.loads(client.data[streams["error"]])
    assert body["status"] == "Failure"
    assert "idle" in body["message"]
    await runtime.wait_cancelled(5)
    assert runtime.cancelled == 1
    assert server.metrics.refused["idle-timeout"] == 1
    client.close()


async def test_an_idle_websocket_exec_ends_with_a_status(srv: Any) -> None:
    server, ts, runtime = srv
    url = await server.get_exec(ExecRequest("c", ("sleep",), stdin=True))
    async with TestClient(ts) as tc:
        path = "/" + url.split("/", 3)[3]
        async with tc.ws_connect(path, protocols=["v5.channel.k8s.io"]) as ws:
            frames = await asyncio.wait_for(collect(ws), 10)
    status = json.loads(next(d for c, d in frames if c == 3))
    assert "idle" in status["message"]
    await runtime.wait_cancelled(5)
    assert runtime.cancelled == 1


async def test_a_flood_of_resizes_reaches_the_runtime_coalesced(srv: Any) -> None:
    """One 1.6 MiB resize write used to queue 60,000 sizes, one engine call each."""
    server, ts, runtime = srv
    url = await server.get_exec(ExecRequest("c", ("slowsize",), stdin=True, tty=True))
    client, _ = await Client.connect(ts, url, ["v4.channel.k8s.io"])
    streams = await exec_streams(client, "error", "stdin", "stdout", "resize")
    sizes = b"".join(b'{"Width":%d,"Height":24}\n' % i for i in range(1, 60_001))
    client.conn.send_data(streams["resize"], sizes)
    client.conn.end_stream(streams["stdin"])
    client.conn.end_stream(streams["resize"])
    client.flush()
    deadline = asyncio.get_running_loop().time() + 20
    while not runtime.applied or runtime.applied[-1] != TerminalSize(60_000, 24):
        assert asyncio.get_running_loop().time() < deadline, runtime.applied[-3:]
        await client.events()
    assert len(runtime.applied) < 1000  # each applied size took 20 ms: most were skipped
    client.close()


async def test_an_oversized_websocket_message_ends_that_session_only(srv: Any) -> None:
    server, ts, runtime = srv
    url = await server.get_exec(ExecRequest("c", ("cat",), stdin=True))
    other_url = await server.get_exec(ExecRequest("c", ("echo", "fine")))
    async with TestClient(ts) as tc:
        path = "/" + url.split("/", 3)[3]
        async with tc.ws_connect(path, protocols=["v5.channel.k8s.io"]) as ws:
            await ws.send_bytes(b"\x00" + bytes(100 * 1024))
            await asyncio.wait_for(collect(ws), 10)
            assert ws.close_code == 1009
        other = "/" + other_url.split("/", 3)[3]
        async with tc.ws_connect(other, protocols=["v5.channel.k8s.io"]) as ws:
            frames = await asyncio.wait_for(collect(ws), 10)
        assert (1, b"fine\n") in frames


async def test_header_bombs_end_one_connection_and_others_are_served(srv: Any) -> None:
    """58,000 repeats of one header name cost 0.45 s of CPU to merge on old main; now the
    inflated block is over max_header_block_size (64 KiB) and refused before it is parsed
    (the count cap and linear merging are tested on the codec, tests/protocol/test_spdy.py)."""
    server, ts, _ = srv
    url = await server.get_exec(ExecRequest("c", ("echo", "ok"), stdout=True))
    client, _ = await Client.connect(ts, url, ["v4.channel.k8s.io"])
    client.conn = SpdyConnection(Role.CLIENT, max_header_block_size=1 << 20)
    client.conn.open_stream([("streamtype", "x")] * 58_000)
    client.flush()
    await asyncio.wait_for(client.until_goaway(), 10)
    client.close()
    other = await server.get_exec(ExecRequest("c", ("echo", "ok"), stdout=True))
    ok, _ = await Client.connect(ts, other, ["v4.channel.k8s.io"])
    streams = await exec_streams(ok, "error", "stdout")
    await asyncio.wait_for(ok.until_goaway(), 10)
    assert ok.data[streams["stdout"]] == b"ok\n"
    ok.close()


async def test_a_stream_of_an_unexpected_type_is_replied_and_ignored(srv: Any) -> None:
    """kubectl opens stdin for `attach -i` even when the container has none (the gateway then
    asks for no stdin): the kubelet replies and ignores it, and so do we."""
    server, ts, _ = srv
    url = await server.get_exec(ExecRequest("c", ("echo", "ok"), stdout=True))
    client, _ = await Client.connect(ts, url, ["v4.channel.k8s.io"])
    streams = await exec_streams(client, "error", "stdin", "bogus", "stdout")
    await asyncio.wait_for(client.until_goaway(), 10)
    assert client.data[streams["stdout"]] == b"ok\n"
    client.close()


class CountingTransport(FakeTransport):
    def __init__(self, protocol: SpdySession) -> None:
        super().__init__(protocol)
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def counted(handler: Recorder) -> tuple[SpdySession, CountingTransport]:
    """A session for ``handler`` on a transport that counts its writes."""
    session = SpdySession(handler, Limits())
    handler.session = session
    transport = CountingTransport(session)
    session.connection_made(transport)  # type: ignore[arg-type]
    return session, transport


async def test_a_burst_of_streams_is_answered_in_one_write() -> None:
    """Old main wrote each SYN_REPLY on its own: a peer that opened 200 streams and reset the
    connection got 200 writes to a lost connection, each logged by asyncio after the fifth
    ("socket.send() raised exception.", 17,563 lines in one fuzz run)."""
    handler = Recorder()
    session, transport = counted(handler)
    client = SpdyConnection(Role.CLIENT)
    for _ in range(200):
        client.open_stream({"streamtype": "junk"})
    client.ping(7)
    session.data_received(client.data_to_send())
    assert transport.writes == 1
    events = client.receive_data(bytes(transport.out))
    assert len([e for e in events if isinstance(e, spdy.StreamReplied)]) == 200
    assert any(isinstance(e, spdy.PingAck) for e in events)  # the echo went too


def _exec_streams(
    session: SpdySession, transport: CountingTransport
) -> tuple[SpdyConnection, dict[str, int]]:
    """A client with an exec's error, stdout and stderr streams open and replied to."""
    client = SpdyConnection(Role.CLIENT)
    sids = {
        kind: client.open_stream({"streamtype": kind}) for kind in ("error", "stdout", "stderr")
    }
    session.data_received(client.data_to_send())
    client.receive_data(transport.drain_peer())
    return client, sids


@pytest.mark.parametrize("batched", [True, False])
async def test_an_exec_ends_in_one_write(batched: bool) -> None:
    """The status, the three streams' FINs and the GOAWAY leave in one write: on TLS one
    record and one send, where each went on its own before and the client waited for the last
    (docs/benchmarks.md, "the end of an exec"). Unbatched, the same calls make five writes."""
    handler = Recorder()
    session, transport = counted(handler)
    client, sids = _exec_streams(session, transport)
    before = transport.writes
    state = SimpleNamespace(session=session, streams=sids, version=4)
    if batched:
        _finish(state, status.success())  # type: ignore[arg-type]
    else:
        session.send_data(sids["error"], status.success())
        for kind in ("stdout", "stderr", "error"):
            session.end(sids[kind])
        session.goaway()
    assert transport.writes - before == (1 if batched else 5)
    events = client.receive_data(transport.drain_peer())
    got = [e for e in events if isinstance(e, spdy.DataReceived)]
    assert [(e.stream_id, e.data) for e in got] == [(sids["error"], status.success())]
    ended = {e.stream_id for e in events if isinstance(e, spdy.StreamEnded)}
    assert ended == set(sids.values())
    assert isinstance(events[-1], spdy.GoAwayReceived)


async def test_a_batch_inside_a_dispatch_leaves_with_the_dispatch() -> None:
    """batch() within the handler's own dispatch adds to that dispatch's one write; it does
    not flush early."""
    session: SpdySession

    class Ending(Recorder):
        def on_event(self, event: spdy.Event) -> None:
            super().on_event(event)
            if isinstance(event, spdy.StreamOpened):
                with session.batch():
                    session.send_data(event.stream_id, b"bye")
                    session.end(event.stream_id)
                assert transport.writes == 0

    handler = Ending()
    session, transport = counted(handler)
    client = SpdyConnection(Role.CLIENT)
    client.open_stream({"streamtype": "x"})
    client.open_stream({"streamtype": "y"})
    session.data_received(client.data_to_send())
    assert transport.writes == 1
    events = client.receive_data(transport.drain_peer())
    assert len([e for e in events if isinstance(e, spdy.StreamEnded)]) == 2


class DetachedTlsTransport(FakeTransport):
    """What asyncio's TLS transport is once closed twice: its parts are gone."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'get_extra_info'")


async def test_eof_on_a_detached_tls_transport_raises_nothing() -> None:
    handler = Recorder()
    session = SpdySession(handler, Limits())
    handler.session = session
    session.connection_made(DetachedTlsTransport(session))  # type: ignore[arg-type]
    assert session.eof_received() is False  # old main: AttributeError inside asyncio
    assert any(isinstance(e, spdy.ConnectionTerminated) for e in handler.events)


@pytest.mark.parametrize("tls", [False, True])
async def test_a_socket_reads_into_the_codecs_buffer(tls: bool, tmp_path: Path) -> None:
    """On a raw or TLS transport, moved to the session as accept_spdy moves it, the peer's
    bytes are read (decrypted) into the codec's buffer: no ``data_received`` at all."""
    calls = {"get_buffer": 0, "data_received": 0}

    class Counting(SpdySession):
        def get_buffer(self, sizehint: int) -> memoryview:
            calls["get_buffer"] += 1
            return super().get_buffer(sizehint)

        def data_received(self, data: bytes) -> None:
            calls["data_received"] += 1
            super().data_received(data)

    ended = asyncio.Event()

    class Ending(Recorder):
        def on_event(self, event: spdy.Event) -> None:
            super().on_event(event)
            if isinstance(event, spdy.StreamEnded):
                ended.set()

    handler = Ending()
    session = Counting(handler, Limits())
    handler.session = session

    class Starter(asyncio.Protocol):  # the web server's protocol until the upgrade
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.set_protocol(session)
            session.connection_made(transport)

    server_ctx = client_ctx = None
    if tls:
        ca = CertificateAuthority(tmp_path)
        server_ctx = server_ssl_context(*ca.serving_cert(["127.0.0.1"]))
        client_ctx = ssl.create_default_context(cadata=ca.pem.decode())
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Starter, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client = SpdyConnection(Role.CLIENT)
    sid = client.open_stream({"streamtype": "stdin"})
    payload = random.randbytes(300_000)
    client.send_data(sid, payload, fin=True)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        writer.write(client.data_to_send())
        await writer.drain()
        await asyncio.wait_for(ended.wait(), 30)
        got = b"".join(e.data for e in handler.events if isinstance(e, spdy.DataReceived))
        assert got == payload
        assert calls["get_buffer"] > 0 and calls["data_received"] == 0, calls
        writer.close()
    finally:
        server.close()
        session.abort()
        await server.wait_closed()


# ------------------------------------------------------------------------------- WebSocket frames


class _Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[bytes]]] = []

    def write(self, data: Any) -> None:
        self.calls.append(("write", [bytes(data)]))

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append(("writelines", list(list_of_data)))

    def is_closing(self) -> bool:
        return False

    def wire(self) -> bytes:
        return b"".join(b for _, bufs in self.calls for b in bufs)


class _Protocol:
    _paused = False


@pytest.mark.parametrize("compress", [0, 15])  # 15: permessage-deflate, as a browser asks
@pytest.mark.parametrize("size", [0, 100, 125, 126, MSG_SIZE, MSG_SIZE + 1, 65535, 65536, 300_000])
async def test_a_large_frame_is_one_send_and_the_same_bytes_as_aiohttps(
    size: int, compress: int
) -> None:
    payload = random.Random(size).randbytes(size)  # incompressible: stays above MSG_SIZE
    stock, ours = _Recording(), _Recording()
    stock_writer = WebSocketWriter(_Protocol(), stock, compress=compress)  # type: ignore[arg-type]
    await stock_writer.send_frame(payload, WSMsgType.BINARY)
    writer = WebSocketWriter(_Protocol(), ours, compress=compress)  # type: ignore[arg-type]
    writer.__class__ = _OneSendFrames
    await writer.send_frame(payload, WSMsgType.BINARY)
    assert ours.wire() == stock.wire()
    assert len(ours.calls) == 1
    if size > MSG_SIZE and not compress:
        assert len(stock.calls) == 2  # what this writer is for: aiohttp's header apart
        kind, bufs = ours.calls[0]
        assert kind == "writelines" and bufs[1] is payload  # not copied


async def test_stream_websocket_sends_its_frames_with_the_one_send_writer() -> None:
    sizes = [5, MSG_SIZE + 7, 1 << 20]
    writers: list[type] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = StreamWebSocket()
        await ws.prepare(request)
        writers.append(type(ws._writer))
        for n in sizes:
            await ws.send_bytes(bytes([n % 251]) * n)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client:
        ws = await client.ws_connect("/", max_msg_size=2 << 20)
        got = [await ws.receive_bytes(timeout=30) for _ in sizes]
        await ws.close()
    assert writers == [_OneSendFrames]
    assert got == [bytes([n % 251]) * n for n in sizes]

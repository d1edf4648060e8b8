"""The HTTP connection layer (streamsrv/connections.py): header timeout, header sizes, the
connection cap and its 503, TLS handshake timeout, quiet accept errors, request body size.

Everything runs against a real listening socket on loopback with raw clients, so what is
checked is what a peer sees on the wire. Time bounds are generous hang guards (10 s), never
measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streamsrv.certs import CertificateAuthority, server_ssl_context
from streamsrv.connections import quiet_accept_errors
from streamsrv.context import RateLimitedLog
from streamsrv.limits import Limits
from streamsrv.server import Config, StreamServer
from tests.test_remotecommand import FakePods, FakeRuntime

HANG = 10.0  # a bound against hanging, never a timing assertion
NOPE = b"GET /exec/nope HTTP/1.1\r\nHost: a\r\n\r\n"
ACCEPT_ERROR = "socket.accept() out of system resource"


@contextlib.asynccontextmanager
async def serving(limits: Limits, ssl_context: Any = None) -> AsyncIterator[StreamServer]:
    server = StreamServer(FakeRuntime(), Config(limits=limits, ssl=ssl_context))  # type: ignore[arg-type]
    async with server:
        yield server


def port_of(server: StreamServer) -> int:
    port = urlsplit(server.base_url).port
    assert port is not None
    return port


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (a reset counts as a close with nothing more)."""
    try:
        return await asyncio.wait_for(reader.read(), HANG)
    except ConnectionResetError:
        return b""


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One response with a Content-Length body, leaving the connection open."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG)
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await asyncio.wait_for(reader.readexactly(length), HANG)


async def fetch(port: int, request: bytes, ssl_context: Any = None) -> bytes:
    """Send one raw request on a new connection and return all the server sends back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context)
    try:
        writer.write(request)
        await writer.drain()
        return await read_response(reader)
    finally:
        await close(writer)


async def get(port: int, path: str, ssl_context: Any = None) -> bytes:
    return await fetch(
        port, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode(), ssl_context
    )


# ---------------------------------------------------------------------- header timeout


async def test_a_request_head_that_never_ends_is_closed_and_others_are_served() -> None:
    async with serving(Limits(header_timeout=0.5)) as server:
        port = port_of(server)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /exec/x HTTP/1.1\r\nHost: a\r\n")  # no blank line: never ends
            await writer.drain()
            # The slow connection holds nothing up: another client gets its answer now.
            assert (await get(port, "/exec/badtoken")).startswith(b"HTTP/1.1 404 ")
            # The server closes the slow one without an answer (it never had a request).
            assert await read_to_eof(reader) == b""
        finally:
            await close(writer)
        assert (await get(port, "/exec/badtoken")).startswith(b"HTTP/1.1 404 ")


async def test_a_connection_that_sends_nothing_is_closed() -> None:
    async with serving(Limits(header_timeout=0.5)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        try:
            assert await read_to_eof(reader) == b""
        finally:
            await close(writer)


async def test_an_idle_keep_alive_connection_is_closed_after_the_header_timeout() -> None:
    async with serving(Limits(header_timeout=0.5)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        try:
            writer.write(NOPE)
            assert (await read_response(reader)).startswith(b"HTTP/1.1 404 ")
            assert await read_to_eof(reader) == b""
        finally:
            await close(writer)


# ---------------------------------------------------------------------- header sizes


def status_of(response: bytes) -> int:
    # aiohttp answers a request it could not parse with HTTP/1.0 (it has no version to echo).
    assert response.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), response[:80]
    return int(response.split(b" ", 2)[1])


async def test_a_header_field_over_max_header_size_is_refused_and_others_are_served() -> None:
    async with serving(Limits(max_header_size=1024)) as server:
        port = port_of(server)

        def request(value_size: int) -> bytes:
            return b"GET /exec/x HTTP/1.1\r\nHost: a\r\nX-Big: %s\r\n\r\n" % (b"v" * value_size)

        # Just under the limit is an ordinary request (404: no such token) ...
        assert status_of(await fetch(port, request(900))) == 404
        # ... over it (but far under aiohttp's default 8190) is refused before any handler.
        assert status_of(await fetch(port, request(2000))) in (400, 431)
        assert status_of(await get(port, "/exec/badtoken")) == 404


async def test_a_request_line_over_max_header_size_is_refused() -> None:
    async with serving(Limits(max_header_size=1024)) as server:
        port = port_of(server)
        long_path = "/exec/" + "t" * 2000
        assert status_of(await get(port, long_path)) in (400, 414, 431)
        assert status_of(await get(port, "/exec/badtoken")) == 404


async def test_more_header_fields_than_max_header_fields_are_refused() -> None:
    async with serving(Limits(max_header_fields=10)) as server:
        port = port_of(server)
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(50))
        request = b"GET /exec/x HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
        assert status_of(await fetch(port, request)) in (400, 431)
        assert status_of(await get(port, "/exec/badtoken")) == 404


async def test_a_flood_of_bad_requests_logs_one_line_not_one_traceback_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiohttp logs every malformed request head at ERROR with a traceback; a peer could fill
    the log at will. Ours go through the rate-limited warning."""
    async with serving(Limits(max_header_size=1024)) as server:
        port = port_of(server)
        bad = b"GET /exec/x HTTP/1.1\r\nHost: a\r\nX-Big: %s\r\n\r\n" % (b"v" * 2000)
        with caplog.at_level(logging.DEBUG):
            for _ in range(50):
                assert status_of(await fetch(port, bad)) in (400, 431)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        warnings = [r for r in caplog.records if "bad request" in r.getMessage()]
        assert errors == []
        assert len(warnings) == 1


# ---------------------------------------------------------------------- connection cap


async def test_one_connection_over_max_connections_gets_503_and_is_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="streamsrv.connections")
    async with serving(Limits(max_connections=4)) as server:
        port = port_of(server)
        held: list[asyncio.StreamWriter] = []
        try:
            for _ in range(4):  # four keep-alive connections, each after a complete request
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                held.append(writer)
                writer.write(NOPE)
                assert (await read_response(reader)).startswith(b"HTTP/1.1 404 ")

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                answer = await read_to_eof(reader)  # the server closes it after its answer
            finally:
                await close(writer)
            assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            assert b"\r\nRetry-After: 1\r\n" in answer
            status = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert status["kind"] == "Status" and status["reason"] == "ServiceUnavailable"
            assert status["message"] == "too many connections: try again shortly"
            assert server.metrics.refused["connections"] == 1
            warnings = [r for r in caplog.records if "max_connections" in r.getMessage()]
            assert len(warnings) == 1
        finally:
            for writer in held:
                await close(writer)

        # Once the server has seen the four close, a new connection is served again.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANG
        while True:
            answer = await get(port, "/exec/badtoken")
            if status_of(answer) == 404 or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert status_of(answer) == 404


async def wait_for_refused(server: StreamServer, expected: int) -> int:
    for _ in range(100):  # at most about 5 s
        if server.metrics.refused["connections"] >= expected:
            break
        await asyncio.sleep(0.05)
    return server.metrics.refused["connections"]


async def test_a_burst_of_connections_never_exceeds_max_connections() -> None:
    async with serving(Limits(max_connections=4)) as server:
        port = port_of(server)
        # Blocking connects complete in the kernel's backlog while the loop does not run, so
        # the server accepts all ten in one go: the burst a flood produces.
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
        try:
            assert await wait_for_refused(server, 6) == 6
        finally:
            for s in socks:
                s.close()


# ---------------------------------------------------------------------- TLS


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for 127.0.0.1."""
    ca = CertificateAuthority(tmp_path)
    cert, key = ca.serving_cert(["127.0.0.1"])
    return server_ssl_context(cert, key), ssl.create_default_context(cadata=ca.pem.decode())


async def test_a_tls_handshake_that_never_starts_is_closed(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    async with serving(Limits(handshake_timeout=0.5), server_ctx) as server:
        port = port_of(server)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # plain TCP
        try:
            # A TLS client is served meanwhile.
            assert status_of(await get(port, "/exec/badtoken", client_ctx)) == 404
            assert await read_to_eof(reader) == b""
        finally:
            await close(writer)
        assert status_of(await get(port, "/exec/badtoken", client_ctx)) == 404


async def test_connections_in_their_tls_handshake_count_against_max_connections(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, _ = tls
    async with serving(Limits(max_connections=2), server_ctx) as server:
        port = port_of(server)
        held = []
        try:
            for _ in range(4):
                held.append((await asyncio.open_connection("127.0.0.1", port))[1])
                await asyncio.sleep(0.05)
            assert await wait_for_refused(server, 2) == 2
        finally:
            for writer in held:
                await close(writer)


async def test_a_failed_tls_handshake_stops_counting_as_a_connection(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Old main kept each failed handshake in streamsrv_connections until max_connections
    forced a sweep (a plain-HTTP client on the TLS port, one that does not trust our CA)."""
    server_ctx, client_ctx = tls
    async with serving(Limits(handshake_timeout=0.2), server_ctx) as server:
        port = port_of(server)
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)  # plain HTTP
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_to_eof(reader)
            await close(writer)
        for _ in range(50):  # the handshake timeout (0.2 s) plus its margin (1 s)
            if server.metrics.connections == 0:
                break
            await asyncio.sleep(0.05)
        assert server.metrics.connections == 0
        assert status_of(await get(port, "/exec/badtoken", client_ctx)) == 404


# ---------------------------------------------------------------------- accept errors


def accept_error() -> dict[str, Any]:
    return {"message": ACCEPT_ERROR, "exception": OSError(24, "Too many open files")}


async def test_accept_errors_are_logged_once_per_interval_and_the_rest_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    original = loop.get_exception_handler()
    passed_on: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: passed_on.append(context))
    try:
        quiet_accept_errors(loop, 60)
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            for _ in range(1000):
                loop.call_exception_handler(accept_error())
            records = [r for r in caplog.records if r.name == "asyncio"]
            assert len(records) == 1
            assert records[0].levelno == logging.ERROR
            assert ACCEPT_ERROR in records[0].getMessage()
            assert "Too many open files" in records[0].getMessage()
            assert passed_on == []  # accept errors never reach the previous handler

            other = {"message": "Task exception was never retrieved"}
            loop.call_exception_handler(other)
            assert passed_on == [other]
            assert [r for r in caplog.records if r.name == "asyncio"] == records
    finally:
        loop.set_exception_handler(original)


async def test_other_errors_reach_the_default_handler_when_there_was_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    original = loop.get_exception_handler()
    loop.set_exception_handler(None)
    try:
        quiet_accept_errors(loop, 60)
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            loop.call_exception_handler(accept_error())
            loop.call_exception_handler(accept_error())
            loop.call_exception_handler({"message": "something else broke"})
        messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
        assert len(messages) == 2
        assert ACCEPT_ERROR in messages[0]
        assert "something else broke" in messages[1]
    finally:
        loop.set_exception_handler(original)


# ---------------------------------------------------------------------- RateLimitedLog


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_counts_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.test_connections.ratelimit")
    clock = FakeClock()
    limited = RateLimitedLog(logger, 10.0, clock=clock)
    caplog.set_level(logging.INFO, logger=logger.name)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == logger.name]

    assert limited.log(logging.WARNING, "refused", "refused stream %d", 1) is True
    assert lines() == ["refused stream 1"]
    for n in range(2, 7):  # five more within the interval: counted, not logged
        clock.now += 1
        assert limited.log(logging.WARNING, "refused", "refused stream %d", n) is False
    assert lines() == ["refused stream 1"]

    # Another kind has its own interval.
    assert limited.log(logging.WARNING, "dial", "dial failed") is True
    assert lines()[-1] == "dial failed"

    clock.now = 1000.0 + 10.0  # the interval is over
    assert limited.log(logging.WARNING, "refused", "refused stream %d", 7) is True
    last = lines()[-1]
    assert last.startswith("refused stream 7")
    assert "and 5 more" in last
    assert caplog.records[-1].levelno == logging.WARNING

    clock.now += 1
    assert limited.log(logging.WARNING, "refused", "refused stream %d", 8) is False
    clock.now += 10
    assert limited.log(logging.WARNING, "refused", "refused stream %d", 9) is True
    assert "and 1 more" in lines()[-1]
    clock.now += 10
    assert limited.log(logging.WARNING, "refused", "refused stream %d", 10) is True
    assert lines()[-1] == "refused stream 10"  # nothing suppressed since: no count
    assert len(lines()) == 5


# ---------------------------------------------------------------------- request body


async def test_the_gateway_refuses_a_body_over_max_request_body_with_413() -> None:
    from streamsrv.app import make_app
    from streamsrv.podmanager import PodManager

    runtime = FakePods()
    streams = StreamServer(runtime, Config(limits=Limits(max_request_body=1024)))  # type: ignore[arg-type]
    app = make_app(PodManager(runtime), "secret", streams)  # type: ignore[arg-type]
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        auth = {"Authorization": "Bearer secret", "Content-Type": "application/json"}
        url = "/api/v1/namespaces/default/pods"
        async with client.post(url, data=b" " * 2048, headers=auth) as resp:
            assert resp.status == 413
            await resp.read()
        # Under the limit the body is read and judged on its content (not a Pod: 422).
        async with client.post(url, data=b" " * 900 + b"{}", headers=auth) as resp:
            assert resp.status != 413
            assert 400 <= resp.status < 500
            await resp.read()
    finally:
        await client.close()

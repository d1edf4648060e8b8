"""The socket-level fuzzer (soak/fuzz.py), short: a live server, mutated frames, a canary.

The long run is ``.venv/bin/python -m soak.fuzz`` (1,000,000 frames, a 1 GiB canary). This
one sends 30,000 frames over real TCP+TLS against ``streamsrv serve --runtime process`` while a
32 MiB canary exec runs, then asserts every check of the long run: the server is alive and
answers, the canary's bytes came back intact, a fresh exec works, peak RSS stayed under its
bound, and fds, tasks and child processes are back to the baseline. Only hang bounds here,
never a wall-clock figure.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import random
import socket
import ssl
import threading
import warnings
from pathlib import Path

import aiohttp
import pytest

from soak import fuzz
from streamsrv.certs import CertificateAuthority, server_ssl_context
from streamsrv.protocol import spdy

FRAMES = 30_000
CANARY = 32 * 1024 * 1024


@pytest.fixture(scope="module")
def material() -> fuzz.Material:
    return fuzz.Material.make(7, 12345, 12346, "token")


def test_unmutated_spdy_sessions_are_valid(material: fuzz.Material) -> None:
    """The fuzzer starts from sessions the server's codec accepts whole, so a mutation lands
    deep in a live session rather than in the first frame's error path."""
    for i in range(200):
        rng = random.Random(i)
        if i % 2:
            streams = {"stdin": True, "stdout": True, "stderr": i % 3 == 0, "tty": i % 5 == 0}
            frames = fuzz.spdy_exec_frames(rng, material, streams, 4, 400)
        else:
            frames = fuzz.spdy_portforward_frames(rng, material, 400)
        conn = spdy.SpdyConnection(spdy.Role.SERVER)
        events = conn.receive_data(b"".join(frames))  # raises on a protocol error
        assert any(isinstance(e, spdy.StreamOpened) for e in events)


def test_fatal_header_blocks_are_fatal(material: fuzz.Material) -> None:
    """Bombs, too many headers, forbidden and uppercase names: each ends the connection."""
    for block in material.fatal_blocks:
        conn = spdy.SpdyConnection(spdy.Role.SERVER)
        with pytest.raises(spdy.RemoteProtocolError):
            conn.receive_data(fuzz.syn_stream(1, fuzz.ZLIB_PREFIX + block.spliced))


def test_plans_are_repeatable(material: fuzz.Material) -> None:
    for index in range(50):
        one = fuzz.make_plan(index, 3, material)
        two = fuzz.make_plan(index, 3, material)
        assert (one.scenario, one.head, one.frames) == (two.scenario, two.head, two.frames)
    scenarios = {fuzz.make_plan(i, 3, material).scenario for i in range(300)}
    assert scenarios == set(fuzz.SCENARIOS)


def test_server_reader_counts_goaway_and_resets() -> None:
    scan = fuzz.SpdyScan()
    stream = (
        fuzz.data_frame(2, b"x" * 70000)
        + fuzz.ctrl(fuzz.RST_STREAM, fuzz._TWO.pack(1, 3))
        + fuzz.ctrl(fuzz.GOAWAY, fuzz._TWO.pack(5, 1))
    )
    for i in range(0, len(stream), 1000):  # any chunking
        scan.feed(stream[i : i + 1000])
    assert (scan.goaway, dict(scan.rst), scan.frames) == (1, {3: 1}, 3)


def _close_then_go_silent(
    listener: socket.socket, ctx: ssl.SSLContext, held: list[ssl.SSLSocket]
) -> None:
    """Accept one TLS WebSocket, answer the upgrade, send a close frame, then neither answer
    the client's close_notify nor close: the slow end of the canary's session, held open."""
    listener.settimeout(30)
    conn, _ = listener.accept()
    conn.settimeout(30)
    tls = ctx.wrap_socket(conn, server_side=True)
    held.append(tls)
    request = b""
    while b"\r\n\r\n" not in request:
        request += tls.recv(4096)
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    tls.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    tls.sendall(b"\x88\x02\x03\xe8")  # close, 1000


def test_a_session_on_a_loop_that_ends_leaves_no_socket(tmp_path: Path) -> None:
    """The canary's session (fuzz.client_session) on its own event loop, which ends as soon as
    the session does, against a peer that has not answered the TLS close_notify yet: no
    socket is left for the collector to report (a plain aiohttp session leaves one, with its
    transport: two ResourceWarnings)."""
    ca = CertificateAuthority(tmp_path)
    cert, key = ca.serving_cert(["127.0.0.1"])
    client_ctx = ssl.create_default_context(cadata=ca.pem.decode())
    held: list[ssl.SSLSocket] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        peer = threading.Thread(
            target=_close_then_go_silent, args=(listener, server_ssl_context(cert, key), held)
        )
        peer.start()
        kinds: list[object] = []

        async def session() -> None:
            async with (
                fuzz.client_session() as client,
                client.ws_connect(f"https://127.0.0.1:{port}/", ssl=client_ctx) as ws,
            ):
                kinds.append((await ws.receive()).type)

        try:
            asyncio.run(session())  # a loop of its own, like the canary's thread
        finally:
            peer.join(30)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                gc.collect()
            for tls in held:
                tls.close()
    assert kinds == [aiohttp.WSMsgType.CLOSE]
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.timeout(900)
async def test_fuzz_live_server(tmp_path: Path) -> None:
    lines: list[str] = []
    figures = await fuzz.run(
        FRAMES, CANARY, 600.0, "process", 1, state_dir=tmp_path / "fuzz", echo=lines.append
    )
    tail = figures.pop("server_log_tail", "")
    shown = json.dumps(figures, indent=1, default=str)
    failed = [name for name, ok in figures["checks"].items() if not ok]
    assert not failed, f"failed checks {failed}\n{shown}\n--- server log ---\n{tail}"
    assert figures["frames"] == FRAMES, shown
    canary = figures["canary"]
    assert canary["bytes_received"] == CANARY, shown
    assert canary["sha256_received"] == canary["sha256_sent"], shown
    assert figures["rss_kib"]["peak"] <= figures["rss_kib"]["bound"], shown
    # every kind of connection was tried, with the right token and a wrong one
    assert set(figures["scenarios"]) == set(fuzz.SCENARIOS), shown
    assert {"valid", "wrong"} <= set(figures["tokens"]), shown
    assert figures["connections"] > 50, shown

"""streamsrv.client (the asyncio WebSocket client, and its blocking facade) against a real
`streamsrv serve` on both runtimes: exec, attach and port-forward end to end.

Each session is proven to have gone over WebSocket by the server's own session counters.
The module's pods carry unique names and are removed by name afterwards (no engine-wide
clean-up), so the module shares an engine with other users without disturbing their pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import docker
import pytest

from streamsrv.client import (
    ByteStream,
    Client,
    Completed,
    ConnectFailed,
    ConnectionLost,
    HalfCloseUnsupported,
    NotFound,
    PortForwardError,
    Process,
    RemoteError,
    Unauthorized,
    UpgradeError,
    load_kubeconfig,
)
from streamsrv.client.sync import SyncClient
from streamsrv.pods import LABEL_POD_NAME
from tests.conftest import BUSYBOX, RUNTIMES, Server, free_port, metric, require_runtime, unique
from tests.interop.test_exec_kubectl import sessions

pytestmark = pytest.mark.docker

POD = unique("sclient")
DOOMED = unique("sdoomed")
# Container names are unique too: `Server.processes` finds a Docker container by this name alone.
MAIN = unique("main")
TICKER = unique("ticker")
# Free ports on this host: on the process runtime the pod's services listen on its loopback.
ECHO, BLOB, NOTHING = (free_port() for _ in range(3))
BLOB_SIZE = 64 * 1024 * 1024
MiB = 1024 * 1024
HANG = 60  # a bound against hangs only, never a performance expectation


def manifest() -> str:
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {POD}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: {MAIN}
    image: {BUSYBOX}
    command: ["sleep", "100000"]
  - name: console
    image: {BUSYBOX}
    command: ["sh"]
    stdin: true
    tty: true
  - name: echo
    image: {BUSYBOX}
    command: ["busybox", "nc", "-ll", "-p", "{ECHO}", "-e", "cat"]
  - name: blob
    image: {BUSYBOX}
    command: ["sh", "-c", "dd if=/dev/urandom of=blob.tmp bs=1048576 count=64 2>/dev/null;
      mv blob.tmp blob; sha256sum blob > blob.sha; exec busybox nc -ll -p {BLOB} -e cat blob"]
"""


def doomed_manifest() -> str:
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {DOOMED}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: {TICKER}
    image: {BUSYBOX}
    command: ["sleep", "100000"]
"""


def run_pod(server: Server, text: str, name: str) -> None:
    path = server.state_dir / f"{name}.yaml"
    path.write_text(text)
    r = server.cli("pod", "run", "-f", str(path))
    assert r.returncode == 0, r.stderr


def remove_pods(server: Server, *names: str) -> None:
    """Delete this module's pods by name, and on Docker any container they left behind."""
    if server.proc is not None:
        server.cli("pod", "rm", *names)
    if server.runtime == "docker":
        engine = docker.from_env(timeout=60)
        try:
            for name in names:
                for c in engine.containers.list(
                    all=True, filters={"label": f"{LABEL_POD_NAME}={name}"}
                ):
                    c.remove(force=True)
        finally:
            engine.close()


def blob_sha(server: Server) -> str:
    for _ in range(300):
        out = server.read_pod_file(POD, "blob", "blob.sha")
        if out.strip():
            return out.split()[0].decode()
        time.sleep(0.1)
    raise AssertionError("the blob was never written")


@pytest.fixture(scope="module", params=RUNTIMES)
def srv(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    runtime = request.param
    require_runtime(runtime)
    server = Server(tmp_path_factory.mktemp("sclient") / "state", runtime=runtime)
    server.start()
    try:
        run_pod(server, manifest(), POD)
        blob_sha(server)  # every container is up and the blob is ready
        yield server
    finally:
        try:
            remove_pods(server, POD, DOOMED)
        finally:
            server.stop()


def client(server: Server, protocols: tuple[str, ...] | None = None) -> Client:
    if protocols is None:
        return Client.from_kubeconfig(server.kubeconfig)
    return Client(load_kubeconfig(server.kubeconfig), protocols=protocols)


async def read_until(stream: ByteStream | None, needle: bytes, within: float = 30) -> bytes:
    """What ``stream`` gives until ``needle`` has appeared (fails at its end or after
    ``within`` seconds)."""
    assert stream is not None
    seen = b""
    async with asyncio.timeout(within):
        while needle not in seen:
            chunk = await stream.read()
            assert chunk, f"the stream ended before {needle!r}: {seen[-500:]!r}"
            seen += chunk
    return seen


async def collect(process: Process) -> tuple[bytes, bytes, int]:
    """Both outputs to their end, and the exit code."""

    async def drain(stream: ByteStream | None) -> bytes:
        return b"" if stream is None else await stream.readall()

    async with asyncio.timeout(HANG):
        out, err = await asyncio.gather(drain(process.stdout), drain(process.stderr))
        return out, err, await process.wait()


async def until(check: object, what: str, within: float = 30) -> None:
    """Poll ``check()`` (a blocking callable, run in a thread) until it is true."""
    assert callable(check)
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


def marker() -> str:
    return str(300000 + int.from_bytes(os.urandom(3), "big"))


# ---------------------------------------------------------------------------- exec: bytes


BINARY_OUT = b"\x00\xffout\n\x01"
BINARY_ERR = b"\xff\x00err"
BINARY_SCRIPT = r"printf '\000\377out\n\001'; printf '\377\000err' >&2"


async def test_stdout_and_stderr_are_exact_and_separate(srv: Server) -> None:
    c = client(srv)
    before = sessions(srv, "exec", "websocket")
    async with await c.exec(POD, ["sh", "-c", BINARY_SCRIPT], container=MAIN) as proc:
        assert proc.protocol == "v5.channel.k8s.io"
        assert proc.stdin is None and proc.stderr is not None
        assert await collect(proc) == (BINARY_OUT, BINARY_ERR, 0)
        assert proc.returncode == 0
    r = await c.run(POD, ["sh", "-c", BINARY_SCRIPT], container=MAIN)
    assert r == Completed(0, BINARY_OUT, BINARY_ERR)
    assert sessions(srv, "exec", "websocket") == before + 2
    assert sessions(srv, "exec", "spdy") == 0


async def test_merge_stderr_delivers_both_on_stdout(srv: Server) -> None:
    c = client(srv)
    async with await c.exec(
        POD, ["sh", "-c", BINARY_SCRIPT], container=MAIN, merge_stderr=True
    ) as proc:
        assert proc.stderr is None
        out, err, code = await collect(proc)
    assert (err, code) == (b"", 0)
    # Two pipes read side by side: their order is the server's, their bytes must be exact.
    assert out in (BINARY_OUT + BINARY_ERR, BINARY_ERR + BINARY_OUT), out
    r = await c.run(POD, ["sh", "-c", BINARY_SCRIPT], container=MAIN, merge_stderr=True)
    assert r.stderr == b"" and r.exit_code == 0
    assert r.stdout in (BINARY_OUT + BINARY_ERR, BINARY_ERR + BINARY_OUT), r


async def test_16mib_written_just_before_exit_all_arrive(srv: Server) -> None:
    script = "dd if=/dev/zero bs=65536 count=256 2>/dev/null | tr '\\0' x; exit 3"
    async with asyncio.timeout(HANG):
        r = await client(srv).run(POD, ["sh", "-c", script], container=MAIN)
    assert r.exit_code == 3, r.stderr
    assert len(r.stdout) == 16 * MiB
    assert r.stdout.count(b"x") == len(r.stdout)


# ---------------------------------------------------------------------------- exec: ends


@pytest.mark.parametrize("code", [0, 1, 42])
async def test_exit_codes(srv: Server, code: int) -> None:
    c = client(srv)
    r = await c.run(POD, ["sh", "-c", f"echo before-{code}; exit {code}"], container=MAIN)
    assert r == Completed(code, f"before-{code}\n".encode(), b"")
    async with await c.exec(POD, ["sh", "-c", f"exit {code}"], container=MAIN) as proc:
        assert proc.returncode is None
        assert await proc.wait() == code
        assert proc.returncode == code
        assert await proc.wait() == code  # asked again: the same answer


async def test_missing_binary_is_an_exit_code_naming_it(srv: Server) -> None:
    # Every runtime reports it as a shell would: an exit code (Docker's runc 126, the process
    # and containerd runtimes 127) and a message naming the command (Docker's on stdout, ours
    # on stderr).
    expected = {"docker": 126, "process": 127, "containerd": 127}[srv.runtime]
    async with await client(srv).exec(POD, ["/no/such/binary", "arg"], container=MAIN) as proc:
        out, err, code = await collect(proc)
    assert code == expected, (code, out, err)
    assert b'"/no/such/binary"' in out + err, (out, err)
    # The unversioned protocol has no exit codes: the same end arrives as an error text.
    old = client(srv, protocols=("channel.k8s.io",))
    async with await old.exec(POD, ["/no/such/binary"], container=MAIN) as proc:
        assert proc.protocol == "channel.k8s.io"
        with pytest.raises(RemoteError, match=f"command terminated with exit code {expected}"):
            await collect(proc)


async def test_exec_in_an_exited_container_is_a_remote_error(srv: Server) -> None:
    """A non-exit error on v5: the server's InternalError status, raised with its message."""
    name, quick = unique("sexited"), unique("quick")
    run_pod(
        srv,
        f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  containers:
  - {{name: {unique("sleeper")}, image: {BUSYBOX}, command: ["sleep", "100000"]}}
  - {{name: {quick}, image: {BUSYBOX}, command: ["true"]}}
""",
        name,
    )  # fmt: skip  (the sleeper keeps the pod Running: no 400 for a completed pod)
    try:
        c = client(srv)
        deadline = time.monotonic() + HANG
        while True:  # until the container has exited (the exec is refused by the runtime)
            async with await c.exec(name, ["echo", "hi"], container=quick) as proc:
                assert proc.protocol == "v5.channel.k8s.io"
                try:
                    await collect(proc)
                except RemoteError as exc:
                    assert exc.reason == "InternalError", exc.status
                    assert "is not running" in exc.message, exc.message
                    assert proc.returncode is None
                    break
            assert time.monotonic() < deadline, "the container never exited"
            await asyncio.sleep(0.2)
    finally:
        remove_pods(srv, name)


async def test_unknown_pod_is_not_found(srv: Server) -> None:
    c = client(srv)
    with pytest.raises(NotFound) as info:
        await c.exec("ghost", ["true"])
    assert info.value.status == 404 and info.value.reason == "NotFound"
    assert 'pods "ghost" not found' in info.value.message
    with pytest.raises(NotFound, match='pods "ghost" not found'):
        await c.port_forward("ghost", ECHO)
    with pytest.raises(NotFound, match='pods "ghost" not found'):
        await c.attach("ghost", stdin=True)


async def test_unknown_container_is_refused_with_its_name(srv: Server) -> None:
    # The Kubernetes API server's answer is 400 BadRequest here (not 404), and so is streamsrv's.
    with pytest.raises(UpgradeError) as info:
        await client(srv).exec(POD, ["true"], container="nope")
    assert info.value.status == 400, info.value
    assert not isinstance(info.value, NotFound)
    assert f"container nope is not valid for pod {POD}" in info.value.message


async def test_wrong_token_is_unauthorized(srv: Server) -> None:
    config = dataclasses.replace(load_kubeconfig(srv.kubeconfig), token="wrong")
    c = Client(config)
    with pytest.raises(Unauthorized) as info:
        await c.exec(POD, ["true"], container=MAIN)
    assert info.value.status == 401
    with pytest.raises(Unauthorized):
        await c.port_forward(POD, ECHO)
    # and the right token works, so the wrong one was the reason
    assert (await client(srv).run(POD, ["true"], container=MAIN)).exit_code == 0


async def test_a_server_certificate_from_another_ca_is_refused(
    srv: Server, tmp_path: pathlib.Path
) -> None:
    from streamsrv.certs import CertificateAuthority

    other = CertificateAuthority(tmp_path / "other-ca").cert_path.read_bytes()
    c = Client(dataclasses.replace(load_kubeconfig(srv.kubeconfig), ca_data=other))
    with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
        await c.exec(POD, ["true"], container=MAIN)
    # told to skip verification, it connects (and says so only by being told)
    loose = dataclasses.replace(c.config, insecure_skip_tls_verify=True)
    assert (await Client(loose).run(POD, ["true"], container=MAIN)).exit_code == 0


# ---------------------------------------------------------------------------- exec: stdin


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(64 * MiB)


async def test_64mib_stdin_checksum_after_half_close(srv: Server, payload: bytes) -> None:
    async with asyncio.timeout(120):  # sha256sum answers only once stdin has ended
        r = await client(srv).run(POD, ["sh", "-c", "sha256sum"], input=payload, container=MAIN)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == hashlib.sha256(payload).hexdigest().encode() + b"  -\n"


async def test_64mib_streamed_through_cat(srv: Server, payload: bytes) -> None:
    before = sessions(srv, "exec", "websocket")
    async with await client(srv).exec(POD, ["cat"], container=MAIN, stdin=True) as proc:
        assert proc.protocol == "v5.channel.k8s.io"
        assert proc.stdin is not None and proc.stdin.can_write_eof
        stdin = proc.stdin

        async def feed() -> None:
            view = memoryview(payload)
            for i in range(0, len(view), 3 * MiB + 17):  # writes of any size
                await stdin.write(view[i : i + 3 * MiB + 17])
            await stdin.close()

        async def digest() -> tuple[int, bytes]:
            assert proc.stdout is not None
            h, n = hashlib.sha256(), 0
            async for chunk in proc.stdout:
                h.update(chunk)
                n += len(chunk)
            return n, h.digest()

        async with asyncio.timeout(120):
            _, (n, got) = await asyncio.gather(feed(), digest())
            code = await proc.wait()
    # cat ends only because stdin was half-closed (v5): the exit code proves it
    assert code == 0
    assert n == len(payload)
    assert got == hashlib.sha256(payload).digest()
    assert sessions(srv, "exec", "websocket") == before + 1


async def test_v4_protocol_has_exit_codes_but_no_half_close(srv: Server) -> None:
    c = client(srv, protocols=("v4.channel.k8s.io",))
    async with await c.exec(POD, ["sh", "-c", "exit 42"], container=MAIN, stdin=True) as proc:
        assert proc.protocol == "v4.channel.k8s.io"
        assert proc.stdin is not None and proc.stdin.can_write_eof is False
        assert await proc.wait() == 42
    assert (await c.run(POD, ["sh", "-c", "echo v4; exit 5"], container=MAIN)) == Completed(
        5, b"v4\n", b""
    )
    # stdin flows on v4, it only cannot be ended alone
    async with await c.exec(POD, ["cat"], container=MAIN, stdin=True) as proc:
        assert proc.stdin is not None
        await proc.stdin.write(b"v4-stdin\n")
        await read_until(proc.stdout, b"v4-stdin\n")
    # run() with input would wait for ever on v4: refused, and the session closed
    mark = marker()
    with pytest.raises(HalfCloseUnsupported, match="v4.channel.k8s.io"):
        async with asyncio.timeout(HANG):
            await c.run(POD, ["sh", "-c", f"cat; : {mark}"], input=b"x", container=MAIN)
    await until(
        lambda: not srv.processes(f": {mark}", MAIN), "the refused session's command still runs"
    )


# ---------------------------------------------------------------------------- tty and attach


async def test_tty_size_and_resize_seen_by_stty(srv: Server) -> None:
    c = client(srv)
    # The shell reads a line before its first `stty size`: the server holds stdin until the
    # first size is applied, so the answer is the size given to exec(). (A command that asks
    # at once can race the engine's resize on Docker: exec_create takes no console size.)
    script = "read x; stty size; while read x; do stty size; done"
    async with await c.exec(
        POD, ["sh", "-c", script], container=MAIN, stdin=True, tty=True, size=(100, 33)
    ) as proc:
        assert proc.tty and proc.stderr is None and proc.stdin is not None
        await proc.stdin.write(b"\n")
        await read_until(proc.stdout, b"33 100")
        await proc.resize(120, 40)
        # The resize and the next line take different paths to the process (an engine call,
        # the terminal): ask until the new size shows, within a bound.
        stdout = proc.stdout
        assert stdout is not None
        seen = bytearray()

        async def pump() -> None:
            async for chunk in stdout:
                seen.extend(chunk)

        reader = asyncio.ensure_future(pump())
        async with asyncio.timeout(30):
            while b"40 120" not in seen:
                await proc.stdin.write(b"\n")
                await asyncio.sleep(0.5)
        await proc.stdin.write(b"\x04")  # ^D at a line start: the shell's read ends
        async with asyncio.timeout(HANG):
            await reader
            assert await proc.wait() == 0
    async with await c.exec(POD, ["true"], container=MAIN) as plain:
        with pytest.raises(ValueError, match="tty"):
            await plain.resize(80, 24)


async def test_attach_to_a_shell(srv: Server) -> None:
    c = client(srv)
    before = sessions(srv, "attach", "websocket")
    for i in range(2):  # the shell outlives an attach
        async with await c.attach(POD, container="console", stdin=True, tty=True) as proc:
            assert proc.protocol == "v5.channel.k8s.io"
            assert proc.stdin is not None
            await proc.stdin.write(f"echo attach-$((6*7+{i}))\r".encode())
            await read_until(proc.stdout, f"attach-{42 + i}".encode())
    assert sessions(srv, "attach", "websocket") == before + 2


# ---------------------------------------------------------------------------- session ends


async def test_deleted_pod_ends_a_streaming_exec(srv: Server) -> None:
    run_pod(srv, doomed_manifest(), DOOMED)
    c = client(srv)
    script = "while true; do echo tick; sleep 0.1; done"
    async with await c.exec(DOOMED, ["sh", "-c", script], container=TICKER) as proc:
        await read_until(proc.stdout, b"tick\ntick\n")
        assert proc.stdout is not None
        rest = asyncio.ensure_future(proc.stdout.readall())
        r = await asyncio.to_thread(srv.cli, "pod", "rm", DOOMED)
        assert r.returncode == 0, r.stderr
        async with asyncio.timeout(HANG):
            await rest  # the stream reaches its end
            try:
                outcome: int | BaseException = await proc.wait()
            except (RemoteError, ConnectionLost) as exc:
                outcome = exc
    assert outcome != 0, "a killed loop cannot have exited 0"
    if isinstance(outcome, int):
        assert outcome in (137, 143), outcome


async def test_back_pressure_bounds_what_the_client_holds(srv: Server) -> None:
    c = client(srv)
    dd = ["dd", "if=/dev/zero", "bs=65536", "count=2048"]  # 128 MiB
    total = 128 * MiB
    async with await c.exec(POD, dd, container=MAIN, stderr=False) as proc:
        assert proc.stdout is not None
        got = len(await proc.stdout.readexactly(MiB))
        await asyncio.sleep(2)  # time enough to push all of it, were nothing holding it back
        # What the client holds: its output buffer (the limit, plus at most one message) and
        # the WebSocket's queue of frames (4 frames, and what one read adds past that mark, of
        # at most 256 KiB + 1 each from streamsrv).
        assert proc.stdout._size <= c.buffer + 256 * 1024 + 1, proc.stdout
        queued = sum(len(f.data) for f in proc._ws.recv_messages.frames.queue)
        assert queued + proc.stdout._size < 8 * MiB, queued
        # ... and the command itself is held: it has not written everything and exited.
        # (busybox dd rewrites its arguments in place: "if=" reads "if " in its cmdline)
        running = await asyncio.to_thread(srv.processes, "count", MAIN)
        assert any("dd if" in p and "2048" in p for p in running), running
        async with asyncio.timeout(120):
            async for chunk in proc.stdout:
                assert chunk.count(0) == len(chunk)
                got += len(chunk)
            assert await proc.wait() == 0
    assert got == total


@pytest.mark.parametrize("how", ["cancel", "leave"])
async def test_cancelled_or_left_session_ends_the_command(srv: Server, how: str) -> None:
    c = client(srv)
    mark = marker()
    seen = asyncio.Event()

    async def hold() -> None:
        async with await c.exec(POD, ["sleep", mark], container=MAIN) as proc:
            if how == "cancel":
                await proc.wait()  # cancelled here
            else:
                await seen.wait()  # then leaves the block

    task = asyncio.ensure_future(hold())
    try:
        await until(lambda: srv.processes(f"sleep {mark}", MAIN), "the exec never started")
    finally:
        if how == "cancel":
            task.cancel()
        seen.set()
    if how == "cancel":
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        async with asyncio.timeout(HANG):
            await task
    await until(
        lambda: not srv.processes(f"sleep {mark}", MAIN), f"sleep {mark} outlived its session"
    )


async def test_run_reports_the_exit_code_of_a_command_that_stops_reading(srv: Server) -> None:
    """The session ends while input is still going in: the exit code, not a broken pipe
    (found by this module's first author; kubectl 1.33 exec -i gives 3 here too)."""
    c = client(srv)
    script = "head -c 10 >/dev/null; exit 3"
    result = await c.run(POD, ["sh", "-c", script], input=os.urandom(64 * MiB), container=MAIN)
    assert result.exit_code == 3


# ---------------------------------------------------------------------------- port-forward


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_echo(c: Client) -> Stream:
    """A port-forward connection to the echo service, proven to be served: one byte echoed.

    `busybox nc -ll` listens with a backlog of 1, so a burst of connects gets SYN cookies,
    and a data segment that is not the first to reach a cookie-only connection is answered
    with a reset: the service takes no burst of connects (a plain socket to it fails the same
    way, with no port-forward involved; tests/interop/test_portforward_kubectl.py, PY_ECHO,
    has the figures). Each connection is therefore served before the next is opened."""
    reader, writer = await c.port_forward(POD, ECHO)
    try:
        assert writer.can_write_eof() is False
        writer.write(b"!")
        await writer.drain()
        async with asyncio.timeout(HANG):
            assert await reader.readexactly(1) == b"!"
    except BaseException:
        await close_writer(writer)
        raise
    return reader, writer


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    async with asyncio.timeout(HANG):
        await writer.wait_closed()


async def echo_through(stream: Stream, data: bytes, chunk: int = 256 * 1024) -> bytes:
    """Send ``data`` while reading as much back, then close the connection."""
    reader, writer = stream
    try:

        async def send() -> None:
            view = memoryview(data)
            for i in range(0, len(view), chunk):
                writer.write(view[i : i + chunk])
                await writer.drain()

        async with asyncio.timeout(120):
            sender = asyncio.ensure_future(send())
            try:
                got = await reader.readexactly(len(data))
            finally:
                await sender
        return got
    finally:
        await close_writer(writer)


async def echo_round_trip(c: Client, data: bytes) -> bytes:
    return await echo_through(await open_echo(c), data)


async def test_portforward_64mib_echo_and_download(srv: Server, payload: bytes) -> None:
    c = client(srv)
    before = sessions(srv, "portforward", "websocket")
    got = await echo_round_trip(c, payload)
    assert len(got) == len(payload)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()

    reader, writer = await c.port_forward(POD, BLOB)
    try:
        digest, total = hashlib.sha256(), 0
        async with asyncio.timeout(120):
            while chunk := await reader.read(MiB):
                digest.update(chunk)
                total += len(chunk)
        assert reader.at_eof()
    finally:
        writer.close()
        await writer.wait_closed()
    assert total == BLOB_SIZE
    assert digest.hexdigest() == blob_sha(srv)
    assert sessions(srv, "portforward", "websocket") == before + 2
    assert sessions(srv, "portforward", "spdy") == sessions(srv, "portforward", "tunnel") == 0


async def test_portforward_20_parallel_connections(srv: Server) -> None:
    c = client(srv)
    before = sessions(srv, "portforward", "websocket")
    payloads = [os.urandom(MiB + i) for i in range(20)]
    streams: list[Stream] = []
    try:
        for _ in payloads:
            streams.append(await open_echo(c))
        # all 20 open at once, all transferring at once
        results = await asyncio.gather(
            *(echo_through(s, p, 64 * 1024) for s, p in zip(streams, payloads, strict=True))
        )
    finally:
        for _, writer in streams:
            if not writer.is_closing():
                await close_writer(writer)
    assert results == payloads
    assert sessions(srv, "portforward", "websocket") == before + 20


def connections(server: Server) -> int:
    text = server.metrics()
    assert "\nstreamsrv_connections " in text, "no streamsrv_connections gauge"
    return int(metric(text, "streamsrv_connections"))


async def test_forwarder_listens_locally(srv: Server) -> None:
    c = client(srv)
    before = sessions(srv, "portforward", "websocket")
    held = connections(srv)
    async with c.forward(POD, {0: ECHO}) as fw:
        port = fw.ports[ECHO]
        assert port > 0
        for i in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                data = os.urandom(300 * 1024) + f"fw-{i}".encode()
                writer.write(data)
                await writer.drain()
                async with asyncio.timeout(HANG):
                    assert await reader.readexactly(len(data)) == data
            finally:
                writer.close()
                await writer.wait_closed()
        # each connection ended with its local side (the echo service never closes first)
        await until(lambda: connections(srv) <= held, "forwarded connections outlived clients")
        assert fw.errors == []
    assert sessions(srv, "portforward", "websocket") == before + 2
    with pytest.raises(OSError):  # the listener is gone with the block
        _, w = await asyncio.open_connection("127.0.0.1", port)
        w.close()
        await w.wait_closed()


async def test_portforward_to_a_closed_port_raises(srv: Server) -> None:
    c = client(srv)
    reader, writer = await c.port_forward(POD, NOTHING)
    try:
        with pytest.raises(PortForwardError, match=f"{NOTHING}") as info:
            async with asyncio.timeout(HANG):
                await reader.read(10)
        assert f"error forwarding port {NOTHING}" in str(info.value)
    finally:
        writer.close()
        with contextlib.suppress(PortForwardError):
            await writer.wait_closed()
    assert await echo_round_trip(c, b"still forwarding") == b"still forwarding"


# ---------------------------------------------------------------------------- sync facade


def test_sync_client(srv: Server) -> None:
    before = sessions(srv, "exec", "websocket")
    with SyncClient.from_kubeconfig(srv.kubeconfig) as sc:
        r = sc.run(POD, ["sh", "-c", "echo out; echo err >&2; exit 3"], container=MAIN)
        assert r == Completed(3, b"out\n", b"err\n")
        with sc.exec(POD, ["cat"], container=MAIN, stdin=True) as proc:
            assert proc.protocol == "v5.channel.k8s.io"
            proc.write(b"sync-stdin")
            proc.close_stdin()
            out = b""
            while chunk := proc.read_stdout():
                out += chunk
            assert out == b"sync-stdin"
            assert proc.wait(timeout=HANG) == 0
        with (
            sc.forward(POD, {0: ECHO}) as fw,
            socket.create_connection(("127.0.0.1", fw.ports[ECHO]), timeout=30) as sock,
        ):
            data = os.urandom(100 * 1024)
            sock.sendall(data)
            got = b""
            while len(got) < len(data):
                chunk = sock.recv(65536)
                assert chunk, "the forward ended early"
                got += chunk
            assert got == data
    assert sessions(srv, "exec", "websocket") == before + 2


def test_sync_client_errors_are_the_clients(srv: Server) -> None:
    sc = SyncClient.from_kubeconfig(srv.kubeconfig)
    try:
        with pytest.raises(NotFound):
            sc.run("ghost", ["true"])
    finally:
        sc.close()
    sc.close()  # twice is fine


def test_sync_client_close_ends_the_sessions_left_open(srv: Server) -> None:
    mark = marker()
    sc = SyncClient.from_kubeconfig(srv.kubeconfig)
    try:
        sc.exec(POD, ["sleep", mark], container=MAIN)  # never closed by the caller
        deadline = time.monotonic() + 30
        while not srv.processes(f"sleep {mark}", MAIN):
            assert time.monotonic() < deadline, "the exec never started"
            time.sleep(0.1)
    finally:
        sc.close()
    deadline = time.monotonic() + HANG
    while srv.processes(f"sleep {mark}", MAIN):
        assert time.monotonic() < deadline, f"sleep {mark} outlived SyncClient.close()"
        time.sleep(0.1)


# ---------------------------------------------------------------------------- the command line

CompletedBytes = subprocess.CompletedProcess[bytes]


def client_cli(server: Server, *args: str, data: bytes | None = None) -> CompletedBytes:
    cmd = [sys.executable, "-m", "streamsrv.client", "--kubeconfig", str(server.kubeconfig)]
    return subprocess.run([*cmd, *args], input=data, capture_output=True, timeout=HANG)


def test_cli_exec_pipes_stdin_and_exits_with_the_code(srv: Server) -> None:
    data = os.urandom(3 * MiB)
    script = "sha256sum; echo e >&2; exit 7"
    r = client_cli(srv, "exec", "-i", "-c", MAIN, POD, "--", "sh", "-c", script, data=data)
    assert r.returncode == 7, r.stderr
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert r.stderr == b"e\n"
    gone = client_cli(srv, "exec", "ghost", "--", "true")
    assert gone.returncode == 1
    assert b"error: 404" in gone.stderr and b"ghost" in gone.stderr


def test_cli_port_forward_prints_its_ports_and_forwards(srv: Server) -> None:
    cmd = [sys.executable, "-m", "streamsrv.client", "--kubeconfig", str(srv.kubeconfig),
           "port-forward", POD, f":{ECHO}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        m = re.match(rf"Forwarding from 127\.0\.0\.1:(\d+) -> {ECHO}$", line.strip())
        assert m, line
        with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=30) as sock:
            sock.sendall(b"through the cli\n")
            got = b""
            while not got.endswith(b"\n"):
                chunk = sock.recv(4096)
                assert chunk, got
                got += chunk
        assert got == b"through the cli\n"
    finally:
        proc.terminate()
        proc.wait(timeout=HANG)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()

"""DockerRuntime._engine_json: the exec path's API calls on a connection of our own (no SDK,
no thread), against a fake engine on a unix socket. The real engine's answers go through it in
every Docker exec test (tests/runtime/test_exec.py and the interop tests)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamsrv.errors import EngineUnavailable
from streamsrv.runtime import docker as docker_runtime
from streamsrv.runtime.base import BackendError, ContainerNotFound
from streamsrv.runtime.docker import DockerRuntime

API = "1.41"


class FakeEngine:
    """Answers by path; keeps each request it got (head and body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bytes]] = []
        self.server: asyncio.AbstractServer | None = None
        self.handlers: set[asyncio.Task[None]] = set()  # cancelled at the end: "silent" waits

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            self.requests.append((head, body))
            method, path = head.split(b" ")[:2]
            status, answer = self.answer(method.decode(), path.decode())
            if status == 0:  # no answer at all
                await asyncio.sleep(3600)
            if status == 1:  # no Content-Length: the answer ends where the connection does
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
                for piece in (answer[:5], answer[5:]):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.05)
                return
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(answer)}\r\nConnection: close\r\n\r\n".encode()
                + answer
            )
            await writer.drain()
        finally:
            writer.close()

    def answer(self, method: str, path: str) -> tuple[int, bytes]:
        if path.endswith("/version"):
            return 200, json.dumps({"ApiVersion": API, "Version": "fake"}).encode()
        if path == f"/v{API}/containers/c1/exec" and method == "POST":
            return 201, b'{"Id":"e1"}'
        if path == f"/v{API}/containers/stopped/exec":
            return 409, b'{"message":"container stopped is not running"}'
        if path == f"/v{API}/exec/gone/json":
            return 404, b'{"message":"No such exec instance: gone"}'
        if path == f"/v{API}/exec/big/json":
            return 200, b'"' + b"x" * (docker_runtime.ENGINE_JSON_MAX + 10) + b'"'
        if path == f"/v{API}/exec/text/json":
            return 200, b"not json"
        if path == f"/v{API}/exec/unsized/json":
            return 1, b'{"Running": false, "ExitCode": 3}'
        if path == f"/v{API}/exec/silent/json":
            return 0, b""
        return 500, b'{"message":"unexpected"}'


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[FakeEngine, DockerRuntime]]:
    fake = FakeEngine()
    path = tmp_path / "docker.sock"
    fake.server = await asyncio.start_unix_server(fake.handle, str(path))
    rt = await asyncio.to_thread(DockerRuntime, base_url=f"unix://{path}", timeout=2)
    try:
        yield fake, rt
    finally:
        await rt.close()
        await fake.close()


async def test_creates_an_exec_with_an_http_1_0_request(
    engine: tuple[FakeEngine, DockerRuntime],
) -> None:
    fake, rt = engine
    body = {"Cmd": ["true"], "Tty": False}
    assert await rt._engine_json("POST", "/containers/c1/exec", body, ok=201) == {"Id": "e1"}
    head, sent = fake.requests[-1]
    assert head.startswith(f"POST /v{API}/containers/c1/exec HTTP/1.0\r\n".encode())
    assert b"Content-Type: application/json\r\n" in head
    assert json.loads(sent) == body


async def test_an_answer_without_a_length_ends_at_the_close(
    engine: tuple[FakeEngine, DockerRuntime],
) -> None:
    _, rt = engine
    assert await rt._engine_json("GET", "/exec/unsized/json") == {"Running": False, "ExitCode": 3}


async def test_the_engines_errors_keep_their_meaning(
    engine: tuple[FakeEngine, DockerRuntime],
) -> None:
    _, rt = engine
    with pytest.raises(BackendError, match="container stopped is not running") as raised:
        await rt._engine_json("POST", "/containers/stopped/exec", {}, ok=201)
    assert not isinstance(raised.value, ContainerNotFound)
    with pytest.raises(ContainerNotFound, match="No such exec instance"):
        await rt._engine_json("GET", "/exec/gone/json")


async def test_a_bad_answer_is_a_backend_error(engine: tuple[FakeEngine, DockerRuntime]) -> None:
    _, rt = engine
    with pytest.raises(BackendError, match="too large"):
        await rt._engine_json("GET", "/exec/big/json")
    with pytest.raises(BackendError, match="no JSON"):
        await rt._engine_json("GET", "/exec/text/json")


async def test_an_engine_that_does_not_answer_times_out(
    engine: tuple[FakeEngine, DockerRuntime],
) -> None:
    _, rt = engine
    rt._timeout = 0.3
    with pytest.raises(BackendError, match="no answer"):
        await asyncio.wait_for(rt._engine_json("GET", "/exec/silent/json"), 30)


async def test_an_engine_gone_is_unavailable(engine: tuple[FakeEngine, DockerRuntime]) -> None:
    fake, rt = engine
    await fake.close()
    with pytest.raises(EngineUnavailable):
        await rt._engine_json("GET", "/exec/gone/json")

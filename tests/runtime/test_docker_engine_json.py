"""DockerRuntime._engine_json: the API calls made often (each exec's create and exit code,
each listing and inspection of a pod lookup or CRI list, each resize) on a connection of our
own (no SDK, no thread), against a fake engine on a unix socket. The real engine's answers go
through it in every Docker test (tests/runtime/test_exec.py, test_docker.py and the interop
tests)."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamsrv.errors import EngineUnavailable
from streamsrv.pods import LABEL_TYPE
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
        self.resizes: list[tuple[str, str, str]] = []  # (exec or containers, h, w)

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
            if status == -1:  # not HTTP
                writer.write(b"garbage\r\n\r\n")
                await writer.drain()
                return
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
        if path == f"/v{API}/exec/garbled/json":
            return -1, b""
        url = urllib.parse.urlsplit(path)
        if url.path == f"/v{API}/containers/json" and method == "GET":
            query = urllib.parse.parse_qs(url.query)
            labels = json.loads(query["filters"][0])["label"]
            if "big=1" in labels:  # over ENGINE_JSON_MAX, within ENGINE_LIST_MAX
                many = [{"Id": f"{i:064x}", "Labels": {"x": "y" * 1000}} for i in range(1500)]
                return 200, json.dumps(many).encode()
            if "odd=1" in labels:
                return 200, b'{"not": "a list"}'
            return 200, json.dumps([{"Id": "c1", "all": query["all"], "Labels": labels}]).encode()
        if url.path == f"/v{API}/containers/a%2Fb/json":
            return 404, b'{"message":"No such container: a/b"}'
        if url.path == f"/v{API}/containers/c1/json":
            return 200, b'{"Id": "c1", "State": {"Running": true}}'
        if url.path in (f"/v{API}/exec/e1/resize", f"/v{API}/containers/c1/resize"):
            query = urllib.parse.parse_qs(url.query)
            self.resizes.append((url.path.split("/")[2], query["h"][0], query["w"][0]))
            return (200 if "exec" in url.path else 201), b""
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


async def test_an_answer_that_is_not_http_is_a_backend_error(
    engine: tuple[FakeEngine, DockerRuntime],
) -> None:
    _, rt = engine
    with pytest.raises(BackendError, match="no HTTP status"):
        await rt._engine_json("GET", "/exec/garbled/json")


async def test_a_listing_asks_for_our_kind_with_every_label(
    engine: tuple[FakeEngine, DockerRuntime],
) -> None:
    _, rt = engine
    [found] = await rt._list("container", {"io.kubernetes.pod.name": "p q&r"})
    assert found["all"] == ["1"]  # stopped containers too
    assert found["Labels"] == [
        f"{LABEL_TYPE}=container",
        "io.kubernetes.pod.name=p q&r",
    ]


async def test_a_listing_may_be_larger_than_one_answer_but_bounded(
    engine: tuple[FakeEngine, DockerRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rt = engine
    assert len(await rt._list("container", {"big": "1"})) == 1500
    monkeypatch.setattr(docker_runtime, "ENGINE_LIST_MAX", 1 << 20)
    with pytest.raises(BackendError, match="too large"):
        await rt._list("container", {"big": "1"})
    with pytest.raises(BackendError, match="not a list"):
        await rt._list("container", {"odd": "1"})


async def test_an_inspection_quotes_the_id(engine: tuple[FakeEngine, DockerRuntime]) -> None:
    _, rt = engine
    assert (await rt._inspect("c1"))["State"] == {"Running": True}
    with pytest.raises(ContainerNotFound, match="No such container: a/b"):
        await rt._inspect("a/b")


async def test_resizes_take_an_empty_answer(engine: tuple[FakeEngine, DockerRuntime]) -> None:
    fake, rt = engine
    await rt._resize("exec", "e1", 24, 80)
    await rt._resize("containers", "c1", 50, 132)
    assert fake.resizes == [("exec", "24", "80"), ("containers", "50", "132")]
    with pytest.raises(BackendError, match="unexpected"):
        await rt._resize("exec", "e2", 24, 80)

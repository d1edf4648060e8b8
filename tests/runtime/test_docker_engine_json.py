"""DockerRuntime._engine_json: the API calls made often (each exec's create and exit code,
each listing and inspection of a pod lookup or CRI list, each resize) on a connection of our
own (no SDK, no thread), against a fake engine on a unix socket. The real engine's answers go
through it in every Docker test (tests/runtime/test_exec.py, test_docker.py and the interop
tests)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamsrv.errors import EngineUnavailable
from streamsrv.pods import LABEL_TYPE
from streamsrv.runtime import docker as docker_runtime
from streamsrv.runtime.base import BackendError, ContainerNotFound
from streamsrv.runtime.docker import DockerRuntime
from tests.runtime.fake_engine import FakeEngine, Request

API = "1.41"


class Engine(FakeEngine):
    """Answers by path, as the tests below ask."""

    def __init__(self) -> None:
        super().__init__()
        self.resizes: list[tuple[str, str, str]] = []  # (exec or containers, h, w)

    async def answer(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        method, path, query = request.method, request.path, request.query
        if path == "/version":
            return self.reply(writer, 200, {"ApiVersion": API, "Version": "fake"})
        if path == "/containers/c1/exec" and method == "POST":
            return self.reply(writer, 201, {"Id": "e1"})
        if path == "/containers/stopped/exec":
            return self.reply(writer, 409, {"message": "container stopped is not running"})
        if path == "/exec/gone/json":
            return self.reply(writer, 404, {"message": "No such exec instance: gone"})
        if path == "/exec/big/json":
            return self.reply(writer, 200, "x" * (docker_runtime.ENGINE_JSON_MAX + 10))
        if path == "/exec/text/json":
            return self.reply(writer, 200, raw=b"not json")
        if path == "/exec/unsized/json":  # no Content-Length: the answer ends with the connection
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
            answer = b'{"Running": false, "ExitCode": 3}'
            for piece in (answer[:5], answer[5:]):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.05)
            return False
        if path == "/exec/silent/json":  # no answer at all
            await asyncio.sleep(3600)
        if path.startswith("/exec/hangup/"):  # the connection closed with no answer
            return False
        if path == "/exec/garbled/json":  # not HTTP
            writer.write(b"garbage\r\n\r\n")
            return False
        if path == "/containers/json" and method == "GET":
            labels = json.loads(query["filters"][0])["label"]
            if "big=1" in labels:  # over ENGINE_JSON_MAX, within ENGINE_LIST_MAX
                many = [{"Id": f"{i:064x}", "Labels": {"x": "y" * 1000}} for i in range(1500)]
                return self.reply(writer, 200, many)
            if "odd=1" in labels:
                return self.reply(writer, 200, {"not": "a list"})
            return self.reply(writer, 200, [{"Id": "c1", "all": query["all"], "Labels": labels}])
        if request.head.startswith(f"GET /v{API}/containers/a%2Fb/json ".encode()):
            return self.reply(writer, 404, {"message": "No such container: a/b"})
        if path == "/containers/c1/json":
            return self.reply(writer, 200, {"Id": "c1", "State": {"Running": True}})
        if path in ("/exec/e1/resize", "/containers/c1/resize"):
            self.resizes.append((path.split("/")[1], query["h"][0], query["w"][0]))
            return self.reply(writer, 200 if path.startswith("/exec") else 201)
        return self.reply(writer, 500, {"message": "unexpected"})


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[Engine, DockerRuntime]]:
    fake = Engine()
    path = tmp_path / "docker.sock"
    await fake.start(path)
    rt = await asyncio.to_thread(DockerRuntime, base_url=f"unix://{path}", timeout=2)
    try:
        yield fake, rt
    finally:
        await rt.close()
        await fake.close()


async def test_creates_an_exec_with_an_http_1_0_request(
    engine: tuple[Engine, DockerRuntime],
) -> None:
    fake, rt = engine
    body = {"Cmd": ["true"], "Tty": False}
    assert await rt._engine_json("POST", "/containers/c1/exec", body, ok=201) == {"Id": "e1"}
    sent = fake.requests[-1]
    assert sent.head.startswith(f"POST /v{API}/containers/c1/exec HTTP/1.0\r\n".encode())
    assert sent.headers["content-type"] == "application/json"
    assert json.loads(sent.body) == body


async def test_an_answer_without_a_length_ends_at_the_close(
    engine: tuple[Engine, DockerRuntime],
) -> None:
    _, rt = engine
    assert await rt._engine_json("GET", "/exec/unsized/json") == {"Running": False, "ExitCode": 3}


async def test_the_engines_errors_keep_their_meaning(
    engine: tuple[Engine, DockerRuntime],
) -> None:
    _, rt = engine
    with pytest.raises(BackendError, match="container stopped is not running") as raised:
        await rt._engine_json("POST", "/containers/stopped/exec", {}, ok=201)
    assert not isinstance(raised.value, ContainerNotFound)
    with pytest.raises(ContainerNotFound, match="No such exec instance"):
        await rt._engine_json("GET", "/exec/gone/json")


async def test_a_bad_answer_is_a_backend_error(engine: tuple[Engine, DockerRuntime]) -> None:
    _, rt = engine
    with pytest.raises(BackendError, match="too large"):
        await rt._engine_json("GET", "/exec/big/json")
    with pytest.raises(BackendError, match="no JSON"):
        await rt._engine_json("GET", "/exec/text/json")


async def test_an_engine_that_does_not_answer_times_out(
    engine: tuple[Engine, DockerRuntime],
) -> None:
    _, rt = engine
    rt._timeout = 0.3
    with pytest.raises(BackendError, match="no answer"):
        await asyncio.wait_for(rt._engine_json("GET", "/exec/silent/json"), 30)


async def test_an_engine_gone_is_unavailable(engine: tuple[Engine, DockerRuntime]) -> None:
    fake, rt = engine
    # An engine on its way down closes connections with no answer, on either kind of request.
    with pytest.raises(EngineUnavailable, match="closed the connection before answering"):
        await rt._engine_json("GET", "/exec/hangup/json")
    with pytest.raises(EngineUnavailable, match="closed the connection before answering"):
        await rt._hijack("/exec/hangup/start", {"Detach": False})
    await fake.close()
    with pytest.raises(EngineUnavailable):
        await rt._engine_json("GET", "/exec/gone/json")


async def test_an_answer_that_is_not_http_is_a_backend_error(
    engine: tuple[Engine, DockerRuntime],
) -> None:
    _, rt = engine
    with pytest.raises(BackendError, match="no HTTP status"):
        await rt._engine_json("GET", "/exec/garbled/json")


async def test_a_listing_asks_for_our_kind_with_every_label(
    engine: tuple[Engine, DockerRuntime],
) -> None:
    _, rt = engine
    [found] = await rt._list("container", {"io.kubernetes.pod.name": "p q&r"})
    assert found["all"] == ["1"]  # stopped containers too
    assert found["Labels"] == [
        f"{LABEL_TYPE}=container",
        "io.kubernetes.pod.name=p q&r",
    ]


async def test_a_listing_may_be_larger_than_one_answer_but_bounded(
    engine: tuple[Engine, DockerRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rt = engine
    assert len(await rt._list("container", {"big": "1"})) == 1500
    monkeypatch.setattr(docker_runtime, "ENGINE_LIST_MAX", 1 << 20)
    with pytest.raises(BackendError, match="too large"):
        await rt._list("container", {"big": "1"})
    with pytest.raises(BackendError, match="not a list"):
        await rt._list("container", {"odd": "1"})


async def test_an_inspection_quotes_the_id(engine: tuple[Engine, DockerRuntime]) -> None:
    _, rt = engine
    assert (await rt._inspect("c1"))["State"] == {"Running": True}
    with pytest.raises(ContainerNotFound, match="No such container: a/b"):
        await rt._inspect("a/b")


async def test_resizes_take_an_empty_answer(engine: tuple[Engine, DockerRuntime]) -> None:
    fake, rt = engine
    await rt._resize("exec", "e1", 24, 80)
    await rt._resize("containers", "c1", 50, 132)
    assert fake.resizes == [("exec", "24", "80"), ("containers", "50", "132")]
    with pytest.raises(BackendError, match="unexpected"):
        await rt._resize("exec", "e2", 24, 80)

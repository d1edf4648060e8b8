"""The recordings API (streamsrv.recordhttp) on the served app, with the process runtime: the
token, names that are not a recording's, recording off, and a directory that hangs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streamsrv import recordhttp
from streamsrv.app import make_app
from streamsrv.podmanager import PodManager
from streamsrv.recording import RecordConfig, Recorder
from streamsrv.runtime.process import ProcessRuntime
from streamsrv.server import Config, StreamServer

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIST = "/api/streamsrv/v1/recordings"
NAME = "20261202T080000Z-0123abcd"
CAST = '{"version": 2, "width": 80, "height": 24, "timestamp": 1796198400}\n[0.1, "o", "hi"]\n'


async def served(tmp_path: Path, record: bool) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    runtime = ProcessRuntime(tmp_path / "pods")
    config = Config(record=RecordConfig(tmp_path / "rec") if record else None)
    app = make_app(PodManager(runtime), TOKEN, StreamServer(runtime, config))
    async with TestClient(TestServer(app)) as c:
        yield c
    await runtime.close()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async for c in served(tmp_path, True):
        (tmp_path / "rec" / f"{NAME}.cast").write_text(CAST)
        yield c


@pytest.fixture
async def off(tmp_path: Path) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async for c in served(tmp_path, False):
        yield c


async def test_list_and_get(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get(LIST, headers=AUTH)
    assert resp.status == 200
    doc = await resp.json()
    assert doc["enabled"] is True and [i["name"] for i in doc["items"]] == [NAME]
    resp = await client.get(f"{LIST}/{NAME}", headers=AUTH)
    assert resp.status == 200 and await resp.text() == CAST
    assert resp.headers["Content-Type"] == "application/x-asciicast"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    resp = await client.get(f"{LIST}/{NAME}.cast", headers=AUTH)  # the file's name works too
    assert resp.status == 200


@pytest.mark.parametrize("path", [LIST, f"{LIST}/{NAME}"])
async def test_the_token_is_needed(client: TestClient, path: str) -> None:  # type: ignore[type-arg]
    assert (await client.get(path)).status == 401
    assert (await client.get(path, headers={"Authorization": "Bearer nope"})).status == 401


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("..", 404),  # the client resolves these to the list's parent: no such route
        ("%2e%2e", 404),
        ("..%2f..%2fetc%2fpasswd", 400),
        ("audit-20261202.jsonl", 400),
        (NAME + "%00", 400),
        (NAME.upper(), 400),
        ("x" * 5000, 400),
        ("20261202T080000Z-ffffffff", 404),
    ],
)
async def test_bad_and_unknown_names(client: TestClient, name: str, code: int) -> None:  # type: ignore[type-arg]
    resp = await client.get(f"{LIST}/{name}", headers=AUTH)
    assert resp.status == code, await resp.text()
    body = await resp.json()
    assert body["kind"] == "Status" and body["code"] == code
    assert ("invalid recording name" in body["message"]) == (code == 400)
    assert "rec" not in resp.headers.get("Content-Disposition", "")


@pytest.mark.parametrize("limit", ["0", "-1", "x", "5001"])
async def test_bad_limits(client: TestClient, limit: str) -> None:  # type: ignore[type-arg]
    assert (await client.get(f"{LIST}?limit={limit}", headers=AUTH)).status == 400


async def test_recording_off(off: TestClient) -> None:  # type: ignore[type-arg]
    resp = await off.get(LIST, headers=AUTH)
    assert (await resp.json()) == {"enabled": False, "items": []}
    resp = await off.get(f"{LIST}/{NAME}", headers=AUTH)
    assert resp.status == 404 and "recording is off" in (await resp.json())["message"]


async def test_a_directory_that_hangs_gets_a_503_not_a_hang(
    client: TestClient,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = threading.Event()
    real = Recorder.listing

    def stuck(self: Recorder, limit: int = 500) -> list[dict[str, Any]]:
        gate.wait(30)
        return real(self, limit)

    monkeypatch.setattr(Recorder, "listing", stuck)
    monkeypatch.setattr(recordhttp, "LIST_TIMEOUT", 0.2)
    try:
        resp = await client.get(LIST, headers=AUTH)
        assert resp.status == 503 and "did not answer" in (await resp.json())["message"]
    finally:
        gate.set()
        await asyncio.sleep(0.05)

"""Hostile pod manifests on the gateway: alias bombs, huge values, unknown fields, deep nesting.

Each was tried against the landed server: a 1 KB alias bomb took it to 5.7 GB; a bomb in
``metadata.name`` answered a 289 MB 422; unknown fields were stored in the sandbox's labels.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from streamsrv.app import make_app
from streamsrv.podmanager import PodManager
from streamsrv.pods import LABEL_MANIFEST, MAX_LABEL_VALUE, parse_pod
from streamsrv.runtime.process import ProcessRuntime
from streamsrv.server import StreamServer

TOKEN = "secret"
PODS = "/api/v1/namespaces/default/pods"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], ProcessRuntime]]:
    runtime = ProcessRuntime(tmp_path / "pods")
    app = make_app(PodManager(runtime), TOKEN, StreamServer(runtime))
    async with TestClient(TestServer(app)) as client:
        yield client, runtime
    await runtime.close()


async def post(
    client: TestClient[Any, Any], body: bytes, ctype: str = "application/yaml"
) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": ctype}
    async with client.post(PODS, data=body, headers=headers) as resp:
        return resp.status, await resp.read()


def billion_laughs(levels: int = 9) -> bytes:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    return "\n".join(lines).encode() + b"\n"


async def test_an_alias_bomb_is_refused_before_anything_is_built(api) -> None:  # type: ignore[no-untyped-def]
    client, runtime = api
    bomb = billion_laughs()
    assert len(bomb) < 1024
    code, body = await post(client, bomb)
    assert code == 400, body[:300]
    assert b"aliases" in body and len(body) < 2048
    assert await runtime.list_pod_sandboxes() == []


async def test_an_alias_bomb_in_the_name_is_refused_and_not_echoed(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    manifest = (
        billion_laughs(6) + b"metadata: {name: *f}\nspec: {containers: [{name: m, image: i}]}\n"
    )
    code, body = await post(client, manifest)
    assert code == 400 and len(body) < 2048


async def test_a_huge_value_is_not_echoed_in_the_error(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    name = "x" * 900_000
    manifest = {"metadata": {"name": name}, "spec": {"containers": [{"name": "m", "image": "i"}]}}
    code, body = await post(client, json.dumps(manifest).encode(), "application/json")
    assert code == 422
    assert len(body) < 4096, len(body)  # old main repeated the whole name
    assert "must be a DNS-1123 subdomain" in json.loads(body)["message"]


async def test_deep_nesting_is_a_bad_request_not_a_crash(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    code, body = await post(client, b"[" * 200_000, "application/json")
    assert code == 400, body[:300]
    code, body = await post(client, b"a: " + b"[" * 50_000)
    assert code == 400, body[:300]


async def test_labels_are_bounded(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    manifest = {
        "metadata": {"name": "p", "labels": {"k": "v" * (MAX_LABEL_VALUE + 1)}},
        "spec": {"containers": [{"name": "m", "image": "i", "command": ["sleep", "9"]}]},
    }
    code, body = await post(client, json.dumps(manifest).encode(), "application/json")
    assert code == 422
    assert "no more than 63 characters" in json.loads(body)["message"]


async def test_unknown_fields_are_not_stored(api) -> None:  # type: ignore[no-untyped-def]
    client, runtime = api
    junk = "j" * 200_000
    manifest = {
        "metadata": {"name": "p", "junk": junk},
        "spec": {
            "junk": junk,
            "containers": [{"name": "m", "image": "i", "command": ["sleep", "100"], "junk": junk}],
        },
    }
    code, body = await post(client, json.dumps(manifest).encode(), "application/json")
    assert code == 201, body[:300]
    assert b"junk" not in body
    [sandbox] = await runtime.list_pod_sandboxes()
    stored = sandbox.pod.sandbox_labels()[LABEL_MANIFEST]
    assert "junk" not in stored and len(stored) < 1000
    # what is kept is what the model understands, and it reads back as the same pod
    assert parse_pod(json.loads(stored), uid=sandbox.pod.uid) == sandbox.pod

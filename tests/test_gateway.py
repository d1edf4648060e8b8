"""The apiserver-style gateway, driven over https against a running `streamsrv serve`."""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp
import docker
import pytest

from streamsrv.pods import LABEL_TYPE
from tests.conftest import BUSYBOX, Server, pod_manifest, sleeper, unique

pytestmark = pytest.mark.docker


class Api:
    def __init__(self, server: Server, token: str | None = "default") -> None:
        self.server = server
        self.ctx = ssl.create_default_context(cafile=str(server.ca_file))
        self.token = server.token if token == "default" else token

    async def call(
        self, method: str, path: str, *, body: Any = None, data: bytes | None = None,
        content_type: str = "application/json", headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:  # fmt: skip
        hdrs = {"Content-Type": content_type, **(headers or {})}
        if self.token is not None:
            hdrs["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data = json.dumps(body).encode()
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, self.server.url + path, data=data, headers=hdrs, ssl=self.ctx) as r,
        ):
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text


def engine_containers() -> list[str]:
    client = docker.from_env()
    try:
        return [str(c.id) for c in client.containers.list(all=True, filters={"label": LABEL_TYPE})]
    finally:
        client.close()


def assert_status(body: Any, code: int, reason: str, fragment: str = "") -> None:
    assert body["kind"] == "Status", body
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body["reason"] == reason
    assert fragment in body["message"], body["message"]


async def test_discovery_documents(server: Server) -> None:
    api = Api(server)
    status, body = await api.call("GET", "/api")
    assert status == 200 and body["kind"] == "APIVersions" and body["versions"] == ["v1"]
    status, body = await api.call("GET", "/apis")
    assert status == 200 and body["kind"] == "APIGroupList"
    status, body = await api.call("GET", "/api/v1")
    names = {r["name"] for r in body["resources"]}
    assert {"pods", "pods/exec", "pods/attach", "pods/portforward"} <= names


async def test_create_get_list_delete(server: Server) -> None:
    api = Api(server)
    name = unique("web")
    status, created = await api.call(
        "POST", "/api/v1/namespaces/default/pods", body=pod_manifest(name, sleeper())
    )
    assert status == 201, created
    assert created["metadata"]["name"] == name
    assert created["status"]["phase"] == "Running"
    [cs] = created["status"]["containerStatuses"]
    assert cs["name"] == "main" and cs["ready"] is True
    assert cs["containerID"].startswith("docker://")
    status, got = await api.call("GET", f"/api/v1/namespaces/default/pods/{name}")
    assert status == 200 and got["metadata"]["uid"] == created["metadata"]["uid"]
    status, listed = await api.call("GET", "/api/v1/namespaces/default/pods")
    assert [p["metadata"]["name"] for p in listed["items"]] == [name]
    status, listed = await api.call("GET", "/api/v1/namespaces/other/pods")
    assert listed["items"] == []
    status, listed = await api.call("GET", f"/api/v1/pods?fieldSelector=metadata.name%3D{name}")
    assert len(listed["items"]) == 1
    status, listed = await api.call("GET", "/api/v1/pods?labelSelector=test%3Dnope")
    assert listed["items"] == []
    status, _ = await api.call("DELETE", f"/api/v1/namespaces/default/pods/{name}")
    assert status == 200
    assert engine_containers() == []


async def test_yaml_body_is_accepted(server: Server) -> None:
    name = unique("yaml")
    manifest = f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  containers:
  - {{name: c, image: {BUSYBOX}, command: [sleep, "1000"], env: [{{name: A, value: b}}]}}
"""
    status, body = await Api(server).call(
        "POST", "/api/v1/namespaces/default/pods", data=manifest.encode(),
        content_type="application/yaml",
    )  # fmt: skip
    assert status == 201, body


@pytest.mark.parametrize(
    ("data", "code", "reason", "fragment"),
    [
        (b"{not json", 400, "BadRequest", "could not be decoded"),
        (b"[]", 422, "Invalid", "must be an object"),
        (json.dumps(pod_manifest("nameless", {"image": BUSYBOX})).encode(), 422, "Invalid",
         "spec.containers[0].name: Required value"),
        (json.dumps(pod_manifest("dup", sleeper("a"), sleeper("a"))).encode(), 422, "Invalid",
         'spec.containers[1].name: Duplicate value: "a"'),
        (json.dumps(pod_manifest("noimg", {"name": "a"})).encode(), 422, "Invalid",
         "spec.containers[0].image: Required value"),
        (json.dumps(pod_manifest("empty")).encode(), 422, "Invalid", "spec.containers"),
        (json.dumps(pod_manifest("Bad_Name", sleeper())).encode(), 422, "Invalid",
         "metadata.name"),
        (json.dumps(pod_manifest("unknown-image", {"name": "a", "image": "nope/nope:1"})).encode(),
         422, "Invalid", 'image "nope/nope:1" not found'),
    ],
)  # fmt: skip
async def test_bad_manifests_get_a_status_and_create_nothing(
    server: Server, data: bytes, code: int, reason: str, fragment: str
) -> None:
    status, body = await Api(server).call("POST", "/api/v1/namespaces/default/pods", data=data)
    assert status == code, body
    assert_status(body, code, reason, fragment)
    assert engine_containers() == []


async def test_malformed_yaml_is_a_bad_request(server: Server) -> None:
    status, body = await Api(server).call(
        "POST", "/api/v1/namespaces/default/pods", data=b"a: [b", content_type="application/yaml"
    )
    assert status == 400
    assert_status(body, 400, "BadRequest", "could not be decoded")
    assert engine_containers() == []


async def test_namespace_mismatch_is_refused(server: Server) -> None:
    manifest = pod_manifest("ns-mismatch", sleeper())
    manifest["metadata"]["namespace"] = "other"  # type: ignore[index]
    status, body = await Api(server).call("POST", "/api/v1/namespaces/default/pods", body=manifest)
    assert status == 422
    assert "does not match the namespace" in body["message"]
    assert engine_containers() == []


async def test_duplicate_pod_name_conflicts(server: Server) -> None:
    api = Api(server)
    name = unique("twice")
    status, _ = await api.call(
        "POST", "/api/v1/namespaces/default/pods", body=pod_manifest(name, sleeper())
    )
    assert status == 201
    before = engine_containers()
    status, body = await api.call(
        "POST", "/api/v1/namespaces/default/pods", body=pod_manifest(name, sleeper())
    )
    assert status == 409
    assert_status(body, 409, "AlreadyExists", f'pods "{name}" already exists')
    assert sorted(engine_containers()) == sorted(before)


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
async def test_wrong_or_missing_token_is_401(server: Server, token: str | None) -> None:
    api = Api(server, token=token)
    for method, path, body in [
        ("GET", "/api", None),
        ("GET", "/api/v1/namespaces/default/pods", None),
        ("POST", "/api/v1/namespaces/default/pods", pod_manifest("sneaky", sleeper())),
        ("DELETE", "/api/v1/namespaces/default/pods/x", None),
    ]:
        status, reply = await api.call(method, path, body=body)
        assert status == 401, (method, path)
        assert_status(reply, 401, "Unauthorized")
    assert engine_containers() == []


async def test_unknown_pod_is_404(server: Server) -> None:
    api = Api(server)
    status, body = await api.call("GET", "/api/v1/namespaces/default/pods/ghost")
    assert status == 404
    assert_status(body, 404, "NotFound", 'pods "ghost" not found')
    status, body = await api.call("DELETE", "/api/v1/namespaces/default/pods/ghost")
    assert status == 404
    assert_status(body, 404, "NotFound", 'pods "ghost" not found')
    status, body = await api.call("GET", "/api/v1/namespaces/default/services")
    assert status == 404 and body["kind"] == "Status"


async def test_healthz_needs_no_token(server: Server) -> None:
    status, body = await Api(server, token=None).call("GET", "/healthz")
    assert status == 200 and body == "ok"


async def test_restarted_server_lists_the_same_pods(server: Server) -> None:
    names = sorted(unique("keep") for _ in range(2))
    api = Api(server)
    uids = {}
    for n in names:
        status, body = await api.call(
            "POST", "/api/v1/namespaces/default/pods", body=pod_manifest(n, sleeper(), sleeper("b"))
        )
        assert status == 201
        uids[n] = body["metadata"]["uid"]
    ca_before = server.ca_file.read_bytes()
    server.stop()
    server.start()
    assert server.ca_file.read_bytes() == ca_before  # the CA is kept across restarts
    status, listed = await Api(server).call("GET", "/api/v1/namespaces/default/pods")
    assert status == 200
    got = {p["metadata"]["name"]: p for p in listed["items"]}
    assert sorted(got) == names
    for n in names:
        assert got[n]["metadata"]["uid"] == uids[n]
        assert got[n]["status"]["phase"] == "Running"
        assert [c["name"] for c in got[n]["spec"]["containers"]] == ["main", "b"]

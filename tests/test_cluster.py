"""Nodes, namespaces and the ephemeral-containers answer (streamsrv/cluster.py): the objects
from pure functions, then the routes on the served app with the process runtime."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streamsrv import cluster
from streamsrv.app import make_app
from streamsrv.cluster import (
    BUILTIN_NAMESPACES,
    CriNode,
    Machine,
    NodeRuntime,
    VersionedRuntime,
    kubelet_version,
    memory_ki,
    namespaces,
    node_roles,
    node_status,
    os_image,
    read_machine,
    render_node,
    runtime_nodes,
    storage_ki,
)
from streamsrv.cri.remote import CriRuntime, NodeSet
from streamsrv.errors import BackendError, EngineUnavailable
from streamsrv.podmanager import PodManager
from streamsrv.pods import parse_pod
from streamsrv.runtime.docker import DockerRuntime
from streamsrv.runtime.process import ProcessRuntime
from streamsrv.server import StreamServer

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TABLE = {**AUTH, "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
MACHINE = Machine(
    cpus=8,
    memory_ki=16384000,
    storage_ki=100000000,
    hostname="box",
    kernel_version="6.1.0-18-amd64",
    os_image="Debian GNU/Linux 12 (bookworm)",
    operating_system="linux",
    architecture="amd64",
    machine_id="m",
    boot_id="b",
)

# ------------------------------------------------------------------------------- the machine


def test_meminfo_total_in_kib() -> None:
    text = "MemTotal:       16303412 kB\nMemFree:         1234 kB\n"
    assert memory_ki(text) == 16303412
    assert memory_ki("MemFree: 1 kB\n") == 0


def test_os_image_is_the_pretty_name() -> None:
    release = 'NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
    assert os_image(release) == "Debian GNU/Linux 12 (bookworm)"
    assert os_image("NAME=Alpine\n") == "Alpine"
    assert os_image("") == "Linux"


def test_storage_is_the_file_system_of_the_state_dir(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    assert storage_ki(tmp_path) == st.f_blocks * st.f_frsize // 1024 > 0
    # Not made yet (a first start): its nearest existing parent's file system.
    assert storage_ki(tmp_path / "not" / "yet") == storage_ki(tmp_path)


def test_this_machine() -> None:
    m = read_machine(Path("/"))
    assert m.cpus == os.cpu_count()
    assert m.memory_ki > 0 and m.storage_ki > 0
    assert m.operating_system == "linux"
    assert m.kernel_version == os.uname().release
    assert m.architecture in ("amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64")


# ------------------------------------------------------------------------------- objects


def test_a_ready_node_as_the_kubelet_reports_it() -> None:
    node = render_node(
        NodeRuntime("streamsrv", "docker://24.0.7"), MACHINE, created=T0, now=T0 + timedelta(1)
    )
    meta, status = node["metadata"], node["status"]
    assert (node["apiVersion"], node["kind"], meta["name"]) == ("v1", "Node", "streamsrv")
    assert meta["creationTimestamp"] == "2024-05-01T12:00:00Z"
    assert meta["labels"]["kubernetes.io/hostname"] == "streamsrv"
    assert meta["labels"]["kubernetes.io/arch"] == "amd64"
    capacity = {
        "cpu": "8",
        "ephemeral-storage": "100000000Ki",
        "memory": "16384000Ki",
        "pods": "110",
    }
    assert status["capacity"] == status["allocatable"] == capacity
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready == [
        {
            "type": "Ready",
            "status": "True",
            "lastHeartbeatTime": "2024-05-02T12:00:00Z",
            "lastTransitionTime": "2024-05-01T12:00:00Z",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
        }
    ]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "MemoryPressure": "False",
        "DiskPressure": "False",
        "PIDPressure": "False",
        "Ready": "True",
    }
    assert status["addresses"] == [
        {"type": "InternalIP", "address": "127.0.0.1"},
        {"type": "Hostname", "address": "box"},
    ]
    info = status["nodeInfo"]
    assert info["containerRuntimeVersion"] == "docker://24.0.7"
    assert info["kubeletVersion"] == kubelet_version()
    assert (info["osImage"], info["kernelVersion"]) == (MACHINE.os_image, MACHINE.kernel_version)
    assert (info["operatingSystem"], info["architecture"]) == ("linux", "amd64")
    assert node_status(node) == "Ready"
    # The same node is the same object across restarts.
    again = render_node(NodeRuntime("streamsrv", "x://y"), MACHINE, created=T0, now=T0)
    assert again["metadata"]["uid"] == meta["uid"]


def test_a_node_whose_runtime_is_down_is_not_ready() -> None:
    node = render_node(
        NodeRuntime("n", "docker://24.0.7", down="the docker engine is unavailable"),
        MACHINE,
        created=T0,
        now=T0,
    )
    [ready] = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "KubeletNotReady")
    assert ready["message"] == "container runtime is down: the docker engine is unavailable"
    assert node_status(node) == "NotReady"
    node["spec"]["unschedulable"] = True
    assert node_status(node) == "NotReady,SchedulingDisabled"


def test_roles_come_from_labels() -> None:
    assert node_roles({"kubernetes.io/hostname": "x"}) == "<none>"
    labels = {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "worker"}
    assert node_roles(labels) == "control-plane,worker"


def test_namespaces_are_the_builtin_ones_and_those_pods_are_in() -> None:
    earlier = T0 - timedelta(hours=2)
    found = namespaces(T0, [("team-a", T0 + timedelta(1)), ("default", earlier), ("team-a", T0)])
    assert list(found) == sorted({*BUILTIN_NAMESPACES, "team-a"})
    assert found["default"] == earlier  # never younger than a pod in it
    assert found["kube-system"] == T0
    assert found["team-a"] == T0


# ------------------------------------------------------------------------------- runtimes


@dataclass
class Versioned:
    name: str
    answer: str | BackendError

    async def version(self) -> str:
        if isinstance(self.answer, BackendError):
            raise self.answer
        return self.answer


@dataclass
class FakeCriNode:
    node: str
    answer: str | BackendError

    async def identify(self) -> str:
        if isinstance(self.answer, BackendError):
            raise self.answer
        return self.answer


@dataclass
class FakeNodeSet:
    nodes: list[FakeCriNode]
    name: str = "cri"


async def test_a_local_runtime_is_one_node_named_by_its_engine(tmp_path: Path) -> None:
    assert await runtime_nodes(Versioned("docker", "24.0.7")) == [
        NodeRuntime("streamsrv", "docker://24.0.7")
    ]
    [down] = await runtime_nodes(Versioned("docker", EngineUnavailable("engine gone")))
    assert down.name == "streamsrv" and down.down == "engine gone"
    process = ProcessRuntime(tmp_path / "pods")
    try:
        assert await runtime_nodes(process) == [NodeRuntime("streamsrv", "process://streamsrv")]
    finally:
        await process.close()


async def test_each_cri_endpoint_is_a_node() -> None:
    runtime = FakeNodeSet(
        [
            FakeCriNode("node-a", "containerd 1.6.20"),
            FakeCriNode("node-b", "streamsrv 0.1.0"),
            FakeCriNode("node-c", EngineUnavailable("CRI endpoint: connection refused")),
        ]
    )
    assert await runtime_nodes(runtime) == [
        NodeRuntime("node-a", "containerd://1.6.20"),
        NodeRuntime("node-b", "streamsrv://0.1.0"),
        NodeRuntime("node-c", "cri://unknown", down="CRI endpoint: connection refused"),
    ]


async def test_the_real_runtimes_have_what_is_looked_up(tmp_path: Path) -> None:
    """The protocols stand for the real classes: a rename there must fail here."""
    assert inspect.iscoroutinefunction(DockerRuntime.version) and DockerRuntime.name == "docker"
    assert not isinstance(ProcessRuntime(tmp_path / "p"), VersionedRuntime)
    endpoint = f"unix://{tmp_path}/nothing.sock"
    nodes = NodeSet([CriRuntime(endpoint, "node-a"), CriRuntime(endpoint, "node-b")])
    try:
        assert all(isinstance(n, CriNode) for n in nodes.nodes)
        found = await asyncio.wait_for(runtime_nodes(nodes), 30)
    finally:
        await nodes.close()
    assert [n.name for n in found] == ["node-a", "node-b"]
    assert all(n.down and n.runtime_version == "cri://unknown" for n in found), found


# ------------------------------------------------------------------------------- routes


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], PodManager]]:
    runtime = ProcessRuntime(tmp_path / "pods")
    manager = PodManager(runtime)
    app = make_app(manager, TOKEN, StreamServer(runtime))
    app[cluster.STATE_DIR] = tmp_path
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, manager
    finally:
        await client.close()
        await runtime.close()


async def get(
    client: TestClient[Any, Any], path: str, headers: dict[str, str] = AUTH
) -> tuple[int, Any]:
    async with client.get(path, headers=headers) as resp:
        return resp.status, json.loads(await resp.text())


async def sleeper(manager: PodManager, name: str, namespace: str) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "main", "image": "img:1", "command": ["sleep", "60"]}]},
    }
    await manager.create(parse_pod(doc))


async def test_nodes_are_served_as_list_object_and_table(
    served: tuple[TestClient[Any, Any], PodManager], tmp_path: Path
) -> None:
    client, _ = served
    code, body = await get(client, "/api/v1/nodes")
    assert code == 200 and body["kind"] == "NodeList"
    [node] = body["items"]
    assert node["metadata"]["name"] == "streamsrv"
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"] == "process://streamsrv"
    assert node["status"]["capacity"]["ephemeral-storage"] == f"{storage_ki(tmp_path)}Ki"
    # kubeletVersion is what /version says.
    code, version = await get(client, "/version")
    assert info["kubeletVersion"] == version["gitVersion"]

    code, one = await get(client, "/api/v1/nodes/streamsrv")
    assert code == 200 and one["metadata"]["uid"] == node["metadata"]["uid"]

    code, table = await get(client, "/api/v1/nodes", TABLE)
    assert table["kind"] == "Table"
    columns = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert columns == [
        ("Name", 0), ("Status", 0), ("Roles", 0), ("Age", 0), ("Version", 0),
        ("Internal-IP", 1), ("External-IP", 1), ("OS-Image", 1), ("Kernel-Version", 1),
        ("Container-Runtime", 1),
    ]  # fmt: skip
    [row] = table["rows"]
    cells = row["cells"]
    assert cells[:3] == ["streamsrv", "Ready", "<none>"]
    assert cells[4:] == [
        version["gitVersion"], "127.0.0.1", "<none>", info["osImage"], info["kernelVersion"],
        "process://streamsrv",
    ]  # fmt: skip
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "streamsrv"
    code, table = await get(client, "/api/v1/nodes/streamsrv?includeObject=Object", TABLE)
    assert table["rows"][0]["object"]["kind"] == "Node"


async def test_unknown_node_or_namespace_is_the_apiservers_404(
    served: tuple[TestClient[Any, Any], PodManager],
) -> None:
    client, _ = served
    for path, resource in (("/api/v1/nodes/x", "nodes"), ("/api/v1/namespaces/x", "namespaces")):
        code, body = await get(client, path)
        assert code == 404
        assert body == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f'{resource} "x" not found',
            "reason": "NotFound",
            "details": {"name": "x", "kind": resource},
            "code": 404,
        }


def test_a_node_lease_is_held_by_its_node_and_renewed_now() -> None:
    lease = cluster.render_lease("streamsrv", created=T0, now=T0 + timedelta(seconds=1.25))
    assert lease["apiVersion"] == "coordination.k8s.io/v1" and lease["kind"] == "Lease"
    meta = lease["metadata"]
    assert (meta["name"], meta["namespace"]) == ("streamsrv", "kube-node-lease")
    assert meta["creationTimestamp"] == "2024-05-01T12:00:00Z"
    node = render_node(NodeRuntime("streamsrv", "docker://1"), MACHINE, created=T0, now=T0)
    [owner] = meta["ownerReferences"]
    assert owner == {
        "apiVersion": "v1", "kind": "Node", "name": "streamsrv", "uid": node["metadata"]["uid"]
    }  # fmt: skip
    assert lease["spec"] == {
        "holderIdentity": "streamsrv",
        "leaseDurationSeconds": 40,
        "renewTime": "2024-05-01T12:00:01.250000Z",  # MicroTime
    }


async def test_node_leases_are_served_for_the_nodes_only(
    served: tuple[TestClient[Any, Any], PodManager],
) -> None:
    client, _ = served
    path = "/apis/coordination.k8s.io/v1/namespaces/{}/leases/{}"
    code, lease = await get(client, path.format("kube-node-lease", "streamsrv"))
    assert code == 200 and lease["spec"]["holderIdentity"] == "streamsrv"
    for ns, name in (("kube-node-lease", "other"), ("default", "streamsrv")):
        code, body = await get(client, path.format(ns, name))
        assert code == 404
        assert body["message"] == f'leases.coordination.k8s.io "{name}" not found'
        assert body["details"] == {"name": name, "group": "coordination.k8s.io", "kind": "leases"}
    async with client.get(path.format("kube-node-lease", "streamsrv")) as resp:
        assert resp.status == 401  # behind the token, like every /api route


async def test_namespaces_follow_the_pods(
    served: tuple[TestClient[Any, Any], PodManager],
) -> None:
    client, manager = served
    code, body = await get(client, "/api/v1/namespaces")
    assert code == 200 and body["kind"] == "NamespaceList"
    assert [n["metadata"]["name"] for n in body["items"]] == sorted(BUILTIN_NAMESPACES)
    assert {n["status"]["phase"] for n in body["items"]} == {"Active"}

    await sleeper(manager, "p", "team-a")
    code, body = await get(client, "/api/v1/namespaces/team-a")
    assert code == 200
    assert body["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team-a"}
    code, table = await get(client, "/api/v1/namespaces", TABLE)
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Status", "Age"]
    rows = {r["cells"][0]: r["cells"][1:] for r in table["rows"]}
    assert set(rows) == {*BUILTIN_NAMESPACES, "team-a"}
    assert rows["team-a"][0] == "Active" and rows["team-a"][1].endswith("s")

    await manager.delete("team-a", "p", 0)
    code, _ = await get(client, "/api/v1/namespaces/team-a")
    assert code == 404


async def test_selectors(served: tuple[TestClient[Any, Any], PodManager]) -> None:
    client, _ = served
    base = "/api/v1/namespaces?"
    code, body = await get(client, base + "fieldSelector=metadata.name%3Ddefault")
    assert [n["metadata"]["name"] for n in body["items"]] == ["default"]
    code, body = await get(client, base + "fieldSelector=metadata.name!%3Ddefault")
    assert "default" not in [n["metadata"]["name"] for n in body["items"]]
    code, body = await get(client, base + "labelSelector=kubernetes.io/metadata.name%3Dkube-system")
    assert [n["metadata"]["name"] for n in body["items"]] == ["kube-system"]
    code, body = await get(client, "/api/v1/nodes?labelSelector=kubernetes.io/os%3Dwindows")
    assert body["items"] == []
    code, body = await get(client, base + "fieldSelector=status.phase%3DActive")
    assert code == 400 and "field label not supported" in body["message"]


async def test_nodes_and_namespaces_are_read_only(
    served: tuple[TestClient[Any, Any], PodManager],
) -> None:
    client, _ = served
    for method, path in (
        ("POST", "/api/v1/namespaces"),
        ("DELETE", "/api/v1/namespaces/default"),
        ("PATCH", "/api/v1/nodes/streamsrv"),
        ("DELETE", "/api/v1/nodes/streamsrv"),
    ):
        async with client.request(method, path, headers=AUTH, json={}) as resp:
            body = json.loads(await resp.text())
        assert resp.status == 405, (method, path)
        assert body["reason"] == "MethodNotAllowed" and "read-only in streamsrv" in body["message"]
    code, body = await get(client, "/api/v1/nodes?watch=1")
    assert code == 405 and "watch is not supported on nodes" in body["message"]
    async with client.get("/api/v1/nodes") as resp:  # no token
        assert resp.status == 401


async def test_ephemeral_containers_get_a_404_kubectl_words_as_disabled(
    served: tuple[TestClient[Any, Any], PodManager],
) -> None:
    """No details.name: kubectl tells this 404 from a missing pod by that, and 1.27 reads
    details without a nil check (a Status without them made it panic)."""
    client, manager = served
    path = "/api/v1/namespaces/default/pods/{}/ephemeralcontainers"
    code, body = await get(client, path.format("gone"))
    assert code == 404 and body["details"] == {"name": "gone", "kind": "pods"}

    await sleeper(manager, "target", "default")
    patch = {"spec": {"ephemeralContainers": [{"name": "debugger-x", "image": "busybox:1.36"}]}}
    headers = {**AUTH, "Content-Type": "application/strategic-merge-patch+json"}
    for method in ("PATCH", "PUT", "GET"):
        data = json.dumps(patch) if method != "GET" else None
        async with client.request(method, path.format("target"), headers=headers, data=data) as r:
            body = json.loads(await r.text())
        assert r.status == 404, method
        assert body["reason"] == "NotFound"
        assert body["details"] == {"group": "", "kind": "pods"}
        message = body["message"]
        assert "cannot add ephemeral containers" in message
        assert '"' not in message  # kubectl prints it inside quotes
        image = "busybox:1.36" if method != "GET" else "IMAGE"
        assert f"kubectl debug target -it --copy-to=target-debug --image={image}" in message


async def test_discovery_lists_what_is_served(
    served: tuple[TestClient[Any, Any], PodManager],
) -> None:
    client, _ = served
    code, body = await get(client, "/api/v1")
    by_name = {r["name"]: r for r in body["resources"]}
    assert (by_name["nodes"]["namespaced"], by_name["nodes"]["kind"]) == (False, "Node")
    assert by_name["nodes"]["shortNames"] == ["no"] and by_name["nodes"]["verbs"] == ["get", "list"]
    assert by_name["namespaces"]["shortNames"] == ["ns"]
    assert by_name["namespaces"]["namespaced"] is False
    assert by_name["events"]["shortNames"] == ["ev"]
    assert by_name["pods/ephemeralcontainers"]["kind"] == "Pod"
    assert set(by_name["pods"]["verbs"]) >= {"create", "delete", "get", "list", "patch", "watch"}
    assert {"pods/log", "pods/exec", "pods/attach", "pods/portforward"} <= set(by_name)


class _Engine:
    """A Docker engine stand-in that answers /version, and can go away."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def version(request: web.Request) -> web.Response:
            return web.json_response({"ApiVersion": "1.41", "Version": "25.0.3"})

        app = web.Application()
        app.router.add_get("/version", version)
        app.router.add_get("/v1.41/version", version)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.UnixSite(self.runner, str(self.sock)).start()

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        self.sock.unlink(missing_ok=True)


async def test_an_engine_that_goes_away_makes_the_node_not_ready(tmp_path: Path) -> None:
    engine = _Engine(tmp_path / "engine.sock")
    await engine.start()
    runtime = await asyncio.to_thread(DockerRuntime, base_url=f"unix://{engine.sock}")
    app = make_app(PodManager(runtime), TOKEN, StreamServer(runtime))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        code, node = await get(client, "/api/v1/nodes/streamsrv")
        assert code == 200
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"] == "docker://25.0.3"
        assert node_status(node) == "Ready"
        await engine.stop()
        code, node = await get(client, "/api/v1/nodes/streamsrv")
        assert code == 200
        assert node_status(node) == "NotReady"
        [ready] = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready["message"].startswith("container runtime is down: ")
        assert str(engine.sock) in ready["message"]
        # What it ran is still shown.
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"] == "docker://25.0.3"
    finally:
        await client.close()
        await runtime.close()

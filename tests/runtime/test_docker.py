"""The pod model on the real Docker engine."""

from __future__ import annotations

import asyncio

import docker
import pytest

from streamsrv.podmanager import PodManager
from streamsrv.pods import (
    LABEL_CONTAINER_NAME,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
    LABEL_TYPE,
    parse_pod,
    pod_filter,
)
from streamsrv.runtime.base import BackendError, ImageNotFound
from streamsrv.runtime.docker import DockerRuntime
from tests.conftest import BUSYBOX, PAUSE, engine_sh, pod_manifest, sleeper, unique

pytestmark = pytest.mark.docker


def sh(container_id: str, script: str) -> str:
    code, out = engine_sh(container_id, script)
    assert code == 0, out
    return out


def inspect(container_id: str) -> dict[str, object]:
    client = docker.from_env()
    try:
        return client.api.inspect_container(container_id)  # type: ignore[no-any-return]
    finally:
        client.close()


def host_ns(pid: int, kind: str) -> str:
    import os

    return os.readlink(f"/proc/{pid}/ns/{kind}")


async def test_two_containers_share_the_sandbox_namespaces(runtime: DockerRuntime) -> None:
    name = unique("pair")
    server = {
        "name": "server",
        "image": BUSYBOX,
        "command": [
            "sh",
            "-c",
            "echo shared-marker > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
        ],  # fmt: skip
    }
    spec = parse_pod(pod_manifest(name, server, sleeper("client")))
    pod = await PodManager(runtime).create(spec)
    assert pod.phase == "Running"
    server_id, client_id = pod.container_id("server"), pod.container_id("client")
    assert server_id and client_id

    # The sandbox is the pause container and owns the namespaces.
    sandbox = await asyncio.to_thread(inspect, pod.sandbox.id)
    assert sandbox["Config"]["Image"] == PAUSE  # type: ignore[index]
    assert sandbox["HostConfig"]["IpcMode"] == "shareable"  # type: ignore[index]
    assert sandbox["HostConfig"]["NetworkMode"] == "none"  # type: ignore[index]
    for cid in (server_id, client_id):
        hc = (await asyncio.to_thread(inspect, cid))["HostConfig"]
        for mode in ("NetworkMode", "IpcMode", "PidMode"):
            assert hc[mode] == f"container:{pod.sandbox.id}"  # type: ignore[index]

    # PID: the client sees the server's httpd and the pause process as PID 1.
    ps = await asyncio.to_thread(sh, client_id, "ps -o pid,args")
    assert "httpd -f -p 8080" in ps
    assert any(line.split()[:2] == ["1", "/pause"] for line in ps.splitlines()[1:])

    # Network: the client reaches the server's port on localhost.
    async def fetch() -> str:
        try:
            return await asyncio.to_thread(
                sh, client_id, "wget -qO- http://localhost:8080/index.html"
            )
        except AssertionError:
            return ""

    for _ in range(50):
        body = await fetch()
        if body:
            break
        await asyncio.sleep(0.1)
    assert body == "shared-marker\n"

    # IPC, net and PID namespace links are the sandbox's, as seen from the host's /proc.
    sandbox_pid = sandbox["State"]["Pid"]  # type: ignore[index]
    for cid in (server_id, client_id):
        pid = (await asyncio.to_thread(inspect, cid))["State"]["Pid"]  # type: ignore[index]
        for kind in ("ipc", "net", "pid"):
            assert host_ns(pid, kind) == host_ns(sandbox_pid, kind), kind
    # ... and the same from inside: both containers print the same ipc link.
    links = {
        await asyncio.to_thread(sh, c, "readlink /proc/self/ns/ipc") for c in (server_id, client_id)
    }
    assert len(links) == 1


async def test_labels_are_exactly_the_kubernetes_ones(runtime: DockerRuntime) -> None:
    name = unique("labels")
    spec = parse_pod(pod_manifest(name, sleeper("app")))
    pod = await PodManager(runtime).create(spec)
    sandbox_labels = (await asyncio.to_thread(inspect, pod.sandbox.id))["Config"]["Labels"]  # type: ignore[index]
    kube = {k: v for k, v in sandbox_labels.items() if k.startswith("io.kubernetes.")}  # type: ignore[union-attr]
    assert kube == {
        LABEL_POD_NAME: name,
        LABEL_POD_NAMESPACE: "default",
        LABEL_POD_UID: spec.uid,
        LABEL_TYPE: "podsandbox",
    }
    app_id = pod.container_id("app")
    assert app_id
    app_labels = (await asyncio.to_thread(inspect, app_id))["Config"]["Labels"]  # type: ignore[index]
    assert app_labels == {
        LABEL_POD_NAME: name,
        LABEL_POD_NAMESPACE: "default",
        LABEL_POD_UID: spec.uid,
        LABEL_CONTAINER_NAME: "app",
        LABEL_TYPE: "container",
    }


async def test_listing_filters_sandboxes_and_containers(runtime: DockerRuntime) -> None:
    manager = PodManager(runtime)
    a = await manager.create(parse_pod(pod_manifest(unique("a"), sleeper("x"), sleeper("y"))))
    b = await manager.create(parse_pod(pod_manifest(unique("b"), sleeper("z"))))

    sandboxes = await runtime.list_pod_sandboxes()
    assert {s.id for s in sandboxes} == {a.sandbox.id, b.sandbox.id}
    app_ids = {c.id for c in a.containers} | {c.id for c in b.containers}
    assert not app_ids & {s.id for s in sandboxes}

    only_a = await runtime.list_containers(pod_filter(uid=a.spec.uid))
    assert sorted(c.name for c in only_a) == ["x", "y"]
    assert {c.id for c in only_a} == {c.id for c in a.containers}
    assert a.sandbox.id not in {c.id for c in only_a}
    by_name = await runtime.list_containers(pod_filter("default", b.spec.name))
    assert [c.name for c in by_name] == ["z"]
    assert await runtime.list_pod_sandboxes(pod_filter("other-namespace")) == []


async def test_failure_half_way_leaves_no_container(runtime: DockerRuntime) -> None:
    name = unique("broken")
    broken = {"name": "broken", "image": BUSYBOX, "command": ["/no/such/binary"]}
    spec = parse_pod(pod_manifest(name, sleeper("fine"), broken))
    with pytest.raises(BackendError):
        await PodManager(runtime).create(spec)
    assert await runtime.list_pod_sandboxes(pod_filter(uid=spec.uid)) == []
    assert await runtime.list_containers(pod_filter(uid=spec.uid)) == []
    client = docker.from_env()
    leftovers = client.containers.list(all=True, filters={"label": f"{LABEL_POD_UID}={spec.uid}"})
    client.close()
    assert leftovers == []


async def test_unknown_image_creates_nothing(runtime: DockerRuntime) -> None:
    spec = parse_pod(
        pod_manifest(unique("img"), {"name": "c", "image": "streamsrv/does-not-exist:1"})
    )
    with pytest.raises(ImageNotFound):
        await PodManager(runtime).create(spec)
    assert await runtime.list_pod_sandboxes() == []


async def test_delete_stops_and_removes_the_whole_pod(runtime: DockerRuntime) -> None:
    manager = PodManager(runtime)
    pod = await manager.create(parse_pod(pod_manifest(unique("del"), sleeper(), sleeper("b"))))
    deleted = await manager.delete(pod.spec.namespace, pod.spec.name)
    assert deleted is not None
    assert await manager.get(pod.spec.namespace, pod.spec.name) is None
    assert await runtime.list_containers(pod_filter(uid=pod.spec.uid)) == []
    assert await manager.delete(pod.spec.namespace, pod.spec.name) is None


async def test_host_network_pod_uses_the_host_network(runtime: DockerRuntime) -> None:
    spec = parse_pod(pod_manifest(unique("hostnet"), sleeper(), hostNetwork=True))
    pod = await PodManager(runtime).create(spec)
    assert pod.sandbox.ip == "127.0.0.1"
    info = await asyncio.to_thread(inspect, pod.sandbox.id)
    assert info["HostConfig"]["NetworkMode"] == "host"  # type: ignore[index]
    import os

    cid = pod.container_id("main")
    assert cid
    pid = (await asyncio.to_thread(inspect, cid))["State"]["Pid"]  # type: ignore[index]
    assert host_ns(pid, "net") == os.readlink("/proc/self/ns/net")


async def test_exited_containers_give_the_pod_phase(runtime: DockerRuntime) -> None:
    manager = PodManager(runtime)
    ok = {"name": "ok", "image": BUSYBOX, "command": ["true"]}
    bad = {"name": "bad", "image": BUSYBOX, "command": ["sh", "-c", "exit 3"]}
    never = {"restartPolicy": "Never"}
    done = await manager.create(parse_pod(pod_manifest(unique("done"), ok, **never)))
    failed = await manager.create(parse_pod(pod_manifest(unique("failed"), ok, bad, **never)))

    async def phase(p):  # type: ignore[no-untyped-def]
        got = await manager.get(p.spec.namespace, p.spec.name)
        return got.phase if got else None

    for _ in range(100):
        if await phase(done) == "Succeeded" and await phase(failed) == "Failed":
            break
        await asyncio.sleep(0.1)
    assert await phase(done) == "Succeeded"
    assert await phase(failed) == "Failed"
    got = await manager.get(failed.spec.namespace, failed.spec.name)
    assert got
    statuses = {s["name"]: s for s in got.render()["status"]["containerStatuses"]}
    assert statuses["bad"]["state"]["terminated"]["exitCode"] == 3
    assert statuses["ok"]["state"]["terminated"]["exitCode"] == 0


async def test_pod_lookups_reuse_inspections_until_the_listing_changes(
    runtime: DockerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = PodManager(runtime)
    stopper = {"name": "stopper", "image": BUSYBOX, "command": ["sleep", "100000"]}
    pod = await manager.create(parse_pod(pod_manifest(unique("cache"), sleeper(), stopper)))
    inspected: list[str] = []
    real = runtime._inspect

    async def counting(cid: str) -> dict[str, object]:
        inspected.append(cid)
        return await real(cid)

    monkeypatch.setattr(runtime, "_inspect", counting)
    ns, name = pod.spec.namespace, pod.spec.name
    # Two lookups within the same second of the listing's Status text ("Up 2 seconds"):
    # retried until a pair of lookups happens without a Status change in between.
    for _ in range(20):
        await manager.get(ns, name)
        inspected.clear()
        again = await manager.get(ns, name)
        if not inspected:
            break
    assert again is not None and again.phase == "Running"
    assert inspected == []

    # The listing changes when a container stops: that one is inspected afresh.
    stopper_id = pod.container_id("stopper")
    assert stopper_id
    await asyncio.to_thread(runtime.api.kill, stopper_id)
    for _ in range(100):
        got = await manager.get(ns, name)
        assert got is not None
        state = {c.name: c for c in got.containers}["stopper"]
        if state.state == "exited":
            break
        await asyncio.sleep(0.1)
    assert state.state == "exited" and state.exit_code == 137
    assert stopper_id in inspected

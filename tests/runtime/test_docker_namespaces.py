"""PID and IPC namespaces per container and per sandbox on the real Docker engine
(ContainerSpec.pid_namespace, PodSpec.host_pid, PodSpec.host_ipc)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from typing import Any

import docker
import pytest

from streamsrv.podmanager import Pod, PodManager
from streamsrv.pods import PID_CONTAINER, PID_NODE, PID_POD, InvalidPod, PodSpec, parse_pod
from streamsrv.runtime.docker import DockerRuntime
from tests.conftest import BUSYBOX, engine_run, pod_manifest, unique

pytestmark = pytest.mark.docker


def inspect(container_id: str) -> dict[str, Any]:
    client = docker.from_env()
    try:
        return client.api.inspect_container(container_id)  # type: ignore[no-any-return]
    finally:
        client.close()


def ns_link(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


async def host_pid_of(container_id: str) -> int:
    return int((await asyncio.to_thread(inspect, container_id))["State"]["Pid"])


def two_containers(
    marker: str, pid_b: str = PID_POD, **spec: Any
) -> tuple[PodSpec, dict[str, Any]]:
    a = {"name": "a", "image": BUSYBOX, "command": ["sh", "-c", f"exec sleep {marker}"]}
    b = {"name": "b", "image": BUSYBOX, "command": ["sleep", "100000"]}
    pod = parse_pod(pod_manifest(unique("ns"), a, b, **spec))
    first, second = pod.containers
    return dataclasses.replace(
        pod, containers=(first, dataclasses.replace(second, pid_namespace=pid_b))
    ), spec


def marker() -> str:
    return str(200000 + uuid.uuid4().int % 700000)


async def create(runtime: DockerRuntime, pod: PodSpec) -> tuple[Pod, str, str]:
    made = await PodManager(runtime).create(pod)
    assert made.phase == "Running"
    a, b = made.container_id("a"), made.container_id("b")
    assert a and b
    return made, a, b


async def test_pod_containers_see_each_others_processes(runtime: DockerRuntime) -> None:
    mark = marker()
    pod, _ = two_containers(mark)
    made, a, b = await create(runtime, pod)
    assert f"sleep {mark}" in await engine_run(b, "ps -o args")
    hc = (await asyncio.to_thread(inspect, b))["HostConfig"]
    assert hc["PidMode"] == f"container:{made.sandbox.id}"
    assert ns_link(await host_pid_of(b), "pid") == ns_link(await host_pid_of(a), "pid")


async def test_a_container_namespace_hides_the_pods_processes(runtime: DockerRuntime) -> None:
    mark = marker()
    pod, _ = two_containers(mark, pid_b=PID_CONTAINER)
    made, a, b = await create(runtime, pod)
    ps = await engine_run(b, "ps -o pid,args")
    assert f"sleep {mark}" not in ps
    assert "/pause" not in ps
    # its own namespace: its command is PID 1 there
    assert any(line.split()[:2] == ["1", "sleep"] for line in ps.splitlines()[1:]), ps
    hc = (await asyncio.to_thread(inspect, b))["HostConfig"]
    assert hc["PidMode"] == ""
    assert ns_link(await host_pid_of(b), "pid") != ns_link(await host_pid_of(a), "pid")
    # ... while IPC and the network are still the pod's
    assert hc["IpcMode"] == hc["NetworkMode"] == f"container:{made.sandbox.id}"
    for kind in ("ipc", "net"):
        assert ns_link(await host_pid_of(b), kind) == ns_link(await host_pid_of(a), kind)
    # and the pod's first container still sees the pause process and not b's sleep alone
    seen_by_a = await engine_run(a, "ps -o args")
    assert "/pause" in seen_by_a


@pytest.mark.parametrize("pid_b", [PID_POD, PID_CONTAINER])
async def test_ipc_and_localhost_are_shared(runtime: DockerRuntime, pid_b: str) -> None:
    port = 20000 + uuid.uuid4().int % 20000
    name = f"shm-{uuid.uuid4().hex[:8]}"
    web = {
        "name": "a",
        "image": BUSYBOX,
        "command": [
            "sh",
            "-c",
            f"mkdir -p /tmp/w && echo hello-{port} > /tmp/w/index.html && "
            f"exec httpd -f -p 127.0.0.1:{port} -h /tmp/w",
        ],
    }
    pod = parse_pod(
        pod_manifest(
            unique("ipc"), web, {"name": "b", "image": BUSYBOX, "command": ["sleep", "100000"]}
        )
    )
    pod = dataclasses.replace(
        pod,
        containers=(pod.containers[0], dataclasses.replace(pod.containers[1], pid_namespace=pid_b)),
    )
    _, a, b = await create(runtime, pod)
    # IPC: /dev/shm is the pod's (the pause container's, shareable) in both
    await engine_run(a, f"echo shared > /dev/shm/{name}")
    assert await engine_run(b, f"cat /dev/shm/{name}") == "shared\n"
    # localhost: b reaches a's listener on 127.0.0.1
    got = ""
    for _ in range(100):
        try:
            got = await engine_run(b, f"wget -qO- http://127.0.0.1:{port}/index.html")
            break
        except AssertionError:
            await asyncio.sleep(0.1)
    assert got == f"hello-{port}\n"


async def test_host_pid_pod(runtime: DockerRuntime) -> None:
    mark = marker()
    pod, _ = two_containers(mark, hostPID=True)
    assert pod.host_pid and [c.pid_namespace for c in pod.containers] == [PID_NODE, PID_POD]
    made, a, b = await create(runtime, pod)
    host = ns_link(os.getpid(), "pid")
    sandbox = await asyncio.to_thread(inspect, made.sandbox.id)
    assert sandbox["HostConfig"]["PidMode"] == "host"
    assert ns_link(sandbox["State"]["Pid"], "pid") == host
    assert (await asyncio.to_thread(inspect, a))["HostConfig"]["PidMode"] == "host"
    for cid in (a, b):  # "node" directly, "pod" through the sandbox: both the host's
        assert ns_link(await host_pid_of(cid), "pid") == host
    # the host's processes are visible: this test's own python, by its pid
    assert f"{os.getpid()} " in await engine_run(b, "ps -o pid,args")
    # the IPC namespace is still the pod's own
    assert sandbox["HostConfig"]["IpcMode"] == "shareable"
    assert ns_link(await host_pid_of(a), "ipc") != ns_link(os.getpid(), "ipc")


async def test_host_ipc_pod(runtime: DockerRuntime) -> None:
    pod, _ = two_containers(marker(), hostIPC=True)
    assert pod.host_ipc and not pod.host_pid
    made, a, b = await create(runtime, pod)
    host = ns_link(os.getpid(), "ipc")
    sandbox = await asyncio.to_thread(inspect, made.sandbox.id)
    assert sandbox["HostConfig"]["IpcMode"] == "host"
    assert sandbox["HostConfig"]["PidMode"] == ""
    for cid in (a, b):
        hc = (await asyncio.to_thread(inspect, cid))["HostConfig"]
        assert hc["IpcMode"] == "host"
        assert hc["PidMode"] == f"container:{made.sandbox.id}"
        assert ns_link(await host_pid_of(cid), "ipc") == host
    assert ns_link(await host_pid_of(a), "pid") != ns_link(os.getpid(), "pid")


async def test_a_host_pid_pod_round_trips_through_the_engine(runtime: DockerRuntime) -> None:
    pod, _ = two_containers(marker(), hostPID=True, hostIPC=True)
    made, _, _ = await create(runtime, pod)
    [found] = [s for s in await runtime.list_pod_sandboxes() if s.id == made.sandbox.id]
    assert found.pod.host_pid and found.pod.host_ipc
    assert [c.pid_namespace for c in found.pod.containers] == [PID_NODE, PID_NODE]


async def test_an_unknown_pid_namespace_is_refused(runtime: DockerRuntime) -> None:
    pod, _ = two_containers(marker(), pid_b="target")
    with pytest.raises(
        InvalidPod, match=r'spec.containers\[1\].pidNamespace: Unsupported value: "target"'
    ):
        await PodManager(runtime).create(pod)
    assert await runtime.list_pod_sandboxes() == []

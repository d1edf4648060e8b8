"""The process runtime and PID/IPC namespaces: what it already is is accepted, a PID namespace
of a container's own is refused (a process cannot be isolated)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamsrv.podmanager import PodManager
from streamsrv.pods import PID_CONTAINER, PID_NODE, InvalidPod, PodSpec, parse_pod
from streamsrv.runtime.process import ProcessRuntime
from tests.conftest import unique


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    runtime = ProcessRuntime(tmp_path / "pods")
    yield runtime
    await runtime.close()


def pod(pid_namespace: str | None = None, spec: dict[str, bool] | None = None) -> PodSpec:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": unique("ns")},
        "spec": {
            "containers": [{"name": "a", "image": "i", "command": ["sleep", "100"]}],
            **(spec or {}),
        },
    }
    made = parse_pod(doc)
    if pid_namespace is None:
        return made
    c = dataclasses.replace(made.containers[0], pid_namespace=pid_namespace)
    return dataclasses.replace(made, containers=(c,))


@pytest.mark.parametrize(
    "spec", [{}, {"hostPID": True}, {"hostIPC": True}, {"hostPID": True, "hostIPC": True}]
)
async def test_host_namespaces_are_what_a_process_has(
    rt: ProcessRuntime, spec: dict[str, bool]
) -> None:
    made = await PodManager(rt).create(pod(spec=spec))
    assert made.phase == "Running"
    assert made.spec.host_pid == spec.get("hostPID", False)
    assert made.spec.host_ipc == spec.get("hostIPC", False)


async def test_node_pid_namespace_is_served(rt: ProcessRuntime) -> None:
    made = await PodManager(rt).create(pod(PID_NODE))
    assert made.phase == "Running"


async def test_an_own_pid_namespace_is_refused_before_anything_runs(rt: ProcessRuntime) -> None:
    spec = pod(PID_CONTAINER)
    with pytest.raises(InvalidPod) as err:
        await PodManager(rt).create(spec)
    [(field, message)] = err.value.causes
    assert field == "spec.containers[0].pidNamespace"
    assert message.startswith("Forbidden: the process runtime cannot give a container a PID")
    assert await rt.list_pod_sandboxes() == []
    # a container made on its own (CRI's CreateContainer) is refused the same way
    plain = pod()
    sandbox = await rt.run_pod_sandbox(plain)
    own = dataclasses.replace(plain.containers[0], name="own", pid_namespace=PID_CONTAINER)
    with pytest.raises(InvalidPod, match=r'spec.containers\["own"\].pidNamespace: Forbidden'):
        await rt.create_container(sandbox, plain, own)
    assert await rt.list_containers() == []
    with pytest.raises(InvalidPod, match="Unsupported value"):
        await rt.create_container(sandbox, plain, dataclasses.replace(own, pid_namespace="x"))

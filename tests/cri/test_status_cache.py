"""The gateway's CRI runtime keeps a status while its object stays in the state it was read in
(streamsrv.cri.remote.StatusCache, docs/cri.md "What the gateway asks a node"): a pod lookup
costs the node a list, not a status per container. Checked against containerd's CRI plugin
(the Go reference) and `streamsrv cri` on the process runtime: the answers with the cache are
the answers without it, and a change of state is asked for again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from streamsrv.cri import api_pb2 as pb
from streamsrv.cri.remote import CriRuntime, StatusCache
from streamsrv.podmanager import Pod, PodManager
from streamsrv.pods import ContainerState, parse_pod
from tests.conftest import require_docker
from tests.cri_env import CriTarget, cri_target

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


# ------------------------------------------------------------------------------- the cache


def test_a_status_is_kept_for_its_state_only() -> None:
    cache: StatusCache[str] = StatusCache()
    cache.put("c1", pb.CONTAINER_RUNNING, "running")
    assert cache.get("c1", pb.CONTAINER_RUNNING) == "running"
    assert cache.get("c1", pb.CONTAINER_EXITED) is None  # it changed: ask again
    assert cache.get("c2", pb.CONTAINER_RUNNING) is None
    cache.put("c1", pb.CONTAINER_EXITED, "exited")
    assert cache.get("c1", pb.CONTAINER_RUNNING) is None
    assert cache.get("c1", pb.CONTAINER_EXITED) == "exited"
    cache.forget("c1")
    assert cache.get("c1", pb.CONTAINER_EXITED) is None and len(cache) == 0


def test_the_cache_is_bounded_and_an_unfiltered_list_prunes_it() -> None:
    cache: StatusCache[int] = StatusCache(limit=3)
    for i in range(5):
        cache.put(f"c{i}", pb.CONTAINER_RUNNING, i)
    assert len(cache) == 3
    assert [cache.get(f"c{i}", pb.CONTAINER_RUNNING) for i in range(5)] == [None, None, 2, 3, 4]
    cache.keep_only({"c3", "gone-before"})
    assert len(cache) == 1 and cache.get("c3", pb.CONTAINER_RUNNING) == 3


# ------------------------------------------------------------------------------- on a node


@pytest.fixture(scope="module", params=["containerd", "process"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CriTarget]:
    require_docker()
    with cri_target(request.param, tmp_path_factory.mktemp(f"cache-{request.param}")) as t:
        yield t


class Counted(CriRuntime):
    """A CriRuntime that counts the calls its client makes, by method."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint, "node-a")
        self.calls: Counter[str] = Counter()
        call = self.client.call

        async def counted(service: str, method: str, *args: Any, **kw: Any) -> Any:
            self.calls[method] += 1
            return await call(service, method, *args, **kw)

        self.client.call = counted  # type: ignore[method-assign]


@pytest.fixture
async def runtime(target: CriTarget) -> AsyncIterator[Counted]:
    rt = Counted(target.endpoint)
    try:
        yield rt
    finally:
        await rt.close()


def manifest(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"cache-{uuid.uuid4().hex[:8]}", "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "runs", "image": image, "command": ["sleep", "600"]},
                {"name": "ends", "image": image, "command": ["sh", "-c", "exit 3"]},
            ],
        },
    }


async def until(manager: PodManager, ns: str, name: str, want: Any) -> Pod:
    deadline = time.monotonic() + 120
    while True:
        pod = await manager.get(ns, name)
        if pod is not None and want(pod):
            return pod
        assert time.monotonic() < deadline, pod and pod.render()["status"]
        await asyncio.sleep(0.2)


def of(pod: Pod | None, name: str) -> ContainerState:
    found = pod.container(name) if pod is not None else None
    assert found is not None, (name, pod)
    return found


def view(pod: Pod) -> dict[str, Any]:
    """What a lookup gave: the pod as the gateway renders it, and each container's state."""
    return {
        "pod": pod.render(),
        "containers": sorted(
            (c.name, c.id, c.state, c.exit_code, c.started_at, c.finished_at, c.reason, c.image)
            for c in pod.containers
        ),
        "ip": pod.sandbox.ip,
    }


async def test_a_lookup_asks_for_statuses_only_when_a_state_changes(
    target: CriTarget, runtime: Counted
) -> None:
    manager = PodManager(runtime)
    spec = parse_pod(manifest(target.image))
    await manager.create(spec)
    ns, name = spec.namespace, spec.name
    try:
        pod = await until(
            manager,
            ns,
            name,
            lambda p: (
                p.container("runs") is not None
                and p.container("runs").state == "running"
                and p.container("ends") is not None
                and p.container("ends").state == "exited"
            ),
        )
        assert of(pod, "ends").exit_code == 3

        runtime.calls.clear()
        cached = await manager.get(ns, name)
        assert cached is not None
        assert runtime.calls == Counter(ListPodSandbox=1, ListContainers=1), runtime.calls

        # the same answer as a runtime that has seen nothing before
        fresh = CriRuntime(target.endpoint, "node-a")
        try:
            uncached = await PodManager(fresh).get(ns, name)
        finally:
            await fresh.close()
        assert uncached is not None and view(cached) == view(uncached)

        # a container that stops is asked for again, once
        await runtime.stop_container(pod.container_id("runs") or "", 0)
        runtime.calls.clear()
        stopped = await manager.get(ns, name)
        assert of(stopped, "runs").state == "exited"
        assert of(stopped, "runs").finished_at is not None
        assert runtime.calls["ContainerStatus"] == 1, runtime.calls
        runtime.calls.clear()
        await manager.get(ns, name)
        assert runtime.calls == Counter(ListPodSandbox=1, ListContainers=1), runtime.calls
    finally:
        gone = await manager.delete(ns, name, grace=0)
    assert gone is not None
    ids = [c.id for c in gone.containers]
    # removed through this runtime: forgotten; and an unfiltered list keeps only what it saw
    assert ids and not any(i in runtime.container_statuses for i in ids)
    assert gone.sandbox.id not in runtime.sandbox_ips
    listed = {c.id for c in await runtime.list_containers()}
    assert len(runtime.container_statuses) <= len(listed)

"""ListPodSandbox and ListContainers of CriService on a fake runtime (docs/cri.md, "List
calls"): the filters, the order, each item the same as the object's status says, and the
listings kept per record: read again for a new config, bounded by the records.

The same calls against real runtimes and containerd's CRI plugin are in test_scenarios.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from streamsrv.cri import api_pb2 as pb
from streamsrv.cri.server import CriService
from streamsrv.cri.store import ContainerRecord, SandboxRecord, Store
from streamsrv.pods import LABEL_CONTAINER_NAME, ContainerState, SandboxState, pod_filter

NOW = datetime(2026, 12, 5, 7, 0, tzinfo=UTC)


class Runtime:
    """What the list calls ask of a runtime: the states of its sandboxes and containers."""

    name = "fake"

    def __init__(self) -> None:
        self.ready: dict[str, bool] = {}
        self.states: dict[str, str] = {}

    async def list_pod_sandboxes(self, labels: Any = None) -> list[SandboxState]:
        return [
            SandboxState(id=sid, pod=cast(Any, None), ready=ready, created_at=NOW, ip="", node="")
            for sid, ready in self.ready.items()
        ]

    async def list_containers(self, labels: Any = None) -> list[ContainerState]:
        return [
            ContainerState(
                id=cid,
                name=cid,
                image="busybox",
                image_id="sha256:" + "0" * 64,
                state=state,
                exit_code=0 if state == "exited" else None,
                started_at=NOW,
                finished_at=NOW if state == "exited" else None,
                reason="",
                runtime="fake",
                labels={},
                log_path="",
            )
            for cid, state in self.states.items()
        ]


def sandbox_config(pod: str) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=pod, namespace="default", uid=f"uid-{pod}"),
        labels=pod_filter("default", pod, f"uid-{pod}"),
        annotations={"note": pod},
    )


def container_config(pod: str, name: str) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=1),
        image=pb.ImageSpec(image="busybox"),
        labels={**pod_filter("default", pod, f"uid-{pod}"), LABEL_CONTAINER_NAME: name},
        annotations={"of": name},
    )


@pytest.fixture
def service(tmp_path: Path) -> tuple[CriService, Runtime]:
    """Pods a (ready; containers a1 running, a2 exited) and b (stopped; b1 created, b2 gone
    from the runtime), made in the order b, a, so that listing by creation time is visible."""
    runtime = Runtime()
    store = Store(tmp_path / "cri")
    svc = CriService(cast(Any, runtime), cast(Any, None), cast(Any, None), store)
    made = 100
    for pod, ready, containers in (
        ("b", True, [("b1", "created"), ("b2", None)]),
        ("a", True, [("a1", "running"), ("a2", "exited")]),
    ):
        sid = f"sandbox-{pod}"
        made += 1
        store.put_sandbox(SandboxRecord(sid, sandbox_config(pod).SerializeToString(), made))
        runtime.ready[sid] = ready
        for name, state in containers:
            cid = f"container-{name}"
            made += 1
            config = container_config(pod, name).SerializeToString()
            store.put_container(ContainerRecord(cid, sid, config, made, image_ref="ref-" + name))
            if state is not None:
                runtime.states[cid] = state
    store.sandboxes["sandbox-b"].stopped = True
    return svc, runtime


async def sandboxes(svc: CriService, **filters: Any) -> list[pb.PodSandbox]:
    req = pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**filters))
    return list((await svc.list_pod_sandbox(req)).items)


async def containers(svc: CriService, **filters: Any) -> list[pb.Container]:
    req = pb.ListContainersRequest(filter=pb.ContainerFilter(**filters))
    return list((await svc.list_containers(req)).containers)


async def test_the_filters_and_the_order(service: tuple[CriService, Runtime]) -> None:
    svc, _ = service
    assert [s.id for s in await sandboxes(svc)] == ["sandbox-b", "sandbox-a"]
    assert [s.state for s in await sandboxes(svc)] == [pb.SANDBOX_NOTREADY, pb.SANDBOX_READY]
    ready = pb.PodSandboxStateValue(state=pb.SANDBOX_READY)
    assert [s.id for s in await sandboxes(svc, state=ready)] == ["sandbox-a"]
    assert [s.id for s in await sandboxes(svc, id="sandbox-a")] == ["sandbox-a"]
    assert await sandboxes(svc, id="sandbox-") == []  # a prefix of two ids names neither
    assert await sandboxes(svc, id="nothing") == []
    assert [s.id for s in await sandboxes(svc, label_selector=pod_filter("default", "a"))] == [
        "sandbox-a"
    ]
    assert await sandboxes(svc, label_selector={"io.kubernetes.pod.name": "c"}) == []

    assert [c.id for c in await containers(svc)] == [
        "container-b1",
        "container-b2",
        "container-a1",
        "container-a2",
    ]
    assert [c.state for c in await containers(svc)] == [
        pb.CONTAINER_CREATED,
        pb.CONTAINER_UNKNOWN,  # its record outlived the runtime's container
        pb.CONTAINER_RUNNING,
        pb.CONTAINER_EXITED,
    ]
    running = pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)
    assert [c.id for c in await containers(svc, state=running)] == ["container-a1"]
    assert [c.id for c in await containers(svc, pod_sandbox_id="sandbox-a")] == [
        "container-a1",
        "container-a2",
    ]
    assert [c.id for c in await containers(svc, id="container-a2")] == ["container-a2"]
    assert await containers(svc, pod_sandbox_id="nothing") == []
    one = {**pod_filter("default", "b"), LABEL_CONTAINER_NAME: "b2"}
    assert [c.id for c in await containers(svc, label_selector=one)] == ["container-b2"]


async def test_each_item_says_what_the_status_says(service: tuple[CriService, Runtime]) -> None:
    svc, _ = service
    for item in await sandboxes(svc):
        req = pb.PodSandboxStatusRequest(pod_sandbox_id=item.id)
        status = (await svc.pod_sandbox_status(req)).status
        assert item == pb.PodSandbox(
            id=status.id,
            metadata=status.metadata,
            state=status.state,
            created_at=status.created_at,
            labels=status.labels,
            annotations=status.annotations,
            runtime_handler=status.runtime_handler,
        )
    for c in await containers(svc):
        cstatus = (await svc.container_status(pb.ContainerStatusRequest(container_id=c.id))).status
        assert c == pb.Container(
            id=cstatus.id,
            pod_sandbox_id=svc.store.containers[c.id].sandbox_id,
            metadata=cstatus.metadata,
            image=cstatus.image,
            image_ref=cstatus.image_ref,
            state=cstatus.state,
            created_at=cstatus.created_at,
            labels=cstatus.labels,
            annotations=cstatus.annotations,
        )


async def test_a_state_that_changes_is_listed_as_it_is_now(
    service: tuple[CriService, Runtime],
) -> None:
    svc, runtime = service
    assert (await containers(svc, id="container-a1"))[0].state == pb.CONTAINER_RUNNING
    runtime.states["container-a1"] = "exited"
    runtime.ready["sandbox-a"] = False
    assert (await containers(svc, id="container-a1"))[0].state == pb.CONTAINER_EXITED
    assert (await sandboxes(svc, id="sandbox-a"))[0].state == pb.SANDBOX_NOTREADY
    # and a listed item is a copy: changing it changes nothing that is kept
    item = (await containers(svc, id="container-a2"))[0]
    item.labels["extra"] = "x"
    assert "extra" not in (await containers(svc, id="container-a2"))[0].labels


async def test_a_record_with_a_new_config_is_read_again(
    service: tuple[CriService, Runtime],
) -> None:
    svc, _ = service
    assert (await containers(svc, id="container-a1"))[0].annotations["of"] == "a1"
    old = svc.store.containers["container-a1"]
    config = container_config("a", "a1")
    config.annotations["of"] = "replaced"
    config.labels["new"] = "label"
    svc.store.put_container(
        ContainerRecord(old.id, old.sandbox_id, config.SerializeToString(), old.created_at)
    )
    (item,) = await containers(svc, id="container-a1")
    assert item.annotations["of"] == "replaced" and item.image_ref == ""
    assert [c.id for c in await containers(svc, label_selector={"new": "label"})] == [
        "container-a1"
    ]


async def test_listings_of_records_that_are_gone_are_dropped(
    service: tuple[CriService, Runtime],
) -> None:
    svc, runtime = service
    for i in range(300):  # containers made, listed and removed, one after the other
        cid = f"short-{i}"
        config = container_config("a", cid).SerializeToString()
        svc.store.put_container(ContainerRecord(cid, "sandbox-a", config, 1000 + i))
        runtime.states[cid] = "exited"
        assert [c.id for c in await containers(svc, id=cid)] == [cid]
        svc.store.drop_container(cid)
        del runtime.states[cid]
        # bounded by the records there were when it was last added to (one more than now)
        kept = svc._container_listings  # noqa: SLF001 - the bound is what is tested
        assert len(kept) <= 2 * (len(svc.store.containers) + 1) + 64 + 1
    assert len(await containers(svc)) == 4

"""The gateway's pod controller on the (real) process runtime: restart policies, back-off,
restart counts and the previous instance's log, events, and what watchers are told."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from streamsrv import controller as controller_mod
from streamsrv.controller import PodController
from streamsrv.events import EventStore
from streamsrv.podmanager import Pod, PodManager
from streamsrv.pods import parse_pod
from streamsrv.runtime.process import ProcessRuntime
from streamsrv.watch import Hub
from tests.conftest import unique

HANG = 30.0  # a generous bound on anything the controller should do within a second or two


@pytest.fixture
async def setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[PodManager, PodController, Hub]]:
    monkeypatch.setattr(controller_mod, "BACKOFF_INITIAL", 0.6)
    monkeypatch.setattr(controller_mod, "BACKOFF_MAX", 1.2)
    runtime = ProcessRuntime(tmp_path / "pods")
    hub = Hub()
    manager = PodManager(runtime, tmp_path / "state", EventStore(hub))
    ctl = PodController(manager, hub, interval=0.1)
    ctl.start()
    yield manager, ctl, hub
    await ctl.stop()
    for pod in await manager.list():
        await manager.delete(pod.spec.namespace, pod.spec.name, 0)
    await runtime.close()


def manifest(script: str, policy: str | None) -> Any:
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "none", "command": ["sh", "-c", script]}]
    }
    if policy:
        spec["restartPolicy"] = policy
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": unique("ctl")}, "spec": spec}


async def until(
    ctl: PodController, name: str, check: Callable[[Pod, dict[str, Any]], bool]
) -> tuple[Pod, dict[str, Any]]:
    async with asyncio.timeout(HANG):
        while True:
            found = await ctl.sync("default", name)
            if found:
                obj = ctl.render(found[0])
                if check(found[0], obj):
                    return found[0], obj
            await asyncio.sleep(0.05)


def status(obj: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = obj["status"]["containerStatuses"][0]
    return s


async def test_always_restarts_with_backoff_and_keeps_the_last_instance(
    setup: tuple[PodManager, PodController, Hub],
) -> None:
    manager, ctl, _ = setup
    spec = parse_pod(manifest("echo run; exit 3", None))
    assert spec.restart_policy == "Always"
    await manager.create(spec)
    # Back-off shows as CrashLoopBackOff with the last run as lastState.
    pod, obj = await until(
        ctl,
        spec.name,
        lambda p, o: (
            status(o)["restartCount"] >= 2
            and "waiting" in status(o)["state"]
            and status(o)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        ),
    )
    assert obj["status"]["phase"] == "Running"  # a container that will run again
    assert status(obj)["lastState"]["terminated"]["exitCode"] == 3
    # Each instance wrote its own log file; the previous one is kept, older ones removed.
    current = pod.container("main")
    assert current is not None and current.attempt >= 2
    assert pod.previous["main"].attempt == current.attempt - 1
    assert not pod.stale
    for attempt in (current.attempt, current.attempt - 1):
        path = manager.log_path(spec, "main", attempt)
        assert path is not None and b" stdout F run\n" in path.read_bytes()
    reasons = [e["reason"] for e in manager.events.list("default")]  # type: ignore[union-attr]
    for reason in ("Scheduled", "Pulled", "Created", "Started", "BackOff"):
        assert reason in reasons, reasons


async def test_on_failure_stops_restarting_after_a_success(
    setup: tuple[PodManager, PodController, Hub], tmp_path: Path
) -> None:
    manager, ctl, _ = setup
    marker = tmp_path / "ran-once"
    script = f"if [ -e {marker} ]; then exit 0; fi; touch {marker}; exit 1"
    spec = parse_pod(manifest(script, "OnFailure"))
    await manager.create(spec)
    _, obj = await until(ctl, spec.name, lambda p, o: o["status"]["phase"] == "Succeeded")
    assert status(obj)["restartCount"] == 1
    assert status(obj)["state"]["terminated"]["exitCode"] == 0
    await asyncio.sleep(0.5)  # and it stays so
    _, obj = await until(ctl, spec.name, lambda p, o: True)
    assert status(obj)["restartCount"] == 1


@pytest.mark.parametrize("code", [0, 4])
async def test_never_leaves_the_container_ended(
    setup: tuple[PodManager, PodController, Hub], code: int
) -> None:
    manager, ctl, _ = setup
    spec = parse_pod(manifest(f"exit {code}", "Never"))
    await manager.create(spec)
    want = "Failed" if code else "Succeeded"
    await until(ctl, spec.name, lambda p, o: o["status"]["phase"] == want)
    await asyncio.sleep(0.5)
    _, obj = await until(ctl, spec.name, lambda p, o: True)
    assert obj["status"]["phase"] == want
    assert status(obj)["restartCount"] == 0


async def test_watchers_see_each_change_in_order(
    setup: tuple[PodManager, PodController, Hub],
) -> None:
    manager, ctl, hub = setup
    start = hub.rv
    spec = parse_pod(manifest("sleep 0.3; exit 0", "Never"))
    await manager.create(spec)
    await until(ctl, spec.name, lambda p, o: o["status"]["phase"] == "Succeeded")
    await manager.delete("default", spec.name, 0)
    await ctl.sync("default", spec.name)
    changes = hub.since(start, "Pod", lambda c: c.name == spec.name)
    types = [c.type for c in changes]
    assert types[0] == "ADDED" and types[-1] == "DELETED", types
    assert "MODIFIED" in types
    versions = [c.rv for c in changes]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    phases = [c.obj["status"]["phase"] for c in changes]
    assert phases[-2:] == ["Succeeded", "Succeeded"], phases
    for c in changes:
        assert c.obj["metadata"]["resourceVersion"] == str(c.rv)


async def test_a_pod_deleted_while_backing_off_is_not_made_again(
    setup: tuple[PodManager, PodController, Hub],
) -> None:
    manager, ctl, _ = setup
    spec = parse_pod(manifest("exit 1", "Always"))
    await manager.create(spec)
    await until(ctl, spec.name, lambda p, o: status(o)["restartCount"] >= 1)
    await manager.delete("default", spec.name, 0)
    await asyncio.sleep(1.5)  # past the back-off: nothing may come back
    assert await manager.list("default", spec.name) == []
    assert not [c for c in await manager.runtime.list_containers() if c.pod_uid == spec.uid]


class FlakyRuntime(ProcessRuntime):
    """A process runtime whose sandboxes cannot be made while ``down`` (an engine going away
    again while the controller makes a pod's sandbox anew)."""

    down = False

    async def run_pod_sandbox(self, pod: Any) -> str:
        if self.down:
            from streamsrv.errors import EngineUnavailable

            raise EngineUnavailable("the engine went away")
        return await super().run_pod_sandbox(pod)


async def test_a_sandbox_made_again_never_loses_the_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = FlakyRuntime(tmp_path / "pods")
    hub = Hub()
    manager = PodManager(runtime, tmp_path / "state", EventStore(hub))
    ctl = PodController(manager, hub, interval=0.1)
    try:
        spec = parse_pod(manifest("echo up; exec sleep 1000", None))
        made = await manager.create(spec)
        runtime.down = True
        await runtime.stop_pod_sandbox(made.sandbox.id)  # as an engine restart leaves it
        ctl.start()
        await asyncio.sleep(1.0)  # several tries, each failing
        pods = await manager.list("default", spec.name)
        assert len(pods) == 1 and pods[0].sandbox.id == made.sandbox.id, pods
        runtime.down = False
        pod, obj = await until(
            ctl, spec.name, lambda p, o: p.sandbox.ready and o["status"]["phase"] == "Running"
        )
        assert pod.sandbox.id != made.sandbox.id and pod.spec.attempt == 1
        assert status(obj)["restartCount"] == 1
        # the old sandbox is gone
        sandboxes = await runtime.list_pod_sandboxes()
        assert [s.id for s in sandboxes if s.pod.uid == spec.uid] == [pod.sandbox.id]
        reasons = [e["reason"] for e in manager.events.list("default")]  # type: ignore[union-attr]
        assert "SandboxChanged" in reasons
    finally:
        await ctl.stop()
        for pod in await manager.list():
            await manager.delete(pod.spec.namespace, pod.spec.name, 0)
        await runtime.close()

"""CRI attempts on Docker: a container or sandbox made again gets a name of its own."""

from __future__ import annotations

import asyncio
import dataclasses

import docker
import pytest

from streamsrv.pods import parse_pod
from streamsrv.runtime.docker import DockerRuntime
from tests.conftest import BUSYBOX, pod_manifest, sleeper, unique

pytestmark = pytest.mark.docker


def name_of(container_id: str) -> str:
    client = docker.from_env()
    try:
        return str(client.api.inspect_container(container_id)["Name"]).lstrip("/")
    finally:
        client.close()


async def test_a_second_attempt_beside_the_first(runtime: DockerRuntime) -> None:
    await runtime.ensure_image(BUSYBOX)
    pod = parse_pod(pod_manifest(unique("attempt"), sleeper("main")))
    sandbox = await runtime.run_pod_sandbox(pod)
    first = await runtime.create_container(sandbox, pod, pod.containers[0])
    again = dataclasses.replace(pod.containers[0], attempt=1)
    second = await runtime.create_container(sandbox, pod, again)
    base = f"k8s_main_{pod.name}_default_{pod.uid}"
    assert await asyncio.to_thread(name_of, first) == f"{base}_0"
    assert await asyncio.to_thread(name_of, second) == f"{base}_1"
    # a sandbox made again for the same pod, and read back with its attempt
    retry = dataclasses.replace(pod, attempt=1)
    other = await runtime.run_pod_sandbox(retry)
    assert await asyncio.to_thread(name_of, other) == f"k8s_POD_{pod.name}_default_{pod.uid}_1"
    found = {s.id: s.pod.attempt for s in await runtime.list_pod_sandboxes()}
    assert found == {sandbox: 0, other: 1}

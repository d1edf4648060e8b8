"""Pod networking through CNI on the real Docker engine (docs/architecture.md, "Pod network").

Every plugin runs in a network namespace the test makes (tests/cni_env.py): the bridge and every
pod address live there and vanish with it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest

from streamsrv.podmanager import PodManager
from streamsrv.pods import parse_pod
from streamsrv.runtime.cni import CniError, CniNetwork
from streamsrv.runtime.docker import DockerRuntime
from tests.cni_env import CNI_BIN, PodNetwork, pod_network
from tests.conftest import (
    BUSYBOX,
    PAUSE,
    engine_pod_containers,
    engine_run,
    engine_sh,
    pod_manifest,
    sleeper,
    unique,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def net(tmp_path: Path) -> Iterator[PodNetwork]:
    with pod_network(tmp_path / "net") as n:
        yield n


def manager_for(net: PodNetwork, state: Path) -> CniNetwork:
    return CniNetwork(state, conf_dir=net.conf_dir, bin_dirs=[CNI_BIN], plugin_netns=net.netns)


@pytest.fixture
async def netruntime(
    docker_engine: None, net: PodNetwork, tmp_path: Path
) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(pause_image=PAUSE, network=manager_for(net, tmp_path / "cni"))
    yield rt
    await rt.close()


def web(marker: str) -> dict[str, object]:
    return {
        "name": "web",
        "image": BUSYBOX,
        "command": ["sh", "-c", f"echo {marker} > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"],
    }


def force_remove(container_id: str) -> None:
    client = docker.from_env()
    try:
        client.api.remove_container(container_id, force=True)
    finally:
        client.close()


async def test_pods_reach_each_other_and_themselves_by_pod_ip(
    netruntime: DockerRuntime, net: PodNetwork, tmp_path: Path
) -> None:
    manager = PodManager(netruntime)
    a = await manager.create(parse_pod(pod_manifest(unique("neta"), web("served-by-a"))))
    b = await manager.create(parse_pod(pod_manifest(unique("netb"), sleeper("client"))))
    ip_a, ip_b = a.sandbox.ip, b.sandbox.ip
    assert ip_a and ip_b and ip_a != ip_b
    subnet = ipaddress.ip_network("10.251.0.0/24")
    assert ipaddress.ip_address(ip_a) in subnet and ipaddress.ip_address(ip_b) in subnet
    assert a.render()["status"]["podIP"] == ip_a

    web_id, client_id = a.container_id("web"), b.container_id("client")
    assert web_id and client_id
    # The address is the pod's eth0, inside the pod's own namespace.
    assert f"inet {ip_a}/24" in await engine_run(web_id, "ip -o addr show dev eth0")
    # Pod to pod by address, and a pod to its own address.
    for _ in range(50):  # httpd may not listen yet
        code, out = await asyncio.to_thread(engine_sh, client_id, f"wget -qO- http://{ip_a}:8080/")
        if code == 0:
            break
        await asyncio.sleep(0.1)
    assert out == "served-by-a\n"
    assert await engine_run(web_id, f"wget -qO- http://{ip_a}:8080/") == "served-by-a\n"

    # The bridge is in the test's namespace, not in the machine's own.
    assert net.in_netns("ip", "link", "show", net.bridge).returncode == 0
    root = await asyncio.to_thread(
        subprocess.run, ["ip", "link", "show", net.bridge], capture_output=True
    )
    assert root.returncode != 0
    assert len(net.leases()) == 2

    # What the network manager recorded survives for DEL (a restart reads it back).
    record = json.loads((tmp_path / "cni" / f"{a.sandbox.id}.json").read_text())
    assert record["containerId"] == a.sandbox.id and record["result"]["ips"]
    await manager.delete("default", a.spec.name, grace=0)
    await manager.delete("default", b.spec.name, grace=0)
    assert net.leases() == []
    assert list((tmp_path / "cni").glob("*.json")) == []


async def test_fifty_pods_leave_no_lease_behind(
    netruntime: DockerRuntime, net: PodNetwork, tmp_path: Path
) -> None:
    seen: set[str] = set()
    for _ in range(50):
        spec = parse_pod(pod_manifest(unique("lease"), sleeper()))
        sandbox_id = await netruntime.run_pod_sandbox(spec)
        ip = netruntime.pod_ip(sandbox_id)
        assert ip is not None
        seen.add(ip)
        assert len(net.leases()) == 1
        await netruntime.remove_pod_sandbox(sandbox_id)
    assert net.leases() == []
    assert list((tmp_path / "cni").glob("*.json")) == []
    assert len(seen) > 1  # host-local hands out the next address each time


async def test_a_broken_config_fails_the_create_and_leaves_nothing(
    docker_engine: None, net: PodNetwork, tmp_path: Path
) -> None:
    conf = next(net.conf_dir.glob("*.conflist"))
    config = json.loads(conf.read_text())
    config["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "10.251.0.0/33"}]]
    conf.write_text(json.dumps(config))
    rt = DockerRuntime(pause_image=PAUSE, network=manager_for(net, tmp_path / "cni"))
    try:
        name = unique("broken")
        with pytest.raises(CniError) as caught:
            await PodManager(rt).create(parse_pod(pod_manifest(name, sleeper())))
        assert "bridge" in str(caught.value) and "10.251.0.0/33" in str(caught.value)
        assert await asyncio.to_thread(engine_pod_containers, name) == []
        assert net.leases() == []
        assert list((tmp_path / "cni").glob("*.json")) == []
    finally:
        await rt.close()


async def test_host_network_pods_skip_cni(
    netruntime: DockerRuntime, net: PodNetwork, tmp_path: Path
) -> None:
    pod = await PodManager(netruntime).create(
        parse_pod(pod_manifest(unique("hostnet"), sleeper(), hostNetwork=True))
    )
    assert pod.sandbox.ip == "127.0.0.1"
    assert net.leases() == []
    assert not (tmp_path / "cni").exists() or list((tmp_path / "cni").glob("*.json")) == []


async def test_no_config_means_loopback_only(
    docker_engine: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "empty.d"
    empty.mkdir()
    rt = DockerRuntime(
        pause_image=PAUSE, network=CniNetwork(tmp_path / "cni", conf_dir=empty, bin_dirs=[CNI_BIN])
    )
    try:
        manager = PodManager(rt)
        for _ in range(2):
            pod = await manager.create(parse_pod(pod_manifest(unique("lo"), sleeper())))
            assert pod.sandbox.ip is None
            cid = pod.container_id("main")
            assert cid
            links = await engine_run(cid, "ip -o link")
            assert "lo:" in links and "eth0" not in links
        said = [r for r in caplog.records if "no CNI config" in r.getMessage()]
        assert len(said) == 1  # said once, not per pod
    finally:
        await rt.close()


async def test_removing_a_pod_whose_infra_container_is_gone_releases_its_address(
    netruntime: DockerRuntime, net: PodNetwork, tmp_path: Path
) -> None:
    manager = PodManager(netruntime)
    gone = await manager.create(parse_pod(pod_manifest(unique("gone"), sleeper())))
    swept = await manager.create(parse_pod(pod_manifest(unique("swept"), sleeper())))
    assert len(net.leases()) == 2
    # Removed on the engine, then removed through the runtime: DEL runs from the record.
    await asyncio.to_thread(force_remove, gone.sandbox.id)
    await netruntime.remove_pod_sandbox(gone.sandbox.id)
    assert len(net.leases()) == 1
    # Removed on the engine and never through the runtime: the sweep (run at every start)
    # releases it.
    await asyncio.to_thread(force_remove, swept.sandbox.id)
    released, _ = await netruntime.sweep()
    assert released == [swept.sandbox.id]
    assert net.leases() == []
    assert list((tmp_path / "cni").glob("*.json")) == []


async def test_sweep_checks_running_pods_networks(
    netruntime: DockerRuntime, net: PodNetwork, caplog: pytest.LogCaptureFixture
) -> None:
    pod = await PodManager(netruntime).create(parse_pod(pod_manifest(unique("chk"), sleeper())))
    await netruntime.sweep()
    assert not [r for r in caplog.records if "CNI CHECK failed" in r.getMessage()]
    # The pod's address taken away behind the runtime's back: CHECK (bridge) sees it.
    pid = await asyncio.to_thread(pause_pid, pod.sandbox.id)
    flush = ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "addr", "flush", "dev", "eth0"]
    assert (await asyncio.to_thread(subprocess.run, flush)).returncode == 0
    await netruntime.sweep()
    failed = [r.getMessage() for r in caplog.records if "CNI CHECK failed" in r.getMessage()]
    assert len(failed) == 1 and pod.sandbox.id[:12] in failed[0], failed


def pause_pid(sandbox_id: str) -> int:
    client = docker.from_env()
    try:
        return int(client.api.inspect_container(sandbox_id)["State"]["Pid"])
    finally:
        client.close()


async def test_an_unreadable_record_costs_the_pod_its_address_not_the_listing(
    net: PodNetwork, docker_engine: None, tmp_path: Path
) -> None:
    state = tmp_path / "cni"
    first = DockerRuntime(pause_image=PAUSE, network=manager_for(net, state))
    try:
        pod = await PodManager(first).create(parse_pod(pod_manifest(unique("torn"), sleeper())))
        assert pod.sandbox.ip
    finally:
        await first.close()
    (state / f"{pod.sandbox.id}.json").write_text("{not json")
    again = DockerRuntime(pause_image=PAUSE, network=manager_for(net, state))  # a restart
    try:
        manager = PodManager(again)
        [listed] = await manager.list(name=pod.spec.name)
        assert listed.sandbox.ip is None and listed.phase == "Running"
        # ... and the pod can still be deleted (its address cannot be released: logged).
        assert await manager.delete("default", pod.spec.name, grace=0) is not None
        assert await manager.list(name=pod.spec.name) == []
    finally:
        await again.close()

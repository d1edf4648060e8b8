"""tests/containerd_env.py: a private containerd whose CRI plugin answers on its socket, runs
pods with a pod network (CNI) and with the host's (its namespace's) network, hands out stream
URLs reachable from here, and leaves nothing behind when it stops, even after a crash."""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import os
import signal
import ssl
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest

from streamsrv.cri import api_pb2
from streamsrv.cri.client import CriClient
from tests.containerd_env import (
    LIB_SH,
    POD_SUBNET_PREFIX,
    ContainerdCri,
    alive,
    containerd_cri,
    leftovers,
    traces,
)


def raw_version(socket: Path) -> str:
    """RuntimeService/Version over plain gRPC, no generated code: an empty request, and field
    1 (version, a string) of the answer read by hand."""
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes]
        call = channel.unary_unary("/runtime.v1.RuntimeService/Version")
        reply = call(b"", timeout=30)
    assert isinstance(reply, bytes)
    assert reply[0] == 0x0A  # field 1, length-delimited
    return reply[2 : 2 + reply[1]].decode()


def sandbox_config(name: str, network: api_pb2.NamespaceMode) -> api_pb2.PodSandboxConfig:
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, uid=str(uuid.uuid4()), namespace="default"),
        # the kubelet sets no hostname for a host-network pod (runc refuses one without a UTS
        # namespace of its own)
        hostname=name if network == api_pb2.POD else "",
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(network=network)
            )
        ),
    )


async def run_pod(
    client: CriClient, cri: ContainerdCri, name: str, network: api_pb2.NamespaceMode
) -> tuple[str, str, str]:
    """A sandbox and a busybox container sleeping in it: (sandbox id, container id, pod IP)."""
    config = sandbox_config(name, network)
    sandbox = await client.run_pod_sandbox(config)
    status = await client.pod_sandbox_status(sandbox)
    assert status.status.state == api_pb2.SANDBOX_READY
    container = await client.create_container(
        sandbox,
        api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="sleep"),
            image=api_pb2.ImageSpec(image=cri.busybox_image),
            command=["sleep", "3600"],
        ),
        config,
    )
    await client.start_container(container)
    return sandbox, container, status.status.network.ip


async def exec_sync(client: CriClient, container: str, *cmd: str) -> str:
    reply = await client.exec_sync(container, cmd, timeout=30)
    assert reply.exit_code == 0, reply.stderr
    return reply.stdout.decode()


def leases(cri: ContainerdCri) -> list[str]:
    store = cri.directory / "ipam" / cri.cni_network
    return sorted(p.name for p in store.glob(POD_SUBNET_PREFIX + "*"))


@pytest.mark.docker
def test_cri_runs_pods_on_both_networks_and_stop_leaves_nothing(tmp_path: Path) -> None:
    with containerd_cri(tmp_path) as cri:
        assert cri.endpoint == f"unix://{cri.socket}"
        assert raw_version(cri.socket) == "0.1.0"
        assert "1.6." in cri.ctr("version").stdout
        images = cri.ctr("images", "ls", "-q").stdout.split()
        assert cri.busybox_ref in images and cri.pause_ref in images
        assert f'sandbox_image = "{cri.pause_ref}"' in cri.config_path.read_text()
        inside = subprocess.run(
            [*cri.nsenter_args(), "ip", "-4", "-o", "addr"], capture_output=True, text=True
        )
        assert f"{cri.stream_host}/30" in inside.stdout
        asyncio.run(pods_on_both_networks(cri))
        seen = traces(cri)  # pods a and c still run: the stop must take them down
        assert any(str(p).startswith("/run/containerd/s/") for p in seen)
    assert leftovers(cri, seen) == []
    assert "containerd successfully booted" in cri.log_path.read_text()  # kept


async def pods_on_both_networks(cri: ContainerdCri) -> None:
    async with CriClient(cri.endpoint, timeout=60) as client:
        version = await client.version()
        assert (version.runtime_name, version.runtime_api_version) == ("containerd", "v1")
        assert version.runtime_version.startswith("1.6.")
        # the name a kubectl user writes finds the image containerd stores as docker.io/...
        image = await client.image_status(cri.busybox_image)
        assert image.HasField("image") and cri.busybox_ref in image.image.repo_tags

        # POD network: an address from the bridge's subnet, on the pod's own eth0
        _, container, ip = await run_pod(client, cri, "pod-a", api_pb2.POD)
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(POD_SUBNET_PREFIX + "0/24")
        assert f"inet {ip}/24" in await exec_sync(client, container, "ip", "-4", "addr")
        assert (await exec_sync(client, container, "hostname")).strip() == "pod-a"
        # the stream server: its URL names the namespace's end of the veth, reachable from here
        url = urlsplit(
            await client.exec(
                api_pb2.ExecRequest(container_id=container, cmd=["true"], stdout=True)
            )
        )
        assert (url.scheme, url.hostname, url.port) == ("http", cri.stream_host, cri.stream_port)
        assert await asyncio.to_thread(http_status, cri.stream_host, cri.stream_port) == 404

        # a second POD pod, stopped and removed the kubelet's way: its lease is released
        sandbox_b, _, ip_b = await run_pod(client, cri, "pod-b", api_pb2.POD)
        assert ip_b != ip and leases(cri) == sorted([ip, ip_b])
        await client.stop_pod_sandbox(sandbox_b)
        await client.remove_pod_sandbox(sandbox_b)
        assert leases(cri) == [ip]

        # NODE network: the pod shares containerd's namespace, not this machine's network
        _, host_container, host_ip = await run_pod(client, cri, "pod-c", api_pb2.NODE)
        assert host_ip == ""
        addrs = await exec_sync(client, host_container, "ip", "-4", "addr")
        assert f"inet {cri.stream_host}/30" in addrs and cri.host_address not in addrs

        assert len(await client.list_pod_sandbox()) == 2


def http_status(host: str, port: int, context: ssl.SSLContext | None = None) -> int:
    """GET of a stream URL with a token that does not exist: 404 from the stream server."""
    conn = (
        http.client.HTTPSConnection(host, port, timeout=10, context=context)
        if context is not None
        else http.client.HTTPConnection(host, port, timeout=10)
    )
    try:
        conn.request("GET", "/exec/no-such-token")
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.docker
def test_stop_after_containerd_crashed(tmp_path: Path) -> None:
    with containerd_cri(tmp_path) as cri:
        asyncio.run(one_pod(cri))
        seen = traces(cri)
        os.kill(cri.pid, signal.SIGKILL)  # ours: containerd_start started it
        for _ in range(100):
            if not alive(cri.pid):
                break
            time.sleep(0.05)
        assert not alive(cri.pid)  # its shim and containers outlive it, as after any crash
    assert leftovers(cri, seen) == []


async def one_pod(cri: ContainerdCri) -> None:
    async with CriClient(cri.endpoint, timeout=60) as client:
        await run_pod(client, cri, "crash", api_pb2.POD)


@pytest.mark.docker
def test_stream_tls_serves_https_under_its_own_ca(tmp_path: Path) -> None:
    """STREAMSRV_CONTAINERD_STREAM_TLS (the bench's equal hops): the stream URLs are https,
    with a certificate for the stream address that only the instance's CA vouches for."""
    with containerd_cri(tmp_path, stream_tls=True) as cri:
        assert cri.stream_ca is not None and cri.stream_ca.is_relative_to(cri.directory)
        assert "enable_tls_streaming = true" in cri.config_path.read_text()

        async def scenario() -> str:
            async with CriClient(cri.endpoint) as client:
                _, container, _ = await run_pod(client, cri, "tls", api_pb2.NODE)
                return await client.exec(
                    api_pb2.ExecRequest(container_id=container, cmd=["true"], stdout=True)
                )

        url = urlsplit(asyncio.run(scenario()))
        assert (url.scheme, url.hostname, url.port) == ("https", cri.stream_host, cri.stream_port)
        trusted = ssl.create_default_context(cafile=str(cri.stream_ca))
        assert http_status(cri.stream_host, cri.stream_port, trusted) == 404
        with pytest.raises(ssl.SSLCertVerificationError):
            http_status(cri.stream_host, cri.stream_port, ssl.create_default_context())


@pytest.mark.docker
def test_two_instances_side_by_side(tmp_path: Path) -> None:
    with containerd_cri(tmp_path / "a") as a, containerd_cri(tmp_path / "b") as b:
        assert a.netns != b.netns
        assert a.stream_host != b.stream_host and a.host_address != b.host_address
        assert raw_version(a.socket) == raw_version(b.socket)
    assert leftovers(a) == [] and leftovers(b) == []


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("streamsrv/busybox:local", "docker.io/streamsrv/busybox:local"),
        ("busybox", "docker.io/library/busybox:latest"),
        ("registry.example:5000/x/y", "registry.example:5000/x/y:latest"),
        ("localhost/pause:1", "localhost/pause:1"),
    ],
)
def test_image_names_as_cri_normalizes_them(written: str, stored: str) -> None:
    out = subprocess.run(
        ["bash", "-c", 'source "$0" && _containerd_normalize "$1"', str(LIB_SH), written],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == stored

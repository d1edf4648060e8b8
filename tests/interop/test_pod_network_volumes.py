"""kubectl against pods with a CNI network and volumes (docs/architecture.md, "Pod network",
"Pod volumes"): pod IPs in `get pods -o wide`, port-forward into a networked pod, the demo
pod's shared emptyDir, and the 422s that refuse bad volumes before anything exists."""

from __future__ import annotations

import ipaddress
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cni_env import PodNetwork, pod_network
from tests.conftest import (
    BUSYBOX,
    Server,
    _remove_everything,
    engine_pod_containers,
    require_runtime,
    stop_process,
    unique,
    wait_forwarding,
)

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ("1.27", "1.33")
CREATE_FLAGS = {"1.27": ["--validate=false"], "1.33": []}


@pytest.fixture(scope="module")
def netserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, PodNetwork]]:
    require_runtime("docker")
    _remove_everything()
    directory = tmp_path_factory.mktemp("netserver")
    with pod_network(directory / "net") as net:
        server = Server(directory / "state", extra=net.server_args())
        server.start()
        try:
            yield server, net
        finally:
            server.stop()
            _remove_everything()


def create(server: Server, version: str, path: Path) -> subprocess.CompletedProcess[str]:
    return server.kubectl(version, "create", *CREATE_FLAGS[version], "-f", str(path))


def web_pod(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  containers:
  - name: web
    image: {BUSYBOX}
    command: ["sh", "-c", "echo pod {name} > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
"""
    )
    return path


def http_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("version", VERSIONS)
def test_wide_listing_shows_pod_ips_and_pods_reach_each_other(
    netserver: tuple[Server, PodNetwork], tmp_path: Path, version: str
) -> None:
    server, net = netserver
    a, b = unique(f"wa{version[-2:]}"), unique(f"wb{version[-2:]}")
    for name in (a, b):
        r = create(server, version, web_pod(tmp_path, name))
        assert r.returncode == 0, r.stderr
    r = server.kubectl(version, "get", "pods", "-o", "wide")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.strip().splitlines()
    assert header.split()[:7] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    ips = {row.split()[0]: row.split()[5] for row in rows}
    subnet = ipaddress.ip_network("10.251.0.0/24")
    assert ipaddress.ip_address(ips[a]) in subnet and ipaddress.ip_address(ips[b]) in subnet

    # b fetches a's page by a's pod IP, through kubectl exec.
    for _ in range(50):
        r = server.kubectl(version, "exec", b, "--", "wget", "-qO-", f"http://{ips[a]}:8080/")
        if r.returncode == 0:
            break
        time.sleep(0.1)
    assert r.stdout == f"pod {a}\n", r.stderr

    # Port-forward dials inside the pod's namespace, eth0 or not.
    log = tmp_path / f"pf-{version}.log"
    with log.open("wb") as logf:
        pf = server.kubectl_popen(
            version, "port-forward", f"pod/{a}", ":8080", stdout=logf, stderr=subprocess.STDOUT
        )
    try:
        port = wait_forwarding(pf, log, [8080])[8080]
        assert http_get(port).endswith(f"pod {a}\n".encode())
    finally:
        stop_process(pf, signal.SIGTERM)
    for name in (a, b):
        r = server.kubectl(version, "delete", "pod", name, "--grace-period=0")
        assert r.returncode == 0, r.stderr


def test_deleting_pods_releases_their_addresses(netserver: tuple[Server, PodNetwork]) -> None:
    server, net = netserver
    before = net.leases()
    name = unique("lease")
    r = server.kubectl("1.33", "run", name, f"--image={BUSYBOX}", "--", "sleep", "100000")
    assert r.returncode == 0, r.stderr
    assert len(net.leases()) == len(before) + 1
    r = server.kubectl("1.33", "delete", "pod", name, "--grace-period=0")
    assert r.returncode == 0, r.stderr
    assert net.leases() == before


@pytest.mark.parametrize("version", VERSIONS)
def test_demo_pod_shares_an_empty_dir_between_shell_and_web(server: Server, version: str) -> None:
    demo = (ROOT / "examples" / "demo-pod.yaml").read_text().replace("name: demo", "name: demo-v")
    path = server.state_dir / "demo.yaml"
    path.write_text(demo)
    r = create(server, version, path)
    assert r.returncode == 0, r.stderr
    try:
        script = "echo written-by-shell > /site/t.txt && wget -qO- localhost:8080/t.txt"
        for _ in range(50):
            r = server.kubectl(version, "exec", "demo-v", "-c", "shell", "--", "sh", "-c", script)
            if r.returncode == 0:
                break
            time.sleep(0.1)
        assert r.stdout == "written-by-shell\n", r.stderr
        r = server.kubectl(
            version, "exec", "demo-v", "-c", "web", "--", "sh", "-c", "echo x > /site/y"
        )
        assert r.returncode != 0 and "Read-only file system" in r.stderr
    finally:
        server.kubectl(version, "delete", "pod", "demo-v", "--grace-period=0")
    assert list((server.state_dir / "volumes").iterdir()) == []


BAD_MOUNTS = """apiVersion: v1
kind: Pod
metadata: {name: NAME}
spec:
  volumes: [{name: data, emptyDir: {}}]
  containers:
  - name: main
    image: IMAGE
    command: ["sleep", "100000"]
    volumeMounts:
    - {name: nosuch, mountPath: /a}
    - {name: data, mountPath: relative}
    - {name: data, mountPath: /b}
    - {name: data, mountPath: /b/}
"""


@pytest.mark.parametrize("version", VERSIONS)
def test_bad_volume_mounts_get_a_422_and_nothing_is_created(
    server: Server, tmp_path: Path, version: str
) -> None:
    name = unique("badvol")
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_MOUNTS.replace("NAME", name).replace("IMAGE", BUSYBOX))
    r = create(server, version, path)
    assert r.returncode != 0
    err = r.stderr
    assert f'Pod "{name}" is invalid' in err, err
    assert 'spec.containers[0].volumeMounts[0].name: Not found: "nosuch"' in err, err
    assert "spec.containers[0].volumeMounts[1].mountPath" in err and "absolute" in err, err
    assert "spec.containers[0].volumeMounts[3].mountPath" in err and "must be unique" in err, err
    assert engine_pod_containers(name) == []


def test_a_failed_host_path_check_is_a_422_and_nothing_is_created(
    server: Server, tmp_path: Path
) -> None:
    name = unique("hpcheck")
    path = tmp_path / "hp.yaml"
    path.write_text(
        f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  volumes:
  - {{name: e, emptyDir: {{}}}}
  - {{name: h, hostPath: {{path: {tmp_path}/nothing-here, type: Directory}}}}
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sleep", "100000"]
    volumeMounts: [{{name: e, mountPath: /e}}, {{name: h, mountPath: /h}}]
"""
    )
    r = create(server, "1.33", path)
    assert r.returncode != 0
    assert (
        f'spec.volumes[1].hostPath.path: Invalid value: "{tmp_path}/nothing-here": '
        f"hostPath type check failed: {tmp_path}/nothing-here does not exist"
    ) in r.stderr, r.stderr
    assert engine_pod_containers(name) == []
    assert list((server.state_dir / "volumes").iterdir()) == []


def test_the_process_runtime_refuses_volumes_with_a_422(tmp_path: Path) -> None:
    require_runtime("process")
    server = Server(tmp_path / "state", runtime="process")
    server.start()
    try:
        path = tmp_path / "vol.yaml"
        path.write_text(
            """apiVersion: v1
kind: Pod
metadata: {name: withvol}
spec:
  volumes: [{name: data, emptyDir: {}}]
  containers:
  - name: main
    image: busybox
    command: ["sleep", "100000"]
    volumeMounts: [{name: data, mountPath: /data}]
"""
        )
        r = create(server, "1.33", path)
        assert r.returncode != 0
        assert "the process runtime cannot mount volumes" in r.stderr, r.stderr
        r = server.kubectl("1.33", "get", "pods", "-o", "name")
        assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)
    finally:
        server.stop()

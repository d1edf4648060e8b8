"""Real kubectl's `debug`: a copy of a pod (`--copy-to`), a node (`node/streamsrv`), and an
ephemeral container (refused readably); and the node Lease `describe node` reads.

kubectl 1.32+ send the pods `debug` creates as protobuf (streamsrv/k8sproto.py,
docs/architecture.md, "Protobuf request bodies"); 1.27 sends JSON. The debug container runs
`sh` reading the commands from kubectl's stdin (`-i`), so it is alive when kubectl attaches:
with `sh -c 'echo ...'` the output could be gone before the attach.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BUSYBOX, Server, _remove_everything, require_runtime, unique

pytestmark = [pytest.mark.docker, pytest.mark.kubectl, pytest.mark.timeout(600)]

#: JSON (1.27), the first to send protobuf (1.32), the newest (1.33).
VERSIONS = ("1.27", "1.32", "1.33")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_runtime("docker")
    _remove_everything()
    srv = Server(tmp_path_factory.mktemp("debug") / "state")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        _remove_everything()


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    assert "panic" not in r.stderr, r.stderr
    return r.stdout


def create_original(server: Server, version: str, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: orig}}
  annotations: {{note: kept}}
spec:
  volumes:
  - name: scratch
    emptyDir: {{sizeLimit: 16Mi}}
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sleep", "100000"]
    env: [{{name: GREETING, value: hello}}, {{name: EMPTY, value: ""}}]
    workingDir: /tmp
    ports: [{{containerPort: 8080, name: http}}]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
"""
    )
    ok(server.kubectl(version, "create", "-f", str(path)))


def get_pod(server: Server, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ok(server.kubectl("1.33", "get", "pod", name, "-o", "json")))
    return doc


@pytest.mark.parametrize("version", VERSIONS)
def test_debug_copy_to_runs_the_debug_container_in_a_copy(
    server: Server, version: str, tmp_path: Path
) -> None:
    name = unique("orig")
    copy = f"{name}-copy"
    create_original(server, version, tmp_path, name)
    r = server.kubectl(
        version, "debug", name, "-i", f"--copy-to={copy}", f"--image={BUSYBOX}", "--", "sh",
        input="echo hello-from-copy; exit\n", timeout=120,
    )  # fmt: skip
    out = ok(r)
    assert "hello-from-copy" in out, out + r.stderr
    assert "Defaulting debug container name to debugger-" in out + r.stderr

    pod = get_pod(server, copy)
    assert pod["metadata"]["annotations"] == {"note": "kept"}
    main, debugger = pod["spec"]["containers"]
    assert main["name"] == "main" and main["command"] == ["sleep", "100000"]
    assert main["env"] == [{"name": "GREETING", "value": "hello"}, {"name": "EMPTY", "value": ""}]
    assert main["workingDir"] == "/tmp"
    assert main["ports"] == [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]
    assert main["volumeMounts"] == [{"name": "scratch", "mountPath": "/scratch"}]
    assert pod["spec"]["volumes"] == [{"name": "scratch", "emptyDir": {"sizeLimit": "16Mi"}}]
    assert debugger["name"].startswith("debugger-")
    assert debugger["image"] == BUSYBOX and debugger["command"] == ["sh"]
    assert debugger["stdin"] is True and "tty" not in debugger
    ok(server.kubectl(version, "delete", "pod", copy, name, "--wait=false"))


@pytest.mark.parametrize("version", VERSIONS)
def test_debug_node_runs_in_the_hosts_namespaces(server: Server, version: str) -> None:
    r = server.kubectl(
        version, "debug", "-i", "node/streamsrv", f"--image={BUSYBOX}", "--", "sh",
        input="test -f /host/etc/os-release && echo host-root-is-mounted; echo node-debug; exit\n",
        timeout=120,
    )  # fmt: skip
    out = ok(r)
    assert "Creating debugging pod node-debugger-streamsrv-" in out
    assert "host-root-is-mounted" in out and "node-debug" in out, out + r.stderr
    pods = json.loads(ok(server.kubectl(version, "get", "pods", "-o", "json")))["items"]
    [pod] = [p for p in pods if p["metadata"]["name"].startswith("node-debugger-")]
    spec = pod["spec"]
    assert spec["hostPID"] is True and spec["hostNetwork"] is True and spec["hostIPC"] is True
    assert spec["nodeName"] == "streamsrv" and spec["restartPolicy"] == "Never"
    assert spec["volumes"] == [{"name": "host-root", "hostPath": {"path": "/", "type": ""}}]
    assert spec["containers"][0]["volumeMounts"] == [{"name": "host-root", "mountPath": "/host"}]
    ok(server.kubectl(version, "delete", "pod", pod["metadata"]["name"], "--wait=false"))


@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_debug_with_an_ephemeral_container_says_what_to_do(
    server: Server, version: str, tmp_path: Path
) -> None:
    name = unique("target")
    create_original(server, version, tmp_path, name)
    r = server.kubectl(
        version, "debug", "-it", name, f"--image={BUSYBOX}", "--target=main", "--", "sh",
        input="",
    )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert "panic" not in r.stderr and "goroutine" not in r.stderr, r.stderr
    assert (
        'error: ephemeral containers are disabled for this cluster (error from server: "'
        "streamsrv's container runtimes cannot add ephemeral containers to a running pod; "
        f"debug a copy of the pod instead: kubectl debug {name} -it --copy-to={name}-debug "
        f'--image={BUSYBOX}")'
    ) in r.stderr, r.stderr
    ok(server.kubectl(version, "delete", "pod", name, "--wait=false"))


@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_describe_node_shows_its_lease(server: Server, version: str) -> None:
    text = ok(server.kubectl(version, "describe", "node", "streamsrv"))
    assert "Failed to get lease" not in text
    lease = text.split("Lease:", 1)[1].split("Conditions:", 1)[0]
    assert "HolderIdentity:  streamsrv" in lease
    assert "AcquireTime:     <unset>" in lease
    assert "RenewTime:" in lease and "<unset>" not in lease.split("RenewTime:", 1)[1]

    path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
    doc = json.loads(ok(server.kubectl(version, "get", "--raw", f"{path}/streamsrv")))
    assert doc["kind"] == "Lease" and doc["spec"]["leaseDurationSeconds"] == 40
    r = server.kubectl(version, "get", "--raw", f"{path}/elsewhere")
    assert r.returncode == 1
    assert 'leases.coordination.k8s.io "elsewhere" not found' in r.stderr, r.stderr

"""Real kubectl on nodes, namespaces, the apiserver's pod defaults, `kubectl debug`, and
`create -f` with each version's default validation (streamsrv/cluster.py, defaults.py,
openapi.py)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    BUSYBOX,
    Server,
    _remove_everything,
    require_runtime,
    unique,
)
from tests.cri_env import streamsrv_cri

pytestmark = [pytest.mark.docker, pytest.mark.kubectl, pytest.mark.timeout(600)]

VERSIONS = ("1.27", "1.33")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_runtime("docker")
    _remove_everything()
    srv = Server(tmp_path_factory.mktemp("cluster") / "state")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        _remove_everything()


def pod_yaml(tmp_path: Path, name: str, namespace: str = "default", extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sleep", "100000"]
{extra}"""
    )
    return path


def create(server: Server, version: str, path: Path) -> subprocess.CompletedProcess[str]:
    """``kubectl create -f`` with the version's default validation (no --validate flag)."""
    return server.kubectl(version, "create", "-f", str(path))


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stderr
    assert "panic" not in r.stderr, r.stderr
    return r.stdout


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


@pytest.mark.parametrize("version", VERSIONS)
def test_get_nodes(server: Server, version: str) -> None:
    [header, row] = rows(ok(server.kubectl(version, "get", "nodes")))
    assert header == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert row[:3] == ["streamsrv", "Ready", "<none>"]
    assert row[4].startswith("v1.33.0-streamsrv.")

    text = ok(server.kubectl(version, "get", "no", "-o", "wide"))
    header, *_ = rows(text)
    assert header == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP",
                      "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]  # fmt: skip
    wide = text.strip().splitlines()[1]
    assert "127.0.0.1" in wide and "<none>" in wide
    assert wide.split()[-1].startswith("docker://")

    node = json.loads(ok(server.kubectl(version, "get", "node", "streamsrv", "-o", "json")))
    assert node["status"]["capacity"]["pods"] == "110"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"] == wide.split()[-1]

    r = server.kubectl(version, "get", "node", "nope")
    assert r.returncode == 1
    assert r.stderr.strip() == 'Error from server (NotFound): nodes "nope" not found'


@pytest.mark.parametrize("version", VERSIONS)
def test_describe_node_lists_its_pods(server: Server, version: str, tmp_path: Path) -> None:
    name = unique("onnode")
    ok(create(server, version, pod_yaml(tmp_path, name)))
    text = ok(server.kubectl(version, "describe", "node", "streamsrv"))
    assert "Name:               streamsrv" in text
    ready = next(line for line in text.splitlines() if line.strip().startswith("Ready "))
    assert ready.split()[1] == "True" and "KubeletReady" in ready
    assert "Container Runtime Version:  docker://" in text
    pods = text.split("Non-terminated Pods:")[1].split("Allocated resources:")[0]
    assert name in pods
    ok(server.kubectl(version, "delete", "pod", name, "--wait=false"))


@pytest.mark.parametrize("version", VERSIONS)
def test_get_namespaces(server: Server, version: str, tmp_path: Path) -> None:
    ns = unique("team")
    name = unique("inns")
    ok(create(server, version, pod_yaml(tmp_path, name, ns)))
    [header, *found] = rows(ok(server.kubectl(version, "get", "ns")))
    assert header == ["NAME", "STATUS", "AGE"]
    names = {r[0]: r[1] for r in found}
    for builtin in ("default", "kube-node-lease", "kube-public", "kube-system", ns):
        assert names.get(builtin) == "Active", names
    one = json.loads(ok(server.kubectl(version, "get", "namespace", ns, "-o", "json")))
    assert one["status"]["phase"] == "Active"
    ok(server.kubectl(version, "delete", "pod", name, "-n", ns, timeout=90))
    r = server.kubectl(version, "get", "ns", ns)
    assert r.returncode == 1
    assert r.stderr.strip() == f'Error from server (NotFound): namespaces "{ns}" not found'


@pytest.mark.parametrize("version", VERSIONS)
def test_pod_yaml_shows_the_apiservers_defaults(
    server: Server, version: str, tmp_path: Path
) -> None:
    name = unique("defaults")
    ok(create(server, version, pod_yaml(tmp_path, name)))
    pod = yaml.safe_load(ok(server.kubectl(version, "get", "pod", name, "-o", "yaml")))
    spec = pod["spec"]
    assert spec["securityContext"] == {}
    assert (spec["restartPolicy"], spec["dnsPolicy"]) == ("Always", "ClusterFirst")
    assert spec["schedulerName"] == "default-scheduler"
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["enableServiceLinks"] is True
    assert (spec["priority"], spec["preemptionPolicy"]) == (0, "PreemptLowerPriority")
    assert {t["key"]: t["tolerationSeconds"] for t in spec["tolerations"]} == {
        "node.kubernetes.io/not-ready": 300,
        "node.kubernetes.io/unreachable": 300,
    }
    [c] = spec["containers"]
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "File"
    assert c["imagePullPolicy"] == "IfNotPresent"  # streamsrv/busybox:local is tagged
    assert c["resources"] == {}
    ok(server.kubectl(version, "delete", "pod", name, "--wait=false"))


@pytest.mark.parametrize("version", VERSIONS)
def test_debug_with_an_ephemeral_container_says_what_to_do(
    server: Server, version: str, tmp_path: Path
) -> None:
    """It made both versions panic before (a nil securityContext; a Status without details)."""
    name = unique("target")
    ok(create(server, version, pod_yaml(tmp_path, name)))
    r = server.kubectl(
        version, "debug", "-it", name, f"--image={BUSYBOX}", "--target=main", "--", "sh",
        input="",
    )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert "panic" not in r.stderr, r.stderr
    assert (
        'error: ephemeral containers are disabled for this cluster (error from server: "'
        "streamsrv's container runtimes cannot add ephemeral containers to a running pod; "
        f"debug a copy of the pod instead: kubectl debug {name} -it --copy-to={name}-debug "
        f'--image={BUSYBOX}")'
    ) in r.stderr, r.stderr
    ok(server.kubectl(version, "delete", "pod", name, "--wait=false"))


# `kubectl debug --copy-to` and `debug node/...` with every version (kubectl 1.32+ send those
# pods as protobuf): tests/interop/test_kubectl_debug.py.


def test_debug_node_on_the_process_runtime_is_refused_readably(tmp_path: Path) -> None:
    require_runtime("process")
    server = Server(tmp_path / "state", runtime="process")
    server.start()
    try:
        r = server.kubectl("1.27", "debug", "node/streamsrv", f"--image={BUSYBOX}", "--", "true")
    finally:
        server.stop()
    assert r.returncode == 1 and "panic" not in r.stderr
    assert "is invalid: spec.volumes: Forbidden: the process runtime cannot mount volumes" in (
        r.stderr
    ), r.stderr


@pytest.mark.parametrize("version", ["1.27", "1.28", "1.33"])
def test_create_with_the_default_validation(server: Server, version: str, tmp_path: Path) -> None:
    """kubectl 1.27/1.28 load OpenAPI v2 (protobuf) first; with it served they leave the
    validation to the server, as 1.29+ do with OpenAPI v3."""
    name = unique(f"val{version.replace('.', '')}")
    assert ok(create(server, version, pod_yaml(tmp_path, name))).strip() == f"pod/{name} created"
    # Invalid: the server's own 422, which kubectl shows as it is.
    bad = pod_yaml(tmp_path, unique("dup"), extra=f"  - {{name: main, image: {BUSYBOX}}}\n")
    r = create(server, version, bad)
    assert r.returncode == 1
    assert 'spec.containers[1].name: Duplicate value: "main"' in r.stderr, r.stderr
    assert "could not find the requested resource" not in r.stderr
    ok(server.kubectl(version, "delete", "pod", name, "--wait=false"))


@pytest.mark.parametrize("version", ["1.27", "1.28", "1.33"])
def test_create_with_an_unknown_field_gets_the_servers_error(
    server: Server, version: str, tmp_path: Path
) -> None:
    name = unique("unknown")
    path = pod_yaml(tmp_path, name, extra="    commandx: [sh]\n")
    r = create(server, version, path)
    if r.returncode == 0:
        server.kubectl(version, "delete", "pod", name, "--wait=false")
    assert r.returncode == 1
    assert 'strict decoding error: unknown field "spec.containers[0].commandx"' in r.stderr


def test_cri_endpoints_are_nodes(tmp_path: Path) -> None:
    """`serve --cri-endpoint`: each endpoint a node, named as the pods show it."""
    with streamsrv_cri(tmp_path / "cri", "process") as cri:
        server = Server(
            tmp_path / "state",
            extra=["--cri-endpoint", f"node-a={cri.endpoint}", "--cri-endpoint",
                   f"node-b={cri.endpoint}"],
        )  # fmt: skip
        server.start()
        try:
            for version in VERSIONS:
                text = ok(server.kubectl(version, "get", "nodes", "-o", "wide"))
                found = rows(text)[1:]
                assert [(r[0], r[1]) for r in found] == [("node-a", "Ready"), ("node-b", "Ready")]
                # CONTAINER-RUNTIME: the endpoint's Version, as the kubelet shows it
                assert all("  streamsrv://0." in line for line in text.splitlines()[1:]), text
            cri.stop()
            found = rows(ok(server.kubectl("1.33", "get", "nodes")))[1:]
            assert [(r[0], r[1]) for r in found] == [("node-a", "NotReady"), ("node-b", "NotReady")]
        finally:
            server.stop()

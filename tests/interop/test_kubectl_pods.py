"""Real kubectl binaries against `streamsrv serve` and the real Docker engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX, Server, unique

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]

# Every version creates with its default validation (no flag): 1.29+ leave it to the server
# when the OpenAPI v3 document says the server takes `fieldValidation`, 1.27 and 1.28 when the
# protobuf OpenAPI v2 document says so (streamsrv/openapi.py serves both).
CREATE_FLAGS: dict[str, list[str]] = {"1.27": [], "1.33": []}


def write_manifest(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: kubectl-test}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: ["sleep", "100000"]
  - name: sidecar
    image: {BUSYBOX}
    command: ["sh", "-c", "while true; do sleep 1; done"]
"""
    )
    return path


@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_kubectl_create_get_delete(server: Server, tmp_path: Path, version: str) -> None:
    name = unique(f"k{version.replace('.', '')}")
    manifest = write_manifest(tmp_path, name)

    r = server.kubectl(version, "create", *CREATE_FLAGS[version], "-f", str(manifest))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"pod/{name} created"

    r = server.kubectl(version, "get", "pods")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.strip().splitlines()
    assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [row.split()[:3] for row in rows] == [[name, "2/2", "Running"]]

    r = server.kubectl(version, "get", "pod", name, "-o", "json")
    assert r.returncode == 0, r.stderr
    pod = json.loads(r.stdout)
    assert pod["metadata"]["name"] == name
    assert pod["status"]["phase"] == "Running"
    assert [c["name"] for c in pod["status"]["containerStatuses"]] == ["app", "sidecar"]

    r = server.kubectl(version, "get", "pod", "no-such-pod")
    assert r.returncode != 0
    assert 'pods "no-such-pod" not found' in r.stderr

    r = server.kubectl(version, "delete", "pod", name, timeout=90)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f'pod "{name}" deleted'

    r = server.kubectl(version, "get", "pods")
    assert r.returncode == 0, r.stderr
    assert "No resources found" in r.stderr


@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_kubectl_without_the_token_is_refused(server: Server, version: str) -> None:
    doc = server.kubeconfig.read_text().replace(server.token, "not-the-token")
    server.kubeconfig.write_text(doc)
    r = server.kubectl(version, "get", "pods")
    assert r.returncode != 0
    assert "Unauthorized" in r.stderr or "must be logged in" in r.stderr, r.stderr


def test_kubectl_create_reports_invalid_manifest(server: Server, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"""apiVersion: v1
kind: Pod
metadata: {{name: dup}}
spec:
  containers:
  - {{name: a, image: {BUSYBOX}}}
  - {{name: a, image: {BUSYBOX}}}
"""
    )
    r = server.kubectl("1.33", "create", "-f", str(bad))
    assert r.returncode != 0
    assert 'Duplicate value: "a"' in r.stderr, r.stderr

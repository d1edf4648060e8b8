"""A pod deleted under a live attach or exec (real kubectl, both runtimes): the session ends
within a bound instead of holding the client for ever. (Port-forward's case is in
test_portforward_kubectl.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import BUSYBOX, RUNTIMES, kubectl_path, server_with_pod

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]

HANG = 30


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_deleting_the_pod_ends_attach_and_exec(tmp_path: Path, runtime: str, version: str) -> None:
    name = f"gone{version.replace('.', '')}"
    manifest = f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sh", "-c", "while true; do echo tick; sleep 0.2; done"]
"""
    with server_with_pod(tmp_path, manifest, runtime) as srv:
        base = [kubectl_path(version), "--kubeconfig", str(srv.kubeconfig), "--cache-dir",
                str(srv.state_dir / "kc")]  # fmt: skip
        attach = subprocess.Popen(
            [*base, "attach", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        execs = subprocess.Popen(
            [*base, "exec", name, "--", "sleep", "100000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert attach.stdout is not None
            assert attach.stdout.readline() == b"tick\n"  # attached and streaming
            r = srv.cli("pod", "rm", name)
            assert r.returncode == 0, r.stderr
            attach.communicate(timeout=HANG)
            _, err = execs.communicate(timeout=HANG)
            assert execs.returncode != 0, err
        finally:
            for proc in (attach, execs):
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()

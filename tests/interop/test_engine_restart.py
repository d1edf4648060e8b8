"""The Docker engine restarted under live sessions (the real engine, real kubectl).

Each session ends with a clear status (kubectl exits non-zero with a message), the server
keeps serving and never answers with a bare 500, and once the engine is back the pods are
found again and new sessions work.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    Server,
    echo_pod,
    free_port,
    pod_manifest,
    server_with_pod,
    sleeper,
    wait_forwarding,
)

pytestmark = [pytest.mark.docker, pytest.mark.kubectl]

POD = "enginepod"
HANG = 60
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    with server_with_pod(
        tmp_path,
        echo_pod(POD, port),
        "docker",
    ) as server:
        server.port = port  # type: ignore[attr-defined]
        yield server


def restart_engine() -> None:
    """Stop the test engine (its containers die with it) and start it again, as scripts/test
    started it (scripts/lib.sh)."""
    host = os.environ.get("DOCKER_HOST", "")
    assert host.startswith("unix://") and host.endswith("/docker.sock"), host
    state = host.removeprefix("unix://").removesuffix("/docker.sock")
    subprocess.run(
        ["bash", "-c", f'source "{ROOT}/scripts/lib.sh" && dockerd_start "{state}"'],
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_engine_restart_under_five_sessions(srv: Server) -> None:
    # A pod that is never restarted, beside the echo pod (restartPolicy Always by default).
    never = srv.state_dir / "never.yaml"
    never.write_text(json.dumps(pod_manifest("never", sleeper("idle"), restartPolicy="Never")))
    r = srv.cli("pod", "run", "-f", str(never))
    assert r.returncode == 0, r.stderr
    execs = [
        srv.kubectl_popen(
            v,
            "exec",
            *flags,
            POD,
            "--",
            *cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for v in ("1.27", "1.33")
        for flags, cmd in (((), ("sleep", "1000")), (("-i",), ("cat",)))
    ]
    pf_log = srv.state_dir / "pf.log"
    with pf_log.open("wb") as out:
        pf = srv.kubectl_popen("1.33", "port-forward", f"pod/{POD}", f":{srv.port}",  # type: ignore[attr-defined]
                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_forwarding(pf, pf_log, [srv.port])  # type: ignore[attr-defined]
        deadline = time.monotonic() + HANG
        while len(srv.processes("sleep 1000")) + len(srv.processes("cat")) < 4:
            assert time.monotonic() < deadline, "the execs never started"
            time.sleep(0.2)

        restart_engine()

        for proc in execs:
            _, err = proc.communicate(timeout=HANG)
            assert proc.returncode != 0, err
            assert err.strip(), "kubectl exited without a message"
        assert pf.wait(HANG) is not None
    finally:
        for proc in [*execs, pf]:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert srv.proc is not None and srv.proc.poll() is None, "the server died with the engine"
    assert srv.get("/healthz") == (200, "ok")

    # The engine is back: the pod is found again, made again as its restart policy says (a
    # new sandbox, its container one attempt on), and new sessions work in it.
    def pod(name: str) -> dict[str, Any]:
        r = srv.kubectl("1.33", "get", "pod", name, "-o", "json")
        assert r.returncode == 0, r.stderr
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    deadline = time.monotonic() + HANG
    while (p := pod(POD))["status"]["phase"] != "Running" or not p["status"]["containerStatuses"][
        0
    ]["ready"]:
        assert time.monotonic() < deadline, p["status"]
        time.sleep(0.5)
    assert p["status"]["containerStatuses"][0]["restartCount"] == 1
    r = srv.kubectl("1.27", "exec", POD, "--", "echo", "back")
    assert r.returncode == 0 and r.stdout == "back\n", r
    events = srv.kubectl("1.33", "get", "events", "--field-selector", f"involvedObject.name={POD}")
    assert "SandboxChanged" in events.stdout, events.stdout
    # restartPolicy Never: left as the engine left it.
    time.sleep(2)
    gone = pod("never")
    assert gone["status"]["phase"] == "Failed", gone["status"]
    assert gone["status"]["containerStatuses"][0]["restartCount"] == 0
    manifest = srv.state_dir / "after.yaml"
    manifest.write_text(json.dumps(pod_manifest("after", sleeper())))
    r = srv.cli("pod", "run", "-f", str(manifest))
    assert r.returncode == 0, r.stderr
    for version in ("1.27", "1.33"):
        r = srv.kubectl(version, "exec", "after", "--", "echo", "ok")
        assert r.returncode == 0 and r.stdout == "ok\n", r
    assert "Server got itself in trouble" not in srv.log.read_text()

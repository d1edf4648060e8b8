"""The README's main command, `scripts/run`, on a machine where no Docker engine answers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import kubectl_path

pytestmark = pytest.mark.kubectl

ROOT = Path(__file__).resolve().parents[2]


def test_run_script_without_docker_serves_the_demo_pod(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {
        **os.environ,
        "STREAMSRV_STATE_DIR": str(state),
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",  # no engine answers there
    }
    env.pop("STREAMSRV_RUNTIME", None)  # auto
    out = (tmp_path / "run.log").open("w+")
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "run"), "--listen", "127.0.0.1:0"],
        stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops it" not in (tmp_path / "run.log").read_text():
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.2)
        log = (tmp_path / "run.log").read_text()
        assert len(in_state_dir(state)) >= 2  # the demo pod's shell and web processes
        assert "(runtime: process)" in log and "NO isolation" in log
        assert re.search(r"https://127\.0\.0\.1:\d+/ui/#token=\S+", log), log
        for version in ("1.27", "1.33"):  # SPDY and WebSocket
            r = subprocess.run(
                [kubectl_path(version), "--kubeconfig", str(state / "kubeconfig"), "exec", "demo",
                 "-c", "shell", "--", "sh", "-c", "echo from-$((40+2)); exit 3"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert (r.stdout, r.returncode) == ("from-42\n", 3), r.stderr
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
        out.close()
    # The demo pod's processes (their working directory is in the state dir) went with it.
    deadline = time.monotonic() + 10
    while in_state_dir(state) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert in_state_dir(state) == []


def in_state_dir(state: Path) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd").startswith(str(state)):
                    found.append(Path(f"/proc/{entry}/cmdline").read_bytes().decode("latin-1"))
            except OSError:
                continue
    return found
